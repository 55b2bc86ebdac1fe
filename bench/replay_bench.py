"""(e) In-process replay on one core, and the ``--scaling`` grid.

``python -m bench.replay_bench INPUT_DIR OUT_DIR REPORT [--cpu N]`` runs
:func:`streams.replay.replay` over ``INPUT_DIR/<topic>.jsonl`` pinned to one CPU
and writes a probe-style report: events/s (replay's own timer: read, decode,
engine, write outputs), CPU seconds, peak RSS and the state bytes per customer
(from the replay snapshot).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from bench.probe import mem_status, write_json


def state_stats(sizes: list[int]) -> dict[str, Any]:
    """Mean, percentiles and total of per-customer state sizes in bytes."""
    if not sizes:
        return {"customers": 0}
    ordered = sorted(sizes)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "customers": len(sizes),
        "mean_bytes": round(statistics.fmean(sizes), 1),
        "p50_bytes": pct(0.50),
        "p99_bytes": pct(0.99),
        "max_bytes": ordered[-1],
        "total_bytes": sum(sizes),
    }


def run_one(input_dir: Path, out_dir: Path, cpu: int | None) -> dict[str, Any]:
    from alerts.policy import load_policy
    from streams.replay import replay, resolve_inputs

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {allowed[cpu % len(allowed)]})
    inputs = resolve_inputs([str(input_dir)])
    policy = load_policy(None)
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = replay(inputs, out_dir, policy)
    wall = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    sizes: list[int] = []
    with (out_dir / "snapshot.jsonl").open("rb") as snap:
        for line in snap:
            sizes.append(int(orjson.loads(line)["state_bytes"]))
    summary = report.as_dict()
    events = summary["events_total"]
    return {
        "events": events,
        "seconds": summary["seconds"],
        "events_per_s": summary["events_per_s"],
        "wall_s_with_snapshot": round(wall, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_s_per_1k": round(cpu_s / max(1, events) * 1000, 5),
        "outputs": summary["outputs"],
        "dead_letters": summary["dead_letters"],
        "pinned_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "state": state_stats(sizes),
        **mem_status(),
    }


def split_costs(input_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Where one replay's time per event goes: reading, decoding and merging the input
    (timed alone, in a pass of its own), the engine (``Engine.process`` and ``advance``,
    timed per call), and the rest (replay's loop, sweeps' bookkeeping, writing outputs,
    and the timers themselves, about 0.2 us per call)."""
    from alerts.engine import Engine
    from alerts.policy import load_policy
    from streams import replay as replay_module

    inputs = replay_module.resolve_inputs([str(input_dir)])
    t0 = time.perf_counter()
    lines = sum(1 for _ in replay_module.iter_merged(inputs))
    read_s = time.perf_counter() - t0
    spent = [0.0]
    clock = time.perf_counter

    def timed(method: Any) -> Any:
        def call(self: Engine, *args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[0] += clock() - t
        return call

    class Timed(Engine):
        process = timed(Engine.process)
        advance = timed(Engine.advance)

    original = replay_module.Engine
    replay_module.Engine = Timed  # type: ignore[misc]
    try:
        report = replay_module.replay(inputs, out_dir, load_policy(None))
    finally:
        replay_module.Engine = original  # type: ignore[misc]
    events = max(1, report.total_events)
    total_us = report.seconds / events * 1e6
    read_us = read_s / max(1, lines) * 1e6
    engine_us = spent[0] / events * 1e6
    return {
        "events": report.total_events,
        "total_us_per_event": round(total_us, 1),
        "read_decode_merge_us_per_event": round(read_us, 1),
        "engine_us_per_event": round(engine_us, 1),
        "rest_us_per_event": round(total_us - read_us - engine_us, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.replay_bench", description=__doc__)
    p.add_argument("input_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("report", type=Path)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU (index in affinity)")
    p.add_argument("--split", action="store_true",
                   help="also time reading, the engine and the rest separately (a second "
                        "replay; see split_costs)")
    args = p.parse_args(argv)
    doc = run_one(args.input_dir, args.out_dir, args.cpu)
    if args.split:
        doc["split"] = split_costs(args.input_dir, args.out_dir)
    doc["done"] = True
    write_json(args.report, doc)


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- #
# Scaling grid
# --------------------------------------------------------------------------- #

_TX = ('{"event_id":"tx-%s-%d","event_time":"%s","customer_id":"%s","account_id":"acc-%s",'
       '"type":"purchase","amount_minor":%d,"currency":"EUR","mcc":"5411",'
       '"merchant_id":"m-%d","channel":"contactless","country":"DE"}\n')
_PROFILE = ('{"event_id":"p-%s","event_time":"%s","customer_id":"%s","credit_limit_minor":%d,'
            '"currency":"EUR","products":["credit_card"],"sector":"retail","region":"north",'
            '"segment":"mass","timezone":"Europe/Berlin"}\n')


def write_scaling_input(out_dir: Path, customers: int, per_customer: int, seed: int = 7,
                        spike_every: int = 50) -> int:
    """Compact synthetic input: a profile per customer, then ``per_customer - 1``
    rounds of one card transaction each (every ``spike_every``-th a spend spike).

    Event times span at most 20 days ending 5 days ago, so no record is too old
    for the policy's lateness or too far in the future. Returns the event count.
    """
    import datetime as dt
    import random

    out_dir.mkdir(parents=True, exist_ok=True)
    total = customers * per_customer
    end = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    step_us = max(1, int(20 * 86_400 * 1e6 / max(1, total)))
    start = end - dt.timedelta(microseconds=step_us * total)
    rnd = random.Random(seed)
    usual = [rnd.randrange(1_500, 9_000) for _ in range(customers)]
    n = 0

    def stamp(i: int) -> str:
        t = start + dt.timedelta(microseconds=step_us * i)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"

    with (out_dir / "customer-profiles.jsonl").open("w") as prof:
        for c in range(customers):
            cid = f"s-{c:07d}"
            prof.write(_PROFILE % (cid, stamp(n), cid, 500_000))
            n += 1
    with (out_dir / "card-transactions.jsonl").open("w") as txs:
        for r in range(1, per_customer):
            spike = spike_every and r >= 10 and r % spike_every == 0
            for c in range(customers):
                cid = f"s-{c:07d}"
                amount = usual[c] * 40 + 100_000 if spike else usual[c] + (n * 7919) % 2_000
                txs.write(_TX % (cid, r, stamp(n), cid, cid, amount, c % 5_000))
                n += 1
    return n


#: (customers, events per customer) of the default grid: customers grow at 2 events each
#: (a profile and a transaction), then events per customer grow at 10k customers (the
#: state's dedupe window saturates at 48 events). About 4 minutes on one core.
SCALING_GRID: tuple[tuple[int, int], ...] = (
    (10_000, 2), (100_000, 2), (1_000_000, 2), (10_000, 10), (10_000, 50),
)
QUICK_GRID: tuple[tuple[int, int], ...] = ((200, 3), (2_000, 3), (200, 20))
