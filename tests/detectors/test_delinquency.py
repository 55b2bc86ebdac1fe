"""Tests of the per-account repayment ledger (detectors/delinquency.py)."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detectors.base import Signal
from detectors.delinquency import (
    DEFAULT_CONFIG,
    AccountLedger,
    Bucket,
    DelinquencyConfig,
    DueIndex,
    Pause,
    advance,
    apply,
    bucket_history,
    days_past_due,
    decode_ledger,
    encode_ledger,
    epoch_day,
    next_check_day,
    snapshot,
)
from schemas.models import (
    DeferralEnded,
    DeferralStarted,
    InstallmentDue,
    PaymentReceived,
    PaymentReversed,
    PlanAgreed,
    PlanInstallment,
    StatementDue,
)

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
D0 = epoch_day(T0)  # 19723
ACC = "a1"
CUST = "c1"
_COMMON: dict[str, Any] = {"customer_id": CUST, "account_id": ACC}


# --------------------------------------------------------------------------- #
# Event builders (days are offsets from T0)
# --------------------------------------------------------------------------- #


def at(day: int, sec: int = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=day, seconds=sec)


def date(day: int) -> dt.date:
    return (T0 + dt.timedelta(days=day)).date()


def inst(eid: str, day: int, due_day: int, amount: int, due_id: str | None = None) -> Any:
    return InstallmentDue(
        event_id=eid,
        event_time=at(day),
        due_id=due_id or f"due-{eid}",
        due_date=date(due_day),
        amount_minor=amount,
        currency="EUR",
        **_COMMON,
    )


def stmt(eid: str, day: int, due_day: int, amount: int, minimum: int) -> Any:
    return StatementDue(
        event_id=eid,
        event_time=at(day),
        due_id=f"st-{eid}",
        due_date=date(due_day),
        amount_minor=amount,
        minimum_minor=minimum,
        currency="EUR",
        **_COMMON,
    )


def pay(eid: str, day: int, amount: int, sec: int = 0) -> Any:
    return PaymentReceived(
        event_id=eid, event_time=at(day, sec), amount_minor=amount, currency="EUR", **_COMMON
    )


def rev(eid: str, day: int, target: str, amount: int, sec: int = 0) -> Any:
    return PaymentReversed(
        event_id=eid,
        event_time=at(day, sec),
        reversed_event_id=target,
        amount_minor=amount,
        currency="EUR",
        **_COMMON,
    )


def plan(eid: str, day: int, plan_id: str, schedule: Sequence[tuple[int, int]]) -> Any:
    return PlanAgreed(
        event_id=eid,
        event_time=at(day),
        plan_id=plan_id,
        currency="EUR",
        installments=[PlanInstallment(due_date=date(d), amount_minor=a) for d, a in schedule],
        **_COMMON,
    )


def dstart(eid: str, day: int, did: str, until: int | None = None) -> Any:
    return DeferralStarted(
        event_id=eid,
        event_time=at(day),
        deferral_id=did,
        until=None if until is None else date(until),
        **_COMMON,
    )


def dend(eid: str, day: int, did: str) -> Any:
    return DeferralEnded(event_id=eid, event_time=at(day), deferral_id=did, **_COMMON)


def run(
    events: Sequence[Any],
    cfg: DelinquencyConfig = DEFAULT_CONFIG,
    ledger: AccountLedger | None = None,
    pauses: Sequence[Pause] = (),
) -> tuple[AccountLedger, list[Signal]]:
    out: list[Signal] = []
    for ev in events:
        ledger, sigs = apply(ledger, ev, cfg, pauses=pauses)
        out.extend(sigs)
    assert ledger is not None
    return ledger, out


def sweep(
    ledger: AccountLedger, to_day: int, cfg: DelinquencyConfig = DEFAULT_CONFIG
) -> tuple[AccountLedger, list[Signal]]:
    """Advance day by day (offset days) up to ``to_day``."""
    out: list[Signal] = []
    for day in range(ledger.clock + 1, D0 + to_day + 1):
        ledger, sigs = advance(ledger, day, cfg)
        out.extend(sigs)
    return ledger, out


def rules(signals: Sequence[Signal]) -> list[str]:
    return [s.rule_id for s in signals]


def dpd(ledger: AccountLedger, cfg: DelinquencyConfig = DEFAULT_CONFIG) -> int:
    return days_past_due(ledger, ledger.clock, cfg)


def core(ledger: AccountLedger) -> tuple[Any, ...]:
    """Everything but the announcement fields (bucket history, flags)."""
    plan_core = None
    if ledger.plan is not None:
        p = ledger.plan
        plan_core = (p.id, p.key, p.n)
    return (
        ledger.account_id,
        ledger.clock,
        ledger.product,
        ledger.dues,
        ledger.items,
        ledger.credit,
        ledger.base_credit,
        ledger.floating,
        ledger.float_from,
        ledger.frontier,
        ledger.retired,
        ledger.cycles,
        ledger.seen,
        ledger.deferrals,
        plan_core,
    )


# --------------------------------------------------------------------------- #
# Scenarios
# --------------------------------------------------------------------------- #


def test_allocation_oldest_first_partial_and_credit() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), inst("d2", 0, 40, 10000), pay("p1", 5, 15000)])
    assert [(d.id, d.paid) for d in led.dues] == [("due-d1", 10000), ("due-d2", 5000)]
    led, _ = run([pay("p2", 6, 8000)], ledger=led)
    assert [d.paid for d in led.dues] == [10000, 10000]
    assert led.credit == 3000
    led, _ = run([inst("d3", 7, 70, 10000)], ledger=led)  # credit applied to a new due
    assert led.dues[-1].paid == 3000 and led.credit == 0


def test_partial_payment_below_tolerance_is_not_delinquent() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), pay("p1", 5, 9600)])
    led, _ = advance(led, D0 + 40)
    assert dpd(led) == 0
    led, _ = run([pay("p2", 41, 0)], DelinquencyConfig(tolerance_minor=100), ledger=led)
    assert days_past_due(led, led.clock, DelinquencyConfig(tolerance_minor=100)) == 31


def test_onset_worsening_labels_and_bucket_history_with_days() -> None:
    led, _ = run([inst("d1", 0, 10, 10000)])
    led, sigs = sweep(led, 110)
    assert rules(sigs) == [
        "delinquency-onset",  # day 11
        "dpd-bucket-worsened",  # day 40 -> 30-59
        "label-30dpd",
        "dpd-bucket-worsened",  # day 70 -> 60-89
        "dpd-bucket-worsened",  # day 100 -> 90-179
        "label-90dpd",
    ]
    assert bucket_history(led) == [
        (D0 + 11, "dpd_1_29"),
        (D0 + 40, "dpd_30_59"),
        (D0 + 70, "dpd_60_89"),
        (D0 + 100, "dpd_90_179"),
    ]
    onset = sigs[0]
    ev = {e.code: e.value for e in onset.evidence}
    assert ev["dpd"] == 1 and ev["overdue_amount"] == 10000
    assert ev["oldest_due_date"] == "2024-01-11" and ev["bucket"] == "dpd_1_29"
    assert onset.severity == "low" and onset.account_id == ACC
    # Cure by a late payment: back to current, dated on the payment's day.
    led, sigs = run([pay("p1", 112, 10000)], ledger=led)
    assert rules(sigs) == ["delinquency-cured"] and dpd(led) == 0
    assert bucket_history(led)[-1] == (D0 + 112, "current")
    # Labels fire only once per account, even in a second episode.
    led, _ = run([inst("d2", 113, 120, 10000)], ledger=led)
    led, sigs = sweep(led, 230)
    assert "label-30dpd" not in rules(sigs) and "label-90dpd" not in rules(sigs)
    assert rules(sigs)[0] == "delinquency-onset"


def test_jump_without_sweep_is_not_missed() -> None:
    """An event long after the due date first advances time, then applies."""
    led, _ = run([inst("d1", 0, 10, 10000)])
    led, sigs = run([pay("p1", 45, 4000)], ledger=led)
    assert rules(sigs) == ["delinquency-onset", "label-30dpd"]
    assert bucket_history(led) == [(D0 + 40, "dpd_30_59")]


def test_reversal_reopens_exactly_what_it_paid() -> None:
    led, _ = run(
        [
            inst("d1", 0, 10, 10000),
            inst("d2", 0, 40, 10000),
            pay("p1", 9, 10000),
            pay("p2", 39, 10000),
        ]
    )
    assert [d.paid for d in led.dues] == [10000, 10000] and dpd(led) == 0
    led, sigs = run([rev("r1", 45, "p1", 10000)], ledger=led)
    # d1 is open again (not d2): p2 keeps paying d2.
    assert [d.paid for d in led.dues] == [0, 10000]
    assert dpd(led) == 35
    assert rules(sigs) == ["delinquency-onset", "label-30dpd"]
    assert bucket_history(led)[-1] == (D0 + 45, "dpd_30_59")
    # A later payment fills the re-opened due first.
    led, sigs = run([pay("p3", 46, 10000)], ledger=led)
    assert [d.paid for d in led.dues] == [10000, 10000] and dpd(led) == 0
    assert rules(sigs) == ["delinquency-cured"]


def test_reversal_takes_credit_first_and_partial_reversal() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), pay("p1", 5, 12000)])
    assert led.credit == 2000
    led, _ = run([rev("r1", 6, "p1", 3000)], ledger=led)
    assert led.credit == 0 and led.dues[0].paid == 9000


def test_reversal_before_its_payment_is_order_independent() -> None:
    evs = [inst("d1", 0, 10, 10000), pay("p1", 5, 10000), rev("r1", 6, "p1", 10000)]
    a, _ = run(evs)
    b, _ = run([evs[0], evs[2], evs[1]])
    assert core(a) == core(b)
    assert a.dues[0].paid == 0


def test_late_reversal_of_finalised_payment_becomes_a_due() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), pay("p1", 5, 10000)])
    led, _ = advance(led, D0 + 100)  # p1 finalised (60 + 7 days), d1 retired
    assert led.items == [] and led.dues == [] and led.retired == 10000
    led, sigs = run([rev("r1", 101, "p1", 10000)], ledger=led)
    assert [d.kind for d in led.dues] == [3] and led.dues[0].day == D0 + 101
    led, sigs = advance(led, D0 + 103)
    assert dpd(led) == 2 and rules(sigs) == ["delinquency-onset"]


def test_deferral_stops_the_clock() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), dstart("f1", 15, "def1", until=44)])
    led, _ = advance(led, D0 + 30)
    assert dpd(led) == 4  # days 11..14 count, 15.. paused
    led, _ = advance(led, D0 + 50)
    assert dpd(led) == 4 + 6  # paused 15..44 inclusive, 45..50 count
    # Ending a deferral early resumes the clock from that day.
    led2, _ = run([inst("d1", 0, 10, 10000), dstart("f1", 15, "def1"), dend("f2", 20, "def1")])
    led2, _ = advance(led2, D0 + 30)
    assert dpd(led2) == 4 + 11
    # An open-ended deferral freezes DPD and next_check_day has nothing to wait for.
    led3, _ = run([inst("d1", 0, 10, 10000), dstart("f1", 15, "def1")])
    led3, _ = advance(led3, D0 + 400)
    assert dpd(led3) == 4
    assert next_check_day(led3) == D0 + 400 + 30  # a periodic look while paused


def test_global_crisis_pause_is_a_parameter() -> None:
    led, _ = run([inst("d1", 0, 10, 10000)])
    crisis: list[Pause] = [(D0 + 20, D0 + 50)]
    assert days_past_due(led, D0 + 60, pauses=crisis) == 50 - 30
    led2, sigs = advance(led, D0 + 60, pauses=crisis)
    assert dpd(led2, DEFAULT_CONFIG) == 50  # the ledger itself does not store the crisis
    assert "label-30dpd" not in rules(sigs)
    assert next_check_day(led, pauses=crisis) == D0 + 11
    led3, _ = advance(led, D0 + 19, pauses=crisis)  # past the cycle close of d1 (day 18)
    assert next_check_day(led3, pauses=crisis) == D0 + 40 + 30  # 30 DPD pushed by 30 days


def test_minimum_payment_only_streak_warning() -> None:
    evs: list[Any] = []
    for i in range(4):
        issue = 30 * i
        evs.append(stmt(f"s{i}", issue, issue + 25, 100000 - i * 1000, 2500))
        evs.append(pay(f"p{i}", issue + 20, 2500))
    led, sigs = run(evs)
    led, more = sweep(led, 160)
    allsigs = sigs + more
    warns = [s for s in allsigs if s.rule_id == "warn-min-payment-streak"]
    assert len(warns) == 1
    assert warns[0].kind == "warning" and warns[0].reason_codes == ["min_payment_only_streak"]
    assert dpd(led) == 0  # minimum paid: never delinquent
    assert not [s for s in allsigs if s.kind == "delinquency"]


def test_falling_payment_ratio_warning() -> None:
    evs: list[Any] = []
    for i, paid in enumerate([10000, 8000, 6000, 4000]):
        evs.append(inst(f"d{i}", 30 * i, 30 * i + 20, 10000))
        evs.append(pay(f"p{i}", 30 * i + 19, paid))
    led, sigs = run(evs)
    led, more = sweep(led, 140)
    warn = [s for s in sigs + more if s.rule_id == "warn-payment-ratio-falling"]
    assert len(warn) == 1
    # Arrears are paid first: d1 is 80% paid on time, d2 only 40% (2000 went to d1).
    assert {e.code: e.value for e in warn[0].evidence}["payment_ratios"] == "100,80,40"


def _cycle_ratios(led: AccountLedger) -> list[int]:
    return [led.cycles[i + 1] & 127 for i in range(0, len(led.cycles), 2)]


def test_statement_ratio_counts_payments_forced_out_of_the_journal() -> None:
    """Paid in full every cycle, the third time in 25 small payments: more than
    max_items (12) live items force the oldest out before the cycle is recorded.
    The ratio counted only the payments still in the journal (48%) and raised a
    false 'payment ratio falling' warning."""
    evs: list[Any] = []
    for m in range(3):
        issue = 30 * m
        evs.append(stmt(f"s{m}", issue, issue + 25, 100000, 5000))
        if m < 2:
            evs.append(pay(f"p{m}", issue + 5, 100000))
        else:
            evs += [pay(f"p{m}_{k}", issue + 4 + k // 2, 4000, sec=3000 * k) for k in range(25)]
    led, sigs = run(evs)
    led, more = advance(led, D0 + 115)
    assert _cycle_ratios(led) == [100, 100, 100]
    assert "warn-payment-ratio-falling" not in rules(sigs + more)


def test_statement_ratio_does_not_depend_on_when_payments_are_finalised() -> None:
    """With a reversal window shorter than the statement period, a daily sweep
    finalised the payment before the cycle was recorded: 0% instead of 100%."""
    cfg = DelinquencyConfig(reversal_window_days=10, lateness_days=3)
    led, _ = run([stmt("s", 0, 25, 100000, 5000), pay("p", 2, 100000)], cfg)
    daily, _ = sweep(led, 39, cfg)
    jump, _ = advance(led, D0 + 39, cfg)
    assert _cycle_ratios(daily) == _cycle_ratios(jump) == [100]
    assert daily.cycles == jump.cycles


def test_due_date_correction_after_the_cycle_keeps_the_cured_mark_on_its_record() -> None:
    """loan-1's cycle is recorded (late) under day 10; a correction then moves
    its due date to 25. The payment that cures it marked the record only when it
    arrived before the correction (the lookup used the new day): the cycle
    statistics depended on the arrival order of two same-day events."""
    first = [inst("i1", 0, 10, 10000, due_id="loan-1"), inst("i2", 0, 40, 10000, due_id="loan-2")]
    corr = inst("i1c", 20, 25, 10000, due_id="loan-1")
    p = pay("p1", 20, 10000, sec=3600)
    out = []
    for evs in ([corr, p], [p, corr]):
        led, _ = run(first + evs)
        led, _ = advance(led, D0 + 60)
        out.append(led)
    a, b = out
    assert a.cycles == b.cycles and core(a) == core(b)
    assert [(a.cycles[i] - D0, a.cycles[i + 1] & (256 | 512)) for i in (0, 2)] == [
        (10, 256 | 512),  # late, cured
        (40, 256),
    ]
    assert [(d.id, d.day - D0, d.cycle_day - D0) for d in a.dues][:1] == [("loan-1", 25, 10)]


def test_correction_of_a_due_retiring_that_day_does_not_depend_on_a_sweep() -> None:
    """loan-1 is paid by p1 (final from day 69) and retires on day 69. Its
    correction dated day 69 (due date moved, amount cut below what was paid)
    was applied when it came first that day without a sweep, but ignored when
    a same-day payment or a sweep to day 69 came first: the apply skipped the
    settle at the new day before incorporating the event."""
    first = [
        inst("i1", 0, 10, 10000, due_id="loan-1"),
        pay("p1", 1, 10000),
        inst("i2", 30, 200, 10000, due_id="loan-2"),  # (loan-1's cycle is recorded by now)
    ]
    corr = inst("i1c", 69, 100, 6000, due_id="loan-1")
    p2 = pay("p2", 69, 500, sec=3600)
    in_order, _ = run([*first, corr, p2])
    shuffled, _ = run([*first, p2, corr])
    led, _ = run(first)
    swept, _ = advance(led, D0 + 69)
    swept, _ = run([corr, p2], ledger=swept)
    assert core(in_order) == core(shuffled) == core(swept)
    # Retired on day 69 with the 10000 paid on it; the correction came too late.
    assert [(d.id, d.paid) for d in in_order.dues] == [("loan-2", 500)]
    assert (in_order.retired, in_order.credit) == (10000, 0)


def test_repeated_late_but_cured_warning() -> None:
    evs: list[Any] = []
    for i in range(3):
        evs.append(inst(f"d{i}", 30 * i, 30 * i + 10, 10000))
        evs.append(pay(f"p{i}", 30 * i + 13, 10000))  # 3 days late, cured
    led, sigs = run(evs)
    led, more = sweep(led, 120)
    allr = rules(sigs + more)
    assert allr.count("warn-late-cured-repeated") == 1
    assert allr.count("delinquency-onset") == 3 and allr.count("delinquency-cured") == 3


def test_a_plan_installment_inside_a_pause_is_broken_only_after_the_pause() -> None:
    """A payment holiday (or a crisis-wide pause) defers the promise as it stops the
    days-past-due clock: broken on the first unpaused day after the grace, with the
    onset, and the sweep is scheduled for that day."""
    g = DEFAULT_CONFIG.grace_days
    sched = [(30, 10_000), (60, 10_000), (90, 10_000)]
    events = [plan("pl", 0, "plan-1", sched), pay("p0", 28, 10_000)]
    for label, evs, pauses in (
        ("deferral", [*events, dstart("d1", 50, "def-1", until=80)], ()),
        ("crisis", events, ((D0 + 50, D0 + 81),)),
    ):
        led, sigs = run(evs, pauses=pauses)
        for day in range(led.clock + 1, D0 + 81):
            led, more = advance(led, day, pauses=pauses)
            sigs += more
        assert "plan-broken-promise" not in rules(sigs), label
        assert days_past_due(led, led.clock, pauses=pauses) == 0, label
        # Due on day 60 inside the pause (days 50 to 80): missed on day 81, the first
        # day after it (its grace ran out inside the pause).
        assert next_check_day(led, pauses=pauses) == D0 + 81, label
        led, more = advance(led, D0 + 81, pauses=pauses)
        assert rules(more) == ["delinquency-onset", "plan-broken-promise"], label
    # Without the pause the same installment is broken right after its grace.
    led, sigs = run(events)
    led, more = advance(led, D0 + 60 + g + 1)
    assert "plan-broken-promise" in rules(sigs + more)


def test_broken_plan_and_completed_plan() -> None:
    sched = [(40, 5000), (70, 5000), (100, 5000)]
    led, _ = run([inst("d1", 0, 10, 15000), plan("pl", 30, "plan-1", sched)])
    assert dpd(led) == 0  # the plan supersedes the arrears
    led, sigs = run([pay("p1", 39, 5000)], ledger=led)
    # The superseded arrears are retired once the plan is final; p1 prepaid #0.
    assert [(d.id, d.paid) for d in led.dues] == [
        ("plan-1#0", 5000),
        ("plan-1#1", 0),
        ("plan-1#2", 0),
    ]
    led, sigs = sweep(led, 70)
    assert "plan-broken-promise" not in rules(sigs)
    led, sigs = sweep(led, 75)
    assert rules(sigs) == ["delinquency-onset", "plan-broken-promise"]
    broken = sigs[1]
    assert broken.severity == "high" and "broken_promise" in broken.reason_codes
    assert {e.code: e.value for e in broken.evidence}["missed_installment_date"] == "2024-03-11"
    # Catching up cures; paying the rest completes the plan (once).
    led, sigs = run([pay("p2", 76, 10000)], ledger=led)
    assert rules(sigs) == ["delinquency-cured", "plan-completed"]
    led, sigs = sweep(led, 130)
    assert "plan-completed" not in rules(sigs) and dpd(led) == 0


def test_plan_installments_are_dues_and_next_check() -> None:
    led, _ = run([plan("pl", 0, "plan-1", [(30 * i + 30, 1000) for i in range(24)])])
    assert [d.id for d in led.dues][:2] == ["plan-1#0", "plan-1#1"] and len(led.dues) == 24
    assert next_check_day(led) == D0 + 31  # first installment falls past due
    led, _ = run([pay("p1", 1, 2000)], ledger=led)  # prepays two installments
    assert [d.paid for d in led.dues][:3] == [1000, 1000, 0]
    led, _ = advance(led, D0 + 95)
    assert days_past_due(led, led.clock) == 5
    assert next_check_day(led) == D0 + 90 + 7 + 1  # the cycle of #2 is recorded
    # A newer plan supersedes the old one's installments, which are then dropped.
    led, _ = run([plan("pl2", 100, "plan-2", [(130, 5000)])], ledger=led)
    led, _ = advance(led, D0 + 200)
    assert {d.id.split("#")[0] for d in led.dues} == {"plan-2"}


def test_duplicates_change_nothing() -> None:
    evs = [
        inst("d1", 0, 10, 10000),
        pay("p1", 5, 4000),
        rev("r1", 6, "p1", 1000),
        dstart("f1", 7, "x", 9),
        plan("pl", 8, "plan", [(50, 500)]),
        stmt("s1", 8, 30, 9, 9),
    ]
    led, _ = run(evs)
    for ev in evs:
        again, sigs = apply(led, ev)
        assert again is led and sigs == []
    # Re-sent due with a new event id but the same due id: still one due.
    again, _ = apply(led, inst("d1-bis", 9, 10, 10000, due_id="due-d1"))
    assert len([d for d in again.dues if d.id == "due-d1"]) == 1


def test_apply_rejects_foreign_events() -> None:
    led, _ = run([inst("d1", 0, 10, 10000)])
    other = msgspec.structs.replace(pay("p1", 1, 10), account_id="a2")
    with pytest.raises(ValueError):
        apply(led, other)
    with pytest.raises(TypeError):
        apply(led, object())


def test_product_bucket_override() -> None:
    cfg = DelinquencyConfig(
        buckets_by_product={
            "credit_card": [Bucket("current", 0, 0), Bucket("x1", 1, 9), Bucket("x10", 10)]
        }
    )
    led, _ = apply(None, inst("d1", 0, 10, 10000), cfg, product="credit_card")
    led, _ = sweep(led, 25, cfg)
    assert bucket_history(led, cfg) == [(D0 + 11, "x1"), (D0 + 20, "x10")]
    assert snapshot(led, cfg)["bucket"] == "x10"
    with pytest.raises(ValueError):
        DelinquencyConfig(buckets=[Bucket("current", 0, 0), Bucket("gap", 2)])


def test_statement_min_is_the_obligation_and_rolls() -> None:
    led, _ = run([stmt("s1", 0, 25, 100000, 3000), pay("p1", 20, 3000)])
    led, _ = advance(led, D0 + 40)
    assert dpd(led) == 0
    led, _ = run([stmt("s2", 31, 55, 99000, 3000)], ledger=led)  # rolls s1: its cap = minimum
    assert [(d.id, d.paid) for d in led.dues] == [("st-s1", 3000), ("st-s2", 0)]
    led, _ = advance(led, D0 + 60)
    assert dpd(led) == 5


def test_encode_roundtrip_and_next_check_with_index() -> None:
    led, _ = run([inst("d1", 0, 10, 10000), pay("p1", 5, 3000)])
    assert decode_ledger(encode_ledger(led)) == led
    idx = DueIndex()
    idx.add(ACC, next_check_day(led))
    assert idx.pop_due(D0 + 10) == []
    assert idx.pop_due(D0 + 11) == [ACC]


# A ledger encoded by the code before the ``moves`` field (and any later
# trailing field) was added: a card account with a plan, a deferral, cycles and
# bucket history. Captured from the unchanged module; it must keep decoding.
_OLD_LEDGER_HEX = (
    "dc0012a26131cd4d6fa0939ca573742d7331cd4d42ce00013880cd0fa001ce65b98d80030000cd07d000ff"
    "9ca8706c616e2d312330cd4d65cd27100002ce65e3bd80030000cd1388cd1388ff9ca8706c616e2d312331"
    "cd4d83cd27100002ce65e3bd800000000000ff9294cf740b32e4bc4a6748ce65e11a80cd07d00094cf2661"
    "e0939218eea2ce65ee4980cd13880000000000ce65989800ce000186a0010096cd4d24cd0464cd4d42cd05"
    "00cd4d65cd013294cd4d10cf46bf4d555ac5b7facd4d24cf5b647eb6299f283396cd4d4301cd4d4900cd4d"
    "66019194cf53e93a5fb6584b24cd4d56cd4d5cff94a6706c616e2d31ce65e3bd800201"
)


def test_state_encoded_before_the_trailing_fields_still_decodes() -> None:
    led = decode_ledger(bytes.fromhex(_OLD_LEDGER_HEX))
    assert (led.clock, led.retired, led.bucket, led.moves) == (D0 + 100, 100000, 1, 0)
    assert [d.id for d in led.dues] == ["st-s1", "plan-1#0", "plan-1#1"]
    assert led.plan is not None and led.plan.id == "plan-1"
    assert bucket_history(led)[-1] == (D0 + 91, "dpd_1_29")
    assert decode_ledger(encode_ledger(led)) == led
    more, sigs = advance(led, D0 + 130)  # and keeps working: the move count starts at 0
    assert more.moves == 1 and sigs[0].rule_id == "dpd-bucket-worsened"
    assert sigs[0].discriminator.endswith("#1")


def test_same_day_bucket_flaps_get_distinct_discriminators() -> None:
    """Paid, bounced and paid again on one day: onset, cured, onset, cured. The
    standing alerts' ids come from the discriminator, so the second cure must not
    share the first's (a consumer deduplicating by id would end on 'delinquent')."""
    led, sigs = run(
        [
            inst("d1", 0, 10, 100000),
            pay("p1", 20, 100000),
            rev("r1", 20, "p1", 100000, sec=60),
            pay("p2", 20, 100000, sec=120),
        ]
    )
    moves = [(s.rule_id, s.discriminator) for s in sigs if s.kind == "delinquency"]
    assert [r for r, _ in moves] == [
        "delinquency-onset",
        "delinquency-cured",
        "delinquency-onset",
        "delinquency-cured",
    ]
    assert len(set(moves)) == 4
    assert moves[1][1] == f"delinquency-cured:current@{D0 + 20}#2"
    assert led.moves == 4 and dpd(led) == 0


def test_move_discriminator_is_the_same_from_an_event_or_a_sweep() -> None:
    base, _ = run([inst("d1", 0, 10, 100000)])
    _, s1 = advance(base, D0 + 11)
    _, s2 = apply(base, pay("p1", 11, 1000))  # the event first steps time to its day
    assert [s.discriminator for s in s1] == [s.discriminator for s in s2[:1]]
    assert s1[0].discriminator == f"delinquency-onset:dpd_1_29@{D0 + 11}#1"


def test_due_index_bounded_work() -> None:
    idx = DueIndex()
    for i in range(1000):
        idx.add(f"k{i}", 100 + i % 50)
    for i in range(1000):  # move every key: stale heap entries are compacted
        idx.add(f"k{i}", 200 + i % 7)
    assert len(idx._heap) <= 2 * 57 + 64
    assert idx.pop_due(199) == []
    got = idx.pop_due(201)
    assert len(got) == len([i for i in range(1000) if i % 7 <= 1]) and len(idx) == 1000 - len(got)


# --------------------------------------------------------------------------- #
# Property tests
# --------------------------------------------------------------------------- #

SPAN = 150  # days covered by generated histories


@st.composite
def histories(draw: st.DrawFn, span: int = SPAN, with_plan: bool = True) -> list[Any]:
    """A plausible history of one account: dues, payments, reversals, deferrals, a plan."""
    evs: list[Any] = []
    n_dues = draw(st.integers(1, 5))
    card = draw(st.booleans())
    for i in range(n_dues):
        due_day = 20 + 30 * i
        issue = due_day - draw(st.integers(5, 25))
        amount = draw(st.integers(1, 300)) * 100
        if card:
            evs.append(stmt(f"d{i}", issue, due_day, amount, max(0, amount // 10)))
        else:
            evs.append(inst(f"d{i}", issue, due_day, amount))
    pays: list[tuple[str, int, int]] = []
    for j in range(draw(st.integers(0, 8))):
        day = draw(st.integers(0, span))
        amount = draw(st.integers(0, 300)) * 100
        pays.append((f"p{j}", day, amount))
        evs.append(pay(f"p{j}", day, amount, sec=draw(st.integers(0, 86399))))
    for k in range(draw(st.integers(0, 3))):
        if not pays:
            break
        pid, pday, pamt = draw(st.sampled_from(pays))
        day = min(span, pday + draw(st.integers(0, 40)))
        evs.append(
            rev(
                f"r{k}",
                day,
                pid,
                draw(st.integers(0, max(1, pamt // 100))) * 100,
                sec=draw(st.integers(0, 86399)),
            )
        )
    if draw(st.booleans()):
        start = draw(st.integers(0, span))
        until = draw(st.none() | st.integers(start, span + 30))
        evs.append(dstart("f1", start, "def1", until))
        if draw(st.booleans()):
            evs.append(dend("f2", draw(st.integers(start, span)), "def1"))
    if with_plan and draw(st.integers(0, 4)) == 0:
        day = draw(st.integers(0, span))
        sched = [(day + 10 + 30 * i, draw(st.integers(1, 100)) * 100) for i in range(3)]
        evs.append(plan("pl1", day, "plan-1", sched))
    return sorted(evs, key=lambda e: (e.event_time, e.event_id))


def arrival_order(events: Sequence[Any], seed: int, lateness: int) -> list[Any]:
    """Shuffle events so that none arrives ``lateness`` days or more after a newer one."""
    rnd = random.Random(seed)
    keyed = [(epoch_day(e.event_time) + rnd.randrange(lateness), rnd.random(), e) for e in events]
    return [e for *_, e in sorted(keyed, key=lambda x: (x[0], x[1]))]


def net_paid(events: Sequence[Any]) -> int:
    """Payments minus what their reversals took back (capped at the payment)."""
    amounts = {e.event_id: e.amount_minor for e in events if isinstance(e, PaymentReceived)}
    taken: dict[str, int] = {}
    for e in events:
        if isinstance(e, PaymentReversed) and e.reversed_event_id in amounts:
            t = e.reversed_event_id
            taken[t] = min(amounts[t], taken.get(t, 0) + e.amount_minor)
    return sum(amounts.values()) - sum(taken.values())


PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(histories(span=55, with_plan=False))
def test_prop_conservation(events: list[Any]) -> None:
    """Within the reversal window every minor unit is accounted for."""
    led, _ = run(events)
    s = snapshot(led)
    assert s["paid_minor"] + s["outstanding_minor"] == s["total_due_minor"]
    assert s["paid_minor"] + s["credit_minor"] + s["retired_minor"] == net_paid(events)
    for d in led.dues:
        assert 0 <= d.base <= d.paid <= d.amount and d.ontime >= 0
    if led.credit > 0:  # credit only while nothing can absorb it
        assert s["outstanding_minor"] == 0


@PROP
@given(histories(), st.lists(st.integers(0, 400), min_size=1, max_size=6))
def test_prop_time_alone_never_lowers_dpd(events: list[Any], steps: list[int]) -> None:
    led, _ = run(events)
    prev = dpd(led)
    day = led.clock
    for step in sorted(steps):
        day = max(day, D0 + SPAN + step)
        led, _ = advance(led, day)
        now = dpd(led)
        assert now >= prev
        prev = now
        assert days_past_due(led, day + 10) >= now


@PROP
@given(histories())
def test_prop_full_cure_returns_to_current(events: list[Any]) -> None:
    led, _ = run(events)
    led, _ = advance(led, D0 + SPAN + 1)
    owed = sum(max(0, d.amount - d.paid) for d in led.dues)
    led, sigs = apply(led, pay("cure", SPAN + 1, owed + 100))
    assert dpd(led) == 0
    assert snapshot(led)["bucket"] == "current"
    if "delinquency-cured" in rules(sigs):
        assert bucket_history(led)[-1] == (D0 + SPAN + 1, "current")


def test_two_dues_on_one_date_record_their_cycles_in_any_arrival_order() -> None:
    # Found by test_prop_arrival_order_within_lateness_gives_same_state with a random
    # seed (CI runs derandomized): a plan installment and an installment due on day 50.
    # The cured mark went to the first late record of the day, not to the due's own.
    events = [*(pay(f"p{i}", 0, 0) for i in range(1, 5)), pay("p5", 0, 23_900),
              plan("pl1", 10, "plan-1", [(20, 100), (50, 5_400), (80, 100)]),
              inst("d0", 15, 20, 100), inst("d1", 45, 50, 24_300),
              pay("p0", 58, 5_500), rev("r0", 58, "p0", 100),
              inst("d2", 75, 80, 100), inst("d3", 105, 110, 100), inst("d4", 135, 140, 100)]
    cfg = DEFAULT_CONFIG
    a, _ = run(arrival_order(events, 0, cfg.lateness_days), cfg)
    b, _ = run(arrival_order(events, 1, cfg.lateness_days), cfg)
    assert a.dues == b.dues  # the same money in the same places
    assert a.cycles == b.cycles


@PROP
@given(histories(), st.integers(0, 2**32), st.integers(0, 2**32))
def test_prop_arrival_order_within_lateness_gives_same_state(
    events: list[Any], seed_a: int, seed_b: int
) -> None:
    cfg = DEFAULT_CONFIG
    a, _ = run(arrival_order(events, seed_a, cfg.lateness_days), cfg)
    b, _ = run(arrival_order(events, seed_b, cfg.lateness_days), cfg)
    assert core(a) == core(b)
    assert dpd(a) == dpd(b) and a.bucket == b.bucket
    assert snapshot(a) == snapshot(b)


SMALL_WINDOWS = [
    DelinquencyConfig(reversal_window_days=10, lateness_days=3, max_seen=64),
    DelinquencyConfig(reversal_window_days=20, lateness_days=5, grace_days=3, max_seen=64),
]


@PROP
@given(histories(span=300), st.integers(0, 2**32), st.sampled_from(SMALL_WINDOWS))
def test_prop_order_independent_with_finalisation(
    events: list[Any], seed: int, cfg: DelinquencyConfig
) -> None:
    """Small windows so payments are finalised and dues retired along the way."""
    a, _ = run(events, cfg)
    b, _ = run(arrival_order(events, seed, cfg.lateness_days), cfg)
    assert core(a) == core(b)
    # Money: nothing is created; at most the reversed amounts are taken back.
    s = snapshot(a, cfg)
    total = s["paid_minor"] + s["credit_minor"] + s["retired_minor"]
    paid_in = sum(e.amount_minor for e in events if isinstance(e, PaymentReceived))
    reversed_ = sum(e.amount_minor for e in events if isinstance(e, PaymentReversed))
    assert paid_in - reversed_ <= total <= paid_in
    for d in a.dues:
        assert 0 <= d.base <= d.paid <= d.amount


@PROP
@given(histories(), st.data())
def test_prop_duplicates_change_nothing(events: list[Any], data: st.DataObject) -> None:
    led: AccountLedger | None = None
    applied: list[Any] = []
    for ev in events:
        led, _ = apply(led, ev)
        applied.append(ev)
        if data.draw(st.booleans()):
            dup = data.draw(st.sampled_from(applied[-6:]))
            again, sigs = apply(led, dup)
            assert again is led and sigs == []


@PROP
@given(histories(), st.integers(0, 200))
def test_prop_apply_and_advance_never_mutate(events: list[Any], extra: int) -> None:
    led: AccountLedger | None = None
    for ev in events:
        before = None if led is None else encode_ledger(led)
        new, _ = apply(led, ev)
        if led is not None:
            assert encode_ledger(led) == before
        led = new
    assert led is not None
    before = encode_ledger(led)
    advance(led, led.clock + extra + 1)
    assert encode_ledger(led) == before


# Found by a random run: a payment reversed right when the newer statement
# rolls the older one; once that newer statement is retired, the older
# statement's cap must not be recomputed from the next statement's issue.
ROLLER_RETIRED = [
    pay("p0", 0, 0),
    rev("r0", 0, "p0", 0),
    rev("r1", 0, "p0", 0),
    stmt("d0", 15, 20, 100, 10),
    stmt("d1", 45, 50, 100, 10),
    pay("p1", 64, 100),
    pay("p2", 64, 100, sec=1),
    stmt("d2", 75, 80, 100, 10),
    rev("r2", 75, "p1", 100),
    stmt("d3", 105, 110, 100, 10),
]


@settings(PROP, max_examples=40)
@given(histories())
@example(events=ROLLER_RETIRED)
def test_prop_sweeping_only_on_next_check_day_misses_nothing(events: list[Any]) -> None:
    """Advancing only on next_check_day gives the same signals as a daily sweep."""
    led, _ = run(events)
    end = led.clock + 200
    daily, sig_daily = led, []
    for day in range(led.clock + 1, end + 1):
        daily, s = advance(daily, day)
        sig_daily.extend(s)
    lazy, sig_lazy = led, []
    while (nxt := next_check_day(lazy)) is not None and nxt <= end:
        assert nxt > lazy.clock
        lazy, s = advance(lazy, nxt)
        sig_lazy.extend(s)
    lazy, s = advance(lazy, end)
    sig_lazy.extend(s)
    assert [(x.rule_id, x.discriminator) for x in sig_lazy] == [
        (x.rule_id, x.discriminator) for x in sig_daily
    ]
    assert core(lazy) == core(daily) and lazy.history == daily.history


def test_retiring_the_rolling_statement_keeps_the_older_statements_cap() -> None:
    """st-d1 is rolled by st-d2 (issued day 75) when 100 was paid on it; a reversal
    at that instant re-opens 90. Retiring st-d2 must not move st-d1's roll to
    st-d3's issue (where only 10 was paid): that shrank the cap to 10 and
    retired st-d1 on the next settle, so a daily sweep dropped it while a
    sweep on check days kept it."""
    led, _ = run(ROLLER_RETIRED)
    daily, _ = sweep(led, 300)
    lazy, _ = advance(led, D0 + 300)
    assert core(daily) == core(lazy)
    d1 = next(d for d in lazy.dues if d.id == "st-d1")
    assert (d1.cap, d1.paid) == (100, 10)
    assert "st-d2" not in {d.id for d in lazy.dues}
    again, _ = advance(lazy, D0 + 301)  # settling again changes nothing
    assert core(again)[2:] == core(lazy)[2:]
    # The re-opened 90 is still owed on st-d1: after st-d0's 10 it is paid first.
    after, _ = apply(lazy, pay("p9", 301, 100))
    assert [(d.id, d.paid) for d in after.dues] == [("st-d0", 10), ("st-d1", 100), ("st-d3", 0)]


# Paid early on a due a plan later superseded, then a small post-plan payment.
SUPERSEDED_FLOAT = [
    inst("i1", 0, 100, 10000),
    pay("p1", 10, 10000),
    plan("pl", 20, "plan-1", [(200, 10000)]),
    pay("p2", 30, 1000),
]


def test_money_on_a_superseded_due_does_not_move_onto_the_plan() -> None:
    """p1's 10000 sits on i1 (superseded by the plan) and floats once final. It
    used to move onto the plan installment when p2 (after the plan) was
    finalised while it floated -- on a daily sweep, not on a single jump --,
    and with two more small payments the plan was reported completed."""
    led, _ = run(SUPERSEDED_FLOAT)
    daily, _ = sweep(led, 215)
    jump, _ = advance(led, D0 + 215)
    assert core(daily) == core(jump)
    assert (jump.retired, jump.credit, dpd(jump)) == (10000, 0, 15)
    led, sigs = run([*SUPERSEDED_FLOAT, pay("p3", 80, 500), pay("p4", 100, 500)])
    led, more = advance(led, D0 + 215)
    assert "plan-completed" not in rules(sigs + more)
    assert [(d.id, d.paid) for d in led.dues] == [("plan-1#0", 2000)]
    assert (led.credit, dpd(led)) == (0, 15)


def test_money_floating_after_an_old_plan_predates_a_new_plan() -> None:
    """p2 (after plan-0) paid i1 and floats, counted as paid after the plan.
    plan-1 then supersedes i1: p2 predates plan-1, so its money stays on i1 and
    plan-1's installment is still owed (it was moved there: plan completed)."""
    led, _ = run(
        [
            plan("pl0", 0, "plan-0", [(10, 1000)]),
            pay("p1", 5, 1000),
            inst("i1", 100, 200, 5000),
            pay("p2", 110, 5000),
        ]
    )
    led, _ = advance(led, D0 + 180)
    assert (led.floating, led.float_post) == (5000, 5000)
    led, sigs = run([plan("pl1", 185, "plan-1", [(300, 5000)])], ledger=led)
    assert [(d.id, d.paid) for d in led.dues] == [("due-i1", 5000), ("plan-1#0", 0)]
    led, more = advance(led, D0 + 320)
    assert rules(sigs + more) == ["delinquency-onset", "plan-broken-promise"] and dpd(led) == 20


@settings(PROP, max_examples=80)
@given(
    histories(span=200, with_plan=False),
    st.none() | st.integers(0, 200),
    st.integers(1, 3),
    st.sampled_from([DEFAULT_CONFIG, *SMALL_WINDOWS]),
)
@example(
    events=SUPERSEDED_FLOAT[:2] + SUPERSEDED_FLOAT[3:], plan_day=20, n=1, cfg=DEFAULT_CONFIG
)
@example(
    events=[stmt("s", 0, 25, 100000, 5000), pay("p", 2, 100000)],
    plan_day=None,
    n=1,
    cfg=SMALL_WINDOWS[0],
)
@example(  # a payment finalised before (daily) or after (jump) its statement's cycle closed
    events=[stmt("d0", 9, 20, 200, 20), pay("p0", 9, 100)],
    plan_day=None,
    n=1,
    cfg=SMALL_WINDOWS[0],
)
def test_prop_daily_sweeps_and_a_single_jump_give_the_same_ledger(
    events: list[Any], plan_day: int | None, n: int, cfg: DelinquencyConfig
) -> None:
    """The same events, swept daily or advanced in one jump: the same ledger
    (money placement, retirement, cycle statistics)."""
    if plan_day is not None:
        sched = [(plan_day + 170 + 30 * i, 10000) for i in range(n)]
        events = sorted([*events, plan("pl", plan_day, "plan-1", sched)],
                        key=lambda e: (e.event_time, e.event_id))  # fmt: skip
    led, _ = run(events, cfg)
    end = led.clock + 300
    daily, _ = sweep(led, end - D0, cfg)
    jump, _ = advance(led, end, cfg)
    assert core(daily) == core(jump)


@PROP
@given(histories())
def test_prop_signal_ids_are_unique_per_event(events: list[Any]) -> None:
    led: AccountLedger | None = None
    for ev in events:
        led, sigs = apply(led, ev)
        keys = [(s.rule_id, s.discriminator) for s in sigs]
        assert len(keys) == len(set(keys))
    assert led is not None
    led, sigs = advance(led, led.clock + 400)
    keys = [(s.rule_id, s.discriminator) for s in sigs]
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- #
# Measurements (printed for the integrator; nothing timed is asserted)
# --------------------------------------------------------------------------- #


def test_measure_apply_cost_and_ledger_size(capsys: pytest.CaptureFixture[str]) -> None:
    """A card account over two years: monthly statement + payment, a few late months."""
    rnd = random.Random(7)
    evs: list[Any] = []
    for m in range(24):
        issue = 30 * m
        amount = rnd.randrange(20000, 200000)
        evs.append(stmt(f"s{m}", issue, issue + 25, amount, amount // 20))
        late = rnd.random() < 0.15
        evs.append(pay(f"p{m}", issue + (30 if late else 20), rnd.choice([amount // 20, amount])))
    led: AccountLedger | None = None
    sizes: list[int] = []
    t = time.perf_counter()
    for ev in evs:
        led, _ = apply(led, ev)
        sizes.append(len(encode_ledger(led)))
    per_event = (time.perf_counter() - t) / len(evs)
    assert led is not None
    t = time.perf_counter()
    n = 0
    for day in range(led.clock + 1, led.clock + 61):
        advance(led, day)
        n += 1
    per_advance = (time.perf_counter() - t) / n
    steady = sizes[len(sizes) // 2 :]
    with capsys.disabled():
        print(
            f"\n[delinquency] apply: {per_event * 1e6:.0f} us/event, "
            f"advance: {per_advance * 1e6:.0f} us/call, "
            f"ledger msgpack bytes: steady mean {sum(steady) / len(steady):.0f}, "
            f"max {max(sizes)}, final {sizes[-1]}"
        )
    assert max(sizes) < 1500
