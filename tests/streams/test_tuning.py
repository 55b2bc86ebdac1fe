"""streams.tuning: seeking back to committed offsets and reading high-water marks (on
the real broker), and the first-step delivery of direct delivery."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.tuning import _seek_to_committed, fetched_at_reader, highwater_reader
from tests.streams.helpers import new_topic

pytestmark = pytest.mark.broker


class _Thread:
    """What Faust's consumer thread offers the patched method: its consumer, and a
    way to run a coroutine function on its loop (here: the test's loop)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self.consumer

    async def call_thread(self, fun: Any) -> Any:
        return await fun()


async def test_partitions_without_a_committed_offset_are_rewound(broker):
    """Faust discards records fetched for a generation that ended and seeks back to the
    committed offsets; a partition with none committed must go back to its start, or
    the discarded records are never delivered (aiokafka seeks only above offset 0)."""
    topic = await new_topic(broker, "seek", 2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for partition in (0, 1):
            for n in range(5):
                await producer.send_and_wait(topic, f"{partition}-{n}".encode(),
                                             partition=partition)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"g-{topic}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        consumer.assign([tp0, tp1])
        await consumer.commit({tp1: OffsetAndMetadata(2, "")})
        consumer.seek(tp0, 4)  # fetched up to here, then discarded
        consumer.seek(tp1, 5)
        committed = await _seek_to_committed(_Thread(consumer))
        assert committed == {tp0: None, tp1: 2}
        assert await consumer.position(tp0) == 0
        assert await consumer.position(tp1) == 2
    finally:
        await consumer.stop()


async def test_highwater_reader_matches_the_consumer(broker):
    """The worker's fast high-water read agrees with aiokafka's own, and is None for a
    partition that is not assigned or not fetched yet."""
    topic = await new_topic(broker, "hw", 2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for n in range(7):
            await producer.send_and_wait(topic, b"%d" % n, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    holder: dict[str, Any] = {}
    read = highwater_reader(lambda: holder.get("consumer"))
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert read(tp0) is None  # no consumer yet
    await consumer.start()
    holder["consumer"] = consumer
    try:
        assert read(tp0) is None  # nothing assigned
        consumer.assign([tp0])
        assert read(tp0) is None  # assigned, not fetched yet
        got = 0
        while got < 7:
            batch = await consumer.getmany(tp0, timeout_ms=2000)
            got += sum(len(records) for records in batch.values())
        assert read(tp0) == consumer.highwater(tp0) == 7
        assert read(tp1) is None  # not assigned
    finally:
        await consumer.stop()


async def test_fetched_at_reader_stamps_each_fetch_response(broker):
    """The fetch gates' clock: when the fetch response that last reported a partition's
    high water was processed. 0.0 before any; a recent wall-clock time after a fetch; a
    later one after a later fetch, even one that brought no records."""
    import time

    topic = await new_topic(broker, "fa", 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50)
    holder: dict[str, Any] = {}
    fetched_at = fetched_at_reader(lambda: holder.get("consumer"))
    tp = TopicPartition(topic, 0)
    assert fetched_at(tp) == 0.0  # no consumer yet
    await consumer.start()
    holder["consumer"] = consumer
    try:
        consumer.assign([tp])
        assert fetched_at(tp) == 0.0  # assigned, not fetched yet
        before = time.time()
        got = 0
        while got < 1:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            got += sum(len(records) for records in batch.values())
        first = fetched_at(tp)
        assert before - 0.001 <= first <= time.time()
        await consumer.getmany(tp, timeout_ms=300)  # nothing more: an empty response
        assert fetched_at(tp) > first
    finally:
        await consumer.stop()
