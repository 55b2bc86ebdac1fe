"""Grafana dashboards as code: committed files match the generator, queries use real metrics.

Needs ``grafana-foundation-sdk==1769699379!11.6.0`` for the drift check
(skipped, with that reason, only when the SDK is absent). The metric-name and
structure checks read the committed JSON and always run.

Regenerate after editing ``scripts/gen_dashboards.py``::

    python scripts/gen_dashboards.py
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
SCRIPT = ROOT / "scripts" / "gen_dashboards.py"
RECORDING_RULES = ROOT / "deploy" / "prometheus" / "rules" / "recording.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "rules" / "alerts.yml"
DASHBOARDS = {"pipeline", "portfolio", "models"}
SDK_MISSING = importlib.util.find_spec("grafana_foundation_sdk") is None


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_dashboards", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> dict[str, str]:
    return {
        str(p.relative_to(GRAFANA)): p.read_text(encoding="utf-8")
        for p in sorted(GRAFANA.rglob("*"))
        if p.is_file()
    }


def _dashboard(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]


# --- drift -----------------------------------------------------------------


@pytest.mark.skipif(
    SDK_MISSING, reason="grafana-foundation-sdk not installed (pip install the pinned dev extra)"
)
def test_committed_files_match_the_generator(tmp_path: Path) -> None:
    _generator().write(tmp_path)
    generated = {
        str(p.relative_to(tmp_path)): p.read_text(encoding="utf-8")
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file()
    }
    committed = _committed()
    assert sorted(generated) == sorted(committed), "run: python scripts/gen_dashboards.py"
    for rel, content in generated.items():
        assert committed[rel] == content, f"{rel} is stale: run python scripts/gen_dashboards.py"


# --- metric names ----------------------------------------------------------

_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "rate", "irate", "increase", "deriv", "delta",
    "histogram_quantile", "absent", "round", "time", "vector", "offset", "bool", "topk",
    "bottomk", "quantile", "label_replace", "clamp_min", "clamp_max", "abs", "scalar",
    "max_over_time", "min_over_time", "avg_over_time", "changes", "resets", "le", "inf",
    "nan", "predict_linear", "group", "sort", "sort_desc", "stddev", "count_values",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not labels, functions or variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


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


def _recorded_names() -> set[str]:
    spec = yaml.safe_load(RECORDING_RULES.read_text(encoding="utf-8"))
    return {r["record"] for g in spec["groups"] for r in g["rules"]}


def test_promql_metric_names_parser() -> None:
    expr = (
        'sum by (topic) (rate(riskwatch_a_total{job="riskwatch", instance=~"$instance"}'
        "[$__rate_interval])) / riskwatch:b:rate5m + time() - max(up)"
    )
    assert promql_metric_names(expr) == {"riskwatch_a_total", "riskwatch:b:rate5m", "up"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_use_only_exported_metrics(name: str) -> None:
    dashboard = _dashboard(name)
    exported = exported_metric_names()
    known = exported | _recorded_names() | {"up"}
    used: set[str] = set()
    for expr in _exprs(dashboard):
        unknown = promql_metric_names(expr) - known
        assert not unknown, (expr, unknown)
        used |= promql_metric_names(expr)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)", variable["query"])
            assert metric in known, (variable["name"], metric)
    assert used & exported, "a dashboard with no worker metric"


def test_dashboards_cover_every_exported_metric() -> None:
    used = set()
    for name in DASHBOARDS:
        for expr in _exprs(_dashboard(name)):
            used |= promql_metric_names(expr)
    # A histogram counts as covered by any of its series.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {
        n
        for n in exported_metric_names()
        if n not in used and re.sub(r"_(bucket|sum|count)$", "", n) not in families
    }
    assert not missing, f"metrics on no dashboard: {sorted(missing)}"


# --- structure -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = _dashboard(name)
    assert dashboard["uid"] == f"riskwatch-{name}"
    assert "riskwatch" in dashboard["tags"]
    assert dashboard["templating"]["list"][0]["name"] == "datasource"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel.get("description"), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and all(ref_ids) and len(set(ref_ids)) == len(ref_ids), panel["title"]
        for expr in (t["expr"] for t in panel["targets"]):
            assert 'job="riskwatch"' in expr, (panel["title"], expr)
            assert "customer_id" not in expr and "account_id" not in expr


def test_alert_dashboard_links_point_at_generated_dashboards() -> None:
    uids = {_dashboard(name)["uid"] for name in DASHBOARDS}
    spec = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    for rule in (r for g in spec["groups"] for r in g["rules"] if "alert" in r):
        uid = rule["annotations"]["dashboard_url"].rstrip("/").rsplit("/", 1)[-1]
        assert uid in uids, (rule["alert"], uid)


def test_provisioning() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "riskwatch.yml").read_text(encoding="utf-8")
    )
    (prometheus,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert prometheus["isDefault"] is True
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "riskwatch.yml").read_text(encoding="utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/riskwatch"
