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
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

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


class LoopCounter:
    """A counter written by the event loop's thread only: ``inc`` adds to a plain number.

    prometheus_client's ``Counter`` takes a lock on every increment (it may be written
    from any thread); the worker's hot path counts every record, on one thread, and the
    scrape is served on that same thread (``streams.web``), so it needs none. Exposed
    as a ``Counter`` would be (``<name>_total``, the same labels), by a collector on
    ``registry``.

    >>> registry = CollectorRegistry()
    >>> events = LoopCounter("demo_events", "Events.", ["topic"], registry=registry)
    >>> events.labels("payments").inc()
    >>> events.labels("payments").inc(2)
    >>> registry.get_sample_value("demo_events_total", {"topic": "payments"})
    3.0
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _LoopCount] = {}
        if not self._labelnames:
            self._children[()] = _LoopCount()
        if registry is not None:
            registry.register(self)  # type: ignore[arg-type]

    def labels(self, *values: str) -> _LoopCount:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, "
                                 f"got {values!r}")
            # Label values are text, as prometheus_client makes them (``labels(5)`` and
            # ``labels("5")`` are one series).
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _LoopCount()
        return child

    def inc(self, amount: float = 1) -> None:
        """Add to the counter without labels."""
        if self._labelnames:
            raise ValueError(f"{self._name}: counter has labels {self._labelnames}")
        self._children[()].inc(amount)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class _LoopCount:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class LoopHistogram:
    """A histogram without labels written by the event loop's thread only (see
    :class:`LoopCounter`): ``observe`` finds its bucket by bisection and adds to plain
    numbers, where prometheus_client's ``Histogram`` walks its buckets in Python and
    takes two locks. Exposed as a ``Histogram`` would be (``_bucket`` with cumulative
    counts and ``le``, ``_count``, ``_sum``).

    >>> registry = CollectorRegistry()
    >>> sizes = LoopHistogram("demo_bytes", "Sizes.", buckets=(10, 100), registry=registry)
    >>> for size in (5, 10, 50, 500):
    ...     sizes.observe(size)
    >>> [registry.get_sample_value("demo_bytes_bucket", {"le": le})
    ...  for le in ("10.0", "100.0", "+Inf")]
    [2.0, 3.0, 4.0]
    >>> registry.get_sample_value("demo_bytes_sum")
    565.0
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry | None = None) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == float("inf"):
            bounds.pop()
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing, got {buckets!r}")
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(bounds)
        #: Per bucket (the last one: above every bound), observations in it alone.
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        if registry is not None:
            registry.register(self)  # type: ignore[arg-type]

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        counts = list(self._counts)
        cumulative: list[tuple[str, float]] = []
        running = 0.0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((_le(bound), running))
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], cumulative, self._sum)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes ``le`` (``0.5``, ``1024.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


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
        # The series the handler updates per record are LoopCounter / LoopHistogram
        # (written and scraped on the event loop's thread: no lock per update).
        self.events = LoopCounter(
            "riskwatch_events", "Input records handled, by topic and outcome "
            "(processed, duplicate, dead_lettered).", ["topic", "outcome"], registry=r)
        self.dead_letters = Counter(
            "riskwatch_dead_letters", "Records sent to the dead-letter topic, by source topic "
            "and reason.", ["topic", "reason"], registry=r)
        self.outputs = LoopCounter(
            "riskwatch_outputs", "Output records produced, by topic.", ["topic"], registry=r)
        self.event_to_output = LoopHistogram(
            "riskwatch_event_to_output_seconds", "Event time to output send, for records that "
            "produced an output.", buckets=_LATENCY_BUCKETS, registry=r)
        self.receive_to_output = LoopHistogram(
            "riskwatch_receive_to_output_seconds", "Receipt by the worker to output send.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.append_to_receive = LoopHistogram(
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
        self.state_bytes = LoopHistogram(
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
        self.anomaly_score = LoopHistogram(
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
