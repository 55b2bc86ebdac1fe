"""Fault injection: two workers, kill -9, SIGSTOP, a slow / dark / resetting network.

``python -m bench.faults [--events 50000 --customers 3000 --kills 10 --seed N --quick]``
(wrapped by ``scripts/faults.sh``) runs, on one machine and loopback only:

1. a generated portfolio (``streams.simulator``) of at least ``--events`` events, and
   its oracle: ``streams.replay`` over the same JSONL gives every output id the
   pipeline must deliver (order-dependent reason codes and dead letters excluded, as
   in ``tests/streams/test_replay_equals_stream.py``);
2. a dedicated Tansu broker that advertises the port of a fault proxy
   (:mod:`bench.proxy`), so every Kafka connection goes through the proxy;
3. two workers (``riskwatch worker --fast``, same app id) and a paced producer;
4. while the input flows, a seeded plan of faults, one after the other: kill -9 (in
   steady state, during a rebalance, during table recovery; phases are read from the
   workers' logs), restart; SIGSTOP past the session timeout, SIGCONT; proxy latency,
   a blackout that stalls, a blackout that refuses and resets, connection resets;
5. then it waits until every input record is committed and the outputs stop changing,
   and compares: missing outputs (must be 0), outputs not in the oracle (must be 0),
   ids delivered more than once (allowed: counted), ids delivered with different
   payloads (not allowed), the time to recover after each fault, and throughput.

Before the faults, the same input runs once without faults (``--no-baseline`` skips
it): a difference from the oracle that the fault-free run shows too is the engine's or
the design's, not the faults'; the report counts both. ``--policy FILE`` runs replay and
the workers on another policy (the CI variant turns the order-dependent anomaly model
off); ``--plan kill,stall,...`` or ``--plan none`` replaces the seeded plan.

Results: ``bench/results/faults.json`` and ``bench/results/faults.md`` (``--out``).
:func:`run_burst` is the burst check (a steady rate, then ``factor`` times it) used by
``tests/reliability/test_faults.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.proxy import ProxiedBroker, free_port
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS

#: Outputs whose ids the oracle predicts (dead letters carry offsets, audit is control).
COMPARED = tuple(t for t in OUTPUT_TOPICS if t not in ("dead-letters", "audit"))
#: Findings that depend on how the broker interleaves records (see the replay test).
ORDER_DEPENDENT = frozenset({"anomalous_transaction", "utilisation_jump"})

#: Log markers of a worker's group/recovery phases, in the order they happen.
PHASE_MARKERS: list[tuple[str, re.Pattern[str]]] = [
    ("rebalance", re.compile(r"Revoking previously assigned partitions|\(Re-\)joining group")),
    ("assigned", re.compile(r"Setting newly assigned partitions")),
    ("recovery", re.compile(r"Highwater for active changelog|Restoring state from changelog")),
    ("ready", re.compile(r"\[\^---Recovery\]: Worker ready")),
]
ERROR_LINE = re.compile(r"\[(ERROR|CRITICAL)\]|^\w*(Error|Exception)\b")

#: Kinds of fault and how long one usually takes here (paces the producer).
FAULT_SECONDS = {"kill": 14, "kill_in_rebalance": 26, "kill_in_recovery": 26,
                 "stop_cont": 20, "latency": 14, "stall": 14, "refuse": 12, "reset": 10}
#: Kill -9s per kind of fault.
KILLS = {"kill": 1, "kill_in_rebalance": 2, "kill_in_recovery": 2}


# -- configuration and data --------------------------------------------------------


@dataclass
class Config:
    events: int = 50_000
    customers: int = 3_000
    kills: int = 10
    seed: int = 7
    partitions: int = 4
    #: Events per second while faults run (None: spread the input over the plan).
    rate: float | None = None
    #: Fault kinds in order (None: a seeded plan with at least ``kills`` kill -9s).
    plan: list[str] | None = None
    #: Outputs unchanged this long (after everything is committed) = done.
    settle: float = 15.0
    #: The whole run, at most (seconds).
    deadline: float = 1_200.0
    out: Path | None = Path("bench/results")
    work: Path | None = None
    keep: bool = False
    verbose: bool = True
    #: Policy YAML for replay and the workers (None: the default policy).
    policy: Path | None = None
    #: Seconds between faults (seeded uniform in this range).
    gap: tuple[float, float] = (2.0, 5.0)
    #: Run the same input without faults first: differences it shows too are not the
    #: faults' doing (they are reported as the baseline, and not counted against faults).
    baseline: bool = False

    @classmethod
    def quick(cls, **kw: Any) -> Config:
        base: dict[str, Any] = dict(events=5_000, customers=400, kills=3, settle=6.0,
                                    deadline=240.0,
                                    plan=["kill_in_recovery", "stall", "kill"])
        base.update(kw)
        return cls(**base)


def default_plan(kills: int, rng: random.Random) -> list[str]:
    """At least ``kills`` kill -9s (some during a rebalance, some during recovery) and
    one of every other fault, in a seeded order."""
    special = max(1, kills // 4)
    plan = ["kill_in_recovery"] * special + ["kill_in_rebalance"] * special
    plan += ["kill"] * max(0, kills - 2 * len(plan))
    plan += ["stop_cont", "latency", "stall", "refuse", "reset"]
    rng.shuffle(plan)
    return plan


def _log(cfg: Config, t0: float, text: str) -> None:
    if cfg.verbose:
        print(f"[{time.monotonic() - t0:7.1f}s] {text}", flush=True)


def _deterministic(doc: dict[str, Any]) -> bool:
    return not ORDER_DEPENDENT.intersection(doc.get("reason_codes") or ())


def _id_of(topic: str, doc: dict[str, Any]) -> str:
    from schemas.topics import TOPICS

    return str(doc[TOPICS[topic].id_field])


@dataclass
class Dataset:
    records: list[tuple[str, bytes, bytes]]
    oracle: dict[tuple[str, str], dict[str, Any]]
    order_dependent: int
    days: int
    customers: int
    by_topic: dict[str, int]
    replay_seconds: float


def build_dataset(cfg: Config, work: Path) -> Dataset:
    """A portfolio of at least ``cfg.events`` events and its replay oracle."""
    from alerts.policy import load_policy
    from schemas.codec import loads
    from streams.replay import iter_merged, replay, resolve_inputs
    from streams.simulator import Portfolio, iter_events, write_jsonl

    days = max(1, math.ceil(cfg.events / (cfg.customers * 1.6)))
    for _ in range(20):
        count = sum(1 for _ in iter_events(Portfolio(customers=cfg.customers, days=days,
                                                     seed=cfg.seed)))
        if count >= cfg.events:
            break
        days += max(1, math.ceil((cfg.events - count) / (cfg.customers * 1.6)))
    config = Portfolio(customers=cfg.customers, days=days, seed=cfg.seed)
    write_jsonl(config, work / "in")
    inputs = resolve_inputs([str(work / "in")])
    started = time.perf_counter()
    replay(inputs, work / "oracle", load_policy(cfg.policy), partitions=cfg.partitions)
    replay_seconds = time.perf_counter() - started
    oracle: dict[tuple[str, str], dict[str, Any]] = {}
    order_dependent = 0
    for topic in COMPARED:
        path = work / "oracle" / f"{topic}.jsonl"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            doc = loads(line)
            if _deterministic(doc):
                oracle[(topic, _id_of(topic, doc))] = doc
            else:
                order_dependent += 1
    records: list[tuple[str, bytes, bytes]] = []
    by_topic: Counter[str] = Counter()
    for _time, topic, _line, raw, obj in iter_merged(inputs):
        key = getattr(obj, "customer_id", None) or getattr(obj, "sector", None)
        records.append((topic, str(key).encode(), raw))
        by_topic[topic] += 1
    return Dataset(records, oracle, order_dependent, days, cfg.customers, dict(by_topic),
                   replay_seconds)


# -- workers -----------------------------------------------------------------------


@dataclass
class Incarnation:
    number: int
    pid: int
    metrics_addr: str
    log: Path
    started: float
    ended: float | None = None
    how: str = ""
    events: float = 0.0


class Worker:
    """One worker slot: restarts get a new process, port and log, same app id."""

    def __init__(self, name: str, broker_url: str, app_id: str, partitions: int, work: Path,
                 t0: float, extra: list[str] | None = None) -> None:
        self.name = name
        self.extra = list(extra or [])
        self.broker_url = broker_url
        self.app_id = app_id
        self.partitions = partitions
        self.work = work
        self.t0 = t0
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnations: list[Incarnation] = []
        self.phase = "down"
        self.phases: list[tuple[float, str]] = []
        self.errors: Counter[str] = Counter()
        self.stopped = False  # SIGSTOP
        self.expect_exit = False
        self._pos = 0
        self._partial = b""

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> Incarnation:
        from streams.demo import start_worker

        number = len(self.incarnations) + 1
        addr = f"127.0.0.1:{free_port()}"
        log = self.work / f"{self.name}-{number}.log"
        with log.open("wb") as handle:
            self.proc = start_worker(self.broker_url, addr, self.work / f"{self.name}-data",
                                     self.partitions, handle,
                                     ["--app-id", self.app_id, "--loglevel", "info",
                                      *self.extra])
        inc = Incarnation(number, self.proc.pid, addr, log, self.now())
        self.incarnations.append(inc)
        self._pos, self._partial = 0, b""
        self.phase, self.stopped, self.expect_exit = "starting", False, False
        self.phases.append((self.now(), "start"))
        return inc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _end(self, how: str) -> None:
        inc = self.current
        if inc is not None and inc.ended is None:
            inc.ended, inc.how = self.now(), how
        self.phase = "down"
        self.phases.append((self.now(), how))

    def kill9(self) -> str:
        """kill -9; return the phase the worker was in."""
        self.poll_log()
        phase = self.phase
        if self.proc is not None and self.proc.poll() is None:
            self.expect_exit = True
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._end(f"kill -9 in {phase}")
        self.stopped = False
        return phase

    def sigstop(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True
        self.phases.append((self.now(), "SIGSTOP"))

    def sigcont(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False
        self.phases.append((self.now(), "SIGCONT"))

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.expect_exit = True
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._end("stopped")

    def poll_log(self) -> list[str]:
        """Read new log lines; update the phase; return the phases entered."""
        inc = self.current
        if inc is None:
            return []
        try:
            with inc.log.open("rb") as handle:
                handle.seek(self._pos)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._pos += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        entered = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            for phase, pattern in PHASE_MARKERS:
                if pattern.search(line):
                    self.phase = phase
                    self.phases.append((self.now(), phase))
                    entered.append(phase)
            if ERROR_LINE.search(line):
                self.errors[re.sub(r"\[[^\]]*\] ", "", line)[:160]] += 1
        return entered

    def vmhwm_kb(self) -> int | None:
        if self.proc is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"VmHWM:\s+(\d+) kB", text)
        return int(found.group(1)) if found else None


async def _get(session: aiohttp.ClientSession, url: str, timeout: float = 1.0
               ) -> tuple[int, str] | None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()
    return None


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


# -- broker-side views --------------------------------------------------------------


async def _admin_call(bootstrap: str, fn: Callable[[AIOKafkaAdminClient], Awaitable[Any]],
                      timeout: float = 8.0) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return await asyncio.wait_for(fn(admin), timeout)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def committed_offsets(bootstrap: str, group: str, tps: list[TopicPartition]
                            ) -> dict[TopicPartition, int]:
    # Explicit partitions: Tansu's answer to "all partitions of the group" does not decode.
    offsets = await _admin_call(bootstrap, lambda a: a.list_consumer_group_offsets(
        group, partitions=tps))
    return {tp: meta.offset for tp, meta in offsets.items()}


async def true_end_offsets(bootstrap: str, tps: list[TopicPartition], timeout: float = 15.0
                           ) -> dict[TopicPartition, int]:
    """End offsets from fetch high watermarks (Tansu's ListOffsets answer is short)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), timeout)
    try:
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, reported[tp] - 1))
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(ends) < len(tps):
            got = await consumer.getmany(timeout_ms=200, max_records=1)
            del got
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = high
        missing = [tp for tp in tps if tp not in ends]
        if missing:
            raise TimeoutError(f"no fetch high watermark for {missing}")
        return ends
    finally:
        await consumer.stop()


# -- outputs -------------------------------------------------------------------------


@dataclass
class Delivered:
    count: int = 0
    first: bytes = b""
    first_seen: float = 0.0
    digests: set[str] = field(default_factory=set)
    other: bytes | None = None


class Collector:
    """Reads the output topics from the beginning (no group) and indexes them by id."""

    def __init__(self, bootstrap: str, t0: float | None = None) -> None:
        self.bootstrap = bootstrap
        self.t0 = time.monotonic() if t0 is None else t0
        self.by_id: dict[tuple[str, str], Delivered] = {}
        self.dead_letters: Counter[str] = Counter()
        self.dead_letter_ids: dict[str, Delivered] = {}
        self.records = 0
        self.last_change = time.monotonic()
        self.undecodable = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(*COMPARED, "dead-letters",
                                          bootstrap_servers=self.bootstrap, group_id=None,
                                          auto_offset_reset="earliest",
                                          enable_auto_commit=False, max_poll_records=5000)
        await self._consumer.start()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        from schemas.codec import loads

        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for r in records:
                    self.records += 1
                    self.last_change = time.monotonic()
                    try:
                        doc = loads(r.value)
                    except Exception:
                        self.undecodable += 1
                        continue
                    digest = hashlib.blake2b(r.value, digest_size=16).hexdigest()
                    if r.topic == "dead-letters":
                        entry = self.dead_letter_ids.setdefault(doc["dead_letter_id"],
                                                                Delivered())
                        if entry.count == 0:
                            self.dead_letters[doc["reason"]] += 1
                    else:
                        try:
                            ident = _id_of(r.topic, doc)
                        except KeyError:
                            self.undecodable += 1
                            continue
                        entry = self.by_id.setdefault((r.topic, ident), Delivered())
                    entry.count += 1
                    if not entry.first:
                        entry.first = r.value
                        entry.first_seen = round(time.monotonic() - self.t0, 1)
                    elif digest not in entry.digests and entry.other is None:
                        entry.other = r.value
                    entry.digests.add(digest)

    async def caught_up(self) -> bool:
        """Whether the collector has read every output partition to its high watermark."""
        consumer = self._consumer
        if consumer is None:
            return False
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            if await consumer.position(tp) < high:
                return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# -- the run -------------------------------------------------------------------------


@dataclass
class FaultRecord:
    kind: str
    target: str
    started_s: float
    ended_s: float = 0.0
    kills: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    all_ready_s: float | None = None
    progress_s: float | None = None
    recovered_s: float | None = None

    @property
    def time_to_recover(self) -> float | None:
        return None if self.recovered_s is None else round(self.recovered_s - self.ended_s, 2)

    @property
    def outage(self) -> float | None:
        return None if self.recovered_s is None else round(self.recovered_s - self.started_s, 2)


class Harness:
    def __init__(self, cfg: Config, data: Dataset, broker: ProxiedBroker, work: Path) -> None:
        self.cfg = cfg
        self.data = data
        self.broker = broker
        self.work = work
        self.t0 = time.monotonic()
        self.rng = random.Random(cfg.seed)
        self.app_id = f"faults-{cfg.seed}"
        extra = ["--policy", str(cfg.policy)] if cfg.policy else []
        self.workers = [Worker(n, broker.url, self.app_id, cfg.partitions, work, self.t0, extra)
                        for n in ("w1", "w2")]
        self.plan = cfg.plan if cfg.plan is not None else default_plan(cfg.kills, self.rng)
        self.faults: list[FaultRecord] = []
        self.collector = Collector(broker.bootstrap, self.t0)
        self.produced = 0
        self.produce_started: float | None = None
        self.produce_done: float | None = None
        self.faults_done = 0
        self.faults_finished_at: float | None = None
        self.samples: list[tuple[float, float, int]] = []  # (t, processed, ready workers)
        self.crashes: list[dict[str, Any]] = []
        self.session: aiohttp.ClientSession | None = None
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.lag_gauge: dict[str, float] = {}
        self.rate = cfg.rate or max(50.0, len(data.records) / max(
            30.0, sum(FAULT_SECONDS.get(k, 12) for k in self.plan)))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, text: str) -> None:
        _log(self.cfg, self.t0, text)

    def processed(self) -> float:
        return sum(inc.events for w in self.workers for inc in w.incarnations)

    # -- background tasks --

    async def monitor(self) -> None:
        assert self.session is not None
        while True:
            ready = 0
            for w in self.workers:
                w.poll_log()
                inc = w.current
                if inc is None or w.stopped:
                    continue
                if not w.alive():
                    if not w.expect_exit and inc.ended is None:
                        code = w.proc.returncode if w.proc else None
                        self.crashes.append({"worker": w.name, "incarnation": inc.number,
                                             "at_s": round(self.now(), 1), "code": code})
                        self.log(f"{w.name} exited by itself (code {code}); restarting")
                        w._end(f"crashed ({code})")
                        w.start()
                    continue
                got = await _get(self.session, f"http://{inc.metrics_addr}/metrics")
                if got is not None and got[0] == 200:
                    inc.events = max(inc.events, metric_sum(got[1], "riskwatch_events_total"))
                got = await _get(self.session, f"http://{inc.metrics_addr}/readyz")
                if got is not None and got[0] == 200:
                    ready += 1
            self.samples.append((self.now(), self.processed(), ready))
            await asyncio.sleep(0.5)

    async def produce(self) -> None:
        records = self.data.records
        total = len(records)
        slots = len(self.plan) + 1
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=5,
                                    request_timeout_ms=60_000, max_batch_size=64 * 1024)
        await producer.start()
        self.produce_started = self.now()
        try:
            pending: list[asyncio.Future[Any]] = []
            for i, (topic, key, value) in enumerate(records):
                if self.faults_finished_at is None and i % 20 == 0:
                    # Keep some input for every fault still to come...
                    while self.faults_finished_at is None and i >= total * (
                            self.faults_done + 1) / slots:
                        await asyncio.sleep(0.2)
                    # ...and pace the rest.
                    ahead = (i - self._paced_from) / self.rate - (
                        time.monotonic() - self._paced_at)
                    if self.faults_finished_at is None and ahead > 0:
                        await asyncio.sleep(ahead)
                pending.append(await producer.send(topic, key=key, value=value))
                self.produced = i + 1
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)
            await producer.flush()
        finally:
            await producer.stop()
        self.produce_done = self.now()

    _paced_from = 0
    _paced_at = 0.0

    def _repace(self) -> None:
        """Restart the pacing clock (after a gate wait, do not burst to catch up)."""
        self._paced_from = self.produced
        self._paced_at = time.monotonic()

    # -- waiting --

    async def wait_for(self, what: Callable[[], bool], timeout: float, step: float = 0.05
                       ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in self.workers:
                w.poll_log()
            if what():
                return True
            await asyncio.sleep(step)
        return False

    async def all_ready(self) -> bool:
        assert self.session is not None
        for w in self.workers:
            inc = w.current
            if inc is None or not w.alive() or w.stopped:
                return False
            got = await _get(self.session, f"http://{inc.metrics_addr}/readyz", timeout=0.5)
            if got is None or got[0] != 200:
                return False
        return True

    async def wait_recovered(self, rec: FaultRecord, timeout: float = 120.0) -> None:
        """Both workers ready, and input being processed again (or all of it done)."""
        base = self.processed()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rec.all_ready_s is None and await self.all_ready():
                rec.all_ready_s = round(self.now(), 2)
            if rec.progress_s is None and self.processed() > base:
                rec.progress_s = round(self.now(), 2)
            if rec.all_ready_s is not None and rec.progress_s is None and (
                    self.produce_done is not None and self.processed() >= self.produced):
                rec.progress_s = rec.all_ready_s
            if rec.all_ready_s is not None and rec.progress_s is not None:
                rec.recovered_s = max(rec.all_ready_s, rec.progress_s)
                return
            await asyncio.sleep(0.25)

    def pick(self) -> tuple[Worker, Worker]:
        victim = self.rng.choice(self.workers)
        other = self.workers[1 - self.workers.index(victim)]
        return victim, other

    # -- faults --

    async def run_fault(self, kind: str) -> FaultRecord:
        victim, other = self.pick()
        rec = FaultRecord(kind, victim.name, round(self.now(), 2))
        proxy = self.broker.proxy

        def kill(w: Worker, why: str) -> None:
            inc = w.current
            phase = w.kill9()
            rec.kills.append({"worker": w.name, "incarnation": inc.number if inc else None,
                              "phase": phase, "at_s": round(self.now(), 2), "when": why})
            self.log(f"  kill -9 {w.name} (phase {phase}, {why})")

        if kind == "kill":
            kill(victim, "steady state")
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            victim.start()
        elif kind == "kill_in_recovery":
            kill(victim, "to restart it")
            latency = 0.0
            for attempt in range(4):
                victim.start()
                in_recovery = await self.wait_for(lambda: victim.phase == "recovery", 90,
                                                  step=0.02)
                if in_recovery:
                    kill(victim, f"during table recovery (attempt {attempt + 1})")
                    break
                # Recovery was over before the log showed it: slow the network, retry.
                latency = 150.0 * (attempt + 1)
                proxy.set_latency(latency)
                kill(victim, f"missed the recovery window; retry at {latency:.0f} ms")
            proxy.restore()
            rec.detail["latency_to_widen_window_ms"] = latency
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            victim.start()
        elif kind == "kill_in_rebalance":
            kill(victim, "to start a rebalance")
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            victim.start()
            mark = len(other.phases)
            hit = await self.wait_for(
                lambda: any(p == "rebalance" for _, p in other.phases[mark:]), 60, step=0.02)
            kill(other, "during a rebalance" if hit else "no rebalance seen in 60 s")
            rec.detail["rebalance_seen"] = hit
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            other.start()
        elif kind == "stop_cont":
            from streams.config import Settings

            pause = Settings().fast().session_timeout + self.rng.uniform(2.0, 4.0)
            victim.sigstop()
            self.log(f"  SIGSTOP {victim.name} for {pause:.1f}s")
            await asyncio.sleep(pause)
            victim.sigcont()
            rec.detail["stopped_s"] = round(pause, 1)
        elif kind == "latency":
            ms = self.rng.choice([100, 200, 300])
            hold = self.rng.uniform(8.0, 12.0)
            proxy.set_latency(ms)
            self.log(f"  proxy latency {ms} ms for {hold:.1f}s")
            await asyncio.sleep(hold)
            proxy.restore()
            rec.target, rec.detail = "network", {"latency_ms": ms, "seconds": round(hold, 1)}
        elif kind in ("stall", "refuse"):
            hold = self.rng.uniform(4.0, 9.0) if kind == "stall" else self.rng.uniform(2.0, 5.0)
            proxy.blackout(kind)  # type: ignore[arg-type]
            self.log(f"  proxy blackout ({kind}) for {hold:.1f}s")
            await asyncio.sleep(hold)
            proxy.restore()
            rec.target, rec.detail = "network", {"seconds": round(hold, 1)}
        elif kind == "reset":
            resets = []
            for _ in range(3):
                resets.append(proxy.reset_all())
                await asyncio.sleep(1.0)
            rec.target, rec.detail = "network", {"connections_reset": resets}
            self.log(f"  proxy reset connections {resets}")
        else:
            raise ValueError(f"unknown fault {kind!r}")
        rec.ended_s = round(self.now(), 2)
        await self.wait_recovered(rec)
        return rec

    async def drained(self) -> bool:
        tps = [TopicPartition(t, p) for t in CUSTOMER_TOPICS for p in range(self.cfg.partitions)]
        try:
            ends = await true_end_offsets(self.broker.bootstrap, tps)
            done = await committed_offsets(self.broker.bootstrap, self.app_id, tps)
        except Exception:
            return False
        return all(done.get(tp, -1) >= end for tp, end in ends.items() if end > 0)

    async def run(self) -> dict[str, Any]:
        from streams.admin import ensure_topics

        cfg = self.cfg
        run_deadline = time.monotonic() + cfg.deadline
        await ensure_topics(self.broker.bootstrap, cfg.partitions)
        self.session = aiohttp.ClientSession()
        tasks: list[asyncio.Task[Any]] = []
        try:
            for w in self.workers:
                w.start()
            ok = await self.wait_for(lambda: all(w.phase == "ready" for w in self.workers), 120,
                                     step=0.2)
            if not ok:
                raise RuntimeError("workers not ready in 120 s: " + "; ".join(
                    f"{w.name} {w.phase}" for w in self.workers))
            await self.collector.start()
            tasks.append(asyncio.ensure_future(self.monitor()))
            self._repace()
            tasks.append(asyncio.ensure_future(self.produce()))
            self.log(f"{len(self.data.records)} events at {self.rate:.0f}/s; plan: "
                     f"{', '.join(self.plan)}")
            await asyncio.sleep(self.rng.uniform(*cfg.gap) + 1.0)
            for kind in self.plan:
                if time.monotonic() > run_deadline:
                    self.log("run deadline reached: skipping the remaining faults")
                    break
                self.log(f"fault {len(self.faults) + 1}/{len(self.plan)}: {kind} "
                         f"(produced {self.produced}, processed {self.processed():.0f})")
                rec = await self.run_fault(kind)
                self.faults.append(rec)
                self.log(f"  recovered in {rec.time_to_recover}s (outage {rec.outage}s)")
                self.faults_done += 1
                self._repace()
                await asyncio.sleep(self.rng.uniform(*cfg.gap))
            self.faults_finished_at = self.now()
            self.log(f"faults done; producing the rest ({len(self.data.records) - self.produced}"
                     " events) at full speed")
            await asyncio.wait_for(tasks[1], max(10.0, run_deadline - time.monotonic()))
            drained_at = None
            while time.monotonic() < run_deadline:
                if await self.drained():
                    drained_at = self.now()
                    break
                await asyncio.sleep(1.0)
            self.log(f"input committed at {drained_at}s; waiting for outputs to settle")
            settled_at = None
            while time.monotonic() < run_deadline:
                quiet = time.monotonic() - self.collector.last_change
                if quiet >= cfg.settle and await self.collector.caught_up():
                    settled_at = self.now()
                    break
                await asyncio.sleep(0.5)
            # Every input record is committed: the workers' lag gauge should say 0.
            self.lag_gauge = {}
            for w in self.workers:
                inc = w.current
                got = await _get(self.session, f"http://{inc.metrics_addr}/metrics") if (
                    inc is not None and w.alive()) else None
                if got is not None and got[0] == 200:
                    self.lag_gauge[w.name] = metric_sum(got[1], "riskwatch_consumer_lag")
            return self.report(drained_at, settled_at)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for w in self.workers:
                w.poll_log()
                w.terminate()
            await self.collector.stop()
            await self.session.close()

    # -- the report --

    def report(self, drained_at: float | None, settled_at: float | None) -> dict[str, Any]:
        from schemas.codec import loads

        oracle = self.data.oracle
        stream = self.collector.by_id
        got_ids = {k for k, e in stream.items() if _deterministic(loads(e.first))}
        missing = sorted(set(oracle) - set(stream))
        unexpected = sorted(got_ids - set(oracle))
        multi = {k: e for k, e in stream.items() if e.count > 1}
        conflicting = {k: e for k, e in stream.items() if len(e.digests) > 1}
        conflicting_det = [k for k, e in conflicting.items() if _deterministic(loads(e.first))]
        dl_conflicting = {k: e for k, e in self.collector.dead_letter_ids.items()
                          if len(e.digests) > 1}
        differs = []
        for key in set(oracle) & set(stream):
            if loads(stream[key].first) != oracle[key]:
                differs.append(key)

        def explain(doc: dict[str, Any]) -> str:
            return (f"{doc.get('customer_id')} {doc.get('rule_id') or doc.get('action')} "
                    f"trigger={doc.get('trigger_event_id')} {doc.get('reason_codes')}")

        def field_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)}

        first_produce = self.produce_started or 0.0
        end = drained_at or self.now()
        rates = []
        for (t1, p1, _), (t2, p2, _) in zip(self.samples, self.samples[10:], strict=False):
            if t2 > t1:
                rates.append((p2 - p1) / (t2 - t1))
        backlog_from = self.faults_finished_at
        drain_rate = None
        if backlog_from is not None and drained_at is not None and drained_at > backlog_from:
            before = [p for t, p, _ in self.samples if t <= backlog_from]
            after = [p for t, p, _ in self.samples if t <= drained_at]
            if before and after:
                drain_rate = round((after[-1] - before[-1]) / (drained_at - backlog_from), 1)
        kills = [k for f in self.faults for k in f.kills]
        proxy_stats = self.broker.proxy.stats()
        events = len(self.data.records)
        result: dict[str, Any] = {
            "config": {**{k: v for k, v in asdict(self.cfg).items()
                          if k not in ("out", "work")},
                       "plan": self.plan, "rate_per_s": round(self.rate, 1)},
            "input": {"events": events, "customers": self.data.customers,
                      "days": self.data.days, "by_topic": self.data.by_topic,
                      "partitions": self.cfg.partitions},
            "oracle": {"outputs": len(oracle), "order_dependent_excluded":
                       self.data.order_dependent,
                       "replay_seconds": round(self.data.replay_seconds, 2)},
            "outputs": {
                "ids_delivered": len(stream),
                "records_read": self.collector.records,
                "missing": len(missing),
                "not_in_oracle": len(unexpected),
                "ids_delivered_more_than_once": len(multi),
                "extra_deliveries": sum(e.count - 1 for e in stream.values()),
                "ids_with_different_payloads": len(conflicting),
                "ids_with_different_payloads_deterministic": len(conflicting_det),
                "ids_with_different_payloads_order_dependent": len(conflicting)
                - len(conflicting_det),
                "dead_letter_ids_with_different_payloads": len(dl_conflicting),
                "payload_differs_from_oracle": len(differs),
                "dead_letters_by_reason": dict(self.collector.dead_letters),
                "undecodable": self.collector.undecodable,
                "missing_examples": [
                    f"{t} {explain(oracle[(t, i)])}" for t, i in missing[:10]],
                "not_in_oracle_examples": [
                    f"{t} {explain(loads(stream[(t, i)].first))} "
                    f"first seen at {stream[(t, i)].first_seen}s" for t, i in unexpected[:10]],
                "different_payload_examples": [
                    {"id": f"{t} {i}", "first_seen_s": e.first_seen,
                     "reason_codes": loads(e.first).get("reason_codes"),
                     "fields": field_diff(loads(e.first), loads(e.other))}
                    for (t, i), e in list(conflicting.items())[:5] if e.other is not None],
                "differs_from_oracle_examples": [
                    {"id": f"{t} {i}", "fields": field_diff(oracle[(t, i)],
                                                            loads(stream[(t, i)].first))}
                    for t, i in sorted(differs)[:5]],
            },
            "faults": [{
                "kind": f.kind, "target": f.target, "started_s": f.started_s,
                "ended_s": f.ended_s, "kills": f.kills, "detail": f.detail,
                "all_ready_s": f.all_ready_s, "progress_s": f.progress_s,
                "time_to_recover_s": f.time_to_recover, "outage_s": f.outage,
            } for f in self.faults],
            "kills": {
                "total": len(kills),
                "by_phase": dict(Counter(k["phase"] for k in kills)),
                "during_rebalance": sum(1 for k in kills if k["phase"] in ("rebalance",
                                                                           "assigned")),
                "during_recovery": sum(1 for k in kills if k["phase"] == "recovery"),
            },
            "recovery_seconds": _summary([f.time_to_recover for f in self.faults]),
            "throughput": {
                "produced": self.produced,
                "seconds_first_produce_to_committed": round(end - first_produce, 1),
                "events_per_s_overall": round(events / max(1e-9, end - first_produce), 1),
                "events_per_s_peak_5s": round(max(rates), 1) if rates else None,
                "events_per_s_backlog_drain": drain_rate,
                "handled_including_redeliveries": int(self.processed()),
                "paced_rate_during_faults": round(self.rate, 1),
            },
            "consumer_lag_gauge_when_committed": self.lag_gauge,
            "timeline": {"input_committed_s": drained_at, "outputs_settled_s": settled_at,
                         "faults_finished_s": self.faults_finished_at},
            "workers": {w.name: {
                "incarnations": [asdict(i) | {"log": i.log.name} for i in w.incarnations],
                "recoveries_s": _recoveries(w.phases),
                "errors_in_logs": dict(w.errors.most_common(8)),
            } for w in self.workers},
            "crashes": self.crashes,
            "proxy": proxy_stats,
            "code": _code_version(),
            "machine": {"cpus": os.cpu_count(), "loadavg_at_start": self.load_at_start,
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        }
        result["_ids"] = {"missing": [f"{t} {i}" for t, i in missing],
                          "not_in_oracle": [f"{t} {i}" for t, i in unexpected],
                          "conflicting": [f"{t} {i}" for t, i in conflicting]}
        result["ok"] = bool(
            drained_at is not None and not missing and not unexpected and not conflicting_det
            and not dl_conflicting)
        return result


def summarise_baseline(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """What the fault-free run already showed, and what only the faults caused."""
    b, r = base["_ids"], run["_ids"]
    only = {k: sorted(set(r[k]) - set(b[k])) for k in ("missing", "not_in_oracle")}
    bo = base["outputs"]
    return {
        "missing": bo["missing"], "not_in_oracle": bo["not_in_oracle"],
        "ids_with_different_payloads": bo["ids_with_different_payloads"],
        "missing_examples": bo["missing_examples"],
        "not_in_oracle_examples": bo["not_in_oracle_examples"],
        "seconds_first_produce_to_committed":
            base["throughput"]["seconds_first_produce_to_committed"],
        "events_per_s_overall": base["throughput"]["events_per_s_overall"],
        "events_per_s_peak_5s": base["throughput"]["events_per_s_peak_5s"],
        "fault_induced": {"missing": only["missing"], "not_in_oracle": only["not_in_oracle"]},
    }


def _code_version() -> dict[str, Any]:
    """The commit the run used, and whether the pipeline's code differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "streams", "alerts", "detectors", "schemas")
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "uncommitted_changes": [line[3:] for line in changed.splitlines() if line]}


def _recoveries(phases: list[tuple[float, str]]) -> list[list[float]]:
    """[start, seconds] of each table recovery (log: recovery started -> worker ready)."""
    out, began = [], None
    for t, phase in phases:
        if phase == "recovery" and began is None:
            began = t
        elif phase == "ready" and began is not None:
            out.append([round(began, 1), round(t - began, 2)])
            began = None
        elif phase not in ("recovery", "ready"):
            began = None if phase.startswith(("kill", "crashed", "stopped")) else began
    return out


def _summary(values: list[float | None]) -> dict[str, Any]:
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"n": 0, "not_recovered": len(values)}
    return {"n": len(got), "not_recovered": len(values) - len(got), "min": got[0],
            "median": got[len(got) // 2], "max": got[-1],
            "mean": round(sum(got) / len(got), 2)}


def run(cfg: Config) -> dict[str, Any]:
    """Build the data, run the faults, write the results; return them."""
    work = cfg.work or Path(tempfile.mkdtemp(prefix="riskwatch-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        _log(cfg, t0, f"portfolio and oracle in {work}")
        data = build_dataset(cfg, work)
        _log(cfg, t0, f"{len(data.records)} events ({data.customers} customers, {data.days} "
             f"days); oracle {len(data.oracle)} outputs (+{data.order_dependent} "
             f"order-dependent, excluded)")
        base: dict[str, Any] | None = None
        if cfg.baseline:
            _log(cfg, t0, "baseline: the same input, no faults")
            quiet = replace(cfg, plan=[], work=work / "baseline", seed=cfg.seed)
            (work / "baseline").mkdir(exist_ok=True)
            with ProxiedBroker(log_path=work / "baseline" / "tansu.log") as broker:
                base = asyncio.run(Harness(quiet, data, broker, work / "baseline").run())
            _log(cfg, t0, f"baseline: missing {base['outputs']['missing']}, not in oracle "
                 f"{base['outputs']['not_in_oracle']}")
        with ProxiedBroker(log_path=work / "tansu.log") as broker:
            result = asyncio.run(Harness(cfg, data, broker, work).run())
        if base is not None:
            result["baseline"] = summarise_baseline(base, result)
            fi = result["baseline"]["fault_induced"]
            result["ok"] = bool(result["timeline"]["input_committed_s"] is not None
                                and not fi["missing"] and not fi["not_in_oracle"]
                                and not result["outputs"]["ids_with_different_payloads_"
                                                          "deterministic"]
                                and not result["outputs"]["dead_letter_ids_with_different_"
                                                          "payloads"])
        result.pop("_ids", None)
        result["work_dir"] = str(work) if cfg.keep else None
        if cfg.out is not None:
            write_results(result, cfg.out)
        return result
    finally:
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)


# -- the 10x burst -------------------------------------------------------------------


@dataclass
class BurstConfig:
    steady_rate: float = 250.0
    steady_seconds: float = 10.0
    factor: float = 10.0
    burst_seconds: float = 6.0
    customers: int = 1_000
    seed: int = 11
    partitions: int = 4
    drain_timeout: float = 90.0
    verbose: bool = False


async def _burst(cfg: BurstConfig, broker: ProxiedBroker, work: Path) -> dict[str, Any]:
    from schemas.codec import encode
    from streams.admin import ensure_topics
    from streams.simulator import Portfolio, iter_events

    need = int(cfg.steady_rate * cfg.steady_seconds
               + cfg.steady_rate * cfg.factor * cfg.burst_seconds)
    days = max(1, math.ceil(need / (cfg.customers * 1.5)))
    records: list[tuple[str, bytes, bytes]] = []
    while len(records) < need:
        records = []
        for topic, key, obj in iter_events(Portfolio(customers=cfg.customers, days=days,
                                                     seed=cfg.seed)):
            records.append((topic, key.encode(), encode(obj)))
        days += 2
    records = records[:need]
    customer_events = sum(1 for t, _, _ in records if t in CUSTOMER_TOPICS)
    await ensure_topics(broker.bootstrap, cfg.partitions)
    t0 = time.monotonic()
    worker = Worker("burst", broker.url, f"burst-{cfg.seed}", cfg.partitions, work, t0)
    worker.start()
    session = aiohttp.ClientSession()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    samples: list[dict[str, float]] = []
    produced_customer = 0
    try:
        ok = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ok:
            worker.poll_log()
            ok = worker.phase == "ready"
            if not worker.alive():
                raise RuntimeError("burst worker exited at start")
            await asyncio.sleep(0.2)
        if not ok:
            raise RuntimeError("burst worker not ready in 90 s")
        await producer.start()
        inc = worker.current
        assert inc is not None

        async def processed() -> float | None:
            got = await _get(session, f"http://{inc.metrics_addr}/metrics")
            if got is None or got[0] != 200:
                return None
            return metric_sum(got[1], "riskwatch_events_total")

        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                done = await processed()
                if done is not None:
                    samples.append({"t": time.monotonic() - t0, "processed": done,
                                    "produced": produced_customer,
                                    "lag": max(0.0, produced_customer - done),
                                    "vmhwm_kb": worker.vmhwm_kb() or 0})
                await asyncio.sleep(0.25)

        sampler = asyncio.ensure_future(sample())
        phases = [("steady", cfg.steady_rate, cfg.steady_seconds),
                  ("burst", cfg.steady_rate * cfg.factor, cfg.burst_seconds)]
        marks: dict[str, float] = {}
        i = 0
        for name, rate, seconds in phases:
            marks[f"{name}_start"] = time.monotonic() - t0
            started = time.monotonic()
            count = int(rate * seconds)
            for n in range(count):
                topic, key, value = records[i]
                i += 1
                await producer.send(topic, key=key, value=value)
                if topic in CUSTOMER_TOPICS:
                    produced_customer += 1
                if n % 50 == 0:
                    ahead = n / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await producer.flush()
            marks[f"{name}_end"] = time.monotonic() - t0
            if name == "steady":
                marks["vmhwm_after_steady_kb"] = worker.vmhwm_kb() or 0
        drained_at = None
        deadline = time.monotonic() + cfg.drain_timeout
        while time.monotonic() < deadline:
            done = await processed()
            if done is not None and done >= customer_events:
                drained_at = time.monotonic() - t0
                break
            if not worker.alive():
                break
            await asyncio.sleep(0.25)
        stop.set()
        await sampler
        peak_lag = max((s["lag"] for s in samples), default=0.0)
        return {
            "events": len(records),
            "customer_events": customer_events,
            "steady_rate": cfg.steady_rate,
            "burst_rate": cfg.steady_rate * cfg.factor,
            "burst_seconds": cfg.burst_seconds,
            "peak_lag": int(peak_lag),
            "drain_seconds_after_burst": (round(drained_at - marks["burst_end"], 2)
                                          if drained_at is not None else None),
            "drained": drained_at is not None,
            "vmhwm_after_steady_mb": round(marks["vmhwm_after_steady_kb"] / 1024, 1),
            "vmhwm_peak_mb": round((worker.vmhwm_kb() or 0) / 1024, 1),
            "alive": worker.alive(),
            "incarnations": len(worker.incarnations),
            "errors_in_log": dict(worker.errors.most_common(5)),
            "burst_produce_seconds": round(marks["burst_end"] - marks["burst_start"], 2),
            "lag_samples": [(round(s["t"], 2), int(s["lag"])) for s in samples[::4]],
        }
    finally:
        await producer.stop()
        await session.close()
        worker.poll_log()
        worker.terminate()


def run_burst(cfg: BurstConfig | None = None, work: Path | None = None) -> dict[str, Any]:
    """One worker; a steady rate, then ``factor`` times it: lag, drain time, memory."""
    cfg = cfg or BurstConfig()
    own = work is None
    work = work or Path(tempfile.mkdtemp(prefix="riskwatch-burst-"))
    try:
        with ProxiedBroker(log_path=work / "tansu.log") as broker:
            return asyncio.run(_burst(cfg, broker, work))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


# -- output files ----------------------------------------------------------------------


def write_results(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "faults.md").write_text(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    o, t, k = r["outputs"], r["throughput"], r["kills"]
    inp, cfg = r["input"], r["config"]
    lines = [
        "# Fault injection: two workers through a fault proxy",
        "",
        f"Generated by `python -m bench.faults` (`scripts/faults.sh`) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC at commit "
        f"{r.get('code', {}).get('commit')} (uncommitted changes: "
        f"{', '.join(r.get('code', {}).get('uncommitted_changes') or []) or 'none'}); "
        f"seed {cfg['seed']}; "
        f"{'PASS' if r['ok'] else 'FAIL'}.",
        "",
        f"Input: {inp['events']} events, {inp['customers']} customers, {inp['days']} days, "
        f"{inp['partitions']} partitions. Oracle (replay): {r['oracle']['outputs']} output ids "
        f"(+{r['oracle']['order_dependent_excluded']} order-dependent, excluded).",
        "",
        "## Correctness",
        "",
        "| check | value | required |",
        "|---|---|---|",
        f"| outputs missing vs the oracle | {o['missing']} | 0 |",
        f"| outputs not in the oracle | {o['not_in_oracle']} | 0 |",
        f"| ids with different payloads | {o['ids_with_different_payloads']} "
        f"({o['ids_with_different_payloads_deterministic']} deterministic, "
        f"{o['ids_with_different_payloads_order_dependent']} order-dependent) | 0 |",
        f"| dead-letter ids with different payloads | "
        f"{o['dead_letter_ids_with_different_payloads']} | 0 |",
        f"| ids delivered more than once | {o['ids_delivered_more_than_once']} "
        f"({o['extra_deliveries']} extra deliveries) | allowed |",
        f"| payload differs from the oracle's (same id) | {o['payload_differs_from_oracle']} "
        f"| informational |",
        f"| dead letters by reason | {o['dead_letters_by_reason'] or 'none'} | "
        f"duplicate_event only |",
        "",
    ]
    bl = r.get("baseline")
    if bl is not None:
        fi = bl["fault_induced"]
        lines += [
            f"Fault-free baseline (same input, same two workers, no faults): missing "
            f"{bl['missing']}, not in the oracle {bl['not_in_oracle']} (examples: "
            f"{'; '.join(bl['missing_examples'] + bl['not_in_oracle_examples']) or 'none'}). "
            f"**Caused by the faults** (in this run, not in the baseline): missing "
            f"{len(fi['missing'])}, not in the oracle {len(fi['not_in_oracle'])}.",
            "",
        ]
    for title, key in (("Missing", "missing_examples"), ("Not in the oracle",
                                                         "not_in_oracle_examples")):
        if o[key]:
            lines += [f"{title} (first {len(o[key])}):", ""]
            lines += [f"* `{x}`" for x in o[key]] + [""]
    for title, key in (("Same id, different payloads", "different_payload_examples"),
                       ("Differs from the oracle", "differs_from_oracle_examples")):
        if o[key]:
            lines += [f"{title}:", ""]
            lines += [f"* `{x['id']}`: {json.dumps(x['fields'], default=str)[:400]}"
                      for x in o[key]] + [""]
    lines += [
        f"Workers' `riskwatch_consumer_lag` once every input record was committed: "
        f"{r.get('consumer_lag_gauge_when_committed')} (should be 0).",
        "",
        "## Faults and recovery",
        "",
        f"{k['total']} kill -9 ({k['during_rebalance']} during a rebalance, "
        f"{k['during_recovery']} during table recovery; by phase {k['by_phase']}). "
        "Time to recover: from the end of the fault (restart issued, SIGCONT, network "
        "restored) until both workers answer /readyz 200 and input is processed again.",
        "",
        "| # | fault | target | kills (phase) | detail | to recover (s) | outage (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, f in enumerate(r["faults"], 1):
        kills = ", ".join(f"{x['worker']}#{x['incarnation']} ({x['phase']})" for x in f["kills"])
        lines.append(f"| {n} | {f['kind']} | {f['target']} | {kills or '-'} | "
                     f"{json.dumps(f['detail'])[:80]} | {f['time_to_recover_s']} | "
                     f"{f['outage_s']} |")
    rs = r["recovery_seconds"]
    lines += [
        "",
        f"Recovery time: {rs}.",
        "",
        "## Throughput",
        "",
        f"* {t['produced']} events, first produce to all input committed: "
        f"{t['seconds_first_produce_to_committed']} s "
        f"({t['events_per_s_overall']} events/s overall; input paced at "
        f"{t['paced_rate_during_faults']}/s while faults ran)",
        f"* peak (5 s window): {t['events_per_s_peak_5s']} events/s; backlog drain after the "
        f"last fault: {t['events_per_s_backlog_drain']} events/s",
        f"* events handled including redeliveries after faults: "
        f"{t['handled_including_redeliveries']}",
        "",
        "## Worker logs",
        "",
    ]
    for name, w in r["workers"].items():
        recs = ", ".join(f"{d}s at {t}s" for t, d in w["recoveries_s"])
        lines.append(f"* {name}: table recoveries (log: recovery start to worker ready): "
                     f"{recs or 'none'}")
        lines.append(f"* {name}: {len(w['incarnations'])} incarnations; errors: "
                     f"{json.dumps(w['errors_in_logs'])[:600] if w['errors_in_logs'] else 'none'}")
    if r["crashes"]:
        lines += ["", f"Unexpected exits: {r['crashes']}"]
    m = r.get("machine", {})
    lines += ["", f"Proxy: {r['proxy']}", "",
              f"Machine: {m.get('cpus')} CPUs shared with other work; load average "
              f"{m.get('loadavg_at_start')} at start, {m.get('loadavg_at_end')} at end.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=None,
                        help="events/s while faults run (default: spread over the plan)")
    parser.add_argument("--plan", default=None,
                        help="comma-separated faults (" + ",".join(FAULT_SECONDS)
                        + "), or none for a fault-free baseline")
    parser.add_argument("--quick", action="store_true", help="a small run (about 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    parser.add_argument("--deadline", type=float, default=None, help="seconds, at most")
    parser.add_argument("--policy", type=Path, default=None,
                        help="policy YAML for replay and the workers")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                        help="run the input without faults first (default: on, off --quick)")
    args = parser.parse_args(argv)
    given = {k: v for k, v in dict(events=args.events, customers=args.customers,
                                    kills=args.kills, deadline=args.deadline).items()
             if v is not None}
    plan = [p.strip() for p in args.plan.split(",") if p.strip() and p.strip() != "none"] \
        if args.plan else None
    if plan and (bad := [p for p in plan if p not in FAULT_SECONDS]):
        parser.error(f"unknown faults {bad}")
    common = dict(seed=args.seed, partitions=args.partitions, rate=args.rate, out=args.out,
                  work=args.work, keep=args.keep, policy=args.policy,
                  baseline=not args.quick if args.baseline is None else args.baseline, **given)
    cfg = Config.quick(**common) if args.quick else Config(**common)
    if plan is not None:
        cfg.plan = plan  # [] (--plan none): a fault-free baseline
    result = run(cfg)
    o = result["outputs"]
    if "baseline" in result:
        fi = result["baseline"]["fault_induced"]
        print(f"\nbaseline (no faults): missing {result['baseline']['missing']}, not in oracle "
              f"{result['baseline']['not_in_oracle']}; caused by the faults: missing "
              f"{len(fi['missing'])}, not in oracle {len(fi['not_in_oracle'])}")
    print(f"\n{'PASS' if result['ok'] else 'FAIL'}: missing {o['missing']}, not in oracle "
          f"{o['not_in_oracle']}, different payloads {o['ids_with_different_payloads']}, "
          f"ids delivered more than once {o['ids_delivered_more_than_once']}; "
          f"{result['kills']['total']} kill -9; recovery {result['recovery_seconds']}; "
          f"results in {cfg.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
