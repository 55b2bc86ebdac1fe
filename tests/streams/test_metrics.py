"""Metrics fed from engine outputs (roll rates by the account's product), and the
lock-free hot-path metrics against prometheus_client's own."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from alerts.engine import Engine
from alerts.policy import DEFAULT_POLICY, CrisisMode
from schemas.models import Evidence, InstallmentDue, RiskAlert, StatementDue
from streams.metrics import PRODUCTS, LoopCounter, LoopHistogram, Metrics

T0 = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)


def transitions(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        if family.name == "riskwatch_bucket_transitions":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = (s.labels["product"], s.labels["from_bucket"], s.labels["to_bucket"])
                    out[key] = s.value
    return out


def bucket_alerts(due_event, days: int) -> list[RiskAlert]:
    """Bucket-move alerts of one unpaid due, swept ``days`` after its due date."""
    engine = Engine(DEFAULT_POLICY)
    result = engine.process("repayments", due_event, None)
    state, alerts = result.state, []
    for day in range(1, days + 1):
        swept = engine.advance("c1", state, dt.datetime.combine(
            due_event.due_date + dt.timedelta(days=day), dt.time(12), dt.UTC))
        state = swept.state or state
        alerts += [e.record for e in swept.emits if e.topic == "risk-alerts"
                   and e.record.rule_id in ("delinquency-onset", "dpd-bucket-worsened")]
    return alerts


def test_roll_rate_is_counted_under_the_account_product():
    installment = InstallmentDue(event_id="d1", event_time=T0, customer_id="c1",
                                 account_id="loan-1", due_id="i1", due_date=dt.date(2026, 3, 5),
                                 amount_minor=10_000, currency="EUR")
    statement = StatementDue(event_id="s1", event_time=T0, customer_id="c1", account_id="card-1",
                             due_id="st1", due_date=dt.date(2026, 3, 5), amount_minor=90_000,
                             minimum_minor=5_000, currency="EUR")
    metrics = Metrics()
    for event in (installment, statement):
        alerts = bucket_alerts(event, 31)
        assert [a.rule_id for a in alerts] == ["delinquency-onset", "dpd-bucket-worsened"]
        for alert in alerts:
            metrics.record_bucket_move(alert)
    assert transitions(metrics) == {
        ("installment_plan", "current", "dpd_1_29"): 1.0,
        ("installment_plan", "dpd_1_29", "dpd_30_59"): 1.0,
        ("credit_card", "current", "dpd_1_29"): 1.0,
        ("credit_card", "dpd_1_29", "dpd_30_59"): 1.0,
    }


def test_a_personal_loan_rolls_under_its_own_product():
    """Installment dues carry the account's product; without it they are installment
    plans (records from before the field existed)."""
    loan = InstallmentDue(event_id="d2", event_time=T0, customer_id="c1", account_id="pl-1",
                          due_id="i2", due_date=dt.date(2026, 3, 5), amount_minor=10_000,
                          currency="EUR", product="personal_loan")
    metrics = Metrics()
    for alert in bucket_alerts(loan, 31):
        metrics.record_bucket_move(alert)
    assert transitions(metrics) == {
        ("personal_loan", "current", "dpd_1_29"): 1.0,
        ("personal_loan", "dpd_1_29", "dpd_30_59"): 1.0,
    }


def test_product_label_keeps_a_fixed_set_of_values():
    def alert(*evidence: Evidence, alert_type: str = "delinquency") -> RiskAlert:
        return RiskAlert(alert_id="a", customer_id="c1", trigger_event_id="e", event_time=T0,
                         policy_version="p", model_version="m", reason_codes=[],
                         evidence=list(evidence), alert_type=alert_type, severity="low",
                         rule_id="r", rule_version=1, routing=[])

    moved = (Evidence(code="bucket", text="", value="dpd_1_29"),
             Evidence(code="previous_bucket", text="", value="current"))
    metrics = Metrics()
    metrics.record_bucket_move(alert(*moved))  # no product (e.g. an account with payments only)
    metrics.record_bucket_move(alert(*moved, Evidence(code="product", text="", value="c-4411")))
    metrics.record_bucket_move(alert(*moved, Evidence(code="product", text="", value=7)))
    metrics.record_bucket_move(alert(*moved, Evidence(code="product", text="",
                                                      value="personal_loan")))
    metrics.record_bucket_move(alert(moved[0]))  # not a move
    metrics.record_bucket_move(alert(*moved, alert_type="warning"))
    assert transitions(metrics) == {("unknown", "current", "dpd_1_29"): 3.0,
                                    ("personal_loan", "current", "dpd_1_29"): 1.0}
    assert set(PRODUCTS) == {"credit_card", "installment_plan", "personal_loan", "unknown"}


def test_gc_pauses_are_observed_by_generation():
    metrics = Metrics()
    metrics.on_gc("start", {"generation": 2})
    metrics.on_gc("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    count = metrics.registry.get_sample_value("riskwatch_gc_pause_seconds_count",
                                              {"generation": "2"})
    assert count == 1


def crisis_gauge(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("riskwatch_crisis_mode")


def test_the_crisis_gauge_is_1_only_while_the_crisis_window_is_in_force_now():
    # On-call reads the gauge (and RiskwatchCrisisModeOn) as "crisis rules apply now":
    # a switched-on window that has not started, or has ended, is not in force.
    start, end = T0, T0 + dt.timedelta(days=3)
    now = [T0 - dt.timedelta(hours=1)]
    metrics = Metrics()
    crisis = CrisisMode(active=True, start=start, end=end)
    metrics.set_policy("v1", crisis, clock=lambda: now[0])
    assert crisis_gauge(metrics) == 0  # scheduled, not yet in force
    now[0] = T0
    assert crisis_gauge(metrics) == 1  # the window opened: no new policy needed
    now[0] = end - dt.timedelta(seconds=1)
    assert crisis_gauge(metrics) == 1
    now[0] = end
    assert crisis_gauge(metrics) == 0  # ended (still switched on in the policy)
    # Switched off, its window kept deferred: not in force either.
    metrics.set_policy("v2", crisis.switched_off(T0 + dt.timedelta(days=1)),
                       clock=lambda: T0 + dt.timedelta(hours=2))
    assert crisis_gauge(metrics) == 0
    # An open-ended window from the switch on: in force from then on.
    metrics.set_policy("v3", CrisisMode().switched_on(T0), clock=lambda: T0 + dt.timedelta(days=400))
    assert crisis_gauge(metrics) == 1
    # Without a window (active, published by hand): in force, on the real clock too.
    metrics.set_policy("v4", CrisisMode(active=True))
    assert crisis_gauge(metrics) == 1
    metrics.set_policy("v5", CrisisMode())
    assert crisis_gauge(metrics) == 0


# -- LoopCounter / LoopHistogram: exposed exactly as prometheus_client's own -------------

_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


@given(st.lists(st.one_of(st.floats(min_value=0, max_value=100, allow_nan=False),
                          st.sampled_from(_BUCKETS)), max_size=40))
def test_loop_histogram_exposition_equals_prometheus_client(values: list[float]) -> None:
    """Same observations, same /metrics text (a value on a bound counts in that bucket)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Doc.", buckets=_BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Doc.", buckets=_BUCKETS, registry=theirs)
    for value in values:
        loop.observe(value)
        reference.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]),
                          st.integers(min_value=0, max_value=5)), max_size=30))
def test_loop_counter_exposition_equals_prometheus_client(
        incs: list[tuple[str, str, int]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("x_events", "Doc.", ["topic", "outcome"], registry=ours)
    reference = Counter("x_events", "Doc.", ["topic", "outcome"], registry=theirs)
    for topic, outcome, amount in incs:
        loop.labels(topic, outcome).inc(amount)
        reference.labels(topic, outcome).inc(amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_loop_metrics_reject_what_prometheus_client_rejects() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("y_events", "Doc.", ["topic"], registry=registry)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="has labels"):
        counter.inc()
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("y_seconds", "Doc.", buckets=(1.0, 0.5))
    # A label value that is not text is one series with its text, as in prometheus_client.
    counter.labels(5).inc()  # type: ignore[arg-type]
    counter.labels(5).inc()  # type: ignore[arg-type]
    counter.labels("5").inc()
    assert registry.get_sample_value("y_events_total", {"topic": "5"}) == 3.0
    # The same name twice on one registry is refused, as for any collector.
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("y_events", "Doc.", ["topic"], registry=registry)
