"""Customer actions from delinquency findings: reminders, escalation, offers.

What a collections and customer-care team does, as policy:

* onset of delinquency (first day past due) -> SMS reminder;
* a broken restructuring promise -> call;
* a move into a bucket at or past ``call_at_dpd`` -> call; at or past
  ``collections_at_dpd`` -> collections case (internal);
* warnings before delinquency (minimum-only streak, falling payment ratio,
  repeated late-but-cured) -> restructuring offer by letter;
* a due date coming up for a customer whose current risk grade the policy marks
  (``pre_due_reminder``) -> a reminder ``days_before`` the due date, unless the
  amount is already paid (:func:`plan_pre_due`; the engine finds the dues);
* a grade escalation -> the customer actions of the grade's tier
  (:func:`plan_tier_actions`; the policy's ``tiers``).

All of them share one send history: messages to the customer respect quiet hours in the customer's own time zone
(``not_before`` is set to the end of the quiet period) and frequency caps per
channel over a rolling window; a capped action is not sent and is reported as
suppressed. Action ids derive from the alert id, so replays deduplicate.

>>> import datetime as dt
>>> from schemas.models import RiskAlert
>>> alert = RiskAlert(alert_id="a-1", customer_id="c1", trigger_event_id="e1",
...     event_time=dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC), policy_version="p",
...     model_version="m", reason_codes=["delinquency_onset", "dpd_1_29"], evidence=[],
...     alert_type="delinquency", severity="low", rule_id="delinquency-onset", rule_version=1,
...     routing=[], account_id="acc-1")
>>> actions, history, suppressed = plan_actions(alert, "Europe/Berlin", [], ActionPolicy())
>>> [(a.action, a.channel, a.not_before.isoformat()) for a in actions], suppressed
([('sms', 'sms', '2026-03-03T07:00:00+00:00')], [])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from msgspec import Meta, Struct

from alerts.envelope import Emit
from alerts.ids import output_id, subject
from schemas.models import (
    ActionChannel,
    ActionKind,
    CustomerAction,
    Evidence,
    Grade,
    RiskAlert,
)

_CFG: dict[str, Any] = {"kw_only": True, "frozen": True, "forbid_unknown_fields": True}

#: Channel codes kept in the per-customer send history (compact).
CHANNELS = ("sms", "email", "push", "call", "letter", "internal")


#: Highest ``cap_per_channel`` a policy may set (bounds the per-customer send history).
MAX_CAP_PER_CHANNEL = 16

#: Channels a pre-due reminder may use.
ReminderChannel = Literal["sms", "email", "push", "letter"]


class PreDueReminder(Struct, **_CFG):
    """A reminder before a due date, for customers whose current grade is in ``grades``.

    >>> PreDueReminder().grades, PreDueReminder().days_before
    (('high', 'critical'), 3)
    >>> PreDueReminder(grades=("high", "high"))
    Traceback (most recent call last):
    ...
    ValueError: pre_due_reminder grades must not repeat a grade: high, high
    """

    enabled: bool = True
    #: Risk grades (``alerts.grades.GRADES``) whose customers are reminded.
    grades: tuple[Grade, ...] = ("high", "critical")
    #: The reminder goes out this many days before the due date (or later, once
    #: a late-issued due or a newly marked grade makes it due inside the window).
    days_before: Annotated[int, Meta(ge=1, le=31)] = 3
    channel: ReminderChannel = "sms"
    rule_version: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if len(set(self.grades)) != len(self.grades):
            raise ValueError("pre_due_reminder grades must not repeat a grade: "
                             + ", ".join(self.grades))


class ActionPolicy(Struct, **_CFG):
    """When and how customers are contacted."""

    #: Off: no customer action at all (alert actions, tier actions, pre-due reminders).
    enabled: bool = True
    call_at_dpd: Annotated[int, Meta(ge=1)] = 30
    collections_at_dpd: Annotated[int, Meta(ge=1)] = 30
    quiet_start_hour: Annotated[int, Meta(ge=0, le=23)] = 21
    quiet_end_hour: Annotated[int, Meta(ge=0, le=23)] = 8
    #: At most this many messages per channel within ``cap_window_days`` (the send
    #: history keeps this many per channel, hence the bound).
    cap_per_channel: Annotated[int, Meta(ge=1, le=MAX_CAP_PER_CHANNEL)] = 3
    cap_window_days: Annotated[int, Meta(ge=1)] = 7
    pre_due_reminder: PreDueReminder = PreDueReminder()


#: Tier responses (``alerts.grades.RESPONSES``) that become customer actions:
#: response -> (action, channel), in the vocabulary of the other actions.
TIER_ACTIONS: dict[str, tuple[ActionKind, ActionChannel]] = {
    "review_queue": ("review_queue", "internal"),
    "reminder": ("reminder", "sms"),
    "sms": ("sms", "sms"),
    "call": ("call", "call"),
    "restructuring_offer": ("restructuring_offer", "letter"),
    "collections_case": ("collections_case", "internal"),
}

#: Tier responses that are no customer action, and what stands for them instead.
TIER_NON_ACTIONS: dict[str, str] = {
    "monitoring": "the escalation alert and the risk-grades record only",
    "limit_freeze": "proposed by the credit-limit guardrails (alerts.limits)",
    "limit_cut": "proposed by the credit-limit guardrails (alerts.limits)",
    "limit_restore": "proposed by the credit-limit guardrails (alerts.limits)",
}


#: History entry: (channel index, Unix seconds of the send).
Sent = tuple[int, int]


def _bucket_floor(alert: RiskAlert) -> int | None:
    """Lowest DPD of the bucket an alert moved into (from reason codes like dpd_30_59)."""
    for code in alert.reason_codes:
        if code.startswith("dpd_") and code[4:].split("_")[0].isdigit():
            return int(code[4:].split("_")[0])
    return None


def _after_quiet(at: dt.datetime, tz_name: str, policy: ActionPolicy) -> dt.datetime | None:
    """End of the quiet period containing ``at`` in the customer's time, or None."""
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = at.astimezone(tz)
    start, end = policy.quiet_start_hour, policy.quiet_end_hour
    hour = local.hour
    quiet = (hour >= start or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    wake = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if wake <= local:
        wake += dt.timedelta(days=1)
    return wake.astimezone(dt.UTC)


def _recent(at: dt.datetime, history: list[Sent], policy: ActionPolicy) -> list[Sent]:
    """The sends still inside the frequency-cap window at ``at``."""
    now_s = int(at.timestamp())
    window_s = policy.cap_window_days * 86_400
    return [h for h in history if now_s - h[1] < window_s]


def _keep(recent: list[Sent], policy: ActionPolicy) -> list[Sent]:
    """The send history to store: the sends inside the cap window (``recent``), at most
    the newest ``cap_per_channel`` per channel, all the cap needs (``_take`` never lets
    more into a window; a lowered cap trims here). Bounded by ``MAX_CAP_PER_CHANNEL``
    times the customer-facing channels.

    >>> _keep([(0, 1), (3, 2), (0, 3), (0, 4)], ActionPolicy(cap_per_channel=2))
    [(3, 2), (0, 3), (0, 4)]
    """
    cap = policy.cap_per_channel
    if len(recent) <= cap:
        return recent
    counts = [0] * len(CHANNELS)
    kept: list[Sent] = []
    for entry in reversed(recent):
        if counts[entry[0]] < cap:
            counts[entry[0]] += 1
            kept.append(entry)
    kept.reverse()
    return kept


def _take(channel: str, at: dt.datetime, recent: list[Sent], policy: ActionPolicy) -> bool:
    """Record a send on ``channel`` in ``recent``; False when the channel's cap is reached
    (internal actions are never capped)."""
    if channel == "internal":
        return True
    index = CHANNELS.index(channel)
    if sum(1 for c, _ in recent if c == index) >= policy.cap_per_channel:
        return False
    recent.append((index, int(at.timestamp())))
    return True


def _not_before(channel: str, at: dt.datetime, timezone: str,
                policy: ActionPolicy) -> dt.datetime | None:
    """End of the quiet period for channels that reach the customer at once."""
    return _after_quiet(at, timezone, policy) if channel in ("sms", "call", "push") else None


def _wanted(alert: RiskAlert, policy: ActionPolicy) -> list[tuple[str, str]]:
    codes = set(alert.reason_codes)
    if "delinquency_onset" in codes:
        return [("sms", "sms")]
    if "broken_promise" in codes:
        return [("call", "call")]
    if "dpd_bucket_worsened" in codes:
        floor = _bucket_floor(alert) or 0
        out = []
        if floor >= policy.collections_at_dpd:
            out.append(("collections_case", "internal"))
        if floor >= policy.call_at_dpd:
            out.append(("call", "call"))
        return out
    if codes & {"min_payment_only_streak", "payment_ratio_falling", "late_but_cured_repeated"}:
        return [("restructuring_offer", "letter")]
    return []


def plan_actions(
    alert: RiskAlert,
    timezone: str,
    history: list[Sent],
    policy: ActionPolicy,
) -> tuple[list[CustomerAction], list[Sent], list[str]]:
    """Actions for ``alert``; the updated send history; actions suppressed by caps."""
    if not policy.enabled or alert.alert_type not in ("delinquency", "warning"):
        return [], history, []
    recent = _recent(alert.event_time, history, policy)
    actions: list[CustomerAction] = []
    suppressed: list[str] = []
    for action, channel in _wanted(alert, policy):
        if not _take(channel, alert.event_time, recent, policy):
            suppressed.append(action)
            continue
        not_before = _not_before(channel, alert.event_time, timezone, policy)
        actions.append(CustomerAction(
            action_id=output_id(f"action-{action}", 1, alert.alert_id),
            customer_id=alert.customer_id,
            account_id=alert.account_id,
            trigger_event_id=alert.trigger_event_id,
            event_time=alert.event_time,
            policy_version=alert.policy_version,
            model_version=alert.model_version,
            reason_codes=list(alert.reason_codes),
            evidence=list(alert.evidence),
            action=action,  # type: ignore[arg-type]
            channel=channel,  # type: ignore[arg-type]
            not_before=not_before,
        ))
    return actions, _keep(recent, policy), suppressed


class DueReminder(Struct, frozen=True, kw_only=True):
    """One due a pre-due reminder is for (found by the engine in the ledger)."""

    customer_id: str
    account_id: str
    due_id: str
    due_date: dt.date
    unpaid_minor: int
    days_to_due: int
    grade: str


def plan_pre_due(
    due: DueReminder,
    *,
    trigger_event_id: str,
    event_time: dt.datetime,
    timezone: str,
    history: list[Sent],
    policy: ActionPolicy,
    policy_version: str,
    model_version: str,
) -> tuple[CustomerAction | None, list[Sent]]:
    """The reminder for ``due`` (None when the channel's frequency cap suppresses it)
    and the updated send history.

    The id depends on the customer, account and due only, so the reminder has
    the same id however and whenever it is found (replays deduplicate).

    >>> due = DueReminder(customer_id="c1", account_id="acc-1", due_id="i7",
    ...     due_date=dt.date(2026, 3, 5), unpaid_minor=12_000, days_to_due=3, grade="high")
    >>> action, history = plan_pre_due(due, trigger_event_id="e1",
    ...     event_time=dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC), timezone="Europe/Berlin",
    ...     history=[], policy=ActionPolicy(), policy_version="p", model_version="m")
    >>> action.action, action.channel, action.not_before.isoformat(), action.reason_codes
    ('reminder', 'sms', '2026-03-03T07:00:00+00:00', ['pre_due_reminder', 'grade_high'])
    """
    rule = policy.pre_due_reminder
    if not (policy.enabled and rule.enabled):
        return None, history
    recent = _recent(event_time, history, policy)
    if not _take(rule.channel, event_time, recent, policy):
        return None, _keep(recent, policy)
    date = due.due_date.isoformat()
    action = CustomerAction(
        action_id=output_id("pre-due-reminder", rule.rule_version,
                            subject(due.customer_id, due.account_id), due.due_id),
        customer_id=due.customer_id,
        account_id=due.account_id,
        trigger_event_id=trigger_event_id,
        event_time=event_time,
        policy_version=policy_version,
        model_version=model_version,
        reason_codes=["pre_due_reminder", f"grade_{due.grade}"],
        evidence=[
            Evidence(code="due_date", text=f"due on {date}", value=date),
            Evidence(code="amount_due", text=f"{due.unpaid_minor} minor units still unpaid",
                     value=due.unpaid_minor, unit="minor"),
            Evidence(code="days_to_due", text=f"due in {due.days_to_due} day"
                     + ("" if due.days_to_due == 1 else "s"),
                     value=due.days_to_due, unit="days"),
            Evidence(code="grade", text=f"risk grade {due.grade}", value=due.grade),
        ],
        action="reminder",
        channel=rule.channel,
        not_before=_not_before(rule.channel, event_time, timezone, policy),
    )
    return action, _keep(recent, policy)


def plan_tier_actions(
    responses: Sequence[str],
    *,
    customer_id: str,
    grade: str,
    trigger_event_id: str,
    event_time: dt.datetime,
    timezone: str,
    history: list[Sent],
    policy: ActionPolicy,
    policy_version: str,
    model_version: str,
    evidence: Sequence[Evidence] = (),
) -> tuple[list[CustomerAction], list[Sent], list[str]]:
    """The customer actions of a grade's tier; the updated send history; the responses
    suppressed by frequency caps.

    ``responses`` are the tier's, in its order; those of :data:`TIER_ACTIONS` become
    actions (the others are :data:`TIER_NON_ACTIONS`). Like every other action, they respect the channel's frequency cap and the quiet hours in the
    customer's time zone, and count in the send history. The id depends on the
    response, the trigger and the customer only (replays deduplicate).

    >>> acts, history, suppressed = plan_tier_actions(
    ...     ["call", "limit_freeze", "review_queue"],
    ...     customer_id="c1", grade="high", trigger_event_id="e1",
    ...     event_time=dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC), timezone="Europe/Berlin",
    ...     history=[], policy=ActionPolicy(), policy_version="p", model_version="m")
    >>> [(a.action, a.channel, a.not_before and a.not_before.isoformat()) for a in acts]
    [('call', 'call', '2026-03-03T07:00:00+00:00'), ('review_queue', 'internal', None)]
    >>> acts[0].reason_codes, len(history), suppressed
    (['grade_high', 'tier_call'], 1, [])

    With ``policy.enabled`` off, no customer action is planned, tier actions included.
    """
    if not policy.enabled:
        return [], history, []
    recent = _recent(event_time, history, policy)
    actions: list[CustomerAction] = []
    suppressed: list[str] = []
    for response in responses:
        tier_action = TIER_ACTIONS.get(response)
        if tier_action is None:
            continue
        action, channel = tier_action
        if not _take(channel, event_time, recent, policy):
            suppressed.append(response)
            continue
        actions.append(CustomerAction(
            action_id=output_id(f"tier-{response}", 1, trigger_event_id, customer_id),
            customer_id=customer_id,
            trigger_event_id=trigger_event_id,
            event_time=event_time,
            policy_version=policy_version,
            model_version=model_version,
            reason_codes=[f"grade_{grade}", f"tier_{response}"],
            evidence=list(evidence),
            action=action,
            channel=channel,
            not_before=_not_before(channel, event_time, timezone, policy),
        ))
    return actions, _keep(recent, policy), suppressed


def action_emit(action: CustomerAction) -> Emit:
    """The action as an output keyed by customer."""
    return Emit("customer-actions", action.customer_id, action.action_id, action)
