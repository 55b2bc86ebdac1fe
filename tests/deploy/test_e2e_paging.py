"""End to end paging: worker -> Prometheus -> Alertmanager -> receiver, all real.

A ``riskwatch worker`` (own app id) runs on the session broker; the Debian
``prometheus`` scrapes it with the real rule files from deploy/prometheus/rules/
and sends alerts to the Debian ``prometheus-alertmanager``, whose config is the
real deploy/prometheus/alertmanager.yml (same routing tree, grouping and
inhibition) with only the receiver endpoints pointed at an HTTP server run by
this test and short group timings. A policy with crisis mode on is published
with the ``riskwatch policy publish`` CLI; the test then follows the
``RiskwatchCrisisModeOn`` alert through Prometheus's API to the notification.

Everything listens on 127.0.0.1 only. The policy topic is shared by every
worker of the session, so the policy in force before the test is published
again at the end (in a ``finally``), which switches crisis mode off.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.policy import DEFAULT_POLICY, load_policy, policy_document
from streams.broker import EmbeddedBroker, free_port
from streams.control import current_policy, read_policy_history
from tests.conftest import WorkerProc, launch_worker

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROM_DIR / "rules"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        None in (PROMETHEUS, PROMTOOL, AMTOOL, ALERTMANAGER),
        reason="prometheus/promtool/alertmanager/amtool not installed "
        "(apt-get install prometheus prometheus-alertmanager; scripts/setup.sh does)",
    ),
]

ALERT = "RiskwatchCrisisModeOn"
#: What the on-call contract (deploy/README.md) says this alert carries.
EXPECTED_LABELS = {
    "alertname": ALERT,
    "severity": "info",
    "team": "credit-risk",
    "job": "riskwatch",
}
EXPECTED_RUNBOOK = f"https://github.com/riskwatch/riskwatch/blob/main/deploy/runbooks/{ALERT}.md"
EXPECTED_RECEIVER = "webhook-info"  # severity=info never pages
#: The test's only change to the alert rule: its ``for:`` (1m in the real file).
SHORT_FOR = "2s"


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _get_json(url: str) -> Any:
    return json.loads(_get(url))


def _ok(url: str) -> bool:
    try:
        return _get(url) is not None
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the webhook receiver ---------------------------------------------------


class Sink:
    """An HTTP server on 127.0.0.1 that records every POSTed JSON body by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink.lock:
                    sink.received.append((self.path, json.loads(body or b"null")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def snapshot(self) -> list[tuple[str, Any]]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()


# --- the worker -------------------------------------------------------------


@pytest.fixture(scope="module")
def paging_worker(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProc]:
    w = launch_worker(
        broker, tmp_path_factory.mktemp("e2e-paging"), "--app-id", "riskwatch-e2e-paging"
    )
    try:
        yield w
    finally:
        w.stop()


def _scrape(worker: WorkerProc) -> str:
    return _get(f"http://{worker.metrics_addr}/metrics").decode()


def _worker_gauge(worker: WorkerProc, name: str) -> float | None:
    for line in _scrape(worker).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_worker_metrics_pass_promtool_check(paging_worker: WorkerProc) -> None:
    exposition = _get(f"http://{paging_worker.metrics_addr}/metrics")
    assert b"riskwatch_crisis_mode" in exposition
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


# --- Alertmanager -------------------------------------------------------------


def _shorten_timings(route: dict[str, Any], root: bool = False) -> None:
    for key in ("group_wait", "group_interval"):
        if root or key in route:
            route[key] = "1s"
    for child in route.get("routes", []):
        _shorten_timings(child)


def alertmanager_config(sink_url: str, tmp: Path) -> dict[str, Any]:
    """deploy/prometheus/alertmanager.yml with local receiver endpoints and 1 s grouping.

    The routing tree, matchers, group_by, repeat intervals, inhibit rules and the
    receivers' names and templates are the real ones; webhook URLs keep their path
    on the test's server, PagerDuty configs keep their templates and get the test's
    server as Events API ``url`` and a dummy key file.
    """
    cfg = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text(encoding="utf-8"))
    _shorten_timings(cfg["route"], root=True)
    key_file = tmp / "pagerduty-key"
    key_file.write_text("e2e-dummy-routing-key\n", encoding="utf-8")
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = sink_url + urllib.parse.urlsplit(hook["url"]).path
        for pd in receiver.get("pagerduty_configs", []):
            pd["url"] = f"{sink_url}/pagerduty/{receiver['name']}"
            pd["routing_key_file"] = str(key_file)
    return cfg


@pytest.fixture
def alertmanager(sink: Sink, tmp_path: Path) -> Iterator[str]:
    assert ALERTMANAGER is not None and AMTOOL is not None
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        yaml.safe_dump(alertmanager_config(sink.url, tmp_path), sort_keys=False), encoding="utf-8"
    )
    check = subprocess.run(
        [AMTOOL, "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    addr = f"127.0.0.1:{free_port()}"
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--web.listen-address={addr}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.external-url=http://{addr}/",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait(
            lambda: proc.poll() is not None or _ok(f"http://{addr}/-/ready"),
            20,
            "alertmanager ready",
        )
        assert proc.poll() is None, log.read_text()
        yield addr
    finally:
        _stop(proc)


# --- Prometheus ---------------------------------------------------------------


def alert_rules_copy(tmp: Path) -> Path:
    """deploy/prometheus/rules/alerts.yml with only ``for:`` of the alert under test shortened.

    The real ``for: 1m`` would make the test wait a minute; labels, annotations and
    expr stay identical (checked below).
    """
    real = yaml.safe_load((RULES_DIR / "alerts.yml").read_text(encoding="utf-8"))
    copy = yaml.safe_load((RULES_DIR / "alerts.yml").read_text(encoding="utf-8"))
    rules = [r for g in copy["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    assert len(rules) == 1, f"exactly one {ALERT} rule expected"
    original_for = rules[0]["for"]
    rules[0]["for"] = SHORT_FOR
    path = tmp / "alerts.yml"
    path.write_text(yaml.safe_dump(copy, sort_keys=False), encoding="utf-8")
    reread = yaml.safe_load(path.read_text(encoding="utf-8"))
    for rule in (r for g in reread["groups"] for r in g["rules"] if r.get("alert") == ALERT):
        rule["for"] = original_for
    assert reread == real, "the rule copy may differ from the real file only in one for:"
    return path


def prometheus_config(worker_addr: str, am_addr: str, alert_rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml for one local worker, evaluating every second."""
    real = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in real["scrape_configs"] if j["job_name"] == "riskwatch")
    return {
        "global": {
            **real["global"],
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "rule_files": [str(RULES_DIR / "recording.yml"), str(alert_rules)],
        "alerting": {
            "alertmanagers": [{"scheme": "http", "static_configs": [{"targets": [am_addr]}]}]
        },
        "scrape_configs": [
            {
                "job_name": job["job_name"],
                "metrics_path": job["metrics_path"],
                "scheme": job["scheme"],
                "static_configs": [{"targets": [worker_addr]}],
            }
        ],
    }


@pytest.fixture
def prometheus(paging_worker: WorkerProc, alertmanager: str, tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None and PROMTOOL is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            prometheus_config(paging_worker.metrics_addr, alertmanager, alert_rules_copy(tmp_path))
        ),
        encoding="utf-8",
    )
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    addr = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--web.listen-address={addr}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.external-url=http://{addr}/",
                "--log.level=warn",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait(
            lambda: proc.poll() is not None or _ok(f"http://{addr}/-/ready"), 20, "prometheus ready"
        )
        assert proc.poll() is None, log.read_text()
        yield addr
    finally:
        _stop(proc)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    body = _get_json(f"http://{prom}/api/v1/query?{q}")
    assert body["status"] == "success", body
    return body["data"]["result"]


def _prom_alerts(prom: str, state: str | None = None) -> list[dict[str, Any]]:
    body = _get_json(f"http://{prom}/api/v1/alerts")
    assert body["status"] == "success", body
    return [
        a
        for a in body["data"]["alerts"]
        if a["labels"].get("alertname") == ALERT and state in (None, a["state"])
    ]


# --- the policy CLI -----------------------------------------------------------


def _publish(broker: EmbeddedBroker, policy_file: Path, why: str, timeout: float = 30) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "policy",
            "publish",
            str(policy_file),
            "--actor",
            "sre-e2e-paging-test",
            "--why",
            why,
            "--broker",
            broker.url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _policy_in_force(broker: EmbeddedBroker) -> dict[str, Any]:
    """The newest published policy document (the default one if none was published)."""
    record = current_policy(asyncio.run(read_policy_history(broker.bootstrap)))
    return dict(record.document) if record else policy_document(DEFAULT_POLICY)


# --- the test -------------------------------------------------------------------


def test_crisis_mode_pages_through_prometheus_and_alertmanager(
    broker: EmbeddedBroker,
    paging_worker: WorkerProc,
    prometheus: str,
    sink: Sink,
    tmp_path: Path,
) -> None:
    # Every wait below is capped by one deadline, so even a failing run stays bounded
    # (the happy path takes about 20 s once the fixtures are up).
    end = time.monotonic() + 70

    def left(timeout: float) -> float:
        return max(1.0, min(timeout, end - time.monotonic()))

    # Precondition: the target is scraped and crisis mode is off.
    up = _wait(lambda: _query(prometheus, 'up{job="riskwatch"} == 1'), left(15), "worker scraped")
    assert up[0]["metric"]["instance"] == paging_worker.metrics_addr
    assert _worker_gauge(paging_worker, "riskwatch_crisis_mode") == 0
    assert not _prom_alerts(prometheus)

    # What to publish at the end: the policy in force now, again (same version and
    # content, newer publication time), so every worker of the session goes back to it.
    before = _policy_in_force(broker)
    assert not before.get("crisis", {}).get("active"), "crisis mode already on before the test"
    restore = tmp_path / "restore.yaml"
    restore.write_text(yaml.safe_dump(before, sort_keys=False), encoding="utf-8")
    assert policy_document(load_policy(restore)) == before
    version = f"e2e-crisis-{time.time_ns()}"
    crisis = tmp_path / "crisis.yaml"
    crisis.write_text(f"version: {version}\ncrisis:\n  active: true\n", encoding="utf-8")

    restored = False
    try:
        _publish(broker, crisis, "e2e paging test: crisis mode must page credit-risk", left(30))

        # The worker applies it live...
        _wait(
            lambda: _worker_gauge(paging_worker, "riskwatch_crisis_mode") == 1,
            left(30),
            "riskwatch_crisis_mode 1 on the worker",
        )
        _wait(
            lambda: _query(prometheus, f'riskwatch_policy_info{{version="{version}"}}'),
            left(10),
            "the new policy version in Prometheus",
        )

        # ... Prometheus fires the real rule (after the shortened for:) ...
        firing = _wait(
            lambda: _prom_alerts(prometheus, "firing"), left(20), f"{ALERT} firing in Prometheus"
        )
        assert len(firing) == 1
        alert = firing[0]
        assert alert["labels"] == EXPECTED_LABELS
        assert alert["annotations"]["summary"] == "Riskwatch crisis mode is on"
        assert alert["annotations"]["runbook_url"] == EXPECTED_RUNBOOK
        assert (ROOT / "deploy" / "runbooks" / f"{ALERT}.md").is_file()
        assert float(alert["value"]) == 1

        # ... and Alertmanager routes it to the webhook-info receiver (never a page).
        def notifications() -> list[tuple[str, Any]]:
            return [
                (path, body)
                for path, body in sink.snapshot()
                if any(
                    a["labels"].get("alertname") == ALERT for a in (body or {}).get("alerts", [])
                )
            ]

        received = _wait(notifications, left(20), f"{ALERT} notification at the receiver")
        path, body = received[0]
        assert path == "/alerts/info"
        assert body["receiver"] == EXPECTED_RECEIVER
        assert body["status"] == "firing"
        assert body["groupLabels"] == {
            "alertname": ALERT,
            "job": "riskwatch",
            "team": "credit-risk",
        }
        (notified,) = body["alerts"]
        assert notified["status"] == "firing"
        assert EXPECTED_LABELS.items() <= notified["labels"].items()
        assert notified["annotations"] == alert["annotations"]
        assert not any(p.startswith("/pagerduty/") for p, _ in sink.snapshot())

        _publish(broker, restore, "e2e paging test: back to the policy in force", left(30))
        restored = True
        _wait(
            lambda: _worker_gauge(paging_worker, "riskwatch_crisis_mode") == 0,
            left(30),
            "riskwatch_crisis_mode 0 on the worker",
        )
        _wait(lambda: not _prom_alerts(prometheus), left(15), f"{ALERT} gone from Prometheus")
    finally:
        if not restored:
            _publish(broker, restore, "e2e paging test cleanup: crisis mode off")
