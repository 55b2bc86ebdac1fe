"""Deterministic output ids: the same inputs always give the same id.

An output id is a UUIDv5 over the rule, its version, the triggering event id
and a discriminator, so a replayed or retried event yields the same id and
every downstream consumer can deduplicate.

>>> output_id("dpd-threshold", 1, "rep-c1-7", "30")
'6f68e996-d419-5f6b-bedd-875574e1af3a'
>>> output_id("dpd-threshold", 1, "rep-c1-7", "30") == output_id("dpd-threshold", 1, "rep-c1-7", "30")
True
>>> output_id("dpd-threshold", 2, "rep-c1-7", "30") == output_id("dpd-threshold", 1, "rep-c1-7", "30")
False
"""

from __future__ import annotations

import hashlib
import uuid

#: Namespace of every Riskwatch output id.
NAMESPACE = uuid.UUID("6f1d3a52-3c0e-5d7b-9a41-2b8f4c6e0d17")


def output_id(rule_id: str, rule_version: int, trigger_event_id: str, discriminator: str = "") -> str:
    """The UUIDv5 of one output."""
    return str(uuid.uuid5(NAMESPACE, f"{rule_id}|{rule_version}|{trigger_event_id}|{discriminator}"))


def subject(*parts: str) -> str:
    """Parts joined unambiguously (each prefixed by its length), for an output id's
    trigger part: ids may contain any separator, ``/`` and ``:`` included.

    >>> subject("x/y", "z"), subject("x", "y/z")
    ('3:x/y1:z', '1:x3:y/z')
    """
    return "".join(f"{len(part)}:{part}" for part in parts)


def event_fingerprint(event_id: str) -> int:
    """A stable 63-bit fingerprint of an event id (for bounded dedupe sets).

    Stable across processes, unlike ``hash()``.

    >>> event_fingerprint("e1") == event_fingerprint("e1"), event_fingerprint("e1") > 0
    (True, True)
    """
    fingerprint = _FINGERPRINTS.get(event_id)
    if fingerprint is None:
        # Memoised: an event's id is fingerprinted by the engine, then again by the limit
        # guardrails for the same trigger; due reminders fingerprint the same dues.
        # hashlib.blake2b(event_id.encode(), digest_size=8), from a copy of an empty one
        # (a third cheaper than the constructor's keyword parsing and set-up)
        blake = _BLAKE2B_8.copy()
        blake.update(event_id.encode())
        fingerprint = int.from_bytes(blake.digest(), "big") >> 1
        if len(_FINGERPRINTS) >= 8_192:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[event_id] = fingerprint
    return fingerprint


_FINGERPRINTS: dict[str, int] = {}
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)
