"""The append-only, hash-chained audit log of control actions.

Each record carries the SHA-256 of the previous record (``prev_hash``) and its
own hash over its canonical JSON without the ``hash`` field; the first record
chains from :data:`GENESIS`. Changing, removing, inserting or reordering any
record breaks the chain, and :func:`verify_chain` says where.

>>> import datetime as dt
>>> t = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
>>> a = append(None, actor="ana", action="policy.publish", subject="risk-policy",
...            version="v2", before={"x": 1}, after={"x": 2}, why="tighten", when=t)
>>> b = append(a, actor="ben", action="crisis.on", subject="risk-policy", version="v3",
...            before=None, after={"active": True}, why="storm", when=t)
>>> verify_chain([a, b])
[]
>>> import msgspec
>>> verify_chain([a, msgspec.structs.replace(b, why="nothing to see")])
['record 1 (seq 1): hash does not match its content']
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

from alerts.ids import output_id
from schemas.codec import canonical
from schemas.models import AuditRecord

GENESIS = "0" * 64


def diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Human-readable differences between two plain documents.

    >>> diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
    ['b.c: 2 -> 3', 'd: (absent) -> 4']
    """
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append(f"{sub}: (absent) -> {after[key]!r}")
            elif key not in after:
                out.append(f"{sub}: {before[key]!r} -> (absent)")
            else:
                out.extend(diff(before[key], after[key], sub))
        return out
    if before != after:
        return [f"{path or '(root)'}: {before!r} -> {after!r}"]
    return []


def _digest(record: AuditRecord) -> str:
    body = msgspec.to_builtins(record)
    body.pop("hash", None)
    return hashlib.sha256(canonical(body)).hexdigest()


def append(
    previous: AuditRecord | None,
    *,
    actor: str,
    action: str,
    subject: str,
    version: str,
    before: Any,
    after: Any,
    why: str,
    when: dt.datetime,
) -> AuditRecord:
    """The record that follows ``previous`` in the chain."""
    seq = 0 if previous is None else previous.seq + 1
    prev_hash = GENESIS if previous is None else previous.hash
    draft = AuditRecord(
        audit_id=output_id("audit", 1, f"{subject}:{seq}:{prev_hash}"),
        seq=seq,
        event_time=when.astimezone(dt.UTC),
        actor=actor,
        action=action,
        subject=subject,
        version=version,
        before=before,
        after=after,
        why=why,
        prev_hash=prev_hash,
        hash=GENESIS,
    )
    return msgspec.structs.replace(draft, hash=_digest(draft))


def verify_chain(records: Iterable[AuditRecord]) -> list[str]:
    """Every break in the chain, in order; an empty list means intact."""
    problems: list[str] = []
    expected_prev = GENESIS
    expected_seq = 0
    for index, record in enumerate(records):
        where = f"record {index} (seq {record.seq})"
        if record.seq != expected_seq:
            problems.append(f"{where}: expected seq {expected_seq}")
        if record.prev_hash != expected_prev:
            problems.append(f"{where}: prev_hash does not match the previous record")
        if _digest(record) != record.hash:
            problems.append(f"{where}: hash does not match its content")
        expected_prev = record.hash
        expected_seq = record.seq + 1
    return problems
