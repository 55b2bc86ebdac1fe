"""Replay: the worker's logic in-process, in event-time order, with no Kafka.

Input is JSONL, one file per topic, named ``<topic>.jsonl`` (or given as
``topic=path``); the files are merged by event time (each file must itself be
in event-time order: a line earlier than its predecessor is processed in file
order, as a broker partition would deliver it). Like the worker, the merge
compares event times to the millisecond and breaks ties by topic name
(:data:`~schemas.topics.TOPIC_RANK`), whatever the order of the files given. Every line goes through the
same codec and :class:`~alerts.engine.Engine` as the stream worker, so the
outputs carry the same deterministic ids. Bad lines become dead letters, with
partition ``-1`` and the line number as offset.

Outputs: one ``<topic>.jsonl`` per output topic in ``out_dir`` and
``snapshot.jsonl`` with each customer's final standing.
"""

from __future__ import annotations

import datetime as dt
import heapq
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2

from alerts.deadletter import dead_letter, dead_letter_emit
from alerts.engine import Engine
from alerts.envelope import Emit
from alerts.policy import Policy
from detectors.delinquency import DueIndex, epoch_day
from schemas.codec import decode, dumps, encode
from schemas.errors import ConfigError, DecodeError
from schemas.topics import CUSTOMER_TOPICS, OUTPUT_TOPICS, TOPIC_RANK, TOPICS

_FAR_PAST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class ReplayReport:
    """Counts of one replay run."""

    events: Counter[str] = field(default_factory=Counter)
    outputs: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    alerts_by_reason: Counter[str] = field(default_factory=Counter)
    skipped_topics: Counter[str] = field(default_factory=Counter)
    grades: Counter[str] = field(default_factory=Counter)
    limit_proposals: Counter[str] = field(default_factory=Counter)
    quality: dict[str, Any] = field(default_factory=dict)
    policy_version: str = ""
    customers: int = 0
    seconds: float = 0.0

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": dict(self.events),
            "events_total": self.total_events,
            "outputs": dict(self.outputs),
            "dead_letters": dict(self.dead_letters),
            "alerts_by_severity": dict(self.alerts_by_severity),
            "alerts_by_reason": dict(self.alerts_by_reason),
            "skipped_topics": dict(self.skipped_topics),
            "grade_changes": dict(self.grades),
            "limit_proposals": dict(self.limit_proposals),
            "model_quality": self.quality,
            "policy_version": self.policy_version,
            "customers": self.customers,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.total_events / self.seconds, 1) if self.seconds else None,
        }


def resolve_inputs(paths: list[str]) -> list[tuple[str, Path]]:
    """``topic=path`` or ``path/<topic>.jsonl`` (or a directory of them) as pairs,
    one file per topic (:class:`ConfigError` for a topic given twice)."""
    pairs: list[tuple[str, Path]] = []
    for item in paths:
        topic, sep, rest = item.partition("=")
        if sep:
            path = Path(rest)
        else:
            path = Path(item)
            if path.is_dir():
                pairs.extend(
                    (p.stem, p) for p in sorted(path.glob("*.jsonl")) if p.stem in TOPICS
                    and TOPICS[p.stem].direction == "input"
                )
                continue
            topic = path.name.removesuffix(".jsonl")
        if topic not in TOPICS or TOPICS[topic].direction != "input":
            raise ConfigError(f"replay input {item!r}: {topic!r} is not an input topic")
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"replay input {item!r}: {path} {what}")
        pairs.append((topic, path))
    if not pairs:
        raise ConfigError("replay: no input files")
    # One file per topic: dead letters are identified by topic and line number.
    seen: dict[str, Path] = {}
    for topic, path in pairs:
        if topic in seen:
            raise ConfigError(f"replay: topic {topic!r} given twice ({seen[topic]} and {path}); "
                              "give one file per topic")
        seen[topic] = path
    return pairs


#: A :func:`_lines` record: (event_ms, topic rank, file_index, line_no, event_time,
#: topic, line_no, raw, decoded | DecodeError); the first four are the merge order.
_Line = tuple[int, int, int, int, dt.datetime, str, int, bytes, Any]


def _lines(topic: str, path: Path, file_index: int, now: dt.datetime) -> Iterator[_Line]:
    """The records of one file, keyed for the merge as the worker orders a partition:
    event time in ms (computed as the worker does), then topic rank (not the order
    of the files given), then file and line."""
    rank = TOPIC_RANK[topic]
    last = _FAR_PAST
    last_ms = int(last.timestamp() * 1000)
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw or raw.isspace():  # blank (not raw.strip(), without the copy)
                continue
            try:
                obj: Any = decode(topic, raw, now=now)
                # A line earlier than its predecessor keeps its place in the file.
                if obj.event_time > last:
                    last = obj.event_time
                    last_ms = int(last.timestamp() * 1000)
            except DecodeError as exc:
                obj = exc
            yield last_ms, rank, file_index, line_no, last, topic, line_no, raw, obj


def iter_merged(
    inputs: list[tuple[str, Path]], now: dt.datetime | None = None
) -> Iterator[tuple[dt.datetime, str, int, bytes, Any]]:
    """Records of every input merged by event time.

    Yields (event_time, topic, line_no, raw, decoded or DecodeError); a bad line
    carries the event time of the good line before it in its file.
    """
    for _, _, _, _, event_time, topic, line_no, raw, obj in _merged(inputs, now):
        yield event_time, topic, line_no, raw, obj


def _merged(inputs: list[tuple[str, Path]], now: dt.datetime | None) -> Iterator[_Line]:
    """:func:`iter_merged`'s records as :func:`_lines` gives them (one generator less)."""
    now = now or dt.datetime.now(dt.UTC)
    streams = [_lines(topic, path, i, now) for i, (topic, path) in enumerate(inputs)]
    return heapq.merge(*streams)


class _Writers:
    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {name: (out_dir / f"{name}.jsonl").open("wb") for name in OUTPUT_TOPICS}

    def write(self, emit: Emit) -> None:
        self.files[emit.topic].write(encode(emit.record) + b"\n")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def replay(
    inputs: list[tuple[str, Path]],
    out_dir: Path,
    policy: Policy,
    *,
    now: dt.datetime | None = None,
    partitions: int = 1,
) -> ReplayReport:
    """Run the engine over ``inputs`` and write outputs and a snapshot to ``out_dir``.

    ``partitions`` emulates the worker's per-partition event-time watermarks (a
    missed due date is detected when the customer's *partition* has moved on);
    with the topics' partition count, replay and worker sweep alike.
    """
    engine = Engine(policy)
    states: dict[str, bytes] = {}
    report = ReplayReport()
    writers = _Writers(out_dir)
    dues = [DueIndex() for _ in range(partitions)]
    lateness = dt.timedelta(hours=policy.sweep_lateness_hours)
    watermarks = [_FAR_PAST] * partitions
    #: epoch_day(watermark - lateness) of each partition: the day its sweeps have reached.
    swept_days = [epoch_day(_FAR_PAST - lateness)] * partitions
    customer_topics = frozenset(CUSTOMER_TOPICS)
    events = report.events

    def emit_all(emits: list[Emit]) -> None:
        for emit in emits:
            writers.write(emit)
            report.outputs[emit.topic] += 1
            if emit.topic == "risk-alerts":
                report.alerts_by_severity[emit.record.severity] += 1
                for code in emit.record.reason_codes:
                    report.alerts_by_reason[code] += 1
            elif emit.topic == "risk-grades":
                report.grades[emit.record.grade] += 1
            elif emit.topic == "limit-adjustments":
                report.limit_proposals[emit.record.direction] += 1

    def sweep(due: DueIndex, as_of: dt.datetime, day: int) -> None:
        # As the worker does per partition: event time passing a due date, with no
        # further event from the customer, is what detects the miss (day: epoch_day(as_of)).
        for customer_id in due.pop_due(day):
            result = engine.advance(customer_id, states.get(customer_id), as_of)
            if result.state is not None:
                states[customer_id] = result.state
            due.add(customer_id, result.next_check)
            emit_all(result.emits)

    started = time.perf_counter()
    try:
        for _, _, _, _, event_time, topic, line_no, raw, obj in _merged(inputs, now):
            events[topic] += 1
            key = getattr(obj, "customer_id", None)
            part = partition_of(key, partitions) if key and partitions > 1 else 0
            # Like the worker, only decoded customer events move a partition's watermark.
            if key and topic in customer_topics and event_time > watermarks[part]:
                watermarks[part] = event_time
                as_of = event_time - lateness
                swept_days[part] = day = epoch_day(as_of)
                sweep(dues[part], as_of, day)
            emits: list[Emit] = []
            late_check = False
            error: DecodeError | None = obj if isinstance(obj, DecodeError) else None
            if error is None and topic == "sector-indicators":
                emit_all(engine.on_sector_indicator(obj))
                continue
            if error is None and topic not in customer_topics:
                report.skipped_topics[topic] += 1
                continue
            if error is None:
                customer_id = obj.customer_id
                try:
                    result = engine.process(topic, obj, states.get(customer_id))
                except DecodeError as exc:
                    error = exc
                else:
                    if result.duplicate:
                        error = DecodeError("duplicate_event", f"event_id {obj.event_id!r} "
                                            "already applied", topic=topic, field="event_id")
                    else:
                        next_check = result.next_check
                        if result.state is not None:
                            states[customer_id] = result.state
                            dues[part].add(customer_id, next_check)
                        emits = result.emits
                        late_check = next_check is not None and next_check <= swept_days[part]
            if error is not None:
                emits = [dead_letter_emit(
                    dead_letter(topic, -1, line_no, None, raw, error, event_time))]
                report.dead_letters[error.reason] += 1
            if emits:
                emit_all(emits)
            if error is None and late_check:
                # A check day already behind the partition's watermark is due now.
                as_of = watermarks[part] - lateness
                sweep(dues[part], as_of, epoch_day(as_of))
        report.seconds = time.perf_counter() - started
    finally:
        writers.close()
    with (out_dir / "snapshot.jsonl").open("wb") as snap:
        for customer_id in sorted(states):
            snap.write(dumps(engine.snapshot(customer_id, states[customer_id])) + b"\n")
    report.customers = len(states)
    report.policy_version = policy.version
    report.quality = engine.quality.summary() if engine.quality.n else {}
    return report


def compare(baseline: ReplayReport, candidate: ReplayReport) -> dict[str, Any]:
    """A backtest: what the candidate policy changes against the baseline, count by count."""

    def delta(a: Counter[str], b: Counter[str]) -> dict[str, list[int]]:
        return {k: [a.get(k, 0), b.get(k, 0), b.get(k, 0) - a.get(k, 0)]
                for k in sorted(set(a) | set(b))}

    return {
        "baseline": baseline.policy_version,
        "candidate": candidate.policy_version,
        "columns": ["baseline", "candidate", "change"],
        "alerts_by_severity": delta(baseline.alerts_by_severity, candidate.alerts_by_severity),
        "alerts_by_reason": delta(baseline.alerts_by_reason, candidate.alerts_by_reason),
        "grade_changes": delta(baseline.grades, candidate.grades),
        "limit_proposals": delta(baseline.limit_proposals, candidate.limit_proposals),
        "outputs": delta(baseline.outputs, candidate.outputs),
        "model_quality": {"baseline": baseline.quality, "candidate": candidate.quality},
    }
