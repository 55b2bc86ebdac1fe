"""Direct delivery (streams.tuning.use_fetch_loop) on the real broker: the agent
takes each record before the next one is delivered, with a pass of the event loop in
between, exactly as with Faust's own fetch loop.

That interleaving is what the full fault run needs: a version that yielded every 100
records let the agent fall behind the fetch loop and queued records of a batch
fetched for an assignment a rebalance had already replaced.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.streams.helpers import new_topic

pytestmark = pytest.mark.broker

APP = Path(__file__).with_name("direct_app.py")
RECORDS = 400


async def _topic_with_records(broker, n: int) -> str:
    topic = await new_topic(broker, "direct", 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, orjson.dumps({"i": i}), key=b"k%d" % i)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


@pytest.mark.parametrize("loop", ["direct", "faust"])
async def test_each_record_is_taken_before_the_next_is_delivered(broker, tmp_path, loop):
    topic = await _topic_with_records(broker, RECORDS)
    report = tmp_path / "report.json"
    log = (tmp_path / "app.log").open("wb")
    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, str(APP), broker.url, topic, str(RECORDS), str(report)]
    proc = subprocess.Popen([*args, *(["faust"] if loop == "faust" else [])], cwd=root,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 90
        while not report.exists():
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no report in 90 s"
            await asyncio.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    seen = orjson.loads(report.read_bytes())
    assert seen["direct"] is (loop == "direct")
    assert seen["n"] == RECORDS
    # The agent found at most the record it takes in its buffer, and the event loop ran
    # a pass (the callback the previous record scheduled) before every record.
    assert seen["max_buffered"] <= 1, seen
    assert seen["loop_ran"] == RECORDS, seen
