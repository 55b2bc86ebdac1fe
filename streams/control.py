"""Live policy: publishing versions with an audit record, and applying them in every worker.

Publishing writes a :class:`~schemas.models.RiskPolicyRecord` to the compacted
``risk-policy`` topic and appends a hash-chained record to ``audit`` (all audit
records share one key, so one partition keeps their order). Every worker runs a
:class:`PolicyWatcher`: a consumer *without* a group, assigned every partition
of ``risk-policy``, so each worker sees every version and applies the newest
without a restart or redeploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from alerts import audit
from alerts.envelope import Emit, to_message
from alerts.policy import Policy, parse_policy, policy_document
from schemas.codec import decode, encode
from schemas.errors import DecodeError, PolicyError, RiskwatchError
from schemas.models import AuditRecord, RiskPolicyRecord
from streams.admin import consume_all

log = logging.getLogger("riskwatch.control")

AUDIT_KEY = "risk-policy"


async def read_policy_history(bootstrap: list[str] | str) -> list[RiskPolicyRecord]:
    """Every valid published policy record, oldest first."""
    records = []
    for _topic, _key, value, _headers in await consume_all(bootstrap, ["risk-policy"], idle=1.0,
                                                           until=20):
        with contextlib.suppress(DecodeError):
            records.append(decode("risk-policy", value))
    return sorted(records, key=lambda r: (r.event_time, r.version))


async def read_audit(bootstrap: list[str] | str) -> list[AuditRecord]:
    """The audit chain as stored, in sequence order (undecodable records raise)."""
    out = []
    for _topic, _key, value, _headers in await consume_all(bootstrap, ["audit"], idle=1.0,
                                                           until=20):
        out.append(decode("audit", value))
    return sorted(out, key=lambda r: r.seq)


def current_policy(history: list[RiskPolicyRecord]) -> RiskPolicyRecord | None:
    return history[-1] if history else None


async def publish_policy(
    bootstrap: list[str] | str,
    policy: Policy,
    *,
    actor: str,
    why: str,
    action: str = "policy.publish",
    now: dt.datetime | None = None,
    source: str = "urn:riskwatch:control",
) -> tuple[RiskPolicyRecord, AuditRecord]:
    """Publish ``policy`` and append its audit record; refuse to reuse a version."""
    if not actor.strip():
        raise PolicyError("publish: --actor is required")
    if not why.strip():
        raise PolicyError("publish: --why is required (the audit record says why)")
    now = now or dt.datetime.now(dt.UTC)
    history = await read_policy_history(bootstrap)
    document = policy_document(policy)
    for record in history:
        if record.version == policy.version and record.document != document:
            raise PolicyError(
                f"publish: version {policy.version!r} was already published with other "
                "content; give the new policy a new version"
            )
    previous = current_policy(history)
    chain = await read_audit(bootstrap)
    problems = audit.verify_chain(chain)
    if problems:
        raise RiskwatchError("publish: the audit chain is broken: " + "; ".join(problems[:3]))
    record = RiskPolicyRecord(
        event_id=f"policy-{policy.version}-{int(now.timestamp() * 1000)}",
        event_time=now,
        version=policy.version,
        actor=actor,
        reason=why,
        document=document,
    )
    entry = audit.append(
        chain[-1] if chain else None,
        actor=actor,
        action=action,
        subject=AUDIT_KEY,
        version=policy.version,
        before=previous.document if previous else None,
        after=document,
        why=why,
        when=now,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
        await producer.send_and_wait("risk-policy", key=policy.version.encode(),
                                     value=encode(record))
        key, value, headers = to_message(Emit("audit", AUDIT_KEY, entry.audit_id, entry), source)
        await producer.send_and_wait("audit", key=key, value=value, headers=headers)
    except KafkaError as exc:
        raise RiskwatchError(f"publish: broker refused the write: {exc!r}") from exc
    finally:
        await producer.stop()
    return record, entry


class PolicyWatcher:
    """Follows ``risk-policy`` from the beginning and applies the newest valid version."""

    def __init__(
        self,
        bootstrap: list[str],
        apply: Callable[[Policy, RiskPolicyRecord], None],
        reject: Callable[[bytes, DecodeError, int, int], Awaitable[None]],
    ) -> None:
        self.bootstrap = bootstrap
        self.apply = apply
        self.reject = reject
        self.current: RiskPolicyRecord | None = None
        self.caught_up = asyncio.Event()

    def _newer(self, record: RiskPolicyRecord) -> bool:
        cur = self.current
        return cur is None or (record.event_time, record.version) > (cur.event_time, cur.version)

    async def _handle(self, value: bytes, partition: int, offset: int) -> None:
        try:
            record = decode("risk-policy", value)
            policy = parse_policy(record.document, source=f"risk-policy@{offset}")
            if policy.version != record.version:
                raise PolicyError(f"record version {record.version!r} differs from the "
                                  f"document's version {policy.version!r}")
        except PolicyError as exc:
            await self.reject(value, DecodeError("invalid_value", str(exc), topic="risk-policy",
                                                 field="document"), partition, offset)
            return
        except DecodeError as exc:
            await self.reject(value, exc, partition, offset)
            return
        if self._newer(record):
            self.current = record
            self.apply(policy, record)
            log.warning("policy %s applied (published by %s)", record.version, record.actor)

    async def run(self) -> None:
        """Consume forever (cancel to stop)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic("risk-policy") or set()
            tps = [TopicPartition("risk-policy", p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends: dict[Any, int] = await consumer.end_offsets(tps) if tps else {}
            if not tps:
                self.caught_up.set()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batch.items():
                    for r in records:
                        await self._handle(r.value, tp.partition, r.offset)
                if not self.caught_up.is_set():
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= ends.get(tp, 0) for tp in tps):
                        self.caught_up.set()
        finally:
            await consumer.stop()
