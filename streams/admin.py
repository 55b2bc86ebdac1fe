"""Topic administration and small producer/consumer helpers (aiokafka).

Every helper takes ``security``: the :class:`~streams.config.Settings` whose Kafka
client security (TLS, SASL) its clients use; None means the ``RISKWATCH_KAFKA_*``
environment variables (plaintext when none is set). A client that cannot start
raises :class:`~schemas.errors.BrokerError` naming the broker and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.errors import BrokerError
from schemas.topics import TOPICS
from streams.config import Settings
from streams.security import aiokafka_kwargs, client_security, describe, start_client


def topic_configs(name: str) -> dict[str, str]:
    """Kafka topic configuration for a Riskwatch topic."""
    return {"cleanup.policy": "compact"} if TOPICS[name].compacted else {}


async def ensure_topics(
    bootstrap: list[str] | str,
    partitions: int,
    names: Iterable[str] | None = None,
    *,
    timeout: float = 30.0,
    security: Settings | None = None,
) -> list[str]:
    """Create the Riskwatch topics that do not exist yet; return the created ones.

    Customer-keyed topics share one partition count, so they are co-partitioned
    with the per-customer state table.
    """
    wanted = list(names) if names is not None else list(TOPICS)
    security = client_security(security)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000),
                                **aiokafka_kwargs(security))
    try:
        await asyncio.wait_for(start_client(admin, security, bootstrap, "create topics"), timeout)
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(n, partitions, 1, topic_configs=topic_configs(n)) for n in missing]
                )
        return missing
    except BrokerError:
        raise
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(f"cannot create topics on {describe(security, bootstrap)}: "
                          f"{exc!r}") from exc
    finally:
        await admin.close()


async def produce(
    bootstrap: list[str] | str,
    records: Iterable[tuple[str, bytes | None, bytes]],
    *,
    linger_ms: int = 5,
    security: Settings | None = None,
) -> int:
    """Produce ``(topic, key, value)`` records; return how many were sent."""
    security = client_security(security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                                max_batch_size=256 * 1024, **aiokafka_kwargs(security))
    await start_client(producer, security, bootstrap, "produce")
    count = 0
    try:
        for topic, key, value in records:
            await producer.send(topic, value=value, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def consume_all(
    bootstrap: list[str] | str,
    topics: list[str],
    *,
    idle: float = 2.0,
    until: float = 60.0,
    stop_when: int | None = None,
    security: Settings | None = None,
) -> list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Read ``topics`` from the beginning (no group) until ``idle`` seconds pass
    without a record once the end offsets the broker reported at the start are reached,
    ``stop_when`` records arrived, or ``until`` seconds elapse.

    Idle time alone does not end the read before those end offsets: on a slow broker
    the first fetch may take longer than ``idle``, and an early, empty answer would
    read as "no audit chain yet" and fork the chain."""
    security = client_security(security)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **aiokafka_kwargs(security))
    await start_client(consumer, security, bootstrap, "consume")
    out: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + until
    try:
        tps = [TopicPartition(topic, p) for topic in topics
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        if tps:
            await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps) if tps else {}
        reached = not any(ends.values())
        last = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now = loop.time()
            for records in batch.values():
                for r in records:
                    out.append((r.topic, r.key, r.value, list(r.headers or ())))
                last = now
            if stop_when is not None and len(out) >= stop_when:
                break
            if not reached:
                positions = [await consumer.position(tp) for tp in tps]
                reached = all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True))
                if reached:
                    last = now
            if reached and now - last > idle and stop_when is None:
                break
    finally:
        await consumer.stop()
    return out
