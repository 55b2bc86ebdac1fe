"""``streams.admin.consume_all`` on a slow broker (the fault proxy adds latency)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench.proxy import ProxiedBroker
from streams.admin import consume_all

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBroker]:
    log: Path = tmp_path_factory.mktemp("slow") / "tansu.log"
    with ProxiedBroker(log_path=log) as b:
        yield b


def test_a_first_fetch_slower_than_idle_does_not_end_the_read_early(slow) -> None:
    # The audit chain and the policy history are read with consume_all: an early, empty
    # answer on a slow broker read as "no chain yet", and the next publish forked it.
    async def run() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=slow.bootstrap)
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait("audit", key=b"k", value=b"%d" % i)
        finally:
            await producer.stop()
        slow.proxy.set_latency(400)  # every chunk held 400 ms, longer than idle
        try:
            return await consume_all(slow.bootstrap, ["audit"], idle=0.3, until=30)
        finally:
            slow.proxy.set_latency(0)

    got = asyncio.run(run())
    assert [value for _, _, value, _ in got] == [b"%d" % i for i in range(20)]
