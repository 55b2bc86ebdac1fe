"""Tests of risk grades, tiered responses and early-warning lines (``alerts/grades.py``)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.grades import (
    DEFAULT_LINES,
    GRADES,
    EarlyWarningLine,
    EarlyWarningLines,
    GradePolicy,
    LineState,
    TierPolicy,
    check_lines,
    grade_for,
    grade_outputs,
    responses_for,
    update_lines,
)
from alerts.ids import output_id
from detectors.base import Evidence, Signal
from detectors.scoring import (
    FEATURES,
    LedgerSummary,
    RiskModel,
    ScoreConfig,
    ScoreResult,
    ScoreState,
    encode_state,
    features,
    score,
)
from schemas import models as m

PROP = settings(max_examples=200, deadline=None, database=None, derandomize=True)
T = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
DAY = 20_513
grades = st.sampled_from(GRADES)
policies = st.builds(
    GradePolicy,
    medium=st.integers(100, 350),
    high=st.integers(400, 600),
    critical=st.integers(650, 900),
    margin=st.integers(0, 49),
)


def result(value: int, factors: list[Evidence] | None = None) -> ScoreResult:
    return ScoreResult(
        score=value, probability=value / 1000, model_probability=value / 1000,
        model_points=value, rule_points=0, behaviour_points=0, factors=factors or [],
    )


def outputs(state: ScoreState, value: int, trigger: str = "e1", **kw: Any) -> Any:
    return grade_outputs(
        state, result(value, kw.pop("factors", None)), customer_id="c1",
        trigger_event_id=trigger, event_time=T, day=kw.pop("day", DAY),
        policy_version="p1", model_version="m1", **kw,
    )


# --------------------------------------------------------------------------- #
# Bands and hysteresis
# --------------------------------------------------------------------------- #


def test_bands_for_a_fresh_customer() -> None:
    assert [grade_for(s, None) for s in (0, 299, 300, 549, 550, 749, 750, 1000)] == [
        "low", "low", "medium", "medium", "high", "high", "critical", "critical",
    ]


def test_hysteresis_moves_down_only_below_edge_minus_margin() -> None:
    assert grade_for(526, "high") == "high"
    assert grade_for(525, "high") == "high"  # at edge - margin: stays
    assert grade_for(524, "high") == "medium"
    assert grade_for(276, "high") == "medium"  # within medium's margin from above
    assert grade_for(274, "high") == "low"
    assert grade_for(551, "low") == "high"  # up at once, skipping a band
    assert grade_for(740, "critical", GradePolicy(margin=0)) == "high"


@PROP
@given(policies, st.integers(0, 3), st.data())
def test_hysteresis_never_flaps(policy: GradePolicy, index: int, data: Any) -> None:
    """Once in a grade, a score anywhere from its edge minus the margin up to the next
    edge keeps it."""
    edges = (*policy.edges(), 1001)
    grade = grade_for(edges[index], None, policy)
    assert grade == GRADES[index]
    lo = max(0, edges[index] - policy.margin)
    scores = data.draw(st.lists(st.integers(lo, edges[index + 1] - 1), max_size=50))
    for s in scores:
        grade = grade_for(s, grade, policy)
        assert grade == GRADES[index]


@PROP
@given(policies, st.integers(0, 1000), st.integers(0, 1000), st.none() | grades)
def test_grade_monotone_in_score(policy: GradePolicy, a: int, b: int, prev: Any) -> None:
    lo, hi = sorted((a, b))
    rank = GRADES.index
    assert rank(grade_for(lo, prev, policy)) <= rank(grade_for(hi, prev, policy))


@PROP
@given(policies, st.integers(0, 1000), grades)
def test_grade_between_raw_band_and_previous(policy: GradePolicy, s: int, prev: Any) -> None:
    raw = GRADES.index(grade_for(s, None, policy))
    got = GRADES.index(grade_for(s, prev, policy))
    assert raw <= got <= max(raw, GRADES.index(prev))
    if got > raw:  # held up by hysteresis: within the margin of the held grade's edge
        assert s >= policy.edges()[got] - policy.margin


@PROP
@given(policies, st.lists(st.integers(0, 1000), max_size=80))
def test_every_change_crosses_an_edge_by_the_margin(policy: GradePolicy, scores: list[int]) -> None:
    grade = None
    for s in scores:
        new = grade_for(s, grade, policy)
        if grade is not None and GRADES.index(new) < GRADES.index(grade):
            assert s < policy.edges()[GRADES.index(grade)] - policy.margin
        grade = new


def test_policy_validation_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="margin"):
        GradePolicy(margin=200)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"medium": 250, "hgih": 500}, GradePolicy)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"medium": ["reminder"], "urgent": []}, TierPolicy)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"lines": [{"indicator": "Max DPD", "line": 30}]}, EarlyWarningLines)
    with pytest.raises(msgspec.ValidationError):  # Python's "$" alone would take it
        msgspec.convert({"lines": [{"indicator": "max_dpd\n", "line": 30}]}, EarlyWarningLines)
    with pytest.raises(ValueError, match="one line"):
        EarlyWarningLines(lines=(EarlyWarningLine(indicator="score", line=700.0),) * 2)
    cfg = msgspec.convert({"lines": [{"indicator": "utilisation", "line": 0.8}],
                           "warn_share": 0.9}, EarlyWarningLines)
    assert cfg.lines[0].line == 0.8 and cfg.warn_share == 0.9


def test_tiered_responses() -> None:
    assert responses_for("medium") == ("review_queue", "reminder")
    assert responses_for("high") == ("limit_freeze", "call")
    assert responses_for("critical") == ("limit_cut", "collections_case")
    tiers = msgspec.convert({"high": ["call", "restructuring_offer"]}, TierPolicy)
    assert responses_for("high", tiers) == ("call", "restructuring_offer")
    assert tiers.responses_for("low") == ()


# --------------------------------------------------------------------------- #
# Grade outputs
# --------------------------------------------------------------------------- #


def test_first_low_grade_is_remembered_not_published() -> None:
    out = outputs(ScoreState(), 120)
    assert (out.grade, out.previous, out.changed, out.record, out.signal) == (
        "low", None, True, None, None)
    assert out.state.last_grade == 0 and out.state.grade_day == DAY
    published = outputs(ScoreState(), 120, policy=GradePolicy(emit_initial_low=True))
    assert published.record is not None
    assert published.record.reason_codes == ["grade_initial_low"] and published.signal is None


def test_escalation_gives_record_signal_and_responses() -> None:
    factor = Evidence(code="min_only_cycles", text="3 minimum-only payments in the last 4 "
                      "statements (+120 points)", value=120, unit="points")
    out = outputs(ScoreState(last_grade=1, grade_day=DAY - 40), 780, factors=[factor])
    assert (out.grade, out.previous, out.responses) == ("critical", "medium",
                                                        ("limit_cut", "collections_case"))
    rec = out.record
    assert rec.grade_id == output_id("risk-grade", 1, "e1", "c1:critical")
    assert (rec.grade, rec.previous_grade, rec.score) == ("critical", "medium", 780)
    assert rec.reason_codes == ["grade_escalated_critical"]
    assert [e.code for e in rec.evidence] == ["risk_score", "previous_grade", "min_only_cycles"]
    assert rec.evidence[0].text.startswith("risk score 780 of 1000 (model 780, rules 0")
    sig = out.signal
    assert (sig.kind, sig.rule_id, sig.severity, sig.discriminator) == (
        "risk_grade", "risk-grade", "critical", "critical")
    assert sig.reason_codes == ["grade_escalated_critical"] and sig.evidence == rec.evidence
    # The record and an alert built from the signal pass the output contracts.
    msgspec.json.decode(msgspec.json.encode(rec), type=m.RiskGrade)
    alert = m.RiskAlert(
        alert_id=output_id(sig.rule_id, sig.rule_version, "e1", sig.discriminator),
        customer_id="c1", trigger_event_id="e1", event_time=T, policy_version="p1",
        model_version="m1", reason_codes=sig.reason_codes, evidence=sig.evidence,
        alert_type=sig.kind, severity=sig.severity, rule_id=sig.rule_id,
        rule_version=sig.rule_version, routing=[],
    )
    msgspec.json.decode(msgspec.json.encode(alert), type=m.RiskAlert)


def test_downgrade_publishes_record_without_signal() -> None:
    out = outputs(ScoreState(last_grade=3), 500)
    assert (out.grade, out.signal, out.responses) == ("medium", None, ())
    assert out.record.reason_codes == ["grade_lowered_medium"]
    assert out.record.previous_grade == "critical"


def test_unchanged_grade_returns_same_state_and_nothing() -> None:
    state = ScoreState(last_grade=2, grade_day=DAY - 3)
    out = outputs(state, 530)  # within the margin below high
    assert out.state is state and not out.changed and out.record is None and out.signal is None


def test_ids_deterministic_and_distinct() -> None:
    a = outputs(ScoreState(last_grade=0), 600, trigger="e7")
    b = outputs(ScoreState(last_grade=0), 600, trigger="e7")
    c = outputs(ScoreState(last_grade=0), 600, trigger="e8")
    d = outputs(ScoreState(last_grade=0), 800, trigger="e7")
    assert a == b and msgspec.json.encode(a.record) == msgspec.json.encode(b.record)
    assert len({a.record.grade_id, c.record.grade_id, d.record.grade_id}) == 3


def test_evidence_is_capped_for_the_contract() -> None:
    factors = [Evidence(code=f"f{i}", text="x", value=i, unit="points") for i in range(40)]
    out = outputs(ScoreState(), 900, factors=factors)
    assert len(out.record.evidence) == 32 and len(out.signal.evidence) == 32
    msgspec.json.decode(msgspec.json.encode(out.record), type=m.RiskGrade)


def test_score_then_grade_flow_with_real_scoring() -> None:
    """score() -> grade_outputs() on one customer getting worse, then better."""
    cfg, model = ScoreConfig(), RiskModel()
    state: ScoreState | None = None
    seen = []
    path = [(0, 0, []), (5, 12, []), (10, 22, ["dpd_bucket_worsened"]), (40, 45, ["dpd_30_59"]),
            (60, 0, ["delinquency_cured"]), (200, 0, [])]
    for day_off, dpd, codes in path:
        sigs = [Signal(kind="delinquency", rule_id="r", rule_version=1,
                       severity="info" if c.endswith("cured") else "high", reason_codes=[c],
                       evidence=[]) for c in codes]
        f = features(None, LedgerSummary(max_dpd=dpd, overdue_accounts=int(dpd > 0)), None,
                     DAY + day_off)
        state, res = score(state, f, sigs, model, cfg, DAY + day_off)
        out = grade_outputs(state, res, customer_id="c1", trigger_event_id=f"e{day_off}",
                            event_time=T, day=DAY + day_off, policy_version="p1",
                            model_version="m1")
        state = out.state
        seen.append((res.score, out.grade, out.record is not None, out.signal is not None))
    # A fresh model is warming up: the prior (5 %) stands in for it, so only the DPD
    # (30+: probability 1) and the rule points move the grade.
    assert [g for _, g, _, _ in seen] == ["low", "low", "low", "critical", "low", "low"]
    assert [r for _, _, r, _ in seen] == [False, False, False, True, True, False]
    assert [s for _, _, _, s in seen] == [False, False, False, True, False, False]
    assert len(encode_state(state)) < 200 and len(FEATURES) == 13


# --------------------------------------------------------------------------- #
# Early-warning lines
# --------------------------------------------------------------------------- #


def test_check_lines_levels_and_projection() -> None:
    history = {
        "max_dpd": [(1, 10.0), (2, 17.0), (3, 24.0)],
        "utilisation": [(1, 0.95)],
        "score": [(1, 800.0), (2, 700.0), (3, 610.0)],
    }
    sigs = check_lines(history)
    codes = [s.reason_codes[0] for s in sigs]
    assert codes == ["line_approaching_max_dpd", "line_breached_utilisation",
                     "line_approaching_score"]
    dpd = sigs[0]
    assert (dpd.kind, dpd.rule_id, dpd.severity, dpd.discriminator) == (
        "early_warning", "ewl-max_dpd", "low", "max_dpd:approaching@3")
    assert dpd.evidence[2].code == "projected_days_to_line" and dpd.evidence[2].value == 1
    assert sigs[1].severity == "medium" and sigs[1].evidence[0].text == "utilisation 95%"
    assert sigs[2].evidence[2].text.startswith("no trend toward the line")
    assert check_lines(history, warn_share=0.9)[0].reason_codes == ["line_breached_utilisation"]


def test_lines_below_direction() -> None:
    lines = EarlyWarningLines(lines=(EarlyWarningLine(indicator="payment_ratio", line=0.5,
                                                      above=False),))
    assert check_lines({"payment_ratio": [(1, 0.7)]}, lines) == []
    warn = check_lines({"payment_ratio": [(1, 0.8), (2, 0.7), (3, 0.6)]}, lines)
    assert warn[0].reason_codes == ["line_approaching_payment_ratio"]
    assert warn[0].evidence[2].value == 1
    assert check_lines({"payment_ratio": [(1, 0.5)]}, lines)[0].reason_codes == [
        "line_breached_payment_ratio"]


def test_update_lines_edges_and_same_day_and_late_values() -> None:
    st_, sigs = update_lines(None, {"max_dpd": 25.0, "score": 100.0}, DAY)
    assert [s.reason_codes[0] for s in sigs] == ["line_approaching_max_dpd"]
    st2, sigs = update_lines(st_, {"max_dpd": 26.0}, DAY)  # same day: replaces the point
    assert sigs == [] and st2.points[0] == (DAY, 2600)
    st3, sigs = update_lines(st2, {"max_dpd": 31.0}, DAY - 1)  # older than kept: ignored
    assert st3 is st2 and sigs == []
    st4, sigs = update_lines(st2, {"max_dpd": 31.0}, DAY + 1)
    assert [s.reason_codes[0] for s in sigs] == ["line_breached_max_dpd"]
    assert st4.flags == (2, 0, 0)
    st5, sigs = update_lines(st4, {"max_dpd": 0.0}, DAY + 2)
    assert sigs == [] and st5.flags == (0, 0, 0)


def test_line_state_reset_when_lines_change() -> None:
    st_, _ = update_lines(None, {"max_dpd": 40.0}, DAY)
    one = EarlyWarningLines(lines=(EarlyWarningLine(indicator="score", line=750.0),))
    new, sigs = update_lines(st_, {"score": 800.0}, DAY + 1, one)
    assert new.flags == (2,) and [s.reason_codes[0] for s in sigs] == ["line_breached_score"]


values = st.fixed_dictionaries(
    {},
    optional={
        "max_dpd": st.integers(0, 200).map(float),
        "utilisation": st.floats(0, 2, allow_nan=False),
        "score": st.integers(0, 1000).map(float),
        "other": st.floats(allow_nan=True),
    },
)


@PROP
@given(st.lists(st.tuples(st.integers(0, 5), values), max_size=150))
def test_line_state_bounded_and_alerts_once_per_crossing(steps: list[Any]) -> None:
    """Bounded history; a breach is announced when a line is reached from the clear zone,
    and never again until the value has gone back to the clear zone."""
    state: LineState | None = None
    day = DAY
    cleared = {line.indicator: True for line in DEFAULT_LINES.lines}
    for gap, vals in steps:
        day += gap
        state, sigs = update_lines(state, vals, day)
        assert all(len(p) <= 2 * DEFAULT_LINES.trend_points for p in state.points)
        assert len(msgspec.msgpack.encode(state)) < 200
        breached = {s.rule_id.removeprefix("ewl-") for s in sigs
                    if s.reason_codes[0].startswith("line_breached")}
        for line in DEFAULT_LINES.lines:
            name = line.indicator
            v = vals.get(name)
            if v is None:
                assert name not in breached
                continue
            v = round(v * 100) / 100  # stored resolution
            if v >= line.line:
                assert (name in breached) == cleared[name]
                cleared[name] = False
            else:
                assert name not in breached
                if v < DEFAULT_LINES.warn_share * line.line:
                    cleared[name] = True


def test_line_signals_are_valid_alert_material() -> None:
    sigs = check_lines({"max_dpd": [(1, 28.0)], "score": [(1, 900.0)]})
    for s in sigs:
        msgspec.convert(s.rule_id, m.Label)
        for code in s.reason_codes:
            msgspec.convert(code, m.Label)
        for e in s.evidence:
            msgspec.json.decode(msgspec.json.encode(e), type=m.Evidence)
            assert not (isinstance(e.value, float) and not math.isfinite(e.value))


def test_line_state_follows_the_indicator_when_a_policy_reorders_or_changes_lines() -> None:
    dpd = EarlyWarningLine(indicator="max_dpd", line=30.0)
    util = EarlyWarningLine(indicator="utilisation", line=0.9)
    score = EarlyWarningLine(indicator="score", line=750.0)
    old = EarlyWarningLines(lines=(dpd, util))
    state, sigs = update_lines(None, {"max_dpd": 45.0, "utilisation": 0.2}, DAY, old)
    assert [s.reason_codes for s in sigs] == [["line_breached_max_dpd"]]
    # Reordered: the utilisation breach is new (it does not inherit max_dpd's flag), and
    # max_dpd's breach is not announced again.
    state, sigs = update_lines(state, {"max_dpd": 45.0, "utilisation": 0.95}, DAY + 1,
                               EarlyWarningLines(lines=(util, dpd)))
    assert [s.reason_codes for s in sigs] == [["line_breached_utilisation"]]
    # A line added in front, one dropped: the kept indicators keep their flags and points.
    state, sigs = update_lines(state, {"max_dpd": 45.0, "utilisation": 0.95, "score": 800.0},
                               DAY + 2, EarlyWarningLines(lines=(score, util)))
    assert [s.reason_codes for s in sigs] == [["line_breached_score"]]
    assert state.points[1][-4:] == (DAY + 1, 95, DAY + 2, 95)
    again, sigs = update_lines(state, {"utilisation": 0.95}, DAY + 2,
                               EarlyWarningLines(lines=(score, util)))
    assert again is state and sigs == []  # nothing changed: the very same state


def test_line_state_kept_before_keys_is_taken_by_position() -> None:
    # A state stored before LineState had keys (a two-element msgpack array).
    old = msgspec.msgpack.encode([[[DAY, 4500], [DAY, 20]], [2, 0]])
    state = msgspec.msgpack.decode(old, type=LineState)
    assert state.keys == ()
    lines = EarlyWarningLines(lines=(EarlyWarningLine(indicator="max_dpd", line=30.0),
                                     EarlyWarningLine(indicator="utilisation", line=0.9)))
    state, sigs = update_lines(state, {"max_dpd": 46.0, "utilisation": 0.2}, DAY + 1, lines)
    assert sigs == [] and state.flags == (2, 0) and len(state.keys) == 2
