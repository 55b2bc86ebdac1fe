"""Customers' states kept decoded in memory, written back to their store as bytes.

Decoding a customer's state for every event and encoding it again after costs
about 8 us per event, more than a tenth of the engine's whole cost. The worker
writes state to its changelog only once per flush anyway, so between flushes a
state need not be bytes at all. :class:`StateCache` keeps the newest state of
each customer written since the last :meth:`~StateCache.write_back` (dirty), and
the most recently written clean ones up to ``size`` customers, as decoded
objects over a store of their bytes (the worker's table, replay's dict).

The objects it holds are never changed in place: the engine works on a copy
(:meth:`alerts.engine.Engine.process_state`), so an event that fails half-way
or turns out a duplicate leaves the cached state as it was.

>>> from alerts.engine import CustomerState, encode_state
>>> store: dict[bytes, bytes] = {}
>>> cache = StateCache(store, encode_state, size=1)
>>> cache.put(b"c1", CustomerState(next_check=3), 0)
>>> cache.get(b"c1").next_check, store
(3, {})
>>> [(key, tag, len(value)) for key, tag, value in cache.write_back()]
[(b'c1', 0, 15)]
>>> cache.put(b"c2", CustomerState(next_check=4), 1)
>>> _ = cache.write_back()
>>> sorted(cache.live), sorted(store)  # one decoded, both stored
([b'c2'], [b'c1', b'c2'])
>>> type(cache.get(b"c1")).__name__  # served from the store: the engine decodes it
'bytes'
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from itertools import islice
from typing import Any, Generic, TypeVar

K = TypeVar("K")

#: Decoded states kept (clean, most recently written) by default: about 8.5 KB each.
DEFAULT_SIZE = 10_000


class StateCache(Generic[K]):
    """Write-back cache of decoded states over ``store`` (key -> encoded bytes).

    ``get`` returns the decoded state when cached, else the stored bytes (or
    None); ``put`` records a new decoded state, tagged (the worker tags it with
    the key's partition); ``write_back`` encodes the dirty states into the store
    and returns them as ``(key, tag, bytes)`` for the caller to send on.
    Memory: the dirty states plus at most ``size`` clean ones.
    """

    def __init__(self, store: MutableMapping[K, bytes], encode: Callable[[Any], bytes],
                 size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError(f"state cache size must be at least 0, got {size}")
        self.store = store
        self.encode = encode
        self.size = size
        #: Decoded states, least recently written first.
        self.live: dict[K, Any] = {}
        #: Keys written since the last write-back, with their tags.
        self.dirty: dict[K, Any] = {}

    def get(self, key: K) -> Any:
        """The key's decoded state if cached, else its stored bytes (None: no state)."""
        state = self.live.get(key)
        return self.store.get(key) if state is None else state

    def put(self, key: K, state: Any, tag: Any = None) -> None:
        """Record the key's new state (never changed afterwards by the caller)."""
        live = self.live
        if key in live:
            del live[key]  # moves to the newest end
        live[key] = state
        self.dirty[key] = tag

    def write_back(self) -> list[tuple[K, Any, bytes]]:
        """Encode every dirty state into the store; return the writes, oldest key first."""
        writes: list[tuple[K, Any, bytes]] = []
        if self.dirty:
            dirty, self.dirty = self.dirty, {}
            live, store, encode = self.live, self.store, self.encode
            for key, tag in dirty.items():
                state = live.get(key)
                if state is None:  # dropped by materialise(): already in the store
                    value = store.get(key)
                    if value is None:
                        continue
                else:
                    value = store[key] = encode(state)
                writes.append((key, tag, value))
        self.trim()
        return writes

    def trim(self) -> None:
        """Drop the least recently written clean states beyond ``size``."""
        live, dirty = self.live, self.dirty
        excess = len(live) - self.size
        if excess > 0:
            for key in list(islice(live, excess + len(dirty))):
                if excess <= 0:
                    break
                if key not in dirty:
                    del live[key]
                    excess -= 1

    def materialise(self) -> None:
        """Encode the dirty states into the store (they stay dirty, to be sent at the
        next write-back) and drop every decoded state: the store alone is then what
        the cache knows, for whoever changes the store behind it (table recovery)."""
        live, store, encode = self.live, self.store, self.encode
        for key in self.dirty:
            state = live.get(key)
            if state is not None:
                store[key] = encode(state)
        live.clear()

    def discard(self) -> None:
        """Forget unwritten states and every decoded one (the store keeps what it has)."""
        self.dirty.clear()
        self.live.clear()
