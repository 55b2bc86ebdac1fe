"""Alertmanager config: amtool checks, routing tests and inhibition.

Needs ``amtool`` (Debian/Ubuntu: ``apt-get install prometheus-alertmanager``);
the amtool tests are skipped, with that reason, only when it is absent. The
inhibition test starts the real Alertmanager on 127.0.0.1 (no notification
leaves the machine: every receiver is rewritten to a closed local port) and
is skipped only when the binary is absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "alertmanager.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "rules" / "alerts.yml"

AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool not installed (apt-get install prometheus-alertmanager); CI installs it",
)
needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="alertmanager not installed (apt-get install prometheus-alertmanager)",
)

#: Which receiver (severity, team) must reach.
EXPECTED_RECEIVER = {
    ("critical", "riskwatch-oncall"): "pagerduty-riskwatch-oncall",
    ("warning", "riskwatch-oncall"): "webhook-riskwatch-oncall",
    ("info", "riskwatch-oncall"): "webhook-info",
    ("critical", "credit-risk"): "pagerduty-credit-risk",
    ("warning", "credit-risk"): "webhook-credit-risk",
    ("info", "credit-risk"): "webhook-info",
}


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def _alert_rules() -> list[dict]:
    spec = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run(
        [AMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


def _route(labels: dict[str, str], expected: str) -> subprocess.CompletedProcess[str]:
    return _amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={expected}",
        *(f"{k}={v}" for k, v in sorted(labels.items())),
    )


@needs_amtool
def test_amtool_check_config() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


ROUTING_CASES = [
    (
        {
            "alertname": "RiskwatchWorkerDown",
            "severity": "critical",
            "team": "riskwatch-oncall",
            "job": "riskwatch",
            "instance": "worker-0:9464",
        },
        "pagerduty-riskwatch-oncall",
    ),
    (
        {
            "alertname": "RiskwatchConsumerLagGrowing",
            "severity": "warning",
            "team": "riskwatch-oncall",
        },
        "webhook-riskwatch-oncall",
    ),
    (
        {
            "alertname": "RiskwatchLatencySLOBurn",
            "severity": "critical",
            "team": "riskwatch-oncall",
            "slo": "receive-to-output-latency",
        },
        "pagerduty-riskwatch-oncall",
    ),
    (
        {
            "alertname": "RiskwatchLatencySLOBurn",
            "severity": "warning",
            "team": "riskwatch-oncall",
            "slo": "receive-to-output-latency",
        },
        "webhook-riskwatch-oncall",
    ),
    (
        {
            "alertname": "RiskwatchPortfolioOverdueAboveWarning",
            "severity": "warning",
            "team": "credit-risk",
            "product": "card",
            "sector": "retail",
        },
        "webhook-credit-risk",
    ),
    (
        {"alertname": "SomeFutureBusinessPage", "severity": "critical", "team": "credit-risk"},
        "pagerduty-credit-risk",
    ),
    (
        {"alertname": "RiskwatchCrisisModeOn", "severity": "info", "team": "credit-risk"},
        "webhook-info",
    ),
    # No team, or an unknown one: the SRE rota's ticket queue, never silence.
    ({"alertname": "Watchdog", "severity": "warning"}, "webhook-riskwatch-oncall"),
    (
        {"alertname": "Other", "severity": "critical", "team": "someone-else"},
        "webhook-riskwatch-oncall",
    ),
]


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    ROUTING_CASES,
    ids=[f"{c[0]['alertname']}-{c[0]['severity']}" for c in ROUTING_CASES],
)
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    result = _route(labels, receiver)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
def test_every_alert_rule_routes_by_severity_and_team() -> None:
    for rule in _alert_rules():
        labels = {"alertname": rule["alert"], **rule["labels"]}
        expected = EXPECTED_RECEIVER[(labels["severity"], labels["team"])]
        result = _route(labels, expected)
        assert result.returncode == 0, (rule["alert"], result.stdout + result.stderr)


# --- static checks ---------------------------------------------------------


def test_receivers_exist_and_are_used() -> None:
    cfg = _config()
    names = {r["name"] for r in cfg["receivers"]}
    assert set(EXPECTED_RECEIVER.values()) <= names

    def used(route: dict) -> set[str]:
        found = {route["receiver"]} if "receiver" in route else set()
        for child in route.get("routes", []):
            found |= used(child)
        return found

    assert used(cfg["route"]) == names


def test_pagerduty_keys_come_from_files() -> None:
    pagerduty = [pd for r in _config()["receivers"] for pd in r.get("pagerduty_configs", [])]
    assert pagerduty
    for pd in pagerduty:
        assert pd["routing_key_file"].startswith("/etc/alertmanager/secrets/")
        assert "routing_key" not in pd and "service_key" not in pd
    webhooks = [w for r in _config()["receivers"] for w in r.get("webhook_configs", [])]
    assert webhooks


def test_grouping() -> None:
    route = _config()["route"]
    assert {"alertname", "team"} <= set(route["group_by"])
    assert "instance" not in route["group_by"]  # several workers down: one notification


def test_worker_down_inhibits_lag_and_no_events_for_the_same_instance() -> None:
    alert_names = {r["alert"] for r in _alert_rules()}
    rules = _config()["inhibit_rules"]
    worker_down = [r for r in rules if r["source_matchers"] == ['alertname="RiskwatchWorkerDown"']]
    assert len(worker_down) == 1
    rule = worker_down[0]
    assert {"job", "instance"} <= set(rule["equal"])
    (target,) = rule["target_matchers"]
    assert target.startswith('alertname=~"') and target.endswith('"')
    targets = set(target.removeprefix('alertname=~"').removesuffix('"').split("|"))
    assert {"RiskwatchConsumerLagGrowing", "RiskwatchNoEvents"} <= targets
    # Every name referenced by an inhibit rule is a real alert.
    for r in rules:
        for matcher in r["source_matchers"] + r["target_matchers"]:
            if matcher.startswith("alertname"):
                value = matcher.split("=", 1)[1].lstrip("~").strip('"')
                assert set(value.split("|")) <= alert_names, matcher


# --- inhibition against the real Alertmanager -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_config(tmp: Path) -> Path:
    """The real config with every receiver pointed at a closed local port."""
    cfg = _config()
    sink = f"http://127.0.0.1:{_free_port()}/"
    cfg["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": sink}]} for r in cfg["receivers"]
    ]
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    assert ALERTMANAGER is not None
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={_local_config(tmp_path)}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager did not start: {proc.stderr.read()!r}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC).isoformat()
    body = json.dumps([{"labels": a, "startsAt": now} for a in alerts]).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _inhibited(url: str) -> dict[tuple[str, str, str], bool]:
    """(alertname, instance, severity) -> whether the alert is inhibited."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts = json.load(response)
    return {
        (a["labels"]["alertname"], a["labels"].get("instance", ""), a["labels"]["severity"]): bool(
            a["status"]["inhibitedBy"]
        )
        for a in alerts
    }


@needs_alertmanager
def test_inhibition_in_a_running_alertmanager(alertmanager: str) -> None:
    pipeline = {"job": "riskwatch", "team": "riskwatch-oncall"}
    _post(
        alertmanager,
        [
            {
                "alertname": "RiskwatchWorkerDown",
                "severity": "critical",
                "instance": "w0:9464",
                **pipeline,
            },
            {
                "alertname": "RiskwatchConsumerLagGrowing",
                "severity": "warning",
                "instance": "w0:9464",
                **pipeline,
            },
            {
                "alertname": "RiskwatchNoEvents",
                "severity": "warning",
                "instance": "w0:9464",
                **pipeline,
            },
            {
                "alertname": "RiskwatchConsumerLagGrowing",
                "severity": "warning",
                "instance": "w1:9464",
                **pipeline,
            },
            {"alertname": "RiskwatchLatencySLOBurn", "severity": "critical", **pipeline},
            {"alertname": "RiskwatchLatencySLOBurn", "severity": "warning", **pipeline},
        ],
    )
    expected = {
        ("RiskwatchWorkerDown", "w0:9464", "critical"): False,
        # Symptoms of the down worker: muted.
        ("RiskwatchConsumerLagGrowing", "w0:9464", "warning"): True,
        ("RiskwatchNoEvents", "w0:9464", "warning"): True,
        # Another worker's lag is news.
        ("RiskwatchConsumerLagGrowing", "w1:9464", "warning"): False,
        # The page mutes the ticket of the same alert.
        ("RiskwatchLatencySLOBurn", "", "critical"): False,
        ("RiskwatchLatencySLOBurn", "", "warning"): True,
    }
    deadline = time.monotonic() + 10
    got = _inhibited(alertmanager)
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _inhibited(alertmanager)
    assert got == expected
