"""Faust behaviour that has no setting: the group consumer's fetch wait, the seek of
partitions with no committed offset, and direct delivery of fetched records.

Faust builds its group consumer with ``fetch_max_wait_ms=1500`` hard-coded.
Apache Kafka answers a fetch as soon as data is there, so the value is
harmless there; a broker that holds every fetch for the whole wait (the Tansu
development broker) adds up to 1.5 s per hop. :func:`set_group_fetch_wait`
lets the worker choose (``Settings.fetch_max_wait``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka

_BASE = aiokafka.AIOKafkaConsumer


def set_group_fetch_wait(ms: int) -> None:
    """Make consumers built with a ``group_id`` use ``fetch_max_wait_ms=ms``."""

    class GroupConsumer(_BASE):  # type: ignore[misc, valid-type]
        def __init__(self, *topics: Any, **kwargs: Any) -> None:
            if kwargs.get("group_id") is not None:
                kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*topics, **kwargs)

    aiokafka.AIOKafkaConsumer = GroupConsumer  # type: ignore[misc]


class _Rest:
    """The rest of a coroutine that suspended on its first step, as an awaitable.

    ``await`` (or a task) on it continues the coroutine exactly where its first
    ``send(None)`` left it: it yields the future the coroutine was waiting on, then
    relays values, exceptions and cancellation both ways until the coroutine returns.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Any:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and throw(): pass it on
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def first_step(coro: Any) -> _Rest | None:
    """Run ``coro`` up to its first suspension: None if it finished without one
    (its exception, if any, is raised here), else the awaitable rest of it.

    >>> async def quick() -> int:
    ...     return 1
    >>> first_step(quick()) is None
    True
    >>> async def slow() -> int:
    ...     await asyncio.sleep(0)
    ...     return 2
    >>> async def main() -> int:
    ...     rest = first_step(slow())
    ...     return await asyncio.ensure_future(rest)
    >>> asyncio.run(main())
    2
    """
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, pending)


def fetch_loop(direct: bool) -> Callable[[Any, Any], Awaitable[None]]:
    """The fetch loop :func:`use_fetch_loop` installs as ``Consumer._drain_messages``:
    ``await fetch_loop(direct)(consumer, fetcher)`` runs it for a Faust consumer."""
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
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                if not self.flow_active:  # as getmany would, but before the generation
                    await self.wait(self.can_resume_flow)
                    continue
                # The generation the fetch below is made in. Records it returns after a
                # rebalance (the result waited while the rebalance ran) are stale.
                generation = app.consumer_generation_id
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
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                                if app.consumer_generation_id != generation:
                                    stale = True
                                    break
                            if direct:
                                rest = first_step(callback(message))
                                if rest is not None:
                                    await wait_first(rest, suspend_flow.wait())
                            else:
                                await wait_first(callback(message), suspend_flow.wait())
                            if app.consumer_generation_id != generation:
                                stale = True
                                break
                            set_read_offset(tp, offset)
                        if direct:
                            # One pass of the event loop per record, as Faust's own loop
                            # makes: the agent takes the record before the next is
                            # fetched and rebalance callbacks run before it (the next
                            # step of ``getmany`` stops at a suspended flow or a new
                            # generation).
                            await sleep(0)
                        else:
                            since_yield += 1
                            if since_yield > 100:  # as Faust's loop
                                await sleep(0)
                                since_yield = 0
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


def use_fetch_loop(direct: bool = True) -> None:
    """Replace Faust's fetch loop: with ``direct``, deliver fetched records to the
    Conductor without four tasks per record; either way, drop records whose fetch was
    made before a rebalance (Faust's loop delivers them).

    Faust's fetch loop (``Consumer._drain_messages``) awaits every record's
    delivery through ``Service.wait_first(callback(message), suspend_flow.wait())``,
    which creates four tasks (the callback, the suspend-flow event, the
    consumer's stopped and crashed events) and an ``asyncio.wait`` per record, so
    that a delivery waiting on flow control or on a full stream buffer is abandoned
    when a rebalance suspends the flow (the record is re-read from the committed
    offset afterwards).

    Here the delivery coroutine first runs synchronously up to its first
    suspension. Nearly always it finishes there (the record is in the stream's
    buffer) and no task is made. If it has to wait (flow control suspended, producer
    buffer full, stream buffer full) the rest of it goes through Faust's own
    ``wait_first`` with the suspend-flow event, so it is abandoned exactly when
    Faust would abandon it. After each record the loop yields to the event loop
    once, as Faust's own loop does: the agent takes the record before the next
    one is delivered, and rebalance callbacks (flow suspended, new generation) run
    before the next record is taken from the fetched batch.

    It also closes a race of Faust's loop. A fetch made before a rebalance can return
    after it: the consumer thread ran the rebalance, the seek back to the committed
    offsets included, while the result waited for the main loop. Faust tags such
    records with the new generation and delivers them. Their offsets can be past
    the committed ones (this worker had read that far), so the fetch loop's read
    offset jumps ahead and the records re-read from the committed offset are then
    dropped as already read: never delivered, never acknowledged. Commits stop on
    that partition until the next rebalance, and what arrived meanwhile is
    processed without them. That fits what full fault runs showed (input commits
    stalled for minutes on one partition; false missed-payment actions), and with
    the check below the workers log the drop several times per run. Here a batch
    is dropped once the generation differs from the one its fetch was made in,
    before or after any await of the loop, and the consumer seeks back to the
    committed offsets if the rebalance has already finished.

    ``direct=False`` keeps Faust's delivery (``wait_first`` per record, a yield every
    100 records) with that fix. The worker installs one or the other
    (``Settings.direct_delivery``); ``bench.run --experiments direct`` measures
    direct delivery against the Faust-style one.
    """
    from faust.transport import consumer as faust_consumer

    cls = faust_consumer.Consumer
    if getattr(cls, "_riskwatch_loop", None) is direct:
        return

    # Deliberate monkeypatch of Faust's consumer class (and a marker attribute so it
    # is applied once); mypy rejects both on the class as Faust declares it.
    cls._drain_messages = fetch_loop(direct)  # type: ignore[method-assign, assignment]
    cls._riskwatch_loop = direct  # type: ignore[attr-defined]


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


def highwater_reader(kafka_consumer: Callable[[], Any]) -> Callable[[Any], int | None]:
    """A fast ``highwater(tp)``: aiokafka's last fetched high-water mark of an assigned
    partition, None when unknown (not assigned, or not fetched yet).

    Faust's ``consumer.highwater(tp)`` reads the same value through three layers and a
    settings lookup (is the app transactional?), and aiokafka asserts the partition is
    assigned; the worker asks for it for every topic of a partition on every record (its
    event-time ordering, :meth:`streams.app.PartitionClock.bound_ms`). This reads the
    partition's state straight from the consumer's current assignment (replaced
    whole on every rebalance). ``kafka_consumer`` returns the aiokafka consumer
    (None before it starts). For at-least-once apps only: a transactional app's
    bound is the last stable offset.
    """

    def highwater(tp: Any) -> int | None:
        consumer = kafka_consumer()
        if consumer is None:
            return None
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return None
        state = assignment.state_value(tp)
        return None if state is None else state.highwater

    return highwater
