"""Markdown tables and PNG plots of benchmark results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = "abcde"


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _mib(value: Any) -> str:
    return "–" if not value else f"{value / 2**20:,.0f} MiB"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def preliminary(doc: dict[str, Any]) -> str | None:
    m = doc.get("machine", {})
    nproc = m.get("nproc") or 1
    load = max((m.get("loadavg_start") or [0])[0], (m.get("loadavg_end") or [0])[0])
    if load > 0.5 * nproc or doc.get("quick"):
        why = "a --quick smoke run" if doc.get("quick") else (
            f"the machine was shared (load average {load:.1f} on {nproc} CPUs)")
        return f"**Preliminary figures**: {why}; rerun `bash scripts/bench.sh` on a quiet machine."
    return None


def header(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    v = m.get("versions", {})
    cfg = doc.get("config", {})
    return (
        f"`{doc.get('command', 'python -m bench.run').strip()}` · {doc.get('generated_at', '')} · "
        f"{_num(cfg.get('events'))} events ({cfg.get('source')}, mean "
        f"{_num(cfg.get('mean_record_bytes'))} B/record), {_num(cfg.get('customers'))} customers, "
        f"{cfg.get('partitions')} partitions · {m.get('broker') or 'Tansu'} (embedded, in-memory) · "
        f"{m.get('nproc')} CPUs ({m.get('cpu_model') or '?'}), load average "
        f"{(m.get('loadavg_start') or [0])[0]:.1f} → {(m.get('loadavg_end') or [0])[0]:.1f} · "
        f"Python {m.get('python')}, faust-streaming {v.get('faust-streaming')}, aiokafka "
        f"{v.get('aiokafka')}, msgspec {v.get('msgspec')}, orjson {v.get('orjson')}, uvloop "
        f"{v.get('uvloop')}"
    )


def markdown(doc: dict[str, Any]) -> str:
    lines = ["### Riskwatch benchmark", ""]
    note = preliminary(doc)
    if note:
        lines += [note, ""]
    lines += [header(doc), ""]
    lines += [
        "| variant | events/s | CPU s / 1k events | CPU use | peak RSS | broker CPU s / 1k |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    variants = doc.get("variants", {})
    for key in ORDER:
        r = variants.get(key)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| ({key}) {r.get('label')} | failed | | | | |")
            continue
        use_text = "1 core (pinned)" if key == "e" else _pct(r.get("cpu_utilisation"))
        lines.append(
            f"| ({key}) {r.get('label')} | {_num(r.get('events_per_s'))} | "
            f"{_num(r.get('cpu_s_per_1k'), 3)} | {use_text} | {_mib(r.get('peak_rss_bytes'))} | "
            f"{_num(r.get('broker_cpu_s_per_1k'), 3)} |")
    lines.append("")
    ratio_c, ratio_b = doc.get("ratio_vs_naive_faust"), doc.get("ratio_vs_bare_faust")
    if ratio_c or ratio_b:
        lines += [f"Full worker (d) throughput vs naive Faust (c): **{_num(ratio_c, 2)}×**; "
                  f"vs bare Faust (b): **{_num(ratio_b, 2)}×** (CPU per event: (c) / (d) = "
                  f"{_num(doc.get('cpu_efficiency_vs_naive_faust'), 2)}, (b) / (d) = "
                  f"{_num(doc.get('cpu_efficiency_vs_bare_faust'), 2)}); replay (e): "
                  f"**{_num(doc.get('replay_events_per_s'))} events/s** on one core.", ""]
    rows: list[str] = []
    lat = doc.get("latency") or {}
    if lat.get("p50_ms") is not None:
        rows.append(
            f"| event → alert latency at {_num(lat.get('achieved_rate_events_per_s'))} events/s "
            f"(half of saturation; one event in {lat.get('spike_every')} a spike, staggered) | "
            f"p50 **{_num(lat.get('p50_ms'), 1)} ms**, p99 "
            f"**{_num(lat.get('p99_ms'), 1)} ms**, max {_num(lat.get('max_ms'), 1)} ms "
            f"({lat.get('alerts_received')} alerts for {lat.get('spikes_sent')} spikes sent) |")
        inside = lat.get("worker_receive_to_output") or {}
        if inside.get("count"):
            rows.append(
                f"| of which inside the worker (its receive → output histogram) | mean "
                f"{_num(inside.get('mean_ms'), 1)} ms, p50 ≤ {_num(inside.get('p50_at_most_ms'))} "
                f"ms, p99 ≤ {_num(inside.get('p99_at_most_ms'))} ms "
                f"({_num(inside.get('count'))} outputs) |")
    elif lat:
        rows.append(f"| event → alert latency | {lat.get('error', 'no alerts received')} |")
    storm = doc.get("latency_storm") or {}
    if storm.get("p50_ms") is not None:
        rows.append(
            f"| the same, alert storm (every {storm.get('spike_every')}th round all spikes; "
            f"measured after the phase above) | p50 {_num(storm.get('p50_ms'), 1)} ms, p99 "
            f"{_num(storm.get('p99_ms'), 1)} ms, max {_num(storm.get('max_ms'), 1)} ms |")
    elif storm:
        rows.append(f"| alert storm latency | {storm.get('error', 'no alerts received')} |")
    state = doc.get("state") or {}
    if state.get("customers"):
        rows.append(
            f"| table state per customer (changelog, newest value) | mean "
            f"**{_num(state.get('mean_bytes'))} B**, p99 {_num(state.get('p99_bytes'))} B, max "
            f"{_num(state.get('max_bytes'))} B ({_num(state.get('customers'))} customers; mean "
            f"over all {_num(state.get('histogram_writes'))} state writes: "
            f"{_num(state.get('histogram_mean_bytes_per_write'))} B) |")
    rec = doc.get("recovery") or {}
    if rec.get("messages_per_s") is not None:
        rows.append(
            f"| table recovery (restart, empty data dir) | **{_num(rec.get('messages_per_s'))} "
            f"changelog messages/s** ({_num(rec.get('recovered_messages'))} of "
            f"{_num(rec.get('changelog_messages'))} recovered; "
            f"{_num(rec.get('seconds_spawn_to_ready'), 1)} s from start to ready) |")
    elif rec:
        rows.append(f"| table recovery | {rec.get('error', 'nothing recovered')[:200]} |")
    prof = doc.get("profile") or {}
    if prof.get("buckets"):
        top = ", ".join(f"{b['name'].split(':')[0]} {b['percent']}%" for b in prof["buckets"][:5])
        rows.append(f"| worker CPU per event ({prof.get('tool')}) | "
                    f"{_num(prof.get('cpu_us_per_event'))} µs: {top} (see profile.md) |")
    if rows:
        lines += ["| worker (d) | |", "|---|---|", *rows, ""]
    experiments = doc.get("experiments") or {}
    if experiments:
        base_lat = (doc.get("latency") or {})
        lines += [
            "Worker experiments (same input, each its own run; latency at the same paced rate "
            f"as (d), {_num(base_lat.get('achieved_rate_events_per_s'))} events/s):",
            "",
            "| worker | events/s | × (d) | CPU s / 1k events | alert p50 | alert p99 |",
            "|---|---:|---:|---:|---:|---:|",
            f"| (d) as shipped | {_num(variants.get('d', {}).get('events_per_s'))} | 1.00 | "
            f"{_num(variants.get('d', {}).get('cpu_s_per_1k'), 3)} | "
            f"{_num(base_lat.get('p50_ms'))} ms | {_num(base_lat.get('p99_ms'))} ms |",
        ]
        for name, x in experiments.items():
            if "error" in x:
                lines.append(f"| {name}: {x.get('change')} | failed | | | | |")
                continue
            lat = x.get("latency") or {}
            lines.append(
                f"| {name}: {x.get('change')} | {_num(x.get('events_per_s'))} | "
                f"{_num(x.get('throughput_vs_d'), 2)} | {_num(x.get('cpu_s_per_1k'), 3)} | "
                f"{_num(lat.get('p50_ms'))} ms | {_num(lat.get('p99_ms'))} ms |")
        lines.append("")
    lines += [
        "Throughput is at saturation (input pre-produced; first to last event as timed inside "
        "each process); CPU is the process's own (all threads) over that window; the broker "
        "shares the machine, its CPU is listed separately. Each variant runs alone, in its own "
        "process and consumer group, over the same input.",
        "",
    ]
    return "\n".join(lines)


def profile_markdown(doc: dict[str, Any]) -> str:
    prof = doc.get("profile") or {}
    lines = ["### Where the worker's time goes", ""]
    if "error" in prof:
        return "\n".join([*lines, f"Profile failed: {prof['error']}", ""])
    run = prof.get("profiled_run", {})
    lines += [
        f"{prof.get('tool')} over the saturation window of a separate worker run "
        f"({_num(run.get('events'))} events at {_num(run.get('events_per_s'))} events/s while "
        f"profiled, {_num(prof.get('cpu_us_per_event'))} µs CPU per event). "
        f"{prof.get('note', '')}.",
        "",
        "| bucket | share | µs / event |",
        "|---|---:|---:|",
    ]
    for b in prof.get("buckets", []):
        lines.append(f"| {b['name']} | {b['percent']}% | {_num(b.get('us_per_event'), 1)} |")
    if prof.get("engine_parts"):
        lines += ["", "Inside the engine (shares of the whole worker):", "",
                  "| engine part | share | µs / event |", "|---|---:|---:|"]
        lines += [f"| {b['name']} | {b['percent']}% | {_num(b.get('us_per_event'), 1)} |"
                  for b in prof["engine_parts"]]
    if prof.get("threads"):
        lines += ["", "| thread | share |", "|---|---:|"]
        lines += [f"| {t['name']} | {t['percent']}% |" for t in prof["threads"]]
    for title, key in (("Top functions by own time", "top_self"),
                       ("Top functions including callees", "top_inclusive")):
        lines += ["", f"#### {title}", "", "| function | share | µs / event |", "|---|---:|---:|"]
        for row in prof.get(key, []):
            name = str(row["name"]).replace("|", "\\|")
            lines.append(f"| `{name}` | {row['percent']}% | {_num(row.get('us_per_event'), 1)} |")
    lines.append("")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """Throughput and CPU per event by variant; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    variants = doc.get("variants", {})
    keys = [k for k in ORDER if k in variants and variants[k].get("events_per_s")]
    if not keys:
        return False
    names = [f"({k}) {variants[k]['label'].split(':')[0].split('(')[0].strip()}" for k in keys]
    eps = [variants[k]["events_per_s"] for k in keys]
    cpu = [1000.0 * (variants[k].get("cpu_s_per_1k") or 0) for k in keys]
    palette = {"a": "#9e9e9e", "b": "#64b5f6", "c": "#ffb74d", "d": "#e53935", "e": "#43a047",
               "x": "#ef9a9a"}
    if "d" in keys:
        at = keys.index("d") + 1
        for name, x in (doc.get("experiments") or {}).items():
            if not x.get("events_per_s"):
                continue
            keys.insert(at, "x")
            names.insert(at, f"(d) {name}")
            eps.insert(at, x["events_per_s"])
            cpu.insert(at, 1000.0 * (x.get("cpu_s_per_1k") or 0))
            at += 1
    colors = [palette[k] for k in keys]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    bars = ax1.barh(names[::-1], eps[::-1], color=colors[::-1])
    ax1.set_xscale("log")
    ax1.set_xlim(left=100)
    ax1.set_xlabel("events/s at saturation (log scale)")
    for bar, value in zip(bars, eps[::-1], strict=True):
        ax1.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}",
                 va="center", fontsize=9)
    ax1.set_xlim(right=max(eps) * 4)
    bars = ax2.barh(names[::-1], cpu[::-1], color=colors[::-1])
    ax2.set_xlabel("CPU µs per event (process, all threads)")
    for bar, value in zip(bars, cpu[::-1], strict=True):
        ax2.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}",
                 va="center", fontsize=9)
    ax2.set_xlim(right=max(cpu) * 1.25 if cpu else 1)
    ax2.set_yticklabels([])
    m = doc.get("machine", {})
    cfg = doc.get("config", {})
    title = (f"Riskwatch throughput: {cfg.get('events', 0):,} events, {m.get('nproc')} CPUs, "
             f"load {(m.get('loadavg_start') or [0])[0]:.1f} → "
             f"{(m.get('loadavg_end') or [0])[0]:.1f}, {doc.get('generated_at', '')}")
    if preliminary(doc):
        title += " (preliminary)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def scaling_markdown(doc: dict[str, Any]) -> str:
    lines = ["### Replay scaling (one core)", ""]
    note = preliminary(doc)
    if note:
        lines += [note, ""]
    m = doc.get("machine", {})
    lines += [
        f"`{doc.get('command', '').strip()}` · {doc.get('generated_at', '')} · compact synthetic "
        f"input (a profile per customer, then card transactions of "
        f"~{_num(doc.get('record_bytes'))} B) · {m.get('nproc')} CPUs, load average "
        f"{(m.get('loadavg_start') or [0])[0]:.1f} · Python {m.get('python')}",
        "",
        "| customers | events / customer | events | events/s | CPU µs / event | "
        "events / CPU s | state B / customer (mean, max) | state total | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in doc.get("points", []):
        if "error" in p:
            lines.append(f"| {_num(p['customers'])} | {p['per_customer']} | failed | | | | | | |")
            continue
        st = p.get("state", {})
        cpu_us = 1000 * (p.get("cpu_s_per_1k") or 0)
        lines.append(
            f"| {_num(p['customers'])} | {p['per_customer']} | {_num(p.get('events'))} | "
            f"{_num(p.get('events_per_s'))} | {_num(cpu_us, 1)} | "
            f"{_num(1e6 / cpu_us if cpu_us else None)} | "
            f"{_num(st.get('mean_bytes'))}, {_num(st.get('max_bytes'))} | "
            f"{_mib(st.get('total_bytes'))} | {_mib(p.get('peak_rss_bytes'))} |")
    lines += ["", "Events/s is replay's own timer (read JSONL, decode, engine, write outputs); "
              "events / CPU s is the same work per second of the process's CPU time, the figure "
              "to trust on a shared machine; the share of events that are profiles falls from "
              "1/2 to 1/50 down the events-per-customer rows, so CPU per event rises with the "
              "transaction share. State is each customer's final engine state (msgpack bytes); "
              "peak RSS is the replay process's VmHWM, which also holds Python's dict of "
              "states.", ""]
    return "\n".join(lines)


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = [p for p in doc.get("points", []) if "error" not in p]
    if not points:
        return False

    def series(ps: list[dict[str, Any]], key: str) -> list[float]:
        out = []
        for p in ps:
            if key == "cpu_us":
                out.append(1000.0 * (p.get("cpu_s_per_1k") or 0))
            elif key in ("mean_bytes", "total_bytes"):
                out.append(p["state"][key] / (2**20 if key == "total_bytes" else 1))
            elif key == "rss":
                out.append((p.get("peak_rss_bytes") or 0) / 2**20)
            else:
                out.append(p.get(key) or 0)
        return out

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    panels = (
        ("customers", "per_customer", "customers ({} events each)",
         ("events_per_s", "events/s", "o-", "C0"), (("total_bytes", "state total MiB", "s--", "C1"),
                                                    ("rss", "peak RSS MiB", "^:", "C2"))),
        ("per_customer", "customers", "events per customer ({:,} customers)",
         ("events_per_s", "events/s", "o-", "C0"), (("mean_bytes", "state B / customer", "s--",
                                                     "C1"), ("cpu_us", "CPU µs / event", "^:",
                                                             "C3"))),
    )
    for ax, (xkey, fixed, xlabel, left, rights) in zip(axes, panels, strict=True):
        groups: dict[int, list[dict[str, Any]]] = {}
        for p in points:
            groups.setdefault(p[fixed], []).append(p)
        fixed_value, ps = max(groups.items(), key=lambda kv: len(kv[1]))
        ps.sort(key=lambda p: p[xkey])
        if len(ps) < 2:
            ax.set_visible(False)
            continue
        xs = [p[xkey] for p in ps]
        handles = ax.plot(xs, series(ps, left[0]), left[2], color=left[3], label=left[1])
        ax.set_ylabel(left[1])
        ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel.format(fixed_value))
        twin = ax.twinx()
        for key, label, style, color in rights:
            handles += twin.plot(xs, series(ps, key), style, color=color, label=label)
        twin.set_ylim(bottom=0)
        ax.legend(handles=handles, loc="center left", fontsize=8)
    fig.suptitle(f"Replay scaling, one core ({doc.get('generated_at', '')})"
                 + (" (preliminary)" if preliminary(doc) else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
