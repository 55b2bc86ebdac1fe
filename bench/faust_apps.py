"""The benchmarked consumers, each run as its own process by :mod:`bench.run`.

``python -m bench.faust_apps VARIANT --broker kafka://host:port --app-id ID --expect N
--report FILE [...]``

* ``a``: raw aiokafka consume-and-forward (orjson decode, re-encode, produce);
* ``b``: a bare Faust agent that only consumes and decodes (raw bytes values, orjson);
* ``c``: the naive Faust pattern: ``faust.Record`` values, a table write and one
  send per event;
* ``d``: the full Riskwatch worker, built by :func:`streams.app.create_app` and run
  exactly as ``riskwatch worker --fast`` runs it (:func:`streams.app.run_worker`),
  with a probe around ``Handler.handle`` and around the state table's changelog
  recovery.

Every variant uses the worker's Faust settings (``Settings.fast()``), its own
consumer group (``--app-id``) and reads the customer-keyed input topics from the
beginning, so all of them consume the same pre-produced input. Each writes its
:class:`~bench.probe.Probe` report to ``--report``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.probe import Probe
from schemas.topics import CUSTOMER_TOPICS


def faust_kwargs(app_id: str, broker: str, partitions: int, data_dir: Path) -> dict[str, Any]:
    """The Faust settings :func:`streams.app.create_app` uses, with fast group timings."""
    from streams.config import Settings

    s = Settings(broker=broker, app_id=app_id, data_dir=data_dir, partitions=partitions).fast()
    return dict(
        broker=[f"kafka://{h}" for h in s.bootstrap_servers], store="memory://",
        datadir=str(data_dir), web_enabled=False, topic_partitions=partitions,
        topic_allow_declare=True, topic_disable_leader=True,
        consumer_auto_offset_reset="earliest", broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=s.rebalance_timeout, producer_linger=s.producer_linger,
        table_standby_replicas=0, stream_wait_empty=False, logging_config=None,
    )


def bare_app(args: argparse.Namespace, probe: Probe) -> Any:
    """(b) Consume and decode only: raw bytes values, ``orjson.loads``."""
    import faust

    app = faust.App(args.app_id, **faust_kwargs(args.app_id, args.broker, args.partitions,
                                                args.data_dir))
    source = app.topic(*args.topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")

    @app.agent(source, concurrency=1)
    async def bare(stream: Any) -> None:
        loads = orjson.loads
        tick = probe.tick
        async for value in stream:
            loads(value)
            tick()

    return app


def naive_app(args: argparse.Namespace, probe: Probe) -> Any:
    """(c) The textbook Faust pattern: Records, a table write and a send per event."""
    import faust

    class Transaction(faust.Record, serializer="json"):
        event_id: str
        event_time: str
        customer_id: str
        type: str = ""
        amount_minor: int = 0
        currency: str = ""
        mcc: str = ""
        merchant_id: str = ""
        channel: str = ""
        country: str = ""

    class CustomerAgg(faust.Record, serializer="json"):
        count: int = 0
        total_minor: int = 0
        last_event_time: str = ""

    class Scored(faust.Record, serializer="json"):
        event_id: str
        customer_id: str
        amount_minor: int
        count: int
        mean_minor: float
        spike: bool

    app = faust.App(args.app_id, **faust_kwargs(args.app_id, args.broker, args.partitions,
                                                args.data_dir))
    source = app.topic(*args.topics, key_type=str, value_type=Transaction)
    out = app.topic(args.out_topic, key_type=str, value_type=Scored)
    table = app.Table("naive-state", default=CustomerAgg, key_type=str, value_type=CustomerAgg,
                      partitions=args.partitions)

    @app.agent(source, concurrency=1)
    async def naive(stream: Any) -> None:
        async for key, tx in stream.items():
            agg = table[key]
            mean = agg.total_minor / agg.count if agg.count else 0.0
            table[key] = CustomerAgg(count=agg.count + 1,
                                     total_minor=agg.total_minor + tx.amount_minor,
                                     last_event_time=tx.event_time)
            await out.send(key=key, value=Scored(
                event_id=tx.event_id, customer_id=tx.customer_id, amount_minor=tx.amount_minor,
                count=agg.count + 1, mean_minor=mean,
                spike=bool(mean and tx.amount_minor > 6 * mean)))
            probe.tick()

    return app


def riskwatch_app(args: argparse.Namespace, probe: Probe) -> Any:
    """(d) The full worker from ``create_app``, probed around the handler and recovery."""
    from streams.app import STATE_TABLE, create_app
    from streams.config import Settings

    settings = Settings.from_env(broker=args.broker, metrics_addr=args.metrics_addr,
                                 data_dir=args.data_dir, partitions=args.partitions,
                                 app_id=args.app_id, loglevel="warning",
                                 producer_linger=args.producer_linger).fast()
    rw = create_app(settings)
    handle = rw.handler.handle
    tick = probe.tick

    inputs = frozenset(CUSTOMER_TOPICS)

    async def probed(topic: str, *a: Any) -> None:
        await handle(topic, *a)
        if topic in inputs:  # not the worker's own sweep ticks
            tick()

    rw.handler.handle = probed  # type: ignore[method-assign]

    table = rw.app.tables[STATE_TABLE]
    apply = table.apply_changelog_batch
    recovery: dict[str, Any] = {"recovered": 0}

    def counted(batch: Any) -> None:
        now = time.time()
        recovery.setdefault("t_first_batch", now)
        recovery.setdefault("cpu_first_batch", time.process_time())
        apply(batch)
        recovery["recovered"] += len(batch)
        recovery["t_last_batch"] = time.time()

    table.apply_changelog_batch = counted  # type: ignore[method-assign]

    @rw.app.timer(0.05)
    async def report_ready() -> None:
        if "t_ready" not in recovery and rw.ready():
            recovery["t_ready"] = time.time()
            recovery["cpu_ready"] = time.process_time()
            probe.update(recovery=dict(recovery))

    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        probe.on_first = profiler.enable
        probe.on_done = lambda: (profiler.disable(), profiler.dump_stats(args.cprofile))
    return rw.app


async def forward(args: argparse.Namespace, probe: Probe) -> None:
    """(a) aiokafka consume, orjson decode, re-encode and produce to ``--out-topic``."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.config import parse_broker_url

    hosts = parse_broker_url(args.broker)
    consumer = AIOKafkaConsumer(*args.topics, bootstrap_servers=hosts, group_id=args.app_id,
                                auto_offset_reset="earliest", enable_auto_commit=True,
                                max_poll_records=1000)
    producer = AIOKafkaProducer(bootstrap_servers=hosts, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    await consumer.start()
    loads, dumps, send, out = orjson.loads, orjson.dumps, producer.send, args.out_topic
    count = 0
    try:
        while count < probe.expect:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for r in records:
                    await send(out, key=r.key, value=dumps(loads(r.value)))
                    count += 1
                    if count == 1:
                        probe.tick()
        await producer.flush()  # forwarded means delivered
        probe.count = count
        probe.finish()
    finally:
        await consumer.stop()
        await producer.stop()


def patch_fetch_wait(ms: int) -> None:
    """Faust builds its group consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it; a broker that holds a fetch for the whole wait (Tansu) then adds up to
    1.5 s per hop. Swap in a consumer class that uses ``ms`` instead."""
    import aiokafka

    base = aiokafka.AIOKafkaConsumer

    class Consumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *topics: Any, **kwargs: Any) -> None:
            if kwargs.get("group_id") is not None and "fetch_max_wait_ms" in kwargs:
                kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*topics, **kwargs)

    aiokafka.AIOKafkaConsumer = Consumer  # type: ignore[misc]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faust_apps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", choices=["a", "b", "c", "d"])
    p.add_argument("--broker", required=True, help="kafka://host:port")
    p.add_argument("--app-id", required=True, help="app id = consumer group")
    p.add_argument("--expect", type=int, default=0, help="events to count (0 = no count)")
    p.add_argument("--report", type=Path, required=True, help="JSON report file")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--topics", nargs="+", default=list(CUSTOMER_TOPICS))
    p.add_argument("--out-topic", default="bench-out")
    p.add_argument("--data-dir", type=Path, default=Path(".bench-data"))
    p.add_argument("--metrics-addr", default="127.0.0.1:9464", help="(d) metrics address")
    p.add_argument("--cprofile", default=None, help="(d) cProfile the first..last event window")
    p.add_argument("--fetch-max-wait-ms", type=int, default=0,
                   help="patch the Faust consumer's fetch_max_wait_ms (hard-coded 1500)")
    p.add_argument("--no-spinner", action="store_true",
                   help="drop faust.Worker's terminal spinner (which sets the root logger to "
                        "DEBUG)")
    p.add_argument("--producer-linger", type=float, default=None,
                   help="(d) Settings.producer_linger in seconds (default 0.005)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    probe = Probe(args.expect if args.expect > 0 else sys.maxsize, args.report,
                  variant=args.variant)
    import mode.loop

    mode.loop.use("uvloop")
    if args.variant == "a":
        asyncio.run(forward(args, probe))
        return
    import faust

    if args.fetch_max_wait_ms:
        patch_fetch_wait(args.fetch_max_wait_ms)
    build = {"b": bare_app, "c": naive_app, "d": riskwatch_app}[args.variant]
    app = build(args, probe)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    if args.no_spinner:
        worker.spinner = None
    sys.argv = [sys.argv[0]]  # faust.Worker reads no options of ours
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
