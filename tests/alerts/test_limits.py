"""Credit-limit proposals and their guardrails (``alerts/limits.py``)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.ids import output_id
from alerts.limits import (
    DEFAULT_LIMIT_POLICY,
    HISTORY_LIMIT,
    TRIGGER_MEMORY,
    LimitPolicy,
    LimitState,
    decode_state,
    encode_state,
    new_state,
    propose,
    sync_limit,
)
from detectors.segments import Tightening
from schemas.models import LimitAdjustment

T0 = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
LIMIT = 500_000  # 5,000.00 EUR

_seq = iter(range(10**9))


def call(state: LimitState, day: float = 0, **kw: Any) -> tuple[LimitState, LimitAdjustment | None]:
    """``propose`` with sensible defaults: a healthy customer on day ``day``."""
    args: dict[str, Any] = {
        "customer_id": "c1",
        "account_id": "acc-1",
        "trigger_event_id": f"ev-{next(_seq)}",
        "event_time": T0 + dt.timedelta(days=day),
        "grade": "low",
        "previous_grade": "low",
        "score": 150,
        "balance_minor": 50_000,
        "utilisation": 0.1,
        "on_time_cycles": 2,
        "crisis_in_force": False,
        "currency": "EUR",
        "policy": DEFAULT_LIMIT_POLICY,
        "policy_version": "p1",
        "model_version": "m1",
    }
    args.update(kw)
    return propose(state, **args)


def check_contract(adj: LimitAdjustment) -> None:
    """The proposal passes the ``limit-adjustments`` contract (as a consumer decodes it)."""
    msgspec.json.decode(msgspec.json.encode(adj), type=LimitAdjustment)


# --------------------------------------------------------------------------- #
# Grade actions
# --------------------------------------------------------------------------- #


def test_freeze_at_high_then_cut_at_critical() -> None:
    s0 = new_state(LIMIT)
    s1, freeze = call(s0, 0, grade="high", previous_grade="medium", score=640)
    assert freeze is not None and freeze.direction == "freeze"
    assert freeze.proposed_limit_minor == freeze.current_limit_minor == LIMIT
    assert freeze.reason_codes == ["grade_high", "limit_freeze"]
    assert freeze.evidence[0].text == "grade rose from medium to high (score 640)"
    assert not freeze.requires_approval and not freeze.notify_customer
    check_contract(freeze)
    assert s1.frozen and s1.acted == 2 and s1.pre_limit_minor == LIMIT
    # Still high: nothing more.
    assert call(s1, 20, grade="high", previous_grade="high")[1] is None
    # Critical, after the cooldown: a 25 % cut.
    s2, cut = call(s1, 20, grade="critical", previous_grade="high", score=812,
                   balance_minor=123_400)
    assert cut is not None and cut.direction == "cut"
    assert (cut.current_limit_minor, cut.proposed_limit_minor) == (LIMIT, 375_000)
    assert cut.reason_codes == ["grade_critical", "limit_cut"]
    assert [e.text for e in cut.evidence] == [
        "grade rose from high to critical (score 812)",
        "limit 5,000.00 EUR to 3,750.00 EUR (-25.0%)",
        "outstanding balance 1,234.00 EUR (floor 1,295.70 EUR)",
        "change of 1,250.00 EUR is above the approval line (5,000.00 EUR or 20%)",
    ]
    assert cut.requires_approval and cut.notify_customer
    check_contract(cut)
    assert s2.acted == 3 and s2.pre_limit_minor == LIMIT and s2.limit_minor == 375_000
    # Critical stays critical: cut once.
    assert call(s2, 60, grade="critical", previous_grade="critical")[1] is None


def test_cut_inside_cooldown_follows_once_the_cooldown_ends() -> None:
    s1, _ = call(new_state(LIMIT), 0, grade="high", previous_grade="medium")
    s2, adj = call(s1, 5, grade="critical", previous_grade="high")
    assert adj is None and s2 is s1
    _, adj = call(s2, 14, grade="critical", previous_grade="critical")
    assert adj is not None and adj.direction == "cut"
    assert adj.evidence[0].text == "grade critical (score 150)"


def test_balance_sets_the_floor() -> None:
    _, cut = call(new_state(LIMIT), 0, grade="critical", balance_minor=400_000)
    assert cut is not None and cut.direction == "cut"
    # 400,000 + 5 % buffer = 420,000, above the 25 % cut (375,000).
    assert cut.proposed_limit_minor == 420_000
    assert "balance_floor" in cut.reason_codes
    assert cut.evidence[2].text == "outstanding balance 4,000.00 EUR sets the floor"


def test_floor_above_the_limit_freezes_and_cuts_once_the_balance_allows() -> None:
    s1, adj = call(new_state(LIMIT), 0, grade="critical", balance_minor=490_000)
    assert adj is not None and adj.direction == "freeze"
    assert adj.reason_codes == ["grade_critical", "limit_freeze", "balance_floor"]
    assert s1.frozen and s1.acted == 0
    assert call(s1, 30, grade="critical", balance_minor=480_000)[1] is None  # frozen already
    _, cut = call(s1, 31, grade="critical", balance_minor=100_000)
    assert cut is not None and cut.direction == "cut" and cut.proposed_limit_minor == 375_000


def test_step_cap_and_cut_sizes_by_grade() -> None:
    policy = LimitPolicy(cut_pct_high=10, cut_pct_critical=60, max_step_pct=30,
                         approval_above_pct=100, approval_above_minor=10**9)
    _, high = call(new_state(LIMIT), grade="high", policy=policy, balance_minor=0)
    assert high is not None and high.direction == "cut" and high.proposed_limit_minor == 450_000
    _, crit = call(new_state(LIMIT), grade="critical", policy=policy, balance_minor=0)
    assert crit is not None and crit.proposed_limit_minor == 350_000
    assert "step_capped" in crit.reason_codes and not crit.requires_approval


def test_segment_tightening_enlarges_cuts_and_suspends_raises() -> None:
    tight = Tightening(score_add=50, limit_raise_suspended=True, cut_step_multiplier=1.5,
                       reasons=["sector retail: prosperity_index 88 is 12.1% below ..."],
                       codes=["sector_indicator_drop"])
    _, cut = call(new_state(LIMIT), grade="critical", balance_minor=0, tightening=tight)
    assert cut is not None and cut.proposed_limit_minor == 350_000  # 37.5 % capped at 30 %
    assert "segment_tightening" in cut.reason_codes and "step_capped" in cut.reason_codes
    assert [e.code for e in cut.evidence][-3:-1] == ["cut_multiplier", "segment_tightening"]
    good = {"on_time_cycles": 12, "utilisation": 0.05, "score": 100}
    assert call(new_state(LIMIT), **good)[1] is not None
    assert call(new_state(LIMIT), tightening=tight, **good)[1] is None


def test_crisis_freezes_instead_of_cutting_then_cuts_after() -> None:
    s1, adj = call(new_state(LIMIT), 0, grade="critical", crisis_in_force=True)
    assert adj is not None and adj.direction == "freeze"
    assert "crisis_cut_suspended" in adj.reason_codes
    assert s1.frozen and s1.acted == 0
    assert call(s1, 30, grade="critical", crisis_in_force=True)[1] is None
    # High during the crisis: a freeze is allowed and one is in place already.
    assert call(s1, 30, grade="high", crisis_in_force=True)[1] is None
    _, cut = call(s1, 40, grade="critical", crisis_in_force=False)
    assert cut is not None and cut.direction == "cut"


def test_crisis_still_allows_raises_and_restores() -> None:
    good = {"on_time_cycles": 12, "utilisation": 0.05, "score": 100, "crisis_in_force": True}
    _, adj = call(new_state(LIMIT), **good)
    assert adj is not None and adj.direction == "raise"
    s1, _ = call(new_state(LIMIT), 0, grade="critical", balance_minor=0)
    _, restore = call(s1, 20, grade="medium", crisis_in_force=True)
    assert restore is not None and restore.direction == "restore"


# --------------------------------------------------------------------------- #
# Restore
# --------------------------------------------------------------------------- #


def test_restore_in_steps_within_the_window() -> None:
    policy = LimitPolicy(cut_pct_critical=30, max_step_pct=30)
    s1, cut = call(new_state(LIMIT), 0, grade="critical", balance_minor=0, policy=policy)
    assert cut is not None and cut.proposed_limit_minor == 350_000
    s2, r1 = call(s1, 20, grade="medium", previous_grade="critical", score=420, policy=policy)
    assert r1 is not None and r1.direction == "restore"
    assert r1.proposed_limit_minor == 455_000  # 350,000 + 30 %
    assert r1.reason_codes == ["risk_receded", "limit_restore", "step_capped"]
    assert r1.evidence[0].text == ("grade back to medium (score 420), 20 days after the last "
                                   "cut or freeze")
    assert not r1.notify_customer
    assert s2.pre_limit_minor == LIMIT and s2.acted == 0
    s3, r2 = call(s2, 40, grade="low", policy=policy)
    assert r2 is not None and r2.proposed_limit_minor == LIMIT
    assert r2.reason_codes == ["risk_receded", "limit_restore"]
    assert s3.pre_limit_minor is None and s3.limit_minor == LIMIT
    # Episode over: an ordinary healthy event proposes nothing.
    assert call(s3, 80, policy=policy)[1] is None


def test_restore_after_a_freeze_unfreezes() -> None:
    s1, _ = call(new_state(LIMIT), 0, grade="high")
    s2, adj = call(s1, 15, grade="medium", previous_grade="high")
    assert adj is not None and adj.direction == "restore"
    assert adj.proposed_limit_minor == adj.current_limit_minor == LIMIT
    assert not s2.frozen and s2.pre_limit_minor is None


def test_no_restore_after_the_window() -> None:
    s1, _ = call(new_state(LIMIT), 0, grade="critical", balance_minor=0)
    s2, adj = call(s1, 91, grade="low")
    assert adj is None and s2.pre_limit_minor is None and s2.acted == 0
    assert s2.limit_minor == 375_000


def test_a_freeze_past_the_window_is_lifted_by_an_unfreeze_not_forgotten() -> None:
    s1, freeze = call(new_state(LIMIT), 0, grade="high")
    assert freeze is not None and s1.frozen
    s2, adj = call(s1, 91, grade="low", previous_grade="high")
    assert adj is not None and adj.direction == "restore"
    assert adj.proposed_limit_minor == adj.current_limit_minor == LIMIT
    assert not s2.frozen and s2.pre_limit_minor is None
    _, again = call(s2, 120, grade="low")
    assert again is None or again.direction == "raise"


def test_no_restore_or_unfreeze_while_past_due() -> None:
    # A cut: the restore waits for the cure, then follows within the window.
    s1, _ = call(new_state(LIMIT), 0, grade="critical", balance_minor=0)
    s2, held = call(s1, 20, grade="medium", previous_grade="critical", days_past_due=4)
    assert held is None and s2.pre_limit_minor == LIMIT and s2.limit_minor == 375_000
    _, restore = call(s2, 30, grade="medium", days_past_due=0)
    assert restore is not None and restore.direction == "restore"
    # A freeze: no unfreeze while past due, within the window or after it.
    f1, _ = call(new_state(LIMIT), 0, grade="high")
    assert call(f1, 15, grade="low", previous_grade="high", days_past_due=2)[1] is None
    f2, held = call(f1, 95, grade="low", days_past_due=2)
    assert held is None and f2.frozen
    _, unfreeze = call(f2, 96, grade="low", days_past_due=0)
    assert unfreeze is not None and unfreeze.direction == "restore"
    assert unfreeze.proposed_limit_minor == unfreeze.current_limit_minor == LIMIT


def test_a_partial_restore_then_a_new_rise_cuts_again() -> None:
    policy = LimitPolicy(cut_pct_critical=30)
    s1, _ = call(new_state(LIMIT), 0, grade="critical", balance_minor=0, policy=policy)
    s2, _ = call(s1, 20, grade="medium", policy=policy)
    s3, cut = call(s2, 40, grade="critical", balance_minor=0, policy=policy)
    assert cut is not None and cut.current_limit_minor == 455_000
    assert s3.pre_limit_minor == LIMIT  # still the limit before the first cut


# --------------------------------------------------------------------------- #
# Raise
# --------------------------------------------------------------------------- #


GOOD: dict[str, Any] = {"on_time_cycles": 6, "utilisation": 0.12, "score": 180}


def test_raise_for_sustained_good_behaviour() -> None:
    _, adj = call(new_state(LIMIT), **GOOD)
    assert adj is not None and adj.direction == "raise"
    assert adj.proposed_limit_minor == 600_000
    assert [e.text for e in adj.evidence] == [
        "6 on-time cycles, utilisation 12%",
        "score 180, grade low and stable",
        "limit 5,000.00 EUR to 6,000.00 EUR (+20.0%)",
    ]
    assert not adj.requires_approval  # 20 % is not above the 20 % line
    assert adj.reason_codes == ["sustained_good_behaviour", "limit_raise"]
    assert not adj.notify_customer


@pytest.mark.parametrize("change", [
    {"on_time_cycles": 5},
    {"utilisation": 0.30},
    {"utilisation": None},
    {"score": 300},
    {"grade": "medium", "previous_grade": "medium"},
    {"previous_grade": "medium"},
    {"previous_grade": None},
    {"days_past_due": 1},
])
def test_no_raise_unless_every_condition_holds(change: dict[str, Any]) -> None:
    assert call(new_state(LIMIT), **(GOOD | change))[1] is None


def test_no_raise_while_past_due_but_cuts_and_freezes_unchanged() -> None:
    # A missed due inside its grace window does not break the (closed-cycle) on-time
    # streak; the current days past due alone refuse the raise.
    assert call(new_state(LIMIT), days_past_due=3, **GOOD)[1] is None
    assert call(new_state(LIMIT), days_past_due=0, **GOOD)[1] is not None
    for grade, direction in (("high", "freeze"), ("critical", "cut")):
        kw = {"grade": grade, "previous_grade": "medium", "score": 800}
        assert call(new_state(LIMIT), days_past_due=40, **kw)[1].direction == direction


def test_raise_respects_the_ceiling_and_rounding() -> None:
    policy = LimitPolicy(max_limit_minor=520_050, round_minor=100)
    _, adj = call(new_state(LIMIT), policy=policy, **GOOD)
    assert adj is not None and adj.proposed_limit_minor == 520_000
    policy = LimitPolicy(max_limit_minor=LIMIT)
    assert call(new_state(LIMIT), policy=policy, **GOOD)[1] is None


def test_approval_by_amount_or_percent() -> None:
    by_pct = LimitPolicy(approval_above_minor=10**9, approval_above_pct=10)
    _, adj = call(new_state(LIMIT), policy=by_pct, **GOOD)
    assert adj is not None and adj.requires_approval
    by_amount = LimitPolicy(approval_above_minor=50_000, approval_above_pct=100)
    _, adj = call(new_state(LIMIT), policy=by_amount, **GOOD)
    assert adj is not None and adj.requires_approval
    lenient = LimitPolicy(approval_above_minor=100_000, approval_above_pct=20)
    _, adj = call(new_state(LIMIT), policy=lenient, **GOOD)
    assert adj is not None and not adj.requires_approval


# --------------------------------------------------------------------------- #
# Guardrails, ids, state
# --------------------------------------------------------------------------- #


def test_deterministic_id_and_replayed_trigger() -> None:
    s0 = new_state(LIMIT)
    s1, a = call(s0, trigger_event_id="rep-9", grade="critical")
    _, b = call(s0, trigger_event_id="rep-9", grade="critical")
    assert a is not None and b is not None and a == b
    assert a.adjustment_id == output_id("limit-cut", 1, "rep-9", "acc-1")
    assert a.trigger_event_id == "rep-9" and a.event_time == T0
    # Replaying the trigger against the new state proposes nothing, even far later.
    assert call(s1, 400, trigger_event_id="rep-9", grade="critical")[1] is None


def test_stale_trigger_cannot_change_the_limit_retroactively() -> None:
    s1, _ = call(new_state(LIMIT), 30, grade="high")
    assert call(s1, 10, grade="critical")[1] is None


def test_max_changes_per_period() -> None:
    policy = LimitPolicy(max_changes=2, period_days=100, cooldown_days=1,
                         approval_above_pct=100)
    s, n = new_state(LIMIT), 0
    for day in range(0, 100):
        s, adj = call(s, day, policy=policy, **GOOD)
        n += adj is not None
    assert n == 2
    s, adj = call(s, 100, policy=policy, **GOOD)
    assert adj is not None  # the first change has left the period


def test_disabled_or_unknown_limit_proposes_nothing() -> None:
    assert call(new_state(LIMIT), grade="critical",
                policy=LimitPolicy(enabled=False))[1] is None
    assert call(LimitState(), grade="critical")[1] is None


def test_sync_limit_and_state_bytes() -> None:
    s1, _ = call(new_state(LIMIT), grade="critical", balance_minor=0)
    assert sync_limit(s1, 375_000) is s1
    assert sync_limit(s1, LIMIT).pre_limit_minor is None
    assert decode_state(encode_state(s1)) == s1
    assert len(encode_state(s1)) <= 40


def test_worst_case_state_bytes() -> None:
    """Every integer at its widest: 66 B within the default policy, 128 B at most."""
    big, day, fp = 10**12, 40_000, 0xFFFF_FFFF
    changes = DEFAULT_LIMIT_POLICY.max_changes
    worst_default = LimitState(big, big, 3, True, day, ((day, 3),) * changes,
                               (fp,) * TRIGGER_MEMORY)
    worst = LimitState(big, big, 3, True, day, ((day, 3),) * HISTORY_LIMIT, (fp,) * TRIGGER_MEMORY)
    assert (len(encode_state(worst_default)), len(encode_state(worst))) == (66, 128)


def test_notify_directions_are_configurable_but_cuts_always_notify() -> None:
    policy = msgspec.convert({"notify": ["cut", "raise", "restore"]}, LimitPolicy)
    _, adj = call(new_state(LIMIT), policy=policy, **GOOD)
    assert adj is not None and adj.notify_customer
    with pytest.raises(msgspec.ValidationError, match="always notifies"):
        msgspec.convert({"notify": []}, LimitPolicy)
    with pytest.raises(msgspec.ValidationError, match="raise_grades"):
        msgspec.convert({"raise_grades": ["high"]}, LimitPolicy)
    with pytest.raises(msgspec.ValidationError, match=">= 1"):
        msgspec.convert({"cooldown_days": 0}, LimitPolicy)


# --------------------------------------------------------------------------- #
# Properties over event sequences
# --------------------------------------------------------------------------- #

GRADES = ["low", "medium", "high", "critical"]

policies = st.builds(
    LimitPolicy,
    max_step_pct=st.integers(1, 100),
    cut_pct_high=st.sampled_from([0, 0, 10, 50]),
    cut_pct_critical=st.sampled_from([0, 25, 40, 100]),
    floor_buffer_pct=st.integers(0, 20),
    floor_buffer_minor=st.sampled_from([0, 1_000]),
    round_minor=st.sampled_from([1, 100, 10_000]),
    raise_pct=st.integers(1, 100),
    raise_min_on_time_cycles=st.integers(1, 6),
    cooldown_days=st.integers(1, 40),
    max_changes=st.integers(1, 6),
    period_days=st.integers(1, 200),
    restore_window_days=st.integers(0, 120),
    max_limit_minor=st.sampled_from([10**12, 800_000]),
)

steps = st.lists(
    st.tuples(
        st.integers(0, 25),  # days since the previous event (may be 0)
        st.sampled_from(GRADES),
        st.integers(0, 1000),  # score
        st.floats(0.0, 1.5),  # balance as a share of the limit
        st.floats(0.0, 1.0),  # utilisation
        st.integers(0, 12),  # on-time cycles
        st.booleans(),  # crisis in force
        st.booleans(),  # segment tightened
        st.integers(-1, 30),  # >= 0: replay the trigger of that earlier step
    ),
    max_size=60,
)

TIGHT = Tightening(score_add=50, limit_raise_suspended=True, cut_step_multiplier=2.0,
                   reasons=["sector retail: prosperity_index fell"],
                   codes=["sector_indicator_drop"])


def run_sequence(policy: LimitPolicy, limit: int, seq: list[tuple[Any, ...]]) -> list[Any]:
    state = new_state(limit)
    day, previous = 0, None
    triggers: list[tuple[str, int]] = []
    log: list[Any] = []
    for i, (gap, grade, score, bal, util, cycles, crisis, tight, replay) in enumerate(seq):
        day += gap
        if 0 <= replay < len(triggers):
            trigger, t_day = triggers[replay]
        else:
            trigger, t_day = f"ev-{i}", day
        triggers.append((trigger, t_day))
        before = encode_state(state)
        balance = int(bal * state.limit_minor)
        new, adj = propose(
            state, customer_id="c1", account_id="acc-1", trigger_event_id=trigger,
            event_time=T0 + dt.timedelta(days=t_day, hours=i % 24), grade=grade,
            previous_grade=previous, score=score, balance_minor=balance, utilisation=util,
            on_time_cycles=cycles, crisis_in_force=crisis, currency="EUR", policy=policy,
            policy_version="p", model_version="m", tightening=TIGHT if tight else None)
        assert encode_state(state) == before  # the input state is untouched
        log.append((state, new, adj, t_day, trigger, crisis, balance))
        state, previous = new, grade
    return log


@settings(max_examples=400, deadline=None)
@given(policies, st.integers(0, 2_000_000), steps)
def test_guardrails_hold_over_any_sequence(policy: LimitPolicy, limit: int,
                                           seq: list[tuple[Any, ...]]) -> None:
    log = run_sequence(policy, limit, seq)
    proposals = [adj for _, _, adj, *_ in log if adj]
    seen_triggers = set()
    for old, new, adj, _, trigger, crisis, balance in log:
        # State bounded.
        assert len(new.history) <= HISTORY_LIMIT and len(new.triggers) <= TRIGGER_MEMORY
        assert len(encode_state(new)) <= 128
        if adj is None:
            continue
        check_contract(adj)
        current, proposed = adj.current_limit_minor, adj.proposed_limit_minor
        assert current == old.limit_minor and new.limit_minor == proposed
        # Step never above max_step_pct.
        assert abs(proposed - current) * 100 <= current * policy.max_step_pct
        if adj.direction == "cut":
            assert not crisis  # no cuts in a crisis
            assert balance <= proposed < current  # never below the balance
            assert adj.notify_customer
        elif adj.direction == "freeze":
            assert proposed == current
        elif adj.direction == "raise":
            assert current < proposed <= max(current, policy.max_limit_minor)
        else:
            assert current <= proposed
        # Idempotent per trigger: at most one proposal ever, with the deterministic id.
        assert trigger not in seen_triggers
        seen_triggers.add(trigger)
        assert adj.adjustment_id == output_id(f"limit-{adj.direction}", policy.rule_version,
                                              trigger, "acc-1")
    # Days as the policy counts them: UTC calendar days of the event times.
    days = [adj.event_time.date().toordinal() for adj in proposals]
    # Never inside the cooldown (and never retroactive).
    assert all(b - a >= policy.cooldown_days for a, b in itertools.pairwise(days))
    # Never more than max_changes in any period_days.
    for i, d in enumerate(days):
        assert sum(1 for e in days[: i + 1] if d - e < policy.period_days) <= policy.max_changes


@settings(max_examples=100, deadline=None)
@given(policies, st.integers(1, 2_000_000), steps)
def test_sequences_are_deterministic(policy: LimitPolicy, limit: int,
                                     seq: list[tuple[Any, ...]]) -> None:
    first = [(new, adj) for _, new, adj, *_ in run_sequence(policy, limit, seq)]
    second = [(new, adj) for _, new, adj, *_ in run_sequence(policy, limit, seq)]
    assert first == second
