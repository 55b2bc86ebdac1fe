"""``riskwatch demo``: the whole pipeline on the embedded broker, with a live summary.

Starts the Tansu broker, creates the topics, starts a worker (a subprocess, as
in production), streams a generated portfolio into it, and prints events/s,
alerts by severity and reason, and dead letters until ``--duration`` passes or
Ctrl-C; then stops everything and prints a final summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.codec import encode, loads
from schemas.errors import BrokerError
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.config import Settings
from streams.security import aiokafka_kwargs, start_client

#: The embedded broker listens on loopback without TLS or SASL.
EMBEDDED = Settings()


def embedded_env() -> dict[str, str]:
    """Worker environment for the embedded broker: any ``RISKWATCH_KAFKA_*`` security
    variables of the caller (meant for a real cluster) blanked out."""
    env = {name: "" for name in os.environ if name.startswith("RISKWATCH_KAFKA_")}
    env["RISKWATCH_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    return env


@dataclass
class DemoStats:
    """What the demo has seen so far."""

    produced: int = 0
    #: Records produced per topic (reference topics are not counted as processed).
    produced_by: Counter[str] = field(default_factory=Counter)
    outputs: Counter[str] = field(default_factory=Counter)
    severity: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    processed: float = 0.0


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` (a /readyz endpoint) until it answers 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"worker exited with code {proc.returncode} before ready")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.25)
    raise BrokerError(f"worker not ready at {url} after {timeout}s")


def start_worker(broker_url: str, metrics_addr: str, data_dir: Path, partitions: int,
                 log: IO[Any] | int, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``riskwatch worker`` as a subprocess with single-machine timings.

    ``env`` adds variables to the worker's environment (Kafka security, secret files).
    """
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", broker_url, "--fast",
           "--metrics-addr", metrics_addr, "--data-dir", str(data_dir),
           "--partitions", str(partitions), *(extra or [])]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})


async def _produce(bootstrap: str, customers: int, days: int, seed: int, rate: float,
                   poison_rate: float, stats: DemoStats, stop: asyncio.Event,
                   security: Settings = EMBEDDED) -> None:
    from streams.simulator import Portfolio, iter_events

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                **aiokafka_kwargs(security))
    await start_client(producer, security, bootstrap, "demo produce")
    started = time.monotonic()
    try:
        config = Portfolio(customers=customers, days=days, seed=seed, poison_rate=poison_rate)
        for topic, key, record in iter_events(config):
            if stop.is_set():
                break
            value = record if isinstance(record, bytes) else encode(record)
            await producer.send(topic, key=key.encode(), value=value)
            stats.produced += 1
            stats.produced_by[topic] += 1
            if rate > 0 and stats.produced % 100 == 0:
                ahead = stats.produced / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif stats.produced % 1000 == 0:
                await asyncio.sleep(0)
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(bootstrap: str, stats: DemoStats, stop: asyncio.Event,
                   security: Settings = EMBEDDED) -> None:
    consumer = AIOKafkaConsumer(*OUTPUT_TOPICS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", **aiokafka_kwargs(security))
    await start_client(consumer, security, bootstrap, "demo consume")
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batch.values():
                for r in records:
                    stats.outputs[r.topic] += 1
                    if r.topic == "risk-alerts":
                        alert = loads(r.value)
                        stats.severity[alert["severity"]] += 1
                        for code in alert["reason_codes"]:
                            stats.reasons[code] += 1
                        if len(stats.samples) < 5 and alert["severity"] in ("high", "critical"):
                            text = "; ".join(e["text"] for e in alert["evidence"])
                            stats.samples.append(f"[{alert['severity']}] {alert['alert_type']}: "
                                                 f"{text}")
                    elif r.topic == "dead-letters":
                        stats.dead_letters[loads(r.value)["reason"]] += 1
    finally:
        await consumer.stop()


def _fmt(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


async def run_demo(*, customers: int, days: int, seed: int, duration: float, rate: float,
                   poison_rate: float, partitions: int, out: TextIO = sys.stdout) -> int:
    """Run the demo; return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stats = DemoStats()
    with tempfile.TemporaryDirectory(prefix="riskwatch-demo-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        print(f"broker      {broker.url} (embedded Tansu)", file=out, flush=True)
        await ensure_topics(broker.bootstrap, partitions, security=EMBEDDED)
        metrics_addr = f"127.0.0.1:{free_port()}"
        log_path = Path(tmp) / "worker.log"
        with log_path.open("wb") as log:
            worker = start_worker(broker.url, metrics_addr, Path(tmp) / "data", partitions, log,
                                  env=embedded_env())
            try:
                await wait_ready(f"http://{metrics_addr}/readyz", 90, worker)
                print(f"worker      ready; metrics on http://{metrics_addr}/metrics", file=out,
                      flush=True)
                tasks = [
                    asyncio.create_task(_produce(broker.bootstrap, customers, days, seed, rate,
                                                 poison_rate, stats, stop)),
                    asyncio.create_task(_consume(broker.bootstrap, stats, stop)),
                ]
                code = await _summarise(metrics_addr, stats, stop, duration, out, worker)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
        if code != 0:
            print(log_path.read_text()[-3000:], file=sys.stderr)
    _final(stats, out)
    return code


async def _summarise(metrics_addr: str, stats: DemoStats, stop: asyncio.Event, duration: float,
                     out: TextIO, worker: subprocess.Popen[bytes]) -> int:
    started = time.monotonic()
    last_t, last_n = started, 0.0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set() and time.monotonic() - started < duration:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            if worker.poll() is not None:
                print(f"error: worker exited with code {worker.returncode}", file=out)
                return 1
            text: Any = ""
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"http://{metrics_addr}/metrics",
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    text = await resp.text()
            processed = _metric_sum(text, "riskwatch_events_total")
            now = time.monotonic()
            rate = (processed - last_n) / (now - last_t)
            last_t, last_n = now, processed
            stats.processed = processed
            print(f"[{now - started:5.1f}s] produced {stats.produced:>8}  processed "
                  f"{int(processed):>8}  {rate:8.0f} events/s  alerts {_fmt(stats.severity)}  "
                  f"dead letters {sum(stats.dead_letters.values())}", file=out, flush=True)
    return 0


def _final(stats: DemoStats, out: TextIO) -> None:
    print("\n== Riskwatch demo summary", file=out)
    reference = Counter({t: n for t, n in stats.produced_by.items()
                         if t not in CUSTOMER_TOPICS})
    print(f"events produced     {stats.produced}", file=out)
    if reference:
        print(f"  of which reference data every worker reads: {_fmt(reference)} "
              "(not counted as processed)", file=out)
    print(f"events processed    {int(stats.processed)}", file=out)
    print(f"outputs             {_fmt(stats.outputs)}", file=out)
    print(f"alerts by severity  {_fmt(stats.severity)}", file=out)
    print(f"alerts by reason    {_fmt(stats.reasons)}", file=out)
    print(f"dead letters        {_fmt(stats.dead_letters)}", file=out)
    for sample in stats.samples:
        print(f"  e.g. {sample}", file=out)
    out.flush()
