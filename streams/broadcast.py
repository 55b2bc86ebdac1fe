"""Reference data every worker needs whole: a consumer without a group, from the beginning.

Sector indicators concern every customer of a sector, wherever their partition
lives, so each worker reads the whole ``sector-indicators`` topic (no consumer
group) and feeds the engine's segment monitor. Bad records are dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import decode
from schemas.errors import DecodeError
from streams.config import Settings
from streams.security import aiokafka_kwargs, start_client

log = logging.getLogger("riskwatch.broadcast")


class Follower:
    """Reads every partition of ``topic`` from the beginning, for ever."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        handle: Callable[[Any], Awaitable[None]],
        reject: Callable[[bytes, DecodeError, int, int], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.handle = handle
        self.reject = reject
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **aiokafka_kwargs(settings))
        await start_client(consumer, settings, settings.bootstrap_servers, f"{self.topic} reader")
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            if not tps:
                self.caught_up.set()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                for tp, records in batch.items():
                    for r in records:
                        try:
                            event = decode(self.topic, r.value or b"")
                        except DecodeError as exc:
                            await self.reject(r.value or b"", exc, tp.partition, r.offset)
                            continue
                        await self.handle(event)
                if not batch:
                    self.caught_up.set()
        finally:
            await consumer.stop()
