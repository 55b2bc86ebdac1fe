"""Session fixtures: one embedded Tansu broker and one worker for the whole run."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.demo import start_worker, wait_ready

# CI runs are reproducible: the same examples every run (a failure found locally with a
# random seed is kept as an explicit example or a regression test).
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None,
                                     print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

PARTITIONS = 4


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        asyncio.run(ensure_topics(b.bootstrap, PARTITIONS))
        yield b


class WorkerProc:
    """A ``riskwatch worker`` subprocess and where to reach it."""

    def __init__(self, proc: subprocess.Popen[bytes], metrics_addr: str, log: Path) -> None:
        self.proc = proc
        self.metrics_addr = metrics_addr
        self.log = log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch_worker(broker: EmbeddedBroker, tmp: Path, *extra: str) -> WorkerProc:
    """Start a worker on ``broker`` and wait until it is ready."""
    addr = f"127.0.0.1:{free_port()}"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"worker-{addr.rsplit(':', 1)[1]}.log"
    with log.open("wb") as handle:
        proc = start_worker(broker.url, addr, tmp / "data", PARTITIONS, handle, list(extra))
    worker = WorkerProc(proc, addr, log)
    try:
        asyncio.run(wait_ready(f"http://{addr}/readyz", 90, proc))
    except Exception:
        worker.stop()
        raise RuntimeError(f"worker failed to start:\n{log.read_text()[-4000:]}") from None
    return worker


@pytest.fixture(scope="session")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    """One worker, shared by the integration tests (each uses its own customers)."""
    w = launch_worker(broker, tmp_path_factory.mktemp("worker"), "--app-id", "riskwatch-test")
    yield w
    w.stop()
    if os.environ.get("RISKWATCH_TEST_SHOW_WORKER_LOG"):
        print(w.log.read_text())
