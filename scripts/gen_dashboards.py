#!/usr/bin/env python3
"""Generate Riskwatch's Grafana dashboards and provisioning files (dashboards as code).

Writes, under ``--out`` (default ``deploy/grafana``)::

    dashboards/pipeline.json    pipeline health: throughput, dead letters, latency, SLO, lag
    dashboards/portfolio.json   portfolio risk: grades, delinquency, roll rates, risk alerts
    dashboards/models.json      detector/model quality: AUC, log loss, drift, anomaly scores
    provisioning/dashboards/riskwatch.yml
    provisioning/datasources/riskwatch.yml

The generated files are committed; ``tests/deploy/test_dashboards.py``
regenerates them into a temporary directory and fails on any difference, so
edit this script and rerun it, never the JSON::

    python scripts/gen_dashboards.py

Needs ``grafana-foundation-sdk==1769699379!11.6.0`` (types for Grafana 11.6;
the dashboards load in Grafana 11.6 and 12). Pin it exactly: the package's
version epochs make an unpinned install pick an old Grafana 10.1 build.

Every query uses metric names from ``streams/metrics.py`` (or recording rules
from ``deploy/prometheus/rules/recording.yml``) and selects ``job="riskwatch"``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.heatmap import Panel as Heatmap
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphDrawStyle,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "deploy" / "grafana"

#: Where the compose stack and the k8s layout mount the dashboards in Grafana.
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards/riskwatch"
PROMETHEUS_URL = "http://prometheus:9090"
ALERTMANAGER_URL = "http://alertmanager:9093"
PROMETHEUS_UID = "prometheus"

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'job="riskwatch"'
SEL = 'job="riskwatch", instance=~"$instance"'
RATE = "$__rate_interval"

# Alert thresholds, kept in step with deploy/prometheus/rules/alerts.yml.
LATENCY_SLO_SECONDS = 1.0
LATENCY_SLO_ERROR_BUDGET = 0.01
DEAD_LETTER_RATIO_LINE = 0.01
OVERDUE_WARNING_LINE = 0.05
AUC_FLOOR = 0.65


# --- building blocks -------------------------------------------------------


def query(
    expr: str,
    legend: str = "__auto",
    *,
    instant: bool = False,
    table: bool = False,
    heatmap: bool = False,
) -> PromQuery:
    """A Prometheus query on the dashboard's data source (``Board.add`` sets refIds)."""
    q = PromQuery().expr(expr).legend_format(legend).datasource(DS)
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(PromQueryFormat.TABLE)
    elif heatmap:
        q = q.format(PromQueryFormat.HEATMAP)
    return q


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def _legend() -> VizLegendOptions:
    return (
        VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def timeseries(
    title: str,
    description: str,
    queries: Iterable[PromQuery],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    bars: bool = False,
    line: tuple[float, str] | None = None,
    min_val: float | None = None,
    max_val: float | None = None,
) -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(height)
        .legend(_legend())
        .fill_opacity(10)
        .line_width(1)
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    for q in queries:
        panel = panel.with_target(q)
    if stack:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    if bars:
        panel = panel.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
    if line is not None:
        value, color = line
        panel = panel.thresholds(thresholds((None, "green"), (value, color))).thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
        )
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def stat(
    title: str,
    description: str,
    q: PromQuery,
    *,
    unit: str = "short",
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    mappings: dict[str, tuple[str, str]] | None = None,
    width: int = 4,
    height: int = 4,
    text_mode: BigValueTextMode = BigValueTextMode.AUTO,
) -> Stat:
    panel = (
        Stat()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(q)
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(thresholds(*steps))
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(
            [
                ValueMap(
                    options={
                        value: ValueMappingResult(text=text, color=color, index=i)
                        for i, (value, (text, color)) in enumerate(sorted(mappings.items()))
                    }
                )
            ]
        )
    return panel


def bargauge(
    title: str,
    description: str,
    q: PromQuery,
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> BarGauge:
    return (
        BarGauge()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(q)
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(thresholds((None, "blue")))
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def table(
    title: str,
    description: str,
    q: PromQuery,
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> Table:
    return (
        Table()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(q)
        .unit(unit)
        .span(width)
        .height(height)
    )


def heatmap(
    title: str, description: str, q: PromQuery, *, width: int = 12, height: int = 8
) -> Heatmap:
    return (
        Heatmap()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(q)
        .span(width)
        .height(height)
        .calculate(False)
    )


def quantile(q: float, histogram: str, selector: str = SEL, by: str = "le") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket{{{selector}}}[{RATE}])))"
    )


def quantiles(histogram: str, qs: tuple[float, ...], selector: str = SEL) -> list[Any]:
    """One ``pNN`` query per quantile of ``histogram`` (a latency or size panel's targets)."""
    return [query(quantile(q, histogram, selector=selector), f"p{int(q * 100)}") for q in qs]


def datasource_variable() -> DatasourceVariable:
    return DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, expr: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(expr)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


class Board:
    """A dashboard being assembled: numbers panels and refIds predictably."""

    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self._next_id = 1
        self.builder = (
            Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["riskwatch", *tags])
            .editable()
            .refresh("30s")
            .time("now-6h", "now")
            .timezone("utc")
            .tooltip(DashboardCursorSync.CROSSHAIR)
            .link(
                DashboardLink("Riskwatch")
                .type(DashboardLinkType.DASHBOARDS)
                .tags(["riskwatch"])
                .as_dropdown(True)
                .include_vars(False)
                .keep_time(True)
                .target_blank(False)
                .icon("external link")
                .tooltip("")
                .url("")
            )
            .with_variable(datasource_variable())
        )

    def variable(self, variable: QueryVariable) -> Board:
        self.builder = self.builder.with_variable(variable)
        return self

    def row(self, title: str) -> Board:
        self.builder = self.builder.with_row(Row(title).id(self._take_id()))
        return self

    def add(self, *panels: Any) -> Board:
        for panel in panels:
            built = panel.build()
            for i, target in enumerate(built.targets or []):
                target.ref_id = chr(ord("A") + i)
            self.builder = self.builder.with_panel(panel.id(self._take_id()))
        return self

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def to_json(self) -> str:
        return JSONEncoder(sort_keys=True, indent=2).encode(self.builder.build()) + "\n"


# --- dashboards ------------------------------------------------------------


def pipeline() -> Board:
    board = Board(
        "riskwatch-pipeline",
        "Riskwatch / Pipeline",
        "Stream processor health: workers, throughput, dead letters, latency, "
        "latency SLO, Kafka lag and table state.",
        ["pipeline"],
    )
    board.variable(query_variable("instance", "Worker", f"label_values(up{{{JOB}}}, instance)"))
    board.row("Overview").add(
        stat(
            "Workers up",
            "Workers Prometheus can scrape.",
            query(f"sum(up{{{SEL}}})", "up", instant=True),
            steps=((None, "red"), (1, "green")),
        ),
        stat(
            "Workers ready",
            "Workers with partitions assigned and table recovery done.",
            query(f"sum(riskwatch_ready{{{SEL}}})", "ready", instant=True),
            steps=((None, "red"), (1, "green")),
        ),
        stat(
            "Kafka reachable",
            "Every selected worker's Kafka client reaches the broker.",
            query(f"min(riskwatch_broker_up{{{SEL}}})", "broker", instant=True),
            steps=((None, "red"), (1, "green")),
            mappings={"0": ("No", "red"), "1": ("Yes", "green")},
        ),
        stat(
            "Input rate",
            "Input records handled per second, all topics and outcomes.",
            query(f"sum(rate(riskwatch_events_total{{{SEL}}}[{RATE}]))", "input"),
            unit="ops",
        ),
        stat(
            "p99 receipt → output",
            "99th percentile of the time from receipt by a worker to output send.",
            query(quantile(0.99, "riskwatch_receive_to_output_seconds", by="le"), "p99"),
            unit="s",
            steps=((None, "green"), (0.5, "yellow"), (LATENCY_SLO_SECONDS, "red")),
        ),
        stat(
            "Consumer lag",
            "Messages behind the end of the assigned partitions.",
            query(f"sum(riskwatch_consumer_lag_messages{{{SEL}}})", "lag"),
            steps=((None, "green"), (1000, "yellow"), (100000, "red")),
        ),
    )
    board.row("Throughput and dead letters").add(
        timeseries(
            "Input by topic and outcome",
            "Input records per second by topic and outcome (processed, duplicate, dead_lettered).",
            [
                query(
                    f"sum by (topic, outcome) (rate(riskwatch_events_total{{{SEL}}}[{RATE}]))",
                    "{{topic}} {{outcome}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Outputs by topic",
            "Output records produced per second by topic.",
            [
                query(
                    f"sum by (topic) (rate(riskwatch_outputs_total{{{SEL}}}[{RATE}]))", "{{topic}}"
                )
            ],
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Dead letters by topic and reason",
            "Records sent to the dead-letter topic per second, by source topic and reason.",
            [
                query(
                    f"sum by (topic, reason) (rate(riskwatch_dead_letters_total{{{SEL}}}[{RATE}]))",
                    "{{topic}} {{reason}}",
                )
            ],
            unit="ops",
            bars=True,
        ),
        timeseries(
            "Dead-letter share of input",
            "Rejected records over new input records by source topic; redelivered "
            "duplicates (reason duplicate_event) are on neither side. "
            "RiskwatchDeadLetterSpike fires above 1% for 10 minutes.",
            [
                query(
                    f"sum by (topic) (rate(riskwatch_dead_letters_total{{{SEL}, "
                    f'reason!="duplicate_event"}}[{RATE}]))'
                    f" / sum by (topic) (rate(riskwatch_events_total{{{SEL}, "
                    f'outcome!="duplicate"}}[{RATE}]))',
                    "{{topic}}",
                )
            ],
            unit="percentunit",
            line=(DEAD_LETTER_RATIO_LINE, "red"),
            min_val=0,
        ),
    )
    board.row("Latency and SLO").add(
        timeseries(
            "Receipt → output latency",
            "Quantiles of the time from receipt by a worker to output send (the SLO metric).",
            quantiles("riskwatch_receive_to_output_seconds", (0.5, 0.9, 0.99)),
            unit="s",
            line=(LATENCY_SLO_SECONDS, "red"),
        ),
        timeseries(
            "Append → receipt delay",
            "Quantiles of the time from a record's Kafka timestamp to its receipt by a "
            "worker: fetch wait and queueing before the worker sees it.",
            quantiles("riskwatch_append_to_receive_seconds", (0.5, 0.99)),
            unit="s",
        ),
        timeseries(
            "Event time → output latency",
            "Quantiles of the time from the event's "
            "own timestamp to output send: includes producer delay and consumer lag.",
            quantiles("riskwatch_event_to_output_seconds", (0.5, 0.99)),
            unit="s",
        ),
        heatmap(
            "Receipt → output distribution",
            "Records per latency bucket.",
            query(
                f"sum by (le) (increase(riskwatch_receive_to_output_seconds_bucket"
                f"{{{SEL}}}[{RATE}]))",
                "{{le}}",
                heatmap=True,
            ),
        ),
        timeseries(
            "Latency SLO: share of records slower than 1 s",
            "Error ratio of the "
            "latency SLO (99% under 1 s) over the burn-rate windows, whole job. The "
            "dashed line is the 1% budget; RiskwatchLatencySLOBurn compares windows "
            "against multiples of it.",
            [
                query(f"riskwatch:receive_to_output_slo_errors:ratio_rate{w}{{{JOB}}}", w)
                for w in ("5m", "1h", "6h", "1d")
            ],
            unit="percentunit",
            line=(LATENCY_SLO_ERROR_BUDGET, "red"),
            min_val=0,
        ),
    )
    board.row("Kafka").add(
        timeseries(
            "Consumer lag by topic",
            "Messages behind the end of the assigned partitions, summed over workers.",
            [query(f"sum by (topic) (riskwatch_consumer_lag_messages{{{SEL}}})", "{{topic}}")],
            unit="short",
            stack=True,
        ),
        timeseries(
            "Consumer lag by worker",
            "RiskwatchConsumerLagGrowing fires when a "
            "worker's lag is above 1000 and keeps growing for 15 minutes.",
            [
                query(
                    f"sum by (instance) (riskwatch_consumer_lag_messages{{{SEL}}})", "{{instance}}"
                )
            ],
            unit="short",
            line=(1000, "orange"),
        ),
        timeseries(
            "Time since last record received",
            "Wall-clock seconds since the newest record of each topic was received.",
            [
                query(
                    f"time() - max by (topic) (riskwatch_last_receive_timestamp_seconds{{{SEL}}})",
                    "{{topic}}",
                )
            ],
            unit="s",
        ),
        timeseries(
            "Event-time freshness",
            "Seconds between now and the event time of the newest record of each topic.",
            [
                query(
                    f"time() - max by (topic) (riskwatch_last_event_timestamp_seconds{{{SEL}}})",
                    "{{topic}}",
                )
            ],
            unit="s",
        ),
        timeseries(
            "Rebalances",
            "Consumer-group rebalances seen by each worker.",
            [
                query(
                    f"sum by (instance) (increase(riskwatch_rebalances_total{{{SEL}}}[{RATE}]))",
                    "{{instance}}",
                )
            ],
            unit="short",
            bars=True,
        ),
        timeseries(
            "Table recovery remaining",
            "Changelog messages left to recover before the worker is ready.",
            [
                query(f"riskwatch_table_recovery_remaining_messages{{{SEL}}}", "{{instance}}"),
                query(
                    f"increase(riskwatch_table_recovery_gap_records_total{{{SEL}}}[{RATE}])",
                    "{{instance}} past reported end",
                ),
                query(
                    f"increase(riskwatch_changelog_fenced_records_total{{{SEL}}}[{RATE}])",
                    "{{instance}} fenced (older generation)",
                ),
            ],
            unit="short",
        ),
        timeseries(
            "Lost broker state findings",
            "Checks that found the broker without state the worker had seen (topic gone, "
            "end offset went back, cluster id changed), per second.",
            [
                query(
                    f"sum by (check) (rate(riskwatch_broker_state_findings_total{{{SEL}}}"
                    f"[{RATE}]))",
                    "{{check}}",
                )
            ],
            unit="ops",
        ),
        timeseries(
            "Garbage-collector pauses",
            "Python's cyclic collector stops the event loop for each collection: p99 "
            "pause, and collections per second by generation (full ones are generation "
            "2; the worker freezes its long-lived objects after each table recovery).",
            [
                *quantiles("riskwatch_gc_pause_seconds", (0.99,)),
                query(
                    f"sum by (generation) (rate(riskwatch_gc_pause_seconds_count{{{SEL}}}"
                    f"[{RATE}]))",
                    "gen {{generation}} per s",
                ),
            ],
            unit="s",
        ),
    )
    board.row("Workers").add(
        timeseries(
            "Up, ready, Kafka reachable",
            "Per worker: scrape up, riskwatch_ready and riskwatch_broker_up (1 = yes).",
            [
                query(f"up{{{SEL}}}", "{{instance}} up"),
                query(f"riskwatch_ready{{{SEL}}}", "{{instance}} ready"),
                query(f"riskwatch_broker_up{{{SEL}}}", "{{instance}} kafka"),
                query(f"riskwatch_processing_held{{{SEL}}}", "{{instance}} held"),
                query(f"riskwatch_broker_state_lost{{{SEL}}}", "{{instance}} broker state lost"),
            ],
            unit="short",
            min_val=0,
            max_val=1,
        ),

        timeseries(
            "Customer state size",
            "Encoded size of a customer's state when written (p50, p99).",
            quantiles("riskwatch_customer_state_bytes", (0.5, 0.99)),
            unit="bytes",
        ),
        table(
            "Build info",
            "Version, Python and event-contract version of each worker.",
            query(
                f"max by (instance, version, python, contract) (riskwatch_build_info{{{SEL}}})",
                instant=True,
                table=True,
            ),
            width=24,
            height=6,
        ),
    )
    return board


def portfolio() -> Board:
    board = Board(
        "riskwatch-portfolio",
        "Riskwatch / Portfolio",
        "Portfolio risk: customers by grade, delinquency by segment, roll rates "
        "between delinquency buckets, risk alerts, limit proposals and actions.",
        ["business"],
    )
    seg = f'{JOB}, product=~"$product", sector=~"$sector"'
    board.variable(
        query_variable(
            "product",
            "Product",
            f"label_values(riskwatch_portfolio_overdue_ratio{{{JOB}}}, product)",
        )
    )
    board.variable(
        query_variable(
            "sector", "Sector", f"label_values(riskwatch_portfolio_overdue_ratio{{{JOB}}}, sector)"
        )
    )
    board.row("Overview").add(
        stat(
            "Customers",
            "Customers with a risk grade, all workers.",
            query(f"sum(riskwatch_customers_by_grade{{{JOB}}})", "customers", instant=True),
            steps=((None, "blue"),),
        ),
        stat(
            "Worst segment overdue",
            "Highest share of accounts 1+ days past due over the "
            "selected product/sector segments. Warning line 5%.",
            query(
                f"max(avg by (product, sector) (riskwatch_portfolio_overdue_ratio{{{seg}}}))",
                "overdue",
                instant=True,
            ),
            unit="percentunit",
            steps=(
                (None, "green"),
                (OVERDUE_WARNING_LINE * 0.8, "yellow"),
                (OVERDUE_WARNING_LINE, "red"),
            ),
        ),
        stat(
            "Critical risk alerts (24 h)",
            "Critical-severity risk alerts produced in the last 24 hours.",
            query(
                f'sum(increase(riskwatch_alerts_total{{{JOB}, severity="critical"}}[24h]))',
                "critical",
                instant=True,
            ),
            steps=((None, "blue"),),
        ),
        stat(
            "Limit proposals (24 h)",
            "Credit-limit proposals in the last 24 hours.",
            query(
                f"sum(increase(riskwatch_limit_proposals_total{{{JOB}}}[24h]))",
                "proposals",
                instant=True,
            ),
            steps=((None, "blue"),),
        ),
        stat(
            "Crisis mode",
            "On while crisis mode is in force now: switched on in the policy and the "
            "current time within its crisis window (payment deferral, no limit cuts). Off "
            "before the window starts and after it ends.",
            query(f"max(riskwatch_crisis_mode{{{JOB}}})", "crisis", instant=True),
            steps=((None, "green"), (1, "orange")),
            mappings={"0": ("Off", "green"), "1": ("On", "orange")},
        ),
        stat(
            "Policy version",
            "The risk policy version in force.",
            query(
                f"max by (version) (riskwatch_policy_info{{{JOB}}})", "{{version}}", instant=True
            ),
            steps=((None, "blue"),),
            text_mode=BigValueTextMode.NAME,
        ),
    )
    board.row("Risk grades").add(
        timeseries(
            "Customers by grade",
            "Customers in each risk grade over time.",
            [query(f"sum by (grade) (riskwatch_customers_by_grade{{{JOB}}})", "{{grade}}")],
            unit="short",
            stack=True,
        ),
        bargauge(
            "Grade distribution now",
            "Customers in each risk grade.",
            query(
                f"sum by (grade) (riskwatch_customers_by_grade{{{JOB}}})", "{{grade}}", instant=True
            ),
        ),
    )
    board.row("Delinquency").add(
        timeseries(
            "Overdue ratio by segment",
            "Share of accounts 1+ days past due, mean "
            "over workers. RiskwatchPortfolioOverdueAboveWarning fires above 5% for an "
            "hour.",
            [
                query(
                    f"avg by (product, sector) (riskwatch_portfolio_overdue_ratio{{{seg}}})",
                    "{{product}} / {{sector}}",
                )
            ],
            unit="percentunit",
            line=(OVERDUE_WARNING_LINE, "red"),
            min_val=0,
        ),
        timeseries(
            "New delinquency ratio by segment",
            "Share of accounts that became delinquent in the current window.",
            [
                query(
                    f"avg by (product, sector) "
                    f"(riskwatch_portfolio_new_delinquency_ratio{{{seg}}})",
                    "{{product}} / {{sector}}",
                )
            ],
            unit="percentunit",
            min_val=0,
        ),
        table(
            "Overdue ratio now by product and sector",
            "Current overdue ratio per segment.",
            query(
                f"avg by (product, sector) (riskwatch_portfolio_overdue_ratio{{{seg}}})",
                instant=True,
                table=True,
            ),
            unit="percentunit",
        ),
        timeseries(
            "Roll rates: bucket transitions per hour",
            "Accounts moving between delinquency buckets, by from → to bucket.",
            [
                query(
                    f"sum by (from_bucket, to_bucket) (increase("
                    f'riskwatch_bucket_transitions_total{{{JOB}, product=~"$product"}}'
                    f"[1h]))",
                    "{{from_bucket}} → {{to_bucket}}",
                )
            ],
            unit="short",
        ),
        table(
            "Bucket transitions over the time range",
            "Transitions per product and from → to bucket over the dashboard's time range.",
            query(
                f"sum by (product, from_bucket, to_bucket) (increase("
                f'riskwatch_bucket_transitions_total{{{JOB}, product=~"$product"}}'
                f"[$__range]))",
                instant=True,
                table=True,
            ),
            width=24,
        ),
    )
    board.row("Risk alerts and actions").add(
        timeseries(
            "Risk alerts by severity",
            "Risk alerts produced per second by severity.",
            [
                query(
                    f"sum by (severity) (rate(riskwatch_alerts_total{{{JOB}}}[{RATE}]))",
                    "{{severity}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Risk alerts by type",
            "Risk alerts produced per second by alert type.",
            [
                query(
                    f"sum by (alert_type) (rate(riskwatch_alerts_total{{{JOB}}}[{RATE}]))",
                    "{{alert_type}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Limit proposals by direction",
            "Credit-limit proposals per second (cut, freeze, raise, restore).",
            [
                query(
                    f"sum by (direction) (rate(riskwatch_limit_proposals_total{{{JOB}}}[{RATE}]))",
                    "{{direction}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Customer actions by action and channel",
            "Actions towards customers per second.",
            [
                query(
                    f"sum by (action, channel) (rate(riskwatch_customer_actions_total"
                    f"{{{JOB}}}[{RATE}]))",
                    "{{action}} / {{channel}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
    )
    return board


def models() -> Board:
    board = Board(
        "riskwatch-models",
        "Riskwatch / Models",
        "Detector and model quality: progressive AUC and log loss, behaviour "
        "drift detections, global anomaly scores.",
        ["models"],
    )
    sel = f'{JOB}, model=~"$model"'
    board.variable(
        query_variable("model", "Model", f"label_values(riskwatch_model_auc{{{JOB}}}, model)")
    )
    board.row("Quality").add(
        stat(
            "AUC now",
            "Progressive ROC AUC per model, mean over workers. Floor 0.65.",
            query(f"avg by (model) (riskwatch_model_auc{{{sel}}})", "{{model}}", instant=True),
            unit="none",
            width=8,
            height=8,
            steps=((None, "red"), (AUC_FLOOR, "yellow"), (AUC_FLOOR + 0.05, "green")),
        ),
        timeseries(
            "Progressive ROC AUC",
            "Predict-then-learn ROC AUC, mean over workers. "
            "RiskwatchModelQualityBelowFloor fires under 0.65 for an hour.",
            [query(f"avg by (model) (riskwatch_model_auc{{{sel}}})", "{{model}}")],
            unit="none",
            width=16,
            line=(AUC_FLOOR, "red"),
            min_val=0.4,
            max_val=1,
        ),
        timeseries(
            "AUC by worker",
            "Each worker learns on its own partitions.",
            [query(f"riskwatch_model_auc{{{sel}}}", "{{model}} {{instance}}")],
            unit="none",
            min_val=0.4,
            max_val=1,
        ),
        timeseries(
            "Progressive log loss",
            "Predict-then-learn log loss, mean over workers (lower is better).",
            [query(f"avg by (model) (riskwatch_model_log_loss{{{sel}}})", "{{model}}")],
            unit="none",
            min_val=0,
        ),
    )
    board.row("Drift").add(
        timeseries(
            "Drift detections by feature",
            "Behaviour drift detections per interval.",
            [
                query(
                    f"sum by (feature) (increase(riskwatch_drift_detections_total{{{JOB}}}"
                    f"[{RATE}]))",
                    "{{feature}}",
                )
            ],
            unit="short",
            bars=True,
        ),
        bargauge(
            "Drift detections in the last 24 h",
            "Detections per feature.",
            query(
                f"sum by (feature) (increase(riskwatch_drift_detections_total{{{JOB}}}[24h]))",
                "{{feature}}",
                instant=True,
            ),
        ),
    )
    board.row("Anomaly scores").add(
        heatmap(
            "Anomaly score distribution",
            "Scores of the global anomaly model per bucket (0-1).",
            query(
                f"sum by (le) (increase(riskwatch_anomaly_score_bucket{{{JOB}}}[{RATE}]))",
                "{{le}}",
                heatmap=True,
            ),
        ),
        timeseries(
            "Anomaly score quantiles",
            "p50, p90 and p99 of the anomaly scores.",
            quantiles("riskwatch_anomaly_score", (0.5, 0.9, 0.99), selector=JOB),
            unit="none",
            min_val=0,
            max_val=1,
        ),
        timeseries(
            "Share of scores above 0.9",
            "Share of scored records with an anomaly score above 0.9.",
            [
                query(
                    f'1 - sum(rate(riskwatch_anomaly_score_bucket{{{JOB}, le="0.9"}}'
                    f"[{RATE}])) / sum(rate(riskwatch_anomaly_score_count{{{JOB}}}"
                    f"[{RATE}]))",
                    "above 0.9",
                )
            ],
            unit="percentunit",
            min_val=0,
            width=24,
        ),
    )
    return board


DASHBOARDS = {"pipeline": pipeline, "portfolio": portfolio, "models": models}


# --- provisioning ----------------------------------------------------------

_HEADER = "# Generated by scripts/gen_dashboards.py: edit the script, not this file.\n"


def datasources_yaml() -> str:
    spec = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": PROMETHEUS_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": PROMETHEUS_URL,
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": "15s", "httpMethod": "POST"},
            },
            {
                "name": "Alertmanager",
                "uid": "alertmanager",
                "type": "alertmanager",
                "access": "proxy",
                "url": ALERTMANAGER_URL,
                "editable": False,
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
        ],
    }
    return _HEADER + yaml.safe_dump(spec, sort_keys=False)


def dashboards_yaml() -> str:
    spec = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "riskwatch",
                "orgId": 1,
                "folder": "Riskwatch",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": DASHBOARDS_MOUNT, "foldersFromFilesStructure": False},
            },
        ],
    }
    return _HEADER + yaml.safe_dump(spec, sort_keys=False)


def render() -> dict[str, str]:
    """Every generated file: relative path -> content."""
    files = {f"dashboards/{name}.json": build().to_json() for name, build in DASHBOARDS.items()}
    files["provisioning/datasources/riskwatch.yml"] = datasources_yaml()
    files["provisioning/dashboards/riskwatch.yml"] = dashboards_yaml()
    return files


def write(out: Path) -> list[Path]:
    written = []
    for rel, content in render().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: deploy/grafana)"
    )
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
