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
        *,
        recheck_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.handle = handle
        self.reject = reject
        #: How long :meth:`run` waits for a topic that does not exist yet before it
        #: returns (the caller runs it again, with fresh metadata).
        self.recheck_s = recheck_s
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
            if not tps:
                # Not created yet: nothing to catch up with now, but the topic must be
                # followed once it exists. Return after a while; run again, with fresh
                # metadata (it used to wait for ever on no partitions).
                self.caught_up.set()
                await asyncio.sleep(self.recheck_s)
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                for tp, records in batch.items():
                    for r in records:
                        await self._one(r.value or b"", tp.partition, r.offset)
                if not batch:
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def _one(self, value: bytes, partition: int, offset: int) -> None:
        """Decode and handle one record; dead-letter it if either fails. A failure to
        handle used to escape: the reader restarted from the beginning and handled every
        record again, for ever if the record always failed."""
        try:
            event = decode(self.topic, value)
        except DecodeError as exc:
            await self.reject(value, exc, partition, offset)
            return
        try:
            await self.handle(event)
        except Exception as exc:
            log.error("%s[%d]@%d not handled: %s", self.topic, partition, offset,
                      type(exc).__name__)
            await self.reject(value, DecodeError(
                "processing_error", f"not handled: {type(exc).__name__}: {exc}",
                topic=self.topic), partition, offset)
