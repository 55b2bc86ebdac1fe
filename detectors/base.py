"""What every detector hands to the alert layer, and the detector protocol.

Detectors are pure: plain data in, plain data out, no Kafka, no Faust, no
clock but the event time they are given. A detector's finding is a
:class:`Signal`; ``alerts/`` turns signals into output events with
deterministic ids.
"""

from __future__ import annotations

from typing import Any, Protocol

from msgspec import Struct

from schemas.codegen import compiled_function
from schemas.models import Evidence, Severity

__all__ = ["Detector", "Evidence", "Severity", "Signal", "compiled_function"]


class Signal(Struct, kw_only=True, frozen=True):
    """A detector's finding about one customer, triggered by one event.

    ``discriminator`` tells apart several signals of the same rule raised by
    the same triggering event (for example two accounts, or two buckets); it
    enters the output id, so it must be deterministic.

    >>> s = Signal(kind="delinquency", rule_id="dpd-threshold", rule_version=1,
    ...            severity="high", reason_codes=["dpd_30"],
    ...            evidence=[Evidence(code="dpd", text="31 days past due", value=31, unit="days")])
    >>> s.severity, s.discriminator
    ('high', '')
    """

    kind: str
    rule_id: str
    rule_version: int
    severity: Severity
    reason_codes: list[str]
    evidence: list[Evidence]
    account_id: str | None = None
    discriminator: str = ""


class Detector(Protocol):
    """The River-style interface every online detector implements.

    ``score_one`` is called before ``learn_one`` on each event; neither mutates
    ``x``; a detector is pickleable, deterministic for its seed and bounded in
    memory.
    """

    def learn_one(self, x: dict[str, Any]) -> None: ...

    def score_one(self, x: dict[str, Any]) -> float: ...
