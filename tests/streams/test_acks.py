"""streams.acks: what Faust sees acknowledged is always a prefix of what it delivered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.acks import InOrderAcks


def test_a_held_record_blocks_later_acks_of_its_partition_only():
    acks = InOrderAcks()
    held = acks.track("credit-applications", 1, ("credit-applications", 1, 3))
    later = acks.track("credit-applications", 1, ("credit-applications", 1, 4))
    other = acks.track("card-transactions", 1, ("card-transactions", 1, 0))
    acks.complete(later)
    acks.complete(other)
    assert acks.finished == 2
    assert acks.ready() == [("card-transactions", 1, 0)]
    assert acks.finished == 0 and acks.waiting() == 2
    acks.complete(held)
    assert acks.ready() == [("credit-applications", 1, 3), ("credit-applications", 1, 4)]
    assert acks.waiting() == 0


def test_revoked_partitions_are_forgotten_unacknowledged():
    acks = InOrderAcks()
    a = acks.track("repayments", 0, "p0")
    acks.track("repayments", 2, "p2-held")
    b = acks.track("repayments", 2, "p2-done")
    acks.complete(a)
    acks.complete(b)
    acks.forget({2})
    assert acks.ready() == ["p0"]
    assert acks.waiting() == 0


def test_completing_twice_counts_once():
    acks = InOrderAcks()
    entry = acks.track("outcomes", 0, "m")
    acks.complete(entry)
    acks.complete(entry)
    assert acks.finished == 1


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)), min_size=1,
                max_size=40),
       st.randoms(use_true_random=False))
def test_acknowledged_offsets_are_always_a_prefix_per_partition(received, rnd):
    """Whatever order records finish in, each topic-partition's acknowledged offsets are
    0..k with no gap (Faust commits past gaps), and all are acknowledged at the end."""
    acks = InOrderAcks()
    entries = []
    next_offset: dict[tuple[str, int], int] = {}
    for topic, partition in received:
        offset = next_offset.get((topic, partition), 0)
        next_offset[(topic, partition)] = offset + 1
        entries.append(acks.track(topic, partition, (topic, partition, offset)))
    order = list(range(len(entries)))
    rnd.shuffle(order)
    acked: dict[tuple[str, int], list[int]] = {}
    for n, index in enumerate(order):
        acks.complete(entries[index])
        if rnd.random() < 0.5 or n == len(order) - 1:
            for topic, partition, offset in acks.ready():
                acked.setdefault((topic, partition), []).append(offset)
            for tp, offsets in acked.items():
                assert offsets == list(range(len(offsets))), (tp, offsets)
    assert {tp: len(offsets) for tp, offsets in acked.items()} == next_offset
    assert acks.waiting() == 0


def test_peeked_records_are_taken_only_once_and_not_after_their_partition_was_revoked():
    acks = InOrderAcks()
    for offset in range(3):
        acks.complete(acks.track("repayments", 0, offset))
    acks.complete(acks.track("repayments", 1, 10))
    ready = acks.peek()
    acks.complete(acks.track("repayments", 0, 3))  # finished after the peek
    acks.forget({1})
    assert acks.take(ready) == [0, 1, 2]
    assert acks.take(ready) == []  # nothing taken twice
    assert acks.ready() == [3]
