"""Smoke test of the benchmark harness: a tiny run, checked for shape, never for speed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench import dataset, profile, report
from bench.run import metric_sum, parse_args, percentile, run_suite
from schemas.codec import decode


def test_synthetic_input_decodes_and_is_about_a_kilobyte():
    records = list(dataset.synthetic(dataset.SyntheticConfig(customers=5, events=60)))
    assert len(records) == 60
    sizes = [len(v) for t, _, v in records if t == "card-transactions"]
    assert 800 < sum(sizes) / len(sizes) < 1600
    for topic, key, value in records:
        assert decode(topic, value, key=key.decode()).customer_id == key.decode()


def test_profile_buckets_and_helpers(tmp_path: Path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (1): MainThread;run (mode/worker.py:1);handle (streams/app.py:50);"
        "decode (schemas/codec.py:170) 30\n"
        "thread (1): MainThread;run (mode/worker.py:1);handle (streams/app.py:50);"
        "Engine.process (alerts/engine.py:100) 50\n"
        "thread (2): Consumer;getmany (aiokafka/consumer/consumer.py:1) 20\n")
    doc = profile.summarise_pyspy(raw, {"cpu_s_per_1k": 0.2})
    shares = {b["name"].split(":")[0]: b["percent"] for b in doc["buckets"]}
    assert shares == {"engine": 50.0, "decode": 30.0, "consumer": 20.0}
    assert doc["cpu_us_per_event"] == 200.0
    assert metric_sum('x_total{a="1"} 2.0\nx_total{a="2"} 3.0\nx_totals 9\n', "x_total") == 5.0
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert "| variant |" in report.markdown({"variants": {}, "machine": {}})


def test_latency_spikes_are_staggered_unless_a_storm_is_asked_for():
    customers, k = 20, 10

    def spike_positions(storm: bool) -> list[list[int]]:
        events = dataset.latency_events(customers, k, "t", 3, storm=storm)
        marks = [next(events)[2] for _ in range(customers * 40)]
        rounds = [marks[r * customers:(r + 1) * customers] for r in range(40)]
        return [[i for i, spike in enumerate(row) if spike] for row in rounds]

    staggered, storm = spike_positions(False), spike_positions(True)
    # The same number of spikes per customer once warmed up (round 10 on) ...
    assert sum(map(len, staggered[10:])) == sum(map(len, storm[10:])) == customers * 3
    # ... but staggered: one customer in k spikes in every round, never all at once;
    assert all(len(row) == customers // k for row in staggered[10:])
    # a storm: every k-th round is all spikes, the others none.
    assert [len(row) for row in storm[10:]] == [customers if r % k == 0 else 0
                                               for r in range(11, 41)]


@pytest.mark.broker
def test_quick_run_writes_results_with_the_required_keys(tmp_path: Path):
    opts = parse_args(["--quick", "--parallel", "--events", "400",
                       "--customers", "25", "--latency-seconds", "1", "--out", str(tmp_path)])
    doc = run_suite(opts)

    saved = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert saved["ratio_vs_naive_faust"] == doc["ratio_vs_naive_faust"]
    for key in ("ratio_vs_naive_faust", "ratio_vs_bare_faust", "replay_events_per_s"):
        assert saved[key] > 0, key
    for variant in "abcde":
        result = saved["variants"][variant]
        assert "error" not in result, result.get("error")
        for key in ("events_per_s", "cpu_s_per_1k", "peak_rss_bytes"):
            assert result[key] > 0, (variant, key)
    assert saved["variants"]["d"]["events"] >= 400
    latency = saved["latency"]
    assert latency["alerts_received"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert latency["spikes"] == "staggered"
    storm = saved["latency_storm"]
    assert "error" not in storm, storm.get("error")
    assert storm["spikes"] == "storm" and storm["spikes_sent"] > 0
    assert saved["state"]["mean_bytes"] > 0
    assert saved["recovery"]["messages_per_s"] > 0
    assert saved["machine"]["nproc"] >= 1
    assert saved["machine"]["versions"]["faust-streaming"]
    assert "| (d) Riskwatch worker" in (tmp_path / "latest.md").read_text()


def test_delinquency_bench_quick_run_has_the_figures(tmp_path: Path):
    from bench import delinquency

    assert delinquency.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = orjson.loads((tmp_path / "delinquency.json").read_bytes())
    for path in ("replay", "engine", "ledger"):
        row = doc["throughput"]["rows"][path]
        assert row["events_per_s"] > 0 and row["us_per_event"] > 0, path
    rows = doc["sweep"]["rows"]
    assert {(r["level"], r["accounts"]) for r in rows} == {
        (level, n) for level in ("ledger", "engine") for n in (2_000, 20_000)}
    for row in rows:
        # Every sweep crosses exactly the accounts due that day, whatever the total.
        assert row["crossed_per_sweep"] == [100] * 3, row
        assert row["us_per_crossed"] > 0
    engine = [r for r in rows if r["level"] == "engine"]
    assert all(r["sample_dpd"] >= 1 and r["outputs"] > 0 for r in engine)
    assert "| ledger | 20,000 |" in (tmp_path / "delinquency.md").read_text()


def test_replay_split_times_the_engine_inside_the_replay(tmp_path: Path):
    """``bench.replay_bench --split``: the engine's time is timed inside the replay's
    own time, reading in a pass of its own, and replay gets its engine back."""
    import streams.replay
    from alerts.engine import Engine
    from bench.replay_bench import split_costs, write_scaling_input

    events = write_scaling_input(tmp_path / "in", customers=20, per_customer=15)
    split = split_costs(tmp_path / "in", tmp_path / "out")
    assert split["events"] == events
    assert 0 < split["engine_us_per_event"] < split["total_us_per_event"]
    assert split["read_decode_merge_us_per_event"] > 0
    assert (tmp_path / "out" / "snapshot.jsonl").read_bytes().count(b"\n") == 20
    assert streams.replay.Engine is Engine  # the timed engine is put back
