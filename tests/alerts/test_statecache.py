"""alerts.statecache: the write-back cache of decoded states."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from alerts.statecache import StateCache


def _encode(value: int) -> bytes:
    return b"%d" % value


def _read(value: int | bytes | None) -> int | None:
    return int(value) if isinstance(value, bytes) else value


def test_dirty_states_are_never_dropped_and_clean_ones_are_bounded() -> None:
    store: dict[str, bytes] = {}
    cache = StateCache(store, _encode, size=2)
    for i in range(5):
        cache.put(f"k{i}", i, i % 2)
    cache.trim()  # all dirty: nothing may go
    assert len(cache.live) == 5 and store == {}
    writes = cache.write_back()
    assert [(k, tag, v) for k, tag, v in writes] == [
        ("k0", 0, b"0"), ("k1", 1, b"1"), ("k2", 0, b"2"), ("k3", 1, b"3"), ("k4", 0, b"4")]
    assert list(cache.live) == ["k3", "k4"]  # the two most recently written
    assert cache.get("k0") == b"0" and cache.get("k4") == 4 and cache.get("nope") is None
    cache.put("k0", 10)  # rewritten: the newest end
    cache.put("k9", 9)
    cache.trim()
    assert list(cache.live) == ["k0", "k9"]  # clean k3, k4 went first; dirty ones stay


def test_materialise_hands_the_store_to_whoever_rewrites_it() -> None:
    """Partitions revoked: unflushed states go into the store and stay dirty; nothing
    decoded is kept, so a value recovery writes into the store is what get returns."""
    store: dict[str, bytes] = {"a": b"1"}
    cache = StateCache(store, _encode, size=10)
    cache.put("a", 2, 7)
    cache.put("b", 3, 7)
    cache.materialise()
    assert store == {"a": b"2", "b": b"3"} and not cache.live
    store["b"] = b"30"  # table recovery
    assert cache.get("b") == b"30"
    assert cache.write_back() == [("a", 7, b"2"), ("b", 7, b"30")]


def test_discard_forgets_unwritten_states() -> None:
    store: dict[str, bytes] = {"a": b"1"}
    cache = StateCache(store, _encode)
    cache.put("a", 2)
    cache.discard()
    assert cache.get("a") == b"1" and cache.write_back() == []


def test_size_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        StateCache({}, _encode, size=-1)


@settings(max_examples=60, stateful_step_count=60, deadline=None)
class CacheMachine(RuleBasedStateMachine):
    """Against a model: the newest state of every key, and what the store must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[str, bytes] = {}
        self.cache = StateCache(self.store, _encode, size=3)
        self.newest: dict[str, int] = {}
        self.stored: dict[str, int] = {}
        self.dirty: dict[str, int] = {}

    keys = st.sampled_from([f"k{i}" for i in range(8)])

    @rule(key=keys, value=st.integers(0, 1_000), tag=st.integers(0, 3))
    def put(self, key: str, value: int, tag: int) -> None:
        self.cache.put(key, value, tag)
        self.newest[key] = value
        self.dirty[key] = tag

    @rule()
    def write_back(self) -> None:
        writes = self.cache.write_back()
        assert [(k, tag) for k, tag, _ in writes] == list(self.dirty.items())
        assert all(int(v) == self.newest[k] for k, _, v in writes)
        self.stored.update({k: self.newest[k] for k in self.dirty})
        self.dirty.clear()
        assert len(self.cache.live) <= self.cache.size

    @rule()
    def materialise(self) -> None:
        self.cache.materialise()
        self.stored.update({k: self.newest[k] for k in self.dirty})

    @rule()
    def discard(self) -> None:
        self.cache.discard()
        self.dirty.clear()
        self.newest = dict(self.stored)

    @invariant()
    def reads_the_newest(self) -> None:
        for key in {*self.newest, "never"}:
            assert _read(self.cache.get(key)) == self.newest.get(key)
        assert {k: int(v) for k, v in self.store.items()} == self.stored
        assert len(self.cache.live) <= self.cache.size + len(self.dirty)


TestCacheMachine = CacheMachine.TestCase
