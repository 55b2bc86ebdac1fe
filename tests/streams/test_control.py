"""PolicyWatcher's handling of one risk-policy record (no broker: ``_handle`` alone)."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import pytest

from alerts.policy import DEFAULT_POLICY, policy_document
from schemas.codec import encode
from schemas.errors import DecodeError
from schemas.models import RiskPolicyRecord
from streams.control import AlreadyInState, PolicyWatcher


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


# --------------------------------------------------------------------------- #
# Publishing and the crisis switch, each test on a broker of its own (the session
# broker's worker follows every policy published there)
# --------------------------------------------------------------------------- #


@pytest.fixture
def own_broker(tmp_path):
    from streams.admin import ensure_topics
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        asyncio.run(ensure_topics(b.bootstrap, 1))
        yield b


def _utc(month: int, day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=dt.UTC)


@pytest.mark.broker
async def test_crisis_on_freezes_the_dpd_clock_from_now_and_off_keeps_the_days_deferred(
        own_broker):
    from alerts.policy import parse_policy
    from detectors.delinquency import AccountLedger, Due, days_past_due, epoch_day
    from streams.control import publish_crisis

    due = epoch_day(dt.date(2026, 2, 1))
    ledger = AccountLedger("a1", due, dues=[Due("i1", due, 10_000)])
    base = msgspec.structs.replace(DEFAULT_POLICY, version="v1")

    def dpd(policy, day: dt.date) -> int:
        return days_past_due(ledger, epoch_day(day), policy.delinquency,
                             pauses=policy.pauses())

    before = dpd(base, dt.date(2026, 3, 15))
    assert before > 0
    record, entry = await publish_crisis(own_broker.bootstrap, True, actor="ana", why="flood",
                                         fallback=base, now=_utc(3, 15, 10))
    on = parse_policy(record.document)
    assert entry.action == "crisis.on" and on.crisis.active
    assert on.crisis.start == _utc(3, 15, 10) and on.crisis.end is None
    assert on.crisis.in_force(_utc(3, 15, 11)) and not on.crisis.in_force(_utc(3, 15, 9))
    # Frozen, not erased: the days past due before the crisis still count.
    assert dpd(on, dt.date(2026, 3, 15)) == before - 1  # the switch day itself is paused
    assert dpd(on, dt.date(2026, 4, 14)) == before - 1

    record, entry = await publish_crisis(own_broker.bootstrap, False, actor="ana", why="receded",
                                         now=_utc(4, 15, 10))
    off = parse_policy(record.document)
    assert entry.action == "crisis.off" and not off.crisis.active
    assert not off.crisis.in_force(_utc(4, 15, 11))
    assert [(w.start, w.end) for w in off.crisis.deferred] == [(_utc(3, 15, 10), _utc(4, 15, 10))]
    # The crisis days stay deferred: the clock goes on from where it was frozen.
    assert dpd(off, dt.date(2026, 4, 15)) == before
    assert dpd(off, dt.date(2026, 4, 25)) == before + 10

    # A second crisis adds its own window; both stay deferred after it ends.
    await publish_crisis(own_broker.bootstrap, True, actor="ana", why="storm", now=_utc(5, 1))
    with pytest.raises(AlreadyInState):
        await publish_crisis(own_broker.bootstrap, True, actor="ana", why="again", now=_utc(5, 2))
    record, _ = await publish_crisis(own_broker.bootstrap, False, actor="ana", why="over", now=_utc(5, 11))
    second = parse_policy(record.document)
    assert len(second.crisis.deferred) == 2
    assert dpd(second, dt.date(2026, 5, 21)) == before + 16 + 10  # 04-15..04-30, 05-11..05-20
    with pytest.raises(AlreadyInState):
        await publish_crisis(own_broker.bootstrap, False, actor="ana", why="off again", now=_utc(5, 12))


@pytest.mark.broker
async def test_crisis_on_starts_a_new_window_instead_of_reusing_an_old_one(own_broker):
    from alerts.policy import load_policy_text, parse_policy
    from streams.control import publish_crisis

    old = load_policy_text("version: v2\ncrisis: {active: false, start: 2025-01-01T00:00:00Z,"
                           " end: 2025-02-01T00:00:00Z}\n")
    record, entry = await publish_crisis(own_broker.bootstrap, True, actor="ana", why="storm",
                                         fallback=old, now=_utc(3, 15))
    on = parse_policy(record.document)
    assert entry.action == "crisis.on" and on.crisis.in_force(_utc(3, 15, 1))
    assert (on.crisis.start, on.crisis.end) == (_utc(3, 15), None)
    assert on.crisis.deferred == ()  # the old window was not in force: nothing deferred


@pytest.mark.broker
async def test_crisis_on_after_an_ended_window_keeps_that_windows_deferral(own_broker):
    """A window that has ended but is still marked active: on again starts a new one and
    keeps the ended window's deferral."""
    from alerts.policy import load_policy_text, parse_policy
    from streams.control import publish_crisis

    ended = load_policy_text("version: v3\ncrisis: {active: true, start: 2026-01-01T00:00:00Z,"
                             " end: 2026-01-11T00:00:00Z}\n")
    record, _ = await publish_crisis(own_broker.bootstrap, True, actor="ana", why="storm",
                                     fallback=ended, now=_utc(3, 15))
    on = parse_policy(record.document)
    assert [(w.start, w.end) for w in on.crisis.deferred] == [(_utc(1, 1), _utc(1, 11))]
    assert on.crisis.start == _utc(3, 15)


@pytest.mark.broker
async def test_crisis_off_after_a_hand_published_crisis_without_start(own_broker):
    """A policy published with ``crisis: {active: true}`` (no start) defers from the time
    it was published, not from day 0, once crisis mode is switched off."""
    from alerts.policy import load_policy_text, parse_policy
    from streams.control import publish_crisis, publish_policy

    by_hand = load_policy_text("version: v4\ncrisis: {active: true}\n")
    await publish_policy(own_broker.bootstrap, by_hand, actor="ana", why="flood", now=_utc(3, 1))
    record, _ = await publish_crisis(own_broker.bootstrap, False, actor="ana", why="over", now=_utc(3, 9))
    off = parse_policy(record.document)
    assert [(w.start, w.end) for w in off.crisis.deferred] == [(_utc(3, 1), _utc(3, 9))]


@pytest.mark.broker
async def test_a_non_finite_number_is_refused_before_anything_is_published(own_broker):
    from alerts.policy import load_policy_text
    from schemas.errors import PolicyError
    from streams.control import publish_policy

    with pytest.raises(PolicyError, match=r"finite.*\$\.large_transaction\.multiple"):
        load_policy_text("version: v-inf\nlarge_transaction: {multiple: .inf}\n")
    # A policy built in code does not go through load_policy: publishing checks it too.
    policy = msgspec.structs.replace(DEFAULT_POLICY, version="v-inf", large_transaction=(
        msgspec.structs.replace(DEFAULT_POLICY.large_transaction, multiple=float("inf"))))
    with pytest.raises(PolicyError, match=r"would not validate.*large_transaction"):
        await publish_policy(own_broker.bootstrap, policy, actor="ana", why="w", now=_utc(3, 1))
    from streams.control import read_audit, read_policy_history

    assert await read_policy_history(own_broker.bootstrap) == []
    assert await read_audit(own_broker.bootstrap) == []


@pytest.mark.broker
async def test_the_audit_record_is_written_before_the_policy(own_broker, monkeypatch):
    """A policy must never reach the workers without its audit record: the audit write
    goes first, so a failure between the two (injected: the broker refuses the policy
    write) leaves an audit record of a failed attempt, not an unaudited policy."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError

    from schemas.errors import RiskwatchError
    from streams.control import publish_policy, read_audit, read_policy_history

    real_send = AIOKafkaProducer.send_and_wait

    async def refuse_policy(self, topic, *args, **kwargs):
        if topic == "risk-policy":
            raise KafkaTimeoutError()
        return await real_send(self, topic, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", refuse_policy)
    policy = msgspec.structs.replace(DEFAULT_POLICY, version="v-order")
    with pytest.raises(RiskwatchError, match="refused the write"):
        await publish_policy(own_broker.bootstrap, policy, actor="ana", why="order",
                             now=_utc(3, 1))
    monkeypatch.undo()
    assert await read_policy_history(own_broker.bootstrap) == []
    assert [r.version for r in await read_audit(own_broker.bootstrap)] == ["v-order"]
