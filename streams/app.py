"""The Faust application factory: topics, the per-customer table, thin agents.

Nothing here decides anything about risk: the agent decodes, calls the pure
engine (``alerts.engine``), writes the customer's state back once, and sends
the outputs. Every exception is caught per event and the record dead-lettered,
because Faust acks an event even when the agent body raises; only a dead letter
that cannot be sent escapes, and then the record is left unacknowledged (re-read
from the committed offset), never lost.

Build the app with :func:`create_app`; no module-level app exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AIOTopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from alerts.deadletter import dead_letter, dead_letter_emit
from alerts.engine import Engine
from alerts.envelope import Emit, to_message
from alerts.policy import load_policy
from alerts.privacy import PseudonymKey, describe_error
from detectors.delinquency import DueIndex, epoch_day
from schemas.codec import decode
from schemas.errors import DecodeError
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS, TOPIC_RANK, TOPICS
from streams import checkpoint
from streams.acks import Entry, InOrderAcks
from streams.broadcast import Follower
from streams.config import Settings
from streams.control import PolicyWatcher
from streams.guard import LOST, OK, UNREACHABLE, BrokerGuard, Finding
from streams.metrics import Metrics
from streams.security import aiokafka_kwargs, faust_credentials, preflight, start_client
from streams.tuning import fetched_at_reader, highwater_reader

if TYPE_CHECKING:
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery

log = logging.getLogger("riskwatch.worker")

#: Name of the per-customer state table (changelog ``<app_id>-customer-state-changelog``).
STATE_TABLE = "customer-state"
#: A flush in the background (Handler.flush_behind) lets records be processed after
#: this many changelog writes (about 0.3 ms of them), and after this many
#: acknowledgements.
FLUSH_YIELD_EVERY = 64
ACK_YIELD_EVERY = 256


class StateStore:
    """The customer-state table with coalesced changelog writes.

    Faust writes a changelog message for every table assignment; most of a
    worker's cost would be those messages. Here a write updates the local table
    at once and marks the key dirty; :meth:`flush` then sends one changelog
    message per dirty key (however many events changed it) with the key's
    partition. The agent acknowledges events only after the flush that covers
    them, and Faust flushes the producer before it commits offsets, so a
    committed offset never runs ahead of the state it produced (at-least-once:
    a crash replays at most the unflushed events, whose outputs carry the same
    ids).

    Writes are fenced by consumer generation. A worker stalled past its session
    timeout (SIGSTOP, a long GC pause, a frozen VM) loses its partitions, and
    when it resumes it may still flush state it computed before: into the
    changelog, after what the partition's new owner wrote. Nothing fences such a
    zombie write without transactions (which the development broker lacks), so
    each write carries the generation it was made in (header
    ``riskwatch-generation``), and table recovery skips a record older than one
    already applied for its key (:meth:`admit`): the newest owner's state wins
    whatever order the log has them in. A write is stamped with at least the
    highest generation recovered for its partition, so a group whose generation
    restarted (deleted and created again) does not fence its own writes.
    """

    #: Changelog header: the consumer generation the write was made in.
    GENERATION_HEADER = "riskwatch-generation"

    def __init__(self, table: Any, generation: Callable[[], int] = lambda: 0,
                 send: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.table = table
        #: ``async send(key, value, partition, headers)`` of one changelog write; by
        #: default the table's changelog topic (the worker sends through the producer).
        self.send = send
        self.dirty: dict[bytes, tuple[int, bytes]] = {}
        #: Per dirty key, its value as last written to (or recovered from) the
        #: changelog; None: none (what :meth:`forget` puts back).
        self.written: dict[bytes, bytes | None] = {}
        self.generation = generation
        self._data: Any = None
        #: Per key, the generation of its newest write applied or made here.
        self.stamps: dict[bytes, int] = {}
        #: Per partition, the highest generation recovered.
        self.floor: dict[int, int] = {}
        self.fenced = 0
        #: How many times every key's unwritten state was forgotten (:meth:`forget`
        #: with no partitions: the broker's state was lost); a flush under way stops.
        self.cleared = 0

    @property
    def data(self) -> Any:
        """The table's local store as a mapping: for Faust's in-memory store its dict
        itself (the store's ``get`` and item methods are Python layers over it; the dict
        is made with the store and only ever changed in place), any other store as is."""
        data = self._data
        if data is None:
            store = self.table.data
            inner = getattr(store, "data", None)
            data = self._data = (inner if isinstance(store, MemoryStore)
                                 and type(inner) is dict else store)
        return data

    def get(self, key: str) -> bytes | None:
        return self.data.get(key.encode())

    def put(self, key: str, value: bytes, partition: int) -> None:
        raw_key = key.encode()
        data = self.data
        if raw_key not in self.written:
            self.written[raw_key] = data.get(raw_key)
        data[raw_key] = value
        self.dirty[raw_key] = (partition, value)

    def forget(self, partitions: set[int] | None = None) -> None:
        """Drop the unwritten state of ``partitions`` (None: every partition), and put
        back in the local table what the changelog has for those keys.

        Their records are not acknowledged (the flush that would write the state was
        skipped or failed), so they are read again: by the partition's new owner, or by
        this worker if it keeps the partition, against the state they had not changed
        yet (left changed, they would be duplicates and their effect never written).
        Kept dirty, a revoked partition's state would be written by the next flush,
        stamped with the generation after the rebalance: a zombie write that recovery
        does not fence, after the new owner's."""
        data = self.data
        if partitions is None:
            self.cleared += 1
        for raw_key, (partition, _) in list(self.dirty.items()):
            if partitions is None or partition in partitions:
                del self.dirty[raw_key]
                old = self.written.pop(raw_key, None)
                if old is None:
                    data.pop(raw_key, None)
                else:
                    data[raw_key] = old

    async def flush(self) -> int:
        """Send the changelog writes of every dirty key; return how many.

        A send that fails raises, and that write and those not sent yet go back to the
        dirty set (unless the key was written again meanwhile: its newer value is
        there already), for the next flush; a write sent twice is harmless."""
        if not self.dirty:
            return 0
        dirty, self.dirty = self.dirty, {}
        written, self.written = self.written, {}
        send = self.send or self._send_to_topic
        generation = self.generation()
        cleared = self.cleared
        items = list(dirty.items())
        for done, (raw_key, (partition, value)) in enumerate(items):
            stamp = max(generation, self.floor.get(partition, -1))
            try:
                if done and not done % FLUSH_YIELD_EVERY:
                    # Records go on being processed meanwhile (Handler.flush_behind):
                    # their writes make a new dirty set, for the next flush.
                    await asyncio.sleep(0)
                    if self.cleared != cleared:
                        return done  # the broker's state was lost: nothing more written
                await send(raw_key, value, partition, [(self.GENERATION_HEADER, b"%d" % stamp)])
            except BaseException:
                for key, unsent in items[done:]:
                    self.dirty.setdefault(key, unsent)
                    self.written[key] = written.get(key)
                raise
            self.stamps[raw_key] = stamp
        return len(dirty)

    async def _send_to_topic(self, key: bytes, value: bytes, partition: int,
                             headers: list[tuple[str, bytes]]) -> Any:
        return await self.table.changelog_topic.send(key=key, value=value,
                                                     partition=partition, headers=headers)

    def admit(self, key: bytes, headers: Any, partition: int) -> bool:
        """Whether table recovery applies a changelog record (False: fenced)."""
        stamp = -1
        for name, value in (headers.items() if isinstance(headers, Mapping)
                            else headers or ()):
            if name == self.GENERATION_HEADER:
                stamp = int(value)
        if stamp < self.stamps.get(key, -1):
            self.fenced += 1
            return False
        self.stamps[key] = stamp
        if stamp > self.floor.get(partition, -1):
            self.floor[partition] = stamp
        return True

    def reset_fencing(self) -> None:
        """Partitions revoked: recovery re-reads every changelog it is assigned."""
        self.stamps.clear()
        self.floor.clear()




@dataclass(slots=True)
class Received:
    """A decoded record waiting for its turn in its partition's event-time order."""

    topic: str
    partition: int
    offset: int
    key: bytes
    key_text: str
    value: bytes
    timestamp: float | None
    received: float
    event: Any
    message: Any  # the Faust event, acknowledged once its state is flushed
    entry: Entry | None = None  # its place in the partition's acknowledgement order
    event_ms: int = 0  # the event time, Unix ms


@dataclass
class PartitionClock:
    """One partition's records in event-time order, its watermark and due index.

    Kafka does not order two topics against each other, so records are held in a
    heap and released only when no topic that still has unread records on this
    partition could deliver an earlier one (the timestamp synchronisation of Kafka
    Streams). The partition then advances in the same order replay uses, and its
    watermark is the newest event time applied: when it passes a customer's check
    day, the customer's ledgers are advanced (a missed due date is found with no
    further event from that customer), before the record that moved it.
    """

    #: (event ms, topic rank, offset, arrival number, record): the arrival number breaks
    #: the tie of a record delivered twice (a re-fetch of an offset already held), so two
    #: ``Received`` are never compared; the copy applied second is a duplicate event.
    heap: list[tuple[int, int, int, int, Received]] = field(default_factory=list)
    arrivals: int = 0
    seen_ms: dict[str, int] = field(default_factory=dict)
    watermark_ms: int = 0
    #: Newest event time in the recovered state: only tells whether the partition is a
    #: live stream (wall-clock sweeps) until records advance the watermark again. It is
    #: not a watermark: the changelog may hold state past the committed offsets (a crash
    #: during a flush writes some customers and not others), and sweeping to it before
    #: the re-read records are applied would flag dues whose payments are still unread.
    recovered_ms: int = 0
    due: DueIndex = field(default_factory=DueIndex)
    last_event_at: float = 0.0
    tick_pending: bool = False
    #: A release or sweep of this partition is running (it awaits sends and writes: a
    #: second one interleaved with it would process a customer's next record on the
    #: state before its last one was written, or out of event-time order).
    busy: bool = False
    #: A release was asked for while busy: the running one goes round again.
    again: bool = False

    def bound(self, partition: int, behind: Callable[[str, int], bool],
              topics: tuple[str, ...] = (),
              fetched_at: Callable[[str, int], float] | None = None,
              ) -> tuple[tuple[float, int], list[tuple[float, int, float]]]:
        """Held records up to this (event ms, topic rank) can be released, each only once
        it passes the gates returned with it (:meth:`releasable`).

        A lagging topic's next record comes no earlier than its newest event time seen,
        and at that same millisecond replay orders it by topic rank: a held record of
        that millisecond and a later rank must wait for it (one of an earlier or the same
        rank goes first: the same topic's next record has a later offset).
        A topic of ``topics`` with unread records that this partition has not delivered
        yet (after a start, restart or rebalance: Faust fetches topics independently)
        could still precede anything held, the payment of a due date say: hold all.

        A topic found read to its end is so only as of the fetch response that last
        reported its high water (``fetched_at``, Unix s). The broker does not make two
        topics' appends visible together (one produce request's batches, say), so a
        record fetched from one topic may have overtaken an earlier one of another that
        became visible a moment later. Each such topic gives a gate (event ms, rank,
        fetched_at): a held record after (event ms, rank) is released only if it was
        received before that response, which then saw what the producer had appended
        before it (aiokafka has one fetch in flight per broker: a response processed
        after a record was received was requested after the one that brought it)."""
        seen = self.seen_ms
        gates: list[tuple[float, int, float]] = []
        for topic in topics:
            if topic not in seen:
                if behind(topic, partition):
                    return (float("-inf"), -1), gates
                if fetched_at is not None:
                    gates.append((float("-inf"), -1, fetched_at(topic, partition)))
        # The earliest (event time, rank) of a lagging topic; a topic no earlier than the
        # earliest lagging one found so far need not be asked.
        bound: tuple[float, int] = (float("inf"), 0)
        for topic, ms in seen.items():
            if ms <= bound[0]:
                candidate = (ms, TOPIC_RANK[topic])
                if candidate < bound:
                    if behind(topic, partition):
                        bound = candidate
                    elif fetched_at is not None:
                        gates.append((ms, candidate[1], fetched_at(topic, partition)))
        return bound, gates

    @staticmethod
    def releasable(event_ms: int, rank: int, received: float,
                   gates: list[tuple[float, int, float]]) -> bool:
        """Whether a held record within the bound passes every gate of :meth:`bound`.

        >>> PartitionClock.releasable(5, 1, 10.0, [(4, 0, 10.5), (6, 0, 9.0)])
        True
        >>> PartitionClock.releasable(5, 1, 10.0, [(4, 0, 9.5)])
        False
        """
        for gate_ms, gate_rank, fetched in gates:
            if received >= fetched and (event_ms, rank) > (gate_ms, gate_rank):
                return False
        return True


@dataclass
class Handler:
    """A worker's per-record work: decode, order, process, write state, send."""

    engine: Engine
    metrics: Metrics
    table: StateStore
    send: Any  # async (Emit) -> None
    ticks_topic: str = ""
    #: Events received and not yet acknowledged: acknowledged after the state they
    #: produced is flushed, in offset order per topic-partition (streams.acks).
    acks: InOrderAcks = field(default_factory=InOrderAcks)
    ack: Any = None  # async (event) -> bool, set by the agent
    flush_every: int = 2000
    #: Held records beyond this many per partition are released anyway (memory bound).
    max_held: int = 50_000
    last_flush: float = field(default_factory=time.monotonic)
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    #: The flush :meth:`flush_behind` started, while it runs (or until its error is
    #: raised).
    flushing: asyncio.Future[None] | None = field(default=None, repr=False)
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Offsets the global models had learned up to at the last checkpoint (and of
    #: partitions since revoked).
    learned_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: The highest offset applied with learning since (records received but still held
    #: are not learned yet: counted as learned, a restart would never learn them).
    applied_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Whether a topic still has unread records on a partition (set by the app).
    behind: Callable[[str, int], bool] = field(default=lambda topic, partition: False)
    #: When the fetch response that last reported a topic's high water on a partition
    #: was processed (Unix s; set by the app; None: no gates, as in-process).
    fetched_at: Callable[[str, int], float] | None = None
    #: Records with an event time younger than this (s before the wall clock) are live:
    #: released without the fetch gates (Settings.sweep_live_window).
    live_window: float = 2 * 86_400.0
    #: Seconds a record waits at most for its gates (a fetch response comes every fetch
    #: wait; a topic without one for this long is paused, not being read).
    gate_patience: float = 5.0
    #: Per topic since the last flush: [event time of the last record processed (Unix
    #: s), its receive time] (published by :meth:`publish_tallies`).
    tallies: dict[str, list[float]] = field(default_factory=dict)
    #: Log lines name a customer by pseudonym only (alerts.privacy).
    pseudonym: PseudonymKey = field(default_factory=PseudonymKey.generate)
    #: Partitions given records by ``receive(..., hold=True)`` since the last
    #: :meth:`settle` (their release waits for it).
    unreleased: set[int] = field(default_factory=set)

    def clock(self, partition: int) -> PartitionClock:
        found = self.clocks.get(partition)
        if found is None:
            found = self.clocks[partition] = PartitionClock()
        return found

    async def flush(self) -> None:
        """Write coalesced state, then acknowledge the events it covers.

        The events finished now are noted first (their state is in the dirty set, or
        written already) and taken off the acknowledgement queues only after every
        write succeeded: a failed write raises and leaves them queued, and the unsent
        state dirty, for the next flush (acknowledgements stay a prefix, and nothing
        is acknowledged before its state is written). One flush at a time: a second
        one would acknowledge records whose state the first is still writing."""
        async with self.flush_lock:
            self.last_flush = time.monotonic()
            ready = self.acks.peek()
            self.publish_tallies()
            observe = self.metrics.state_bytes.observe
            for _, value in self.table.dirty.values():
                observe(len(value))
            await self.table.flush()
            events = self.acks.take(ready)
            if self.ack is not None:
                cleared = self.table.cleared
                for done, event in enumerate(events):
                    if done and not done % ACK_YIELD_EVERY:
                        await asyncio.sleep(0)
                        if self.table.cleared != cleared:
                            return  # the broker's state was lost: nothing acknowledged
                    if event is not None:
                        await self.ack(event)

    def flush_behind(self, interval: float) -> None:
        """Start :meth:`flush` as a task if one is due and none started here runs; a
        finished one's error is raised here (by the next record, or the flush timer).

        Awaited inline, a flush stopped the fetch loop while it wrote every dirty
        customer's state and acknowledged every record it covers (about 11 ms for
        1,500 customers and 2,000 records, every 0.2 s at half of saturation): every
        record that arrived then waited, the latency tail. As a task it takes turns
        with the fetch loop (it yields every ``FLUSH_YIELD_EVERY`` writes and
        ``ACK_YIELD_EVERY`` acknowledgements). What it writes and acknowledges is what
        was there when it began: records processed meanwhile write a new dirty set and
        queue behind its acknowledgements (:meth:`InOrderAcks.peek`), for the next
        flush; a rebalance takes the flush lock, so it waits for this one."""
        task = self.flushing
        if task is not None:
            if not task.done():
                return
            self.flushing = None
            task.result()
        if self.flush_due(interval):
            self.flushing = asyncio.ensure_future(self.flush())

    def publish_tallies(self) -> None:
        """Set each topic's last event and receive time gauges from the last record
        processed (done at each flush, at least every ``state_flush_interval``: two
        gauge updates per record cost about as much as the handler's own bookkeeping).
        The processed-records counter is incremented per record (throughput is read
        off it)."""
        for topic, (event_time, received) in self.tallies.items():
            series = self.metrics.topic(topic)
            series.last_event_time.set(event_time)
            series.last_receive_time.set(received)
        self.tallies.clear()

    @property
    def pending(self) -> int:
        """Records finished since the last flush (their state and acks not yet written)."""
        return self.acks.finished

    def flush_due(self, interval: float) -> bool:
        return (self.acks.finished >= self.flush_every
                or time.monotonic() - self.last_flush >= interval)

    def halt(self) -> None:
        """Broker state lost: forget unacknowledged events and unwritten state (never
        written to, or acknowledged on, a broker that no longer has what they follow)."""
        self.acks.clear()
        self.table.forget()
        self.clocks.clear()
        self.unreleased.clear()

    def drop(self, partitions: set[int]) -> None:
        """Forget held records, acknowledgements and unwritten state of revoked partitions
        (unacknowledged: their owner re-reads them). Called with the flush lock held, so
        that a flush on its way finishes, or puts its unsent state back, first."""
        for partition in partitions:
            self.clocks.pop(partition, None)
        self.unreleased -= partitions
        self.acks.forget(partitions)
        self.table.forget(partitions)
        # What this worker read of a revoked partition no longer says how far it has read
        # it: if the partition comes back, it is re-read from the committed offset, and a
        # stale offset here would make a topic look read up to where this worker once was
        # (so records of other topics would be released past its unread records, e.g. a
        # payment, and raise a false missed payment). Offsets the global models learned
        # are kept, so those events are not learned twice (those only received, held,
        # were not learned: they are when re-read).
        for key in [key for key in self.last_offsets if key[1] in partitions]:
            del self.last_offsets[key]
        for key in [key for key in self.applied_offsets if key[1] in partitions]:
            offset = self.applied_offsets.pop(key)
            if offset > self.learned_offsets.get(key, -1):
                self.learned_offsets[key] = offset

    def learned_upto(self) -> dict[tuple[str, int], int]:
        """Per topic-partition, the offset the global models learned up to (checkpointed
        with them): the highest of the checkpoint's and those applied since, so a
        partition re-read from a lower offset does not lower it (events learned twice).
        Records of one topic applied out of offset order (held for an earlier event time)
        are the limit: one below this offset not applied yet is not learned after a
        restart."""
        merged = dict(self.learned_offsets)
        for key, offset in self.applied_offsets.items():
            if offset > merged.get(key, -1):
                merged[key] = offset
        return merged

    async def sweep(self, partition: int, as_of_ms: int, cause: str = "") -> None:
        """Advance every customer of ``partition`` whose check day is at or before ``as_of``
        (``cause``: what moved the partition's time there, for the log line)."""
        as_of = dt.datetime.fromtimestamp(as_of_ms / 1000, dt.UTC)
        index = self.clock(partition).due
        day = epoch_day(as_of)
        due = index.pop_due(day)
        if due:
            # One line per sweep that has customers to advance (about one a day per
            # partition on a live stream): what a false missed payment needs explained,
            # how far each topic of the partition was read when event time got here.
            read = {topic: self.last_offsets.get((topic, partition), -1)
                    for topic in CUSTOMER_TOPICS}
            log.info("partition %d: sweep to %s (%s), %d customers due; read to offsets %s",
                     partition, as_of.isoformat(timespec="seconds"), cause or "request",
                     len(due), read)
        for key in due:
            # One customer's failure (a detector bug, an output not sent) must not stop
            # the sweep, nor escape into the record whose release ran it (that record
            # would be neither applied nor dead-lettered, and its partition never
            # acknowledged again). Outputs first, then the state (as in _apply): a
            # failed customer keeps its state and stays due, retried by the sweep that
            # passes the next day (one attempt a day, not one per record; a restart
            # rebuilds the due index and retries at once).
            try:
                result = self.engine.advance(key, self.table.get(key), as_of)
                for emit in result.emits:
                    await self.send(emit)
            except Exception as exc:
                log.error("sweep failed for partition %d customer %s (retried after day %d):"
                          " %s\n%s", partition, self.pseudonym(key), day,
                          describe_error(exc, key, self.pseudonym),
                          "".join(traceback.format_tb(exc.__traceback__)).rstrip())
                index.add(key, day + 1)
                continue
            if result.state is not None:
                self.table.put(key, result.state, partition)
            index.add(key, result.next_check)

    async def tick(self, partition: int, value: bytes, message: Any) -> None:
        """A wall-clock sweep request for an idle live partition."""
        entry = self.acks.track(self.ticks_topic, partition, message)
        clock = self.clock(partition)
        clock.tick_pending = False
        try:
            try:
                as_of_ms = int(value or b"0")
            except ValueError:  # not ours (the topic is internal): a later tick asks again
                log.warning("%s[%d]: tick value %r is not a time in ms: ignored",
                            self.ticks_topic, partition, bytes(value[:32]))
                return
            if clock.busy:  # records are being released: a later tick asks again
                return
            clock.busy = True
            try:
                await self.sweep(partition, as_of_ms, "wall-clock tick")
            finally:
                clock.busy = False
            if clock.again:
                await self.release(partition)
        finally:
            # A tick is only a request: finished whatever happened (a later one asks
            # again), so it never holds up its partition's acknowledgements.
            self.acks.complete(entry)

    async def receive(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        timestamp: float | None, message: Any = None, *, hold: bool = False,
    ) -> None:
        """Decode a record and hold it for its turn (bad records are dead-lettered now).

        The partition's held records are then released, or with ``hold`` at the next
        :meth:`settle` if the record is history (older than ``live_window``; the fetch
        loop's direct delivery settles after each fetch: the bound the release works
        out is then worked out once per batch of records)."""
        if topic == self.ticks_topic:
            if self.unreleased:
                await self.settle()  # a sweep request comes after the records before it
            await self.tick(partition, value or b"0", message)
            return
        received = time.time()
        entry = self.acks.track(topic, partition, message)
        self.last_offsets[(topic, partition)] = offset
        if timestamp:
            delay = received - timestamp
            self.metrics.append_to_receive.observe(delay if delay > 0.0 else 0.0)
        try:
            if key is None:
                raise DecodeError("missing_field", "message has no key", topic=topic)
            if value is None:
                raise DecodeError("null_value", "message has no value (tombstone)", topic=topic)
            try:
                key_text = key.decode()
            except UnicodeDecodeError as exc:
                raise DecodeError("invalid_utf8", "message key is not UTF-8", topic=topic) from exc
            event = decode(topic, value, key=key_text)
        except DecodeError as exc:
            await self._dead_letter(topic, partition, offset, key, value, exc,
                                    timestamp or received)
            self.acks.complete(entry)
            return
        event_ms = int(event.event_time.timestamp() * 1000)
        clock = self.clock(partition)
        clock.last_event_at = time.monotonic()
        seen = clock.seen_ms
        if event_ms > seen.get(topic, 0):
            seen[topic] = event_ms
        item = Received(topic, partition, offset, key, key_text, value, timestamp, received,
                        event, message, entry, event_ms)
        clock.arrivals += 1
        # Equal event times (in ms) go in topic name order, as replay merges its files.
        heapq.heappush(clock.heap, (event_ms, TOPIC_RANK[topic], offset, clock.arrivals, item))
        # Held for the batch only if history: a live record goes at once (the rest of
        # its fetch would add their decoding and processing to its latency, about 2 ms
        # on average at half of saturation here, for little: the gain is in backfills).
        if hold and event_ms < (received - self.live_window) * 1000.0:
            self.unreleased.add(partition)
        else:
            await self.release(partition)

    async def settle(self) -> None:
        """Release the partitions given records with ``hold`` since the last settle."""
        unreleased = self.unreleased
        while unreleased:
            partition = unreleased.pop()
            if partition in self.clocks:  # (not revoked since)
                await self.release(partition)

    async def release(self, partition: int) -> None:
        """Process the held records no lagging topic can still precede.

        One at a time per partition: the record that arrives, the timers and a
        wall-clock tick all ask, and a release awaits its sends and state writes. One
        asked for while another runs makes that one go round again instead."""
        clock = self.clock(partition)
        if clock.busy:
            clock.again = True
            return
        clock.busy = True
        try:
            while True:
                clock.again = False
                await self._release(partition, clock)
                if not clock.again:
                    return
        finally:
            clock.busy = False

    async def _release(self, partition: int, clock: PartitionClock) -> None:
        heap = clock.heap
        if not heap:
            return
        # Gates hold records of history only (a backfill, or history replayed through
        # Kafka: there a millisecond of arrival spans hours of event time, enough for a
        # due date to pass before its payment). A live record goes at once: topics race
        # by milliseconds of event time there, and a late payment is what the sweep's
        # lateness allows for; one more fetch round of latency would buy nothing. (The
        # heap's first record is its earliest: when it is live, so is every other.)
        fetched_at = self.fetched_at
        live_ms = patience_floor = 0.0
        if fetched_at is not None:
            now = time.time()
            live_ms = (now - self.live_window) * 1000.0
            if heap[0][0] >= live_ms:
                fetched_at = None
            # A topic with no fetch response for this long is not being fetched at all
            # (paused): its gate would hold the partition for good.
            patience_floor = now - self.gate_patience
        bound, gates = clock.bound(partition, self.behind, CUSTOMER_TOPICS, fetched_at)
        releasable = clock.releasable
        # (event ms, topic rank) of the first held record against the bound: equal times
        # are released in replay's order (event time, topic rank, offset).
        while heap and ((heap[0][:2] <= bound
                         and (not gates or heap[0][0] >= live_ms
                              or heap[0][4].received < patience_floor
                              or releasable(heap[0][0], heap[0][1], heap[0][4].received,
                                            gates)))
                        or len(heap) > self.max_held):
            event_ms, _, _, _, item = heapq.heappop(heap)
            if event_ms > clock.watermark_ms:
                clock.watermark_ms = event_ms
                next_day = clock.due.next_day()
                if next_day is not None:
                    lateness_ms = self.engine.policy.sweep_lateness_hours * 3_600_000
                    if next_day <= (event_ms - lateness_ms) // 86_400_000:
                        await self.sweep(partition, event_ms - lateness_ms,
                                         f"watermark moved by {item.topic}@{item.offset}")
            await self._apply(item)
            if item.entry is not None:  # acknowledged at the next flush, after its state
                self.acks.complete(item.entry)

    async def release_all(self) -> None:
        for partition in list(self.clocks):
            await self.release(partition)

    async def _dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None,
                           value: bytes | None, error: DecodeError, when_s: float) -> None:
        when = dt.datetime.fromtimestamp(when_s, dt.UTC)
        await self.send(dead_letter_emit(dead_letter(topic, partition, offset, key, value,
                                                     error, when)))
        outcome = "duplicate" if error.reason == "duplicate_event" else "dead_lettered"
        self.metrics.events.labels(topic, outcome).inc()
        self.metrics.dead_letters.labels(topic, error.reason).inc()

    async def _apply(self, item: Received) -> None:
        """Run the engine on one record, write the state, send the outputs (the caller
        then marks the record finished: acknowledged after its state is written)."""
        topic, partition, offset, event = item.topic, item.partition, item.offset, item.event
        when_s = item.timestamp or item.received
        try:
            learn = offset > self.learned_offsets.get((topic, partition), -1)
            result = self.engine.process(topic, event, self.table.get(item.key_text),
                                         learn=learn)
            if learn and offset > self.applied_offsets.get((topic, partition), -1):
                self.applied_offsets[(topic, partition)] = offset
        except DecodeError as exc:
            await self._dead_letter(topic, partition, offset, item.key, item.value, exc, when_s)
            return
        except Exception as exc:  # a bug: never lose the record, never crash the worker
            # Read by people: the customer as a pseudonym, the message redacted, and the
            # traceback's frames without the exception text.
            log.error("processing failed for %s[%d]@%d customer %s: %s\n%s", topic, partition,
                      offset, self.pseudonym(item.key_text),
                      describe_error(exc, item.key_text, self.pseudonym),
                      "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            error = DecodeError("processing_error", f"{type(exc).__name__}: {exc}", topic=topic)
            await self._dead_letter(topic, partition, offset, item.key, item.value, error,
                                    when_s)
            return
        if result.duplicate:
            error = DecodeError("duplicate_event", f"event_id {event.event_id!r} already applied",
                                topic=topic, key=item.key_text, field="event_id")
            await self._dead_letter(topic, partition, offset, item.key, item.value, error,
                                    when_s)
            return
        # The outputs go out before the state is written. The state marks the event id
        # applied: written first, a failed send would leave the record unfinished and,
        # once redelivered, a duplicate, its outputs never sent. Sent first, a failed
        # send leaves the state as it was, and the record is dead-lettered with the
        # error (outputs sent before it carry the ids a replay of the dead letter gives
        # them again). If even the dead letter cannot be sent, the error escapes: the
        # record is not finished, so nothing at or after it on its partition is
        # acknowledged, and it is re-read from the committed offset (redelivered,
        # against state that does not have it), never lost.
        try:
            for emit in result.emits:
                await self.send(emit)
        except Exception as exc:
            log.error("outputs not sent for %s[%d]@%d customer %s: %s", topic, partition,
                      offset, self.pseudonym(item.key_text),
                      describe_error(exc, item.key_text, self.pseudonym))
            error = DecodeError("processing_error",
                                f"output not sent: {type(exc).__name__}: {exc}", topic=topic)
            await self._dead_letter(topic, partition, offset, item.key, item.value, error,
                                    when_s)
            return
        clock = self.clock(partition)
        if result.state is not None:
            self.table.put(item.key_text, result.state, partition)
            clock.due.add(item.key_text, result.next_check)
        # A check day already behind the partition's watermark (a late record) is due now.
        if result.next_check is not None and clock.watermark_ms:
            as_of_ms = clock.watermark_ms - self.engine.policy.sweep_lateness_hours * 3_600_000
            if result.next_check <= as_of_ms // 86_400_000:
                await self.sweep(partition, as_of_ms,
                                 f"late record {topic}@{offset} due behind the watermark")
        metrics = self.metrics
        if topic == "card-transactions" and self.engine.last_anomaly_score is not None:
            metrics.anomaly_score.observe(self.engine.last_anomaly_score)
        metrics.topic(topic).processed.inc()  # at once: throughput is read off this counter
        event_s = item.event_ms / 1000.0 if item.event_ms else event.event_time.timestamp()
        tally = self.tallies.get(topic)
        if tally is None:
            tally = self.tallies[topic] = [0.0, 0.0]
        tally[0] = event_s
        tally[1] = item.received
        if result.emits:
            now = time.time()
            metrics.event_to_output.observe(max(0.0, now - event_s))
            metrics.receive_to_output.observe(now - item.received)


@dataclass
class Riskwatch:
    """A built worker: the Faust app and what its agents use."""

    app: faust.App
    settings: Settings
    engine: Engine
    metrics: Metrics
    handler: Handler
    watcher: PolicyWatcher | None = None
    guard: BrokerGuard | None = None

    def ready(self) -> bool:
        """Broker reachable with its state, partitions assigned, table recovery finished
        and the policy caught up."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the worker is not ready (None when it is)."""
        if self.guard is not None and self.guard.reason is not None:
            return self.guard.reason
        if self.watcher is not None and not self.watcher.caught_up.is_set():
            return "policy not caught up"
        consumer = self.app.consumer if self.app.producer else None
        try:
            assigned = bool(consumer and consumer.assignment())
        except Exception:
            assigned = False
        if not assigned:
            return "no partitions assigned"
        if self.app.rebalancing:
            return "rebalancing"
        if not _recovery(self.app).completed.is_set():
            return "table recovery"
        return None


def _recovery(app: faust.App) -> Recovery:
    """Faust's table recovery service (``TableManager.recovery``).

    ``app.tables`` is a ``TableManager``; its declared type ``TableManagerT`` omits
    ``recovery``.
    """
    return cast("TableManager", app.tables).recovery


def create_app(settings: Settings, metrics: Metrics | None = None) -> Riskwatch:
    """Build a Riskwatch worker app from ``settings``."""
    from streams.tuning import seek_uncommitted_to_beginning

    seek_uncommitted_to_beginning()  # Faust loses discarded records of such partitions
    metrics = metrics or Metrics()
    policy = load_policy(settings.policy_file)
    engine = Engine(policy)
    metrics.set_policy(policy.version, policy.crisis)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers],
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        web_host="127.0.0.1",
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        producer_linger=settings.producer_linger,
        producer_max_batch_size=settings.producer_max_batch_size,
        table_standby_replicas=0,
        stream_wait_empty=False,
        # Faust refuses to recover a changelog partition whose offset read so far is past
        # the broker's end offset (ConsistencyError: the worker crashes). Tansu reports
        # end offsets short of the true end, so a retained partition trips it at the
        # next rebalance. The check guards RocksDB's persisted offsets; the memory store
        # has none, and finish_recovery reads each changelog partition to its true end.
        recovery_consistency_check=False,
        logging_config=None,
        broker_credentials=faust_credentials(settings),
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                           "value_serializer": "raw"}
    ticks_name = f"{settings.app_id}-sweep-ticks"
    ticks = app.topic(ticks_name, partitions=settings.partitions, internal=True, **raw)
    source = app.topic(*CUSTOMER_TOPICS, ticks_name, **raw)
    outputs = {name: app.topic(name, **raw) for name in OUTPUT_TOPICS}
    table = app.Table(STATE_TABLE, default=None, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions)

    async def send(emit: Emit) -> None:
        key, value, headers = to_message(emit, settings.source)
        await outputs[emit.topic].send(key=key, value=value, headers=headers)
        metrics.topic(emit.topic).outputs.inc()
        if emit.topic == "risk-alerts":
            metrics.alerts.labels(emit.record.alert_type, emit.record.severity).inc()
            if "habit_drift" in emit.record.reason_codes:
                metrics.drift_detections.labels("spend").inc()
            metrics.record_bucket_move(emit.record)
        elif emit.topic == "limit-adjustments":
            metrics.limit_proposals.labels(emit.record.direction).inc()
        elif emit.topic == "customer-actions":
            metrics.customer_actions.labels(emit.record.action, emit.record.channel).inc()

    async def send_changelog(key: bytes, value: bytes, partition: int,
                             headers: list[tuple[str, bytes]]) -> Any:
        """One changelog write, straight to the producer: the table's topic would wrap
        it in Faust's message futures, callbacks and sensors, which nothing here uses."""
        return await app.producer.send(changelog_name, key, value, partition, None, headers)

    changelog_name = table.changelog_topic.get_topic_name()
    state = StateStore(table, generation=lambda: app.consumer_generation_id,
                       send=send_changelog)
    faust_apply_changelog_batch = table.apply_changelog_batch

    def apply_changelog_batch(batch: Any) -> None:
        """Faust's recovery, with zombie writes fenced (StateStore.admit)."""
        admitted = []
        for event in batch:
            message = event.message
            if state.admit(message.key, message.headers, message.partition):
                admitted.append(event)
            else:
                metrics.changelog_fenced.inc()
        faust_apply_changelog_batch(admitted)

    table.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]
    handler = Handler(engine, metrics, state, send, ticks_topic=ticks_name,
                      flush_every=settings.state_flush_every,
                      pseudonym=settings.pseudonym_key or PseudonymKey.generate())
    checkpoint_path = settings.data_dir / "models.ckpt"
    resumed = checkpoint.load(checkpoint_path)
    if resumed is not None:
        engine.restore_models(resumed.models)
        handler.learned_offsets = dict(resumed.offsets)
        log.warning("global models resumed from %s (%d partitions learned)", checkpoint_path,
                    len(resumed.offsets))

    @app.timer(settings.checkpoint_interval)
    async def checkpoint_models() -> None:
        if guard.state == LOST:  # keep the last checkpoint of the old broker's log
            return
        offsets = handler.learned_upto()
        blob = checkpoint.dumps(checkpoint.Checkpoint(engine.models(), offsets,
                                                      engine.policy.version))
        await asyncio.to_thread(checkpoint.write, checkpoint_path, blob)

    async def finish_recovery() -> int:
        """Read each active changelog partition past the end offset Faust recovered to.

        Some brokers (the Tansu development broker) report end offsets short of the
        true end, so Faust's recovery can stop before the newest state. Fetch
        responses carry the true high watermark: read from the reported end until
        it, and apply what Faust missed. Against Apache Kafka this reads nothing.
        """
        if not app.consumer:
            return 0
        actives = sorted({tp.partition for tp in app.consumer.assignment()
                          if tp.topic in CUSTOMER_TOPICS})
        if not actives:
            return 0
        name = table.changelog_topic.get_topic_name()
        tps = [AIOTopicPartition(name, p) for p in actives]
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **aiokafka_kwargs(settings))
        await start_client(consumer, settings, settings.bootstrap_servers, "table recovery")
        applied = 0
        store = table.data
        key_partition = getattr(store, "_key_partition", None)
        # Where Faust's recovery stopped applying: its highwater (reported end - 1).
        recovered_to = getattr(_recovery(app), "active_highwaters", {})
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                high = recovered_to.get(TP(tp.topic, tp.partition))
                consumer.seek(tp, high + 1 if high is not None and high >= 0 else ends[tp])
            deadline = time.monotonic() + settings.recovery_catchup_timeout
            while True:
                batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
                for tp, records in batch.items():
                    for record in records:
                        if not state.admit(record.key, record.headers, tp.partition):
                            metrics.changelog_fenced.inc()
                            continue
                        if record.value is None:
                            store.pop(record.key, None)
                            if key_partition is not None:
                                key_partition.pop(record.key, None)
                        else:
                            store[record.key] = record.value
                            if key_partition is not None:
                                key_partition[record.key] = tp.partition
                        applied += 1
                # Done once every partition has answered a fetch (its high watermark,
                # the true end, is known: None before the first answer, which a slow
                # network can delay past one poll) and was read up to it.
                done = not batch
                for tp in tps:
                    high = consumer.highwater(tp)
                    if high is None or await consumer.position(tp) < high:
                        done = False
                if done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"changelog not read to its end in "
                        f"{settings.recovery_catchup_timeout:.0f}s ({applied} records applied)")
        finally:
            await consumer.stop()
        if applied:
            log.warning("table recovery: applied %d changelog records past the end offsets "
                        "the broker reported (its end offsets are short of the true end)",
                        applied)
        metrics.recovery_gap_records.inc(applied)
        return applied

    async def rebuild_due_index() -> None:
        """After recovery: finish it, then index every customer's next check day (once)."""
        while True:
            # Recovery reads the changelog: only from a broker that still has it.
            if not await settled():
                log.error("table recovery not finished: %s (processing stays stopped)",
                          guard.reason)
                return
            try:
                await finish_recovery()
                break
            except Exception as exc:
                if guard.state != OK:  # the broker went away meanwhile: wait, then retry
                    log.warning("table recovery interrupted (%s): %r", guard.reason, exc)
                    continue
                # Faust runs recovery callbacks as tasks whose errors are only logged: the
                # worker would go ready on state without its newest updates. Crash
                # instead, so the supervisor restarts it.
                log.critical("table recovery could not finish: %r", exc)
                await app.crash(exc)
                raise
        store = getattr(table.data, "_key_partition", None)
        if store is None:
            log.warning("table store does not expose key partitions; sweeps resume as "
                        "customers' events arrive")
            return
        for raw_key, partition in list(store.items()):
            next_check, newest_ms = engine.sweep_info(table.data.get(raw_key))
            clock = handler.clock(partition)
            clock.due.add(raw_key.decode(), next_check)
            clock.recovered_ms = max(clock.recovered_ms, newest_ms)

    table.on_recover(rebuild_due_index)
    changelog_name = table.changelog_topic.get_topic_name()
    guard = BrokerGuard(frozenset({*TOPICS, changelog_name, ticks_name}))
    rw = Riskwatch(app, settings, engine, metrics, handler, guard=guard)

    def apply_policy(policy: Any, record: Any) -> None:
        engine.set_policy(policy)
        metrics.set_policy(policy.version, policy.crisis)

    async def reject_policy(value: bytes, error: DecodeError, partition: int, offset: int) -> None:
        when = dt.datetime.now(dt.UTC)
        await send(dead_letter_emit(dead_letter("risk-policy", partition, offset, None, value,
                                                error, when)))
        metrics.dead_letters.labels("risk-policy", error.reason).inc()

    rw.watcher = PolicyWatcher(settings.bootstrap_servers, apply_policy, reject_policy,
                               security=settings)

    async def on_indicator(event: Any) -> None:
        for emit in engine.on_sector_indicator(event):
            await send(emit)

    async def reject_indicator(value: bytes, error: DecodeError, partition: int,
                               offset: int) -> None:
        when = dt.datetime.now(dt.UTC)
        await send(dead_letter_emit(dead_letter("sector-indicators", partition, offset, None,
                                                value, error, when)))
        metrics.dead_letters.labels("sector-indicators", error.reason).inc()

    indicators = Follower(settings, "sector-indicators", on_indicator, reject_indicator)

    @app.task
    async def follow_indicators() -> None:
        while True:
            try:
                await indicators.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sector-indicator reader failed; retrying in 2 s")
                await asyncio.sleep(2)

    probe_lock = asyncio.Lock()
    probe_clients: dict[str, Any] = {}

    async def read_broker() -> tuple[str | None, set[str], dict[tuple[str, int], int]]:
        """The broker's cluster id, its topics and the end offsets of watched partitions."""
        from aiokafka.client import AIOKafkaClient
        from aiokafka.protocol.metadata import MetadataRequest

        client = probe_clients.get("client")
        if client is None:
            client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers,
                                    request_timeout_ms=3000, **aiokafka_kwargs(settings))
            await client.bootstrap()
            probe_clients["client"] = client
        # All topics (a request naming topics could make a broker create them).
        cluster = await client.fetch_all_metadata()
        topics = set(cluster.topics())
        cluster_id = None
        node = client.get_random_node()
        if node is not None:
            answer = await client.send(node, MetadataRequest([]))
            cluster_id = getattr(answer, "cluster_id", None)
        tps = [AIOTopicPartition(topic, p) for topic in sorted(topics & guard.watched)
               for p in sorted(cluster.partitions_for_topic(topic) or ())]
        ends: dict[tuple[str, int], int] = {}
        if tps:
            consumer = probe_clients.get("consumer")
            if consumer is None:
                consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                            group_id=None, enable_auto_commit=False,
                                            request_timeout_ms=3000,
                                            **aiokafka_kwargs(settings))
                await consumer.start()
                probe_clients["consumer"] = consumer
            answered = await consumer.end_offsets(tps)
            ends = {(tp.topic, tp.partition): int(end) for tp, end in answered.items()}
        return cluster_id, topics, ends

    def state_lost(found: list[Finding]) -> None:
        for finding in found:
            metrics.broker_state_findings.labels(finding.check).inc()
        metrics.broker_state_lost.set(1)
        metrics.processing_held.set(1)
        metrics.ready.set(0)
        log.critical(
            "BROKER STATE LOST: %s. Processing is stopped: nothing more is processed, "
            "acknowledged, written or sent, and the local state (%d customers, read from "
            "the broker's old log) is not mixed with its new one. The worker stays up and "
            "not ready until an operator acts (runbook RiskwatchBrokerStateLost).",
            guard.summary(), len(table.data))
        handler.halt()
        if app.consumer:
            with contextlib.suppress(Exception):
                app.consumer.pause_partitions(app.consumer.assignment())

    async def probe_once() -> None:
        """One probe: ``riskwatch_broker_up`` and the broker-state checks (streams.guard)."""
        async with probe_lock:
            try:
                answer = await asyncio.wait_for(read_broker(), 5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.broker_up.set(0)
                if guard.unreachable():
                    metrics.processing_held.set(1)
                    metrics.ready.set(0)
                    log.error("broker unreachable (%s): processing held until it answers "
                              "with the state this worker saw", type(exc).__name__)
                return
            metrics.broker_up.set(1)
            was, since = guard.state, guard.since
            found = guard.observe(*answer)
            if found:
                state_lost(found)
            elif was == UNREACHABLE and guard.state == OK:
                metrics.processing_held.set(0)
                log.warning("broker reachable again after %.0f s with the state this worker "
                            "saw (cluster id, topics, end offsets): processing resumes",
                            time.monotonic() - since)

    async def settled(timeout: float | None = None) -> bool:
        """Wait while the broker is unreachable (probing it); True when it is back with
        its state, False when its state was lost (or ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while guard.state == UNREACHABLE:
            await probe_once()
            if guard.state != UNREACHABLE:
                break
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(settings.broker_probe_interval)
        return guard.state == OK

    @app.task
    async def probe_broker() -> None:
        """Probe the broker every ``broker_probe_interval`` seconds (3 s timeouts)."""
        try:
            while True:
                await probe_once()
                await asyncio.sleep(settings.broker_probe_interval)
        finally:
            for client in probe_clients.values():
                with contextlib.suppress(Exception):
                    await (client.stop() if isinstance(client, AIOKafkaConsumer)
                           else client.close())

    @app.task
    async def follow_policy() -> None:
        assert rw.watcher is not None
        while True:
            try:
                await rw.watcher.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher failed; retrying in 2 s")
                await asyncio.sleep(2)

    #: Direct delivery releases held records once per fetch batch (Sink.settle).
    hold = settings.direct_delivery

    async def deliver(message: Any, ackable: Any = None) -> None:
        """One record to the handler (``ackable``: what ``handler.ack`` acknowledges;
        None: the message itself)."""
        # Held while the broker is unreachable; for good once its state was lost.
        if not guard.clear.is_set():
            await guard.clear.wait()
            # A rebalance while held: this record was fetched for an assignment that is
            # gone. Faust's stream skips such records (its generation check runs before
            # the hold); the partition's owner re-reads it from the committed offset.
            # Received here, it would be processed for a partition this worker may not
            # own, or mark its topic read past what was re-fetched.
            if message.generation_id != app.consumer_generation_id:
                return
        await handler.receive(message.topic, message.partition, message.offset,
                              message.key, message.value, message.timestamp,
                              message if ackable is None else ackable, hold=hold)
        handler.flush_behind(settings.state_flush_interval)

    direct = settings.direct_delivery
    if direct:
        from streams.tuning import Sink

        async def ack_message(message: Any) -> None:
            app.consumer.ack(message)

        async def settle() -> None:
            if handler.unreleased:
                await handler.settle()
                handler.flush_behind(settings.state_flush_interval)

        handler.ack = ack_message
        # The fetch loop (streams.tuning.use_fetch_loop) hands these topics' records to
        # the handler itself; the agent below only subscribes to them.
        app.riskwatch_sink = Sink(frozenset({*CUSTOMER_TOPICS, ticks_name}),  # type: ignore[attr-defined]
                                  deliver, settle)

    @app.agent(source, concurrency=1)
    async def customer_events(stream: Any) -> None:
        manual = stream.noack()
        if not direct:
            handler.ack = manual.ack
        # What ``manual.events()`` does, without its extra async generator per record.
        async for _ in manual:
            event = manual.current_event
            if event is not None:
                # Acknowledged as the handler's ack takes it: the event (the stream's
                # ack), or its message (the consumer's, direct delivery's ack).
                await deliver(event.message, event.message if direct else event)

    @app.timer(settings.state_flush_interval)
    async def flush_state() -> None:
        """Flush when the stream is quiet (the agent flushes while it is busy)."""
        if guard.clear.is_set() and handler.pending:
            handler.flush_behind(settings.state_flush_interval)

    #: TP per (topic, partition), built once (behind() runs for every topic per record).
    tps: dict[tuple[str, int], TP] = {}

    def tp_of(topic: str, partition: int) -> TP:
        tp = tps.get((topic, partition))
        if tp is None:
            tp = tps[(topic, partition)] = TP(topic, partition)
        return tp

    def handled_upto(topic: str, partition: int) -> int:
        """The last offset of ``topic``/``partition`` received: by this worker, or
        committed before it got the partition (a restarted worker has received nothing
        yet, though nothing may be left to read)."""
        committed = getattr(app.consumer, "_committed_offset", {}).get(tp_of(topic, partition))
        return max(handler.last_offsets.get((topic, partition), -1),
                   committed - 1 if committed is not None else -1)

    def kafka_consumer() -> Any:
        return getattr(getattr(app.consumer, "_thread", None), "_consumer", None)

    highwater = highwater_reader(kafka_consumer)
    fetched_at_tp = fetched_at_reader(kafka_consumer)

    def behind(topic: str, partition: int) -> bool:
        consumer = app.consumer
        if not consumer:
            return False
        tp = tp_of(topic, partition)
        high = highwater(tp)
        if high is None:  # not fetched yet (or not assigned): unknown, so possibly behind
            return True
        if high - 1 <= handler.last_offsets.get((topic, partition), -1):
            return False  # received up to the end (the usual case: no committed lookup)
        committed = getattr(consumer, "_committed_offset", {}).get(tp)
        return committed is None or high > committed

    handler.behind = behind

    def fetched_at(topic: str, partition: int) -> float:
        return fetched_at_tp(tp_of(topic, partition))

    if settings.fetch_gates:
        handler.fetched_at = fetched_at
        handler.live_window = settings.sweep_live_window

    @app.timer(settings.order_recheck_interval)
    async def release_held() -> None:
        """Release held records whose topics caught up, or whose gates a fetch response
        has opened, since (a held record waits for no further record)."""
        if not app.consumer or app.rebalancing or not guard.clear.is_set():
            return
        for partition, clock in list(handler.clocks.items()):
            if clock.heap:
                await handler.release(partition)

    @app.timer(settings.sweep_interval)
    async def sweep_idle() -> None:
        """Sweep idle live partitions (held records are released by release_held).

        A partition whose stream went quiet while its event time is close to the wall
        clock (a live stream, not a replay of history) is swept up to the wall clock,
        through a tick on the partition itself (so its state writes stay in it).
        """
        if not app.consumer or app.rebalancing or not guard.clear.is_set():
            return
        lateness_s = engine.policy.sweep_lateness_hours * 3600.0
        now = time.time()
        for tp in app.consumer.assignment():
            if tp.topic != ticks_name:
                continue
            clock = handler.clock(tp.partition)
            next_day = clock.due.next_day()
            idle = time.monotonic() - clock.last_event_at > settings.sweep_idle
            newest_ms = max(clock.watermark_ms, clock.recovered_ms)
            live = now - newest_ms / 1000 < settings.sweep_live_window
            if (clock.tick_pending or clock.heap or next_day is None or not idle or not live
                    or next_day > int((now - lateness_s) // 86_400)
                    # Unread records (after a restart: nothing fetched yet) come first.
                    or any(behind(topic, tp.partition) for topic in CUSTOMER_TOPICS)):
                continue
            clock.tick_pending = True
            await ticks.send(key=b"sweep", value=str(int((now - lateness_s) * 1000)).encode(),
                             partition=tp.partition)

    @app.timer(5.0)
    async def export_lag() -> None:
        if not app.consumer:
            return
        lag: dict[str, int] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in CUSTOMER_TOPICS:
                continue
            high = app.consumer.highwater(tp)
            last = handled_upto(tp.topic, tp.partition)
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, (high or 0) - last - 1)
        for topic in CUSTOMER_TOPICS:
            metrics.consumer_lag.labels(topic).set(lag.get(topic, 0))
        metrics.ready.set(1 if rw.ready() else 0)
        for grade in ("low", "medium", "high", "critical"):
            metrics.customers_by_grade.labels(grade).set(engine.grade_counts.get(grade, 0))
        if engine.quality.n:
            metrics.model_auc.labels("risk").set(engine.quality.auc)
            metrics.model_log_loss.labels("risk").set(engine.quality.log_loss)
        for (product, sector), (overdue, new) in engine.portfolio_rates().items():
            metrics.overdue_ratio.labels(product, sector).set(overdue)
            metrics.new_delinquency_ratio.labels(product, sector).set(new)
        recovery = _recovery(app)
        with contextlib.suppress(Exception):
            metrics.recovery_remaining.set(recovery.active_remaining_total())

    # Faust sends the revoked set positionally (send(revoked)); mode's handler type
    # only admits handlers taking (sender, *args, signal=..., **kwargs).
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _on_rebalance(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # State writes go to a broker that still has the log they follow: after an
        # outage, only once the probe found it unchanged (never once its state was lost).
        try:
            if await settled(timeout=30.0):
                await handler.flush()
        except Exception as exc:
            # Not flushed: the revoked partitions' state is dropped below (their records
            # are re-read), never written later under the next generation.
            log.error("state flush at a rebalance failed (%s); unwritten state of the "
                      "revoked partitions is dropped and their records re-read",
                      type(exc).__name__)
        async with handler.flush_lock:
            handler.drop({tp.partition for tp in revoked if tp.topic in CUSTOMER_TOPICS})
        state.reset_fencing()
        metrics.rebalances.inc()
        metrics.ready.set(0)

    @app.task
    async def serve_http() -> None:
        from streams.web import start_http

        await start_http(rw)

    return rw


async def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach.

    A worker holds a few hundred thousand long-lived objects (Faust, aiokafka, the
    global models, the recovered state); each full collection walked them all and
    stopped the event loop for 60 to 80 ms, every few seconds under load (the
    benchmark's alert latency p99). Run after each table recovery: one last full
    collection, then ``gc.freeze()``; later collections only walk objects made
    since. Frozen objects are still freed when their reference count drops; only
    cycles among them would stay (``riskwatch_gc_pause_seconds`` shows the pauses).
    """
    import gc

    gc.collect()
    gc.freeze()


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM (blocks)."""
    import mode.loop

    preflight(settings)  # refused TLS or credentials: fail now, with the cause
    mode.loop.use("uvloop")
    if settings.fetch_max_wait is not None:
        from streams.tuning import set_group_fetch_wait

        set_group_fetch_wait(int(settings.fetch_max_wait * 1000))
    from streams.tuning import use_fetch_loop

    use_fetch_loop()
    rw = create_app(settings)
    import gc

    gc.callbacks.append(rw.metrics.on_gc)
    rw.app.tables[STATE_TABLE].on_recover(freeze_heap)  # with rebuild_due_index
    worker = faust.Worker(rw.app, loglevel=settings.loglevel, quiet=True)
    # The terminal spinner sets the root logger to DEBUG, so every debug() call in Faust
    # and aiokafka builds a log record: about a quarter of the worker's CPU.
    worker.spinner = None
    worker.execute_from_commandline()
