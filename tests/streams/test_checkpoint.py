"""Global-model checkpoints: atomic, resumable, and never learned twice."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from alerts.engine import Engine
from alerts.policy import DEFAULT_POLICY
from schemas.errors import RiskwatchError
from schemas.models import CardTransaction
from streams.checkpoint import Checkpoint, load, save

T0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def _tx(i: int) -> CardTransaction:
    return CardTransaction(
        event_id=f"ck-{i}", event_time=T0 + dt.timedelta(hours=i), customer_id=f"c{i % 7}",
        account_id="a", type="purchase", amount_minor=1_000 + 37 * i, currency="EUR",
        mcc="5411", merchant_id="m", channel="pos", country="DE")


def _feed(engine: Engine, start: int, stop: int, learn: bool = True) -> None:
    states: dict[str, bytes] = {}
    for i in range(start, stop):
        tx = _tx(i)
        result = engine.process("card-transactions", tx, states.get(tx.customer_id), learn=learn)
        if result.state is not None:
            states[tx.customer_id] = result.state


def test_round_trip_resumes_the_same_model(tmp_path):
    engine = Engine(DEFAULT_POLICY)
    _feed(engine, 0, 300)
    path = tmp_path / "models.ckpt"
    size = save(path, Checkpoint(engine.models(), {("card-transactions", 0): 299},
                                       DEFAULT_POLICY.version))
    assert size > 0 and not path.with_suffix(".ckpt.tmp").exists()
    resumed = Engine(DEFAULT_POLICY)
    loaded = load(path)
    assert loaded is not None and loaded.offsets == {("card-transactions", 0): 299}
    resumed.restore_models(loaded.models)
    # Both continue identically from here.
    _feed(engine, 300, 400)
    _feed(resumed, 300, 400)
    assert _model_state(engine.anomaly) == _model_state(resumed.anomaly)


def _model_state(model: object) -> dict[str, bytes]:
    """Each attribute of the pickled state pickled on its own (a whole pickle also encodes
    which float objects happen to be shared, which differs after a round trip). The
    pickled state (``__getstate__``), not ``vars()``: memos and compiled lookup tables
    derived from it are rebuilt on loading and depend on what was scored since."""
    hst = model.hst.__getstate__()  # type: ignore[attr-defined]
    out = {f"hst.{k}": pickle.dumps(v) for k, v in hst.items()}
    state = model.__getstate__()  # type: ignore[attr-defined]
    out.update({k: pickle.dumps(v) for k, v in state.items() if k != "hst"})
    return out


def test_events_already_learned_are_scored_but_not_learned():
    engine = Engine(DEFAULT_POLICY)
    _feed(engine, 0, 200)
    model = engine.anomaly
    learned = (model.n_learnt, pickle.dumps(model.hst), pickle.dumps(model.quantile))
    _feed(engine, 0, 200, learn=False)  # only the score memo may change
    assert (model.n_learnt, pickle.dumps(model.hst), pickle.dumps(model.quantile)) == learned


def test_missing_and_corrupt_checkpoints(tmp_path):
    assert load(tmp_path / "none.ckpt") is None
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(RiskwatchError, match="unreadable"):
        load(bad)


def test_a_model_of_an_older_layout_is_not_resumed():
    """Checkpoints from before FlatHalfSpaceTrees held River's tree objects: start afresh."""
    from river.anomaly import HalfSpaceTrees

    old = Engine(DEFAULT_POLICY)
    _feed(old, 0, 50)
    old.anomaly.hst = HalfSpaceTrees(seed=0)  # the previous layout
    del old.anomaly._cache_path
    engine = Engine(DEFAULT_POLICY)
    fresh = engine.anomaly
    engine.restore_models(pickle.loads(pickle.dumps(old.models())))
    assert engine.anomaly is fresh
    _feed(engine, 0, 20)  # and it works
