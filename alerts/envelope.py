"""Output envelopes: records turned into Kafka messages with CloudEvents headers.

The message key is the customer id (so each customer's outputs stay ordered);
the headers follow the CloudEvents Kafka binding in binary mode, and every
value is deterministic for the same input (``ce_time`` is the triggering
event's time, not the wall clock), so replays produce identical messages.

>>> import datetime as dt
>>> from schemas.models import RiskAlert
>>> alert = RiskAlert(alert_id="a-1", customer_id="c1", trigger_event_id="e1",
...     event_time=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), policy_version="p1",
...     model_version="m1", reason_codes=["dpd_30"], evidence=[], alert_type="delinquency",
...     severity="high", rule_id="r", rule_version=1, routing=[])
>>> key, value, headers = to_message(Emit("risk-alerts", "c1", "a-1", alert), "urn:riskwatch:worker")
>>> key, dict(headers)["ce_type"], dict(headers)["ce_time"]
(b'c1', b'dev.riskwatch.risk-alerts.v1', b'2026-01-02T00:00:00Z')
"""

from __future__ import annotations

from typing import Any, NamedTuple

from schemas.codec import encode
from schemas.topics import TOPICS


class Emit(NamedTuple):
    """One output record bound for ``topic`` under message key ``key``."""

    topic: str
    key: str
    id: str
    record: Any


def _rfc3339(value: Any) -> bytes:
    text = value.isoformat()
    if text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text.encode()


def headers_for(emit: Emit, source: str) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka headers (binary content mode) for one output."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", emit.id.encode()),
        ("ce_type", TOPICS[emit.topic].ce_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", _rfc3339(emit.record.event_time)),
        ("ce_subject", emit.key.encode()),
        ("content-type", b"application/json"),
    ]


def to_message(emit: Emit, source: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the Kafka message for ``emit``."""
    return emit.key.encode(), encode(emit.record), headers_for(emit, source)
