"""The Faust application factory: topics, the per-customer table, thin agents.

Nothing here decides anything about risk: the agent decodes, calls the pure
engine (``alerts.engine``), writes the customer's state back once, and sends
the outputs. Every exception is caught per event and the record dead-lettered,
because Faust acks an event even when the agent body raises.

Build the app with :func:`create_app`; no module-level app exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from alerts.deadletter import dead_letter, dead_letter_emit
from alerts.engine import Engine
from alerts.envelope import Emit, to_message
from alerts.policy import load_policy
from detectors.delinquency import DueIndex, epoch_day
from schemas.codec import decode
from schemas.errors import DecodeError
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS
from streams import checkpoint
from streams.config import Settings
from streams.control import PolicyWatcher
from streams.metrics import Metrics

log = logging.getLogger("riskwatch.worker")

#: Name of the per-customer state table (changelog ``<app_id>-customer-state-changelog``).
STATE_TABLE = "customer-state"


@dataclass
class Sweeper:
    """Per-partition event-time watermarks and indexes of upcoming due dates.

    A missed due date is found with no further event from the customer: when a
    partition's watermark (event time minus the policy's sweep lateness) passes a
    customer's next check day, the customer's ledgers are advanced. Work is
    proportional to the due dates crossed, never to the customers held.

    A partition's watermark is the *lowest* newest-event-time among its topics that
    still have unread records: Kafka does not order two topics against each other, so
    one topic read ahead must not declare a due date missed while the other topic
    may still hold the payment.
    """

    topic_ms: dict[tuple[int, str], int] = field(default_factory=dict)
    last_event_at: dict[int, float] = field(default_factory=dict)
    due: dict[int, DueIndex] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)

    def index(self, partition: int) -> DueIndex:
        found = self.due.get(partition)
        if found is None:
            found = self.due[partition] = DueIndex()
        return found

    def saw(self, partition: int, topic: str, key: str, event_ms: int,
            next_check: int | None) -> None:
        if event_ms > self.topic_ms.get((partition, topic), 0):
            self.topic_ms[(partition, topic)] = event_ms
        self.last_event_at[partition] = time.monotonic()
        self.index(partition).add(key, next_check)

    def watermark_ms(self, partition: int, behind: Callable[[str, int], bool]) -> int | None:
        """The partition's event-time watermark; ``behind(topic, partition)`` tells
        whether a topic still has unread records there."""
        seen = {t: ms for (p, t), ms in self.topic_ms.items() if p == partition}
        if not seen:
            return None
        lagging = [ms for t, ms in seen.items() if behind(t, partition)]
        return min(lagging) if lagging else max(seen.values())

    def as_of(self, partition: int, behind: Callable[[str, int], bool], lateness_s: float,
              idle_s: float, live_window_s: float) -> float | None:
        """Event time (Unix s) up to which ``partition`` may be swept now, if any."""
        wm = self.watermark_ms(partition, behind)
        if wm is None:
            return None
        as_of = wm / 1000 - lateness_s
        now = time.time()
        idle = time.monotonic() - self.last_event_at.get(partition, 0.0) > idle_s
        # A live stream that went idle: wall-clock time passes for it too.
        if idle and now - wm / 1000 < live_window_s:
            as_of = max(as_of, now - lateness_s)
        return as_of


@dataclass
class Handler:
    """Processes one raw record: the whole of an agent's per-event work."""

    engine: Engine
    metrics: Metrics
    table: Any
    send: Any  # async (Emit) -> None
    ticks_topic: str = ""
    sweeper: Sweeper = field(default_factory=Sweeper)
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Offsets the global models had learned up to at the last checkpoint.
    learned_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    async def sweep(self, partition: int, value: bytes) -> None:
        """Advance every customer of ``partition`` whose check day has passed."""
        self.sweeper.pending.discard(partition)
        as_of = dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC)
        index = self.sweeper.index(partition)
        for key in index.pop_due(epoch_day(as_of)):
            result = self.engine.advance(key, self.table.get(key), as_of)
            if result.state is not None:
                self.table[key] = result.state
            index.add(key, result.next_check)
            for emit in result.emits:
                await self.send(emit)

    async def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        timestamp: float | None,
    ) -> None:
        if topic == self.ticks_topic:
            await self.sweep(partition, value or b"0")
            return
        received = time.time()
        self.last_offsets[(topic, partition)] = offset
        key_text: str | None = None
        try:
            if key is None:
                raise DecodeError("missing_field", "message has no key", topic=topic)
            if value is None:
                raise DecodeError("null_value", "message has no value (tombstone)", topic=topic)
            try:
                key_text = key.decode()
            except UnicodeDecodeError as exc:
                raise DecodeError("invalid_utf8", "message key is not UTF-8", topic=topic) from exc
            event = decode(topic, value, key=key_text)
            learn = offset > self.learned_offsets.get((topic, partition), -1)
            result = self.engine.process(topic, event, self.table.get(key_text), learn=learn)
        except DecodeError as exc:
            when = dt.datetime.fromtimestamp(timestamp or received, dt.UTC)
            record = dead_letter(topic, partition, offset, key, value, exc, when)
            await self.send(dead_letter_emit(record))
            self.metrics.events.labels(topic, "dead_lettered").inc()
            self.metrics.dead_letters.labels(topic, exc.reason).inc()
            return
        except Exception as exc:  # a bug: never lose the record, never crash the worker
            log.exception("processing failed for %s[%d]@%d", topic, partition, offset)
            when = dt.datetime.fromtimestamp(timestamp or received, dt.UTC)
            error = DecodeError("processing_error", f"{type(exc).__name__}: {exc}", topic=topic)
            await self.send(dead_letter_emit(dead_letter(topic, partition, offset, key, value,
                                                         error, when)))
            self.metrics.events.labels(topic, "dead_lettered").inc()
            self.metrics.dead_letters.labels(topic, "processing_error").inc()
            return
        if result.duplicate:
            when = dt.datetime.fromtimestamp(timestamp or received, dt.UTC)
            error = DecodeError("duplicate_event", f"event_id {event.event_id!r} already applied",
                                topic=topic, key=key_text, field="event_id")
            await self.send(dead_letter_emit(dead_letter(topic, partition, offset, key, value,
                                                         error, when)))
            self.metrics.events.labels(topic, "duplicate").inc()
            self.metrics.dead_letters.labels(topic, "duplicate_event").inc()
            return
        if result.state is not None:
            self.table[key_text] = result.state
            self.metrics.state_bytes.observe(len(result.state))
            self.sweeper.saw(partition, topic, key_text,
                             int(event.event_time.timestamp() * 1000), result.next_check)
        for emit in result.emits:
            await self.send(emit)
        self.metrics.events.labels(topic, "processed").inc()
        self.metrics.last_event_time.labels(topic).set(event.event_time.timestamp())
        self.metrics.last_receive_time.labels(topic).set(received)
        if result.emits:
            now = time.time()
            self.metrics.event_to_output.observe(max(0.0, now - event.event_time.timestamp()))
            self.metrics.receive_to_output.observe(now - received)


@dataclass
class Riskwatch:
    """A built worker: the Faust app and what its agents use."""

    app: faust.App
    settings: Settings
    engine: Engine
    metrics: Metrics
    handler: Handler
    watcher: PolicyWatcher | None = None

    def ready(self) -> bool:
        """Partitions assigned, table recovery finished and the policy caught up."""
        if self.watcher is not None and not self.watcher.caught_up.is_set():
            return False
        consumer = self.app.consumer if self.app.producer else None
        try:
            assigned = bool(consumer and consumer.assignment())
        except Exception:
            return False
        return (
            assigned
            and not self.app.rebalancing
            and self.app.tables.recovery.completed.is_set()
        )


def create_app(settings: Settings, metrics: Metrics | None = None) -> Riskwatch:
    """Build a Riskwatch worker app from ``settings``."""
    metrics = metrics or Metrics()
    policy = load_policy(settings.policy_file)
    engine = Engine(policy)
    metrics.set_policy(policy.version, policy.crisis.active)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers],
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        web_host="127.0.0.1",
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        producer_linger=settings.producer_linger,
        table_standby_replicas=0,
        stream_wait_empty=False,
        logging_config=None,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw"}
    ticks_name = f"{settings.app_id}-sweep-ticks"
    ticks = app.topic(ticks_name, partitions=settings.partitions, internal=True, **raw)
    source = app.topic(*CUSTOMER_TOPICS, ticks_name, **raw)
    outputs = {name: app.topic(name, **raw) for name in OUTPUT_TOPICS}
    table = app.Table(STATE_TABLE, default=None, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions)

    async def send(emit: Emit) -> None:
        key, value, headers = to_message(emit, settings.source)
        await outputs[emit.topic].send(key=key, value=value, headers=headers)
        metrics.outputs.labels(emit.topic).inc()
        if emit.topic == "risk-alerts":
            metrics.alerts.labels(emit.record.alert_type, emit.record.severity).inc()
        elif emit.topic == "customer-actions":
            metrics.customer_actions.labels(emit.record.action, emit.record.channel).inc()

    class _Table:
        """The state table seen through text keys (Faust stores raw bytes)."""

        @staticmethod
        def get(key: str) -> bytes | None:
            return table.get(key.encode())

        def __setitem__(self, key: str, value: bytes) -> None:
            table[key.encode()] = value

    handler = Handler(engine, metrics, _Table(), send, ticks_topic=ticks_name)
    checkpoint_path = settings.data_dir / "models.ckpt"
    resumed = checkpoint.load(checkpoint_path)
    if resumed is not None:
        engine.restore_models(resumed.models)
        handler.learned_offsets = dict(resumed.offsets)
        log.warning("global models resumed from %s (%d partitions learned)", checkpoint_path,
                    len(resumed.offsets))

    @app.timer(settings.checkpoint_interval)
    async def checkpoint_models() -> None:
        offsets = {**handler.learned_offsets, **handler.last_offsets}
        blob = checkpoint.dumps(checkpoint.Checkpoint(engine.models(), offsets,
                                                      engine.policy.version))
        await asyncio.to_thread(checkpoint.write, checkpoint_path, blob)

    async def rebuild_due_index() -> None:
        """After recovery: index every recovered customer's next check day (once)."""
        store = getattr(table.data, "_key_partition", None)
        if store is None:
            log.warning("table store does not expose key partitions; sweeps resume as "
                        "customers' events arrive")
            return
        sweeper = handler.sweeper
        for raw_key, partition in list(store.items()):
            next_check, _newest_ms = engine.sweep_info(table.data.get(raw_key))
            sweeper.index(partition).add(raw_key.decode(), next_check)

    table.on_recover(rebuild_due_index)
    rw = Riskwatch(app, settings, engine, metrics, handler)

    def apply_policy(policy: Any, record: Any) -> None:
        engine.set_policy(policy)
        metrics.set_policy(policy.version, policy.crisis.active)

    async def reject_policy(value: bytes, error: DecodeError, partition: int, offset: int) -> None:
        when = dt.datetime.now(dt.UTC)
        await send(dead_letter_emit(dead_letter("risk-policy", partition, offset, None, value,
                                                error, when)))
        metrics.dead_letters.labels("risk-policy", error.reason).inc()

    rw.watcher = PolicyWatcher(settings.bootstrap_servers, apply_policy, reject_policy)

    @app.task
    async def follow_policy() -> None:
        assert rw.watcher is not None
        while True:
            try:
                await rw.watcher.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher failed; retrying in 2 s")
                await asyncio.sleep(2)

    @app.agent(source, concurrency=1)
    async def customer_events(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await handler.handle(message.topic, message.partition, message.offset,
                                 message.key, message.value, message.timestamp)

    @app.timer(settings.sweep_interval)
    async def request_sweeps() -> None:
        """Ask each assigned partition to sweep when its watermark passed a check day."""
        if not app.consumer or app.rebalancing:
            return
        policy = engine.policy
        sweeper = handler.sweeper
        consumer = app.consumer

        def behind(topic: str, partition: int) -> bool:
            high = consumer.highwater(TP(topic, partition))
            return (high or 0) - 1 > handler.last_offsets.get((topic, partition), -1)

        for tp in consumer.assignment():
            if tp.topic != ticks_name or tp.partition in sweeper.pending:
                continue
            as_of = sweeper.as_of(tp.partition, behind, policy.sweep_lateness_hours * 3600.0,
                                  settings.sweep_idle, settings.sweep_live_window)
            next_day = sweeper.index(tp.partition).next_day()
            if as_of is None or next_day is None or next_day > int(as_of // 86_400):
                continue
            sweeper.pending.add(tp.partition)
            await ticks.send(key=b"sweep", value=str(int(as_of * 1000)).encode(),
                             partition=tp.partition)

    @app.timer(5.0)
    async def export_lag() -> None:
        if not app.consumer:
            return
        lag: dict[str, int] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in CUSTOMER_TOPICS:
                continue
            high = app.consumer.highwater(tp)
            last = handler.last_offsets.get((tp.topic, tp.partition), -1)
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, (high or 0) - last - 1)
        for topic in CUSTOMER_TOPICS:
            metrics.consumer_lag.labels(topic).set(lag.get(topic, 0))
        metrics.ready.set(1 if rw.ready() else 0)

    @app.on_partitions_revoked.connect
    async def _on_rebalance(sender: Any, revoked: Any, **kwargs: Any) -> None:
        metrics.rebalances.inc()
        metrics.ready.set(0)

    @app.task
    async def serve_http() -> None:
        from streams.web import start_http

        await start_http(rw)

    return rw


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM (blocks)."""
    import mode.loop

    mode.loop.use("uvloop")
    rw = create_app(settings)
    worker = faust.Worker(rw.app, loglevel=settings.loglevel, quiet=True)
    worker.execute_from_commandline()
