"""Faust settings that have no option: the group consumer's fetch wait.

Faust builds its group consumer with ``fetch_max_wait_ms=1500`` hard-coded.
Apache Kafka answers a fetch as soon as data is there, so the value is
harmless there; a broker that holds every fetch for the whole wait (the Tansu
development broker) adds up to 1.5 s per hop. :func:`set_group_fetch_wait`
lets the worker choose (``Settings.fetch_max_wait``).
"""

from __future__ import annotations

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
