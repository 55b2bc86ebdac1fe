"""Cost of the delinquency engine: repayment throughput and the watermark sweep.

    python -m bench.delinquency [--customers 4000 --months 6] [--accounts 10000,100000,1000000]
    python -m bench.delinquency --quick        # a smoke run (seconds)

Two parts, both in-process on one core, writing ``bench/results/delinquency.json`` and
``delinquency.md``:

**Throughput** of a generated repayment history (one account per customer, installment
loans and cards, a due every month; most customers pay on time, some late, some
partly, some not at all; a few payments bounce), in event-time order, three ways:

* ``replay``: :func:`streams.replay.replay` over JSONL (decode, engine, watermark sweeps,
  outputs written) -- what ``riskwatch replay`` does;
* ``engine``: :meth:`alerts.engine.Engine.process` on decoded events with the same
  inline watermark sweeps (:meth:`~alerts.engine.Engine.advance` through a
  :class:`~detectors.delinquency.DueIndex`), no decode, no output writing;
* ``ledger``: :func:`detectors.delinquency.apply` per account with the sweep through
  :func:`~detectors.delinquency.advance` -- the ledger alone.

**Sweep scaling**: N accounts (10k, 100k, 1M) stored as bytes, as a state store holds
them, and indexed by their next check day; each sweep moves event time one day and
crosses the due dates of the same number of accounts (``--per-sweep``); every other
account's check day is months away. Timed per sweep, at two levels:

* ``ledger``: pop the index, decode the ledger, :func:`~detectors.delinquency.advance`,
  :func:`~detectors.delinquency.next_check_day`, encode, re-index;
* ``engine``: the same with one customer per account and
  :meth:`~alerts.engine.Engine.advance` (onset alert, SMS action, re-score and grade),
  as the worker's and replay's sweep do it.

The customer states are built directly (a ledger with one open installment each)
rather than through a million ``Engine.process`` calls, which would take far longer
than the sweep being measured. The baseline ``scan`` column is the least any sweep
without the index would pay: one pass over every account's check day (a dict of ints).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alerts.engine import CustomerState, Engine, decode_state, encode_state
from alerts.policy import DEFAULT_POLICY
from bench.probe import mem_status, write_json
from detectors import delinquency as dq
from schemas.codec import encode
from schemas.models import (
    CustomerProfile,
    InstallmentDue,
    PaymentReceived,
    PaymentReversed,
    StatementDue,
)

RESULTS = Path(__file__).parent / "results"
DAY_S = 86_400

# --------------------------------------------------------------------------- #
# Repayment history
# --------------------------------------------------------------------------- #


def repayment_history(customers: int, months: int, seed: int = 11,
                      end: dt.datetime | None = None) -> list[Any]:
    """Profiles, then dues, payments and reversals of ``customers`` accounts over
    ``months`` monthly cycles, in event-time order, ending a few days before ``end``.

    Payers: 70 % on time (some early), 12 % late (5 to 45 days), 10 % partly (a
    third to all of it, the rest later or never), 8 % stop paying after a few
    cycles; 2 % of payments bounce a few days later.
    """
    rnd = random.Random(seed)
    end = end or dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = end - dt.timedelta(days=30 * months + 50)
    events: list[tuple[dt.datetime, int, Any]] = []
    n = 0

    def add(when: dt.datetime, event: Any) -> None:
        nonlocal n
        events.append((when, n, event))
        n += 1

    for c in range(customers):
        cid = f"c-{c:07d}"
        acc = f"a-{c:07d}"
        card = rnd.random() < 0.3
        kind = rnd.choices(("ontime", "late", "partial", "stops"), (70, 12, 10, 8))[0]
        stop_at = rnd.randrange(1, months + 1) if kind == "stops" else months + 1
        offset = dt.timedelta(seconds=rnd.randrange(0, 28 * DAY_S))
        add(start + offset, CustomerProfile(
            event_id=f"p-{cid}", event_time=start + offset, customer_id=cid,
            credit_limit_minor=rnd.randrange(100_000, 1_500_000, 10_000), currency="EUR",
            products=["credit_card" if card else "installment_plan"], sector="retail",
            region="north", segment="mass", timezone="Europe/Berlin"))
        amount = rnd.randrange(5_000, 60_000, 100)
        for m in range(months):
            issued = start + offset + dt.timedelta(days=30 * m + 1)
            due_date = (issued + dt.timedelta(days=20)).date()
            due_id = f"{acc}-{m}"
            if card:
                balance = amount * rnd.randrange(2, 8)
                add(issued, StatementDue(
                    event_id=f"d-{due_id}", event_time=issued, customer_id=cid,
                    account_id=acc, due_id=due_id, due_date=due_date, amount_minor=balance,
                    minimum_minor=max(2_500, balance // 20), currency="EUR"))
                owed = max(2_500, balance // 20) if rnd.random() < 0.6 else balance
            else:
                add(issued, InstallmentDue(
                    event_id=f"d-{due_id}", event_time=issued, customer_id=cid,
                    account_id=acc, due_id=due_id, due_date=due_date, amount_minor=amount,
                    currency="EUR"))
                owed = amount
            if m >= stop_at:
                continue
            due_at = dt.datetime.combine(due_date, dt.time(9), dt.UTC)
            if kind == "late" and rnd.random() < 0.5:
                paid_at = due_at + dt.timedelta(days=rnd.randrange(5, 46))
            else:
                paid_at = due_at - dt.timedelta(days=rnd.randrange(0, 6),
                                                seconds=rnd.randrange(0, 30_000))
            paid = owed if kind != "partial" else rnd.randrange(owed // 3, owed + 1)
            if paid_at >= end - dt.timedelta(days=2):
                continue
            pay_id = f"pay-{due_id}"
            add(paid_at, PaymentReceived(
                event_id=pay_id, event_time=paid_at, customer_id=cid, account_id=acc,
                amount_minor=paid, currency="EUR", channel="transfer"))
            if rnd.random() < 0.02:
                bounced = paid_at + dt.timedelta(days=rnd.randrange(1, 6))
                if bounced < end - dt.timedelta(days=2):
                    add(bounced, PaymentReversed(
                        event_id=f"rev-{due_id}", event_time=bounced, customer_id=cid,
                        account_id=acc, reversed_event_id=pay_id, amount_minor=paid,
                        currency="EUR", reason="insufficient funds"))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events]


def _timed(run: Any) -> dict[str, float]:
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    extra = run() or {}
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": time.process_time() - cpu0, **extra}


def _rates(events: int, t: dict[str, Any]) -> dict[str, Any]:
    return {
        "events": events,
        "events_per_s": round(events / t["wall_s"], 1),
        "us_per_event": round(t["wall_s"] / events * 1e6, 1),
        "cpu_us_per_event": round(t["cpu_s"] / events * 1e6, 1),
        **{k: v for k, v in t.items() if k not in ("wall_s", "cpu_s")},
    }


def _engine_pass(events: list[Any]) -> dict[str, Any]:
    """Engine.process per event and the replay-style inline sweep (one partition)."""
    engine = Engine(DEFAULT_POLICY)
    lateness = dt.timedelta(hours=DEFAULT_POLICY.sweep_lateness_hours)
    states: dict[str, bytes] = {}
    index = dq.DueIndex()
    watermark = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    outputs = sweeps = 0

    def sweep(as_of: dt.datetime) -> int:
        done = 0
        for cid in index.pop_due(dq.epoch_day(as_of)):
            result = engine.advance(cid, states.get(cid), as_of)
            if result.state is not None:
                states[cid] = result.state
            index.add(cid, result.next_check)
            done += len(result.emits)
        return done

    for event in events:
        topic = "customer-profiles" if isinstance(event, CustomerProfile) else "repayments"
        if event.event_time > watermark:
            watermark = event.event_time
            sweeps += 1
            outputs += sweep(watermark - lateness)
        result = engine.process(topic, event, states.get(event.customer_id))
        if result.state is not None:
            states[event.customer_id] = result.state
            index.add(event.customer_id, result.next_check)
        outputs += len(result.emits)
        if result.next_check is not None and result.next_check <= dq.epoch_day(
                watermark - lateness):
            outputs += sweep(watermark - lateness)  # a check day already behind: due now
    return {"outputs": outputs, "sweeps": sweeps, "customers": len(states),
            "state_mean_bytes": round(statistics.fmean(len(s) for s in states.values()), 1)}


def _ledger_pass(events: list[Any]) -> dict[str, Any]:
    """delinquency.apply per account and the sweep through advance (ledgers as objects)."""
    config = DEFAULT_POLICY.delinquency
    ledgers: dict[str, dq.AccountLedger] = {}
    index = dq.DueIndex()
    lateness = dt.timedelta(hours=DEFAULT_POLICY.sweep_lateness_hours)
    watermark = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    signals = 0
    for event in events:
        if isinstance(event, CustomerProfile):
            continue
        if event.event_time > watermark:
            watermark = event.event_time
            as_of = dq.epoch_day(watermark - lateness)
            for acc in index.pop_due(as_of):
                led, found = dq.advance(ledgers[acc], as_of, config)
                ledgers[acc] = led
                index.add(acc, dq.next_check_day(led, config))
                signals += len(found)
        product = "credit_card" if isinstance(event, StatementDue) else (
            "installment_plan" if isinstance(event, InstallmentDue) else None)
        old = ledgers.get(event.account_id)
        led, found = dq.apply(old, event, config, product=product)
        if led is not old:
            ledgers[event.account_id] = led
            index.add(event.account_id, dq.next_check_day(led, config))
        signals += len(found)
    return {"signals": signals, "accounts": len(ledgers)}


def measure_throughput(customers: int, months: int, seed: int = 11) -> dict[str, Any]:
    from streams.replay import replay, resolve_inputs

    events = repayment_history(customers, months, seed)
    repayments = sum(1 for e in events if not isinstance(e, CustomerProfile))
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="riskwatch-dq-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        with (root / "in" / "customer-profiles.jsonl").open("wb") as prof, \
                (root / "in" / "repayments.jsonl").open("wb") as rep:
            for e in events:
                (prof if isinstance(e, CustomerProfile) else rep).write(encode(e) + b"\n")
        holder: dict[str, Any] = {}

        def run_replay() -> dict[str, Any]:
            report = replay(resolve_inputs([str(root / "in")]), root / "out", DEFAULT_POLICY,
                            partitions=4)
            holder["seconds"] = report.seconds
            return {"outputs": sum(report.outputs.values())}

        t = _timed(run_replay)
        # Replay's own timer (read, decode, engine, write), without the final snapshot.
        t["wall_s"] = holder["seconds"]
        rows["replay"] = _rates(len(events), t)
    rows["engine"] = _rates(len(events), _timed(lambda: _engine_pass(events)))
    rows["ledger"] = _rates(repayments, _timed(lambda: _ledger_pass(events)))
    return {"customers": customers, "months": months, "events": len(events),
            "repayment_events": repayments, "profiles": len(events) - repayments, "rows": rows}


# --------------------------------------------------------------------------- #
# Sweep scaling
# --------------------------------------------------------------------------- #

#: Clock of every generated ledger (2026-01-01) and of the first sweep's day before.
BASE_DAY = dq.epoch_day(dt.date(2026, 1, 1))


def _due_day(i: int, per_sweep: int, sweeps: int) -> int:
    """Due date of account ``i``: the first ``sweeps * per_sweep`` accounts fall past due
    one day after another, ``per_sweep`` a day; the rest months later."""
    if i < sweeps * per_sweep:
        return BASE_DAY + i // per_sweep
    return BASE_DAY + 200 + i % 300


def _accounts(n: int, per_sweep: int, sweeps: int) -> Iterator[tuple[str, dq.AccountLedger]]:
    for i in range(n):
        acc = f"a-{i:07d}"
        yield acc, dq.AccountLedger(acc, BASE_DAY, "installment_plan",
                                    dues=[dq.Due(f"{acc}-1", _due_day(i, per_sweep, sweeps),
                                                 25_000, key=BASE_DAY * DAY_S - 20 * DAY_S)])


def _scan_ms(check_days: dict[str, int], day: int, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        found = [k for k, d in check_days.items() if d <= day]
        best = min(best, time.perf_counter() - t0)
        del found
    return round(best * 1e3, 2)


def _sweep_level(level: str, n: int, per_sweep: int, sweeps: int) -> dict[str, Any]:
    config = DEFAULT_POLICY.delinquency
    engine = Engine(DEFAULT_POLICY)
    store: dict[str, bytes] = {}
    check_days: dict[str, int] = {}
    index = dq.DueIndex()
    t0 = time.perf_counter()
    for acc, led in _accounts(n, per_sweep, sweeps):
        day = dq.next_check_day(led, config)
        assert day is not None
        if level == "ledger":
            store[acc] = dq.encode_ledger(led)
        else:
            store[acc] = encode_state(CustomerState(ledgers={acc: led}, next_check=day))
        index.add(acc, day)
        check_days[acc] = day
    build_s = time.perf_counter() - t0
    gc.collect()
    sweep_ms: list[float] = []
    pop_ms: list[float] = []
    crossed: list[int] = []
    outputs = 0
    for s in range(sweeps):
        day = BASE_DAY + 1 + s
        as_of = dt.datetime(1970, 1, 1, 12, tzinfo=dt.UTC) + dt.timedelta(days=day)
        t0 = time.perf_counter()
        keys = index.pop_due(day)
        pop_ms.append((time.perf_counter() - t0) * 1e3)
        for key in keys:
            if level == "ledger":
                led, found = dq.advance(dq.decode_ledger(store[key]), day, config)
                store[key] = dq.encode_ledger(led)
                index.add(key, dq.next_check_day(led, config))
                outputs += len(found)
            else:
                result = engine.advance(key, store[key], as_of)
                if result.state is not None:
                    store[key] = result.state
                index.add(key, result.next_check)
                outputs += len(result.emits)
        sweep_ms.append((time.perf_counter() - t0) * 1e3)
        crossed.append(len(keys))
    scan = _scan_ms(check_days, BASE_DAY + sweeps)
    mem = mem_status()
    out = {
        "level": level,
        "accounts": n,
        "crossed_per_sweep": crossed,
        "sweep_ms_best": round(min(sweep_ms), 2),
        "sweep_ms_median": round(statistics.median(sweep_ms), 2),
        "sweep_ms": [round(x, 2) for x in sweep_ms],
        "pop_ms_median": round(statistics.median(pop_ms), 3),
        "us_per_crossed": round(min(sweep_ms) * 1e3 / max(1, statistics.median(crossed)), 1),
        "outputs": outputs,
        "scan_ms": scan,
        "build_s": round(build_s, 1),
        "state_mean_bytes": round(statistics.fmean(len(v) for v in store.values()), 1),
        "rss_bytes": mem["rss_bytes"],
    }
    if level == "engine":
        # Sanity: the crossed customers really were found past due by the sweep.
        sample = decode_state(store[f"a-{0:07d}"])
        out["sample_dpd"] = dq.days_past_due(sample.ledgers["a-0000000"], BASE_DAY + sweeps,
                                             config)
    del store, check_days, index
    gc.collect()
    return out


def measure_sweeps(accounts: list[int], per_sweep: int, sweeps: int) -> list[dict[str, Any]]:
    rows = []
    for level in ("ledger", "engine"):
        for n in accounts:
            print(f"[delinquency {time.strftime('%H:%M:%S')}] sweep {level}: {n:,} accounts",
                  flush=True)
            rows.append(_sweep_level(level, n, per_sweep, sweeps))
    return rows


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    t = doc["throughput"]
    lines = [
        "### Delinquency engine: repayment throughput and watermark sweep (one core)",
        "",
        f"`{doc['command']}` · {doc['generated_at']} · {m['nproc']} CPUs, load average "
        f"{m['loadavg'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at the end · "
        f"Python {m['python']}",
        "",
        f"Throughput: {t['customers']:,} customers x {t['months']} monthly cycles = "
        f"{t['repayment_events']:,} repayment events (+ {t['profiles']:,} profiles), "
        "in event-time order.",
        "",
        "| path | events | events/s | µs / event | CPU µs / event | outputs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"replay": "replay: JSONL, decode, engine, sweeps, outputs written",
             "engine": "engine: `Engine.process` + inline sweeps (decoded events)",
             "ledger": "ledger: `delinquency.apply` + `advance` (repayments only)"}
    for key, row in t["rows"].items():
        out = row.get("outputs", row.get("signals", ""))
        lines.append(f"| {names[key]} | {row['events']:,} | {row['events_per_s']:,.0f} | "
                     f"{row['us_per_event']:,.1f} | {row['cpu_us_per_event']:,.1f} | "
                     f"{out:,} |")
    s = doc["sweep"]
    lines += [
        "",
        f"Sweep: each sweep moves event time one day and crosses the due dates of "
        f"{s['per_sweep']:,} accounts; best and median of {s['sweeps']} sweeps.",
        "",
        "| level | accounts | crossed / sweep | sweep ms, best | sweep ms, median | "
        "of which index pop, ms | µs / crossed account (best) | "
        "scan of all check days, ms | state B | RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in s["rows"]:
        crossed = statistics.median(row["crossed_per_sweep"])
        lines.append(
            f"| {row['level']} | {row['accounts']:,} | {crossed:,.0f} | "
            f"{row['sweep_ms_best']:,.1f} | {row['sweep_ms_median']:,.1f} | "
            f"{row['pop_ms_median']:,.2f} | {row['us_per_crossed']:,.1f} | "
            f"{row['scan_ms']:,.1f} | {row['state_mean_bytes']:,.0f} | "
            f"{row['rss_bytes'] / 2**20:,.0f} MiB |")
    lines += [
        "",
        "The sweep pops only the accounts whose check day was crossed (the `DueIndex`), so "
        "its cost follows the due dates crossed, not the accounts held; the scan column is "
        "what a sweep without the index would pay before doing any work (one pass over the "
        "check day of every account). The best of several sweeps is the figure to compare "
        "on a shared machine (the median carries the other processes' load). Engine-level states are built directly (one ledger "
        "with one open installment per customer, no profile or score yet), not through "
        "`Engine.process`; each crossed customer then gets its onset alert, an SMS action "
        "and a first score and grade. RSS is the process's after the level's sweeps (the "
        "store, the index and the check-day dict of that level).",
        "",
    ]
    if m["loadavg"][0] > m["nproc"] / 2:
        lines.insert(2, "**Preliminary figures**: the machine was shared (load average "
                        f"{m['loadavg'][0]:.1f} on {m['nproc']} CPUs).\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delinquency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=4_000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--accounts", default="10000,100000,1000000",
                        help="comma-separated account counts of the sweep scaling")
    parser.add_argument("--per-sweep", type=int, default=1_000)
    parser.add_argument("--sweeps", type=int, default=9)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.months, args.accounts, args.per_sweep, args.sweeps = (
            200, 3, "2000,20000", 100, 3)
    import platform

    machine = {"nproc": os.cpu_count() or 1, "loadavg": list(os.getloadavg()),
               "python": platform.python_version()}
    started = time.time()
    print(f"[delinquency {time.strftime('%H:%M:%S')}] throughput: {args.customers:,} customers "
          f"x {args.months} months", flush=True)
    throughput = measure_throughput(args.customers, args.months, args.seed)
    accounts = [int(x) for x in args.accounts.split(",") if x]
    sweep = {"per_sweep": args.per_sweep, "sweeps": args.sweeps,
             "rows": measure_sweeps(accounts, args.per_sweep, args.sweeps)}
    machine["loadavg_end"] = list(os.getloadavg())
    doc = {
        "schema": 1,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.delinquency",
                             *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "wall_seconds": round(time.time() - started, 1),
        "throughput": throughput,
        "sweep": sweep,
        "machine": machine,
        **{"peak_rss_bytes": mem_status()["peak_rss_bytes"]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "delinquency.json", doc)
    (args.out / "delinquency.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
