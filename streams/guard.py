"""Broker-state guard: hold processing while the broker is away, stop it for good if
the broker came back without the state the worker already read or wrote.

A worker's local state (the customer table, the held records, the global models) is
derived from what the broker held: input offsets it consumed and committed, changelog
records it wrote. A broker that comes back empty (Tansu with memory storage after a
restart; on Apache Kafka a wiped or replaced cluster, or a topic deleted and created
again) would silently mix that state with a new, unrelated log: a customer's history
from before with events from after, offsets that point into nothing, state writes that
the next recovery never sees. Processing on top of it is worse than stopping, so the
guard stops it, loudly, and leaves the decision to an operator.

States (:attr:`BrokerGuard.state`):

``ok``
    the last probe reached the broker and its state checks passed: processing runs.
``unreachable``
    the last probe failed: processing is held (nothing is acknowledged, flushed or
    sent) until a probe reaches the broker again and its checks pass.
``lost``
    a check failed: processing stays stopped until the worker is restarted (the
    runbook ``RiskwatchBrokerStateLost`` says how); the worker stays up and not ready.

Checks, against what this worker saw before (never against a fixed expectation):

* ``cluster_id``: the cluster id in metadata changed (a new Kafka cluster; Tansu always
  answers ``tansu_cluster``, so this check only helps on Apache Kafka);
* ``topic_missing``: a watched topic seen before is gone;
* ``offset_rewind``: a watched partition's end offset is below one reported before
  (end offsets never move back on a broker that kept its log; Tansu's end offsets are
  short of the true end but still never move back, so only reported offsets are
  compared with each other).

Not a check: a record read below an offset the group had committed. On Tansu a
rebalance after a worker's ``kill -9`` sometimes restarts a partition from its earliest
offset (a re-read of records already applied, recognised as duplicates), which is not
lost state; the fault-injection run stopped healthy workers with that check.

Nothing here names a customer: findings carry topics, partitions and offsets only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Check names: the values of the ``check`` label of ``riskwatch_broker_state_findings_total``.
CHECKS = ("cluster_id", "topic_missing", "offset_rewind")

OK = "ok"
UNREACHABLE = "unreachable"
LOST = "lost"

#: Reasons /readyz gives for each state.
REASONS = {UNREACHABLE: "broker unreachable", LOST: "broker state lost"}


@dataclass(frozen=True)
class Finding:
    """One piece of broker state that is gone or went backwards."""

    check: str
    topic: str | None = None
    partition: int | None = None
    before: int | str | None = None
    now: int | str | None = None

    def describe(self) -> str:
        """One line for logs and /readyz (topics, partitions, offsets; no customer data).

        >>> Finding("offset_rewind", "card-transactions", 2, 40, 0).describe()
        'card-transactions[2]: end offset 0, below 40 reported before'
        >>> Finding("topic_missing", "risk-alerts").describe()
        'topic risk-alerts is gone'
        """
        if self.check == "cluster_id":
            return f"cluster id changed from {self.before!r} to {self.now!r}"
        if self.check == "topic_missing":
            return f"topic {self.topic} is gone"
        return (f"{self.topic}[{self.partition}]: end offset {self.now}, below "
                f"{self.before} reported before")


@dataclass
class BrokerGuard:
    """What the worker knows of the broker's state, and whether processing may run.

    ``watched`` names the topics whose loss means lost state (inputs, the changelog,
    the worker's internal topics, its outputs).
    """

    watched: frozenset[str]
    state: str = OK
    #: Monotonic time the current state began.
    since: float = field(default_factory=time.monotonic)
    findings: list[Finding] = field(default_factory=list)
    cluster_id: str | None = None
    topics_seen: set[str] = field(default_factory=set)
    #: Highest end offset reported per watched partition.
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Set while processing may run; cleared while unreachable, for good once lost.
    clear: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.state == OK:
            self.clear.set()

    @property
    def reason(self) -> str | None:
        """Why the worker must not be ready (None when the broker is fine)."""
        return REASONS.get(self.state)

    def unreachable(self) -> bool:
        """A probe failed: hold processing. True when this changed the state."""
        if self.state != OK:
            return False
        self.state, self.since = UNREACHABLE, time.monotonic()
        self.clear.clear()
        return True

    def observe(self, cluster_id: str | None, topics: Iterable[str],
                ends: Mapping[tuple[str, int], int]) -> list[Finding]:
        """A probe's answer: compare it with what was seen before, then remember it.

        Returns the new findings (and moves to ``lost`` when there are any). A probe
        that passes after an outage moves back to ``ok``.
        """
        if self.state == LOST:
            return []
        present = set(topics)
        found: list[Finding] = []
        if cluster_id is not None:
            if self.cluster_id is not None and cluster_id != self.cluster_id:
                found.append(Finding("cluster_id", before=self.cluster_id, now=cluster_id))
            else:
                self.cluster_id = cluster_id
        for topic in sorted(self.topics_seen - present):
            found.append(Finding("topic_missing", topic))
        for tp, end in sorted(ends.items()):
            before = self.ends.get(tp)
            if before is not None and end < before:
                found.append(Finding("offset_rewind", tp[0], tp[1], before, end))
        if found:
            self.lose(found)
            return found
        self.topics_seen |= present & self.watched
        for tp, end in ends.items():
            if end > self.ends.get(tp, -1):
                self.ends[tp] = end
        if self.state == UNREACHABLE:
            self.state, self.since = OK, time.monotonic()
            self.clear.set()
        return found

    def lose(self, findings: list[Finding]) -> None:
        """Stop processing for good (until the worker restarts)."""
        self.findings.extend(findings)
        if self.state != LOST:
            self.state, self.since = LOST, time.monotonic()
        self.clear.clear()

    def summary(self, limit: int = 10) -> str:
        """The findings in one line, at most ``limit`` of them spelled out."""
        lines = [f.describe() for f in self.findings[:limit]]
        if len(self.findings) > limit:
            lines.append(f"and {len(self.findings) - limit} more")
        return "; ".join(lines)
