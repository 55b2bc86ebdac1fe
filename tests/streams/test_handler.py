"""The worker's per-record handler, without a broker: what a rebalance leaves behind."""

from __future__ import annotations

from typing import Any

from alerts.engine import Engine
from alerts.policy import DEFAULT_POLICY
from streams.app import Handler
from streams.metrics import Metrics


class _Table:
    def get(self, key: str) -> bytes | None:
        return None


async def _send(emit: Any) -> None:
    return None


def test_revoked_partitions_forget_how_far_they_were_read() -> None:
    """A partition that comes back is re-read from its committed offset: the offsets this
    worker read it to before must not make its topics look read (records of one topic
    would be released past unread records of another, e.g. a payment)."""
    handler = Handler(Engine(DEFAULT_POLICY), Metrics(), _Table(), _send)  # type: ignore[arg-type]
    handler.last_offsets = {("repayments", 1): 100, ("card-transactions", 1): 70,
                            ("repayments", 2): 5}
    handler.learned_offsets = {("card-transactions", 1): 80}
    handler.clock(1)
    handler.drop({1})
    assert handler.last_offsets == {("repayments", 2): 5}
    assert 1 not in handler.clocks
    # What the global models learned stays learned (not learned twice on a re-read).
    assert handler.learned_offsets == {("card-transactions", 1): 80, ("repayments", 1): 100}
