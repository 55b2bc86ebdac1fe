"""Tests of the risk score, the global model and delayed labels (``detectors/scoring.py``).

Unit tests build ledgers and behaviour profiles through the real detectors;
property tests drive long random streams of scoring, labels and expiry; the
progressive-validation test replays a generated portfolio (1,000 customers x
180 days) through the real behaviour and delinquency detectors, scores every
customer weekly, labels snapshots with the simulator's ground truth
(``first_30dpd_date``) as those days arrive, and reports the predict-then-learn
AUC, log loss and calibration, the per-event costs and the state sizes.
"""

from __future__ import annotations

import datetime as dt
import math
import pickle
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import behaviour, delinquency
from detectors.base import Evidence, Signal
from detectors.behaviour import BehaviourState
from detectors.delinquency import AccountLedger, Due, epoch_day
from detectors.scoring import (
    FEATURES,
    LABEL_DPD,
    REASON_VOCAB,
    LedgerSummary,
    ProgressiveMetrics,
    RiskModel,
    ScoreConfig,
    ScoreResult,
    ScoreState,
    decode_state,
    encode_state,
    expire,
    features,
    label_from_outcome,
    labels_from_signals,
    on_label,
    score,
    summarise_ledgers,
)
from schemas import models as m
from schemas.models import Label

PROP = settings(max_examples=60, deadline=None, database=None, derandomize=True)
CFG = ScoreConfig()
CFG0 = ScoreConfig(warmup_negatives=0, warmup_positives=0, warmup_days=0)  # no warm-up
DAY0 = 20_454  # 2026-01-01
STATE_BUDGET = 600  # bytes of msgpack, the brief's ceiling ("well under")
_ids = iter(range(10**9))


def sig(code: str, kind: str = "warning", severity: str = "medium") -> Signal:
    return Signal(
        kind=kind,
        rule_id=code.replace("_", "-"),
        rule_version=1,
        severity=severity,  # type: ignore[arg-type]
        reason_codes=[code],
        evidence=[],
    )


def feats(**kw: float) -> dict[str, float]:
    base = features(None, LedgerSummary(), None, DAY0)
    base.update(kw)
    return base


def t(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(1970, 1, 1, hour, tzinfo=dt.UTC) + dt.timedelta(days=day)


def date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=day)


# --------------------------------------------------------------------------- #
# Features
# --------------------------------------------------------------------------- #


def statement(day: int, due: int, amount: int, minimum: int) -> m.StatementDue:
    return m.StatementDue(
        event_id=f"s{next(_ids)}",
        event_time=t(day, 3),
        customer_id="c1",
        account_id="card1",
        due_id=f"st{day}",
        due_date=date(due),
        amount_minor=amount,
        minimum_minor=minimum,
        currency="EUR",
    )


def payment(day: int, amount: int, account: str = "card1") -> m.PaymentReceived:
    return m.PaymentReceived(
        event_id=f"p{next(_ids)}",
        event_time=t(day),
        customer_id="c1",
        account_id=account,
        amount_minor=amount,
        currency="EUR",
    )


def min_only_card(cycles: int) -> AccountLedger:
    """A card whose statements are each paid exactly the minimum, on time."""
    led: AccountLedger | None = None
    for k in range(cycles):
        day = DAY0 + 30 * k
        led, _ = delinquency.apply(led, statement(day, day + 25, 100_000, 3_000))
        led, _ = delinquency.apply(led, payment(day + 20, 3_000))
    assert led is not None
    led, _ = delinquency.advance(led, DAY0 + 30 * cycles + 10)
    return led


def test_min_only_payments_and_ratio_from_a_real_ledger() -> None:
    led = min_only_card(5)
    s = summarise_ledgers({"card1": led}, led.clock)
    assert (s.min_only, s.max_dpd, s.overdue_accounts, s.accounts) == (4, 0, 0, 1)
    assert s.payment_ratio == pytest.approx(0.03)  # 3 % of the statement paid
    f = features(500_000, {"card1": led}, None, led.clock)
    assert f["min_only_cycles"] == 4.0 and f["payment_ratio"] == 0.03


def test_missed_installment_gives_dpd_late_cycles_and_cure() -> None:
    due = m.InstallmentDue(
        event_id="d1", event_time=t(DAY0 - 10), customer_id="c1", account_id="loan1",
        due_id="i1", due_date=date(DAY0), amount_minor=20_000, currency="EUR",
    )
    led, _ = delinquency.apply(None, due)
    s = summarise_ledgers({"loan1": led}, DAY0 + 12)
    assert (s.max_dpd, s.overdue_accounts) == (12, 1)
    led, _ = delinquency.apply(led, payment(DAY0 + 15, 20_000, "loan1"))
    led, _ = delinquency.advance(led, DAY0 + 40)
    s = summarise_ledgers({"loan1": led}, DAY0 + 40)
    assert (s.max_dpd, s.late, s.cured) == (0, 1, 1)


def test_dpd_respects_global_pauses() -> None:
    led = AccountLedger("a", DAY0, dues=[Due("i1", DAY0 - 20, 10_000)])
    assert summarise_ledgers({"a": led}, DAY0).max_dpd == 20
    paused = summarise_ledgers({"a": led}, DAY0, pauses=[(DAY0 - 10, None)]).max_dpd
    assert paused == delinquency.days_past_due(led, DAY0, pauses=[(DAY0 - 10, None)]) < 11


def test_behaviour_features_shift_the_seven_day_window() -> None:
    b = BehaviourState(
        day=DAY0, day_spend=10_000, day_cash=5_000, week=((20_000, 0),) * 6,
        n_long=60, spend_long_raw=3_000.0, cash_long_raw=300.0, balance=250_000,
        last_epoch=DAY0 * 86_400 + 3_600,
        applications=((DAY0 * 86_400 - 40 * 86_400, 1), (DAY0 * 86_400 - 5 * 86_400, 2)),
    )
    a = 1.0 / behaviour.DEFAULT_CONFIG.long_window_days
    norm = 3_000.0 / (1.0 - (1.0 - a) ** 60)
    f = features(500_000, LedgerSummary(), b, DAY0)
    assert f["utilisation"] == 0.5
    assert f["cash_share_7d"] == round(5_000 / 130_000, 2)
    assert f["cash_share_90d"] == 0.1
    assert f["spend_ratio"] == round(130_000 / (7 * norm), 1)
    assert (f["applications_30d"], f["inactive_days"]) == (1.0, 0.0)
    later = features(500_000, LedgerSummary(), b, DAY0 + 3)  # days DAY0-3 .. DAY0+3
    assert later["spend_ratio"] == round((10_000 + 3 * 20_000) / (7 * norm), 1)
    assert later["inactive_days"] == 3.0
    gone = features(500_000, LedgerSummary(), b, DAY0 + 7)
    assert (gone["spend_ratio"], gone["cash_share_7d"]) == (0.0, 0.0)


@PROP
@given(
    st.integers(-5, 400), st.integers(-3, 20), st.floats(-1, 3), st.integers(0, 10**9),
    st.integers(-10**6, 10**7) | st.none(),
)
def test_features_are_fixed_finite_and_capped(
    dpd: int, count: int, ratio: float, balance: int, limit: int | None
) -> None:
    s = LedgerSummary(dpd, count, count, ratio, count, count, count)
    f = features(limit, s, BehaviourState(balance=balance), DAY0)
    assert list(f) == list(FEATURES)
    assert all(math.isfinite(v) and 0.0 <= v <= 120.0 for v in f.values())
    assert all(round(v * 100) == v * 100 or abs(round(v * 100) - v * 100) < 1e-6 for v in f.values())


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #


def test_fresh_model_scores_half_probability() -> None:
    st_, res = score(None, feats(), [], RiskModel(), CFG0, DAY0)
    assert (res.score, res.probability, res.rule_points, res.behaviour_points) == (350, 0.5, 0, 0)
    assert res.snapshot_taken and len(st_.pending) == 1 and st_.last_score == 350


def test_prior_until_the_model_has_learnt_both_classes() -> None:
    cfg = ScoreConfig(warmup_negatives=20, warmup_positives=5, warmup_days=0, prior_probability=0.1)
    model = RiskModel()
    x_bad = feats(max_dpd=20.0, late_cycles=2.0)
    for _ in range(200):
        model.learn_one(x_bad, True)  # positives come first: they need no horizon to pass
    _, res = score(None, x_bad, [], model, cfg, DAY0)
    assert not res.model_ready and res.probability == 0.1 and res.model_probability > 0.8
    assert (res.score, res.factors) == (70, [])
    for _ in range(20):
        model.learn_one(feats(), False)
    _, res = score(None, x_bad, [], model, cfg, DAY0)
    assert res.model_ready and res.probability == res.model_probability > 0.5
    assert res.factors[0].code in ("max_dpd", "late_cycles", "overdue_accounts")


def test_already_delinquent_probability_is_one_and_no_snapshot() -> None:
    st_, res = score(None, feats(max_dpd=45.0, overdue_accounts=1.0), [], RiskModel(), CFG0, DAY0)
    assert res.probability == 1.0 and res.model_probability == 0.5
    assert res.model_points == 700 and not res.snapshot_taken and st_.pending == ()
    assert res.factors[0].code == "max_dpd"
    assert res.factors[0].text == "45 days past due, already 30+ (+700 points)"


def test_rule_points_decay_with_half_life_and_cap() -> None:
    model = RiskModel()
    s1, r1 = score(None, feats(), [sig("payment_ratio_falling")], model, CFG0, DAY0)
    assert r1.rule_points == 80
    _, r2 = score(s1, feats(), [], model, CFG0, DAY0 + 30)
    assert r2.rule_points == 40
    _, r3 = score(s1, feats(), [], model, CFG0, DAY0 + 60)
    assert r3.rule_points == 20
    many = [sig("broken_promise", "delinquency", "high")] * 5
    _, r4 = score(None, feats(), many, model, CFG0, DAY0)
    assert r4.rule_points == 200  # max_code_points
    flood = [sig(c, "delinquency", "high") for c in ("broken_promise", "dpd_60_89", "dpd_90_179")]
    _, r5 = score(None, feats(), flood, model, CFG0, DAY0)
    assert r5.rule_points == 300  # max_rule_points
    assert r5.score == 650


def test_behaviour_signals_weighted_separately_and_info_and_labels_ignored() -> None:
    cfg = ScoreConfig(behaviour_weight=2.0, warmup_negatives=0, warmup_positives=0, warmup_days=0)
    signals = [
        sig("cash_advance_surge", "behaviour_shift", "high"),
        sig("reached_30dpd", "label", "info"),
        sig("delinquency_cured", "delinquency", "info"),
        sig("grade_escalated_high", "risk_grade", "high"),
        sig("line_breached_score", "early_warning", "high"),
    ]
    _, res = score(None, feats(), signals, RiskModel(), cfg, DAY0)
    assert (res.rule_points, res.behaviour_points, res.score) == (0, 120, 470)
    assert res.factors[0].text.startswith("surge of cash advances, 2026-01-01 (+120 points)")


def test_unknown_codes_get_points_by_severity() -> None:
    _, res = score(None, feats(), [sig("brand_new_rule", "warning", "high")], RiskModel(), CFG, DAY0)
    assert res.rule_points == 50
    assert res.factors[0].code == "other_rule"
    beh = sig("new_thing", "fraud_pattern", "critical")
    _, res = score(None, feats(), [beh], RiskModel(), CFG, DAY0)
    assert res.behaviour_points == 80


def test_cure_clears_delinquency_points_but_not_warnings() -> None:
    model = RiskModel()
    s1, _ = score(
        None, feats(),
        [sig("dpd_30_59", "delinquency", "high"), sig("min_payment_only_streak", "warning", "low")],
        model, CFG, DAY0,
    )
    s2, r2 = score(s1, feats(), [sig("delinquency_cured", "delinquency", "info")], model, CFG,
                   DAY0)
    assert r2.rule_points == 60
    assert [REASON_VOCAB[c] for c, _, _ in s2.rules] == ["min_payment_only_streak"]


def test_rule_entries_are_bounded() -> None:
    cfg = ScoreConfig(max_rule_entries=3)
    codes = ["dpd_1_29", "broken_promise", "payment_ratio_falling", "spend_spike", "habit_drift"]
    s, _ = score(None, feats(), [sig(c, "warning", "high") for c in codes], RiskModel(), cfg,
                 DAY0)
    assert len(s.rules) == 3
    assert {REASON_VOCAB[c] for c, _, _ in s.rules} == {"broken_promise", "payment_ratio_falling",
                                                        "dpd_1_29"}


def test_factors_are_plain_words_from_model_terms() -> None:
    model = RiskModel()
    rng = random.Random(3)
    for _ in range(300):
        bad = rng.random() < 0.3
        x = feats(min_only_cycles=float(rng.randint(2, 4) if bad else 0),
                  late_cycles=float(rng.randint(1, 3) if bad else 0))
        model.learn_one(x, bad)
    _, res = score(None, feats(min_only_cycles=3.0, late_cycles=2.0), [], model, CFG0, DAY0)
    texts = [e.text for e in res.factors]
    assert any(x.startswith("3 minimum-only payments in the last 4 statements (+") for x in texts)
    assert all(e.unit == "points" and isinstance(e.value, int) and e.value > 0
               for e in res.factors)
    assert [e.value for e in res.factors] == sorted((e.value for e in res.factors), reverse=True)
    for e in res.factors:  # valid output evidence
        msgspec.convert(msgspec.to_builtins(e), Evidence)
        msgspec.convert(e.code, Label)


def test_snapshot_at_most_once_per_period_and_never_after_reaching() -> None:
    model = RiskModel()
    s: ScoreState | None = None
    taken = []
    for d in range(0, 60):
        s, res = score(s, feats(), [], model, CFG, DAY0 + d)
        taken.append(res.snapshot_taken)
    assert [d for d, x in enumerate(taken) if x] == [0, 15, 30, 45]
    assert s is not None
    s = on_label(s, True, DAY0 + 61, model, None, CFG)
    s, res = score(s, feats(), [], model, CFG, DAY0 + 200)
    assert not res.snapshot_taken and s.pending == ()


def test_pending_bounded_without_expire() -> None:
    cfg = ScoreConfig(snapshot_every_days=1, max_pending=90)
    s: ScoreState | None = None
    for d in range(400):
        s, _ = score(s, feats(), [], RiskModel(), cfg, DAY0 + d)
    assert s is not None and len(s.pending) == 90 and s.pending[0][0] == DAY0 + 310


def test_score_does_not_learn_or_mutate() -> None:
    model = RiskModel()
    for x, y in _stream(2, 50):
        model.learn_one(x, y)
    x = feats(max_dpd=3.0)
    model.predict_proba_one(x)  # River's scaler adds default entries on first sight of a key
    before = pickle.dumps(model)
    x_copy = dict(x)
    signals = [sig("spend_spike", "behaviour_shift")]
    state = ScoreState(rules=((2, DAY0, 40),))
    score(state, x, signals, model, CFG, DAY0 + 1)
    assert pickle.dumps(model) == before and x == x_copy and state.rules == ((2, DAY0, 40),)


def test_config_validation_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown reason code"):
        ScoreConfig(rule_points=(("no_such_code", 10.0),))
    with pytest.raises(ValueError, match="other points table"):
        ScoreConfig(rule_points=(("spend_spike", 10.0),))
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"horizon_days": 60, "horizn": 1}, ScoreConfig)
    cfg = msgspec.convert({"horizon_days": 60, "snapshot_every_days": 10}, ScoreConfig)
    assert cfg.horizon_days == 60 and hash(cfg) == hash(ScoreConfig(horizon_days=60,
                                                                    snapshot_every_days=10))


# --------------------------------------------------------------------------- #
# Delayed labels
# --------------------------------------------------------------------------- #


class Recording(ProgressiveMetrics):
    """Progressive metrics that also keep every (label, probability) pair."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[bool, float]] = []

    def update(self, y: bool, p: float) -> None:
        super().update(y, p)
        self.pairs.append((bool(y), float(p)))


class TaggedModel(RiskModel):
    """A model that records what it learns and checks it predicted it first."""

    def __init__(self, metrics: Recording | None = None) -> None:
        super().__init__()
        self.learnt: list[tuple[float, bool]] = []  # (inactive_days tag, label)
        self.metrics = metrics

    def learn_one(self, x: Any, y: bool | None = None, *, day: int | None = None) -> None:
        if self.metrics is not None:
            assert self.metrics.pairs[-1] == (bool(y), self.predict_proba_one(x))
        self.learnt.append((x["inactive_days"], bool(y)))
        super().learn_one(x, y, day=day)


def snap(day: int, tag: float = 0.0) -> tuple[int, ...]:
    vec = [0] * len(FEATURES)
    vec[FEATURES.index("inactive_days")] = round(tag)  # whole days
    return (day, *vec)


def test_on_label_positive_learns_window_and_negatives_and_drops_later() -> None:
    metrics = Recording()
    model = TaggedModel(metrics)
    st_ = ScoreState(pending=(snap(DAY0, 1), snap(DAY0 + 50, 2), snap(DAY0 + 100, 3)))
    new = on_label(st_, True, DAY0 + 95, model, metrics, CFG)
    assert model.learnt == [(1.0, False), (2.0, True)]  # 95 days: horizon passed; 45: positive
    assert new.pending == () and new.reached_day == DAY0 + 95 and metrics.n == 2
    again = on_label(new, True, DAY0 + 97, model, metrics, CFG)
    assert again is new and len(model.learnt) == 2


def test_on_label_negative_and_expire() -> None:
    model = TaggedModel()
    st_ = ScoreState(pending=(snap(DAY0, 1), snap(DAY0 + 30, 2)))
    assert on_label(st_, False, DAY0 + 40, model, None, CFG).pending == ()
    assert model.learnt == [(1.0, False), (2.0, False)]
    model = TaggedModel()
    e = expire(st_, DAY0 + 89, model, None, CFG)
    assert e is st_ and model.learnt == []
    e = expire(st_, DAY0 + 90, model, None, CFG)
    assert [p[0] for p in e.pending] == [DAY0 + 30] and model.learnt == [(1.0, False)]
    assert model.first_negative_day == DAY0 + 90  # dates the warm-up


def test_learn_false_updates_the_state_but_teaches_nothing() -> None:
    st_ = ScoreState(pending=(snap(DAY0, 1), snap(DAY0 + 50, 2), snap(DAY0 + 100, 3)))
    for call in (
        lambda model, metrics, **kw: on_label(st_, True, DAY0 + 95, model, metrics, CFG, **kw),
        lambda model, metrics, **kw: on_label(st_, False, DAY0 + 95, model, metrics, CFG, **kw),
        lambda model, metrics, **kw: expire(st_, DAY0 + 140, model, metrics, CFG, **kw),
    ):
        metrics, quiet_metrics = Recording(), Recording()
        model, quiet = TaggedModel(metrics), TaggedModel(quiet_metrics)
        learnt = call(model, metrics)
        assert model.learnt and metrics.n  # learn=True (the default) teaches both
        assert call(quiet, quiet_metrics, learn=False) == learnt  # the same state ...
        assert quiet.learnt == [] and quiet.n_learned == 0 and quiet_metrics.n == 0  # ... only


def test_snapshots_of_another_feature_layout_are_dropped() -> None:
    stale = ScoreState(v=0, pending=((DAY0, 1, 2),), last_score=10)
    model = RiskModel()
    assert on_label(stale, True, DAY0 + 5, model, None, CFG).pending == ()
    assert model.n_learned == 0
    odd = ScoreState(pending=((DAY0, 1, 2),))
    assert on_label(odd, True, DAY0 + 5, model, None, CFG).reached_day == DAY0 + 5
    assert model.n_learned == 0


def test_labels_from_real_ledger_signals_and_outcomes() -> None:
    due = m.InstallmentDue(
        event_id="d1", event_time=t(DAY0 - 10), customer_id="c1", account_id="loan1",
        due_id="i1", due_date=date(DAY0), amount_minor=20_000, currency="EUR",
    )
    led, _ = delinquency.apply(None, due)
    led, signals = delinquency.advance(led, DAY0 + 41)  # a late sweep
    assert labels_from_signals(signals) == [(True, DAY0 + 30)]
    assert labels_from_signals([sig("reached_90dpd", "label", "info")]) == []
    assert label_from_outcome("charge_off", DAY0) == (True, DAY0)
    assert label_from_outcome("cured", DAY0) is None


# --------------------------------------------------------------------------- #
# Properties over long streams
# --------------------------------------------------------------------------- #

SIGNALS = [
    sig("dpd_1_29", "delinquency", "low"),
    sig("dpd_30_59", "delinquency", "medium"),
    sig("broken_promise", "delinquency", "high"),
    sig("delinquency_cured", "delinquency", "info"),
    sig("min_payment_only_streak", "warning", "low"),
    sig("payment_ratio_falling", "warning", "medium"),
    sig("spend_spike", "behaviour_shift", "medium"),
    sig("velocity_burst", "fraud_pattern", "high"),
    sig("something_new", "warning", "critical"),
    sig("reached_30dpd", "label", "info"),
]
feature_values = st.fixed_dictionaries(
    {
        "max_dpd": st.sampled_from([0.0, 0.0, 0.0, 5.0, 29.0, 31.0, 120.0]),
        "min_only_cycles": st.integers(0, 8).map(float),
        "payment_ratio": st.floats(0, 1).map(lambda v: round(v, 2)),
        "utilisation": st.floats(0, 2).map(lambda v: round(v, 2)),
        "spend_ratio": st.floats(0, 10).map(lambda v: round(v, 2)),
    }
)
step = st.tuples(
    st.sampled_from(["score", "score", "score", "label", "negative", "expire"]),
    st.integers(0, 40),  # days since the previous step
    feature_values,
    st.lists(st.sampled_from(SIGNALS), max_size=6),
    st.integers(-30, 5),  # label day offset
)


@PROP
@given(st.lists(step, min_size=1, max_size=120))
def test_long_streams_stay_bounded_score_in_range_labels_learnt_once(steps: list[Any]) -> None:
    model = TaggedModel()
    state: ScoreState | None = None
    day = DAY0
    tags: set[float] = set()
    next_tag = 1
    for op, gap, fv, signals, offset in steps:
        day += gap
        if op == "score":
            x = {**feats(), **fv, "inactive_days": float(next_tag)}
            state, res = score(state, x, signals, model, CFG, day)
            assert isinstance(res, ScoreResult) and 0 <= res.score <= 1000
            assert 0.0 <= res.probability <= 1.0 and len(res.factors) <= CFG.max_factors
            if res.snapshot_taken:
                tags.add(float(next_tag))
                next_tag += 1
        elif op == "label":
            state = on_label(state, True, day + offset, model, None, CFG)
        elif op == "negative":
            state = on_label(state, False, day, model, None, CFG)
        else:
            state = expire(state, day, model, None, CFG)
            assert all(day - p[0] < CFG.horizon_days for p in state.pending)
        if state is not None:
            assert len(state.pending) <= CFG.max_pending
            assert len(state.rules) <= CFG.max_rule_entries
            assert len(encode_state(state)) < 300
            assert decode_state(encode_state(state)) == state
    learnt = [tag for tag, _ in model.learnt]
    assert len(learnt) == len(set(learnt)) and set(learnt) <= tags


@PROP
@given(st.lists(step, min_size=1, max_size=60))
def test_deterministic(steps: list[Any]) -> None:
    def run() -> tuple[bytes, list[ScoreResult], bytes]:
        model, metrics = RiskModel(), ProgressiveMetrics()
        state: ScoreState | None = None
        results = []
        day = DAY0
        for op, gap, fv, signals, offset in steps:
            day += gap
            if op == "score":
                state, res = score(state, {**feats(), **fv}, signals, model, CFG, day)
                results.append(res)
            elif op == "label":
                state = on_label(state, True, day + offset, model, metrics, CFG)
            else:
                state = expire(state, day, model, metrics, CFG)
        return encode_state(state or ScoreState()), results, pickle.dumps(metrics.summary())

    assert run() == run()


# --------------------------------------------------------------------------- #
# Model and metrics
# --------------------------------------------------------------------------- #


def _stream(seed: int, n: int) -> Iterator[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    for _ in range(n):
        dpd = float(rng.choice([0, 0, 0, 4, 15, 25]))
        x = feats(max_dpd=dpd, payment_ratio=round(rng.random(), 2),
                  min_only_cycles=float(rng.randint(0, 4)))
        p = 1.0 / (1.0 + math.exp(-(-3 + 0.15 * dpd + 0.6 * x["min_only_cycles"])))
        yield x, rng.random() < p


@PROP
@given(st.integers(0, 10_000), st.integers(0, 400))
def test_pickle_round_trip_gives_identical_predictions(seed: int, n: int) -> None:
    model = RiskModel(learning_rate=0.03, l2=0.001)
    for x, y in _stream(seed, n):
        model.learn_one(x, y)
    clone = pickle.loads(pickle.dumps(model))
    for x, y in _stream(seed + 1, 100):
        assert clone.predict_proba_one(x) == model.predict_proba_one(x)
        clone.learn_one(x, y)
        model.learn_one(x, y)
    assert clone.weights == model.weights and clone.n_learned == model.n_learned


def test_model_learns_and_reads_label_key_and_ignores_extra_keys() -> None:
    a, b = RiskModel(), RiskModel()
    for x, y in _stream(1, 2_000):
        a.learn_one(x, y)
        b.learn_one({**x, "label": y, "customer_id_hash": 12345.0})
    probe = feats(max_dpd=20.0, min_only_cycles=3.0)
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)
    assert a.predict_proba_one(probe) > 0.6 > 0.1 > a.predict_proba_one(feats())
    assert a.predict_proba_one({"max_dpd": float("nan")}) == a.predict_proba_one({})


def test_progressive_metrics_bounded_and_pickles() -> None:
    pm = ProgressiveMetrics(window=500)
    rng = random.Random(9)
    for _ in range(20_000):
        y = rng.random() < 0.2
        pm.update(y, min(1.0, max(0.0, rng.gauss(0.6 if y else 0.3, 0.2))))
    assert len(pm.rolling_auc._buf_labels) < 500
    clone = pickle.loads(pickle.dumps(pm))
    assert clone.summary() == pm.summary()
    assert 0.8 < pm.auc < 0.9
    cal = pm.calibration()
    assert sum(b.n for b in cal) == 20_000 and all(b.lo <= b.mean_predicted < b.hi for b in cal)


# --------------------------------------------------------------------------- #
# Progressive validation on a generated portfolio
# --------------------------------------------------------------------------- #

_PRODUCT = {m.StatementDue: "credit_card", m.InstallmentDue: "installment_plan"}


def exact_auc(pairs: list[tuple[bool, float]]) -> float:
    """Mann-Whitney AUC with ties counted half."""
    ordered = sorted(pairs, key=lambda p: p[1])
    rank_sum = 0.0
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        rank = (i + j) / 2 + 1
        rank_sum += rank * sum(1 for k in range(i, j + 1) if ordered[k][0])
        i = j + 1
    pos = sum(1 for y, _ in pairs if y)
    neg = len(pairs) - pos
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


class Portfolio:
    """Weekly feature rows of a simulated portfolio, from the real detectors."""

    def __init__(self, customers: int, days: int, seed: int, every: int = 7) -> None:
        from streams.simulator import Portfolio as Config
        from streams.simulator import Simulator

        started = time.process_time()
        config = Config(customers=customers, days=days, seed=seed)
        sim = Simulator(config)
        limits: dict[str, int] = {}
        zones: dict[str, str] = {}
        beh: dict[str, BehaviourState] = {}
        ledgers: dict[str, dict[str, AccountLedger]] = defaultdict(dict)
        pending_signals: dict[str, list[Signal]] = defaultdict(list)
        checks: dict[tuple[str, str], int | None] = {}
        #: (day, customer, features, signals since the previous row)
        self.rows: list[tuple[int, str, dict[str, float], list[Signal]]] = []
        self.ledger_labels: dict[str, int] = {}
        self.events = 0
        start = self.start = epoch_day(config.start)
        week = start + every

        def weekly(day: int) -> None:
            # Like the engine's watermark sweep: advance a ledger only when time alone
            # could change it (its next check day has come).
            for cid, limit in limits.items():
                own = ledgers.get(cid, {})
                for account, led in own.items():
                    check = checks.get((cid, account))
                    if check is not None and check <= day:
                        own[account], found = delinquency.advance(led, day)
                        checks[(cid, account)] = delinquency.next_check_day(own[account])
                        pending_signals[cid].extend(found)
                found = pending_signals.pop(cid, [])
                for _, label_day in labels_from_signals(found):
                    self.ledger_labels.setdefault(cid, label_day)
                self.rows.append((day, cid, features(limit, own, beh.get(cid), day), found))

        for topic, key, rec in sim.events():
            if topic in ("sector-indicators", "outcomes"):
                continue
            self.events += 1
            when = epoch_day(rec.event_time)
            while when >= week:
                weekly(week)
                week += every
            if topic == "customer-profiles":
                limits[key], zones[key] = rec.credit_limit_minor, rec.timezone
            elif topic == "card-transactions":
                beh[key], found, _ = behaviour.on_transaction(
                    beh.get(key), rec, limits.get(key), None, timezone=zones.get(key))
                pending_signals[key].extend(found)
            elif topic == "credit-applications":
                beh[key], found = behaviour.on_application(beh.get(key), rec)
                pending_signals[key].extend(found)
            else:
                if isinstance(rec, m.PaymentReceived):
                    beh[key] = behaviour.on_payment(beh.get(key), rec.amount_minor)
                elif isinstance(rec, m.PaymentReversed):
                    beh[key] = behaviour.on_payment(beh.get(key), -rec.amount_minor)
                own = ledgers[key]
                own[rec.account_id], found = delinquency.apply(
                    own.get(rec.account_id), rec, product=_PRODUCT.get(type(rec)))
                checks[(key, rec.account_id)] = delinquency.next_check_day(own[rec.account_id])
                pending_signals[key].extend(found)
        self.truth = {
            g.customer_id: (epoch_day(g.first_30dpd_date) if g.first_30dpd_date else None,
                            g.scenario)
            for g in sim.ground_truth()
        }
        self.seconds = time.process_time() - started


@pytest.fixture(scope="module")
def portfolio() -> Portfolio:
    return Portfolio(customers=1_000, days=180, seed=7)


def validate(p: Portfolio, cfg: ScoreConfig) -> dict[str, Any]:
    """Replay the rows in time order: ground-truth labels as their day passes, expiry,
    then scoring (which takes the snapshots)."""
    metrics = Recording()
    model = RiskModel.from_config(cfg)
    learnt_x: list[dict[str, float]] = []
    learn = model.learn_one

    def learn_one(x: dict[str, float], y: bool | None = None, *, day: int | None = None) -> None:
        learnt_x.append(x)
        learn(x, y, day=day)

    model.learn_one = learn_one  # type: ignore[method-assign]
    states: dict[str, ScoreState] = {}
    by_day: dict[int, list[tuple[str, dict[str, float], list[Signal]]]] = defaultdict(list)
    for day, cid, f, signals in p.rows:
        by_day[day].append((cid, f, signals))
    results: dict[str, list[tuple[int, ScoreResult]]] = defaultdict(list)
    previous = -1
    score_s = 0.0
    for day in sorted(by_day):
        for cid, (first30, _) in p.truth.items():
            if first30 is not None and previous < first30 <= day:
                states[cid] = on_label(states.get(cid), True, first30, model, metrics, cfg)
        started = time.process_time()
        for cid, f, signals in by_day[day]:
            state = expire(states.get(cid), day, model, metrics, cfg)
            states[cid], res = score(state, f, signals, model, cfg, day)
            results[cid].append((day, res))
        score_s += time.process_time() - started
        previous = day
    early = [pair for pair, x in zip(metrics.pairs, learnt_x, strict=True) if x["max_dpd"] == 0]
    return {
        "metrics": metrics,
        "model": model,
        "states": states,
        "results": results,
        "auc": exact_auc(metrics.pairs),
        "early_auc": exact_auc(early),
        "early_n": len(early),
        "score_us": 1e6 * score_s / len(p.rows),
    }


def test_progressive_validation_on_generated_portfolio(portfolio: Portfolio) -> None:
    p = portfolio
    cfg = ScoreConfig(snapshot_every_days=7, max_pending=13)  # one snapshot a week
    out = validate(p, cfg)
    metrics: Recording = out["metrics"]
    base = metrics.positives / metrics.n
    prior_loss = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    sizes = [len(encode_state(s)) for s in out["states"].values()]
    # Lead time: days from the first week graded high or worse to the first 30+ DPD.
    # and false alarms: customers never reaching it but scored 550+ (at any time: before
    # the warm-up ends only 30+ DPD and rule points can lift a score that high).
    ready = min(d for rs in out["results"].values() for d, r in rs if r.model_ready)
    leads = []
    late = false_alarms = 0
    for cid, (first30, _) in p.truth.items():
        results = out["results"][cid]
        if first30 is None:
            false_alarms += any(r.score >= 550 for _, r in results)
            continue
        if first30 <= ready:
            continue
        late += 1
        flagged = [d for d, r in results if r.score >= 550 and d < first30]
        if flagged:
            leads.append(first30 - flagged[0])
    agree = sum(1 for c, d in p.ledger_labels.items() if p.truth[c][0] is not None
                and abs(p.truth[c][0] - d) <= 1)
    print(
        f"\nportfolio: 1,000 customers x 180 days, {p.events:,} events replayed through the "
        f"behaviour and delinquency detectors in {p.seconds:.1f} s CPU; {len(p.rows):,} weekly rows"
        f"\nprogressive validation (predict, then learn on delayed labels): "
        f"{metrics.n:,} labelled snapshots, {metrics.positives:,} positive ({100 * base:.1f}%)"
        f"\n  AUC {out['auc']:.4f} (exact, all labels); rolling AUC {metrics.auc:.4f}; "
        f"DPD-0 snapshots only: AUC {out['early_auc']:.4f} (n={out['early_n']:,})"
        f"\n  log loss {metrics.log_loss:.4f} (base-rate prior {prior_loss:.4f}); "
        f"Brier {metrics.brier:.4f}"
        f"\n  reliability (n, mean predicted, observed): "
        + ", ".join(f"[{b.lo:.1f},{b.hi:.1f}) {b.n} {b.mean_predicted:.3f}/{b.observed_rate:.3f}"
                    for b in metrics.calibration())
        + f"\n  model warm-up ended on day {ready - p.start}; after it {late} customers first "
        f"reached 30+ DPD, {len(leads)} of them scored 550+ (high) before, median lead "
        f"{sorted(leads)[len(leads) // 2] if leads else '-'} days; of the "
        f"{sum(1 for v in p.truth.values() if v[0] is None)} never reaching 30+ DPD, "
        f"{false_alarms} ever scored 550+"
        f"\n  ledger reached_30dpd labels within a day of the ground truth: {agree:,} of "
        f"{len(p.ledger_labels):,}"
        f"\n  score() incl. expire: {out['score_us']:.1f} us per call; ScoreState "
        f"{max(sizes)} B max, {sum(sizes) / len(sizes):.0f} B mean (weekly snapshots)"
    )
    assert out["auc"] > 0.75 and out["early_auc"] > 0.7
    assert metrics.log_loss < prior_loss
    assert max(sizes) < STATE_BUDGET


def test_default_config_on_portfolio_state_and_cost(portfolio: Portfolio) -> None:
    """The default (a snapshot every 15 days, 6 kept) on the same rows; costs per call."""
    out = validate(portfolio, CFG)
    sizes = [len(encode_state(s)) for s in out["states"].values()]
    model: RiskModel = out["model"]
    del model.learn_one  # the recording wrapper
    rows = portfolio.rows[-2_000:]
    state = ScoreState()
    started = time.process_time()
    for day, _, f, signals in rows:
        score(state, f, signals, model, CFG, day)
    score_us = 1e6 * (time.process_time() - started) / len(rows)
    started = time.process_time()
    for _, _, f, _ in rows:
        model.predict_proba_one(f)
        model.learn_one(f, False)
    learn_us = 1e6 * (time.process_time() - started) / len(rows)
    b = BehaviourState(day=DAY0, week=((1_000, 0),) * 6, n_long=60, spend_long_raw=900.0,
                       last_epoch=DAY0 * 86_400)
    ledgers = {"card1": min_only_card(4), "loan1": AccountLedger("loan1", DAY0 + 130)}
    started = time.process_time()
    for _ in range(2_000):
        features(500_000, ledgers, b, DAY0 + 130)
    feat_us = 1e6 * (time.process_time() - started) / 2_000
    metrics: Recording = out["metrics"]
    print(
        f"\ndefault config: {metrics.n:,} labelled snapshots, AUC {out['auc']:.4f}, log loss "
        f"{metrics.log_loss:.4f}; ScoreState {max(sizes)} B max, "
        f"{sum(sizes) / len(sizes):.0f} B mean"
        f"\nper-event cost: score() {score_us:.1f} us, features() from 2 ledgers + profile "
        f"{feat_us:.1f} us, model predict+learn {learn_us:.1f} us"
    )
    assert max(sizes) < 300
    assert out["auc"] > 0.75
    assert len(pickle.dumps(model)) < 4_000


def test_score_state_budget_worst_case() -> None:
    """Every sequence full, every number at its widest msgpack size."""
    cfg = ScoreConfig(snapshot_every_days=7, max_pending=13)
    # Snapshot values at their caps (in fixed point), days before 2149 (uint16).
    wide = (65_000, 120, 8, 8, 100, 12, 12, 200, 100, 100, 100, 8, 8, 90)
    assert len(wide) == len(FEATURES) + 1
    worst = ScoreState(
        pending=(wide,) * cfg.max_pending,
        rules=tuple((len(REASON_VOCAB) - 1 - i, 65_000, 200) for i in range(cfg.max_rule_entries)),
        last_snapshot_day=65_000, reached_day=65_000, last_score=1000, last_grade=3,
        grade_day=65_000,
    )
    default_worst = msgspec.structs.replace(worst, pending=(wide,) * CFG.max_pending)
    print(f"\nScoreState worst case: {len(encode_state(default_worst))} B (default), "
          f"{len(encode_state(worst))} B (weekly snapshots, 13 kept)")
    assert len(encode_state(default_worst)) < 250
    assert len(encode_state(worst)) < STATE_BUDGET
    assert LABEL_DPD == 30


def test_explain_memo_follows_learning_and_is_not_pickled() -> None:
    import pickle

    from detectors.scoring import RiskModel

    model, fresh = RiskModel(), RiskModel()
    x = {"max_dpd": 20.0, "payment_ratio": 0.2}
    assert model.explain(x) == fresh.explain(x)
    for _ in range(30):
        model.learn_one(x, True)
        model.learn_one({"max_dpd": 0.0, "payment_ratio": 1.0}, False)
        fresh.learn_one(x, True)
        fresh.learn_one({"max_dpd": 0.0, "payment_ratio": 1.0}, False)
        p, terms = model.explain(x)
        fresh_p, fresh_terms = fresh.explain(x)
        fresh._explained = None  # the reference recomputes every time
        assert (p, terms) == (fresh_p, fresh_terms)
    terms["max_dpd"] = 99.0  # callers get their own dict
    assert model.explain(x)[1]["max_dpd"] != 99.0
    assert "_explained" not in pickle.loads(pickle.dumps(model)).__dict__
