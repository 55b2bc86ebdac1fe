"""The pure per-customer engine shared by the stream worker and replay.

``Engine.process`` takes one decoded input event and the customer's state as
bytes, and returns the new state as bytes (or ``None`` when nothing changed)
and the outputs to send. It touches no Kafka, no Faust and no clock: the
worker and replay call exactly this, which is why their outputs agree.

Idempotency: the state keeps a bounded set of recent event-id fingerprints; an
event seen before changes nothing and is reported as a duplicate. An event
older than the customer's newest event time by more than the policy's allowed
lateness is refused as too late.
"""

from __future__ import annotations

import datetime as dt
import typing
from typing import Any, NamedTuple

import msgspec
from msgspec import Struct

from alerts import grades as grading
from alerts import limits
from alerts.actions import (
    DueReminder,
    action_emit,
    plan_actions,
    plan_pre_due,
    plan_tier_actions,
)
from alerts.envelope import Emit
from alerts.ids import event_fingerprint, output_id, subject
from alerts.limits import LimitState
from alerts.policy import Policy
from detectors import behaviour, delinquency, scoring
from detectors.base import Signal
from detectors.behaviour import BehaviourState
from detectors.delinquency import AccountLedger
from detectors.hst import FlatHalfSpaceTrees
from detectors.online import AnomalyModel
from detectors.scoring import ScoreState
from detectors.segments import SegmentMonitor
from detectors.spending import SpendState, large_transaction
from schemas import models as m
from schemas.errors import DecodeError
from schemas.topics import CUSTOMER_TOPICS

#: How many recent event ids each customer remembers for deduplication.
SEEN_LIMIT = 48

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _grade_index(state: CustomerState) -> int:
    """Index of the customer's current grade in ``alerts.grades.GRADES`` (-1: none yet)."""
    return state.score.last_grade if state.score is not None else -1


def _today(state: CustomerState, day: int) -> int:
    """``day``, or the customer's newest event-time day if later (epoch days)."""
    return max(day, max(state.watermarks, default=0) // 86_400_000)


def _on_time_cycles(state: CustomerState) -> int:
    """Consecutive most recent repayment cycles paid on time, over all accounts."""
    ledgers = state.ledgers
    if not ledgers:
        return 0
    return min([delinquency.on_time_streak(led) for led in ledgers.values()])


_SEVERITY_ROUTING = {
    "info": [],
    "low": ["monitoring"],
    "medium": ["review-queue"],
    "high": ["case-management"],
    "critical": ["case-management", "collections"],
}


class Profile(Struct, array_like=True, frozen=True, gc=False):
    """What the engine keeps of a customer profile (no personal details)."""

    limit_minor: int
    currency: str
    products: tuple[str, ...]
    sector: str
    region: str
    segment: str
    timezone: str
    #: Home country (ISO 3166-1 alpha-2), if the profile gives one.
    country: str | None = None


#: Topics the engine processes; their index keys the per-topic watermarks.
ENGINE_TOPICS: tuple[str, ...] = CUSTOMER_TOPICS
_TOPIC_INDEX: dict[str, int] = {topic: i for i, topic in enumerate(ENGINE_TOPICS)}


class CustomerState(Struct, array_like=True, gc=False):
    """Everything Riskwatch keeps about one customer, stored as msgpack bytes."""

    #: Fingerprints of the last ``SEEN_LIMIT`` events applied (duplicates are refused),
    #: 8 bytes big-endian each, oldest first (:func:`seen_has`). Older states hold a
    #: list of ints: read as such, written back as a blob.
    seen: bytes | list[int] = b""
    #: Newest event time per input topic (ms), indexed like ``ENGINE_TOPICS``.
    watermarks: list[int] = []
    profile: Profile | None = None
    spend: SpendState | None = None
    behaviour: BehaviourState | None = None
    #: Repayment ledger per account.
    ledgers: dict[str, AccountLedger] = {}
    #: Earliest epoch day on which time alone could change a ledger (watermark sweep).
    next_check: int | None = None
    #: Recent messages to the customer: (channel index, Unix seconds), for frequency caps.
    sent: list[tuple[int, int]] = []
    #: Last segment window this customer's accounts were counted in (segment KPIs; in
    #: states before ``segment_accounts``, the one window the customer was counted in).
    segment_window: int = -1
    #: Risk score, pending feature snapshots for delayed labels, grade.
    score: ScoreState | None = None
    #: Early-warning line history.
    lines: grading.LineState | None = None
    #: Credit-limit guardrail state (limit, cooldown, history).
    limit: LimitState | None = None
    #: Last day the customer was scored on a card transaction without signals.
    scored_day: int = -1
    #: Fingerprints of ``account/due`` pairs already reminded before their due date
    #: (only dues still in a ledger are kept).
    reminded: list[int] = []
    #: Segment KPIs: per account, the last window it was counted in and how
    #: (``window << 2 | overdue << 1 | newly_delinquent``); one entry per ledger.
    segment_accounts: dict[str, int] = {}


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(CustomerState)


#: Bytes of the ``SEEN_LIMIT - 1`` newest fingerprints kept when one is added.
_SEEN_KEEP = (SEEN_LIMIT - 1) * 8


def seen_blob(seen: bytes | list[int]) -> bytes:
    """A state's ``seen`` as its blob (a list of ints: a state written before it).

    >>> seen_blob([1, 2]) == (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    True
    """
    if isinstance(seen, list):
        return b"".join(fingerprint.to_bytes(8, "big") for fingerprint in seen)
    return seen


def seen_has(blob: bytes, mark: bytes) -> bool:
    """Whether the 8-byte fingerprint ``mark`` is one of ``blob``'s (at an 8-byte
    boundary: a match straddling two fingerprints is none).

    >>> blob = seen_blob([0x0102030405060708, 0x090A0B0C0D0E0F10])
    >>> seen_has(blob, bytes.fromhex("090a0b0c0d0e0f10")), seen_has(blob, blob[4:12])
    (True, False)
    """
    at = blob.find(mark)
    while at != -1 and at & 7:
        at = blob.find(mark, at + 1)
    return at != -1


def decode_state(raw: bytes | None) -> CustomerState:
    """A customer's state from its stored bytes (a fresh state for ``None``)."""
    return CustomerState() if raw is None else _STATE_DECODER.decode(raw)


def encode_state(state: CustomerState) -> bytes:
    """A customer's state as stored bytes."""
    return _STATE_ENCODER.encode(state)


#: msgpack of an empty array, an empty map and nil (msgspec's encodings of [], {}, None).
_MP_ARRAY0, _MP_MAP0, _MP_NIL = b"\x90", b"\x80", b"\xc0"


class _LeanState(Struct, array_like=True, gc=False):
    """:class:`CustomerState`'s layout, with the fields that a card transaction which
    raises nothing on a day the customer was already scored never reads kept as their
    msgpack bytes (``msgspec.Raw``): those are neither decoded nor encoded again, and
    encoding a lean state gives the very bytes of the customer state it was decoded
    from (with the same changes). ``Engine.process`` turns it into a full state
    (:func:`_full_state`) as soon as the event needs more.

    >>> raw = encode_state(CustomerState(seen=[7], scored_day=3, reminded=[1, 2]))
    >>> lean = _LEAN_DECODER.decode(raw)
    >>> _STATE_ENCODER.encode(lean) == raw, bytes(lean.reminded) == _STATE_ENCODER.encode([1, 2])
    (True, True)
    >>> _full_state(lean).reminded, _full_state(lean).scored_day
    ([1, 2], 3)
    """

    seen: bytes | list[int] = b""
    watermarks: list[int] = []
    profile: Profile | None = None
    spend: SpendState | None = None
    behaviour: BehaviourState | None = None
    ledgers: msgspec.Raw = msgspec.Raw(_MP_MAP0)
    next_check: int | None = None
    sent: msgspec.Raw = msgspec.Raw(_MP_ARRAY0)
    segment_window: int = -1
    score: msgspec.Raw = msgspec.Raw(_MP_NIL)
    lines: msgspec.Raw = msgspec.Raw(_MP_NIL)
    limit: msgspec.Raw = msgspec.Raw(_MP_NIL)
    scored_day: int = -1
    reminded: msgspec.Raw = msgspec.Raw(_MP_ARRAY0)
    segment_accounts: msgspec.Raw = msgspec.Raw(_MP_MAP0)


_LEAN_DECODER = msgspec.msgpack.Decoder(_LeanState)
_FIELD_TYPES = typing.get_type_hints(CustomerState)
#: Decoders of the fields a lean state keeps as bytes.
(_DEC_LEDGERS, _DEC_SENT, _DEC_SCORE, _DEC_LINES, _DEC_LIMIT, _DEC_REMINDED,
 _DEC_SEGMENT_ACCOUNTS) = (
    msgspec.msgpack.Decoder(_FIELD_TYPES[name]).decode
    for name in ("ledgers", "sent", "score", "lines", "limit", "reminded", "segment_accounts"))


def _lean_grade_index(lean: _LeanState) -> int:
    """:func:`_grade_index` of a lean state."""
    score = _DEC_SCORE(lean.score)
    return score.last_grade if score is not None else -1


def _full_state(lean: _LeanState) -> CustomerState:
    """The customer state of a lean one (the same objects, the rest decoded)."""
    return CustomerState(
        lean.seen, lean.watermarks, lean.profile, lean.spend, lean.behaviour,
        _DEC_LEDGERS(lean.ledgers), lean.next_check, _DEC_SENT(lean.sent),
        lean.segment_window, _DEC_SCORE(lean.score), _DEC_LINES(lean.lines),
        _DEC_LIMIT(lean.limit),
        lean.scored_day, _DEC_REMINDED(lean.reminded),
        _DEC_SEGMENT_ACCOUNTS(lean.segment_accounts))


class Result(NamedTuple):
    """What processing one event produced."""

    state: bytes | None
    emits: list[Emit]
    duplicate: bool = False
    #: Epoch day the customer needs a watermark sweep (None: no pending check).
    next_check: int | None = None


_tuple_new = tuple.__new__

#: The ``customer_id`` of segment-level alerts (they concern no single customer).
SEGMENT_SUBJECT = "segments"

#: Signal kinds whose findings are about the customer's standing, not about the one
#: event that revealed it: their ids ignore the trigger, so the same finding gets the
#: same id whether an event or a watermark sweep detects it first.
_STANDING_KINDS = frozenset({"delinquency", "warning"})


#: Flags of ``CustomerState.segment_accounts`` entries.
_SEG_OVERDUE, _SEG_NEW = 2, 1

#: Positions of features the engine reads in ``scoring.features_row``'s tuple.
_MAX_DPD, _UTILISATION = (scoring.FEATURES.index(name) for name in ("max_dpd", "utilisation"))

#: Ledger products whose payments move behaviour's card balance ("": not known yet).
_CARD_OR_UNKNOWN = frozenset({"credit_card", ""})


def _ms(t: dt.datetime) -> int:
    if t.tzinfo is not None:  # an aware datetime's timestamp() is that very total_seconds()
        return int(t.timestamp() * 1000)
    return int((t - _EPOCH).total_seconds() * 1000)


class Engine:
    """Applies the policy's detectors to one customer's events."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.anomaly = self._anomaly_model(policy)
        #: Segment KPIs of this engine's customers and the broadcast sector indicators.
        self.segments = SegmentMonitor(policy.segments)
        #: Probability of 30+ days past due within the horizon (global, learns on labels).
        self.risk_model = scoring.RiskModel.from_config(policy.scoring)
        #: Progressive (predict-then-learn) quality of the risk model.
        self.quality = scoring.ProgressiveMetrics()
        #: Customers per grade among those this engine has graded.
        self.grade_counts: dict[str, int] = {}
        #: Newest ledger day seen (the day segment KPIs are read for).
        self.latest_day = 0
        #: Score of the last transaction the anomaly model saw (for the metrics histogram).
        self.last_anomaly_score: float | None = None
        self._learn = True
        #: The anomaly model last checked to take behaviour's feature rows unscaled.
        self._row_model: Any = None
        self._row_ok = False
        #: ``Policy.pauses`` of the policy it was computed for (see :meth:`_pauses`).
        self._pauses_of: Policy | None = None
        self._pauses_list: list[tuple[int, int | None]] = []

    def _pauses(self) -> list[tuple[int, int | None]]:
        """The policy's global DPD-clock pauses (``Policy.pauses``), computed once per
        policy (a policy is immutable); callers must not change the list."""
        policy = self.policy
        if self._pauses_of is not policy:
            self._pauses_list = policy.pauses()
            self._pauses_of = policy
        return self._pauses_list

    def set_policy(self, policy: Policy) -> None:
        """Switch to a newly published policy (takes effect on the next event).

        The global anomaly model keeps what it learned unless its features change;
        the segment monitor keeps its KPI windows and indicator series under a new
        ``segments`` section (:meth:`SegmentMonitor.reconfigured`). All or nothing:
        everything is built before anything is switched, so a failure leaves the
        engine on the old policy.
        """
        anomaly, segments = self.anomaly, self.segments
        if policy.behaviour != self.policy.behaviour or policy.anomaly != self.policy.anomaly:
            anomaly = self._anomaly_model(policy)
        if policy.segments != self.policy.segments:
            segments = self.segments.reconfigured(policy.segments)
        self.anomaly, self.segments, self.policy = anomaly, segments, policy

    def on_sector_indicator(self, event: m.SectorIndicator) -> list[Emit]:
        """Record a (broadcast) sector indicator; alert when a segment's tightening
        starts or stops."""
        day = delinquency.epoch_day(event.event_time)
        self.segments.observe_indicator(event.sector, event.indicator, event.value, day)
        signals = self.segments.changes(day)
        return [self._alert(s, SEGMENT_SUBJECT, event.event_id, event.event_time)
                for s in signals]

    @staticmethod
    def _anomaly_model(policy: Policy) -> Any:
        rule = policy.anomaly
        return behaviour.make_anomaly_model(policy.behaviour, seed=rule.seed,
                                            quantile=rule.quantile, min_score=rule.min_score)

    def portfolio_rates(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(overdue rate, new-delinquency rate) by (product, sector), this engine's customers,
        in the current segment window (regions summed)."""
        totals: dict[tuple[str, str], list[int]] = {}
        for (sector, product, _region), k in self.segments.kpis(self.latest_day).items():
            t = totals.setdefault((product, sector), [0, 0, 0])
            t[0] += k["accounts"]
            t[1] += k["overdue"]
            t[2] += k["newly_delinquent"]
        return {key: (o / a, n / a) for key, (a, o, n) in totals.items() if a}

    def models(self) -> dict[str, Any]:
        """The engine's global (cross-customer) models, for checkpoints."""
        return {"anomaly": self.anomaly, "risk": self.risk_model, "quality": self.quality}

    def restore_models(self, models: dict[str, Any]) -> None:
        """Resume global models from a checkpoint.

        A model of another class or layout (other features, or the River-object
        trees of checkpoints before FlatHalfSpaceTrees) is ignored: that model
        starts afresh.
        """
        anomaly = models.get("anomaly")
        if (isinstance(anomaly, AnomalyModel) and anomaly.features == self.anomaly.features
                and isinstance(getattr(anomaly, "hst", None), FlatHalfSpaceTrees)
                and hasattr(anomaly, "_cache_path")):
            self.anomaly = anomaly
        if isinstance(models.get("risk"), scoring.RiskModel):
            self.risk_model = models["risk"]
        if isinstance(models.get("quality"), scoring.ProgressiveMetrics):
            self.quality = models["quality"]

    def process(self, topic: str, event: Any, raw_state: bytes | None, *,
                learn: bool = True) -> Result:
        """Process one decoded event of a customer-keyed topic.

        ``learn=False`` scores with the global models without teaching them (for
        events they learned before a restart): neither the anomaly model nor the
        risk model and its quality metrics learn; the customer's state changes
        as with ``learn=True``.
        """
        self._learn = learn
        lean = _LeanState() if raw_state is None else _LEAN_DECODER.decode(raw_state)
        mark = event_fingerprint(event.event_id).to_bytes(8, "big")
        seen = lean.seen
        if type(seen) is not bytes:
            seen = seen_blob(seen)
        if seen_has(seen, mark):
            return Result(None, [], duplicate=True)
        # Lateness is judged per topic: topics are consumed independently, so a
        # customer's events on two topics may interleave in any order.
        index = _TOPIC_INDEX.get(topic)
        if index is None:
            index = ENGINE_TOPICS.index(topic)  # ValueError, as for any unknown topic
        watermarks = lean.watermarks
        if len(watermarks) <= index:
            watermarks = lean.watermarks = [*watermarks, *[0] * (index + 1 - len(watermarks))]
        when = event.event_time
        # _ms(when): an aware datetime's timestamp() is that very total_seconds()
        if when.tzinfo is not None:
            ts = when.timestamp()
            event_ms, epoch = int(ts * 1000), int(ts)  # epoch: for _on_transaction
        else:
            event_ms, epoch = _ms(when), None
        watermark = watermarks[index]
        policy = self.policy
        if watermark and event_ms < watermark - policy.allowed_lateness_days * 86_400_000:
            raise DecodeError(
                "too_late",
                f"event_time {when.isoformat()} is more than "
                f"{policy.allowed_lateness_days} days behind the customer's newest "
                f"event on {topic}",
                topic=topic,
                key=event.customer_id,
                field="event_time",
            )
        day = delinquency.epoch_day(when)
        signals: list[Signal] | None = None
        if topic == "card-transactions" and isinstance(event, m.CardTransaction):
            signals = self._on_transaction(event, lean, epoch)
            # Nothing raised on a day already scored: no alert, no re-score (_assess_at),
            # no reminder unless the grade is marked (_pre_due), no ledger or grade change
            # (_next_check), so the fields kept as bytes stay as they are.
            if (not signals and lean.scored_day == day
                    and (bytes(lean.ledgers) == _MP_MAP0 or self._marked_index(
                        _lean_grade_index(lean)) is None)):
                lean.seen = seen[-_SEEN_KEEP:] + mark
                if event_ms > watermark:
                    watermarks[index] = event_ms
                return _tuple_new(Result, (_STATE_ENCODER.encode(lean), [], False,
                                           lean.next_check))
        state = _full_state(lean)
        # (as they were before a card transaction's _on_transaction: it changes none of them)
        ledgers, grade, reminded = state.ledgers, _grade_index(state), state.reminded
        if signals is None:
            signals = self._dispatch(topic, event, state)
        state.seen = seen[-_SEEN_KEEP:] + mark
        if event_ms > watermark:
            watermarks[index] = event_ms
        customer_id, event_id = event.customer_id, event.event_id
        emits = self._emits(signals, state, customer_id, event_id, when) if signals else []
        if topic != "customer-profiles":
            emits.extend(self._assess(topic, event, state, signals, day))
        if state.ledgers and _grade_index(state) >= 0:  # else no grade is marked (_pre_due)
            emits.extend(self._pre_due(state, customer_id, event_id, when, day))
        if (state.ledgers is not ledgers or _grade_index(state) != grade
                or state.reminded is not reminded):
            state.next_check = self._next_check(state, day)
        # Result(state, emits, False, next_check), without NamedTuple's keyword __new__
        return _tuple_new(Result, (_STATE_ENCODER.encode(state), emits, False, state.next_check))

    def advance(self, customer_id: str, raw_state: bytes | None, as_of: dt.datetime) -> Result:
        """Let event time pass to ``as_of`` for one customer (the watermark sweep).

        Detects missed due dates with no further event from the customer. The risk
        model learns the labels and expired snapshots the sweep finds (whatever the
        last :meth:`process` call's ``learn``).
        """
        self._learn = True
        state = decode_state(raw_state)
        day = delinquency.epoch_day(as_of)
        if state.next_check is None or state.next_check > day:
            return Result(None, [], next_check=state.next_check)
        trigger = f"sweep:{customer_id}:{day}"
        emits: list[Emit] = []
        ledger_check = self._ledger_check(state)
        if ledger_check is not None and ledger_check <= day:
            config = self.policy.delinquency
            pauses = self._pauses()
            signals: list[Signal] = []
            ledgers = dict(state.ledgers)
            for account_id, ledger in state.ledgers.items():
                ledgers[account_id], found = delinquency.advance(ledger, day, config,
                                                                 pauses=pauses)
                signals.extend(found)
                if any(s.rule_id == "delinquency-onset" for s in found):
                    self._count_segment(state, ledgers[account_id], found)
            state.ledgers = ledgers
            emits.extend(self._emits(signals, state, customer_id, trigger, as_of))
            emits.extend(self._assess_at(state, signals, customer_id, trigger, as_of, day,
                                         always=True))
        # Only a pre-due reminder was waiting: no ledger step, no re-scoring.
        emits.extend(self._pre_due(state, customer_id, trigger, as_of, day))
        state.next_check = self._next_check(state, day)
        return Result(encode_state(state), emits, next_check=state.next_check)

    @staticmethod
    def sweep_info(raw_state: bytes | None) -> tuple[int | None, int]:
        """(epoch day of the next sweep, newest event time in ms) of a stored state."""
        if not raw_state:
            return None, 0
        state = decode_state(raw_state)
        return state.next_check, max(state.watermarks, default=0)

    def _ledger_check(self, state: CustomerState) -> int | None:
        """Earliest day on which time alone changes one of the customer's ledgers."""
        config = self.policy.delinquency
        pauses = self._pauses()
        days = [d for led in state.ledgers.values()
                if (d := delinquency.next_check_day(led, config, pauses=pauses)) is not None]
        return min(days) if days else None

    def _next_check(self, state: CustomerState, day: int) -> int | None:
        """The customer's next sweep day: a ledger check, or a pre-due reminder day after
        ``day`` (only for a customer whose grade the policy marks)."""
        days = [d for d in (self._ledger_check(state), self._reminder_check(state, day))
                if d is not None]
        return min(days) if days else None

    # -- pre-due reminders -------------------------------------------------

    def _marked_grade(self, state: CustomerState) -> str | None:
        """The customer's grade, when pre-due reminders are on and the policy marks it."""
        return self._marked_index(_grade_index(state)) if state.ledgers else None

    def _marked_index(self, index: int) -> str | None:
        """The grade of ``GRADES`` index ``index`` (-1: none), when pre-due reminders are
        on and the policy marks it (for a customer with a ledger)."""
        actions = self.policy.actions
        rule = actions.pre_due_reminder
        if not (actions.enabled and rule.enabled) or index < 0:
            return None
        grade = grading.GRADES[index]
        return grade if grade in rule.grades else None

    def _reminder_check(self, state: CustomerState, day: int) -> int | None:
        if self._marked_grade(state) is None:
            return None
        rule = self.policy.actions.pre_due_reminder
        config = self.policy.delinquency
        pauses = self._pauses()
        reminded = set(state.reminded)
        today = _today(state, day)
        days = []
        for account_id, led in state.ledgers.items():
            done = {d.id for d in led.dues
                    if event_fingerprint(f"{account_id}/{d.id}") in reminded} if reminded else ()
            found = delinquency.next_reminder_day(led, max(today, led.clock), rule.days_before,
                                                  config, pauses=pauses, skip=done)
            if found is not None:
                days.append(found)
        return min(days) if days else None

    def _pre_due(self, state: CustomerState, customer_id: str, trigger: str,
                 when: dt.datetime, day: int) -> list[Emit]:
        """Reminders for the marked customer's unpaid dues falling due within the policy's
        ``days_before`` of ``day`` (once per due; none on a paused day or for a paused
        due: deferrals and crisis mode)."""
        grade = self._marked_grade(state)
        if grade is None:
            return []
        policy = self.policy
        rule = policy.actions.pre_due_reminder
        pauses = self._pauses()
        timezone = state.profile.timezone if state.profile else "UTC"
        reminded = set(state.reminded)
        added: list[int] = []
        emits: list[Emit] = []
        today = _today(state, day)
        for account_id in sorted(state.ledgers):
            led = state.ledgers[account_id]
            # A late event does not take the customer back in time: the due dates are
            # judged from the newest event time seen (of any topic, and of the ledger).
            as_of = max(today, led.clock)
            for due_id, due_day, unpaid in delinquency.upcoming_dues(
                    led, as_of, rule.days_before, policy.delinquency, pauses=pauses):
                fp = event_fingerprint(f"{account_id}/{due_id}")
                if fp in reminded:
                    continue
                reminded.add(fp)
                added.append(fp)
                due = DueReminder(
                    customer_id=customer_id, account_id=account_id, due_id=due_id,
                    due_date=_EPOCH.date() + dt.timedelta(days=due_day), unpaid_minor=unpaid,
                    days_to_due=due_day - as_of, grade=grade)
                action, state.sent = plan_pre_due(
                    due, trigger_event_id=trigger, event_time=when, timezone=timezone,
                    history=state.sent, policy=policy.actions,
                    policy_version=policy.version, model_version=policy.model_version)
                if action is not None:  # a capped reminder is not retried
                    emits.append(action_emit(action))
        if added:
            present = {event_fingerprint(f"{a}/{d.id}")
                       for a, led in state.ledgers.items() for d in led.dues}
            state.reminded = [fp for fp in [*state.reminded, *added] if fp in present][-32:]
        return emits

    def snapshot(self, customer_id: str, raw_state: bytes | None) -> dict[str, Any]:
        """A customer's current standing, for replay snapshots and inspection."""
        state = decode_state(raw_state)
        profile = state.profile
        dpd = {
            account: delinquency.days_past_due(led, led.clock, self.policy.delinquency,
                                               pauses=self._pauses())
            for account, led in state.ledgers.items()
        }
        return {
            "customer_id": customer_id,
            "limit_minor": profile.limit_minor if profile else None,
            "currency": profile.currency if profile else None,
            "days_past_due": max(dpd.values(), default=0),
            "days_past_due_by_account": dpd,
            "usual_amount_minor": round(state.spend.mean) if state.spend else None,
            "state_bytes": len(raw_state or b""),
        }

    # -- per topic ---------------------------------------------------------

    def _dispatch(self, topic: str, event: Any, state: CustomerState) -> list[Signal]:
        if isinstance(event, m.CardTransaction):
            return self._on_transaction(event, state)
        if isinstance(event, m.CreditApplication):
            state.behaviour, signals = behaviour.on_application(
                state.behaviour, event, self.policy.behaviour)
            return signals
        if topic == "repayments":
            return self._on_repayment(event, state)
        if isinstance(event, m.CustomerProfile):
            if state.limit is not None:
                state.limit = limits.sync_limit(state.limit, event.credit_limit_minor)
            state.profile = Profile(
                limit_minor=event.credit_limit_minor,
                currency=event.currency,
                products=tuple(event.products),
                sector=event.sector,
                region=event.region,
                segment=event.segment,
                timezone=event.timezone,
                country=event.country,
            )
            return []
        return []

    # -- score, grade, responses, limits -------------------------------------

    def _assess(self, topic: str, event: Any, state: CustomerState,
                signals: list[Signal], day: int) -> list[Emit]:
        """:meth:`_assess_at` for an event (of epoch day ``day``); an outcome's label first."""
        if isinstance(event, m.Outcome):
            label = scoring.label_from_outcome(event.label, day)
            if label is not None:
                state.score = scoring.on_label(state.score, label[0], label[1], self.risk_model,
                                               self.quality, self.policy.scoring,
                                               learn=self._learn)
        # A card transaction that raised nothing re-scores the customer once a day. The
        # global anomaly model's verdict does not count: it depends on arrival order
        # across partitions and on which worker scored the event (replay, another worker,
        # a redelivery after a crash), and it would decide when grades, early-warning
        # lines and limits are evaluated, making those outputs order-dependent too.
        always = topic != "card-transactions" or (bool(signals) and any(
            "anomalous_transaction" not in s.reason_codes for s in signals))
        return self._assess_at(state, signals, event.customer_id, event.event_id,
                               event.event_time, day, always=always)

    def _assess_at(self, state: CustomerState, signals: list[Signal], customer_id: str,
                   trigger: str, when: dt.datetime, day: int, *, always: bool) -> list[Emit]:
        """Learn from labels, score, grade, and respond (tiers, lines, limits)."""
        policy = self.policy
        cfg = policy.scoring
        if signals:
            for positive, label_day in scoring.labels_from_signals(signals):
                state.score = scoring.on_label(state.score, positive, label_day,
                                               self.risk_model, self.quality, cfg,
                                               learn=self._learn)
        if not always and state.scored_day == day:
            return []
        state.scored_day = day
        if scoring.expire_due(state.score, day, cfg):  # else expire changes nothing
            state.score = scoring.expire(state.score, day, self.risk_model, self.quality, cfg,
                                         learn=self._learn)
        profile = state.profile
        pauses = self._pauses()
        # scoring.features and scoring.score, on the feature values as a tuple (no dict)
        feats = scoring.features_row(
            profile.limit_minor if profile else None, state.ledgers, state.behaviour, day,
            policy.behaviour, policy.delinquency, pauses)
        state.score, result = scoring.score_row(state.score, feats, signals, self.risk_model,
                                                cfg, day)
        tightening = None
        if profile is not None:
            product = profile.products[0] if profile.products else "other"
            # None: no tightening (limits.propose_positional takes None as NO_TIGHTENING)
            tightening = self.segments.tightening_or_none(profile.sector, product,
                                                          profile.region, day)
            if tightening is not None and tightening.score_add:
                result = msgspec.structs.replace(
                    result, score=min(1000, result.score + tightening.score_add))
        outcome = grading.grade_outputs_positional(
            state.score, result, customer_id, trigger, when, day, policy.version,
            policy.model_version, policy.grades, policy.tiers)
        state.score = outcome.state
        emits: list[Emit] = []
        if outcome.changed:
            if outcome.previous:
                self.grade_counts[outcome.previous] = self.grade_counts.get(outcome.previous,
                                                                            1) - 1
            self.grade_counts[outcome.grade] = self.grade_counts.get(outcome.grade, 0) + 1
        if outcome.record is not None:
            emits.append(Emit("risk-grades", customer_id, outcome.record.grade_id,
                              outcome.record))
        extra = [outcome.signal] if outcome.signal is not None else []
        state.lines, line_signals = grading.update_lines(
            state.lines, {"max_dpd": feats[_MAX_DPD], "utilisation": feats[_UTILISATION],
                          "score": float(result.score)}, day, policy.early_warning)
        extra.extend(line_signals)
        if extra:
            emits.extend(self._emits(extra, state, customer_id, trigger, when))
        if outcome.changed and outcome.grade != "low":
            emits.extend(self._tier_actions(outcome, state, customer_id, trigger, when))
        emits.extend(self._limit(state, outcome, result.score, feats, customer_id, trigger,
                                 when, tightening))
        return emits

    def _tier_actions(self, outcome: Any, state: CustomerState, customer_id: str,
                      trigger: str, when: dt.datetime) -> list[Emit]:
        """Customer actions of the grade's tier (``actions.TIER_ACTIONS``; limits are
        proposed by the guardrails, see ``actions.TIER_NON_ACTIONS``), under the same
        quiet hours and frequency caps as every other action."""
        policy = self.policy
        actions, state.sent, _suppressed = plan_tier_actions(
            outcome.responses, customer_id=customer_id, grade=outcome.grade, trigger_event_id=trigger,
            event_time=when, timezone=state.profile.timezone if state.profile else "UTC",
            history=state.sent, policy=policy.actions, policy_version=policy.version,
            model_version=policy.model_version,
            evidence=outcome.signal.evidence if outcome.signal else ())
        return [action_emit(a) for a in actions]

    def _limit(self, state: CustomerState, outcome: Any, score_value: int,
               feats: tuple[float, ...],
               customer_id: str, trigger: str, when: dt.datetime, tightening: Any) -> list[Emit]:
        profile = state.profile
        policy = self.policy
        if profile is None or not policy.limits.enabled:
            return []
        if state.limit is None:
            state.limit = limits.new_state(profile.limit_minor)
        crisis = policy.crisis.suspend_limit_cuts and policy.crisis.in_force(when)
        balance = state.behaviour.balance if state.behaviour else 0
        state.limit, adjustment = limits.propose_positional(
            state.limit, customer_id, None, trigger, when, outcome.grade, outcome.previous,
            score_value, max(0, balance), feats[_UTILISATION], _on_time_cycles(state),
            crisis, profile.currency, policy.limits, policy.version, policy.model_version,
            tightening, feats[_MAX_DPD])
        if adjustment is None:
            return []
        return [Emit("limit-adjustments", customer_id, adjustment.adjustment_id, adjustment)]

    def _on_repayment(self, event: Any, state: CustomerState) -> list[Signal]:
        ledger = state.ledgers.get(event.account_id)
        # Only card payments move behaviour's approximate card balance (built from card
        # spend). A loan or plan account is known by its ledger's product (set by its
        # first due); an account whose product is not known yet (no due seen: no
        # ledger, or a ledger of payments only) counts as the card, as it always did.
        if ledger is None or ledger.product in _CARD_OR_UNKNOWN:
            if isinstance(event, m.PaymentReceived):
                state.behaviour = behaviour.on_payment(
                    state.behaviour, event.amount_minor, self.policy.behaviour)
            elif isinstance(event, m.PaymentReversed):
                state.behaviour = behaviour.on_payment(
                    state.behaviour, -event.amount_minor, self.policy.behaviour)
        product = ("credit_card" if isinstance(event, m.StatementDue)
                   else event.product if isinstance(event, m.InstallmentDue) else None)
        new, signals = delinquency.apply(ledger, event, self.policy.delinquency,
                                         pauses=self._pauses(), product=product)
        if new is not ledger:  # the next check day is recomputed once the event is done
            state.ledgers = {**state.ledgers, event.account_id: new}
            self._count_segment(state, new, signals)
        return signals

    def _count_segment(self, state: CustomerState, ledger: AccountLedger,
                       signals: list[Signal]) -> None:
        """Count the account in its segment's window KPIs: once per account per window,
        on its first ledger change in the window, and again (as newly delinquent, not as
        another account) when a delinquency onset follows in the same window."""
        profile = state.profile
        if profile is None:
            return
        day = ledger.clock
        self.latest_day = max(self.latest_day, day)
        window = day // self.policy.segments.window_days
        counted = state.segment_accounts
        if not counted and window == state.segment_window:
            return  # a state from before segment_accounts: counted once for the customer
        onset = any(s.rule_id == "delinquency-onset" for s in signals)
        seen = counted.get(ledger.account_id, -1)
        if seen >= 0 and seen >> 2 == window:
            if not onset or seen & _SEG_NEW:
                return
            flags = seen | _SEG_OVERDUE | _SEG_NEW
        else:
            dpd = delinquency.days_past_due(ledger, day, self.policy.delinquency,
                                            pauses=self._pauses())
            flags = window << 2 | (_SEG_OVERDUE if dpd > 0 else 0) | (_SEG_NEW if onset else 0)
            seen = -1
        product = ledger.product or (profile.products[0] if profile.products else "other")
        key = self.segments.key(profile.sector, product, profile.region)
        if seen < 0:
            self.segments.observe_account(key, day, bool(flags & _SEG_OVERDUE), onset)
        else:
            self.segments.observe_onset(key, day, newly_overdue=not seen & _SEG_OVERDUE)
        state.segment_accounts = {**counted, ledger.account_id: flags}
        state.segment_window = window

    def _on_transaction(self, tx: m.CardTransaction, state: CustomerState | _LeanState,
                        epoch: int | None = None) -> list[Signal]:
        """Behaviour, the anomaly model and the large-transaction rule on a card transaction
        (``epoch``: ``int(tx.event_time.timestamp())`` if the caller has it)."""
        policy = self.policy
        profile = state.profile
        state.behaviour, signals, row = behaviour.on_transaction_row(
            state.behaviour,
            tx,
            profile.limit_minor if profile else None,
            profile.country if profile else None,
            policy.behaviour,
            timezone=profile.timezone if profile else None,
            epoch=epoch,
        )
        self.last_anomaly_score = None
        if row is not None and policy.anomaly.enabled:
            anomaly = self.anomaly
            if anomaly is not self._row_model:  # a new model: does it take the rows as they are?
                self._row_model = anomaly
                self._row_ok = (anomaly.features == behaviour.MODEL_FEATURES
                                and anomaly.scales_identity)
            if self._row_ok:
                score, flagged = anomaly.score_learn_scaled(row, learn=self._learn)
            else:
                features = dict(zip(behaviour.MODEL_FEATURES, row, strict=True))
                score, flagged = anomaly.score_learn(features, learn=self._learn)
            self.last_anomaly_score = score
            if flagged:
                factors = behaviour.anomaly_factors(anomaly, row, policy.behaviour)
                signals.append(behaviour.anomaly_signal(
                    tx, score, anomaly.threshold, policy.behaviour, factors))
        rule = policy.large_transaction
        if rule.enabled and tx.type in ("purchase", "cash_advance"):
            state.spend, found = large_transaction(
                state.spend,
                tx.amount_minor,
                tx.currency,
                multiple=rule.multiple,
                min_history=rule.min_history,
                floor_minor=rule.floor_minor,
                half_life_events=rule.half_life_events,
            )
            signals.extend(found)
        return signals

    # -- outputs -----------------------------------------------------------

    def _emits(self, signals: list[Signal], state: CustomerState, customer_id: str,
               trigger: str, when: dt.datetime) -> list[Emit]:
        emits: list[Emit] = []
        timezone = state.profile.timezone if state.profile else "UTC"
        for signal in signals:
            # Labels (first 30+ / 90+ days past due) train the risk model; not alerts.
            if signal.kind == "label":
                continue
            alert = self._alert(signal, customer_id, trigger, when)
            emits.append(alert)
            actions, state.sent, _suppressed = plan_actions(
                alert.record, timezone, state.sent, self.policy.actions)
            emits.extend(action_emit(a) for a in actions)
        return emits

    def _alert(self, signal: Signal, customer_id: str, trigger: str, when: dt.datetime) -> Emit:
        if signal.kind in _STANDING_KINDS:
            # Customer and account length-prefixed: both may contain '/'.
            alert_id = output_id(signal.rule_id, signal.rule_version,
                                 subject(customer_id, signal.account_id or ""),
                                 signal.discriminator)
        else:
            alert_id = output_id(signal.rule_id, signal.rule_version, trigger,
                                 signal.discriminator)
        alert = m.RiskAlert(
            alert_id=alert_id,
            customer_id=customer_id,
            account_id=signal.account_id,
            trigger_event_id=trigger,
            event_time=when,
            policy_version=self.policy.version,
            model_version=self.policy.model_version,
            reason_codes=list(signal.reason_codes),
            evidence=list(signal.evidence),
            alert_type=signal.kind,
            severity=signal.severity,
            rule_id=signal.rule_id,
            rule_version=signal.rule_version,
            routing=list(_SEVERITY_ROUTING[signal.severity]),
        )
        return Emit("risk-alerts", customer_id, alert_id, alert)
