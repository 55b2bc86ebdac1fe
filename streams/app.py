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
from dataclasses import dataclass, field
from typing import Any

import faust
from aiohttp import web

from alerts.deadletter import dead_letter, dead_letter_emit
from alerts.engine import Engine
from alerts.envelope import Emit, to_message
from alerts.policy import load_policy
from schemas.codec import decode
from schemas.errors import DecodeError
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS
from streams.config import Settings, parse_addr
from streams.control import PolicyWatcher
from streams.metrics import Metrics

log = logging.getLogger("riskwatch.worker")

#: Name of the per-customer state table (changelog ``<app_id>-customer-state-changelog``).
STATE_TABLE = "customer-state"


@dataclass
class Handler:
    """Processes one raw record: the whole of an agent's per-event work."""

    engine: Engine
    metrics: Metrics
    table: Any
    send: Any  # async (Emit) -> None
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    async def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        timestamp: float | None,
    ) -> None:
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
            result = self.engine.process(topic, event, self.table.get(key_text))
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
    source = app.topic(*CUSTOMER_TOPICS, **raw)
    outputs = {name: app.topic(name, **raw) for name in OUTPUT_TOPICS}
    table = app.Table(STATE_TABLE, default=None, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions)

    async def send(emit: Emit) -> None:
        key, value, headers = to_message(emit, settings.source)
        await outputs[emit.topic].send(key=key, value=value, headers=headers)
        metrics.outputs.labels(emit.topic).inc()
        if emit.topic == "risk-alerts":
            metrics.alerts.labels(emit.record.alert_type, emit.record.severity).inc()

    class _Table:
        """The state table seen through text keys (Faust stores raw bytes)."""

        @staticmethod
        def get(key: str) -> bytes | None:
            return table.get(key.encode())

        def __setitem__(self, key: str, value: bytes) -> None:
            table[key.encode()] = value

    handler = Handler(engine, metrics, _Table(), send)
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
        await start_http(rw)

    return rw


async def start_http(rw: Riskwatch) -> web.AppRunner:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on the metrics address."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics_view(request: web.Request) -> web.Response:
        body = generate_latest(rw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = rw.ready()
        rw.metrics.ready.set(1 if ready else 0)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    http = web.Application()
    http.router.add_get("/metrics", metrics_view)
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    runner = web.AppRunner(http, access_log=None)
    await runner.setup()
    host, port = parse_addr(rw.settings.metrics_addr)
    await web.TCPSite(runner, host, port).start()
    log.info("metrics and health on http://%s:%d", host, port)
    return runner


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM (blocks)."""
    import mode.loop

    mode.loop.use("uvloop")
    rw = create_app(settings)
    worker = faust.Worker(rw.app, loglevel=settings.loglevel, quiet=True)
    worker.execute_from_commandline()
