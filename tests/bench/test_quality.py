"""The detection-quality report's scoring (``bench.quality.score``): only alerts from a
scenario's start count as catching it."""

from __future__ import annotations

from typing import Any

from bench.quality import score


def truth(cid: str, scenario: str, start: str, **kw: Any) -> dict[str, Any]:
    return {"customer_id": cid, "scenario": scenario, "scenario_start": start,
            "first_30dpd_date": None, "first_90dpd_date": None, "fraud_window": None} | kw


def alert(cid: str, when: str, alert_type: str, codes: tuple[str, ...] = (),
          severity: str = "medium") -> dict[str, Any]:
    return {"customer_id": cid, "event_time": when, "alert_type": alert_type,
            "reason_codes": list(codes), "severity": severity}


def test_an_alert_before_the_scenario_started_catches_nothing() -> None:
    t = {
        "f1": truth("f1", "card_fraud_burst", "2026-03-10",
                    fraud_window=["2026-03-10T02:00:00Z", "2026-03-10T04:00:00Z"]),
        "f2": truth("f2", "card_fraud_burst", "2026-03-10",
                    fraud_window=["2026-03-10T02:00:00Z", "2026-03-10T04:00:00Z"]),
        "d1": truth("d1", "income_shock", "2026-04-01", first_30dpd_date="2026-05-15"),
        "d2": truth("d2", "income_shock", "2026-04-01", first_30dpd_date="2026-05-15"),
    }
    alerts = [
        # f1: a false alarm a week before, then the burst caught 30 minutes in.
        alert("f1", "2026-03-03T12:00:00Z", "fraud_pattern", ("anomalous_transaction",)),
        alert("f1", "2026-03-10T02:30:00Z", "fraud_pattern", ("anomalous_transaction",)),
        # f2: only the false alarm: missed.
        alert("f2", "2026-03-03T12:00:00Z", "fraud_pattern", ("anomalous_transaction",)),
        # d1: an early warning before the shock, then one 10 days before 30+ DPD.
        alert("d1", "2026-02-01T09:00:00Z", "warning"),
        alert("d1", "2026-05-05T09:00:00Z", "warning"),
        # d2: only the warning before the shock: missed.
        alert("d2", "2026-02-01T09:00:00Z", "warning"),
    ]
    rows = score(t, alerts, days=180)["scenarios"]
    fraud, shock = rows["card_fraud_burst"], rows["income_shock"]
    assert fraud["recall"] == 0.5 and fraud["median_minutes_to_fraud_alert"] == 30.0
    assert shock["recall"] == 0.5 and shock["median_lead_days_to_30dpd"] == 10
