"""The worker on the real broker: alerts, headers, dead letters, duplicates, health."""

from __future__ import annotations

import datetime as dt
import time
import urllib.request

import pytest

from alerts.policy import DEFAULT_POLICY
from schemas.codec import encode
from schemas.models import CardTransaction, CustomerProfile
from tests.streams.helpers import collect, send

pytestmark = pytest.mark.broker

T0 = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)


def tx(customer: str, i: int, amount: int, **kw: object) -> CardTransaction:
    fields: dict[str, object] = dict(
        event_id=f"wt-{customer}-{i}", event_time=T0 + dt.timedelta(hours=i),
        customer_id=customer, account_id=f"acc-{customer}", type="purchase",
        amount_minor=amount, currency="EUR", mcc="5411", merchant_id="m-1", channel="pos",
        country="DE")
    fields.update(kw)
    return CardTransaction(**fields)  # type: ignore[arg-type]


def test_large_transaction_alert_with_cloudevents_headers(broker, worker):
    customer = "wt-spike-1"
    profile = CustomerProfile(event_id=f"p-{customer}", event_time=T0, customer_id=customer,
                              credit_limit_minor=500_000, currency="EUR",
                              products=["credit_card"], sector="retail", region="north",
                              segment="mass")
    records = [("customer-profiles", customer.encode(), encode(profile))]
    records += [("card-transactions", customer.encode(), encode(tx(customer, i, 2_500)))
                for i in range(11)]
    records.append(("card-transactions", customer.encode(), encode(tx(customer, 11, 300_000))))
    send(broker.bootstrap, records)

    found = collect(broker.bootstrap, ["risk-alerts"],
                    lambda t, d: d["customer_id"] == customer
                    and d["rule_id"] == "large-transaction", expect=1)
    assert len(found) == 1
    _, alert, headers = found[0]
    assert alert["trigger_event_id"] == f"wt-{customer}-11"
    assert alert["reason_codes"] == ["large_transaction"]
    assert alert["severity"] == "high"
    assert alert["policy_version"] == DEFAULT_POLICY.version
    assert "120.0x" in alert["evidence"][0]["text"]
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"].decode() == alert["alert_id"]
    assert headers["ce_type"] == b"dev.riskwatch.risk-alerts.v1"
    assert headers["ce_subject"] == customer.encode()
    assert headers["ce_time"] == b"2026-03-01T20:00:00Z"


def test_bad_records_are_dead_lettered_and_good_ones_processed(broker, worker):
    customer = "wt-poison-1"
    good = [("card-transactions", customer.encode(), encode(tx(customer, i, 2_000)))
            for i in range(11)]
    spike = ("card-transactions", customer.encode(), encode(tx(customer, 19, 400_000)))
    bad = [
        ("card-transactions", customer.encode(), b'{"event_id": "x", 4111 1111 1111 1111'),
        ("card-transactions", customer.encode(), b"\xff\xfe\x00garbage"),
        ("card-transactions", customer.encode(),
         encode(tx(customer, 17, 1_000)).replace(b'"EUR"', b'"XXX"')),
        ("card-transactions", b"someone-else", encode(tx(customer, 18, 1_000))),
        ("repayments", customer.encode(), b'{"type":"payment_received"}'),
    ]
    # A duplicate of an already applied event id.
    dup = ("card-transactions", customer.encode(), encode(tx(customer, 0, 2_000)))
    send(broker.bootstrap, good + bad[:2] + [dup] + bad[2:] + [spike])

    def mine(topic: str, doc: dict) -> bool:
        if topic == "risk-alerts":
            return doc["customer_id"] == customer and doc["rule_id"] == "large-transaction"
        return doc["key"] in (customer, "someone-else")

    found = collect(broker.bootstrap, ["risk-alerts", "dead-letters"], mine, expect=7)
    reasons = sorted(d["reason"] for t, d, _ in found if t == "dead-letters")
    assert reasons == sorted(["malformed_json", "invalid_utf8", "unknown_currency",
                              "key_mismatch", "missing_field", "duplicate_event"])
    alerts = [d for t, d, _ in found if t == "risk-alerts"]
    assert [a["trigger_event_id"] for a in alerts] == [f"wt-{customer}-19"]
    import base64
    masked = [base64.b64decode(d["raw_b64"]) for t, d, _ in found
              if t == "dead-letters" and d["reason"] == "malformed_json"]
    assert masked and b"4111 1111 1111 1111" not in masked[0]
    assert b"411111******1111" in masked[0]


def test_health_readiness_and_metrics(worker):
    base = f"http://{worker.metrics_addr}"
    assert urllib.request.urlopen(f"{base}/healthz").status == 200
    assert urllib.request.urlopen(f"{base}/readyz").status == 200
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    assert "riskwatch_events_total" in text
    assert "riskwatch_build_info" in text
    assert "customer_id" not in text
    deadline = time.monotonic() + 20
    while "riskwatch_broker_up 1.0" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    assert "riskwatch_broker_up 1.0" in text
