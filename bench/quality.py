"""Detection quality against the simulator's ground truth.

    python -m bench.quality [--customers 1000 --days 180 --seed 7]

Generates a portfolio with injected scenarios, replays it with the default
policy (the worker's engine, per-partition order), and reports per scenario:

* recall: share of the scenario's customers with at least one relevant alert
  from the scenario's start (for defaults: before the customer reached 90 days
  past due; for fraud bursts: within the burst); an alert before the start, on
  the customer's healthy history, is a false alarm and catches nothing;
* lead time: days between the first such alert and 30+ / 90+ days past due
  (median), or minutes from the burst's start to its first alert;
* precision: share of customers alerted (early-warning alerts, high or critical)
  who belong to an adverse scenario;
* false-alert rate among steady good customers, per customer-month.

"Relevant" alerts are early-warning signals (behaviour shift, fraud pattern,
warnings, delinquency onset, grade escalations), excluding the informational
severity. Results go to bench/results/quality.json and quality.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from alerts.policy import DEFAULT_POLICY
from schemas.codec import dumps, loads
from streams.replay import replay, resolve_inputs
from streams.simulator import Portfolio, write_jsonl

RESULTS = Path(__file__).parent / "results"
ADVERSE = {"gradual_deterioration", "income_shock", "sector_downturn",
           "hardship_restructured_broken", "application_spree", "card_fraud_burst",
           "hardship_restructured_kept"}
#: Alert kinds that count as an early warning for the credit scenarios.
EARLY = {"behaviour_shift", "warning", "risk_grade", "early_warning", "delinquency",
         "fraud_pattern"}


def _day(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


def evaluate(customers: int, days: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jsonl(Portfolio(customers=customers, days=days, seed=seed), root / "in")
        truth = {d["customer_id"]: d for d in map(
            loads, (root / "in" / "ground_truth.jsonl").read_bytes().splitlines())}
        report = replay(resolve_inputs([str(root / "in")]), root / "out", DEFAULT_POLICY,
                        partitions=4)
        alerts = [loads(x) for x in (root / "out" / "risk-alerts.jsonl").read_bytes()
                  .splitlines()]
    return {"customers": customers, "days": days, "seed": seed,
            "events": report.total_events, **score(truth, alerts, days)}


def score(truth: dict[str, dict[str, Any]], alerts: list[dict[str, Any]],
          days: int) -> dict[str, Any]:
    """The report's figures from the ground truth (by customer id) and the alerts (as
    decoded from ``risk-alerts``) of a ``days``-long portfolio."""
    early_alerts: dict[str, list[dt.datetime]] = defaultdict(list)
    fraud_alerts: dict[str, list[dt.datetime]] = defaultdict(list)
    alerted_high: set[str] = set()
    steady_alerts = 0
    for a in alerts:
        if a["customer_id"] not in truth or a["severity"] == "info":
            continue
        when = dt.datetime.fromisoformat(a["event_time"].replace("Z", "+00:00"))
        if a["alert_type"] in EARLY:
            early_alerts[a["customer_id"]].append(when)
        if a["alert_type"] in ("fraud_pattern",) or "anomalous_transaction" in a["reason_codes"]:
            fraud_alerts[a["customer_id"]].append(when)
        if a["severity"] in ("high", "critical"):
            alerted_high.add(a["customer_id"])
        if truth[a["customer_id"]]["scenario"] == "steady_good":
            steady_alerts += 1
    by_scenario: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in truth.values():
        by_scenario[t["scenario"]].append(t)
    rows: dict[str, Any] = {}
    for scenario, members in sorted(by_scenario.items()):
        caught = 0
        leads30: list[int] = []
        leads90: list[int] = []
        fraud_minutes: list[float] = []
        eligible = 0
        for t in members:
            cid = t["customer_id"]
            d30, d90 = _day(t["first_30dpd_date"]), _day(t["first_90dpd_date"])
            if scenario == "card_fraud_burst" and t["fraud_window"]:
                eligible += 1
                start, end = (dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
                              for x in t["fraud_window"])
                # The first fraud alert of the burst: one before it (a false alarm
                # on the customer's own spend) does not count as catching it.
                hit = min((w for w in fraud_alerts.get(cid, ()) if w >= start), default=None)
                if hit is not None and hit <= end:
                    caught += 1
                    fraud_minutes.append(max(0.0, (hit - start).total_seconds() / 60))
            elif d30 is not None:
                eligible += 1
                # The first early-warning alert from the scenario's start: one before it
                # (a false alarm on the customer's earlier, healthy history) is no catch.
                begun = dt.date.fromisoformat(t["scenario_start"])
                hit = min((w for w in early_alerts.get(cid, ()) if w.date() >= begun),
                          default=None)
                deadline = d90 or (d30 + dt.timedelta(days=60))
                if hit is not None and hit.date() <= deadline:
                    caught += 1
                    leads30.append((d30 - hit.date()).days)
                    if d90:
                        leads90.append((d90 - hit.date()).days)
        rows[scenario] = {
            "customers": len(members),
            "with_outcome": eligible,
            "recall": round(caught / eligible, 3) if eligible else None,
            "median_lead_days_to_30dpd": statistics.median(leads30) if leads30 else None,
            "median_lead_days_to_90dpd": statistics.median(leads90) if leads90 else None,
            "median_minutes_to_fraud_alert": (round(statistics.median(fraud_minutes), 1)
                                              if fraud_minutes else None),
            "alerted_high_or_critical": sum(1 for t in members
                                            if t["customer_id"] in alerted_high),
        }
    adverse_alerted = sum(1 for c in alerted_high if truth[c]["scenario"] in ADVERSE)
    steady = len(by_scenario.get("steady_good", []))
    months = days / 30.4
    return {
        "alerts": len(alerts),
        "precision_high_or_critical": (round(adverse_alerted / len(alerted_high), 3)
                                       if alerted_high else None),
        "steady_good_alerts_per_customer_month": (round(steady_alerts / (steady * months), 4)
                                                  if steady else None),
        "steady_good_customers_alerted_high": sum(
            1 for c in alerted_high if truth[c]["scenario"] == "steady_good"),
        "scenarios": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Detection quality (replay against the simulator's ground truth)",
        "",
        f"`python -m bench.quality --customers {result['customers']} --days {result['days']} "
        f"--seed {result['seed']}` · {result['events']:,} events · {result['alerts']:,} alerts",
        "",
        "| scenario | customers | with outcome | recall | median lead to 30 DPD (days) "
        "| median lead to 90 DPD (days) | fraud: minutes to alert | alerted high+ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["scenarios"].items():
        def fmt(v: Any) -> str:
            return "–" if v is None else str(v)
        lines.append(f"| {name} | {row['customers']} | {row['with_outcome']} | "
                     f"{fmt(row['recall'])} | {fmt(row['median_lead_days_to_30dpd'])} | "
                     f"{fmt(row['median_lead_days_to_90dpd'])} | "
                     f"{fmt(row['median_minutes_to_fraud_alert'])} | "
                     f"{row['alerted_high_or_critical']} |")
    lines += [
        "",
        f"Precision (customers alerted high or critical who are in an adverse scenario): "
        f"**{result['precision_high_or_critical']}**. Steady good customers: "
        f"**{result['steady_good_alerts_per_customer_month']}** alerts per customer-month "
        f"(any severity above info); {result['steady_good_customers_alerted_high']} of them "
        "ever alerted high or critical.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = evaluate(args.customers, args.days, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_bytes(dumps(result) + b"\n")
    (args.out / "quality.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
