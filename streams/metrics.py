"""The one metrics module: every Prometheus metric Riskwatch exports.

Rules kept here, so dashboards and alert rules can rely on them:

* every name starts with ``riskwatch_`` and is in base units (seconds, bytes,
  ratios 0-1, plain counts);
* every label has a fixed, small set of values (topic names, reason codes,
  severities, grades, products, sectors); never a customer or account id.

A :class:`Metrics` instance owns its registry, so tests and several apps in
one process do not collide.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from schemas.models import Product
from schemas.topics import CONTRACT_VERSION

if TYPE_CHECKING:
    from alerts.policy import CrisisMode

VERSION = "0.1.0"

# ``*_created`` series double the series count and no dashboard uses them.
disable_created_metrics()

#: Values of the ``product`` label: the contracts' products, or ``unknown`` (an account whose
#: product the ledger does not know, or a value outside the contract).
PRODUCTS: tuple[str, ...] = (*get_args(Product), "unknown")

def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0)


@dataclass
class Metrics:
    """All metrics of one worker (or replay), registered on ``registry``."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self._topics: dict[str, TopicMetrics] = {}
        # Pipeline.
        self.events = Counter(
            "riskwatch_events", "Input records handled, by topic and outcome "
            "(processed, duplicate, dead_lettered).", ["topic", "outcome"], registry=r)
        self.dead_letters = Counter(
            "riskwatch_dead_letters", "Records sent to the dead-letter topic, by source topic "
            "and reason.", ["topic", "reason"], registry=r)
        self.outputs = Counter(
            "riskwatch_outputs", "Output records produced, by topic.", ["topic"], registry=r)
        self.event_to_output = Histogram(
            "riskwatch_event_to_output_seconds", "Event time to output send, for records that "
            "produced an output.", buckets=_LATENCY_BUCKETS, registry=r)
        self.receive_to_output = Histogram(
            "riskwatch_receive_to_output_seconds", "Receipt by the worker to output send.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.append_to_receive = Histogram(
            "riskwatch_append_to_receive_seconds", "Record timestamp (producer or broker "
            "append time) to receipt by the worker: fetch and queueing delay.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "riskwatch_consumer_lag_messages", "Messages behind the end of the assigned "
            "partitions, by topic.", ["topic"], registry=r)
        self.last_event_time = Gauge(
            "riskwatch_last_event_timestamp_seconds", "Event time of the newest record seen, "
            "by topic (Unix seconds).", ["topic"], registry=r)
        self.last_receive_time = Gauge(
            "riskwatch_last_receive_timestamp_seconds", "Wall-clock time the newest record was "
            "received, by topic (Unix seconds).", ["topic"], registry=r)
        self.recovery_remaining = Gauge(
            "riskwatch_table_recovery_remaining_messages", "Changelog messages left to recover "
            "before the worker is ready.", registry=r)
        self.recovery_gap_records = Counter(
            "riskwatch_table_recovery_gap_records", "Changelog records applied after Faust's "
            "recovery, past end offsets the broker reported short (0 on Apache Kafka).",
            registry=r)
        self.changelog_fenced = Counter(
            "riskwatch_changelog_fenced_records", "State changelog records skipped in table "
            "recovery: written by a worker of an older consumer generation after a newer one "
            "had written the key (a stalled worker that lost its partitions, resumed).",
            registry=r)
        self.rebalances = Counter(
            "riskwatch_rebalances", "Consumer-group rebalances seen by this worker.", registry=r)
        self.ready = Gauge(
            "riskwatch_ready", "1 when partitions are assigned and table recovery finished.",
            registry=r)
        self.broker_up = Gauge(
            "riskwatch_broker_up", "1 while the worker's Kafka client reaches the broker.",
            registry=r)
        self.broker_state_lost = Gauge(
            "riskwatch_broker_state_lost", "1 once the broker came back without state this "
            "worker had read or written (topics gone, offsets moved back, another cluster): "
            "processing stopped until an operator restarts the worker.", registry=r)
        self.broker_state_findings = Counter(
            "riskwatch_broker_state_findings", "Broker-state checks that failed, by check "
            "(cluster_id, topic_missing, offset_rewind).", ["check"],
            registry=r)
        self.processing_held = Gauge(
            "riskwatch_processing_held", "1 while processing is held: the broker is "
            "unreachable, or its state was lost.", registry=r)
        self.build_info = Gauge(
            "riskwatch_build_info", "Build information (value 1).",
            ["version", "python", "contract"], registry=r)
        self.build_info.labels(VERSION, platform.python_version(), str(CONTRACT_VERSION)).set(1)
        self.state_bytes = Histogram(
            "riskwatch_customer_state_bytes",
            "Encoded size of a customer's state when written to the changelog.",
            buckets=(128, 256, 512, 1024, 2048, 4096, 8192), registry=r)
        # Business.
        self.alerts = Counter(
            "riskwatch_alerts", "Risk alerts produced, by alert type and severity.",
            ["alert_type", "severity"], registry=r)
        self.limit_proposals = Counter(
            "riskwatch_limit_proposals", "Credit-limit proposals, by direction.",
            ["direction"], registry=r)
        self.customer_actions = Counter(
            "riskwatch_customer_actions", "Customer actions, by action and channel.",
            ["action", "channel"], registry=r)
        self.customers_by_grade = Gauge(
            "riskwatch_customers_by_grade", "Customers in each risk grade (this worker's "
            "partitions).", ["grade"], registry=r)
        self.bucket_transitions = Counter(
            "riskwatch_bucket_transitions", "Accounts moving between delinquency buckets "
            "(roll rates), by product.", ["product", "from_bucket", "to_bucket"], registry=r)
        self.overdue_ratio = Gauge(
            "riskwatch_portfolio_overdue_ratio", "Share of accounts 1+ days past due, by "
            "product and sector.", ["product", "sector"], registry=r)
        self.new_delinquency_ratio = Gauge(
            "riskwatch_portfolio_new_delinquency_ratio", "Share of accounts that became "
            "delinquent in the current window, by product and sector.",
            ["product", "sector"], registry=r)
        self.crisis_mode = Gauge(
            "riskwatch_crisis_mode", "1 while crisis mode is in force now: switched on in the "
            "policy in force and the current time within its crisis window (start to end); "
            "0 before the window starts, after it ends and once switched off.", registry=r)
        self.policy_info = Gauge(
            "riskwatch_policy_info", "The policy version in force (value 1).", ["version"],
            registry=r)
        # Models.
        self.model_auc = Gauge(
            "riskwatch_model_auc", "Progressive (predict-then-learn) ROC AUC, by model.",
            ["model"], registry=r)
        self.model_log_loss = Gauge(
            "riskwatch_model_log_loss", "Progressive log loss, by model.", ["model"], registry=r)
        self.drift_detections = Counter(
            "riskwatch_drift_detections", "Behaviour drift detections, by feature.",
            ["feature"], registry=r)
        self.anomaly_score = Histogram(
            "riskwatch_anomaly_score", "Global anomaly model scores (0-1).",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99), registry=r)
        # Runtime.
        self.gc_pause = Histogram(
            "riskwatch_gc_pause_seconds", "Pauses of Python's cyclic garbage collector "
            "(the event loop stops for each), by generation.", ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r)
        self._gc_started = 0.0

    def record_bucket_move(self, alert: Any) -> None:
        """Count a delinquency alert that moved an account between buckets (roll rates).

        The product and buckets come from the alert's evidence (``product``,
        ``previous_bucket``, ``bucket``); a product outside :data:`PRODUCTS` counts as
        ``unknown``, so the label keeps a fixed set of values.
        """
        if alert.alert_type != "delinquency":
            return
        facts = {e.code: e.value for e in alert.evidence}
        if "bucket" not in facts or "previous_bucket" not in facts:
            return
        product = facts.get("product")
        label = product if isinstance(product, str) and product in PRODUCTS else "unknown"
        self.bucket_transitions.labels(
            label, str(facts["previous_bucket"]), str(facts["bucket"])).inc()

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` hook: observe each collection's pause (the worker installs it)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started)

    def set_policy(self, version: str, crisis: CrisisMode,
                   clock: Callable[[], dt.datetime] = _utc_now) -> None:
        """Record the policy version in force and its crisis mode.

        ``riskwatch_crisis_mode`` is read at each scrape: whether ``crisis`` is in force
        at ``clock()`` (:meth:`~alerts.policy.CrisisMode.in_force`), so it follows the
        window's start and end on the clock, without a new policy. (Outputs apply the
        window by event time: a late or replayed record inside it still gets crisis rules.)
        """
        self.policy_info.clear()
        self.policy_info.labels(version).set(1)
        self.crisis_mode.set_function(lambda: 1.0 if crisis.in_force(clock()) else 0.0)

    def topic(self, topic: str) -> TopicMetrics:
        """The per-topic series the hot path updates, resolved once per topic.

        ``labels()`` hashes and locks on every call; the handler updates these
        for every record.
        """
        found = self._topics.get(topic)
        if found is None:
            found = self._topics[topic] = TopicMetrics(
                self.events.labels(topic, "processed"),
                self.last_event_time.labels(topic),
                self.last_receive_time.labels(topic),
                self.outputs.labels(topic),
            )
        return found


@dataclass(frozen=True)
class TopicMetrics:
    """One topic's hot-path series (see :meth:`Metrics.topic`)."""

    processed: Any
    last_event_time: Any
    last_receive_time: Any
    outputs: Any
