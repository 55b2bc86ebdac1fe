"""streams.tuning.fetch_loop: records whose fetch was made before a rebalance are not
delivered, and the consumer seeks back to the committed offsets; records for a sink
(direct delivery) are delivered only from fetches made with no rebalance on and no seek
since, and re-read after one.

These races need a fetch answered after a whole rebalance, or in the moment between
the end of a rebalance and its seek, which a real broker gives only now and then (the
full fault run sees them several times per run; see ``scripts/faults.sh``). Here the
loop runs against a stand-in for the part of Faust's ``Consumer`` it uses, and the
test decides when the generation changes, a rebalance runs and a seek begins.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from streams.tuning import Sink, _counting_seeks, fetch_loop


class _Message:
    def __init__(self, offset: int, generation: int, topic: str = "t") -> None:
        self.offset = offset
        self.topic = topic
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
        self.rebalancing = False
        self.riskwatch_sink: Sink | None = None


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


def _with_sink(consumer: _Consumer) -> _Consumer:
    """Records of topic ``t`` go to a sink (direct delivery), as the worker's do."""

    async def deliver(message: _Message) -> None:
        consumer.delivered.append(message.offset)

    consumer.app.riskwatch_sink = Sink(frozenset({"t"}), deliver)
    return consumer


async def _run(direct: bool, batches: list[tuple[list[int], int | None]]) -> _Consumer:
    consumer = _Consumer(batches)
    if direct:
        _with_sink(consumer)
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
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
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    assert consumer.delivered == [0, 1, 2]
    assert consumer._read_offset["tp"] == 1
    assert consumer.seeks == 0  # the rebalance's own recovery seeks


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "faust-style"])
async def test_a_fetch_waits_for_the_flow_before_it_takes_the_generation(direct):
    """Flow stopped (a rebalance): the loop waits for it to resume before it fetches, so
    a fetch made after the rebalance is not taken for a stale one."""
    consumer = _Consumer([([0, 1], None)])
    if direct:
        _with_sink(consumer)
    consumer.flow_active = False
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    assert consumer.waited == 1
    assert consumer.delivered == [0, 1]
    assert consumer.seeks == 0


class _Partition(_Consumer):
    """A partition of ``end`` records behind a fetch position, for direct delivery.

    A fetch takes the next ``per_fetch`` records from the position; ``during[n]`` runs
    while fetch ``n`` (from 1) is in flight. A seek moves the position back to the
    committed offset, which follows what the sink was given (as if each record were
    acknowledged and committed at once). The delivered offsets must be the log, in
    order, each once: no hole, nothing out of order.
    """

    def __init__(self, end: int, during: dict[int, Any], per_fetch: int = 3) -> None:
        super().__init__([])
        self.end = end
        self.position = 0
        self.committed = 0
        self.per_fetch = per_fetch
        self.during = during
        self.fetches = 0
        self.callbacks: list[tuple[str, int]] = []
        _with_sink(self)
        deliver = self.app.riskwatch_sink.deliver

        async def commit_as_delivered(message: _Message) -> None:
            await deliver(message)
            self.committed = message.offset + 1

        self.app.riskwatch_sink = Sink(frozenset({"t"}), commit_as_delivered)

    async def callback(self, message: _Message) -> None:
        self.callbacks.append((message.topic, message.offset))

    def getmany(self, timeout: float) -> Any:
        async def fetch() -> Any:
            if self.position >= self.end:
                self.fetcher._stopped.set()
                return
            self.fetches += 1
            start = self.position
            offsets = list(range(start, min(self.end, start + self.per_fetch)))
            self.position = offsets[-1] + 1
            await asyncio.sleep(0)  # the fetch is in flight
            hook = self.during.get(self.fetches)
            if hook is not None:
                extra = hook(self)
                for topic, offset in extra or ():
                    yield "ctp", _Message(offset, self.app.consumer_generation_id, topic)
            for offset in offsets:
                yield "tp", _Message(offset, self.app.consumer_generation_id)

        return fetch()

    async def perform_seek(self) -> None:
        self.seeks += 1
        self.position = self.committed
        self._read_offset["tp"] = self.committed


_Partition.perform_seek = _counting_seeks(_Partition.perform_seek)  # type: ignore[method-assign]


async def _run_log(consumer: _Partition) -> _Partition:
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    return consumer


async def test_direct_delivery_gets_the_log_in_order():
    consumer = await _run_log(_Partition(10, {}))
    assert consumer.delivered == list(range(10))
    assert consumer.seeks == 0


async def test_records_fetched_during_a_rebalance_are_skipped_and_re_read_after_it():
    """Fetched while a rebalance is on: not delivered; once it is over, and no seek of
    its own began after them, the loop seeks back and reads them again."""
    def rebalance_starts(consumer: _Partition) -> None:
        consumer.app.rebalancing = True

    def rebalance_ends(consumer: _Partition) -> None:
        consumer.app.rebalancing = False

    consumer = await _run_log(_Partition(12, {2: rebalance_starts, 3: rebalance_ends}))
    assert consumer.delivered == list(range(12))
    assert consumer.seeks == 1
    assert any("skipped" in line for line in consumer.log.lines)


async def test_records_fetched_before_the_rebalance_seek_are_never_delivered():
    """Faust resumes the stream partitions, then seeks them to the committed offsets:
    a fetch in between returns records from where the worker had read before the
    rebalance (here 7 to 9, with 3 to 6 not yet committed). They are skipped, and what
    follows the seek comes in order."""
    def stale_position_then_seek(consumer: _Partition) -> None:
        consumer.position = 10  # the records in flight: 7, 8, 9 (see below)
        consumer._riskwatch_seeks = getattr(consumer, "_riskwatch_seeks", 0) + 1  # a seek...
        consumer.seeks += 1
        consumer.position = consumer.committed  # ...moves the position back

    consumer = _Partition(14, {2: stale_position_then_seek})
    fetch = consumer.getmany

    def getmany(timeout: float) -> Any:
        if consumer.fetches == 1:  # fetch 2 answers with 7, 8, 9
            consumer.position = 7
        return fetch(timeout)

    consumer.getmany = getmany  # type: ignore[method-assign]
    await _run_log(consumer)
    assert consumer.delivered == list(range(14))


async def test_changelog_records_keep_faust_delivery_while_stream_records_wait():
    """During a rebalance, records of other topics (a table's changelog, which the
    recovery is reading) still go through Faust's delivery."""
    def recovery(consumer: _Partition) -> list[tuple[str, int]]:
        consumer.app.rebalancing = True
        return [("changelog", 0), ("changelog", 1)]

    def done(consumer: _Partition) -> None:
        consumer.app.rebalancing = False

    consumer = await _run_log(_Partition(9, {1: recovery, 2: done}))
    assert consumer.callbacks == [("changelog", 0), ("changelog", 1)]
    assert consumer.delivered == list(range(9))


async def test_a_sink_is_settled_after_each_fetch_and_before_each_pass_of_the_loop():
    """``Sink.settle`` runs once a fetch's records are delivered (the worker releases
    its held records then), and before the loop lets other tasks run within a long
    fetch: records are never left waiting for the next fetch."""
    from streams.tuning import SINK_YIELD_EVERY

    long = SINK_YIELD_EVERY + 10
    consumer = _Consumer([(list(range(3)), None), (list(range(3, 3 + long)), None)])
    settled: list[int] = []

    async def deliver(message: _Message) -> None:
        consumer.delivered.append(message.offset)

    async def settle() -> None:
        settled.append(len(consumer.delivered))

    consumer.app.riskwatch_sink = Sink(frozenset({"t"}), deliver, settle)
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    assert consumer.delivered == list(range(3 + long))
    # After fetch 1 (3 records); within fetch 2 at the loop's pass; after fetch 2.
    assert settled[0] == 3 and settled[-1] == 3 + long
    assert any(3 < n < 3 + long for n in settled)
    assert settled == sorted(settled)


async def test_a_commit_every_n_acknowledgements_does_not_stop_delivery():
    """The commit Faust's loop makes every ``broker_commit_every`` acknowledgements waits
    for the producer and the broker; run beside delivery, records keep coming while it
    waits, and one commit runs at a time."""
    consumer = _Consumer([(list(range(5)), None), (list(range(5, 9)), None)])
    consumer._commit_every = 2
    release = asyncio.Event()
    commits: list[int] = []

    async def deliver(message: _Message) -> None:
        consumer.delivered.append(message.offset)
        consumer._n_acked += 1  # as the consumer's ack counts them

    async def slow_commit() -> None:
        commits.append(len(consumer.delivered))
        await release.wait()  # the producer flush and the broker

    consumer.commit = slow_commit  # type: ignore[method-assign]
    consumer.app.riskwatch_sink = Sink(frozenset({"t"}), deliver)
    await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    assert consumer.delivered == list(range(9))
    assert len(commits) == 1  # started at the second acknowledgement, still running
    release.set()


async def test_a_failed_background_commit_is_raised_by_the_fetch_loop():
    consumer = _Consumer([([0, 1], None), ([2, 3], None), ([4], None)])
    consumer._commit_every = 1

    async def deliver(message: _Message) -> None:
        consumer.delivered.append(message.offset)
        consumer._n_acked += 1

    async def failing_commit() -> None:
        raise RuntimeError("commit failed")

    consumer.commit = failing_commit  # type: ignore[method-assign]
    consumer.consumer_stopped_errors = ()  # type: ignore[assignment]
    consumer.app.riskwatch_sink = Sink(frozenset({"t"}), deliver)
    with pytest.raises(RuntimeError, match="commit failed"):
        await asyncio.wait_for(fetch_loop()(consumer, consumer.fetcher), 5)
    assert consumer.delivered[:2] == [0, 1]
