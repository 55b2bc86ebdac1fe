"""PolicyWatcher's handling of one risk-policy record (no broker: ``_handle`` alone)."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from alerts.policy import DEFAULT_POLICY, policy_document
from schemas.codec import encode
from schemas.errors import DecodeError
from schemas.models import RiskPolicyRecord
from streams.control import PolicyWatcher


def _record(version: str, minute: int) -> bytes:
    policy = msgspec.structs.replace(DEFAULT_POLICY, version=version)
    return encode(RiskPolicyRecord(
        event_id=f"policy-{version}", event_time=dt.datetime(2026, 3, 1, 12, minute,
                                                             tzinfo=dt.UTC),
        version=version, actor="ana", reason="test", document=policy_document(policy)))


async def test_a_policy_that_fails_to_apply_is_dead_lettered_and_the_next_is_applied():
    applied: list[str] = []
    rejected: list[tuple[int, DecodeError]] = []

    def apply(policy, record):
        if policy.version == "v-bad":
            raise RuntimeError("boom")
        applied.append(policy.version)

    async def reject(value, error, partition, offset):
        rejected.append((offset, error))

    watcher = PolicyWatcher(["127.0.0.1:1"], apply, reject)
    await watcher._handle(_record("v-good", 1), 0, 0)
    await watcher._handle(_record("v-bad", 2), 0, 1)
    # Not applied: not current, dead-lettered with its reason, and the watcher goes on.
    assert watcher.current is not None and watcher.current.version == "v-good"
    assert [(offset, e.reason) for offset, e in rejected] == [(1, "processing_error")]
    assert "v-bad" in str(rejected[0][1]) and "boom" in str(rejected[0][1])
    await watcher._handle(_record("v-next", 3), 0, 2)
    assert applied == ["v-good", "v-next"]
    assert watcher.current.version == "v-next"


async def test_a_tombstone_is_no_policy_and_stops_nothing():
    # A compacted risk-policy topic may hold tombstones (value None).
    applied: list[str] = []

    async def reject(value, error, partition, offset):  # pragma: no cover - must not run
        raise AssertionError(f"rejected a tombstone: {error}")

    watcher = PolicyWatcher(["127.0.0.1:1"], lambda p, r: applied.append(p.version), reject)
    await watcher._handle(None, 0, 0)
    await watcher._handle(_record("v-after", 1), 0, 1)
    assert applied == ["v-after"]


@pytest.mark.broker
async def test_history_and_audit_readers_skip_tombstones(broker):
    from aiokafka import AIOKafkaProducer

    from streams.control import read_audit, read_policy_history

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("risk-policy", key=b"tombstoned-version", value=None)
        await producer.send_and_wait("audit", key=b"risk-policy", value=None)
    finally:
        await producer.stop()
    history = await read_policy_history(broker.bootstrap)
    chain = await read_audit(broker.bootstrap)
    assert all(r.version != "tombstoned-version" for r in history)
    assert all(r is not None for r in chain)
