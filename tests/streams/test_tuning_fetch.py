"""streams.tuning without a broker: ``_getmany`` (the fetch loop's source) against
Faust's own ``Consumer.getmany`` (the same records, in the same order, as the same
messages, under the same per-record checks, for any fetch), ``round_robin`` against
Faust's scheduler, and the partition-state reader across a rebalance."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.transport import consumer as faust_consumer
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.tuning import _getmany, partition_state_reader, round_robin

#: Faust's getmany as Faust ships it (use_fetch_loop keeps it when it replaces it).
_FAUST_GETMANY = getattr(faust_consumer.Consumer, "_faust_getmany",
                         faust_consumer.Consumer.getmany)

_TOPICS = ("card-transactions", "repayments", "outcomes")


def _record(tp: TP, offset: int, stamp: int | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, stamp, 0, b"k%d" % offset,
                          b"v%d" % offset, None, 2, 2, [("h", b"1")])


_fetches = st.dictionaries(
    st.tuples(st.sampled_from(_TOPICS), st.integers(0, 3)).map(lambda t: TP(*t)),
    st.lists(st.one_of(st.none(), st.integers(0, 2**41)), max_size=6),
    max_size=7,
).map(lambda spec: {tp: [_record(tp, 10 + i, stamp) for i, stamp in enumerate(stamps)]
                    for tp, stamps in spec.items()})


class _Log:
    def dev(self, *args: Any) -> None:
        pass

    warning = dev


class _Monitor:
    def __init__(self) -> None:
        self.ends: dict[TP, int] = {}

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        self.ends[tp] = offset


class _App:
    def __init__(self) -> None:
        self.consumer_generation_id = 4
        self.monitor = _Monitor()


class _Consumer:
    """What either getmany uses of Faust's consumer; ``changes`` flips the generation or
    the flow after the n-th record is taken (a rebalance while the batch is delivered)."""

    _to_message = AIOKafkaDriverConsumer._to_message

    def __init__(self, records: dict[TP, list[Any]], active: set[TP] | None,
                 buffered: set[TP], flow: bool) -> None:
        self.records = records
        self.active = active
        self.app = _App()
        self.flow_active = flow
        self.should_stop = False
        self._buffered_partitions = buffered
        self.scheduler = DefaultSchedulingStrategy()
        self.log = _Log()
        self.seeks = 0

    async def _wait_next_records(self, timeout: float) -> Any:
        return self.records, self.active

    def highwater(self, tp: TP) -> int:
        return 100 + tp.partition

    async def perform_seek(self) -> None:
        self.seeks += 1


async def _taken(getmany: Any, consumer: _Consumer, change_at: int | None,
                 change: str) -> list[tuple[Any, ...]]:
    out = []
    async for tp, message in getmany(consumer, 1.0):
        out.append((tp, message.topic, message.partition, message.offset, message.timestamp,
                    message.timestamp_type, message.headers, message.key, message.value,
                    message.checksum, message.serialized_key_size,
                    message.serialized_value_size, message.tp, message.generation_id,
                    message.acked, type(message)))
        if len(out) == change_at:
            if change == "generation":
                consumer.app.consumer_generation_id += 1
            else:
                consumer.flow_active = False
    return out


@settings(max_examples=200, deadline=None)
@given(records=_fetches, data=st.data())
async def test_getmany_gives_what_faust_getmany_gives(records, data):
    tps = sorted(records)
    active = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(tps)) if tps
                                 else st.just(set())))
    buffered = data.draw(st.sets(st.sampled_from(tps)) if tps else st.just(set()))
    flow = data.draw(st.booleans(), "flow active when the fetch returns")
    change_at = data.draw(st.one_of(st.none(), st.integers(1, 12)))
    change = data.draw(st.sampled_from(["generation", "flow"]))
    ours, theirs = (_Consumer(records, active, buffered, flow) for _ in range(2))
    got = await _taken(_getmany, ours, change_at, change)
    expected = await _taken(_FAUST_GETMANY, theirs, change_at, change)
    assert got == expected
    assert ours.seeks == theirs.seeks
    # The monitor's end offset: the same last value for every partition delivered.
    assert ours.app.monitor.ends == theirs.app.monitor.ends


@settings(max_examples=300, deadline=None)
@given(records=_fetches)
def test_round_robin_is_faust_scheduler_order(records):
    expected = list(DefaultSchedulingStrategy().iterate(records))
    got = list(round_robin(records))
    assert [(tp, r.offset) for tp, r in got] == [(tp, r.offset) for tp, r in expected]


async def test_partition_states_follow_the_assignment_through_a_rebalance():
    """The reader keeps the states of the assignment it read; a rebalance replaces the
    assignment (and its states): what it gives is then the new one's, and None for a
    partition no longer assigned."""
    from aiokafka.consumer.subscription_state import SubscriptionState

    subscriptions = SubscriptionState()
    subscriptions.subscribe({"a"})
    a0, a1 = TP("a", 0), TP("a", 1)
    subscriptions.assign_from_subscribed({a0, a1})

    class _Kafka:
        _subscription = subscriptions

    kafka: Any = None
    read = partition_state_reader(lambda: kafka)
    assert read(a0) is None  # no consumer yet
    kafka = _Kafka()
    first = read(a0)
    first.highwater = 7
    assert read(a0) is first and read(a0).highwater == 7
    subscriptions.assign_from_subscribed({a0})  # a rebalance: a1 revoked
    assert read(a1) is None
    assert read(a0) is subscriptions.subscription.assignment.state_value(a0)
    assert read(a0) is not first and read(a0).highwater is None


async def test_an_app_scheduling_strategy_of_its_own_is_kept():
    class _Backwards(DefaultSchedulingStrategy):
        def iterate(self, records: Any) -> Any:
            return reversed(list(super().iterate(records)))

    a0, b0 = TP("a", 0), TP("b", 0)
    records = {a0: [_record(a0, 10, 1), _record(a0, 11, 2)], b0: [_record(b0, 10, 3)]}
    ours, theirs = (_Consumer(records, None, set(), True) for _ in range(2))
    ours.scheduler = theirs.scheduler = _Backwards()
    got = await _taken(_getmany, ours, None, "generation")
    assert got == await _taken(_FAUST_GETMANY, theirs, None, "generation")
    assert [(row[0], row[3]) for row in got] == [(a0, 11), (b0, 10), (a0, 10)]
