"""Cost of scoring and grading per event, on real customer states.

    python -m bench.scoring_cost [--customers 300 --days 120]

Replays a generated portfolio to get realistic per-customer states, then times,
over every customer state, the path the engine runs per scored event: features,
score, grade outputs (with hysteresis and tier responses), early-warning lines
and the limit guardrails. Writes bench/results/scoring_cost.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from alerts import grades, limits
from alerts.engine import decode_state
from alerts.policy import DEFAULT_POLICY
from detectors import scoring
from schemas.codec import dumps
from streams.replay import replay, resolve_inputs
from streams.simulator import Portfolio, write_jsonl

RESULTS = Path(__file__).parent / "results"


def measure(customers: int, days: int, rounds: int = 5) -> dict[str, float]:
    policy = DEFAULT_POLICY
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jsonl(Portfolio(customers=customers, days=days, seed=3), root / "in")
        states: dict[str, bytes] = {}
        import streams.replay as rp

        original = rp.Engine

        class Capturing(original):  # keep the final states
            def process(self, topic, event, raw_state, **kw):  # type: ignore[override]
                result = super().process(topic, event, raw_state, **kw)
                if result.state is not None:
                    states[event.customer_id] = result.state
                return result

        rp.Engine = Capturing  # type: ignore[misc]
        try:
            replay(resolve_inputs([str(root / "in")]), root / "out", policy, partitions=4)
        finally:
            rp.Engine = original  # type: ignore[misc]
    model = scoring.RiskModel.from_config(policy.scoring)
    decoded = [decode_state(raw) for raw in states.values()]
    day = max(max(s.watermarks, default=0) for s in decoded) // 86_400_000
    when = dt.datetime.fromtimestamp(day * 86_400, dt.UTC)
    timings = {"features": 0.0, "score": 0.0, "grade": 0.0, "lines": 0.0, "limits": 0.0}
    calls = 0
    for _ in range(rounds):
        for cid, st in zip(states, decoded, strict=True):
            limit = st.profile.limit_minor if st.profile else 100_000
            t0 = time.perf_counter()
            feats = scoring.features(limit, st.ledgers, st.behaviour, day,
                                     behaviour_config=policy.behaviour,
                                     delinquency_config=policy.delinquency)
            t1 = time.perf_counter()
            sstate, result = scoring.score(st.score, feats, [], model, policy.scoring, day)
            t2 = time.perf_counter()
            outcome = grades.grade_outputs(sstate, result, customer_id=cid,
                                           trigger_event_id="bench", event_time=when, day=day,
                                           policy_version="b", model_version="b",
                                           policy=policy.grades, tiers=policy.tiers)
            t3 = time.perf_counter()
            grades.update_lines(st.lines, {"max_dpd": feats["max_dpd"],
                                           "utilisation": feats["utilisation"],
                                           "score": float(result.score)}, day,
                                policy.early_warning)
            t4 = time.perf_counter()
            limits.propose(st.limit or limits.new_state(limit), customer_id=cid,
                           account_id=None, trigger_event_id="bench", event_time=when,
                           grade=outcome.grade, previous_grade=outcome.previous,
                           score=result.score, balance_minor=0, utilisation=None,
                           on_time_cycles=0, crisis_in_force=False, currency="EUR",
                           policy=policy.limits, policy_version="b", model_version="b")
            t5 = time.perf_counter()
            for name, a, b in (("features", t0, t1), ("score", t1, t2), ("grade", t2, t3),
                               ("lines", t3, t4), ("limits", t4, t5)):
                timings[name] += b - a
            calls += 1
    out = {f"{k}_us": round(v / calls * 1e6, 1) for k, v in timings.items()}
    out["total_us"] = round(sum(timings.values()) / calls * 1e6, 1)
    out["customers"] = len(states)
    out["calls"] = calls
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring_cost", description=__doc__)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--days", type=int, default=120)
    args = parser.parse_args(argv)
    result = measure(args.customers, args.days)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring_cost.json").write_bytes(dumps(result) + b"\n")
    print(dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
