"""The worker's per-record handler, without a broker: what a rebalance leaves behind."""

from __future__ import annotations

from typing import Any

from alerts.engine import Engine
from alerts.policy import DEFAULT_POLICY
from streams.app import Handler
from streams.metrics import Metrics


async def _send(emit: Any) -> None:
    return None


def test_revoked_partitions_forget_how_far_they_were_read() -> None:
    """A partition that comes back is re-read from its committed offset: the offsets this
    worker read it to before must not make its topics look read (records of one topic
    would be released past unread records of another, e.g. a payment)."""
    from streams.app import StateStore

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable()), _send)
    handler.last_offsets = {("repayments", 1): 100, ("card-transactions", 1): 70,
                            ("repayments", 2): 5}
    handler.learned_offsets = {("card-transactions", 1): 80}
    # Applied with learning (the rest of what was received was still held).
    handler.applied_offsets = {("repayments", 1): 90, ("card-transactions", 1): 60,
                               ("repayments", 2): 5}
    handler.clock(1)
    handler.drop({1})
    assert handler.last_offsets == {("repayments", 2): 5}
    assert 1 not in handler.clocks
    # What the global models learned stays learned (not learned twice on a re-read).
    assert handler.learned_offsets == {("card-transactions", 1): 80, ("repayments", 1): 90}
    assert handler.applied_offsets == {("repayments", 2): 5}


class _Changelog:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    async def send(self, key: bytes, value: bytes, partition: int,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        self.sent.append((key, value, partition))
        self.headers.append(headers or [])


def _failing_changelog(fail: dict[str, int], message: str) -> Any:
    """A changelog send that raises a producer timeout while ``fail["n"]`` is above 0
    (counting it down), and writes nothing otherwise."""

    async def changelog(key: bytes, value: bytes, partition: int, headers: Any) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise TimeoutError(message)

    return changelog


class _StoreTable:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = _Changelog()


async def test_acknowledgements_never_pass_a_held_record() -> None:
    """A record held for event-time order, then a later record of the same partition
    dead-lettered at once: the later one is acknowledged only after the held one (Faust
    commits the first run of consecutive acknowledged offsets, past any gap when the
    partition has no committed offset yet: the held record would never be re-read)."""
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import CustomerProfile
    from streams.app import StateStore

    lagging = {("card-transactions", 0)}
    acked: list[tuple[str, int]] = []

    async def ack(message: tuple[str, int]) -> bool:
        acked.append(message)
        return True

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable()), _send,
                      behind=lambda topic, partition: (topic, partition) in lagging)
    handler.ack = ack
    profile = CustomerProfile(event_id="p-c1", event_time=dt.datetime(2026, 7, 1, tzinfo=dt.UTC),
                              customer_id="c1", credit_limit_minor=100_000, currency="EUR",
                              products=["credit_card"], sector="retail", region="north",
                              segment="mass", timezone="Europe/Berlin")
    await handler.receive("customer-profiles", 0, 0, b"c1", encode(profile), None,
                          ("customer-profiles", 0))
    await handler.receive("customer-profiles", 0, 1, b"c2", b"{not json", None,
                          ("customer-profiles", 1))
    await handler.flush()
    assert acked == []  # offset 1 is finished (dead-lettered), offset 0 still held
    assert handler.acks.waiting() == 2
    lagging.clear()
    await handler.release_all()
    await handler.flush()
    assert acked == [("customer-profiles", 0), ("customer-profiles", 1)]
    assert handler.acks.waiting() == 0


async def test_a_record_delivered_twice_while_held_is_a_duplicate() -> None:
    """A re-fetch can deliver an offset that is still held for event-time order (Faust
    delivers an offset equal to the last one read). Both copies are held with the same
    event time, topic and offset: they must not be compared (the worker crashed on
    that), the first is applied and the second is dead-lettered as a duplicate."""
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import CustomerProfile
    from streams.app import StateStore

    lagging = {("card-transactions", 0)}
    sent: list[Any] = []

    async def send(emit: Any) -> None:
        sent.append(emit)

    async def ack(message: Any) -> bool:
        return True

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable()), send,
                      behind=lambda topic, partition: (topic, partition) in lagging)
    handler.ack = ack
    profile = encode(CustomerProfile(
        event_id="p-c1", event_time=dt.datetime(2026, 7, 1, tzinfo=dt.UTC), customer_id="c1",
        credit_limit_minor=100_000, currency="EUR", products=["credit_card"], sector="retail",
        region="north", segment="mass", timezone="Europe/Berlin"))
    for copy in ("first", "second"):
        await handler.receive("customer-profiles", 0, 7, b"c1", profile, None, copy)
    assert len(handler.clock(0).heap) == 2
    lagging.clear()
    await handler.release_all()
    await handler.flush()
    dead = [emit for emit in sent if emit.topic == "dead-letters"]
    assert len(dead) == 1 and dead[0].record.reason == "duplicate_event"
    assert handler.table.get("c1") is not None
    assert handler.acks.waiting() == 0


async def test_changelog_writes_are_fenced_by_consumer_generation() -> None:
    """A worker that stalled past its session timeout flushes, when it resumes, state it
    computed before its partitions moved: in the changelog after the new owner's write.
    Recovery must keep the new owner's state (the older generation's record is skipped),
    whatever the order in the log."""
    from streams.app import StateStore

    generation = 3
    old = StateStore(_StoreTable(), generation=lambda: generation)
    old.put("c1", b"stale", 1)
    await old.flush()
    assert old.table.changelog_topic.headers == [[("riskwatch-generation", b"3")]]
    # The new owner (generation 5) wrote first, then the zombie's record (3) arrived.
    log = [(b"c1", [("riskwatch-generation", b"2")]), (b"c1", [("riskwatch-generation", b"5")]),
           (b"c1", [("riskwatch-generation", b"3")]), (b"c2", None)]
    fresh = StateStore(_StoreTable(), generation=lambda: 6)
    assert [fresh.admit(key, headers, 1) for key, headers in log] == [True, True, False, True]
    assert fresh.fenced == 1 and fresh.floor == {1: 5}
    # A group whose generation restarted (0) still stamps above what it recovered.
    restarted = StateStore(_StoreTable(), generation=lambda: 0)
    assert restarted.admit(b"c1", {"riskwatch-generation": b"5"}, 1)
    restarted.put("c1", b"new", 1)
    await restarted.flush()
    assert restarted.table.changelog_topic.headers == [[("riskwatch-generation", b"5")]]
    restarted.reset_fencing()
    assert restarted.admit(b"c1", [("riskwatch-generation", b"1")], 1)


async def test_freeze_heap_moves_live_objects_out_of_the_collectors_reach() -> None:
    import gc

    from streams.app import freeze_heap

    try:
        await freeze_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()



def _record_order(engine: Engine) -> list[str]:
    """The event ids ``engine`` processes, in the order it processes them."""
    order: list[str] = []
    process = engine.process

    def spy(topic: str, event: Any, raw: bytes | None, *, learn: bool = True) -> Any:
        order.append(event.event_id)
        return process(topic, event, raw, learn=learn)

    engine.process = spy  # type: ignore[method-assign]
    return order


def _tx(i: int, amount: int = 2_000, customer: str = "c1") -> bytes:
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import CardTransaction

    return encode(CardTransaction(
        event_id=f"e{i}", event_time=dt.datetime(2026, 2, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i),
        customer_id=customer, account_id="a1", type="purchase", amount_minor=amount,
        currency="EUR", mcc="5411", merchant_id="m", channel="pos", country="DE"))


def _large_transaction_engine() -> Engine:
    from alerts.policy import load_policy_text

    return Engine(load_policy_text("version: t\nlarge_transaction: {multiple: 6.0, "
                                   "min_history: 5, floor_minor: 50000}"))


async def _after_six_records(fail: dict[str, int]) -> tuple[Handler, list[Any], list[Any]]:
    """A handler whose sends to the topics of ``fail`` fail that many times (a producer
    timeout), after six ordinary transactions of c1 (offsets 0-5); with what it sent
    and acknowledged."""
    from streams.app import StateStore

    sent: list[Any] = []
    acked: list[Any] = []

    async def send(emit: Any) -> None:
        if fail.get(emit.topic):
            fail[emit.topic] -= 1
            raise TimeoutError("KafkaTimeoutError: producer buffer full")
        sent.append(emit)

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    handler = Handler(_large_transaction_engine(), Metrics(), StateStore(_StoreTable()), send)
    handler.ack = ack
    for i in range(6):
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i), None, i)
    return handler, sent, acked


async def test_an_output_not_sent_dead_letters_the_record_and_keeps_its_state_unapplied() -> None:
    """An output send that fails (a producer timeout) used to escape after the state was
    written with the event id marked applied: the record was neither finished nor
    dead-lettered, and redelivered it was a duplicate, so its alert was never sent. The
    state is now written only after every output went out; a failed send dead-letters
    the record (processing_error), which is then acknowledged."""
    handler, sent, acked = await _after_six_records({"risk-alerts": 1})
    before = handler.table.get("c1")
    await handler.receive("card-transactions", 0, 6, b"c1", _tx(6, 200_000), None, 6)
    dead = [emit.record.reason for emit in sent if emit.topic == "dead-letters"]
    assert dead == ["processing_error"]
    assert handler.table.get("c1") == before  # e6 not marked applied
    await handler.flush()
    assert acked == list(range(7)) and handler.acks.waiting() == 0
    # Replayed (from the dead letters, or re-read): applied, and the alert goes out.
    await handler.receive("card-transactions", 0, 6, b"c1", _tx(6, 200_000), None, 7)
    assert [emit.record.rule_id for emit in sent
            if emit.topic == "risk-alerts"] == ["large-transaction"]


async def test_an_output_and_its_dead_letter_not_sent_leave_the_record_unacknowledged() -> None:
    """If even the dead letter cannot be sent, the error escapes: the record is not
    finished (nothing at or after it is acknowledged) and, re-read, it is applied."""
    import pytest

    handler, sent, acked = await _after_six_records({"risk-alerts": 1, "dead-letters": 1})
    with pytest.raises(TimeoutError):
        await handler.receive("card-transactions", 0, 6, b"c1", _tx(6, 200_000), None, 6)
    await handler.receive("card-transactions", 0, 7, b"c1", _tx(7), None, 7)
    await handler.flush()
    assert acked == list(range(6))  # 6 unfinished: neither it nor 7 acknowledged
    # Redelivered (restart: from the committed offset 6): applied, not a duplicate.
    await handler.receive("card-transactions", 0, 6, b"c1", _tx(6, 200_000), None, 6)
    assert [emit.record.rule_id for emit in sent
            if emit.topic == "risk-alerts"] == ["large-transaction"]
    assert not [emit for emit in sent if emit.topic == "dead-letters"]


async def test_a_failing_sweep_neither_drops_the_record_nor_stops_acknowledgements() -> None:
    """A watermark sweep whose engine call raises (a detector bug on one customer) used to
    escape from the release: the record that moved the watermark was neither applied nor
    dead-lettered, and its partition was never acknowledged again. Same for a tick."""
    from detectors.delinquency import DueIndex
    from streams.app import StateStore

    engine = Engine(DEFAULT_POLICY)
    advanced: list[str] = []

    def advance(key: str, raw: bytes | None, as_of: Any) -> Any:
        advanced.append(key)
        raise ZeroDivisionError(f"bug in a detector for customer {key}")

    engine.advance = advance  # type: ignore[method-assign]
    acked: list[Any] = []

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    handler = Handler(engine, Metrics(), StateStore(_StoreTable()), _send, ticks_topic="ticks")
    handler.ack = ack
    handler.clock(0).due.add("c9", 0)  # a recovered customer, its check day long past
    await handler.receive("card-transactions", 0, 0, b"c1", _tx(0), None, ("ct", 0))
    assert advanced == ["c9"]
    assert handler.table.get("c1") is not None  # the record was applied
    due = handler.clock(0).due
    assert "c9" in due  # still due: retried by a later sweep
    await handler.receive("card-transactions", 0, 1, b"c1", _tx(1), None, ("ct", 1))
    assert advanced == ["c9"]  # not once per record: after the next day
    await handler.flush()
    assert acked == [("ct", 0), ("ct", 1)]
    handler.clock(0).due = DueIndex()
    handler.clock(0).due.add("c9", 0)
    await handler.receive("ticks", 0, 0, b"sweep", b"1800000000000", None, ("tick", 0))
    await handler.flush()
    assert ("tick", 0) in acked and handler.acks.waiting() == 0
    # A malformed tick (the topic is internal, but not only ours to write) is ignored,
    # finished and acknowledged; it used to raise out of the handler.
    await handler.receive("ticks", 0, 1, b"sweep", b"soon", None, ("tick", 1))
    await handler.flush()
    assert ("tick", 1) in acked and handler.acks.waiting() == 0


async def test_a_failed_changelog_write_keeps_its_state_and_acknowledgements() -> None:
    """A flush used to take the acknowledgements off their queues and the state out of
    the dirty set before sending: a failed changelog send lost both (the partition was
    never acknowledged again, the state never written until the customer changed)."""
    import pytest

    from streams.app import StateStore

    written: list[bytes] = []
    fail = {"n": 1}

    async def changelog(key: bytes, value: bytes, partition: int, headers: Any) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise TimeoutError("KafkaTimeoutError: batch expired")
        written.append(key)

    acked: list[Any] = []

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(),
                      StateStore(_StoreTable(), send=changelog), _send)
    handler.ack = ack
    await handler.receive("card-transactions", 0, 0, b"c1", _tx(0, customer="c1"), None, 0)
    await handler.receive("card-transactions", 0, 1, b"c2", _tx(1, customer="c2"), None, 1)
    with pytest.raises(TimeoutError):
        await handler.flush()
    assert acked == [] and handler.acks.waiting() == 2
    assert sorted(handler.table.dirty) == [b"c1", b"c2"]
    assert handler.pending == 2  # still due for a flush
    await handler.receive("card-transactions", 0, 2, b"c3", _tx(2, customer="c3"), None, 2)
    await handler.flush()
    assert acked == [0, 1, 2] and sorted(written) == [b"c1", b"c2", b"c3"]
    assert handler.table.dirty == {} and handler.acks.waiting() == 0


async def test_a_record_finished_during_a_flush_waits_for_the_next_one() -> None:
    """Acknowledged are only the records finished when the flush began (their state is in
    what it writes); one finished while its writes are on their way waits."""
    import asyncio

    from streams.acks import InOrderAcks
    from streams.app import StateStore

    gate = asyncio.Event()

    async def changelog(key: bytes, value: bytes, partition: int, headers: Any) -> None:
        await gate.wait()

    acked: list[Any] = []

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(),
                      StateStore(_StoreTable(), send=changelog), _send, acks=InOrderAcks())
    handler.ack = ack
    await handler.receive("card-transactions", 0, 0, b"c1", _tx(0), None, 0)
    flushing = asyncio.create_task(handler.flush())
    await asyncio.sleep(0)
    await handler.receive("card-transactions", 0, 1, b"c1", _tx(1), None, 1)
    gate.set()
    await flushing
    assert acked == [0] and list(handler.table.dirty) == [b"c1"]
    await handler.flush()
    assert acked == [0, 1]


async def test_a_revoked_partitions_unwritten_state_is_dropped_not_written_later() -> None:
    """A rebalance whose flush was skipped (the broker unreachable past the wait) forgot
    the revoked partition's held records and acknowledgements, not its unwritten state:
    the next flush wrote it stamped with the new generation, after the new owner's
    writes, and recovery did not fence it. Its records are re-read, so the state is
    dropped, and the local table goes back to what the changelog has (a partition this
    worker keeps is re-read against it: the records apply again, not as duplicates)."""
    from streams.app import StateStore

    generation = {"id": 4}
    table = _StoreTable()
    store = StateStore(table, generation=lambda: generation["id"])
    sent: list[Any] = []

    async def send(emit: Any) -> None:
        sent.append(emit)

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), store, send)
    await handler.receive("card-transactions", 2, 0, b"c2", _tx(0, customer="c2"), None, 0)
    await handler.flush()
    written_c2 = table.data[b"c2"]
    await handler.receive("card-transactions", 3, 10, b"c1", _tx(1), None, 10)
    await handler.receive("card-transactions", 2, 1, b"c2", _tx(2, customer="c2"), None, 1)
    table.changelog_topic.sent.clear()
    table.changelog_topic.headers.clear()
    handler.drop({2, 3})  # the flush was skipped; every partition revoked (eager)
    assert store.dirty == {} and handler.acks.waiting() == 0
    assert b"c1" not in table.data and table.data[b"c2"] == written_c2
    generation["id"] = 5
    await handler.flush()
    assert table.changelog_topic.sent == []  # no zombie write
    # Partition 2 came back to this worker: its record is re-read and applied again.
    await handler.receive("card-transactions", 2, 1, b"c2", _tx(2, customer="c2"), None, 1)
    assert not [emit for emit in sent if emit.topic == "dead-letters"]
    await handler.flush()
    assert [key for key, _, _ in table.changelog_topic.sent] == [b"c2"]
    assert table.changelog_topic.headers == [[("riskwatch-generation", b"5")]]


async def test_state_whose_write_failed_is_put_back_as_written_when_forgotten() -> None:
    import pytest

    from streams.app import StateStore

    fail = {"n": 0}
    store = StateStore(_StoreTable(), send=_failing_changelog(fail, "KafkaTimeoutError"))
    store.put("c1", b"v1", 0)
    await store.flush()
    store.put("c1", b"v2", 0)
    store.put("c2", b"w1", 0)
    fail["n"] = 1
    with pytest.raises(TimeoutError):
        await store.flush()
    store.put("c1", b"v3", 0)  # written again after the failed flush
    assert store.dirty == {b"c1": (0, b"v3"), b"c2": (0, b"w1")}
    store.forget({0})
    assert store.table.data == {b"c1": b"v1"} and store.dirty == {} and store.written == {}


async def test_records_of_the_same_millisecond_are_released_in_replays_order() -> None:
    """Replay orders by (event time, topic rank, offset). A lagging topic can still
    deliver a record at the millisecond of its newest one: a held record of that
    millisecond and a later rank used to be released before it."""
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import PaymentReceived
    from schemas.topics import TOPIC_RANK
    from streams.app import StateStore

    at = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
    assert TOPIC_RANK["card-transactions"] < TOPIC_RANK["repayments"]
    payment = encode(PaymentReceived(event_id="p1", event_time=at, customer_id="c1",
                                     account_id="a1", amount_minor=100, currency="EUR"))

    def tx(i: int) -> bytes:
        from schemas.models import CardTransaction

        return encode(CardTransaction(
            event_id=f"t{i}", event_time=at, customer_id="c1", account_id="a1",
            type="purchase", amount_minor=100, currency="EUR", mcc="5411", merchant_id="m",
            channel="pos", country="DE"))

    engine = Engine(DEFAULT_POLICY)
    order = _record_order(engine)
    lagging = {"card-transactions"}
    handler = Handler(engine, Metrics(), StateStore(_StoreTable()), _send,
                      behind=lambda topic, partition: topic in lagging)
    await handler.receive("card-transactions", 0, 0, b"c1", tx(0), None, None)
    await handler.receive("repayments", 0, 0, b"c1", payment, None, None)
    assert order == ["t0"]  # the payment waits: a transaction of its millisecond may follow
    await handler.receive("card-transactions", 0, 1, b"c1", tx(1), None, None)
    lagging.clear()
    await handler.release_all()
    assert order == ["t0", "t1", "p1"]
    # A lagging topic of a later rank does not hold an earlier rank's same millisecond.
    order.clear()
    lagging.add("repayments")
    await handler.receive("card-transactions", 0, 2, b"c1", tx(2), None, None)
    assert order == ["t2"]


async def test_the_model_checkpoint_counts_learned_records_only_and_never_goes_back() -> None:
    """The checkpoint's offsets (the global models learned up to) were the offsets
    received, held records included: after a restart those were re-read without
    learning, so the models never learned them. And a partition re-read from a lower
    offset lowered a higher learned one (events learned twice)."""
    from streams.app import StateStore

    engine = Engine(DEFAULT_POLICY)
    learned: list[tuple[int, bool]] = []
    process = engine.process

    def spy(topic: str, event: Any, raw: bytes | None, *, learn: bool = True) -> Any:
        learned.append((int(event.event_id[1:]), learn))
        return process(topic, event, raw, learn=learn)

    engine.process = spy  # type: ignore[method-assign]
    lagging = {"repayments"}
    handler = Handler(engine, Metrics(), StateStore(_StoreTable()), _send,
                      behind=lambda topic, partition: topic in lagging)
    handler.clock(0).seen_ms["repayments"] = 0  # a payment seen: holds what is later
    for i in range(3):
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i), None, None)
    assert learned == [] and handler.learned_upto() == {}
    lagging.clear()
    await handler.release_all()
    assert handler.learned_upto() == {("card-transactions", 0): 2}
    # Resumed from a checkpoint past what this run re-reads: the higher offset stays.
    handler.learned_offsets = {("card-transactions", 0): 9, ("repayments", 0): 4}
    assert handler.learned_upto() == {("card-transactions", 0): 9, ("repayments", 0): 4}
    # Restarted on a checkpoint at offset 1: offset 1 is scored only, offset 2 learned.
    restarted = Handler(engine, Metrics(), StateStore(_StoreTable()), _send)
    restarted.learned_offsets = {("card-transactions", 0): 1}
    learned.clear()
    for i in (1, 2):
        await restarted.receive("card-transactions", 0, i, b"c1", _tx(i), None, None)
    assert learned == [(1, False), (2, True)]


async def test_a_sweep_logs_its_cause_and_read_offsets_without_customers(caplog: Any) -> None:
    """A sweep with customers due logs one line that explains it (what moved the
    partition's time, how far each customer topic was read), naming no customer."""
    import logging

    from streams.app import StateStore

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable()), _send)
    handler.clock(0).due.add("c9", 0)  # a recovered customer, its check day long past
    with caplog.at_level(logging.INFO, logger="riskwatch.worker"):
        await handler.receive("card-transactions", 0, 7, b"c1", _tx(0), None, ("ct", 7))
        await handler.receive("card-transactions", 0, 8, b"c1", _tx(1), None, ("ct", 8))
    lines = [r.getMessage() for r in caplog.records if "sweep to" in r.getMessage()]
    assert len(lines) == 1, lines  # nothing due the second time: no line
    assert "watermark moved by card-transactions@7" in lines[0]
    assert "1 customers due" in lines[0]
    assert "'card-transactions': 7" in lines[0] and "'repayments': -1" in lines[0]
    assert "c9" not in lines[0] and "c1" not in lines[0]


async def test_one_release_at_a_time_per_partition() -> None:
    """A release awaits its sends; a second release of the same partition (the next
    record's, or a timer's) ran interleaved with it and processed a customer's next
    record on the state from before the last one was written: that record's effect
    lost (a payment, so a false missed payment), or records out of event-time order.
    Now the second asks the running one to go round again."""
    import asyncio

    from streams.app import StateStore

    engine = _large_transaction_engine()
    store = StateStore(_StoreTable())
    #: Records processed on a state other than the one the record before produced.
    stale: list[str] = []
    process = engine.process
    last: dict[str, bytes | None] = {"c1": None}

    def spy(topic: str, event: Any, raw: bytes | None, *, learn: bool = True) -> Any:
        if raw != last["c1"]:
            stale.append(event.event_id)
        result = process(topic, event, raw, learn=learn)
        last["c1"] = result.state if result.state is not None else raw
        return result

    engine.process = spy  # type: ignore[method-assign]
    sent: list[str] = []

    async def slow_send(emit: Any) -> None:
        await asyncio.sleep(0.001)  # a produce that waits on the broker
        sent.append(emit.topic)

    lagging = {"repayments"}
    handler = Handler(engine, Metrics(), store, slow_send,
                      behind=lambda topic, partition: topic in lagging)
    handler.clock(0).seen_ms["repayments"] = 0  # a payment seen: holds what is later
    for i in range(5):
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i), None, None)
    for i in range(5, 8):  # large ones: each raises an alert, so its release awaits
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i, amount=900_000),
                              None, None)
    lagging.clear()
    await asyncio.gather(handler.release(0), handler.release_all(), handler.release(0),
                         handler.receive("card-transactions", 0, 8, b"c1",
                                         _tx(8, amount=900_000), None, None))
    assert sent and stale == []
    assert not handler.clock(0).busy and not handler.clock(0).heap


async def test_a_topic_read_to_its_end_gates_records_fetched_after_its_last_response() -> None:
    """A topic read to its high water is so only as of the fetch response that reported
    it: the broker makes two topics' appends visible one after the other, so a
    transaction fetched a moment before the payment that precedes it became visible
    would overtake it. A record received after the other topic's last response waits
    for the next one (which was requested after the record came)."""
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import PaymentReceived
    from schemas.topics import CUSTOMER_TOPICS
    from streams.app import StateStore

    engine = Engine(DEFAULT_POLICY)
    order = _record_order(engine)
    fetched = dict.fromkeys(CUSTOMER_TOPICS, 0.0)
    handler = Handler(engine, Metrics(), StateStore(_StoreTable()), _send,
                      fetched_at=lambda topic, partition: fetched.get(topic, 0.0))
    handler.clock(0).seen_ms["repayments"] = 0
    await handler.receive("card-transactions", 0, 0, b"c1", _tx(3), None, None)
    assert order == []  # every other topic's last response is older than the record
    for topic in fetched:
        fetched[topic] = 2e9  # responses after it: nothing came before it
    payment = encode(PaymentReceived(
        event_id="p1", event_time=dt.datetime(2026, 2, 1, 1, tzinfo=dt.UTC), customer_id="c1",
        account_id="a1", amount_minor=5_000, currency="EUR"))
    # (had the payment become visible first, it would have come in that response)
    await handler.receive("repayments", 0, 0, b"c1", payment, None, None)
    assert order == ["p1", "e3"]
    # A live record (within sweep_live_window of the wall clock) is not gated: topics
    # race by milliseconds there, and sweep lateness allows for a late payment.
    for topic in fetched:
        fetched[topic] = 0.0
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    live = encode(PaymentReceived(
        event_id="p2", event_time=now, customer_id="c1", account_id="a1",
        amount_minor=1_000, currency="EUR"))
    await handler.receive("repayments", 0, 1, b"c1", live, None, None)
    assert order == ["p1", "e3", "p2"]
    # A gate holds for gate_patience at most: a topic without a fetch response for that
    # long is not being read (paused), and would hold the partition for good.
    await handler.receive("card-transactions", 0, 1, b"c1", _tx(30), None, None)
    assert order == ["p1", "e3", "p2"]
    handler.gate_patience = 0.0
    await handler.release_all()
    assert order == ["p1", "e3", "p2", "e30"]


async def test_records_received_with_hold_wait_for_settle_and_go_in_event_time_order() -> None:
    """Direct delivery hands a fetch's records over with ``hold`` and settles after the
    batch: nothing of history is processed before, everything releasable is after, in event-time
    order (a record of an earlier hour fetched later in the batch goes first). A revoked
    partition's unreleased records are not released by a later settle; a wall-clock tick
    settles first (its sweep comes after the records before it)."""
    from streams.app import StateStore

    engine = Engine(DEFAULT_POLICY)
    order = _record_order(engine)
    handler = Handler(engine, Metrics(), StateStore(_StoreTable()), _send, ticks_topic="ticks")
    for i in (2, 0, 1):
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i), None, None, hold=True)
    await handler.receive("card-transactions", 1, 0, b"c2", _tx(5, customer="c2"), None, None,
                          hold=True)
    assert order == [] and handler.unreleased == {0, 1}
    handler.drop({1})
    await handler.settle()
    assert order == ["e0", "e1", "e2"] and handler.unreleased == set()
    assert handler.acks.finished == 3
    await handler.receive("card-transactions", 0, 3, b"c1", _tx(3), None, None, hold=True)
    await handler.receive("ticks", 0, 0, b"sweep", b"0", None)
    assert order == ["e0", "e1", "e2", "e3"]
    # A live record (younger than live_window) is not held for the batch: its latency
    # would take on the decoding and processing of the rest of its fetch.
    import datetime as dt

    from schemas.codec import encode
    from schemas.models import CardTransaction

    live = encode(CardTransaction(
        event_id="live", event_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
        customer_id="c1", account_id="a1", type="purchase", amount_minor=100,
        currency="EUR", mcc="5411", merchant_id="m", channel="pos", country="DE"))
    await handler.receive("card-transactions", 0, 4, b"c1", live, None, None, hold=True)
    assert order[-1] == "live" and handler.unreleased == set()


def test_state_store_reads_and_writes_a_faust_memory_table_through_its_dict() -> None:
    """With Faust's in-memory store the state store works on the store's dict itself:
    what it writes, the table has, and what the table's recovery applies (into the same
    dict), it reads; any other mapping is used as it is."""
    import faust

    from streams.app import StateStore

    app = faust.App("riskwatch-test-store", broker="kafka://127.0.0.1:9", store="memory://")
    table = app.Table("customer-state", default=None)
    store = StateStore(table)
    store.put("c1", b"s1", 0)
    assert table.data[b"c1"] == b"s1" and store.data is table.data.data
    from types import SimpleNamespace

    from faust.types import Message

    # A changelog record applied as table recovery applies it.
    record = Message("customer-state-changelog", 1, 0, 0.0, 0, None, b"c2", b"s2", None)
    table.data.apply_changelog_batch([SimpleNamespace(key=b"c2", value=b"s2", message=record)],
                                     to_key=lambda k: k, to_value=lambda v: v)
    assert store.get("c2") == b"s2"
    store.forget()
    assert b"c1" not in table.data and store.get("c2") == b"s2"
    plain = _StoreTable()
    assert StateStore(plain).data is plain.data


async def _flushing_handler(n: int, changelog: Any) -> tuple[Handler, list[Any]]:
    """A handler whose flush is due, with ``n`` customers' state to write (one record
    each, offsets 0 to n-1 of one partition); with what it acknowledges."""
    from streams.app import StateStore

    acked: list[Any] = []

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable(), send=changelog),
                      _send, flush_every=n)
    handler.ack = ack
    for i in range(n):
        await handler.receive("card-transactions", 0, i, f"c{i}".encode(),
                              _tx(i, customer=f"c{i}"), None, i)
    return handler, acked


async def test_a_background_flush_takes_turns_with_the_records_that_keep_coming() -> None:
    """Awaited by the fetch loop, a flush stopped every record behind it for as long as
    it wrote (the latency tail). Started by flush_behind, it yields every
    FLUSH_YIELD_EVERY writes: a record arriving meanwhile is processed before the flush
    ends, its state left for the next flush and its acknowledgement behind the flush's."""
    import asyncio

    from streams.app import FLUSH_YIELD_EVERY

    n = 3 * FLUSH_YIELD_EVERY
    written: list[bytes] = []

    async def changelog(key: bytes, value: bytes, partition: int, headers: Any) -> None:
        written.append(key)

    handler, acked = await _flushing_handler(n, changelog)
    handler.flush_behind(60.0)
    task = handler.flushing
    assert task is not None and not task.done()
    await asyncio.sleep(0)  # the flush's first turn
    assert len(written) == FLUSH_YIELD_EVERY and acked == []
    await handler.receive("card-transactions", 0, n, b"late", _tx(n, customer="late"), None, n)
    handler.flush_behind(60.0)  # due again, but one is running: no second flush
    assert handler.flushing is task
    await task
    assert len(written) == n and b"late" not in written
    assert acked == list(range(n)) and list(handler.table.dirty) == [b"late"]
    handler.last_flush = 0.0  # due by time
    handler.flush_behind(60.0)
    assert handler.flushing is not task
    await handler.flushing
    assert written[-1] == b"late" and acked == list(range(n + 1))


async def test_a_background_flush_that_failed_raises_at_the_next_call() -> None:
    import asyncio

    import pytest

    handler, acked = await _flushing_handler(
        3, _failing_changelog({"n": 1}, "KafkaTimeoutError: batch expired"))
    handler.flush_behind(60.0)
    task = handler.flushing
    assert task is not None
    await asyncio.wait([task])
    with pytest.raises(TimeoutError, match="batch expired"):
        handler.flush_behind(60.0)
    # Nothing acknowledged, nothing lost: the state is dirty again, still due.
    assert acked == [] and len(handler.table.dirty) == 3 and handler.flushing is None
    handler.flush_behind(60.0)
    await handler.flushing
    assert acked == [0, 1, 2] and handler.table.dirty == {}


async def test_a_flush_under_way_stops_when_the_brokers_state_is_lost() -> None:
    """Once the broker's state is lost, nothing more is written or acknowledged
    (Handler.halt): a background flush stops at its next turn."""
    import asyncio

    from streams.app import FLUSH_YIELD_EVERY

    written: list[bytes] = []

    async def changelog(key: bytes, value: bytes, partition: int, headers: Any) -> None:
        written.append(key)

    handler, acked = await _flushing_handler(3 * FLUSH_YIELD_EVERY, changelog)
    handler.flush_behind(60.0)
    await asyncio.sleep(0)
    handler.halt()
    assert handler.flushing is not None
    await handler.flushing
    assert len(written) == FLUSH_YIELD_EVERY and acked == []
    assert handler.table.dirty == {} and handler.acks.waiting() == 0


async def test_a_flush_under_way_acknowledges_nothing_more_once_the_state_is_lost() -> None:
    import asyncio

    from streams.app import ACK_YIELD_EVERY, StateStore

    acked: list[Any] = []

    async def ack(message: Any) -> bool:
        acked.append(message)
        return True

    n = ACK_YIELD_EVERY + 10
    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), StateStore(_StoreTable()), _send,
                      flush_every=n)
    handler.ack = ack
    for i in range(n):  # one customer: one write, n acknowledgements
        await handler.receive("card-transactions", 0, i, b"c1", _tx(i), None, i)
    handler.flush_behind(60.0)
    await asyncio.sleep(0)  # its write, then its first ACK_YIELD_EVERY acknowledgements
    assert acked == list(range(ACK_YIELD_EVERY))
    handler.halt()
    await handler.flushing
    assert acked == list(range(ACK_YIELD_EVERY))
