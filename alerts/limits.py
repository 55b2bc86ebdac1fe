"""Credit-limit proposals within guardrails: cut, freeze, raise and restore.

:func:`propose` is pure: it takes a customer's account :class:`LimitState` and
what the engine knows at one triggering event (grade, score, balance,
utilisation, on-time cycles, whether crisis mode is in force) and returns the
new state and at most one :class:`~schemas.models.LimitAdjustment` proposal.
Inputs are never modified (the state is frozen); a call that changes nothing
returns the very same state object.

What is proposed
----------------

* **Freeze** (``proposed == current``, flagged) when the grade reaches a
  level whose cut size is 0 (``cut_pct_high``, default: freeze at *high*).
* **Cut** by ``cut_pct_high`` / ``cut_pct_critical`` percent of the current
  limit (default: 25 % at *critical*), multiplied by the segment's
  ``cut_step_multiplier`` (:class:`detectors.segments.Tightening`), never
  more than ``max_step_pct`` in one step and never below the outstanding
  balance plus a buffer (``floor_buffer_pct`` of it plus
  ``floor_buffer_minor``). A cut the floor leaves no room for becomes a
  freeze. Grade actions are level-triggered with memory: the state records
  which grade has been acted on, so a grade that stays *critical* is cut once,
  a rise from *high* (frozen) to *critical* is cut, and an action refused by a
  guardrail is proposed on a later event if the grade still calls for it.
* **Crisis mode** (``crisis_in_force``: the caller passes
  ``policy.crisis.suspend_limit_cuts and policy.crisis.in_force(event_time)``):
  no cuts; a grade that calls for a cut gets a freeze instead, and the cut
  follows after the crisis if the grade still calls for it. Freezes, raises
  and restores stay allowed.
* **Restore** when the grade is back to *low* or *medium* within
  ``restore_window_days`` of the latest cut or freeze and the customer has no
  days past due: the limit before the episode, at most ``max_step_pct`` up per
  step (the rest on later events, still within the window). A restore after a
  freeze alone unfreezes (``proposed == current``). After the window the
  episode is closed and only raises can lift the limit; a freeze still in place
  is then lifted by an unfreeze at the current limit (never dropped without a
  proposal), again only once the customer is current. A customer past due gets
  neither a raise nor a restore nor an unfreeze: the proposal waits for the cure
  (a wait that outlasts the window ends the episode as above).
* **Raise** by ``raise_pct`` (within ``max_step_pct`` and ``max_limit_minor``)
  for sustained good behaviour: at least ``raise_min_on_time_cycles`` on-time
  cycles, utilisation below ``raise_max_utilisation_pct`` %, score below
  ``raise_max_score``, grade in ``raise_grades`` and the same as the previous
  grade (stable), no cut or freeze in place, and raises not suspended for the
  customer's segment.

Guardrails that hold for every proposal (property-tested):

* at least ``cooldown_days`` between two proposals of an account, and at most
  ``max_changes`` proposals within any ``period_days``; a trigger older than
  the latest proposal proposes nothing (no retroactive changes);
* one proposal per trigger: the adjustment id is
  ``output_id("limit-<direction>", rule_version, trigger_event_id, account_id or "")``
  and the state remembers the fingerprints of the last triggers that
  proposed, so a replayed trigger proposes nothing (the cooldown, which is at
  least one day, guarantees the same beyond that memory);
* the state stays bounded: at most 16 history entries and 4 trigger
  fingerprints. Encoded (msgpack array): 12 B fresh for a 5,000.00 limit,
  28 B after one cut, at most 66 B under the default policy (at most
  ``max_changes`` history entries) and 128 B in any case.

Every direction counts as a change, freezes and restores included, so an
escalation (a freeze at *high*, then *critical*) waits out the cooldown; days
are UTC calendar days of ``event_time``. Keep one state per account.

Customers are notified of the directions in ``notify`` (cuts always);
approval is required when the change is above ``approval_above_minor`` or
``approval_above_pct`` % of the current limit.

The state follows proposals optimistically (``limit_minor`` becomes the
proposed limit). When the limit system reports the real limit (a customer
profile), the caller passes it through :func:`sync_limit`.

>>> import datetime as dt
>>> state = new_state(500_000)
>>> state, adj = propose(state, customer_id="c1", account_id="acc-1",
...     trigger_event_id="rep-9", event_time=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
...     grade="critical", previous_grade="medium", score=812, balance_minor=123_400,
...     utilisation=0.25, on_time_cycles=0, crisis_in_force=False, currency="EUR",
...     policy=DEFAULT_LIMIT_POLICY, policy_version="p1", model_version="m1")
>>> adj.direction, adj.current_limit_minor, adj.proposed_limit_minor, adj.notify_customer
('cut', 500000, 375000, True)
>>> [e.text for e in adj.evidence][:2]
['grade rose from medium to critical (score 812)', 'limit 5,000.00 EUR to 3,750.00 EUR (-25.0%)']
>>> state.limit_minor, state.pre_limit_minor, len(encode_state(state))
(375000, 500000, 28)
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec
from msgspec import Meta, Struct
from msgspec.structs import replace

from alerts.ids import event_fingerprint, output_id
from detectors.money import money
from detectors.segments import NO_TIGHTENING, Tightening
from schemas.models import MAX_MINOR, Evidence, Grade, LimitAdjustment

__all__ = [
    "DEFAULT_LIMIT_POLICY",
    "DIRECTIONS",
    "GRADE_RANK",
    "HISTORY_LIMIT",
    "TRIGGER_MEMORY",
    "Direction",
    "LimitPolicy",
    "LimitState",
    "decode_state",
    "encode_state",
    "new_state",
    "propose",
    "propose_positional",
    "sync_limit",
]

Direction = Literal["cut", "freeze", "raise", "restore"]
#: Directions, by the index stored in the state's history.
DIRECTIONS: Final[tuple[Direction, ...]] = ("cut", "freeze", "raise", "restore")
_DIR_INDEX: Final = {d: i for i, d in enumerate(DIRECTIONS)}
#: Rank of each grade (a grade "rises" when its rank grows).
GRADE_RANK: Final[dict[str, int]] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_HIGH: Final = 2
#: Most history entries a state keeps.
HISTORY_LIMIT: Final = 16
#: Trigger fingerprints a state keeps.
TRIGGER_MEMORY: Final = 4
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_CFG: dict[str, Any] = {"kw_only": True, "frozen": True, "forbid_unknown_fields": True}

Pct = Annotated[int, Meta(ge=0, le=100)]
Days = Annotated[int, Meta(ge=0, le=3660)]


class LimitPolicy(Struct, **_CFG):
    """Guardrails and sizes of credit-limit proposals (part of a policy document).

    >>> p = msgspec.convert({"max_step_pct": 20, "cut_pct_high": 10}, LimitPolicy)
    >>> p.max_step_pct, p.cut_pct_high, p.cut_pct_critical
    (20, 10, 25)
    >>> msgspec.convert({"notify": ["raise"]}, LimitPolicy)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: a limit cut always notifies the customer: notify must include 'cut'
    >>> msgspec.convert({"max_stepp": 20}, LimitPolicy)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Object contains unknown field `max_stepp`
    """

    enabled: bool = True
    rule_version: Annotated[int, Meta(ge=1)] = 1
    #: Largest change in one proposal, in percent of the current limit.
    max_step_pct: Annotated[int, Meta(ge=1, le=100)] = 30
    #: Cut size when the grade reaches high / critical, in percent; 0 means freeze.
    cut_pct_high: Pct = 0
    cut_pct_critical: Pct = 25
    #: A cut never goes below the outstanding balance plus this buffer.
    floor_buffer_pct: Pct = 5
    floor_buffer_minor: Annotated[int, Meta(ge=0, le=MAX_MINOR)] = 0
    #: Proposed limits are multiples of this (cuts round up, raises down).
    round_minor: Annotated[int, Meta(ge=1, le=MAX_MINOR)] = 100
    #: Raise size, in percent of the current limit.
    raise_pct: Annotated[int, Meta(ge=1, le=100)] = 20
    raise_min_on_time_cycles: Annotated[int, Meta(ge=1, le=120)] = 6
    raise_max_utilisation_pct: Pct = 30
    raise_max_score: Annotated[int, Meta(ge=0, le=1000)] = 300
    raise_grades: tuple[Grade, ...] = ("low",)
    #: Raises and restores never go above this limit.
    max_limit_minor: Annotated[int, Meta(ge=0, le=MAX_MINOR)] = MAX_MINOR
    #: Days between two proposals for the same account (at least one).
    cooldown_days: Annotated[int, Meta(ge=1, le=3660)] = 14
    #: At most ``max_changes`` proposals within any ``period_days``.
    max_changes: Annotated[int, Meta(ge=1, le=HISTORY_LIMIT)] = 4
    period_days: Annotated[int, Meta(ge=1, le=3660)] = 365
    #: Approval is required above either size.
    approval_above_minor: Annotated[int, Meta(ge=0, le=MAX_MINOR)] = 500_000
    approval_above_pct: Pct = 20
    #: Directions the customer is notified of.
    notify: tuple[Direction, ...] = ("cut",)
    #: A restore is proposed only this many days after the latest cut or freeze.
    restore_window_days: Days = 90

    def __post_init__(self) -> None:
        if "cut" not in self.notify:
            raise ValueError("a limit cut always notifies the customer: notify must include 'cut'")
        if any(GRADE_RANK[g] >= _HIGH for g in self.raise_grades):
            raise ValueError("raise_grades may only hold low and medium")


DEFAULT_LIMIT_POLICY: Final = LimitPolicy()


class LimitState(Struct, array_like=True, frozen=True, gc=False):
    """What Riskwatch keeps about one account's limit (immutable msgpack array).

    ``acted`` is the grade rank whose full action (cut, or freeze where the
    grade's cut size is 0) is in place, 0 for none; ``frozen`` says a freeze
    is in place; ``pre_limit_minor`` is the limit before the current adverse
    episode (the restore target); ``history`` holds ``(epoch day, direction
    index)`` of recent proposals, oldest first; ``triggers`` the 32-bit
    fingerprints of the triggers of the last proposals.

    >>> len(encode_state(LimitState())), len(encode_state(new_state(500_000)))
    (8, 12)
    """

    limit_minor: int = 0
    pre_limit_minor: int | None = None
    acted: int = 0
    frozen: bool = False
    adverse_day: int = -1
    history: tuple[tuple[int, int], ...] = ()
    triggers: tuple[int, ...] = ()


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(LimitState)


def encode_state(state: LimitState) -> bytes:
    """The msgpack bytes of a state.

    >>> decode_state(encode_state(new_state(1_000))).limit_minor
    1000
    """
    return _ENCODER.encode(state)


def decode_state(data: bytes) -> LimitState:
    """A state from :func:`encode_state` bytes."""
    return _DECODER.decode(data)


def new_state(limit_minor: int) -> LimitState:
    """The state of an account whose current limit is ``limit_minor``.

    >>> new_state(250_000).limit_minor
    250000
    """
    return LimitState(limit_minor=limit_minor)


def sync_limit(state: LimitState, limit_minor: int) -> LimitState:
    """Take the limit the limit system reports (e.g. from a customer profile).

    Not a proposal: nothing is added to the history. A limit at or above the
    episode's pre-adjustment limit ends the episode (nothing left to restore).

    >>> s = LimitState(limit_minor=375_000, pre_limit_minor=500_000, acted=3, adverse_day=5)
    >>> sync_limit(s, 375_000) is s
    True
    >>> sync_limit(s, 400_000).pre_limit_minor, sync_limit(s, 500_000).pre_limit_minor
    (500000, None)
    """
    if limit_minor == state.limit_minor:
        return state
    if state.pre_limit_minor is not None and limit_minor >= state.pre_limit_minor:
        return replace(state, limit_minor=limit_minor, pre_limit_minor=None, acted=0,
                       frozen=False)
    return replace(state, limit_minor=limit_minor)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #



def _epoch_day(t: dt.datetime) -> int:
    """Epoch day (UTC) of an aware datetime.

    >>> _epoch_day(dt.datetime(1970, 1, 2, 23, 59, tzinfo=dt.UTC))
    1
    """
    if t.tzinfo is dt.UTC:  # the usual case: astimezone(dt.UTC) would change nothing
        return t.toordinal() - _EPOCH_ORDINAL
    return t.astimezone(dt.UTC).date().toordinal() - _EPOCH_ORDINAL


def _fingerprint(trigger_event_id: str) -> int:
    return event_fingerprint(trigger_event_id) & 0xFFFF_FFFF


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def _round_down_above(x: int, unit: int, above: int) -> int:
    """``x`` rounded down to a multiple of ``unit`` if that stays above ``above``, else ``x``.

    >>> _round_down_above(1_234, 100, 1_000), _round_down_above(1_050, 100, 1_000)
    (1200, 1050)
    """
    r = x // unit * unit
    return r if r > above else x


def _change(current: int, proposed: int, currency: str) -> Evidence:
    delta = proposed - current
    pct = f" ({100.0 * delta / current:+.1f}%)" if current else ""
    return Evidence(
        code="limit_change",
        text=f"limit {money(current, currency)} to {money(proposed, currency)}{pct}",
        value=delta,
        unit="minor",
    )


def _grade_text(grade: str, previous: str | None, score: int) -> str:
    if previous is not None and GRADE_RANK[previous] < GRADE_RANK[grade]:
        return f"grade rose from {previous} to {grade} (score {score})"
    return f"grade {grade} (score {score})"


class _Plan(NamedTuple):
    direction: Direction
    proposed: int
    codes: list[str]
    evidence: list[Evidence]
    changes: dict[str, Any]


def _blocked(state: LimitState, day: int, policy: LimitPolicy) -> bool:
    """Whether the guardrails forbid a proposal on ``day``."""
    if not state.history:
        return False
    last = state.history[-1][0]
    if day < last or day - last < policy.cooldown_days:
        return True
    recent = sum(1 for d, _ in state.history if day - d < policy.period_days)
    return recent >= policy.max_changes


def _adverse(
    state: LimitState, day: int, grade: str, previous: str | None, score: int, balance: int,
    crisis: bool, currency: str, policy: LimitPolicy, tightening: Tightening,
) -> _Plan | None:
    """Cut or freeze for a high or critical grade, if one is still due."""
    rank = GRADE_RANK[grade]
    if rank <= state.acted:
        return None
    current = state.limit_minor
    base_pct = policy.cut_pct_critical if rank > _HIGH else policy.cut_pct_high
    grade_ev = Evidence(code="grade", text=_grade_text(grade, previous, score), value=score,
                        unit="score")
    pre = current if state.pre_limit_minor is None else state.pre_limit_minor
    codes = [f"grade_{grade}"]
    freeze_ev = Evidence(code="freeze", text=f"limit held at {money(current, currency)}",
                         value=current, unit="minor")
    if base_pct == 0:
        if state.frozen:
            return None
        return _Plan("freeze", current, [*codes, "limit_freeze"], [grade_ev, freeze_ev],
                     {"frozen": True, "acted": rank, "pre_limit_minor": pre, "adverse_day": day})
    if crisis:
        if state.frozen:
            return None
        crisis_ev = Evidence(code="crisis", text="crisis mode in force: limit cuts are "
                             "suspended, the limit is frozen instead")
        return _Plan("freeze", current, [*codes, "limit_freeze", "crisis_cut_suspended"],
                     [grade_ev, crisis_ev, freeze_ev],
                     {"frozen": True, "pre_limit_minor": pre, "adverse_day": day})
    multiplier = max(1.0, tightening.cut_step_multiplier)
    pct = base_pct * multiplier
    max_delta = current * policy.max_step_pct // 100
    want = math.floor(current * pct / 100)
    delta = min(want, max_delta)
    buffer = _round_up(balance * policy.floor_buffer_pct, 100) // 100 + policy.floor_buffer_minor
    floor = balance + buffer
    target = current - delta
    floored = target < floor
    target = min(current, _round_up(max(target, floor), policy.round_minor))
    balance_ev = Evidence(
        code="balance_floor" if floored else "balance",
        text=f"outstanding balance {money(balance, currency)} "
        + ("sets the floor" if floored else f"(floor {money(floor, currency)})"),
        value=balance,
        unit="minor",
    )
    if target >= current:
        if state.frozen:
            return None
        return _Plan("freeze", current, [*codes, "limit_freeze", "balance_floor"],
                     [grade_ev, balance_ev, freeze_ev],
                     {"frozen": True, "pre_limit_minor": pre, "adverse_day": day})
    codes.append("limit_cut")
    evidence = [grade_ev, _change(current, target, currency), balance_ev]
    if floored:
        codes.append("balance_floor")
    if want > max_delta and not floored:
        codes.append("step_capped")
        evidence.append(Evidence(code="step_cap", text=f"cut capped at the "
                                 f"{policy.max_step_pct}% step limit",
                                 value=policy.max_step_pct, unit="%"))
    if multiplier > 1.0:
        codes.append("segment_tightening")
        evidence.append(Evidence(code="cut_multiplier", text=f"cut of {base_pct}% "
                                 f"x{multiplier:g} for the customer's segment",
                                 value=multiplier))
        evidence.extend(Evidence(code="segment_tightening", text=r[:500])
                        for r in tightening.reasons)
    return _Plan("cut", target, codes, evidence,
                 {"frozen": False, "acted": rank, "pre_limit_minor": pre, "adverse_day": day})


def _restore(
    state: LimitState, day: int, grade: str, score: int, days_past_due: float, currency: str,
    policy: LimitPolicy,
) -> _Plan | None:
    """Back toward the pre-episode limit, one step at most; nothing while past due."""
    if days_past_due > 0:
        return None
    pre = state.pre_limit_minor
    assert pre is not None
    current = state.limit_minor
    cap = max(current, min(pre, policy.max_limit_minor))
    max_delta = current * policy.max_step_pct // 100
    target = min(cap, current + max_delta)
    if target < cap:
        target = _round_down_above(target, policy.round_minor, current)
    if target == current and not (state.acted or state.frozen):
        return None
    done = target >= cap
    codes = ["risk_receded", "limit_restore"]
    evidence = [
        Evidence(code="grade", text=f"grade back to {grade} (score {score}), "
                 f"{day - state.adverse_day} days after the last cut or freeze", value=score,
                 unit="score"),
        Evidence(code="pre_cut_limit", text=f"limit before the cut or freeze "
                 f"{money(pre, currency)}", value=pre, unit="minor"),
        _change(current, target, currency),
    ]
    if not done:
        codes.append("step_capped")
        evidence.append(Evidence(code="step_cap", text=f"restore capped at the "
                                 f"{policy.max_step_pct}% step limit; the rest follows later",
                                 value=policy.max_step_pct, unit="%"))
    changes: dict[str, Any] = {"acted": 0, "frozen": False}
    if done:
        changes["pre_limit_minor"] = None
    return _Plan("restore", target, codes, evidence, changes)


def _raise(
    state: LimitState, grade: str, previous: str | None, score: int,
    utilisation: float | None, on_time_cycles: int, days_past_due: float, currency: str,
    policy: LimitPolicy, tightening: Tightening,
) -> _Plan | None:
    """A raise for sustained good behaviour, if every condition holds."""
    if (
        days_past_due > 0
        or tightening.limit_raise_suspended
        or grade not in policy.raise_grades
        or previous != grade
        or on_time_cycles < policy.raise_min_on_time_cycles
        or utilisation is None
        or not utilisation * 100 < policy.raise_max_utilisation_pct
        or score >= policy.raise_max_score
    ):
        return None
    current = state.limit_minor
    step = min(current * policy.raise_pct // 100, current * policy.max_step_pct // 100)
    target = min(current + step, policy.max_limit_minor)
    target = _round_down_above(target, policy.round_minor, current)
    if target <= current:
        return None
    evidence = [
        Evidence(code="repayment_record", text=f"{on_time_cycles} on-time cycles, "
                 f"utilisation {100 * utilisation:.0f}%", value=on_time_cycles, unit="cycles"),
        Evidence(code="score", text=f"score {score}, grade {grade} and stable", value=score,
                 unit="score"),
        _change(current, target, currency),
    ]
    return _Plan("raise", target, ["sustained_good_behaviour", "limit_raise"], evidence, {})


# --------------------------------------------------------------------------- #
# Proposals
# --------------------------------------------------------------------------- #


def propose(
    state: LimitState,
    *,
    customer_id: str,
    account_id: str | None,
    trigger_event_id: str,
    event_time: dt.datetime,
    grade: Grade,
    previous_grade: Grade | None,
    score: int,
    balance_minor: int,
    utilisation: float | None,
    on_time_cycles: int,
    crisis_in_force: bool,
    currency: str,
    policy: LimitPolicy,
    policy_version: str,
    model_version: str,
    tightening: Tightening | None = None,
    days_past_due: float = 0,
) -> tuple[LimitState, LimitAdjustment | None]:
    """The account's new limit state and at most one proposal for this trigger.

    ``utilisation`` is a fraction (0.12 for 12 %; ``None`` if unknown: no
    raise); ``balance_minor`` the outstanding balance (negative counts as 0);
    ``tightening`` the customer's segment tightening (default: none);
    ``days_past_due`` the customer's current days past due, max over accounts
    (any: no raise and no restore; cuts and freezes are unaffected). See the module
    docstring for the rules.

    >>> import datetime as dt
    >>> kw = dict(customer_id="c1", account_id=None, trigger_event_id="e7",
    ...     event_time=dt.datetime(2026, 3, 2, tzinfo=dt.UTC), grade="high",
    ...     previous_grade="medium", score=640, balance_minor=0, utilisation=0.4,
    ...     on_time_cycles=1, crisis_in_force=False, currency="EUR",
    ...     policy=DEFAULT_LIMIT_POLICY, policy_version="p1", model_version="m1")
    >>> state, adj = propose(new_state(200_000), **kw)
    >>> adj.direction, adj.proposed_limit_minor, state.frozen
    ('freeze', 200000, True)
    >>> adj.adjustment_id == output_id("limit-freeze", 1, "e7")
    True
    >>> propose(state, **kw)  # the same trigger again: nothing new
    (LimitState(limit_minor=200000, ...), None)
    """
    return propose_positional(
        state, customer_id, account_id, trigger_event_id, event_time, grade, previous_grade,
        score, balance_minor, utilisation, on_time_cycles, crisis_in_force, currency, policy,
        policy_version, model_version, tightening, days_past_due)


def propose_positional(
    state: LimitState,
    customer_id: str,
    account_id: str | None,
    trigger_event_id: str,
    event_time: dt.datetime,
    grade: Grade,
    previous_grade: Grade | None,
    score: int,
    balance_minor: int,
    utilisation: float | None,
    on_time_cycles: int,
    crisis_in_force: bool,
    currency: str,
    policy: LimitPolicy,
    policy_version: str,
    model_version: str,
    tightening: Tightening | None,
    days_past_due: float,
    /,
) -> tuple[LimitState, LimitAdjustment | None]:
    """:func:`propose` with every argument given by position, in its order (for the
    engine's once-a-day call: eighteen keyword arguments cost a Python call about 0.6 us).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    >>> propose_positional(new_state(200_000), "c1", None, "e7", t, "high", "medium", 640, 0,
    ...     0.4, 1, False, "EUR", DEFAULT_LIMIT_POLICY, "p1", "m1", None, 0)[1].direction
    'freeze'
    """
    if not policy.enabled or state.limit_minor <= 0:
        return state, None
    fingerprint = event_fingerprint(trigger_event_id) & 0xFFFF_FFFF  # _fingerprint, inlined
    if fingerprint in state.triggers:
        return state, None
    day = _epoch_day(event_time)
    tight = tightening if tightening is not None else NO_TIGHTENING
    rank = GRADE_RANK[grade]
    if (
        rank < _HIGH
        and state.pre_limit_minor is not None
        and day - state.adverse_day > policy.restore_window_days
    ):
        # The restore window has passed: the episode is over, the limit stays. A freeze
        # is still lifted by a proposal (the limit system holds it until told), never
        # just forgotten: an unfreeze at the current limit (a cut stays taken).
        if not state.frozen:
            state = replace(state, pre_limit_minor=None, acted=0)
        elif state.pre_limit_minor != state.limit_minor or state.acted:
            state = replace(state, pre_limit_minor=state.limit_minor, acted=0)
    if state.history and _blocked(state, day, policy):  # (no history: never blocked)
        return state, None
    balance = max(0, balance_minor)
    plan: _Plan | None
    if rank >= _HIGH:
        plan = _adverse(state, day, grade, previous_grade, score, balance, crisis_in_force,
                        currency, policy, tight)
    elif state.pre_limit_minor is not None:
        plan = _restore(state, day, grade, score, days_past_due, currency, policy)
    else:
        plan = _raise(state, grade, previous_grade, score, utilisation, on_time_cycles,
                      days_past_due, currency, policy, tight)
    if plan is None:
        return state, None
    current = state.limit_minor
    delta = abs(plan.proposed - current)
    approval = (
        delta > policy.approval_above_minor or delta * 100 > current * policy.approval_above_pct
    )
    evidence = plan.evidence
    if approval:
        evidence.append(Evidence(
            code="approval",
            text=f"change of {money(delta, currency)} is above the approval line "
            f"({money(policy.approval_above_minor, currency)} or {policy.approval_above_pct}%)",
            value=delta, unit="minor"))
    keep = max(policy.period_days, policy.cooldown_days)
    entry = (day, _DIR_INDEX[plan.direction])
    history = (*(h for h in state.history if day - h[0] < keep), entry)
    new = replace(
        state,
        limit_minor=plan.proposed,
        history=history[-HISTORY_LIMIT:],
        triggers=(*state.triggers, fingerprint)[-TRIGGER_MEMORY:],
        **plan.changes,
    )
    adjustment = LimitAdjustment(
        adjustment_id=output_id(f"limit-{plan.direction}", policy.rule_version,
                                trigger_event_id, account_id or ""),
        customer_id=customer_id,
        account_id=account_id,
        trigger_event_id=trigger_event_id,
        event_time=event_time,
        policy_version=policy_version,
        model_version=model_version,
        reason_codes=plan.codes[:32],
        evidence=evidence[:32],
        direction=plan.direction,
        current_limit_minor=current,
        proposed_limit_minor=plan.proposed,
        currency=currency,
        requires_approval=approval,
        notify_customer=plan.direction in policy.notify,
    )
    return new, adjustment
