"""The benchmarked consumers, each run as its own process by :mod:`bench.run`.

``python -m bench.faust_apps VARIANT --broker kafka://host:port --app-id ID --expect N
--report FILE [...]``

* ``a``: raw aiokafka consume-and-forward (orjson decode, re-encode, produce);
* ``b``: a bare Faust agent that only consumes and decodes (raw bytes values, orjson);
* ``c``: the naive Faust pattern: ``faust.Record`` values, a table write and one
  send per event;
* ``d``: the full Riskwatch worker, run exactly as ``riskwatch worker --fast`` runs it
  (:func:`streams.app.run_worker`), with probes put in by wrapping ``create_app``: a
  task that reads the worker's own ``riskwatch_events_total`` every 5 ms, and a count
  of the changelog messages the state table recovers.

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


def worker_settings(args: argparse.Namespace) -> Any:
    """Settings exactly as ``riskwatch worker --fast`` builds them, then ``--set`` overrides."""
    import dataclasses

    from streams.config import Settings

    settings = Settings.from_env(broker=args.broker, metrics_addr=args.metrics_addr,
                                 data_dir=args.data_dir, partitions=args.partitions,
                                 app_id=args.app_id, loglevel="warning").fast()
    fields = {f.name: f for f in dataclasses.fields(settings)}
    changes: dict[str, Any] = {}
    for item in args.set or ():
        name, _, text = item.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {item}: Settings has no field {name!r}")
        current = getattr(settings, name)
        if text.lower() == "none":
            changes[name] = None
        elif isinstance(current, bool):
            changes[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            changes[name] = int(text)
        elif isinstance(current, float) or current is None:
            changes[name] = float(text)
        else:
            changes[name] = text
    return dataclasses.replace(settings, **changes) if changes else settings


def faust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Faust settings :func:`streams.app.create_app` uses, with ``--fast`` timings; the
    group fetch wait tuned as :func:`streams.app.run_worker` tunes it."""
    s = worker_settings(args)
    wait = getattr(s, "fetch_max_wait", None)
    if wait is not None:
        from streams.tuning import set_group_fetch_wait

        set_group_fetch_wait(int(wait * 1000))
    return dict(
        broker=[f"kafka://{h}" for h in s.bootstrap_servers], store="memory://",
        datadir=str(args.data_dir), web_enabled=False, topic_partitions=args.partitions,
        topic_allow_declare=True, topic_disable_leader=True,
        consumer_auto_offset_reset="earliest", broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=s.rebalance_timeout, producer_linger=s.producer_linger,
        producer_max_batch_size=s.producer_max_batch_size,
        table_standby_replicas=0, stream_wait_empty=False, logging_config=None,
    )


def bare_app(args: argparse.Namespace, probe: Probe) -> Any:
    """(b) Consume and decode only: raw bytes values, ``orjson.loads``."""
    import faust

    app = faust.App(args.app_id, **faust_kwargs(args))
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

    app = faust.App(args.app_id, **faust_kwargs(args))
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


def events_total(metrics: Any) -> int:
    """``riskwatch_events_total`` summed over its labels (every input record handled:
    processed, duplicate or dead-lettered)."""
    total = 0.0
    for family in metrics.events.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return int(total)


def install_probes(rw: Any, args: argparse.Namespace, probe: Probe) -> None:
    """Count handled input events and recovered changelog messages, in the worker process.

    Events are read off the worker's own ``riskwatch_events_total`` every 5 ms (not a
    wrapper around a handler method, which the worker's refactors would break); the
    table's ``apply_changelog_batch`` counts what Faust recovers.
    """
    from streams.app import STATE_TABLE

    @rw.app.task
    async def count_events() -> None:
        while True:
            seen = events_total(rw.metrics)
            if seen > probe.count:
                probe.tick(seen - probe.count)
            await asyncio.sleep(0.005)

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

    table.apply_changelog_batch = counted

    @rw.app.timer(0.05)
    async def report_ready() -> None:
        if "t_ready" not in recovery and rw.ready():
            recovery["t_ready"] = time.time()
            recovery["cpu_ready"] = time.process_time()
            gap = getattr(rw.metrics, "recovery_gap_records", None)
            if gap is not None:  # what the worker read itself past short end offsets
                recovery["recovered_past_end_offsets"] = int(sum(
                    s.value for f in gap.collect() for s in f.samples
                    if s.name.endswith("_total")))
            recovery["keys"] = len(table.data)
            probe.update(recovery=dict(recovery))

    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        probe.on_first = profiler.enable
        probe.on_done = lambda: (profiler.disable(), profiler.dump_stats(args.cprofile))


def run_riskwatch(args: argparse.Namespace, probe: Probe) -> None:
    """(d) The worker exactly as ``riskwatch worker --fast`` runs it
    (:func:`streams.app.run_worker`), with the probes put in by wrapping ``create_app``."""
    import streams.app

    create_app = streams.app.create_app

    def probed_create_app(*a: Any, **kw: Any) -> Any:
        rw = create_app(*a, **kw)
        install_probes(rw, args, probe)
        return rw

    streams.app.create_app = probed_create_app  # type: ignore[assignment]
    probe.update(settings_changed=list(args.set or ()))
    sys.argv = [sys.argv[0]]  # the Faust worker reads no options of ours
    streams.app.run_worker(worker_settings(args))


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
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a streams.config.Settings field after --fast (repeatable; "
                        "'none' for None); applies to b, c (Faust timings) and d")
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
    if args.variant == "d":
        run_riskwatch(args, probe)
        return
    import faust

    app = {"b": bare_app, "c": naive_app}[args.variant](args, probe)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None  # as run_worker: the spinner sets the root logger to DEBUG
    sys.argv = [sys.argv[0]]  # faust.Worker reads no options of ours
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
