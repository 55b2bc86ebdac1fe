"""A missed due date is detected with no further event from that customer."""

from __future__ import annotations

import datetime as dt

import pytest

from schemas.codec import encode
from schemas.models import CardTransaction, CustomerProfile, InstallmentDue
from streams.replay import partition_of
from tests.conftest import PARTITIONS
from tests.streams.helpers import collect, send

pytestmark = pytest.mark.broker
T0 = dt.datetime(2026, 7, 1, 9, tzinfo=dt.UTC)


def _same_partition(customer: str, prefix: str) -> str:
    target = partition_of(customer, PARTITIONS)
    return next(f"{prefix}-{i}" for i in range(1000)
                if partition_of(f"{prefix}-{i}", PARTITIONS) == target)


def test_missed_installment_detected_by_the_partition_watermark(broker, worker):
    late = "mp-silent-1"
    other = _same_partition(late, "mp-busy")
    profile = CustomerProfile(event_id=f"p-{late}", event_time=T0, customer_id=late,
                              credit_limit_minor=300_000, currency="EUR",
                              products=["installment_plan"], sector="retail", region="north",
                              segment="mass", timezone="Europe/Berlin")
    due = InstallmentDue(event_id=f"due-{late}", event_time=T0, customer_id=late,
                         account_id=f"acc-{late}", due_id="inst-1",
                         due_date=dt.date(2026, 7, 10), amount_minor=25_000, currency="EUR")
    records = [("customer-profiles", late.encode(), encode(profile)),
               ("repayments", late.encode(), encode(due))]
    # Only another customer on the same partition keeps the stream moving, past the due
    # date plus the sweep lateness; the silent customer sends nothing more.
    for day in range(0, 16):
        tx = CardTransaction(event_id=f"tx-{other}-{day}", event_time=T0 + dt.timedelta(days=day),
                             customer_id=other, account_id=f"acc-{other}", type="purchase",
                             amount_minor=3_000, currency="EUR", mcc="5411", merchant_id="m",
                             channel="pos", country="DE")
        records.append(("card-transactions", other.encode(), encode(tx)))
    send(broker.bootstrap, records)

    def mine(topic: str, doc: dict) -> bool:
        if doc["customer_id"] != late:
            return False
        if topic == "risk-alerts":
            return doc["rule_id"] == "delinquency-onset"
        return doc["action"] == "sms"

    found = collect(broker.bootstrap, ["risk-alerts", "customer-actions"], mine, expect=2,
                    timeout=60)
    alerts = [d for t, d, _ in found if t == "risk-alerts"]
    actions = [d for t, d, _ in found if t == "customer-actions"]
    assert len(alerts) == 1
    onset = alerts[0]
    assert onset["trigger_event_id"].startswith(f"sweep:{late}:")
    assert onset["account_id"] == f"acc-{late}"
    evidence = {e["code"]: e["value"] for e in onset["evidence"]}
    assert evidence["oldest_due_date"] == "2026-07-10"
    assert [(a["action"], a["channel"]) for a in actions] == [("sms", "sms")]
