"""State survives kill -9: coalesced changelog writes are recovered by a new worker."""

from __future__ import annotations

import datetime as dt
import signal
import time

import pytest

from schemas.codec import encode
from schemas.models import CardTransaction
from tests.conftest import launch_worker
from tests.streams.helpers import collect, send

pytestmark = pytest.mark.broker
T0 = dt.datetime(2026, 5, 1, 9, tzinfo=dt.UTC)


def _tx(customer: str, i: int, amount: int) -> bytes:
    return encode(CardTransaction(
        event_id=f"rc-{customer}-{i}", event_time=T0 + dt.timedelta(hours=i),
        customer_id=customer, account_id="a", type="purchase", amount_minor=amount,
        currency="EUR", mcc="5411", merchant_id="m", channel="pos", country="DE"))


def test_state_is_recovered_after_kill_9(broker, tmp_path):
    customers = [f"rc-{i}" for i in range(12)]
    first = launch_worker(broker, tmp_path / "a", "--app-id", "riskwatch-recovery-test")
    try:
        send(broker.bootstrap, [("card-transactions", c.encode(), _tx(c, i, 20_000))
                                for c in customers for i in range(11)])
        # The history is processed once a repeat of each customer's last event is a
        # duplicate...
        marker = [("card-transactions", c.encode(), _tx(c, 10, 20_000)) for c in customers]
        send(broker.bootstrap, marker)
        dups = collect(broker.bootstrap, ["dead-letters"],
                       lambda t, d: d["reason"] == "duplicate_event"
                       and (d["key"] or "").startswith("rc-"), expect=len(customers))
        assert len(dups) == len(customers)
        time.sleep(4)  # past a state flush and an offset commit
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    second = launch_worker(broker, tmp_path / "b", "--app-id", "riskwatch-recovery-test")
    try:
        # Recovered state: an old event is still a duplicate, and the spike rule still has
        # the ten transactions of history it needs.
        send(broker.bootstrap, [("card-transactions", c.encode(), _tx(c, 2, 20_000))
                                for c in customers])
        send(broker.bootstrap, [("card-transactions", c.encode(), _tx(c, 19, 900_000))
                                for c in customers])
        found = collect(broker.bootstrap, ["risk-alerts", "dead-letters"],
                        lambda t, d: (t == "risk-alerts" and d["customer_id"] in customers
                                      and d["rule_id"] == "large-transaction")
                        or (t == "dead-letters" and d["reason"] == "duplicate_event"
                            and (d["key"] or "").startswith("rc-") and d["raw_b64"]
                            and "rc-" in d["key"]),
                        expect=3 * len(customers), timeout=60)
        alerts = {d["customer_id"] for t, d, _ in found if t == "risk-alerts"}
        assert alerts == set(customers)
        dup_offsets = [d for t, d, _ in found if t == "dead-letters"]
        assert len(dup_offsets) == 2 * len(customers)
    finally:
        second.stop()
