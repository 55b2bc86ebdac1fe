"""The topic registry: every topic's name, contract, key and retention.

This is data only (no Kafka client): the streaming layer declares its topics
from it and the schema exporter documents them from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from schemas import models as m

#: Version of every contract in this release; bumped on a breaking change.
CONTRACT_VERSION = 1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic carries and how it is keyed and kept."""

    name: str
    model: Any
    direction: Literal["input", "output"]
    key: str
    compacted: bool
    description: str
    id_field: str

    @property
    def ce_type(self) -> str:
        """CloudEvents ``type`` of the records on this topic."""
        return f"dev.riskwatch.{self.name}.v{CONTRACT_VERSION}"


_SPECS = (
    TopicSpec("card-transactions", m.CardTransaction, "input", "customer_id", False,
              "Card transactions: purchases, cash advances, refunds, installment conversions.",
              "event_id"),
    TopicSpec("repayments", m.Repayment, "input", "customer_id", False,
              "Repayment events: dues, payments, reversals, restructuring plans, deferrals.",
              "event_id"),
    TopicSpec("customer-profiles", m.CustomerProfile, "input", "customer_id", True,
              "Customer reference data: credit limit, products, sector, region, segment.",
              "event_id"),
    TopicSpec("credit-applications", m.CreditApplication, "input", "customer_id", False,
              "Credit applications made here or seen at the credit bureau.", "event_id"),
    TopicSpec("sector-indicators", m.SectorIndicator, "input", "sector", False,
              "External indicators per economic sector, such as an industry prosperity index.",
              "event_id"),
    TopicSpec("risk-policy", m.RiskPolicyRecord, "input", "version", True,
              "Published versions of the risk policy; every worker applies the newest.",
              "event_id"),
    TopicSpec("outcomes", m.Outcome, "input", "customer_id", False,
              "Confirmed outcomes (default, charge-off, fraud) used as training labels.",
              "event_id"),
    TopicSpec("risk-alerts", m.RiskAlert, "output", "customer_id", False,
              "Early-warning alerts with a graded severity, reason codes and evidence.",
              "alert_id"),
    TopicSpec("limit-adjustments", m.LimitAdjustment, "output", "customer_id", False,
              "Credit-limit proposals (cut, freeze, raise, restore) within guardrails.",
              "adjustment_id"),
    TopicSpec("customer-actions", m.CustomerAction, "output", "customer_id", False,
              "Actions towards customers: reminders, calls, collections, restructuring offers.",
              "action_id"),
    TopicSpec("risk-grades", m.RiskGrade, "output", "customer_id", True,
              "The latest risk grade and score per customer.", "grade_id"),
    TopicSpec("dead-letters", m.DeadLetter, "output", "source_topic", False,
              "Records that could not be processed, with the reason and the masked raw bytes.",
              "dead_letter_id"),
    TopicSpec("audit", m.AuditRecord, "output", "subject", False,
              "Append-only, hash-chained record of policy changes and control actions.",
              "audit_id"),
)

TOPICS: dict[str, TopicSpec] = {spec.name: spec for spec in _SPECS}
INPUT_TOPICS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.direction == "input")
OUTPUT_TOPICS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.direction == "output")
#: Inputs keyed by customer: co-partitioned with the per-customer state table.
CUSTOMER_TOPICS: tuple[str, ...] = tuple(
    s.name for s in _SPECS if s.direction == "input" and s.key == "customer_id"
)
#: Tie-break for input records of equal event time (in milliseconds): topic name
#: order. The worker (a partition's held records) and replay (its merge of the
#: input files) both order by it, so that they process equal times alike.
TOPIC_RANK: dict[str, int] = {name: rank for rank, name in enumerate(sorted(INPUT_TOPICS))}
#: Output model class -> topic name.
TOPIC_OF_MODEL: dict[type, str] = {
    s.model: s.name for s in _SPECS if s.direction == "output"
}
