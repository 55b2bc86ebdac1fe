"""Faust behaviour that has no setting: the group consumer's fetch wait, the seek of
partitions with no committed offset, and the fetch loop (stale fetches dropped, and
direct delivery of fetched records to the worker's handler).

Faust builds its group consumer with ``fetch_max_wait_ms=1500`` hard-coded.
Apache Kafka answers a fetch as soon as data is there, so the value is
harmless there; a broker that holds every fetch for the whole wait (the Tansu
development broker) adds up to 1.5 s per hop. :func:`set_group_fetch_wait`
lets the worker choose (``Settings.fetch_max_wait``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import chain, repeat, zip_longest
from operator import is_not
from typing import Any

import aiokafka
from faust.transport.utils import DefaultSchedulingStrategy

_BASE = aiokafka.AIOKafkaConsumer


def set_group_fetch_wait(ms: int) -> None:
    """Make consumers built with a ``group_id`` use ``fetch_max_wait_ms=ms``."""

    class GroupConsumer(_BASE):  # type: ignore[misc, valid-type]
        def __init__(self, *topics: Any, **kwargs: Any) -> None:
            if kwargs.get("group_id") is not None:
                kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*topics, **kwargs)

    aiokafka.AIOKafkaConsumer = GroupConsumer  # type: ignore[misc]


@dataclass(frozen=True)
class Sink:
    """Where the fetch loop delivers records of ``topics`` itself, without Faust's
    conductor, stream and agent: ``await deliver(message)`` per record (a Faust
    ``Message``; the sink acknowledges it through ``consumer.ack`` when it is done).
    A worker registers it as ``app.riskwatch_sink`` (``Settings.direct_delivery``).

    ``settle`` (optional) is awaited after the records of each fetch are delivered, and
    before each pass of the event loop the fetch loop makes: a sink may then do once
    per batch what would cost it per record (the worker releases held records then)."""

    topics: frozenset[str]
    deliver: Callable[[Any], Awaitable[None]]
    settle: Callable[[], Awaitable[None]] | None = None


#: Records handed to a sink between two passes of the event loop.
SINK_YIELD_EVERY = 64


def seeks_begun(consumer: Any) -> int:
    """How many seeks back to the committed offsets ``consumer`` has begun (counted by
    :func:`use_fetch_loop`'s wrapper of ``perform_seek``)."""
    return int(getattr(consumer, "_riskwatch_seeks", 0))


def fetch_loop() -> Callable[[Any, Any], Awaitable[None]]:
    """The fetch loop :func:`use_fetch_loop` installs as ``Consumer._drain_messages``:
    ``await fetch_loop()(consumer, fetcher)`` runs it for a Faust consumer."""
    from faust.transport import consumer as faust_consumer

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspend_flow = self.suspend_flow
        wait_first = self.wait_first
        app = self.app
        sleep = asyncio.sleep
        since_yield = 0
        #: Seek count when sink records were last skipped (None: none waiting).
        reseek: int | None = None
        #: The commit started every ``commit_every`` acknowledgements, while it runs.
        committing: asyncio.Future[Any] | None = None
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if committing is not None and committing.done():
                    committing.result()  # a background commit's error is raised here
                    committing = None
                set_flag(flag_consumer_fetching)
                if not self.flow_active:  # as getmany would, but before the generation
                    await self.wait(self.can_resume_flow)
                    continue
                sink: Sink | None = getattr(app, "riskwatch_sink", None)
                sink_topics = sink.topics if sink is not None else frozenset()
                settle = sink.settle if sink is not None else None
                if reseek is not None:
                    if seeks_begun(self) > reseek:
                        reseek = None  # a seek began after they were skipped
                    elif not app.rebalancing:
                        reseek = None
                        self.log.info("records skipped while a rebalance was on; "
                                      "seeking back to the committed offsets")
                        await self.perform_seek()
                        continue
                # The generation and the seek count the fetch below is made in. Records
                # it returns after a rebalance (the result waited while the rebalance
                # ran) are stale; so are, for a sink, records returned across a seek.
                generation = app.consumer_generation_id
                seeks = seeks_begun(self)
                quiet = not app.rebalancing
                stale = False
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        if app.consumer_generation_id != generation:
                            stale = True
                            break
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            to_sink = message.topic in sink_topics
                            if to_sink and not (quiet and not app.rebalancing
                                                and seeks_begun(self) == seeks):
                                # Fetched while a rebalance was on, or across a seek: its
                                # position may be one the rebalance's seek goes back from
                                # (Faust's own loop leaves such records in the stream
                                # buffers, which the flow's resume clears). Not delivered,
                                # no read offset; re-read after a seek that follows.
                                reseek = seeks_begun(self)
                                continue
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                # In the background: a commit first waits for every
                                # pending send (producer flush), then for the broker.
                                committing = _commit_behind(self, committing)
                            if to_sink:
                                await sink.deliver(message)  # type: ignore[union-attr]
                            else:
                                await wait_first(callback(message), suspend_flow.wait())
                            if app.consumer_generation_id != generation:
                                stale = True
                                break
                            set_read_offset(tp, offset)
                        since_yield += 1
                        if since_yield > (SINK_YIELD_EVERY if sink is not None else 100):
                            if settle is not None:
                                await settle()
                            await sleep(0)  # as Faust's loop
                            since_yield = 0
                    if settle is not None:
                        await settle()
                    if stale and self.flow_active:
                        # The rebalance went on while these records were on their
                        # way: what the fetch took is not delivered, so go back to the
                        # committed offsets. Needed even while a table recovery is still
                        # on: the batch may hold the changelog records it waits for.
                        self.log.info("records fetched before a rebalance dropped; "
                                      "seeking back to the committed offsets")
                        await self.perform_seek()
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    return _drain_messages


#: zip_longest's fill in :func:`round_robin` (never a record).
_GAP = object()


def round_robin(records: Mapping[Any, list[Any]]) -> Iterator[tuple[Any, Any]]:
    """``(tp, record)`` of a fetch in the order of Faust's ``DefaultSchedulingStrategy``:
    one record per topic in turn, and within a topic one per partition in turn (topics
    and partitions as they first appear in ``records``), built by ``itertools`` in C
    instead of two Python generators a record.

    >>> from faust.types import TP
    >>> a0, a1, b0 = TP("a", 0), TP("a", 1), TP("b", 0)
    >>> [(tp.topic, tp.partition, r) for tp, r in round_robin({a0: [1, 2, 3], b0: [7], a1: [4]})]
    [('a', 0, 1), ('b', 0, 7), ('a', 1, 4), ('a', 0, 2), ('a', 0, 3)]
    """
    by_topic: dict[str, list[Iterator[tuple[Any, Any]]]] = {}
    for tp, batch in records.items():
        by_topic.setdefault(tp.topic, []).append(zip(repeat(tp), batch))
    record = partial(is_not, _GAP)
    # An exhausted partition, then topic, is skipped without taking a turn (the gaps
    # go before the topics are interleaved).
    topics = [filter(record, chain.from_iterable(zip_longest(*parts, fillvalue=_GAP)))
              for parts in by_topic.values()]
    return filter(record, chain.from_iterable(zip_longest(*topics, fillvalue=_GAP)))


async def _getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    """Faust's ``Consumer.getmany`` with less work per record (the fetch loop's source).

    The same records as Faust's, in the same order (:func:`round_robin`, unless the app
    has a scheduling strategy of its own), as the same messages (its ``_to_message``),
    under the same checks per record (flow active, generation unchanged, partition
    active). Done once per partition and fetch instead of once per record: reading the
    partition's high water (three layers deep, and a settings lookup) for the
    monitor's end offset, which keeps the last value given.
    ``tests/streams/test_tuning_fetch.py`` compares the two.
    """
    records, active_partitions = await self._wait_next_records(timeout)
    app = self.app
    generation_id = app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
        try:
            await self.perform_seek()
        except Exception as ex:
            self.log.warning(f"exception performing seek when flow not active {ex}")
        return
    buffered = self._buffered_partitions
    highwater = self.highwater
    track_end_offset = app.monitor.track_tp_end_offset
    to_message = self._to_message
    tracked: set[Any] = set()
    scheduler = self.scheduler
    order = (round_robin if type(scheduler) is DefaultSchedulingStrategy  # (the default)
             else scheduler.iterate)
    for tp, record in order(records):
        if not self.flow_active:
            break
        if app.consumer_generation_id != generation_id:
            self.log.dev("Generation id changed from %r to %r. Cancelling getmany.",
                         generation_id, app.consumer_generation_id)
            break
        if active_partitions is None or tp in active_partitions or tp in buffered:
            if tp not in tracked:
                tracked.add(tp)
                track_end_offset(tp, highwater(tp))
            yield tp, to_message(tp, record)


def _commit_behind(consumer: Any, running: asyncio.Future[Any] | None
                   ) -> asyncio.Future[Any]:
    """Start ``consumer.commit()`` as a task, unless one started so is still running
    (that one commits these acknowledgements too, or the next does); the task that
    runs. A finished one's error is raised here.

    Faust's fetch loop awaits the commit every ``broker_commit_every`` acknowledgements.
    A commit first flushes the producer (every pending send acknowledged by the
    broker), then commits through the consumer thread: tens of milliseconds on the
    development broker, during which no record was delivered (every record that
    arrived then waited: the latency tail). Faust's commit timer commits from a task of
    its own already; this commit runs beside delivery the same way. Delivery only
    acknowledges finished records, so what a commit takes is a prefix of them either
    way.
    """
    if running is not None:
        if not running.done():
            return running
        running.result()
    # (Its error is raised by the fetch loop; one that ends after the loop is logged by
    # asyncio as never retrieved.)
    return asyncio.ensure_future(consumer.commit())


def _counting_seeks(perform_seek: Callable[[Any], Awaitable[None]]) -> Any:
    async def counted(self: Any) -> None:
        # Counted as it begins: a seek that begins after records were fetched runs after
        # the fetch in the consumer thread (its calls run in order), so it repositions
        # behind them.
        self._riskwatch_seeks = seeks_begun(self) + 1
        await perform_seek(self)

    counted._riskwatch_counted = True  # type: ignore[attr-defined]
    return counted


def use_fetch_loop() -> None:
    """Replace Faust's fetch loop (``Consumer._drain_messages``) with
    :func:`fetch_loop`: Faust's delivery, two fixes, and direct delivery to a
    :class:`Sink`. Idempotent.

    **Stale fetches.** A fetch made before a rebalance can return after it: the
    consumer thread ran the rebalance, the seek back to the committed offsets
    included, while the result waited for the main loop. Faust tags such records
    with the new generation and delivers them. Their offsets can be past the
    committed ones (this worker had read that far), so the fetch loop's read offset
    jumps ahead and the records re-read from the committed offset are then dropped
    as already read: never delivered, never acknowledged. Commits stop on that
    partition until the next rebalance, and what arrived meanwhile is processed
    without them (full fault runs showed input commits stalled for minutes on one
    partition, and false missed-payment actions). Here a batch is dropped once the
    generation differs from the one its fetch was made in, before or after any
    await of the loop, and the consumer seeks back to the committed offsets if the
    rebalance has already finished.

    **Direct delivery.** Faust delivers each record through its conductor into a
    stream buffer, with four tasks and an ``asyncio.wait`` per record
    (``wait_first(callback(message), suspend_flow.wait())``), and the agent takes
    it from there. When the app has a :class:`Sink` (``app.riskwatch_sink``), the
    records of its topics go to ``sink.deliver`` straight from this loop, one after
    the other, with a pass of the event loop every :data:`SINK_YIELD_EVERY` records;
    other topics (table changelogs) keep Faust's delivery. The stream buffers did
    one more job, which the sink rule below takes over: at the end of a rebalance
    Faust resumes the stream partitions, *then* seeks them to the committed
    offsets, and the flow's resume clears every stream buffer. Records fetched in
    between (from where the worker had read before the rebalance) sat in those
    buffers and were thrown away; delivered directly, they would be processed
    before the records that precede them, which are re-read after the seek (a
    traced fault run showed exactly that: five records of a partition processed
    after later ones). So a sink record is delivered only if the fetch was made
    with no rebalance on, and no seek began and no rebalance started since. Else
    it is skipped, without a read offset, and the loop makes sure a seek back to
    the committed offsets begins after it: the rebalance's own, or, once the
    rebalance is over, one of its own.
    """
    from faust.transport import consumer as faust_consumer

    cls = faust_consumer.Consumer
    if getattr(cls, "_riskwatch_loop", False):
        return
    # Deliberate monkeypatch of Faust's consumer class (and a marker attribute so it
    # is applied once); mypy rejects both on the class as Faust declares it.
    cls._drain_messages = fetch_loop()  # type: ignore[method-assign, assignment]
    cls._faust_getmany = cls.getmany  # type: ignore[attr-defined]
    cls.getmany = _getmany  # type: ignore[method-assign, assignment]
    if not getattr(cls.perform_seek, "_riskwatch_counted", False):
        cls.perform_seek = _counting_seeks(cls.perform_seek)  # type: ignore[method-assign]
    cls._riskwatch_loop = True  # type: ignore[attr-defined]


async def _seek_to_committed(self: Any) -> Any:
    consumer = self._ensure_consumer()

    async def seek() -> Any:
        committed = await consumer.seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        return committed

    return await self.call_thread(seek)


def seek_uncommitted_to_beginning() -> None:
    """Make Faust's seek to committed offsets also rewind partitions with none.

    Faust discards records it fetched for a generation that ended (a rebalance while
    they were buffered, or processing held) and relies on seeking every partition back
    to its committed offset. aiokafka seeks only when the committed offset is above 0,
    so a partition with nothing committed yet kept its fetch position: the discarded
    records were never delivered again (the fault test lost the first credit
    applications of a partition after a blackout). Here such partitions go back to
    their beginning, which is what ``auto_offset_reset="earliest"`` means. Idempotent.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]


def partition_state_reader(kafka_consumer: Callable[[], Any]) -> Callable[[Any], Any]:
    """A fast read of aiokafka's fetch state of an assigned partition (its
    ``TopicPartitionState``: ``highwater``, and ``timestamp``, the wall-clock ms at which
    the fetch response that last reported the high water was processed), None when not
    assigned. ``kafka_consumer`` returns the aiokafka consumer (None before it starts).

    Faust's ``consumer.highwater(tp)`` reads the high water through three layers and a
    settings lookup (is the app transactional?), and aiokafka asserts the partition is
    assigned; the worker asks for it for every topic of a partition on every record (its
    event-time ordering, :meth:`streams.app.PartitionClock.bound`). This reads the
    partition's state straight from the consumer's current assignment (replaced
    whole on every rebalance, its partition states made with it), kept per partition
    until the assignment is replaced. For at-least-once apps only: a transactional
    app's bound is the last stable offset.
    """
    #: The assignment ``states`` are of, and its partitions' states looked up so far.
    held: list[Any] = [None]
    states: dict[Any, Any] = {}

    def state(tp: Any) -> Any:
        consumer = kafka_consumer()
        if consumer is None:
            return None
        # (aiokafka's SubscriptionState.subscription and Subscription.assignment, read
        # without their property calls)
        subscription = consumer._subscription._subscription
        assignment = subscription._assignment if subscription is not None else None
        if assignment is not held[0]:
            states.clear()
            held[0] = assignment
        if assignment is None:
            return None
        found = states.get(tp)
        if found is None:
            found = assignment.state_value(tp)
            if found is not None:
                states[tp] = found
        return found

    return state


def highwater_reader(kafka_consumer: Callable[[], Any]) -> Callable[[Any], int | None]:
    """A fast ``highwater(tp)``: aiokafka's last fetched high-water mark of an assigned
    partition, None when unknown (not assigned, or not fetched yet); see
    :func:`partition_state_reader`."""
    read = partition_state_reader(kafka_consumer)

    def highwater(tp: Any) -> int | None:
        state = read(tp)
        return None if state is None else state.highwater

    return highwater


def fetched_at_reader(kafka_consumer: Callable[[], Any]) -> Callable[[Any], float]:
    """``fetched_at(tp)``: the wall-clock time (Unix s, from aiokafka's ms) at which the
    fetch response that last reported the partition's high water was processed; 0.0
    when unknown (not assigned, or not fetched yet). See :func:`partition_state_reader`.
    """
    read = partition_state_reader(kafka_consumer)

    def fetched_at(tp: Any) -> float:
        state = read(tp)
        stamp = None if state is None else state.timestamp
        return 0.0 if stamp is None else stamp / 1000.0

    return fetched_at
