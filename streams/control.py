"""Live policy: publishing versions with an audit record, and applying them in every worker.

Publishing writes a :class:`~schemas.models.RiskPolicyRecord` to the compacted
``risk-policy`` topic and appends a hash-chained record to ``audit`` (all audit
records share one key, so one partition keeps their order). Every worker runs a
:class:`PolicyWatcher`: a consumer *without* a group, assigned every partition
of ``risk-policy``, so each worker sees every version and applies the newest
without a restart or redeploy.

Crisis mode is switched by publishing the current policy with its crisis window
started or ended at the switch under a new version (:func:`publish_crisis`), so the
switch is audited like any other change. Every function takes ``security`` (the Kafka client security
settings; None = the ``RISKWATCH_KAFKA_*`` variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from alerts import audit
from alerts.envelope import Emit, to_message
from alerts.policy import DEFAULT_POLICY, Policy, parse_policy, publishable_document
from schemas.codec import decode, encode
from schemas.errors import DecodeError, PolicyError, RiskwatchError
from schemas.models import AuditRecord, RiskPolicyRecord
from streams.admin import consume_all
from streams.config import Settings
from streams.security import aiokafka_kwargs, client_security, start_client

log = logging.getLogger("riskwatch.control")

AUDIT_KEY = "risk-policy"

_NOT_ID = re.compile(r"[^A-Za-z0-9._:@/-]")


class AlreadyInState(PolicyError):
    """The requested switch (crisis on/off) is already in force: nothing published."""


class VersionConflict(PolicyError):
    """The policy version was already published with other content."""


async def read_policy_history(bootstrap: list[str] | str, *,
                              security: Settings | None = None) -> list[RiskPolicyRecord]:
    """Every valid published policy record, oldest first (tombstones, which a compacted
    topic may hold, are no records)."""
    records = []
    for _topic, _key, value, _headers in await consume_all(bootstrap, ["risk-policy"], idle=1.0,
                                                           until=20, security=security):
        if value is None:
            continue
        with contextlib.suppress(DecodeError):
            records.append(decode("risk-policy", value))
    return sorted(records, key=lambda r: (r.event_time, r.version))


async def read_audit(bootstrap: list[str] | str, *,
                     security: Settings | None = None) -> list[AuditRecord]:
    """The audit chain as stored, in sequence order (undecodable records raise; a
    tombstone is skipped, and the record it deleted then shows as a gap in the chain)."""
    out = []
    for _topic, _key, value, _headers in await consume_all(bootstrap, ["audit"], idle=1.0,
                                                           until=20, security=security):
        if value is not None:
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
    security: Settings | None = None,
    history: list[RiskPolicyRecord] | None = None,
) -> tuple[RiskPolicyRecord, AuditRecord]:
    """Publish ``policy`` and append its audit record; refuse to reuse a version.

    ``history`` is the already-read policy history, if the caller has it.
    """
    if not actor.strip():
        raise PolicyError("publish: --actor is required")
    if not why.strip():
        raise PolicyError("publish: --why is required (the audit record says why)")
    security = client_security(security)
    now = now or dt.datetime.now(dt.UTC)
    if history is None:
        history = await read_policy_history(bootstrap, security=security)
    try:  # what every worker will parse: refuse a policy they would reject
        document = publishable_document(policy, source=policy.version)
    except PolicyError as exc:
        raise PolicyError(f"publish: the policy would not validate: {exc}") from None
    for record in history:
        if record.version == policy.version and record.document != document:
            raise VersionConflict(
                f"publish: version {policy.version!r} was already published with other "
                "content; give the new policy a new version"
            )
    previous = current_policy(history)
    chain = await read_audit(bootstrap, security=security)
    problems = audit.verify_chain(chain)
    if problems:
        raise RiskwatchError("publish: the audit chain is broken: " + "; ".join(problems[:3]))
    record = RiskPolicyRecord(
        # Versions may hold characters an event id may not ("v1+crisis-on-2").
        event_id=f"policy-{_NOT_ID.sub('_', policy.version)}-{int(now.timestamp() * 1000)}",
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
    value = encode(record)
    try:  # what every worker will decode: refuse to publish what they would reject
        decode("risk-policy", value, now=now)
        decode("audit", encode(entry))
    except DecodeError as exc:
        raise PolicyError(f"publish: the record would not validate: {exc}") from None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                **aiokafka_kwargs(security))
    await start_client(producer, security, bootstrap, "publish policy")
    try:
        # The audit record first: a policy only reaches the workers once its change is
        # audited. Without transactions the two writes can still part: a failed policy
        # write leaves an audit record of a version that never reached ``risk-policy``
        # (a failed attempt, visible as such), never an applied policy without one.
        key, audit_value, headers = to_message(
            Emit("audit", AUDIT_KEY, entry.audit_id, entry), source)
        await producer.send_and_wait("audit", key=key, value=audit_value, headers=headers)
        await producer.send_and_wait("risk-policy", key=policy.version.encode(), value=value)
    except KafkaError as exc:
        raise RiskwatchError(f"publish: broker refused the write: {exc!r}") from exc
    finally:
        await producer.stop()
    return record, entry


def crisis_version(base_version: str, active: bool, history: list[RiskPolicyRecord]) -> str:
    """``"<base>+crisis-on-<n>"`` (or ``-off-``): ``n`` counts the crisis switches of
    ``base`` so far, plus one; ``base`` loses any earlier ``+crisis-`` suffix.

    >>> crisis_version("tight-2026+crisis-on-1", False, [])
    'tight-2026+crisis-off-1'
    """
    base = base_version.split("+crisis-", 1)[0]
    n = 1 + sum(1 for r in history if r.version.startswith(base + "+crisis-"))
    suffix = f"+crisis-{'on' if active else 'off'}-{n}"
    return base[: 64 - len(suffix)] + suffix


async def publish_crisis(
    bootstrap: list[str] | str,
    active: bool,
    *,
    actor: str,
    why: str,
    fallback: Policy | None = None,
    now: dt.datetime | None = None,
    source: str = "urn:riskwatch:control",
    security: Settings | None = None,
) -> tuple[RiskPolicyRecord, AuditRecord]:
    """Publish the current policy with crisis mode switched ``active``, audited.

    The current policy is the newest published one (``fallback``, else the default
    policy, when none was). Switching on starts a crisis window at ``now``, open-ended;
    switching off ends it at ``now`` and keeps the days it deferred deferred (the
    window moves to ``crisis.deferred``), so they never count against a customer
    afterwards. Raises :class:`AlreadyInState` when switching on while crisis mode is
    in force at ``now``, or off while it is not switched on.
    """
    security = client_security(security)
    now = now or dt.datetime.now(dt.UTC)
    history = await read_policy_history(bootstrap, security=security)
    current = current_policy(history)
    policy = (parse_policy(current.document, source=f"risk-policy {current.version}")
              if current is not None else fallback or DEFAULT_POLICY)
    crisis = policy.crisis
    if active and crisis.in_force(now):
        raise AlreadyInState(f"crisis mode is already on (policy {policy.version})")
    if not active and not crisis.active:
        raise AlreadyInState(f"crisis mode is already off (policy {policy.version})")
    since = crisis_switched_on_at(history) if crisis.active and crisis.start is None else None
    switched_crisis = (crisis.switched_on(now, since=since) if active
                       else crisis.switched_off(now, since=since))
    version = crisis_version(policy.version, active, history)
    switched = msgspec.structs.replace(policy, version=version, crisis=switched_crisis)
    return await publish_policy(bootstrap, switched, actor=actor, why=why,
                                action=f"crisis.{'on' if active else 'off'}", now=now,
                                source=source, security=security, history=history)


def crisis_switched_on_at(history: list[RiskPolicyRecord]) -> dt.datetime | None:
    """When the newest run of published policies with crisis mode on began: the
    publication time of its first record (None when the newest policy has it off)."""
    since = None
    for record in reversed(history):
        crisis = record.document.get("crisis") if isinstance(record.document, dict) else None
        if not (isinstance(crisis, dict) and crisis.get("active") is True):
            break
        since = record.event_time
    return since


class PolicyWatcher:
    """Follows ``risk-policy`` from the beginning and applies the newest valid version."""

    def __init__(
        self,
        bootstrap: list[str],
        apply: Callable[[Policy, RiskPolicyRecord], None],
        reject: Callable[[bytes, DecodeError, int, int], Awaitable[None]],
        *,
        security: Settings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = client_security(security)
        self.apply = apply
        self.reject = reject
        self.current: RiskPolicyRecord | None = None
        self.caught_up = asyncio.Event()

    def _newer(self, record: RiskPolicyRecord) -> bool:
        cur = self.current
        return cur is None or (record.event_time, record.version) > (cur.event_time, cur.version)

    async def _handle(self, value: bytes | None, partition: int, offset: int) -> None:
        if value is None:  # a tombstone (compaction of an old version): no policy
            log.info("risk-policy[%d]@%d: tombstone skipped", partition, offset)
            return
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
        if not self._newer(record):
            return
        try:
            self.apply(policy, record)
        except Exception as exc:  # a bug: keep following the topic on the policy in force
            log.error("policy %s at risk-policy[%d]@%d could not be applied: %s: %s",
                      record.version, partition, offset, type(exc).__name__, exc)
            await self.reject(value, DecodeError(
                "processing_error", f"policy {record.version!r} not applied: "
                f"{type(exc).__name__}: {exc}", topic="risk-policy", field="document"),
                partition, offset)
            return
        # Only an applied policy is current (a later valid version is still applied).
        self.current = record
        log.warning("policy %s applied (published by %s)", record.version, record.actor)

    async def run(self) -> None:
        """Consume forever (cancel to stop)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **aiokafka_kwargs(self.security))
        await start_client(consumer, self.security, self.bootstrap, "follow risk-policy")
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
