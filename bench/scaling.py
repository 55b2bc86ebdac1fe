"""``python -m bench.run --scaling``: replay throughput and state as customers and
events per customer grow (10k, 100k, 1M customers; 2 to 50 events each).

Each point generates compact synthetic input (:func:`bench.replay_bench.write_scaling_input`)
and replays it in a fresh process pinned to one core, so peak RSS is the point's own.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probe import write_json
from bench.replay_bench import QUICK_GRID, SCALING_GRID, write_scaling_input


def run_scaling(opts: Any, grid: tuple[tuple[int, int], ...] | None = None) -> dict[str, Any]:
    from bench import report
    from bench.run import BenchError, machine_info, spawn, wait_for

    grid = grid or (QUICK_GRID if opts.quick else SCALING_GRID)
    machine = machine_info()
    started = time.time()
    points: list[dict[str, Any]] = []
    record_bytes = 0.0
    tmp = Path(tempfile.mkdtemp(prefix="riskwatch-scaling-"))
    try:
        for customers, per_customer in grid:
            point: dict[str, Any] = {"customers": customers, "per_customer": per_customer}
            in_dir, out_dir = tmp / "in", tmp / "out"
            shutil.rmtree(in_dir, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            t0 = time.perf_counter()
            events = write_scaling_input(in_dir, customers, per_customer, seed=opts.seed)
            point["generate_s"] = round(time.perf_counter() - t0, 2)
            tx = in_dir / "card-transactions.jsonl"
            if tx.exists() and events > customers:
                record_bytes = tx.stat().st_size / (events - customers)
            report_path = tmp / "point.report.json"
            print(f"[scaling {time.strftime('%H:%M:%S')}] {customers:,} customers x "
                  f"{per_customer} events = {events:,}", flush=True)
            child = spawn("scaling", [sys.executable, "-m", "bench.replay_bench", str(in_dir),
                                      str(out_dir), str(report_path), "--cpu", "-1"], tmp,
                          report_path)
            try:
                doc = wait_for(child, lambda d: bool(d.get("done")), 900.0, interval=0.2)
                child.proc.wait(timeout=60)
                doc.pop("done", None)
                point.update(doc)
            except BenchError as exc:
                point["error"] = str(exc)[:2000]
            finally:
                child.stop()
            print(f"[scaling] {point.get('events_per_s')} events/s, state mean "
                  f"{point.get('state', {}).get('mean_bytes')} B", flush=True)
            points.append(point)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    doc = {
        "schema": 1,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(opts.argv),
        "quick": opts.quick,
        "wall_seconds": round(time.time() - started, 1),
        "record_bytes": round(record_bytes, 1),
        "points": points,
        "machine": machine,
    }
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scaling.json", doc)
    (out / "scaling.md").write_text(report.scaling_markdown(doc))
    report.plot_scaling(doc, out / "scaling.png")
    return doc
