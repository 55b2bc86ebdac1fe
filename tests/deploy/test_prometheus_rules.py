"""Prometheus config, recording and alerting rules: promtool checks and static checks.

Needs ``promtool`` (Debian/Ubuntu: ``apt-get install prometheus``) for the
promtool tests; they are skipped, with that reason, only when it is absent.
The static checks (labels, annotations, runbooks, metric names, test
coverage of every alert) always run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
CONFIGS = [PROM / "prometheus.yml", PROM / "prometheus-k8s.yml"]
RUNBOOKS = ROOT / "deploy" / "runbooks"
RUNBOOK_BASE = "https://github.com/riskwatch/riskwatch/blob/main/deploy/runbooks/"
DASHBOARD_BASE = "https://grafana.riskwatch.internal/d/"
DASHBOARD_UIDS = {"riskwatch-pipeline", "riskwatch-portfolio", "riskwatch-models"}

SEVERITIES = {"critical", "warning", "info"}
TEAMS = {"riskwatch-oncall", "credit-risk"}
#: The alerts the pipeline and the business must have (the brief of deploy/).
REQUIRED_ALERTS = {
    "RiskwatchWorkerDown",
    "RiskwatchConsumerLagGrowing",
    "RiskwatchDeadLetterSpike",
    "RiskwatchLatencySLOBurn",
    "RiskwatchNoEvents",
    "RiskwatchNotReady",
    "RiskwatchPortfolioOverdueAboveWarning",
    "RiskwatchCriticalAlertSurge",
    "RiskwatchModelQualityBelowFloor",
    "RiskwatchCrisisModeOn",
}
#: Label names that would identify a person; never allowed in rules.
FORBIDDEN_LABEL_WORDS = ("customer", "account", "iban", "card_number", "email", "phone")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus); CI installs it",
)


def _load(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict]:
    return [
        rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]
    ]


def _alert_rules() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def _recorded_names() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


# --- promtool --------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    result = _run("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _run("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = _run("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


# --- static checks ---------------------------------------------------------


def test_configs_load_the_rule_files() -> None:
    for config in CONFIGS:
        cfg = _load(config)
        loaded = {(config.parent / p).resolve() for p in cfg["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_FILES}, config.name
        jobs = [job["job_name"] for job in cfg["scrape_configs"]]
        assert "riskwatch" in jobs, config.name
        riskwatch = next(j for j in cfg["scrape_configs"] if j["job_name"] == "riskwatch")
        assert riskwatch.get("metrics_path", "/metrics") == "/metrics"
        assert "9464" in yaml.safe_dump(riskwatch) or any(
            sd.get("type") == "SRV" for sd in riskwatch.get("dns_sd_configs", [])
        )
        assert cfg["alerting"]["alertmanagers"], config.name


def test_required_alerts_exist() -> None:
    names = {r["alert"] for r in _alert_rules()}
    assert names >= REQUIRED_ALERTS, REQUIRED_ALERTS - names


@pytest.mark.parametrize(
    "rule", _alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_labels_and_annotations(rule: dict) -> None:
    name = rule["alert"]
    labels, annotations = rule["labels"], rule["annotations"]
    assert labels["severity"] in SEVERITIES
    assert labels["team"] in TEAMS
    assert {"summary", "description", "runbook_url", "dashboard_url"} <= set(annotations)
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"
    assert annotations["dashboard_url"].startswith(DASHBOARD_BASE)
    assert annotations["dashboard_url"].removeprefix(DASHBOARD_BASE) in DASHBOARD_UIDS


@pytest.mark.parametrize("name", sorted({r["alert"] for r in _alert_rules()}))
def test_every_alert_has_a_runbook(name: str) -> None:
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text(encoding="utf-8")
    assert text.startswith(f"# {name}\n")
    for section in ("## Meaning", "## First checks", "## Mitigation"):
        assert section in text, f"{runbook.name} lacks {section}"


def test_no_runbook_without_alert() -> None:
    names = {r["alert"] for r in _alert_rules()}
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names


def _label_names(expr: str) -> set[str]:
    """Label names an expression matches on, groups by or joins on."""
    names = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", expr))
    for clause in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        names |= {n.strip() for n in clause.split(",") if n.strip()}
    return names


def test_no_personal_identifiers_in_rules() -> None:
    for rule in _rules():
        names = _label_names(rule["expr"]) | set(rule.get("labels", {}))
        for word in FORBIDDEN_LABEL_WORDS:
            bad = {n for n in names if word in n.lower()}
            assert not bad, (rule.get("alert") or rule.get("record"), bad)


# PromQL words that look like metric names but are not.
_PROMQL_WORDS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "histogram_quantile",
    "absent",
    "round",
    "time",
    "vector",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "quantile",
    "label_replace",
    "clamp_min",
    "clamp_max",
    "abs",
    "scalar",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "changes",
    "resets",
    "le",
    "inf",
    "nan",
    "predict_linear",
    "group",
    "sort",
    "sort_desc",
    "stddev",
    "count_values",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not labels, functions or recorded names)."""
    # Drop string literals, label matchers and grouping clauses, and durations.
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS and not n[0].isdigit()}


def exported_metric_names() -> set[str]:
    """Every sample name the worker exports, from streams/metrics.py."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def test_promql_metric_names_parser() -> None:
    expr = (
        'sum by (job, le) (rate(riskwatch_x_bucket{le="1.0", topic=~"a|b"}[5m])) '
        '> 3 * riskwatch:y:rate5m and on (job) up{job="riskwatch"} == 0'
    )
    assert promql_metric_names(expr) == {"riskwatch_x_bucket", "riskwatch:y:rate5m", "up"}


def test_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names() | _recorded_names() | {"up"}
    for rule in _rules():
        unknown = promql_metric_names(rule["expr"]) - exported
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_recording_rule_names_follow_convention() -> None:
    for name in _recorded_names():
        assert re.fullmatch(r"riskwatch:[a-z0-9_]+:[a-z0-9_]+", name), name


def _unit_tests() -> list[dict]:
    return [t for path in TEST_FILES for t in _load(path)["tests"]]


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _unit_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in _alert_rules()}
    assert names <= firing, f"no firing test for {names - firing}"
    assert names <= quiet, f"no not-firing test for {names - quiet}"
    severities = {(r["alert"], r["labels"]["severity"]) for r in _alert_rules()}
    tested = {
        (case["alertname"], exp["exp_labels"]["severity"])
        for test in _unit_tests()
        for case in test.get("alert_rule_test", [])
        for exp in case.get("exp_alerts") or []
    }
    assert severities <= tested, f"untested variants {severities - tested}"


def test_unit_tests_fix_group_order() -> None:
    # Without group_eval_order promtool evaluates groups in random order, and an
    # alert may see the previous evaluation of a recorded series: flaky tests.
    for path in TEST_FILES:
        spec = _load(path)
        groups = [
            g["name"]
            for rule_file in spec["rule_files"]
            for g in _load(path.parent / rule_file)["groups"]
        ]
        assert spec.get("group_eval_order") is not None, path.name
        assert sorted(spec["group_eval_order"]) == sorted(groups), path.name
        order = spec["group_eval_order"]
        recording = [i for i, g in enumerate(order) if g.endswith(".recording")]
        alerting = [i for i, g in enumerate(order) if not g.endswith(".recording")]
        assert not alerting or max(recording) < min(alerting), path.name
