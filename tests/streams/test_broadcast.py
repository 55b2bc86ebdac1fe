"""``streams.broadcast.Follower`` on a real broker: a topic created after the worker
started is still followed, and a record the handler fails on is dead-lettered once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import encode
from schemas.errors import DecodeError
from schemas.models import SectorIndicator
from streams.admin import ensure_topics
from streams.broadcast import Follower
from streams.broker import EmbeddedBroker
from streams.config import Settings

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker with no topics yet (the session broker has them all)."""
    log: Path = tmp_path_factory.mktemp("bare") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


def _indicator(sector: str, value: float) -> bytes:
    return encode(SectorIndicator(
        event_id=f"si-{sector}", event_time=dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC),
        sector=sector, indicator="prosperity_index", value=value, period="2026-01"))


def test_a_topic_created_later_is_followed_and_a_failing_record_is_dead_lettered(bare):
    handled: list[str] = []
    rejected: list[tuple[int, str]] = []

    async def handle(event: SectorIndicator) -> None:
        if event.sector == "bad":
            raise RuntimeError("a bug in the segment monitor")
        handled.append(event.sector)

    async def reject(value: bytes, error: DecodeError, partition: int, offset: int) -> None:
        rejected.append((offset, error.reason))

    async def run() -> None:
        follower = Follower(Settings(broker=f"kafka://{bare.bootstrap}"), "sector-indicators",
                            handle, reject, recheck_s=0.3)

        async def follow() -> None:  # as the worker's task does
            while True:
                await follower.run()

        task = asyncio.create_task(follow())
        try:
            await asyncio.sleep(1.0)  # the topic does not exist yet
            await ensure_topics(bare.bootstrap, 2)
            producer = AIOKafkaProducer(bootstrap_servers=bare.bootstrap)
            await producer.start()
            try:
                for sector, value in (("retail", 101.5), ("bad", 99.0), ("energy", 98.0)):
                    await producer.send_and_wait("sector-indicators", key=sector.encode(),
                                                 value=_indicator(sector, value), partition=0)
            finally:
                await producer.stop()
            for _ in range(200):
                if len(handled) >= 2:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # a restart from the beginning would show up here
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert handled == ["retail", "energy"]
    assert rejected == [(1, "processing_error")]
