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
from typing import Any, NamedTuple

import msgspec
from msgspec import Struct

from alerts.actions import action_emit, plan_actions
from alerts.envelope import Emit
from alerts.ids import event_fingerprint, output_id
from alerts.policy import Policy
from detectors.base import Signal
from detectors import behaviour, delinquency
from detectors.delinquency import AccountLedger
from detectors.segments import SegmentMonitor
from detectors.behaviour import BehaviourState
from detectors.spending import SpendState, large_transaction
from schemas import models as m
from schemas.errors import DecodeError
from schemas.topics import CUSTOMER_TOPICS

#: How many recent event ids each customer remembers for deduplication.
SEEN_LIMIT = 48

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PRODUCT_OF_DUE: dict[type, str] = {
    m.StatementDue: "credit_card",
    m.InstallmentDue: "installment_plan",
}
_SEVERITY_ROUTING = {
    "info": [],
    "low": ["monitoring"],
    "medium": ["review-queue"],
    "high": ["case-management"],
    "critical": ["case-management", "collections"],
}


class Profile(Struct, array_like=True, frozen=True):
    """What the engine keeps of a customer profile (no personal details)."""

    limit_minor: int
    currency: str
    products: tuple[str, ...]
    sector: str
    region: str
    segment: str
    timezone: str


#: Topics the engine processes; their index keys the per-topic watermarks.
ENGINE_TOPICS: tuple[str, ...] = CUSTOMER_TOPICS


class CustomerState(Struct, array_like=True):
    """Everything Riskwatch keeps about one customer, stored as msgpack bytes."""

    seen: list[int] = []
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
    #: Last segment window this customer's accounts were counted in (segment KPIs).
    segment_window: int = -1


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(CustomerState)


def decode_state(raw: bytes | None) -> CustomerState:
    """A customer's state from its stored bytes (a fresh state for ``None``)."""
    return CustomerState() if raw is None else _STATE_DECODER.decode(raw)


def encode_state(state: CustomerState) -> bytes:
    """A customer's state as stored bytes."""
    return _STATE_ENCODER.encode(state)


class Result(NamedTuple):
    """What processing one event produced."""

    state: bytes | None
    emits: list[Emit]
    duplicate: bool = False
    #: Epoch day the customer needs a watermark sweep (None: no pending check).
    next_check: int | None = None


#: The ``customer_id`` of segment-level alerts (they concern no single customer).
SEGMENT_SUBJECT = "segments"

#: Signal kinds whose findings are about the customer's standing, not about the one
#: event that revealed it: their ids ignore the trigger, so the same finding gets the
#: same id whether an event or a watermark sweep detects it first.
_STANDING_KINDS = frozenset({"delinquency", "warning"})


def _ms(t: dt.datetime) -> int:
    return int((t - _EPOCH).total_seconds() * 1000)


class Engine:
    """Applies the policy's detectors to one customer's events."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.anomaly = behaviour.make_anomaly_model(policy.behaviour, seed=policy.anomaly.seed)
        #: Segment KPIs of this engine's customers and the broadcast sector indicators.
        self.segments = SegmentMonitor(policy.segments)
        #: Score of the last transaction the anomaly model saw (for the metrics histogram).
        self.last_anomaly_score: float | None = None
        self._learn = True

    def set_policy(self, policy: Policy) -> None:
        """Switch to a newly published policy (takes effect on the next event).

        The global anomaly model keeps what it learned unless its features change.
        """
        if policy.behaviour != self.policy.behaviour or policy.anomaly != self.policy.anomaly:
            self.anomaly = behaviour.make_anomaly_model(policy.behaviour, seed=policy.anomaly.seed)
        if policy.segments != self.policy.segments:
            fresh = SegmentMonitor(policy.segments)
            fresh.merge(self.segments)
            self.segments = fresh
        self.policy = policy

    def on_sector_indicator(self, event: m.SectorIndicator) -> list[Emit]:
        """Record a (broadcast) sector indicator; alert when a segment's tightening
        starts or stops."""
        day = delinquency.epoch_day(event.event_time)
        self.segments.observe_indicator(event.sector, event.indicator, event.value, day)
        signals = self.segments.changes(day)
        return [self._alert(s, SEGMENT_SUBJECT, event.event_id, event.event_time)
                for s in signals]

    def models(self) -> dict[str, Any]:
        """The engine's global (cross-customer) models, for checkpoints."""
        return {"anomaly": self.anomaly}

    def restore_models(self, models: dict[str, Any]) -> None:
        """Resume global models from a checkpoint (ignored when the features differ)."""
        anomaly = models.get("anomaly")
        if anomaly is not None and getattr(anomaly, "features", None) == self.anomaly.features:
            self.anomaly = anomaly

    def process(self, topic: str, event: Any, raw_state: bytes | None, *,
                learn: bool = True) -> Result:
        """Process one decoded event of a customer-keyed topic.

        ``learn=False`` scores with the global models without teaching them (for
        events they learned before a restart).
        """
        self._learn = learn
        state = decode_state(raw_state)
        fingerprint = event_fingerprint(event.event_id)
        if fingerprint in state.seen:
            return Result(None, [], duplicate=True)
        # Lateness is judged per topic: topics are consumed independently, so a
        # customer's events on two topics may interleave in any order.
        index = ENGINE_TOPICS.index(topic)
        if len(state.watermarks) <= index:
            state.watermarks = [*state.watermarks, *[0] * (index + 1 - len(state.watermarks))]
        event_ms = _ms(event.event_time)
        watermark = state.watermarks[index]
        lateness_ms = self.policy.allowed_lateness_days * 86_400_000
        if watermark and event_ms < watermark - lateness_ms:
            raise DecodeError(
                "too_late",
                f"event_time {event.event_time.isoformat()} is more than "
                f"{self.policy.allowed_lateness_days} days behind the customer's newest "
                f"event on {topic}",
                topic=topic,
                key=event.customer_id,
                field="event_time",
            )
        signals = self._dispatch(topic, event, state)
        state.seen = [*state.seen[-(SEEN_LIMIT - 1):], fingerprint]
        state.watermarks[index] = max(watermark, event_ms)
        emits = self._emits(signals, state, event.customer_id, event.event_id, event.event_time)
        return Result(encode_state(state), emits, next_check=state.next_check)

    def advance(self, customer_id: str, raw_state: bytes | None, as_of: dt.datetime) -> Result:
        """Let event time pass to ``as_of`` for one customer (the watermark sweep).

        Detects missed due dates with no further event from the customer.
        """
        state = decode_state(raw_state)
        day = delinquency.epoch_day(as_of)
        if state.next_check is None or state.next_check > day:
            return Result(None, [], next_check=state.next_check)
        config = self.policy.delinquency
        pauses = self.policy.pauses()
        signals: list[Signal] = []
        ledgers = dict(state.ledgers)
        for account_id, ledger in state.ledgers.items():
            ledgers[account_id], found = delinquency.advance(ledger, day, config, pauses=pauses)
            signals.extend(found)
        state.ledgers = ledgers
        state.next_check = self._next_check(state)
        trigger = f"sweep:{customer_id}:{day}"
        emits = self._emits(signals, state, customer_id, trigger, as_of)
        return Result(encode_state(state), emits, next_check=state.next_check)

    @staticmethod
    def sweep_info(raw_state: bytes | None) -> tuple[int | None, int]:
        """(epoch day of the next sweep, newest event time in ms) of a stored state."""
        if not raw_state:
            return None, 0
        state = decode_state(raw_state)
        return state.next_check, max(state.watermarks, default=0)

    def _next_check(self, state: CustomerState) -> int | None:
        config = self.policy.delinquency
        pauses = self.policy.pauses()
        days = [d for led in state.ledgers.values()
                if (d := delinquency.next_check_day(led, config, pauses=pauses)) is not None]
        return min(days) if days else None

    def snapshot(self, customer_id: str, raw_state: bytes | None) -> dict[str, Any]:
        """A customer's current standing, for replay snapshots and inspection."""
        state = decode_state(raw_state)
        profile = state.profile
        dpd = {
            account: delinquency.days_past_due(led, led.clock, self.policy.delinquency,
                                               pauses=self.policy.pauses())
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
            state.profile = Profile(
                limit_minor=event.credit_limit_minor,
                currency=event.currency,
                products=tuple(event.products),
                sector=event.sector,
                region=event.region,
                segment=event.segment,
                timezone=event.timezone,
            )
            return []
        return []

    def _on_repayment(self, event: Any, state: CustomerState) -> list[Signal]:
        if isinstance(event, m.PaymentReceived):
            state.behaviour = behaviour.on_payment(
                state.behaviour, event.amount_minor, self.policy.behaviour)
        elif isinstance(event, m.PaymentReversed):
            state.behaviour = behaviour.on_payment(
                state.behaviour, -event.amount_minor, self.policy.behaviour)
        product = _PRODUCT_OF_DUE.get(type(event))
        ledger = state.ledgers.get(event.account_id)
        new, signals = delinquency.apply(ledger, event, self.policy.delinquency,
                                         pauses=self.policy.pauses(), product=product)
        if new is not ledger:
            state.ledgers = {**state.ledgers, event.account_id: new}
            state.next_check = self._next_check(state)
            self._count_segment(state, new, signals)
        return signals

    def _count_segment(self, state: CustomerState, ledger: AccountLedger,
                       signals: list[Signal]) -> None:
        """Count the account in its segment's window KPIs (once per window)."""
        profile = state.profile
        if profile is None:
            return
        day = ledger.clock
        window = day // self.policy.segments.window_days
        if window == state.segment_window:
            return
        state.segment_window = window
        product = ledger.product or (profile.products[0] if profile.products else "other")
        key = self.segments.key(profile.sector, product, profile.region)
        dpd = delinquency.days_past_due(ledger, day, self.policy.delinquency,
                                        pauses=self.policy.pauses())
        onset = any(s.rule_id == "delinquency-onset" for s in signals)
        self.segments.observe_account(key, day, dpd > 0, onset)

    def _on_transaction(self, tx: m.CardTransaction, state: CustomerState) -> list[Signal]:
        policy = self.policy
        profile = state.profile
        state.behaviour, signals, features = behaviour.on_transaction(
            state.behaviour,
            tx,
            profile.limit_minor if profile else None,
            None,
            policy.behaviour,
            timezone=profile.timezone if profile else None,
        )
        self.last_anomaly_score = None
        if features and policy.anomaly.enabled:
            score = self.anomaly.score_one(features)
            flagged = self.anomaly.is_anomalous(score)
            if self._learn:
                self.anomaly.learn_one(features)
            self.last_anomaly_score = score
            if flagged:
                signals.append(
                    behaviour.anomaly_signal(tx, score, self.anomaly.threshold, policy.behaviour))
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
            subject = f"{customer_id}/{signal.account_id or ''}"
            alert_id = output_id(signal.rule_id, signal.rule_version, subject,
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
