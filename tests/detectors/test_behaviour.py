"""Tests of the per-customer behaviour profile (``detectors/behaviour.py``).

Each rule is driven by a synthetic customer: a steady history (one or two
everyday purchases a day, a monthly ATM withdrawal, the balance paid in full
every month) followed by the behaviour the rule is meant to catch. The steady
history alone must raise nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Iterator
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import drift

from detectors.base import Signal
from detectors.behaviour import (
    CATEGORIES,
    DEFAULT_CONFIG,
    FEATURE_NAMES,
    MODEL_FEATURES,
    BehaviourConfig,
    BehaviourState,
    anomaly_baseline,
    anomaly_factors,
    anomaly_signal,
    decode_state,
    encode_state,
    make_anomaly_model,
    mcc_category,
    on_application,
    on_payment,
    on_transaction,
)
from detectors.online import PageHinkleyParams, PHState, ph_update
from schemas.models import CardTransaction, CreditApplication, Evidence, Label

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
LIMIT = 500_000  # 5,000.00 EUR
HOME = "DE"
STATE_BOUND = 1_024  # bytes, msgpack-encoded (the target)
WORST_STATE = 600  # bytes: every sequence full, every integer at its widest msgpack size

TxType = Literal["purchase", "cash_advance", "refund", "installment_conversion"]
Channel = Literal["pos", "contactless", "ecom", "moto", "atm"]

# An event of a synthetic stream: ("tx", CardTransaction) | ("pay", amount) | ("app", application).
Event = tuple[str, Any]

_counter = iter(range(10**9))


def make_tx(
    when: dt.datetime,
    amount: int,
    mcc: str = "5411",
    kind: TxType = "purchase",
    channel: Channel = "pos",
    country: str = HOME,
) -> CardTransaction:
    return CardTransaction(
        event_id=f"e{next(_counter)}",
        event_time=when,
        customer_id="c1",
        account_id="a1",
        type=kind,
        amount_minor=amount,
        currency="EUR",
        mcc=mcc,
        merchant_id="m1",
        channel=channel,
        country=country,
    )


def make_app(when: dt.datetime, app_id: str, source: str = "internal") -> CreditApplication:
    return CreditApplication(
        event_id=f"e{next(_counter)}",
        event_time=when,
        customer_id="c1",
        application_id=app_id,
        product="personal_loan",
        amount_minor=300_000,
        currency="EUR",
        source=source,  # type: ignore[arg-type]
    )


def steady(seed: int, days: int, start: dt.datetime = T0) -> Iterator[Event]:
    """An ordinary customer: 0-3 daytime purchases a day, log-normal amounts (median 30 EUR),
    everyday categories, a 100 EUR ATM withdrawal mid-month, full payment on the 1st."""
    rng = random.Random(seed)
    for d in range(days):
        day0 = start + dt.timedelta(days=d)
        if day0.day == 1 and d > 0:
            yield ("pay", None)
        n = rng.choice([0, 1, 1, 1, 2, 2, 3])
        for h in sorted(rng.uniform(8, 21.5) for _ in range(n)):
            amount = max(100, int(math.exp(rng.gauss(3.4, 0.8)) * 100))
            mcc = rng.choice(["5411", "5411", "5812", "5541", "5999", "4900"])
            channel: Channel = rng.choice(["pos", "contactless", "contactless", "ecom"])
            yield ("tx", make_tx(day0 + dt.timedelta(hours=h), amount, mcc, channel=channel))
        if day0.day == 15:
            yield ("tx", make_tx(day0 + dt.timedelta(hours=12), 10_000, "6011", "cash_advance"))


class Replay:
    """Feeds events to the behaviour functions, paying the balance in full on "pay"."""

    def __init__(self, config: BehaviourConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.state: BehaviourState | None = None
        self.signals: list[tuple[str, Signal]] = []  # (trigger event id, signal)
        self.features: list[dict[str, float]] = []
        self.unpaid = 0

    def feed(self, events: Iterator[Event] | list[Event]) -> list[tuple[str, Signal]]:
        new: list[tuple[str, Signal]] = []
        for kind, ev in events:
            if kind == "pay":
                amount = self.unpaid if ev is None else ev
                self.state = on_payment(self.state, amount, self.config)
                self.unpaid = max(0, self.unpaid - amount)
            elif kind == "app":
                self.state, sigs = on_application(self.state, ev, self.config)
                new += [(ev.event_id, s) for s in sigs]
            else:
                self.state, sigs, feats = on_transaction(self.state, ev, LIMIT, HOME, self.config)
                if ev.type in ("purchase", "cash_advance"):
                    self.unpaid += ev.amount_minor
                if feats:
                    self.features.append(feats)
                new += [(ev.event_id, s) for s in sigs]
        self.signals += new
        return new


def reasons(found: list[tuple[str, Signal]]) -> list[str]:
    return [code for _, s in found for code in s.reason_codes]


def with_history(days: int = 90, seed: int = 0) -> tuple[Replay, dt.datetime]:
    r = Replay()
    assert r.feed(steady(seed, days)) == []
    return r, T0 + dt.timedelta(days=days)


_LABEL = msgspec.json.Decoder(list[Label])
_EVIDENCE = msgspec.json.Decoder(list[Evidence])


def assert_valid_signal(s: Signal) -> None:
    """The signal passes the output contract's constraints (labels, evidence lengths)."""
    _LABEL.decode(msgspec.json.encode([s.rule_id, *s.reason_codes]))
    _EVIDENCE.decode(msgspec.json.encode(s.evidence))
    assert s.evidence and all(e.text for e in s.evidence)
    assert s.discriminator


# --------------------------------------------------------------------------- #
# No false signals
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(6))
def test_steady_customer_raises_no_signal(seed: int) -> None:
    r = Replay()
    assert r.feed(steady(seed, 365)) == []
    assert r.state is not None and r.state.n_tx > 300
    assert len(encode_state(r.state)) < STATE_BOUND


def test_steady_features_are_scaled_and_complete() -> None:
    r = Replay()
    r.feed(steady(1, 120))
    for f in r.features:
        assert tuple(f) == FEATURE_NAMES
        assert all(0.0 <= v <= 1.0 for v in f.values())


# --------------------------------------------------------------------------- #
# One test per signal
# --------------------------------------------------------------------------- #


def test_velocity_burst_per_hour() -> None:
    r, day = with_history()
    at = day + dt.timedelta(hours=14)
    burst = [
        ("tx", make_tx(at + dt.timedelta(minutes=3 * i), 2_500, "5999", channel="ecom"))
        for i in range(10)
    ]
    found = r.feed(burst)
    assert reasons(found) == ["velocity_burst"]
    event_id, sig = found[0]
    assert event_id == burst[7][1].event_id  # the 8th transaction of the hour
    assert sig.kind == "fraud_pattern" and sig.severity == "high"
    assert sig.evidence[0].value == 8 and sig.evidence[0].unit == "tx/h"
    assert sig.evidence[0].text == "8 card transactions within one hour (threshold 8)"
    assert sig.discriminator == f"hour:{at.date().isoformat()}T14"
    assert sig.account_id == "a1"
    assert_valid_signal(sig)


def test_velocity_burst_per_day() -> None:
    r, day = with_history()
    # 26 purchases over one day, 5 an hour at most: no hourly burst, but a daily one
    events = [
        ("tx", make_tx(day + dt.timedelta(hours=8, minutes=13 * i), 1_500, "5812"))
        for i in range(26)
    ]
    found = r.feed(events)
    assert reasons(found) == ["velocity_burst"]
    assert found[0][0] == events[24][1].event_id
    assert found[0][1].evidence[0].unit == "tx/day"
    assert found[0][1].discriminator.startswith("day:")


@pytest.mark.parametrize(
    ("mcc", "category"),
    [("7995", "gambling"), ("6051", "crypto"), ("4829", "money_transfer"), ("5933", "pawn")],
)
def test_new_high_risk_category(mcc: str, category: str) -> None:
    r, day = with_history()
    first = make_tx(day + dt.timedelta(hours=20), 5_000, mcc, channel="ecom")
    again = make_tx(day + dt.timedelta(hours=21), 5_000, mcc, channel="ecom")
    found = r.feed([("tx", first), ("tx", again)])
    assert reasons(found) == ["new_high_risk_category"]
    event_id, sig = found[0]
    assert event_id == first.event_id
    label = category.replace("_", " ")
    assert sig.evidence[0].text.startswith(f"first {label} transaction (MCC {mcc}) after 90 days")
    assert sig.evidence[0].value == category
    assert sig.discriminator == f"category:{category}"
    assert_valid_signal(sig)


def test_high_risk_category_not_flagged_without_history() -> None:
    """A customer first seen at deployment is not 'new' to gambling: no baseline yet."""
    r = Replay()
    found = r.feed([("tx", make_tx(T0, 5_000, "7995"))])
    assert found == []
    r.feed(steady(2, 60, T0 + dt.timedelta(days=1)))
    assert r.feed([("tx", make_tx(T0 + dt.timedelta(days=62), 5_000, "7995"))]) == []


def test_configurable_high_risk_set() -> None:
    cfg = BehaviourConfig(
        mcc_categories=(("7273", "gambling"),), high_risk_categories=("gambling",)
    )
    assert mcc_category("7273", cfg) == "gambling"
    assert mcc_category("7995", cfg) == "entertainment"  # default overrides replaced
    r = Replay(cfg)
    r.feed(steady(0, 90))
    assert reasons(r.feed([("tx", make_tx(T0 + dt.timedelta(days=90), 900, "4829"))])) == []
    found = r.feed([("tx", make_tx(T0 + dt.timedelta(days=90, hours=1), 900, "7273"))])
    assert reasons(found) == ["new_high_risk_category"]


def test_cash_advance_surge() -> None:
    r, day = with_history()
    at = day + dt.timedelta(hours=10)
    atm = [
        ("tx", make_tx(at + dt.timedelta(hours=3 * i), 30_000, "6011", "cash_advance", "atm"))
        for i in range(3)
    ]
    found = r.feed(atm)
    assert "cash_advance_surge" in reasons(found)
    sig = next(s for _, s in found if s.reason_codes == ["cash_advance_surge"])
    share = sig.evidence[0].value
    assert sig.evidence[0].unit == "share" and isinstance(share, float) and share >= 0.5
    assert sig.evidence[0].text.startswith("cash advances are 66% of spend in the last 7 days")
    assert_valid_signal(sig)
    # the condition persists, but the rule is in its cooldown
    more = make_tx(day + dt.timedelta(hours=19), 30_000, "6011", "cash_advance", "atm")
    assert "cash_advance_surge" not in reasons(r.feed([("tx", more)]))


def test_single_usual_atm_withdrawal_is_not_a_surge() -> None:
    r, day = with_history()
    atm = make_tx(day + dt.timedelta(hours=10), 10_000, "6011", "cash_advance", "atm")
    assert r.feed([("tx", atm)]) == []


def test_application_velocity() -> None:
    r, day = with_history()
    apps = [
        ("app", make_app(day + dt.timedelta(hours=0), "app-1")),
        ("app", make_app(day + dt.timedelta(hours=0, minutes=5), "app-1", "bureau")),  # same
        ("app", make_app(day + dt.timedelta(hours=20), "app-2", "bureau")),
        ("app", make_app(day + dt.timedelta(hours=41), "app-3")),
        ("app", make_app(day + dt.timedelta(hours=45), "app-4")),  # within the cooldown
    ]
    found = r.feed(apps)
    assert reasons(found) == ["application_velocity"]
    event_id, sig = found[0]
    assert event_id == apps[3][1].event_id
    assert sig.evidence[0].text == "3 credit applications within 48 h"
    assert sig.evidence[0].value == 3 and sig.account_id is None
    assert sig.discriminator == "application:app-3"
    assert_valid_signal(sig)


def test_applications_spread_out_do_not_signal() -> None:
    r, day = with_history()
    apps = [("app", make_app(day + dt.timedelta(days=3 * i), f"app-{i}")) for i in range(6)]
    assert r.feed(apps) == []
    assert r.state is not None
    assert len(r.state.applications) <= DEFAULT_CONFIG.applications_kept


def test_spend_spike() -> None:
    r, day = with_history()
    events = [
        ("tx", make_tx(day + dt.timedelta(days=d, hours=11 + h), 20_000, "5732", channel="ecom"))
        for d in range(3)
        for h in range(4)
    ]
    found = r.feed(events)
    assert reasons(found) == ["spend_spike"]
    sig = found[0][1]
    ratio = sig.evidence[0]
    assert ratio.unit == "x" and isinstance(ratio.value, float) and ratio.value >= 4.0
    assert ratio.text == (f"spend in the last 7 days is {ratio.value}x the customer's 90-day norm")
    assert sig.evidence[1].unit == "EUR" and "spent in the last 7 days" in sig.evidence[1].text
    assert sig.kind == "behaviour_shift"
    assert_valid_signal(sig)


def test_one_big_day_within_norm_is_not_a_spike() -> None:
    r, day = with_history()
    # about 3x a usual day: a big weekly shop, not a 4x spike of the 7-day average
    events = [("tx", make_tx(day + dt.timedelta(hours=12), 15_000, "5411"))]
    assert r.feed(events) == []


def test_habit_drift_after_sustained_shift() -> None:
    r, day = with_history(days=150)
    rng = random.Random(9)
    shifted = [
        (
            "tx",
            make_tx(
                day + dt.timedelta(hours=12 * i + 9),
                int(math.exp(rng.gauss(5.5, 0.5)) * 100),  # median about 245 EUR
                "5311",
            ),
        )
        for i in range(40)
    ]
    found = r.feed(shifted)
    drifts = [(eid, s) for eid, s in found if s.reason_codes == ["habit_drift"]]
    assert len(drifts) == 1
    event_ids = [ev.event_id for _, ev in shifted]
    assert event_ids.index(drifts[0][0]) < 20
    sig = drifts[0][1]
    assert sig.evidence[0].text.startswith("typical transaction amount shifted up from about")
    assert sig.discriminator.startswith("up:")
    assert_valid_signal(sig)


def test_compact_page_hinkley_matches_river_reference() -> None:
    rng = random.Random(3)
    stream = [rng.gauss(3.4, 0.8) for _ in range(600)] + [rng.gauss(5.0, 0.8) for _ in range(200)]
    stream += [rng.gauss(2.0, 0.8) for _ in range(300)]
    params = DEFAULT_CONFIG.drift
    ref = drift.PageHinkley(
        min_instances=params.min_instances,
        delta=params.delta,
        threshold=params.threshold,
        alpha=params.alpha,
        mode=params.mode,
    )
    state, ours, theirs = PHState(), [], []
    for i, v in enumerate(stream):
        state, d = ph_update(state, v, params)
        ref.update(v)
        ours.append(i) if d else None
        theirs.append(i) if ref.drift_detected else None
    assert ours == theirs and len(ours) >= 2
    assert len(msgspec.msgpack.encode(state)) <= 52  # 48 B fresh; n grows to a 3-5 B int


@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=300),
    threshold=st.floats(0.5, 50),
    mode=st.sampled_from(["up", "down", "both"]),
)
@settings(max_examples=60, deadline=None, database=None, derandomize=True)
def test_compact_page_hinkley_matches_river_on_any_stream(
    values: list[float], threshold: float, mode: Literal["up", "down", "both"]
) -> None:
    p = PageHinkleyParams(min_instances=5, delta=0.01, threshold=threshold, mode=mode)
    ref = drift.PageHinkley(min_instances=5, delta=0.01, threshold=threshold, mode=mode)
    state = PHState()
    for v in values:
        state, d = ph_update(state, v, p)
        ref.update(v)
        assert bool(d) == ref.drift_detected



@pytest.mark.parametrize("mode", ["up", "down", "both"])
def test_habit_drift_follows_ph_update(mode: Literal["up", "down", "both"]) -> None:
    """on_transaction's Page-Hinkley states and habit_drift signals are ph_update's,
    field for field, through detections (and the reset after each)."""
    p = PageHinkleyParams(min_instances=5, delta=0.05, threshold=2.0, mode=mode)
    cfg = BehaviourConfig(drift=p)
    rng = random.Random(5)
    amounts = [int(math.exp(rng.gauss(m, 0.3)) * 100) for m in [3.0] * 40 + [5.0] * 30 + [2.0] * 40]
    state: BehaviourState | None = None
    ph, flagged = PHState(), 0
    for i, amount in enumerate(amounts):
        tx = make_tx(T0 + dt.timedelta(hours=5 * i), amount)
        state, sigs, _ = on_transaction(state, tx, LIMIT, HOME, cfg)
        ph, direction = ph_update(ph, math.log1p(amount / 100.0), p)
        assert state.ph == ph
        assert ("habit_drift" in reasons([("", s) for s in sigs])) == (direction != 0)
        flagged += direction != 0
    assert flagged >= 1

def test_utilisation_jump() -> None:
    r, day = with_history(days=125)  # four monthly payments, about 35% of the limit each
    events = [
        ("tx", make_tx(day + dt.timedelta(hours=10 + h), 80_000, "5732", channel="ecom"))
        for h in range(4)
    ]
    found = r.feed(events)
    assert "utilisation_jump" in reasons(found)
    sig = next(s for _, s in found if s.reason_codes == ["utilisation_jump"])
    util = sig.evidence[0].value
    assert sig.evidence[0].unit == "share" and isinstance(util, float) and util >= 0.6
    assert "usually reached before a payment" in sig.evidence[0].text
    assert_valid_signal(sig)
    # once per statement cycle (until the next payment)
    more = [("tx", make_tx(day + dt.timedelta(hours=20), 5_000, "5411"))]
    assert "utilisation_jump" not in reasons(r.feed(more))


def test_utilisation_needs_payments() -> None:
    """Without payments the approximate balance only grows: utilisation is not trusted."""
    r = Replay()
    events = [ev for ev in steady(0, 200) if ev[0] == "tx"]
    assert r.feed(events) == []


def test_installment_velocity() -> None:
    r, day = with_history()
    conv = [
        ("tx", make_tx(day + dt.timedelta(days=6 * i), 40_000, "5732", "installment_conversion"))
        for i in range(4)
    ]
    found = r.feed(conv)
    assert reasons(found) == ["installment_velocity"]
    assert found[0][0] == conv[2][1].event_id
    assert found[0][1].severity == "low"
    assert_valid_signal(found[0][1])


def test_installment_conversions_in_the_same_second_each_count() -> None:
    at = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)

    def texts(times: list[dt.datetime]) -> list[str]:
        s, out = None, []
        for when in times:
            tx = make_tx(when, 50_000, "5732", "installment_conversion")
            s, sigs, _ = on_transaction(s, tx, LIMIT, HOME)
            out += [g.evidence[0].text for g in sigs]
        return out

    day = dt.timedelta(days=1)
    same = texts([at, at, at + day])
    assert same == ["3 purchases converted to installments within 30 days"]
    assert same == texts([at, at + dt.timedelta(seconds=1), at + day])


def test_refunds_and_conversions_return_no_features() -> None:
    r, day = with_history(days=10)
    state = r.state
    refund = make_tx(day, 2_000, kind="refund")
    new, sigs, feats = on_transaction(state, refund, LIMIT, HOME, DEFAULT_CONFIG)
    assert feats == {} and sigs == []
    assert state is not None and new.balance == max(0, state.balance - 2_000)


def test_anomaly_signal_and_model_glue() -> None:
    r, day = with_history()
    model = make_anomaly_model(seed=1, warmup=50, window_size=50)
    for f in r.features:
        model.process_one(f)
    _, _, feats = on_transaction(
        r.state,
        make_tx(day + dt.timedelta(hours=3), 900_000, "6051", channel="ecom", country="BR"),
        LIMIT,
        HOME,
        DEFAULT_CONFIG,
    )
    score, flagged = model.process_one(feats)
    assert 0.0 <= score <= 1.0 and isinstance(flagged, bool)
    sig = anomaly_signal(make_tx(day, 1_000), score, model.threshold)
    assert sig.kind == "fraud_pattern" and sig.reason_codes == ["anomalous_transaction"]
    assert_valid_signal(sig)


def test_anomaly_model_does_not_learn_flagged_events() -> None:
    rng = random.Random(1)
    model = make_anomaly_model(seed=3, warmup=300, window_size=100)
    ordinary = [{k: abs(rng.gauss(0.2, 0.05)) for k in FEATURE_NAMES} for _ in range(400)]
    assert not model.is_anomalous(1.0)  # nothing is flagged during warm-up
    for x in ordinary:
        model.process_one(x)
    outlier = dict.fromkeys(FEATURE_NAMES, 1.0)
    score = model.score_one(outlier)
    assert model.is_anomalous(score) and score >= model.threshold
    counter, learnt, flagged = model.hst.counter, model.n_learnt, model.n_flagged
    model.learn_one(outlier)
    assert model.hst.counter == counter  # the trees did not learn it
    assert (model.n_learnt, model.n_flagged) == (learnt + 1, flagged + 1)
    assert model.score_one(outlier) == score


def test_a_flagged_transaction_is_explained_by_its_unusual_features() -> None:
    rng = random.Random(5)
    model = make_anomaly_model(seed=2, warmup=300, window_size=100)
    ordinary = {k: v for k, v in zip(MODEL_FEATURES, anomaly_baseline(), strict=True)}
    for _ in range(600):  # ordinary spend, near the baseline
        model.process_one({k: min(1.0, abs((v or 0.2) + rng.gauss(0, 0.03)))
                           for k, v in ordinary.items()})
    odd = {k: (v or 0.2) for k, v in ordinary.items()} | {"foreign": 1.0, "night": 1.0}
    row = tuple(odd[k] for k in MODEL_FEATURES)
    score, flagged = model.score_learn_scaled(row, learn=False)
    assert flagged
    before = (model.hst.counter, model.n_learnt, model.threshold, model._cache_key)
    factors = anomaly_factors(model, row)
    assert {name for name, _, _ in factors[:2]} == {"foreign", "night"}
    assert all(without < score for _, _, without in factors)
    assert (model.hst.counter, model.n_learnt, model.threshold, model._cache_key) == before
    assert model.score_learn_scaled(row, learn=False) == (score, flagged)
    tx = make_tx(dt.datetime(2026, 3, 2, 2, tzinfo=dt.UTC), 4_500, "5999", channel="ecom",
                 country="BR")
    sig = anomaly_signal(tx, score, model.threshold, factors=factors)
    assert_valid_signal(sig)
    texts = {e.code: e.text for e in sig.evidence}
    assert texts["anomaly_foreign"].startswith("abroad (BR); score ")
    assert texts["anomaly_night"].startswith("at night, customer's local time; score ")
    assert sig.evidence[0].code == "anomaly_score"


# --------------------------------------------------------------------------- #
# Determinism, immutability, timezone, late events
# --------------------------------------------------------------------------- #


def _events(seed: int, days: int) -> list[Event]:
    return list(steady(seed, days))


def test_replay_is_deterministic_and_state_round_trips() -> None:
    events = _events(4, 200)
    a, b = Replay(), Replay()
    a.feed(events[:300])
    b.feed(events[:300])
    assert b.state is not None
    b.state = decode_state(encode_state(b.state))
    a.feed(events[300:])
    b.feed(events[300:])
    assert a.state is not None and b.state is not None
    assert encode_state(a.state) == encode_state(b.state)
    assert [(e, msgspec.to_builtins(s)) for e, s in a.signals] == [
        (e, msgspec.to_builtins(s)) for e, s in b.signals
    ]


def test_timezone_buckets_by_local_day_and_night() -> None:
    # 23:30 UTC on 1 March is 08:30 on 2 March in Tokyo: a new local day, not night
    tx = make_tx(dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC), 2_000)
    s_utc, _, f_utc = on_transaction(None, tx, LIMIT, HOME, DEFAULT_CONFIG)
    s_tyo, _, f_tyo = on_transaction(None, tx, LIMIT, HOME, DEFAULT_CONFIG, timezone="Asia/Tokyo")
    assert s_tyo.day == s_utc.day + 1
    assert f_utc["night"] == 0.0 and f_tyo["night"] == 0.0
    at_night = make_tx(dt.datetime(2026, 3, 1, 17, 30, tzinfo=dt.UTC), 2_000)  # 02:30 Tokyo
    assert on_transaction(None, at_night, LIMIT, HOME, timezone="Asia/Tokyo")[2]["night"] == 1.0
    # an unknown zone falls back to UTC instead of failing every event
    assert on_transaction(None, tx, LIMIT, HOME, timezone="Mars/Olympus")[0].day == s_utc.day


def _bursts(start: dt.datetime, tz: str, minutes: list[float]) -> list[tuple[int, str]]:
    """(index, discriminator) of the velocity_burst-per-hour signals of a burst stream."""
    s, out = None, []
    for i, m in enumerate(minutes):
        tx = make_tx(start + dt.timedelta(minutes=m), 2_000)
        s, sigs, _ = on_transaction(s, tx, LIMIT, HOME, DEFAULT_CONFIG, timezone=tz)
        out += [(i, g.discriminator) for g in sigs if "velocity_burst" in g.reason_codes
                and g.evidence[0].unit == "tx/h"]
    return out


def test_hour_buckets_are_real_hours_across_a_dst_change() -> None:
    # 2026-10-25 in Berlin: 02:00-03:00 twice (00:00-01:00 UTC in CEST, 01:00-02:00 in CET).
    fall = dt.datetime(2026, 10, 25, 0, 5, tzinfo=dt.UTC)
    spread = [16.0 * i for i in range(8)]  # 8 transactions over 1 h 52 min
    assert _bursts(fall, "Europe/Berlin", spread) == []
    assert _bursts(fall, "UTC", spread) == []
    # A burst in each real hour is its own bucket, with its own discriminator.
    both = [5.0 * i for i in range(8)] + [60.0 + 5.0 * i for i in range(8)]
    assert _bursts(fall, "Europe/Berlin", both) == [
        (7, "hour:2026-10-25T02"), (15, "hour:2026-10-25T02+01:00")]
    # Discriminators name the local hour, also in a zone with a sub-hour offset.
    kolkata = dt.datetime(2026, 3, 2, 11, 30, tzinfo=dt.UTC)  # 17:00 +05:30
    assert _bursts(kolkata, "Asia/Kolkata", [5.0 * i for i in range(8)]) == [
        (7, "hour:2026-03-02T17")]
    assert _bursts(kolkata, "Asia/Kolkata", [25.0 + 5.0 * i for i in range(8)]) == []
    spring = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)  # 03:00 CEST (02:00 skipped)
    assert _bursts(spring, "Europe/Berlin", [5.0 * i for i in range(8)]) == [
        (7, "hour:2026-03-29T03")]


def test_a_state_with_local_hour_numbers_is_converted() -> None:
    # A version-1 state counted hours by local hour number (UTC + 1 in Berlin in March).
    at = dt.datetime(2026, 3, 2, 12, 5, tzinfo=dt.UTC)  # 13:05 in Berlin
    s = None
    for i in range(7):
        s = on_transaction(s, make_tx(at + dt.timedelta(minutes=i), 2_000), LIMIT, HOME,
                           timezone="Europe/Berlin")[0]
    assert s is not None and s.v == 2 and s.hour_count == 7
    old = msgspec.structs.replace(s, v=1, hour=s.hour + 1)
    new, sigs, _ = on_transaction(old, make_tx(at + dt.timedelta(minutes=8), 2_000), LIMIT,
                                  HOME, timezone="Europe/Berlin")
    assert (new.v, new.hour, new.hour_count) == (2, s.hour, 8)
    assert [g.discriminator for g in sigs] == ["hour:2026-03-02T13"]


def test_late_event_does_not_touch_closed_buckets() -> None:
    r, day = with_history(days=30)
    assert r.state is not None
    before = r.state
    late = make_tx(day - dt.timedelta(days=3), 7_000)
    after, sigs, feats = on_transaction(before, late, LIMIT, HOME, DEFAULT_CONFIG)
    assert sigs == [] and feats
    assert (after.day, after.day_spend, after.day_count) == (
        before.day,
        before.day_spend,
        before.day_count,
    )
    assert after.n_tx == before.n_tx + 1 and after.balance == before.balance + 7_000


def test_foreign_and_card_not_present_features() -> None:
    tx = make_tx(T0, 2_000, channel="ecom", country="FR")
    feats = on_transaction(None, tx, LIMIT, "DE", DEFAULT_CONFIG)[2]
    assert feats["foreign"] == 1.0 and feats["card_not_present"] == 1.0
    feats = on_transaction(None, tx, LIMIT, None, DEFAULT_CONFIG)[2]  # home unknown
    assert feats["foreign"] == 0.0


def test_categories_cover_bitmask() -> None:
    assert len(CATEGORIES) <= 63
    r = Replay()
    r.feed(steady(0, 30))
    assert r.state is not None
    seen = {CATEGORIES[i] for i in range(len(CATEGORIES)) if r.state.seen_mask >> i & 1}
    assert seen <= {"grocery", "dining", "fuel", "retail", "bills", "cash"}


# --------------------------------------------------------------------------- #
# Hypothesis: immutability and bounded state over long random streams
# --------------------------------------------------------------------------- #

_MCCS = ["5411", "5812", "5541", "5999", "4900", "6011", "7995", "6051", "4829", "5933", "3000"]
_KINDS: list[TxType] = ["purchase", "purchase", "purchase", "cash_advance", "refund"]
_KINDS.append("installment_conversion")
_CHANNELS: list[Channel] = ["pos", "contactless", "ecom", "moto", "atm"]

step = st.tuples(
    st.sampled_from(["tx", "tx", "tx", "tx", "app", "pay"]),
    st.integers(-7_200, 200_000),  # seconds since the previous event; negative = late
    st.integers(0, 5_000_000),
    st.sampled_from(_MCCS),
    st.sampled_from(_KINDS),
    st.sampled_from(_CHANNELS),
    st.sampled_from(["DE", "FR", "BR"]),
    st.integers(0, 30),  # application id, repeats allowed
)


@given(steps=st.lists(step, min_size=1, max_size=120), limit=st.sampled_from([None, 0, 250_000]))
@settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_functions_never_mutate_inputs(steps: list[tuple[Any, ...]], limit: int | None) -> None:
    state: BehaviourState | None = None
    when = T0
    for kind, gap, amount, mcc, tx_kind, channel, country, app_no in steps:
        when = when + dt.timedelta(seconds=gap)
        before = None if state is None else encode_state(state)
        if kind == "tx":
            tx = make_tx(when, amount, mcc, tx_kind, channel, country)
            tx_before = msgspec.json.encode(tx)
            new, sigs, feats = on_transaction(state, tx, limit, HOME, DEFAULT_CONFIG)
            assert msgspec.json.encode(tx) == tx_before
            assert all(0.0 <= v <= 1.0 for v in feats.values())
            for s in sigs:
                assert_valid_signal(s)
        elif kind == "app":
            app = make_app(when, f"app-{app_no}")
            new, sigs = on_application(state, app, DEFAULT_CONFIG)
            for s in sigs:
                assert_valid_signal(s)
        else:
            new = on_payment(state, amount, DEFAULT_CONFIG)
        if state is not None:
            assert encode_state(state) == before  # the input state is untouched
        assert isinstance(new, BehaviourState)
        state = new


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=8, deadline=None, database=None, derandomize=True)
def test_state_size_bounded_over_long_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    state: BehaviourState | None = None
    when = T0
    largest = 0
    for i in range(5_000):
        when += dt.timedelta(seconds=rng.choice([5, 60, 600, 3_600, 20_000, 90_000]))
        r = rng.random()
        if r < 0.03:
            app = make_app(when, f"app-{rng.randrange(10**9)}")
            state, _ = on_application(state, app, DEFAULT_CONFIG)
        elif r < 0.05:
            state = on_payment(state, rng.randrange(1, 400_000), DEFAULT_CONFIG)
        else:
            tx = make_tx(
                when,
                rng.randrange(1, 10**8),
                rng.choice(_MCCS),
                rng.choice(_KINDS),
                rng.choice(_CHANNELS),
                rng.choice(["DE", "FR", "US"]),
            )
            state = on_transaction(state, tx, LIMIT, HOME, DEFAULT_CONFIG)[0]
        if i % 50 == 0:
            largest = max(largest, len(encode_state(state)))
    assert state is not None
    largest = max(largest, len(encode_state(state)))
    assert largest < WORST_STATE < STATE_BOUND
    assert len(state.applications) <= DEFAULT_CONFIG.applications_kept
    assert len(state.conversions) <= DEFAULT_CONFIG.installment_count
    assert len(state.mix_raw) == len(CATEGORIES) and len(state.fired) == 7


# --------------------------------------------------------------------------- #
# Costs (printed, not asserted)
# --------------------------------------------------------------------------- #


def test_print_costs(capsys: pytest.CaptureFixture[str]) -> None:
    events = [ev for kind, ev in steady(7, 1_500) if kind == "tx"]
    state: BehaviourState | None = None
    feats = []
    t0 = time.perf_counter()
    for tx in events:
        state, _, f = on_transaction(state, tx, LIMIT, HOME, DEFAULT_CONFIG)
        feats.append(f)
    per_tx = (time.perf_counter() - t0) / len(events) * 1e6
    assert state is not None

    model = make_anomaly_model(seed=0)
    for f in feats[:1_000]:
        model.learn_one(f)
    t0 = time.perf_counter()
    for f in feats[1_000:]:
        score = model.score_one(f)
        model.is_anomalous(score)
        model.learn_one(f)
    per_model = (time.perf_counter() - t0) / len(feats[1_000:]) * 1e6
    import pickle

    with capsys.disabled():
        print(
            f"\n[behaviour] on_transaction: {per_tx:.1f} us/event over {len(events)} events;"
            f" state {len(encode_state(state))} B msgpack after {state.n_tx} transactions"
            f" (fresh state {len(encode_state(BehaviourState()))} B)"
            f"\n[behaviour] AnomalyModel score+learn: {per_model:.1f} us/event;"
            f" model {len(pickle.dumps(model))} B pickled"
        )
