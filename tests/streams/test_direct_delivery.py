"""Direct delivery (streams.tuning.use_fetch_loop with a Sink) on the real broker.

Every record reaches the sink, none reaches the agent, and what the sink acknowledges
is committed; with a second member joining in the middle (a rebalance), each
partition's records still arrive in offset order within each consumer generation
(no record skipped, none before an earlier one), and together the two members get
every record.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.streams.helpers import new_topic

pytestmark = pytest.mark.broker

APP = Path(__file__).with_name("direct_app.py")
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 2


async def _topic_with_records(broker: Any, n: int) -> str:
    topic = await new_topic(broker, "direct", PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, orjson.dumps({"i": i}), key=b"k%d" % i,
                                partition=i % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


def _start(broker: Any, topic: str, group: str, report: Path, delay_ms: int,
           log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(APP), broker.url, topic, group, str(report), str(delay_ms)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def _read(report: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads(report.read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return {"delivered": [], "to_agent": 0}


async def _committed(broker: Any, topic: str, group: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p))
                for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def _until(check: Any, procs: list[subprocess.Popen[bytes]], logs: list[Path],
                 seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} not within {seconds:.0f} s"
        await asyncio.sleep(0.2)


def _in_order(delivered: list[list[int]]) -> None:
    """Within a generation, each partition's offsets go up one at a time."""
    last: dict[tuple[int, int], int] = {}
    for generation, partition, offset in delivered:
        before = last.get((generation, partition))
        assert before is None or offset == before + 1, (generation, partition, before, offset)
        last[(generation, partition)] = offset


async def test_every_record_goes_to_the_sink_and_is_committed(broker, tmp_path):
    n = 300
    topic = await _topic_with_records(broker, n)
    group = f"direct-{uuid.uuid4().hex[:8]}"
    report, log_path = tmp_path / "a.json", tmp_path / "a.log"
    with log_path.open("wb") as log:
        proc = _start(broker, topic, group, report, 0, log)
        try:
            await _until(lambda: len(_read(report)["delivered"]) >= n, [proc], [log_path],
                         90, f"{n} records")
            committed: dict[int, int | None] = {}

            async def all_committed() -> bool:
                committed.update(await _committed(broker, topic, group))
                return all(committed[p] == n // PARTITIONS for p in range(PARTITIONS))

            deadline = time.monotonic() + 30
            while not await all_committed():
                assert time.monotonic() < deadline, committed
                await asyncio.sleep(0.3)
        finally:
            proc.kill()
            proc.wait()
    seen = _read(report)
    assert seen["to_agent"] == 0
    assert sorted((p, o) for _, p, o in seen["delivered"]) == sorted(
        (i % PARTITIONS, i // PARTITIONS) for i in range(n))
    _in_order(seen["delivered"])


async def test_a_rebalance_loses_nothing_and_keeps_each_generation_in_order(broker, tmp_path):
    n = 1200
    topic = await _topic_with_records(broker, n)
    group = f"direct-{uuid.uuid4().hex[:8]}"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[subprocess.Popen[bytes]] = []
    handles = [path.open("wb") for path in logs]
    try:
        procs.append(_start(broker, topic, group, reports[0], 10, handles[0]))
        await _until(lambda: len(_read(reports[0])["delivered"]) >= 100, procs, logs[:1], 90,
                     "the first member's first records")
        procs.append(_start(broker, topic, group, reports[1], 10, handles[1]))

        def covered() -> bool:
            got = {(p, o) for r in reports for _, p, o in _read(r)["delivered"]}
            return len(got) == n

        await _until(covered, procs, logs, 120, "every record")
        assert _read(reports[1])["delivered"], "the second member got no partition"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for handle in handles:
            handle.close()
    by_member = [_read(r) for r in reports]
    for seen in by_member:
        assert seen["to_agent"] == 0
        _in_order(seen["delivered"])
    generations: dict[int, set[int]] = defaultdict(set)
    for seen in by_member:
        for generation, partition, _ in seen["delivered"]:
            generations[partition].add(generation)
    assert any(len(gens) > 1 for gens in generations.values()), generations
