"""Pre-due reminders: customers the policy marks by grade are reminded before a due date."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.engine import Engine, decode_state, encode_state
from alerts.ids import output_id, subject
from alerts.policy import DEFAULT_POLICY, load_policy_text
from detectors.delinquency import DueIndex, epoch_day
from schemas.errors import PolicyError
from schemas.models import (
    CardTransaction,
    CustomerProfile,
    DeferralStarted,
    InstallmentDue,
    PaymentReceived,
    PaymentReversed,
    StatementDue,
)

T0 = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
DUE_DATE = dt.date(2026, 3, 11)
D = epoch_day(DUE_DATE)
#: Every grade marked: any graded customer with an open due is reminded.
EVERYONE = load_policy_text(
    "version: remind-all\nactions: {pre_due_reminder: {grades: [low, medium, high, critical]}}")


def at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(1970, 1, 1, hour, tzinfo=dt.UTC) + dt.timedelta(days=day)


def due(event_id="d1", when=T0, due_id="i1", due_date=DUE_DATE, amount=10_000, account="a1"):
    return InstallmentDue(event_id=event_id, event_time=when, customer_id="c1",
                          account_id=account, due_id=due_id, due_date=due_date,
                          amount_minor=amount, currency="EUR")


def pay(event_id, when, amount, account="a1"):
    return PaymentReceived(event_id=event_id, event_time=when, customer_id="c1",
                           account_id=account, amount_minor=amount, currency="EUR")


def profile(tz="UTC", when=T0):
    return CustomerProfile(event_id="p1", event_time=when, customer_id="c1",
                           credit_limit_minor=500_000, currency="EUR", products=["credit_card"],
                           sector="retail", region="de-be", segment="mass", timezone=tz)


def feed(engine, events, state=None):
    emits = []
    for topic, event in events:
        result = engine.process(topic, event, state)
        state = result.state or state
        emits.extend(result.emits)
    return state, emits


def reminders(emits):
    return [e.record for e in emits
            if e.topic == "customer-actions" and "pre_due_reminder" in e.record.reason_codes]


def test_marked_customer_is_reminded_on_the_pre_due_day_by_the_sweep():
    engine = Engine(EVERYONE)
    state, emits = feed(engine, [("repayments", due())])
    assert reminders(emits) == []
    assert engine.process("repayments", due(), state).duplicate
    # The pre-due day is the customer's next check day (the sweep index holds it).
    assert decode_state(state).next_check == D - 3
    early = engine.advance("c1", state, at(D - 4))
    assert early.state is None and early.emits == [] and early.next_check == D - 3
    result = engine.advance("c1", state, at(D - 3))
    [action] = reminders(result.emits)
    assert action.action_id == output_id("pre-due-reminder", 1, subject("c1", "a1"), "i1")
    assert (action.action, action.channel, action.account_id) == ("reminder", "sms", "a1")
    assert action.reason_codes == ["pre_due_reminder", "grade_low"]
    facts = {e.code: e.value for e in action.evidence}
    assert facts == {"due_date": "2026-03-11", "amount_due": 10_000, "days_to_due": 3,
                     "grade": "low"}
    assert action.trigger_event_id == f"sweep:c1:{D - 3}"
    assert action.not_before is None  # 12:00 UTC is outside quiet hours
    # A reminder-only sweep neither steps the ledgers nor re-scores the customer.
    assert [e.topic for e in result.emits] == ["customer-actions"]
    # Once reminded, the next check is the ledger's own (the day after the due date).
    assert result.next_check == D + 1
    again = engine.advance("c1", result.state, at(D - 2))
    assert again.state is None and again.emits == []


def test_default_policy_marks_high_and_critical_only():
    rule = DEFAULT_POLICY.actions.pre_due_reminder
    assert (rule.enabled, rule.grades, rule.days_before, rule.channel) == (
        True, ("high", "critical"), 3, "sms")
    # A fresh customer is graded low: no reminder, and no extra check day in the index.
    engine = Engine(DEFAULT_POLICY)
    state, _ = feed(engine, [("repayments", due())])
    assert decode_state(state).score.last_grade == 0
    assert decode_state(state).next_check == D + 1
    assert engine.advance("c1", state, at(D - 3)).state is None


@pytest.mark.parametrize(("marked", "expected"), [("[medium]", 1), ("[high, critical]", 0)])
def test_marking_follows_the_customer_grade(marked, expected):
    # Narrow bands put a fresh customer (score about 35) in ``medium``.
    policy = load_policy_text(
        "version: bands\ngrades: {medium: 20, high: 650, critical: 800, margin: 5}\n"
        f"actions: {{pre_due_reminder: {{grades: {marked}}}}}")
    engine = Engine(policy)
    state, _ = feed(engine, [("repayments", due())])
    assert decode_state(state).score.last_grade == 1
    assert len(reminders(engine.advance("c1", state, at(D - 3)).emits)) == expected


def test_a_customer_marked_inside_the_window_is_reminded_at_once():
    # Graded medium only from the third day before the due date: the event that changes
    # the grade (here: the due itself, graded under a policy that marks medium) reminds.
    engine = Engine(DEFAULT_POLICY)
    state, _ = feed(engine, [("repayments", due())])
    engine.set_policy(load_policy_text(
        "version: bands\ngrades: {medium: 20, high: 650, critical: 800, margin: 5}\n"
        "actions: {pre_due_reminder: {grades: [medium]}}"))
    state, emits = feed(engine, [("repayments", pay("p-small", at(D - 2), 100))], state)
    [action] = reminders(emits)
    assert action.trigger_event_id == "p-small"
    assert {e.code: e.value for e in action.evidence}["amount_due"] == 9_900


def test_amount_paid_in_advance_is_not_reminded():
    engine = Engine(EVERYONE)
    # Paid before the due was even issued (credit), and paid after it was issued.
    for events in ([("repayments", pay("p0", T0 - dt.timedelta(days=1), 10_000)),
                    ("repayments", due())],
                   [("repayments", due()), ("repayments", pay("p1", at(D - 6), 10_000))]):
        state, emits = feed(engine, events)
        assert reminders(emits) == []
        assert engine.advance("c1", state, at(D - 3)).emits == []


def test_partly_paid_due_is_reminded_for_what_is_left():
    engine = Engine(EVERYONE)
    state, _ = feed(engine, [("repayments", due()), ("repayments", pay("p1", at(D - 6), 4_000))])
    [action] = reminders(engine.advance("c1", state, at(D - 3)).emits)
    assert {e.code: e.value for e in action.evidence}["amount_due"] == 6_000


def test_statement_reminder_is_for_the_unpaid_minimum():
    engine = Engine(EVERYONE)
    stmt = StatementDue(event_id="s1", event_time=T0, customer_id="c1", account_id="card",
                        due_id="st-3", due_date=DUE_DATE, amount_minor=80_000,
                        minimum_minor=4_000, currency="EUR")
    state, _ = feed(engine, [("repayments", stmt)])
    [action] = reminders(engine.advance("c1", state, at(D - 3)).emits)
    assert {e.code: e.value for e in action.evidence}["amount_due"] == 4_000
    assert action.action_id == output_id("pre-due-reminder", 1, subject("c1", "card"), "st-3")


def test_due_issued_inside_the_window_is_reminded_by_its_own_event():
    engine = Engine(EVERYONE)
    late_issue = due(when=at(D - 2, hour=9))
    _, emits = feed(engine, [("repayments", late_issue)])
    [action] = reminders(emits)
    assert action.trigger_event_id == "d1"
    assert {e.code: e.value for e in action.evidence}["days_to_due"] == 2
    # Same id as a sweep would have given it: consumers deduplicate across paths.
    assert action.action_id == output_id("pre-due-reminder", 1, subject("c1", "a1"), "i1")
    # No reminder on the due date itself or afterwards.
    on_the_day, emits = feed(Engine(EVERYONE), [("repayments", due(when=at(D, hour=1)))])
    assert reminders(emits) == []
    assert decode_state(on_the_day).next_check == D + 1


def test_a_late_event_does_not_take_the_customer_back_into_the_window():
    def tx(event_id, when):
        return CardTransaction(event_id=event_id, event_time=when, customer_id="c1",
                               account_id="card", type="purchase", amount_minor=2_000,
                               currency="EUR", mcc="5411", merchant_id="m", channel="pos",
                               country="DE")

    engine = Engine(EVERYONE)
    # The customer's newest event is on the due date: the window has passed unswept.
    state, _ = feed(engine, [("repayments", due()),
                             ("card-transactions", tx("t1", at(D, hour=8)))])
    state, emits = feed(engine, [("card-transactions", tx("t0", at(D - 2)))], state)
    assert reminders(emits) == []


def test_reversed_payment_reopens_the_reminder():
    engine = Engine(EVERYONE)
    state, _ = feed(engine, [("repayments", due()), ("repayments", pay("p1", at(D - 6), 10_000))])
    assert engine.advance("c1", state, at(D - 3)).emits == []
    bounced = PaymentReversed(event_id="r1", event_time=at(D - 2), customer_id="c1",
                              account_id="a1", reversed_event_id="p1", amount_minor=10_000,
                              currency="EUR")
    state, emits = feed(engine, [("repayments", bounced)], state)
    [action] = reminders(emits)
    assert action.trigger_event_id == "r1"


def test_no_reminder_during_a_deferral():
    engine = Engine(EVERYONE)
    deferral = DeferralStarted(event_id="df1", event_time=T0, customer_id="c1", account_id="a1",
                               deferral_id="hardship-1", until=dt.date(2026, 4, 1))
    state, emits = feed(engine, [("repayments", due()), ("repayments", deferral)])
    assert reminders(emits) == []
    for day in range(D - 3, D):
        result = engine.advance("c1", state, at(day))
        assert reminders(result.emits) == []
        state = result.state or state


def test_no_reminder_while_crisis_mode_pauses_payments_and_one_once_it_ends():
    crisis = load_policy_text(
        "version: crisis\nactions: {pre_due_reminder: {grades: [low, medium, high, critical]}}\n"
        "crisis: {active: true, start: '2026-03-01T00:00:00Z', end: '2026-03-10T00:00:00Z'}")
    engine = Engine(crisis)
    state, _ = feed(engine, [("repayments", due())])
    # Paused through 9 March: the first day a reminder may go out is 10 March (D - 1).
    assert decode_state(state).next_check == D - 1
    for day in (D - 3, D - 2):
        assert reminders(engine.advance("c1", state, at(day)).emits) == []
    [action] = reminders(engine.advance("c1", state, at(D - 1)).emits)
    assert {e.code: e.value for e in action.evidence}["days_to_due"] == 1
    # An open-ended crisis: no reminder at all.
    endless = load_policy_text(
        "version: crisis-open\nactions: {pre_due_reminder: {grades: [low]}}\n"
        "crisis: {active: true, start: '2026-03-01T00:00:00Z'}")
    engine = Engine(endless)
    state, emits = feed(engine, [("repayments", due())])
    for day in range(D - 3, D):
        emits.extend(engine.advance("c1", state, at(day)).emits)
    assert reminders(emits) == []


def test_quiet_hours_in_the_customer_time_zone():
    engine = Engine(EVERYONE)
    state, _ = feed(engine, [("customer-profiles", profile("Europe/Berlin")),
                             ("repayments", due())])
    late_evening = at(D - 3, hour=21)  # 22:00 in Berlin
    [action] = reminders(engine.advance("c1", state, late_evening).emits)
    assert action.not_before == dt.datetime(2026, 3, 9, 7, tzinfo=dt.UTC)  # 08:00 Berlin


def test_frequency_cap_suppresses_the_reminder_and_it_is_not_retried():
    engine = Engine(EVERYONE)
    state, _ = feed(engine, [("repayments", due())])
    stored = decode_state(state)
    sms = 0  # CHANNELS index of "sms"
    stored.sent = [(sms, int(at(D - 4).timestamp()))] * EVERYONE.actions.cap_per_channel
    state = encode_state(stored)
    result = engine.advance("c1", state, at(D - 3))
    assert reminders(result.emits) == []
    assert engine.advance("c1", result.state, at(D - 1)).emits == []


def test_disabled_rule_or_actions_send_nothing():
    for text in ("actions: {pre_due_reminder: {enabled: false, grades: [low]}}",
                 "actions: {enabled: false, pre_due_reminder: {grades: [low]}}"):
        engine = Engine(load_policy_text("version: disabled\n" + text))
        state, _ = feed(engine, [("repayments", due())])
        assert decode_state(state).next_check == D + 1
        assert engine.advance("c1", state, at(D - 3)).state is None


def test_channel_and_days_from_the_policy():
    engine = Engine(load_policy_text(
        "version: email\nactions: {pre_due_reminder: {grades: [low], days_before: 5, "
        "channel: email}}"))
    state, _ = feed(engine, [("repayments", due())])
    assert decode_state(state).next_check == D - 5
    [action] = reminders(engine.advance("c1", state, at(D - 5, hour=23)).emits)
    assert action.channel == "email" and action.not_before is None  # not an instant channel


def test_two_accounts_two_due_dates_each_reminded_once():
    engine = Engine(EVERYONE)
    state, _ = feed(engine, [
        ("repayments", due()),
        ("repayments", due("d2", due_id="j1", due_date=DUE_DATE + dt.timedelta(days=4),
                           account="b2")),
    ])
    assert decode_state(state).next_check == D - 3
    first = engine.advance("c1", state, at(D - 3))
    assert [a.account_id for a in reminders(first.emits)] == ["a1"]
    assert first.next_check == D + 1
    second = engine.advance("c1", first.state, at(D + 1))
    assert [a.account_id for a in reminders(second.emits)] == ["b2"]


@pytest.mark.parametrize(("text", "field"), [
    ("{grades: [watch]}", "$.actions.pre_due_reminder.grades[0]"),
    ("{grades: [high, high]}", "$.actions.pre_due_reminder"),
    ("{days_before: 0}", "$.actions.pre_due_reminder.days_before"),
    ("{channel: call}", "$.actions.pre_due_reminder.channel"),
    ("{days: 3}", "$.actions.pre_due_reminder"),
])
def test_bad_reminder_policy_names_the_field(text, field):
    with pytest.raises(PolicyError) as info:
        load_policy_text(f"version: bad\nactions: {{pre_due_reminder: {text}}}")
    assert f"at `{field}`" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(
    issue_offset=st.integers(min_value=1, max_value=12),
    payments=st.lists(st.tuples(st.integers(min_value=-12, max_value=2),
                                st.integers(min_value=0, max_value=12_000)), max_size=3),
    sweep_days=st.lists(st.integers(min_value=-12, max_value=3), max_size=8),
)
def test_reminders_under_any_schedule_of_events_and_sweeps(issue_offset, payments, sweep_days):
    """At most one reminder per due, only inside its window, never for a due paid at that
    moment; and a due still unpaid when a sweep crosses its pre-due day is reminded."""
    engine = Engine(EVERYONE)
    index = DueIndex()
    state = None
    timeline = [(D - issue_offset, 0, "due", 0)]
    timeline += [(D + off, 1, f"p{i}", amount) for i, (off, amount) in enumerate(payments)]
    timeline += [(D + off, 2, "sweep", 0) for off in sweep_days]
    paid = 0
    found = []
    for day, kind, name, amount in sorted(timeline):
        if kind == 2:
            for key in index.pop_due(day):
                result = engine.advance(key, state, at(day))
                state = result.state or state
                index.add(key, result.next_check)
                for action in reminders(result.emits):
                    found.append((day, action, paid))
            continue
        event = due(when=at(day, hour=6)) if kind == 0 else pay(name, at(day, hour=6), amount)
        result = engine.process("repayments", event, state)
        state = result.state or state
        index.add("c1", result.next_check)
        paid += amount
        found.extend((day, action, paid) for action in reminders(result.emits))
    assert len(found) <= 1
    for day, action, paid_then in found:
        assert D - 3 <= day < D
        assert paid_then < 10_000 - DEFAULT_POLICY.delinquency.tolerance_minor
        assert {e.code: e.value for e in action.evidence}["amount_due"] == 10_000 - paid_then
    window = [d for d in sweep_days if -3 <= d < 0]
    if window and not found:
        first = D + min(window)
        paid_by = sum(a for off, a in payments if D + off <= first)
        assert paid_by >= 10_000 - DEFAULT_POLICY.delinquency.tolerance_minor
