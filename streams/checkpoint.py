"""Checkpoints of a worker's global models, together with the input offsets they learned.

A worker's global models (the anomaly model now; the risk model later) learn
from every event of the worker's partitions. They are pickled with the offset
of the last event learned per topic-partition, atomically (write, fsync,
rename) into the data directory, so a restarted worker resumes them instead of
starting cold, and does not learn twice from events it re-reads after a
restart: an event at or below the checkpoint offset is scored but not learned.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import RiskwatchError

FORMAT = 1


@dataclass
class Checkpoint:
    """Models and the offsets they have learned up to."""

    models: dict[str, Any]
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    policy_version: str = ""
    format: int = FORMAT


def dumps(checkpoint: Checkpoint) -> bytes:
    """Serialise ``checkpoint`` (do this where the models are not being updated)."""
    return pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)


def write(path: Path, blob: bytes) -> int:
    """Write a serialised checkpoint atomically (safe to run in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return len(blob)


def save(path: Path, checkpoint: Checkpoint) -> int:
    """Serialise and write ``checkpoint``; return its size in bytes."""
    return write(path, dumps(checkpoint))


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none.

    Only the worker's own data directory is read: a checkpoint is trusted data
    (pickle), never something received over the network.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        checkpoint = pickle.loads(blob)  # our own file, see docstring
    except Exception as exc:
        raise RiskwatchError(f"checkpoint {path} is unreadable: {exc!r}") from exc
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        raise RiskwatchError(f"checkpoint {path} has an unknown format")
    return checkpoint
