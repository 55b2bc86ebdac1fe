"""streams.tuning on the real broker: seeking back to committed offsets."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from streams.tuning import _seek_to_committed

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
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
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
