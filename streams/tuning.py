"""Faust behaviour that has no setting: the group consumer's fetch wait, the seek of
partitions with no committed offset, and (experimental) direct delivery.

Faust builds its group consumer with ``fetch_max_wait_ms=1500`` hard-coded.
Apache Kafka answers a fetch as soon as data is there, so the value is
harmless there; a broker that holds every fetch for the whole wait (the Tansu
development broker) adds up to 1.5 s per hop. :func:`set_group_fetch_wait`
lets the worker choose (``Settings.fetch_max_wait``).
"""

from __future__ import annotations

import asyncio
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


def use_direct_delivery() -> None:
    """Deliver fetched records to the Conductor without four tasks per record.

    Faust's fetch loop (``Consumer._drain_messages``) awaits every record's
    delivery through ``Service.wait_first(callback(message), suspend_flow.wait())``,
    which creates four tasks (the callback, the suspend-flow event, the
    consumer's stopped and crashed events) and an ``asyncio.wait`` per record.
    This loop awaits the delivery directly while the flow is not suspended and
    keeps Faust's path for a suspended flow (a rebalance: the record is skipped,
    as Faust skips it, and re-read from the committed offset afterwards).

    Experimental and off by default (``Settings.direct_delivery``): it halves the
    bare consume-and-decode agent's CPU per event and makes the worker about a third
    faster, but with it the two-worker fault-injection test
    (``tests/reliability/test_faults.py``) fails: after kill -9s during rebalances
    input offsets stop being committed and outputs go missing. Faust's own path
    relies on the per-record tasks in ways not yet understood here.
    """
    from faust.transport import consumer as faust_consumer

    cls = faust_consumer.Consumer
    if getattr(cls, "_riskwatch_direct", False):
        return

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - Faust's
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        # One pass of the event loop per record, as Faust's tasks gave:
                        # the agent and a rebalance's callbacks (which suspend the flow)
                        # run between records, so a batch fetched before a rebalance is
                        # not delivered past it.
                        await sleep(0)
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if suspended():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                await callback(message)
                            set_read_offset(tp, offset)
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

    # Deliberate monkeypatch of Faust's consumer class (and a marker attribute so it
    # is applied once); mypy rejects both on the class as Faust declares it.
    cls._drain_messages = _drain_messages  # type: ignore[method-assign]
    cls._riskwatch_direct = True  # type: ignore[attr-defined]


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
