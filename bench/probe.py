"""Process measurement without psutil: ``/proc`` readers and the in-process probe.

Each benchmarked process (raw consumer, Faust apps, the worker, replay) carries a
:class:`Probe` that counts handled events and, at the first and the last one,
records wall time (``time.time()``, comparable across processes) and the
process's CPU time (all threads). The report is a JSON file rewritten
atomically, which the harness polls.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    # The command name may contain spaces: fields start after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_cpu_seconds() -> dict[str, float]:
    """utime + stime of each Python thread of this process, by thread name (the
    aiokafka consumer runs in a thread of its own under Faust)."""
    import threading

    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as handle:
                data = handle.read()
        except (OSError, TypeError):
            continue
        fields = data[data.rindex(b")") + 2:].split()
        out[thread.name] = out.get(thread.name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def mem_status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process in bytes (0 when unknown)."""
    out = {"peak_rss_bytes": 0, "rss_bytes": 0}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    out["peak_rss_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    out["rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (readers never see half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return {}


class Probe:
    """Counts events; reports the window from the first to the ``expect``-th event."""

    def __init__(self, expect: int, report: Path | None, **info: Any) -> None:
        self.expect = expect
        self.report = report
        self.count = 0
        self.doc: dict[str, Any] = {"pid": os.getpid(), "t_start": time.time(), "expect": expect,
                                    **info}
        self.done = False
        self.on_first: Any = None
        self.on_done: Any = None
        self.flush()

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.count == n:
            self.doc["t_first"] = time.time()
            self.doc["cpu_first"] = time.process_time()
            self.doc["thread_cpu_first"] = thread_cpu_seconds()
            if self.on_first is not None:
                self.on_first()
            self.flush()
        if not self.done and self.count >= self.expect:
            self.finish()

    def finish(self) -> None:
        self.done = True
        self.doc["t_last"] = time.time()
        self.doc["cpu_last"] = time.process_time()
        self.doc["thread_cpu_last"] = thread_cpu_seconds()
        self.doc["count"] = self.count
        self.doc["done"] = True
        self.doc.update(mem_status())
        if self.on_done is not None:
            self.on_done()
        self.flush()

    def update(self, **values: Any) -> None:
        self.doc.update(values)
        self.flush()

    def flush(self) -> None:
        if self.report is not None:
            write_json(self.report, self.doc)


def window(doc: dict[str, Any]) -> dict[str, Any]:
    """Throughput and CPU of a finished probe report (first to last event)."""
    count = int(doc.get("count", 0))
    seconds = float(doc["t_last"]) - float(doc["t_first"])
    cpu = float(doc["cpu_last"]) - float(doc["cpu_first"])
    events = max(1, count - 1)  # the first event's own work is before t_first
    first, last = doc.get("thread_cpu_first") or {}, doc.get("thread_cpu_last") or {}
    threads = {name: round((last[name] - first.get(name, 0.0)) / events * 1000, 5)
               for name in sorted(last)}
    return {
        "events": count,
        "seconds": round(seconds, 4),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(cpu, 4),
        "cpu_s_per_1k": round(cpu / events * 1000, 5),
        "cpu_utilisation": round(cpu / seconds, 3) if seconds > 0 else None,
        "cpu_s_per_1k_by_thread": threads,
    }
