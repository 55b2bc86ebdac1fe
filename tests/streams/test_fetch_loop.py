"""streams.tuning.fetch_loop: records whose fetch was made before a rebalance are not
delivered, and the consumer seeks back to the committed offsets.

The race needs a fetch answered after a whole rebalance, which a real broker gives
only now and then (the full fault run sees it several times per run; see
``scripts/faults.sh``). Here the loop runs against a stand-in for the part of Faust's
``Consumer`` it uses, and the test decides when the generation changes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from streams.tuning import fetch_loop


class _Message:
    def __init__(self, offset: int, generation: int) -> None:
        self.offset = offset
        self.topic = "t"
        self.generation_id = generation


class _Flags:
    def set_flag(self, flag: Any) -> None:
        pass

    def unset_flag(self, flag: Any) -> None:
        pass


class _Topics:
    def acks_enabled_for(self, topic: str) -> bool:
        return True


class _App:
    def __init__(self) -> None:
        self.consumer_generation_id = 1
        self.topics = _Topics()
        self.should_stop = False


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str, *args: Any) -> None:
        self.lines.append(text % args if args else text)

    exception = info


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


class _Consumer:
    """What the fetch loop uses of Faust's ``Consumer``. ``batches`` are fetches: each a
    list of offsets, and optionally the generation the group moves to while that fetch
    is in flight (the rebalance finishes before its answer is read)."""

    consumer_stopped_errors = (RuntimeError,)

    def __init__(self, batches: list[tuple[list[int], int | None]]) -> None:
        self.app = _App()
        self.transport = self
        self.batches = list(batches)
        self.delivered: list[int] = []
        self.seeks = 0
        self._stopped = asyncio.Event()
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self.diag = _Flags()
        self.suspend_flow = asyncio.Event()
        self.flow_active = True
        self.should_stop = False
        self.log = _Log()
        self.fetcher = _Fetcher()
        self.can_resume_flow = asyncio.Event()
        self.waited = 0

    async def callback(self, message: _Message) -> None:
        self.delivered.append(message.offset)

    def getmany(self, timeout: float) -> Any:
        async def fetch() -> Any:
            if not self.batches:
                self.fetcher._stopped.set()
                return
            offsets, moves_to = self.batches.pop(0)
            await asyncio.sleep(0)  # the fetch is in flight
            if moves_to is not None:
                self.app.consumer_generation_id = moves_to
            for offset in offsets:
                yield "tp", _Message(offset, self.app.consumer_generation_id)

        return fetch()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event) -> None:
        self.waited += 1
        self.flow_active = True  # the rebalance finishes
        self.app.consumer_generation_id += 1
        event.set()

    async def wait_first(self, *coros: Any) -> None:
        tasks = [asyncio.ensure_future(c) for c in coros]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def _add_gap(self, tp: Any, start: int, end: int) -> None:
        pass

    async def commit(self) -> None:
        pass

    async def perform_seek(self) -> None:
        self.seeks += 1
        self._read_offset["tp"] = 3  # the committed offset


async def _run(direct: bool, batches: list[tuple[list[int], int | None]]) -> _Consumer:
    consumer = _Consumer(batches)
    await asyncio.wait_for(fetch_loop(direct)(consumer, consumer.fetcher), 5)
    return consumer


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "faust-style"])
async def test_a_fetch_answered_after_a_rebalance_is_dropped_and_sought_back(direct):
    """The seek is needed even while the table recovery is still on: the dropped batch
    may hold the changelog records the recovery waits for (without it, a full fault run
    had a worker stuck in recovery for two minutes)."""
    consumer = await _run(direct, [
        ([0, 1, 2], None),
        ([7, 8, 9], 2),   # made in generation 1, answered in generation 2
        ([3, 4, 5], None),  # re-read from the committed offset, generation 2
    ])
    assert consumer.delivered == [0, 1, 2, 3, 4, 5]
    assert consumer.seeks == 1
    assert consumer._read_offset["tp"] == 5
    assert any("dropped" in line for line in consumer.log.lines)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "faust-style"])
async def test_records_of_the_current_generation_all_arrive(direct):
    consumer = await _run(direct, [([0, 1], None), ([2, 3, 4], None), ([5], None)])
    assert consumer.delivered == [0, 1, 2, 3, 4, 5]
    assert consumer.seeks == 0


async def test_a_rebalance_in_the_middle_of_a_batch_stops_it_without_a_read_offset():
    """The generation moves while the loop waits for a delivery: the rest of the batch is
    not delivered and the read offset stays at the last record delivered before."""
    consumer = _Consumer([([0, 1, 2, 3], None)])
    deliver = consumer.callback

    async def slow_at_two(message: _Message) -> None:
        if message.offset == 2:
            await asyncio.sleep(0)
            consumer.app.consumer_generation_id = 2
            consumer.flow_active = False  # the rebalance is still running
        await deliver(message)

    consumer.callback = slow_at_two  # type: ignore[method-assign]
    await asyncio.wait_for(fetch_loop(False)(consumer, consumer.fetcher), 5)
    assert consumer.delivered == [0, 1, 2]
    assert consumer._read_offset["tp"] == 1
    assert consumer.seeks == 0  # the rebalance's own recovery seeks


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "faust-style"])
async def test_a_fetch_waits_for_the_flow_before_it_takes_the_generation(direct):
    """Flow stopped (a rebalance): the loop waits for it to resume before it fetches, so
    a fetch made after the rebalance is not taken for a stale one."""
    consumer = _Consumer([([0, 1], None)])
    consumer.flow_active = False
    await asyncio.wait_for(fetch_loop(direct)(consumer, consumer.fetcher), 5)
    assert consumer.waited == 1
    assert consumer.delivered == [0, 1]
    assert consumer.seeks == 0
