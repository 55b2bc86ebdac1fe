"""The pure engine: idempotency, lateness, deterministic outputs, state round-trip."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.engine import SEEN_LIMIT, Engine, decode_state
from alerts.policy import DEFAULT_POLICY, load_policy_text
from schemas.errors import DecodeError
from schemas.models import CardTransaction, CustomerProfile, InstallmentDue, PaymentReceived

T0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def tx(i: int, amount: int = 2_000, hours: float | None = None, customer: str = "c1"):
    return CardTransaction(
        event_id=f"e{i}", event_time=T0 + dt.timedelta(hours=i if hours is None else hours),
        customer_id=customer, account_id="a1", type="purchase", amount_minor=amount,
        currency="EUR", mcc="5411", merchant_id="m", channel="pos", country="DE")


#: The large-transaction rule with a short history, as in these tests.
SENSITIVE = load_policy_text(
    "version: test-sensitive\nlarge_transaction: {multiple: 6.0, min_history: 5, "
    "floor_minor: 50000}")


def run(engine: Engine, events, state=None):
    outputs = []
    for event in events:
        result = engine.process("card-transactions", event, state)
        if result.state is not None:
            state = result.state
        outputs.extend(result.emits)
    return state, outputs


def test_spike_alert_has_deterministic_id_and_versions():
    events = [tx(i) for i in range(6)] + [tx(6, 200_000)]
    _, first = run(Engine(SENSITIVE), events)
    _, second = run(Engine(SENSITIVE), events)
    assert [e.id for e in first] == [e.id for e in second]
    first = [e for e in first if e.topic == "risk-alerts" and e.record.rule_id ==
             "large-transaction"]
    assert len(first) == 1
    alert = first[0].record
    assert alert.alert_id == first[0].id
    assert alert.trigger_event_id == "e6"
    assert alert.policy_version == SENSITIVE.version
    assert alert.rule_id == "large-transaction"
    assert first[0].key == "c1"


def test_duplicate_event_changes_nothing():
    engine = Engine(DEFAULT_POLICY)
    state, _ = run(engine, [tx(i) for i in range(3)])
    result = engine.process("card-transactions", tx(1), state)
    assert result.duplicate and result.state is None and result.emits == []


def test_too_late_event_is_refused_per_topic():
    engine = Engine(DEFAULT_POLICY)
    state, _ = run(engine, [tx(0, hours=24 * 100)])
    late = tx(1, hours=0)
    with pytest.raises(DecodeError) as info:
        engine.process("card-transactions", late, state)
    assert info.value.reason == "too_late"
    # Another topic has its own watermark: an old profile is still accepted.
    profile = CustomerProfile(event_id="p1", event_time=T0, customer_id="c1",
                              credit_limit_minor=1, currency="EUR", products=["credit_card"],
                              sector="s", region="r", segment="g")
    assert engine.process("customer-profiles", profile, state).state is not None


def test_policy_version_travels_with_outputs():
    policy = load_policy_text("version: candidate-9\nlarge_transaction: {multiple: 3.0, "
                              "min_history: 5, floor_minor: 0}")
    _, out = run(Engine(policy), [tx(i) for i in range(6)] + [tx(6, 10_000 * 7)])
    assert out and out[0].record.policy_version == "candidate-9"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=500_000), min_size=1, max_size=80),
       st.data())
def test_redelivery_of_any_recent_event_is_idempotent(amounts, data):
    engine = Engine(DEFAULT_POLICY)
    events = [tx(i, a) for i, a in enumerate(amounts)]
    state, outputs = run(engine, events)
    recent = events[-SEEN_LIMIT:]
    again = data.draw(st.sampled_from(recent))
    result = engine.process("card-transactions", again, state)
    assert result.duplicate and result.state is None and not result.emits
    # State stays bounded however long the stream.
    decoded = decode_state(state)
    assert len(decoded.seen) <= SEEN_LIMIT * 8  # 8 bytes per fingerprint
    assert len(state) < 2048
    # Same input, same output ids, whatever the run.
    _, again_outputs = run(Engine(DEFAULT_POLICY), events)
    assert [e.id for e in outputs] == [e.id for e in again_outputs]


def test_no_limit_raise_while_an_installment_is_past_due():
    """Six installments paid on time, the seventh missed: while it is a few days past
    due (its cycle not yet closed, so the on-time streak still reads 6) no raise."""
    engine = Engine(DEFAULT_POLICY)
    utc = dt.UTC
    start = dt.datetime(2025, 6, 1, 10, tzinfo=utc)
    state = engine.process("customer-profiles", CustomerProfile(
        event_id="p1", event_time=start, customer_id="c1", credit_limit_minor=500_000,
        currency="EUR", products=["credit_card"], sector="retail", region="de-be",
        segment="mass", timezone="UTC"), None).state
    raises = []

    def collect(result, when):
        nonlocal state
        state = result.state or state
        raises.extend((when, e.record) for e in result.emits
                      if e.topic == "limit-adjustments" and e.record.direction == "raise")

    due_date = start.date()
    for i in range(7):
        due_date = dt.date(2025 + (5 + i) // 12, (5 + i) % 12 + 1, 10)
        issued = dt.datetime.combine(due_date - dt.timedelta(days=20), dt.time(9), utc)
        collect(engine.process("repayments", InstallmentDue(
            event_id=f"d{i}", event_time=issued, customer_id="c1", account_id="a1",
            due_id=f"i{i}", due_date=due_date, amount_minor=20_000, currency="EUR"), state),
            issued)
        if i < 6:
            paid = dt.datetime.combine(due_date - dt.timedelta(days=2), dt.time(9), utc)
            collect(engine.process("repayments", PaymentReceived(
                event_id=f"pay{i}", event_time=paid, customer_id="c1", account_id="a1",
                amount_minor=20_000, currency="EUR"), state), paid)
        for k in range(4 if i == 6 else 30):
            t = dt.datetime.combine(due_date + dt.timedelta(days=k), dt.time(12), utc)
            collect(engine.advance("c1", state, t), t)
    t = dt.datetime.combine(due_date + dt.timedelta(days=4), dt.time(13), utc)
    collect(engine.process("card-transactions", CardTransaction(
        event_id="tx1", event_time=t, customer_id="c1", account_id="a1", type="purchase",
        amount_minor=1_500, currency="EUR", mcc="5411", merchant_id="m1", channel="pos",
        country="DE"), state), t)
    assert raises  # the good record did earn a raise before the missed due
    assert all(when.date() <= due_date for when, _ in raises)


def _unpaid_installment(engine: Engine, timezone: str) -> bytes | None:
    """A card customer in ``timezone`` with an installment of 200.00 EUR due on 2026-03-05
    (never paid): the sweeps after it escalate the grade."""
    start = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    state = engine.process("customer-profiles", CustomerProfile(
        event_id="p1", event_time=start, customer_id="c1", credit_limit_minor=500_000,
        currency="EUR", products=["credit_card"], sector="retail", region="de-be",
        segment="mass", timezone=timezone), None).state
    return engine.process("repayments", InstallmentDue(
        event_id="d1", event_time=start, customer_id="c1", account_id="a1", due_id="i1",
        due_date=dt.date(2026, 3, 5), amount_minor=20_000, currency="EUR"), state).state


def test_tier_actions_respect_quiet_hours_and_count_for_the_caps():
    # Score 820 lands in high under these bands: the tier's call is sent on the sweep at
    # 23:30 Berlin time, like the delinquency call in the same sweep: held until 08:00.
    policy = load_policy_text("version: v1\ngrades: {medium: 350, high: 650, critical: 900}")
    engine = Engine(policy)
    state = _unpaid_installment(engine, "Europe/Berlin")
    tier = []
    for k in range(1, 40):
        as_of = dt.datetime(2026, 3, 5, 22, 30, tzinfo=dt.UTC) + dt.timedelta(days=k)
        result = engine.advance("c1", state, as_of)
        state = result.state or state
        for e in result.emits:
            if e.topic == "customer-actions" and e.record.reason_codes[-1].startswith("tier_"):
                tier.append(e.record)
                sent = decode_state(state).sent
                # Counted for the caps, next to the delinquency call of the same sweep.
                assert sent.count((3, int(as_of.timestamp()))) == 2
    assert [(a.action, a.channel) for a in tier] == [("call", "call")]
    assert tier[0].not_before is not None and tier[0].not_before.hour == 6  # 08:00 CEST


def test_configured_sms_and_restructuring_offer_tier_responses_are_sent():
    policy = load_policy_text(
        "version: v1\ntiers: {critical: [sms, restructuring_offer, collections_case]}")
    engine = Engine(policy)
    state = _unpaid_installment(engine, "UTC")
    tier = []
    for k in range(1, 40):
        result = engine.advance("c1", state,
                                dt.datetime(2026, 3, 5, 12, tzinfo=dt.UTC) + dt.timedelta(days=k))
        state = result.state or state
        tier.extend((e.record.reason_codes[-1], e.record.action, e.record.channel)
                    for e in result.emits if e.topic == "customer-actions"
                    and e.record.reason_codes[-1].startswith("tier_")
                    and e.record.reason_codes[0] == "grade_critical")
    assert tier == [("tier_sms", "sms", "sms"),
                    ("tier_restructuring_offer", "restructuring_offer", "letter"),
                    ("tier_collections_case", "collections_case", "internal")]


def test_standing_alert_and_action_ids_do_not_collide_across_customers_with_slashes():
    policy = load_policy_text(
        "version: v1\nactions: {pre_due_reminder: {grades: [low, medium, high, critical]}}")
    start = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)

    def run_customer(customer, account):
        engine = Engine(policy)
        state = engine.process("customer-profiles", CustomerProfile(
            event_id=f"p-{account}", event_time=start, customer_id=customer,
            credit_limit_minor=500_000, currency="EUR", products=["credit_card"],
            sector="retail", region="de-be", segment="mass", timezone="UTC"), None).state
        result = engine.process("repayments", InstallmentDue(
            event_id=f"d-{account}", event_time=start, customer_id=customer,
            account_id=account, due_id="i1", due_date=dt.date(2026, 3, 5),
            amount_minor=20_000, currency="EUR"), state)
        state, emits = result.state, list(result.emits)
        for k in range(-4, 3):
            result = engine.advance(customer, state, dt.datetime(2026, 3, 5, 12, tzinfo=dt.UTC)
                                    + dt.timedelta(days=k))
            state = result.state or state
            emits.extend(result.emits)
        return {e.id for e in emits if e.topic in ("risk-alerts", "customer-actions")}

    first, second = run_customer("x/y", "z"), run_customer("x", "y/z")
    assert first and second  # a reminder, the onset alert and its SMS each
    assert not first & second


def test_a_new_segments_section_keeps_the_segment_monitors_observations():
    engine = Engine(DEFAULT_POLICY)
    key = ("retail", "credit_card", "north")
    engine.segments.observe_account(key, 20_514, True, True)
    engine.segments.observe_indicator("retail", "prosperity_index", 100.0, 20_500)
    engine.set_policy(load_policy_text("version: v2\nsegments: {min_accounts: 10}"))
    assert engine.policy.version == "v2"
    assert engine.segments.config.min_accounts == 10
    assert engine.segments.kpis(20_514)[key]["accounts"] == 1
    assert ("retail", "prosperity_index") in engine.segments._series


def test_set_policy_is_all_or_nothing(monkeypatch):
    engine = Engine(DEFAULT_POLICY)
    anomaly, segments = engine.anomaly, engine.segments

    def fail(self, config):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(engine.segments), "reconfigured", fail)
    new = load_policy_text("version: v3\nsegments: {min_accounts: 10}\n"
                           "anomaly: {quantile: 0.9}")
    with pytest.raises(RuntimeError):
        engine.set_policy(new)
    assert engine.policy is DEFAULT_POLICY
    assert engine.anomaly is anomaly and engine.segments is segments


def test_learn_false_teaches_neither_the_risk_model_nor_its_metrics():
    # A snapshot on day 0; on day 95 its 90-day horizon has passed: a negative label.
    events = [tx(0), tx(1, hours=95 * 24)]

    def feed(engine, learn):
        state, emits = None, []
        for e in events:
            r = engine.process("card-transactions", e, state, learn=learn)
            state = r.state or state
            emits.extend(r.emits)
        return state, emits

    engine = Engine(DEFAULT_POLICY)
    first = feed(engine, True)
    learnt = (engine.risk_model.n_learned, engine.quality.n, engine.anomaly.n_learnt)
    assert learnt[:2] == (1, 1)
    replay = feed(engine, False)  # a replay after a restart: already learnt
    assert (engine.risk_model.n_learned, engine.quality.n, engine.anomaly.n_learnt) == learnt
    # The customer's state and outputs are those of the learning run.
    assert replay == first


def test_only_card_payments_move_the_card_balance():
    from schemas.models import InstallmentDue, PaymentReceived, PaymentReversed, StatementDue

    def repay(cls, i, account, amount, **kw):
        return cls(event_id=f"r{i}", event_time=T0 + dt.timedelta(days=1, hours=i),
                   customer_id="c1", account_id=account, amount_minor=amount, currency="EUR",
                   **kw)

    engine = Engine(DEFAULT_POLICY)
    state, _ = run(engine, [tx(0, 400_000)])
    due = {"due_date": dt.date(2026, 2, 20)}
    balances = []
    for i, event in enumerate([
        repay(InstallmentDue, 1, "loan", 300_000, due_id="L1", product="personal_loan", **due),
        repay(PaymentReceived, 2, "loan", 300_000),     # a loan: the card balance stays
        repay(PaymentReversed, 3, "loan", 300_000, reversed_event_id="r2"),
        repay(StatementDue, 4, "card", 400_000, due_id="S1", minimum_minor=10_000, **due),
        repay(PaymentReceived, 5, "card", 100_000),     # the card: lowers it
        repay(PaymentReceived, 6, "new", 50_000),       # unknown account: as the card
    ]):
        state = engine.process("repayments", event, state).state
        b = decode_state(state).behaviour
        balances.append((i, b.balance, b.n_payments))
    assert balances == [(0, 400_000, 0), (1, 400_000, 0), (2, 400_000, 0), (3, 400_000, 0),
                        (4, 300_000, 1), (5, 250_000, 2)]


D0 = dt.date(2026, 2, 27)  # epoch day 20511, early in segment window 2930 (days 20510-20516)


def _segment_kpis(engine, day_offset=0):
    day = (D0 - dt.date(1970, 1, 1)).days + day_offset
    return {k: (v["accounts"], v["overdue"], v["newly_delinquent"])
            for k, v in engine.segments.kpis(day).items()}


def _segment_customer(engine):
    from schemas.models import StatementDue

    profile = CustomerProfile(
        event_id="p", event_time=T0, customer_id="c1", credit_limit_minor=500_000,
        currency="EUR", products=["credit_card", "personal_loan"], sector="retail",
        region="north", segment="mass")
    state = engine.process("customer-profiles", profile, None).state
    statement = StatementDue(
        event_id="s1", event_time=dt.datetime.combine(D0, dt.time(12), tzinfo=dt.UTC),
        customer_id="c1", account_id="card", due_id="d1", due_date=D0 + dt.timedelta(days=1),
        amount_minor=10_000, minimum_minor=1_000, currency="EUR")
    return engine.process("repayments", statement, state).state


def _at(days):
    return dt.datetime.combine(D0 + dt.timedelta(days=days), dt.time(12), tzinfo=dt.UTC)


CARD_SEGMENT, LOAN_SEGMENT = ("retail", "credit_card", "north"), ("retail", "personal_loan",
                                                                   "north")


def test_segment_kpis_count_every_account_once_per_window():
    from schemas.models import InstallmentDue, PaymentReceived

    engine = Engine(DEFAULT_POLICY)
    state = _segment_customer(engine)
    loan_due = InstallmentDue(  # due 20 days ago and unpaid: overdue, a delinquency onset
        event_id="i1", event_time=_at(1), customer_id="c1", account_id="loan", due_id="L1",
        due_date=D0 - dt.timedelta(days=20), amount_minor=30_000, currency="EUR",
        product="personal_loan")
    state = engine.process("repayments", loan_due, state).state
    state = engine.process("repayments", PaymentReceived(
        event_id="pay", event_time=_at(1), customer_id="c1", account_id="card",
        amount_minor=10_000, currency="EUR"), state).state  # the card again: not recounted
    assert _segment_kpis(engine) == {CARD_SEGMENT: (1, 0, 0), LOAN_SEGMENT: (1, 1, 1)}
    # The next window counts both again.
    state = engine.process("repayments", PaymentReceived(
        event_id="pay2", event_time=_at(7), customer_id="c1", account_id="loan",
        amount_minor=100, currency="EUR"), state).state
    assert _segment_kpis(engine, 7) == {LOAN_SEGMENT: (1, 1, 0)}


@pytest.mark.parametrize("path", ["event", "sweep"])
def test_a_delinquency_onset_later_in_the_window_is_counted_newly_delinquent(path):
    from schemas.models import PaymentReceived

    engine = Engine(DEFAULT_POLICY)
    state = _segment_customer(engine)  # counted on day 0, due on day 1, not yet overdue
    assert _segment_kpis(engine) == {CARD_SEGMENT: (1, 0, 0)}
    if path == "event":
        result = engine.process("repayments", PaymentReceived(
            event_id="pay", event_time=_at(5), customer_id="c1", account_id="card",
            amount_minor=100, currency="EUR"), state)
    else:
        result = engine.advance("c1", state, _at(5))
    assert "delinquency-onset" in [e.record.rule_id for e in result.emits
                                   if e.topic == "risk-alerts"]
    assert _segment_kpis(engine, 5) == {CARD_SEGMENT: (1, 1, 1)}  # one account, now new
    state = result.state
    for i, hours in enumerate((3, 8)):  # more in the window: nothing recounted
        state = engine.process("repayments", PaymentReceived(
            event_id=f"more{i}", event_time=_at(5) + dt.timedelta(hours=hours),
            customer_id="c1", account_id="card", amount_minor=100, currency="EUR"),
            state).state
        state = engine.advance("c1", state, _at(5) + dt.timedelta(hours=hours + 1)).state or state
    assert _segment_kpis(engine, 5) == {CARD_SEGMENT: (1, 1, 1)}
    assert decode_state(state).segment_accounts == {"card": 2930 << 2 | 3}


def test_a_state_counted_before_per_account_counts_is_not_recounted_in_that_window():
    from alerts.engine import encode_state
    from schemas.models import PaymentReceived

    engine = Engine(DEFAULT_POLICY)
    state = decode_state(_segment_customer(engine))
    old = encode_state(msgspec.structs.replace(state, segment_accounts={}))  # as before
    assert state.segment_window == 2930
    engine.process("repayments", PaymentReceived(
        event_id="pay", event_time=_at(2), customer_id="c1", account_id="loan",
        amount_minor=100, currency="EUR"), old)
    assert _segment_kpis(engine) == {CARD_SEGMENT: (1, 0, 0)}


def test_transactions_outside_the_profiles_home_country_count_as_foreign():
    """The profile's country is the customer's home: spend elsewhere feeds the behaviour
    profile's foreign share (and the anomaly model's ``foreign`` feature); with no
    country on the profile nor in the policy, nothing is foreign."""
    def foreign_share(country: str | None) -> float:
        engine = Engine(DEFAULT_POLICY)
        state = engine.process("customer-profiles", CustomerProfile(
            event_id="p1", event_time=T0, customer_id="c1", credit_limit_minor=500_000,
            currency="EUR", products=["credit_card"], sector="retail", region="north",
            segment="mass", country=country), None).state
        for i in range(6):
            abroad = msgspec.structs.replace(tx(i + 1), country="FR" if i % 2 else "DE")
            state = engine.process("card-transactions", abroad, state).state
        decoded = decode_state(state)
        assert decoded.profile is not None and decoded.profile.country == country
        return decoded.behaviour.foreign_raw

    assert foreign_share("DE") > 0.0
    assert foreign_share(None) == 0.0


def test_anomaly_alerts_say_which_traits_made_them(tmp_path) -> None:
    # A generated portfolio replayed with the default policy: every alert of the global
    # anomaly model names, after its score, the traits that made the transaction unusual.
    from streams.replay import replay, resolve_inputs
    from streams.simulator import Portfolio, write_jsonl

    write_jsonl(Portfolio(customers=200, days=90, seed=7), tmp_path / "in")
    replay(resolve_inputs([str(tmp_path / "in")]), tmp_path / "out", DEFAULT_POLICY)
    alerts = [msgspec.json.decode(line) for line in
              (tmp_path / "out" / "risk-alerts.jsonl").read_bytes().splitlines()]
    flagged = [a for a in alerts if "anomalous_transaction" in a["reason_codes"]]
    assert flagged
    for a in flagged:
        codes = [e["code"] for e in a["evidence"]]
        assert codes[0] == "anomaly_score" and 1 < len(codes) <= 4
        factors = a["evidence"][1:]
        assert all(e["code"].startswith("anomaly_") and e["value"] > 0 for e in factors)
        assert [e["value"] for e in factors] == sorted((e["value"] for e in factors),
                                                       reverse=True)


def test_state_bytes_are_canonical_whichever_path_an_event_takes(monkeypatch):
    """Card transactions that raise nothing on a day already scored leave most of the state
    as bytes (a lean state); the bytes written are those of the full state all the same,
    and the other events go the full way."""
    import alerts.engine as engine_module
    from alerts.engine import encode_state

    full = []
    original = engine_module._full_state
    monkeypatch.setattr(engine_module, "_full_state",
                        lambda lean: full.append(1) or original(lean))
    engine = Engine(DEFAULT_POLICY)
    profile = CustomerProfile(event_id="p1", event_time=T0, customer_id="c1",
                              credit_limit_minor=500_000, currency="EUR",
                              products=["credit_card"], sector="s", region="r", segment="g")
    due = InstallmentDue(event_id="d1", event_time=T0, customer_id="c1", account_id="a2",
                         due_id="i1", due_date=(T0 + dt.timedelta(days=3)).date(),
                         amount_minor=10_000, currency="EUR")
    state = engine.process("customer-profiles", profile, None).state
    state = engine.process("repayments", due, state).state
    n = 0
    for i in range(40):  # four a day, over ten days
        result = engine.process("card-transactions", tx(i, 1_500 + 37 * i, hours=6 * i), state)
        assert result.state is not None
        assert encode_state(decode_state(result.state)) == result.state
        state = result.state
        n += 1
    assert 0 < len(full) - 2 < n  # the profile and the due went the full way, and so did some
    assert decode_state(state).ledgers["a2"].dues


def test_a_state_whose_seen_is_a_list_of_ints_still_refuses_its_duplicates():
    """States written before ``seen`` became a blob keep it as a list of fingerprints:
    read as such (a duplicate is still refused), written back as a blob holding them."""
    from alerts.engine import CustomerState, encode_state, seen_blob
    from alerts.ids import event_fingerprint

    engine = Engine(DEFAULT_POLICY)
    events = [tx(i, 1_000 + i) for i in range(3)]
    state, _ = run(engine, events[:2])
    current = decode_state(state)
    assert isinstance(current.seen, bytes) and len(current.seen) == 16
    legacy = msgspec.structs.replace(current, seen=[event_fingerprint(e.event_id)
                                                    for e in events[:2]])
    old = encode_state(legacy)
    assert isinstance(decode_state(old).seen, list)
    assert engine.process("card-transactions", events[1], old).duplicate
    result = engine.process("card-transactions", events[2], old)
    assert not result.duplicate
    assert decode_state(result.state).seen == seen_blob(
        [event_fingerprint(e.event_id) for e in events])
    assert CustomerState().seen == b""
