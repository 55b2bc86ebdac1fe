"""Where the worker's per-event time goes: py-spy (or cProfile) over the saturation window.

py-spy samples every thread of the worker (Faust runs the aiokafka consumer in a
thread of its own) from outside the process, from the first to the N-th event.
Each sample is charged to one *bucket*: logging wherever it is called from, then
the handler's calls (decode, engine, state, output send, metrics; :data:`HANDLER`)
wherever they occur in the stack, then the component (:data:`COMPONENTS`: producer,
network, consumer, Faust agent loop, mode) of the innermost non-stdlib frame; the
shares are turned into microseconds of CPU per event using the profiled run's
CPU time per event.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")

#: Work of the worker's own code, by call: (bucket, file substring, function names or None).
#: The first rule matching any frame of a sample's stack wins; a function name matches the
#: frame's name or its last dotted part. The names follow ``streams/app.py`` (the
#: ``Handler``, its state store and ``send``); renamed functions fall to "handler other".
HANDLER: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("bench probe (reads riskwatch_events_total every 5 ms)", "bench/faust_apps.py",
     ("count_events", "events_total", "report_ready", "counted")),
    ("decode: schemas.codec.decode", "schemas/codec.py", ("decode",)),
    ("engine: alerts.engine.Engine.process", "alerts/engine.py", ("process",)),
    ("engine sweeps: Handler.sweep / Engine.advance", "streams/app.py", ("sweep",)),
    ("dead letters: alerts.deadletter", "alerts/deadletter.py", None),
    ("state flush: changelog sends + acks (Handler/StateStore.flush)", "streams/app.py",
     ("flush",)),
    ("state write: table put / __setitem__", "streams/app.py", ("put", "__setitem__")),
    ("state read: table get", "streams/app.py", ("get",)),
    ("output send: app.send (to_message + topic.send)", "streams/app.py", ("send",)),
    ("metrics: prometheus_client in the handler", "prometheus_client/", None),
    ("handler other: receive / hold in event-time order / release / apply themselves",
     "streams/app.py", ("handle", "receive", "release", "release_all", "apply", "tick",
                        "_dead_letter")),
)
#: Debug logging switched on by Faust's terminal spinner (root logger at DEBUG): every
#: ``log.debug()`` builds a record and runs the loggers' filters, whoever calls it.
LOGGING = ("logging: debug() records built, formatted and filtered (root logger at DEBUG), "
           "from any caller")
#: Everything else, by the component of the innermost frame outside the stdlib.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("producer: faust buffer + aiokafka sender/accumulator", "aiokafka/producer/"),
    ("producer: faust buffer + aiokafka sender/accumulator", "faust/transport/producer.py"),
    ("producer: faust buffer + aiokafka sender/accumulator", "faust/topics.py"),
    ("network: aiokafka connection/client", "aiokafka/conn.py"),
    ("network: aiokafka connection/client", "aiokafka/client.py"),
    ("network: aiokafka connection/client", "aiokafka/protocol/"),
    ("consumer: fetch, records to events, commit", "aiokafka/"),
    ("consumer: fetch, records to events, commit", "faust/transport/"),
    # The worker's own fetch loop (streams.tuning.fetch_loop replaces Faust's).
    ("consumer: fetch, records to events, commit", "streams/tuning.py"),
    ("table plumbing outside the handler", "faust/tables/"),
    ("agent loop: faust stream/agent/event/acks", "faust/"),
    ("metrics scrape / web", "prometheus_client/"),
    ("metrics scrape / web", "aiohttp/"),
    ("riskwatch code outside the handler", "streams/"),
)
MODE = "mode services (timers, supervisors)"
THREAD_LOOP = "consumer thread: its event loop (uvloop C code: sockets, callbacks)"
#: Frames every stack starts with: never the component a sample is charged to.
_ROOTS = ("mode/worker.py", "mode/threads.py", "<frozen runpy>", "bench/faust_apps.py",
          "threading.py")
#: Functions that only start the loop (``streams.app.run_worker`` holds the whole run).
_ROOT_FUNCTIONS = frozenset({"run_worker", "main", "<module>", "run_riskwatch"})
OTHER = "main event loop: uvloop C code and asyncio (sockets, callbacks, futures)"


def pyspy_usable() -> bool:
    return shutil.which("py-spy") is not None


def start_pyspy(pid: int, out: Path, log: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` (every thread, by function) until :func:`stop_pyspy`."""
    exe = shutil.which("py-spy") or "py-spy"
    with log.open("wb") as handle:
        return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate),
                                 "--format", "raw", "--threads", "--function",
                                 "--output", str(out)], stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def stop_pyspy(proc: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output on SIGINT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _short(path: str) -> str:
    path = path.replace(os.sep, "/")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse_frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), ""
    return m.group("func"), _short(m.group("file"))


def _matches(frame: tuple[str, str], file_part: str, funcs: tuple[str, ...] | None) -> bool:
    f_func, f_file = frame
    if file_part not in f_file:
        return False
    return funcs is None or any(f_func == f or f_func.endswith("." + f) for f in funcs)


def _bucket(frames: list[tuple[str, str]], thread: str = "MainThread") -> str:
    # Logging first, wherever it is called from: a cost the worker can switch off.
    if any("logging/" in f[1] for f in frames):
        return LOGGING
    for name, file_part, funcs in HANDLER:
        if any(_matches(f, file_part, funcs) for f in frames):
            return name
    mode_seen = False
    for frame in reversed(frames):
        if any(root in frame[1] for root in _ROOTS) or frame[0] in _ROOT_FUNCTIONS:
            continue
        if "mode/" in frame[1]:  # generic plumbing: charge the component that uses it
            mode_seen = True
            continue
        for name, file_part in COMPONENTS:
            if file_part in frame[1]:
                return name
    if mode_seen:
        return MODE
    if thread and thread != "MainThread":
        return THREAD_LOOP
    return OTHER


def _engine_part(frames: list[tuple[str, str]]) -> str:
    """Which part of ``Engine.process`` a sample is in (the first telling callee)."""
    start = next((i for i, f in enumerate(frames)
                  if _matches(f, "alerts/engine.py", ("process", "advance"))), None)
    if start is None:
        return "other engine entry points"
    for func, file in frames[start + 1:]:
        if file.startswith("detectors/"):
            return file
        if "river/" in file:
            return "river (models called by the engine)"
        if func.endswith(("decode_state", "encode_state")):
            return "alerts/engine.py state msgpack decode/encode"
        if file.startswith("alerts/") and file != "alerts/engine.py":
            return file
        if "uuid" in file or func.endswith(("_alert", "output_id")):
            return "alerts/engine.py building outputs (ids, models)"
    return "alerts/engine.py Engine.process itself"


def _pct(part: float, total: float) -> float:
    return round(100.0 * part / total, 1) if total else 0.0


def summarise_pyspy(path: Path, run: dict[str, Any], top: int = 25) -> dict[str, Any]:
    """Buckets, top self and inclusive functions, per thread, in % and µs per event."""
    buckets: Counter[str] = Counter()
    engine: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = parts[0].split(":", 1)[-1].strip() if parts[0].startswith("thread ") else ""
        frames = [parse_frame(p) for p in (parts[1:] if thread else parts)]
        frames = [f for f in frames if f[1] or f[0]]
        if not frames:
            continue
        total += count
        threads[thread or "?"] += count
        bucket = _bucket(frames, thread)
        buckets[bucket] += count
        if bucket.startswith("engine"):
            engine[_engine_part(frames)] += count
        func, file = frames[-1]
        selfs[f"{func} ({file})"] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames}:
            inclusive[name] += count
    us_per_event = float(run.get("cpu_s_per_1k") or 0.0) * 1000.0  # ms/1k == µs/event

    def rows(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"name": k, "samples": v, "percent": _pct(v, total),
                 "us_per_event": round(us_per_event * v / total, 2) if total else None}
                for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "cpu_us_per_event": round(us_per_event, 1),
        "buckets": rows(buckets, len(buckets)),
        "engine_parts": rows(engine, len(engine)),
        "threads": rows(threads, len(threads)),
        "top_self": rows(selfs, top),
        "top_inclusive": rows(inclusive, top),
        "note": "shares of non-idle samples of all threads; µs/event = share × the profiled "
                "run's CPU time per event",
    }


def summarise_cprofile(path: Path, run: dict[str, Any], top: int = 25) -> dict[str, Any]:
    """The cProfile fallback (main thread only: Faust's consumer thread is not seen).

    The handler's parts are cumulative times of its callees; everything else is
    "outside the handler" (Faust agent loop, producer, event loop in the main thread).
    """
    import pstats

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    events = max(1, int(run.get("events", 1)) - 1)
    total = sum(v[2] for v in raw.values()) or 1.0

    def name(key: Any) -> str:
        file, line, func = key
        return f"{func} ({_short(file)}:{line})"

    def cum(file_part: str, funcs: tuple[str, ...]) -> float:
        return sum(v[3] for (file, _, fn), v in raw.items()
                   if file_part in _short(file) and fn in funcs)

    handle = cum("streams/app.py", ("handle",))
    parts = [(label, cum(file_part, funcs)) for label, file_part, funcs in HANDLER
             if funcs and not label.startswith(("handler other", "bench", "state flush",
                                                "engine sweeps"))]
    metrics = sum(v[2] for (file, _, _), v in raw.items() if "prometheus_client/" in file)
    parts.append(("metrics: prometheus_client (self time, nearly all in the handler)", metrics))
    rows = [*parts,
            ("handler other: Handler.handle itself", max(0.0, handle - sum(t for _, t in parts))),
            ("outside the handler: Faust agent loop, producer, event loop (main thread)",
             max(0.0, total - handle))]

    def row(label: str, seconds: float) -> dict[str, Any]:
        return {"name": label, "percent": _pct(seconds, total),
                "us_per_event": round(seconds / events * 1e6, 2)}

    by_self = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
    return {
        "samples": None,
        "cpu_us_per_event": round(float(run.get("cpu_s_per_1k") or 0.0) * 1000.0, 1),
        "buckets": sorted((row(k, v) for k, v in rows), key=lambda r: -r["percent"]),
        "top_self": [row(name(k), v[2]) for k, v in by_self],
        "top_inclusive": [row(name(k), v[3]) for k, v in by_cum],
        "note": "cProfile of the main thread only (deterministic; its own overhead inflates "
                "small functions, and Faust's consumer thread is not seen); µs/event is "
                "profiled time, not CPU",
    }


if __name__ == "__main__":  # python -m bench.profile RAW_FILE: print a summary
    with contextlib.suppress(BrokenPipeError):
        import orjson

        doc = summarise_pyspy(Path(sys.argv[1]), {"cpu_s_per_1k": 0})
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
