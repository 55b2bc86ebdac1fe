"""Acknowledge each topic-partition's records in offset order.

The worker finishes records out of offset order: it holds records to release them in
event-time order across topics (a later offset with an earlier event time goes first),
and dead-letters a bad record at once while earlier records are still held. Faust
commits the first run of consecutive acknowledged offsets and does not check that the
run starts at the committed offset when the partition has none yet (or it is 0), nor a
gap of exactly one record at its head; acknowledged out of order, records still held
were committed past and never re-read after a restart or rebalance (lost state, missed
alerts). So an acknowledgement here waits until every earlier record this worker
received on the same topic-partition is finished too: what Faust sees acknowledged is
always a prefix of what it delivered.

>>> acks = InOrderAcks()
>>> first = acks.track("repayments", 0, "r0")
>>> second = acks.track("repayments", 0, "r1")
>>> acks.complete(second)
>>> acks.ready()
[]
>>> acks.complete(first)
>>> ready = acks.peek()  # taken only once the state they produced is written
>>> acks.take(ready)
['r0', 'r1']
>>> acks.ready()
[]
"""

from __future__ import annotations

from collections import deque
from typing import Any


class Entry:
    """A received record: its Faust event, and whether the worker is done with it."""

    __slots__ = ("done", "message")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.done = False


class Ready:
    """What :meth:`InOrderAcks.peek` found acknowledgeable: per queue, its finished head."""

    __slots__ = ("finished", "firsts", "heads")

    def __init__(self, heads: list[tuple[tuple[str, int], deque[Entry], int]],
                 firsts: list[Entry], finished: int) -> None:
        #: (topic-partition, its queue, how many of its first records are finished).
        self.heads = heads
        #: Each queue's first record when peeked.
        self.firsts = firsts
        #: Records finished when peeked (InOrderAcks.finished).
        self.finished = finished


class InOrderAcks:
    """Per topic-partition queues of received records, released in receive order."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, int], deque[Entry]] = {}
        #: Records finished since the last :meth:`ready` (drives the flush interval).
        self.finished = 0

    def track(self, topic: str, partition: int, message: Any) -> Entry:
        """Register a record as received (records of a partition arrive in offset order)."""
        entry = Entry(message)
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = self._queues[(topic, partition)] = deque()
        queue.append(entry)
        return entry

    def complete(self, entry: Entry) -> None:
        """The worker is done with the record (processed, dead-lettered or skipped)."""
        if not entry.done:
            entry.done = True
            self.finished += 1

    def ready(self) -> list[Any]:
        """Records that can be acknowledged now: each queue's finished head, in order
        (taken off the queues)."""
        return self.take(self.peek())

    def peek(self) -> Ready:
        """Records that can be acknowledged now, left on their queues until :meth:`take`.

        The worker peeks before it writes the state these records produced and takes
        them only once the writes succeeded: a failed write leaves them queued, to be
        acknowledged after a later write (taken before it, they were never
        acknowledged, and nothing after them either)."""
        heads: list[tuple[tuple[str, int], deque[Entry], int]] = []
        for key, queue in self._queues.items():
            count = 0
            for entry in queue:
                if not entry.done:
                    break
                count += 1
            if count:
                heads.append((key, queue, count))
        return Ready(heads, [queue[0] for _, queue, _ in heads], self.finished)

    def take(self, ready: Ready) -> list[Any]:
        """Take the records :meth:`peek` found off their queues, in order; a queue
        forgotten since (its partition revoked) gives nothing."""
        out: list[Any] = []
        for (key, queue, count), first in zip(ready.heads, ready.firsts, strict=True):
            # Taken already (its first record is gone), or the queue was forgotten.
            if self._queues.get(key) is not queue or not queue or queue[0] is not first:
                continue
            for _ in range(count):
                out.append(queue.popleft().message)
        self.finished = max(0, self.finished - ready.finished)
        ready.finished = 0
        return out

    def waiting(self) -> int:
        """Records received and not yet acknowledged (finished or not)."""
        return sum(len(queue) for queue in self._queues.values())

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: their unacknowledged records are re-read by the new owner."""
        for key in [key for key in self._queues if key[1] in partitions]:
            del self._queues[key]

    def clear(self) -> None:
        self._queues.clear()
        self.finished = 0
