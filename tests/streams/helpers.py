"""Helpers for integration tests: produce records and collect outputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from schemas.codec import loads
from schemas.topics import TOPICS
from streams.admin import consume_all, produce


async def new_topic(broker: Any, prefix: str, partitions: int) -> str:
    """A new topic of ``partitions`` partitions on the test broker; its name."""
    import uuid

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=1)])
    finally:
        await admin.close()
    return topic


def send(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    return asyncio.run(produce(bootstrap, list(records)))


def collect(
    bootstrap: str,
    topics: list[str],
    keep: Callable[[str, dict[str, Any]], bool],
    *,
    expect: int,
    timeout: float = 60.0,
) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """Distinct output records kept by ``keep`` once at least ``expect`` arrived (or timeout)."""
    deadline = time.monotonic() + timeout
    found: list[tuple[str, dict[str, Any], dict[str, bytes]]] = []
    while time.monotonic() < deadline:
        raw = asyncio.run(consume_all(bootstrap, topics, idle=0.5, until=10))
        found = []
        seen: set[tuple[str, str]] = set()
        for topic, _key, value, headers in raw:
            doc = loads(value)
            # Consumers deduplicate by output id (several workers or consumer groups may
            # produce the same output: at-least-once with deterministic ids).
            ident = (topic, doc[TOPICS[topic].id_field])
            if ident in seen:
                continue
            seen.add(ident)
            if keep(topic, doc):
                found.append((topic, doc, dict(headers)))
        if len(found) >= expect:
            return found
        time.sleep(0.5)
    return found
