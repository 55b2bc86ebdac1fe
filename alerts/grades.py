"""Risk grades from scores: bands with hysteresis, tiered responses, early-warning lines.

Pure functions over plain data (no Kafka, no Faust, no clock). The engine
scores a customer with :func:`detectors.scoring.score` and then calls
:func:`grade_outputs`, which turns the score into the customer's grade and,
when the grade changes, into a :class:`~schemas.models.RiskGrade` record for
the compacted ``risk-grades`` topic and, when it rises, into a RiskAlert-ready
:class:`~detectors.base.Signal` of kind ``risk_grade`` plus the tiered
responses the policy lists for the new grade.

Grades move up at once and down only with a margin (:func:`grade_for`), so a
score hovering at a band edge does not flap. :class:`EarlyWarningLines`
watch indicator values against configured lines (:func:`update_lines` keeps
the short per-customer history in a :class:`LineState`).

>>> from detectors.scoring import ScoreResult, ScoreState
>>> import datetime as dt
>>> res = ScoreResult(score=612, probability=0.7, model_probability=0.7, model_points=490,
...                   rule_points=122, behaviour_points=0, factors=[])
>>> out = grade_outputs(ScoreState(last_grade=1), res, customer_id="c1",
...                     trigger_event_id="e9", event_time=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
...                     day=20_513, policy_version="p1", model_version="m1")
>>> out.grade, out.previous, out.record.reason_codes, out.signal.severity, out.responses
('high', 'medium', ['grade_escalated_high'], 'high', ('limit_freeze', 'call'))
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, NamedTuple, get_args

import msgspec
from msgspec import Meta, Struct

from alerts.ids import event_fingerprint, output_id
from detectors.base import Evidence, Signal
from detectors.scoring import ScoreResult, ScoreState
from schemas.models import Grade, RiskGrade, Severity

__all__ = [
    "DEFAULT_GRADES",
    "DEFAULT_LINES",
    "DEFAULT_TIERS",
    "GRADES",
    "RESPONSES",
    "EarlyWarningLine",
    "EarlyWarningLines",
    "GradeOutcome",
    "GradePolicy",
    "LineState",
    "TierPolicy",
    "check_lines",
    "grade_for",
    "grade_outputs",
    "grade_outputs_positional",
    "responses_for",
    "update_lines",
]

#: Grades from best to worst; a :class:`~detectors.scoring.ScoreState` stores the index.
GRADES: Final[tuple[Grade, ...]] = get_args(Grade)
_GRADE_INDEX: Final = {g: i for i, g in enumerate(GRADES)}

_CFG: dict[str, Any] = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}

# --------------------------------------------------------------------------- #
# Grades
# --------------------------------------------------------------------------- #


class GradePolicy(Struct, **_CFG):
    """Score bands and the hysteresis margin.

    A score below ``medium`` is ``low``, below ``high`` is ``medium``, below
    ``critical`` is ``high``, else ``critical``. A customer moves up as soon
    as the score reaches a band, and down only once it falls below the
    current band's lower edge minus ``margin``. ``emit_initial_low``: whether
    a customer's first grade, when ``low``, is published (a ``risk-grades``
    record per customer) or only remembered.

    >>> GradePolicy().edges()
    (0, 300, 550, 750)
    >>> GradePolicy(high=200)
    Traceback (most recent call last):
    ...
    ValueError: band edges must rise: 0 < medium < high < critical <= 1000
    """

    medium: int = 300
    high: int = 550
    critical: int = 750
    margin: Annotated[int, Meta(ge=0)] = 25
    emit_initial_low: bool = False
    rule_version: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if not 0 < self.medium < self.high < self.critical <= 1000:
            raise ValueError("band edges must rise: 0 < medium < high < critical <= 1000")
        narrowest = min(self.medium, self.high - self.medium, self.critical - self.high)
        if self.margin >= narrowest:
            raise ValueError(
                f"margin ({self.margin}) must be below the narrowest band ({narrowest})"
            )

    def edges(self) -> tuple[int, int, int, int]:
        """Lower score edge of each grade, in :data:`GRADES` order."""
        return (0, self.medium, self.high, self.critical)


DEFAULT_GRADES = GradePolicy()


def _band(score: float, edges: tuple[int, int, int, int]) -> int:
    i = 0
    for k in (1, 2, 3):
        if score >= edges[k]:
            i = k
    return i


def grade_for(
    score: float, previous_grade: Grade | None, policy: GradePolicy = DEFAULT_GRADES
) -> Grade:
    """The grade for ``score`` given the customer's previous grade (``None``: a new customer).

    Up immediately; down only below the band edge minus the margin, and then
    to the band of ``score + margin`` (a score within the margin of an edge
    keeps the higher grade).

    >>> grade_for(560, "medium"), grade_for(530, "high"), grade_for(520, "high")
    ('high', 'high', 'medium')
    >>> grade_for(100, "critical"), grade_for(290, "high"), grade_for(290, None)
    ('low', 'medium', 'low')
    """
    edges = policy.edges()
    raw = _band(score, edges)
    if previous_grade is None:
        return GRADES[raw]
    prev = _GRADE_INDEX[previous_grade]
    if raw >= prev:
        return GRADES[raw]
    return GRADES[min(prev, _band(score + policy.margin, edges))]


# --------------------------------------------------------------------------- #
# Tiered responses
# --------------------------------------------------------------------------- #

#: Responses a tier may list: customer actions (``alerts.actions.TIER_ACTIONS``) and
#: responses that are none (``alerts.actions.TIER_NON_ACTIONS``: limit proposals, which
#: the credit-limit guardrails make, and monitoring).
RESPONSES: Final = frozenset(
    {
        "monitoring",
        "review_queue",
        "reminder",
        "sms",
        "call",
        "restructuring_offer",
        "collections_case",
        "limit_freeze",
        "limit_cut",
        "limit_restore",
    }
)


class TierPolicy(Struct, **_CFG):
    """The responses a grade escalation triggers, per grade (unknown names are errors).

    >>> TierPolicy().high
    ('limit_freeze', 'call')
    >>> TierPolicy(medium=("reminder", "e-mail"))
    Traceback (most recent call last):
    ...
    ValueError: unknown response 'e-mail' for grade medium
    """

    low: tuple[str, ...] = ()
    medium: tuple[str, ...] = ("review_queue", "reminder")
    high: tuple[str, ...] = ("limit_freeze", "call")
    critical: tuple[str, ...] = ("limit_cut", "collections_case")

    def __post_init__(self) -> None:
        for grade in GRADES:
            for r in getattr(self, grade):
                if r not in RESPONSES:
                    raise ValueError(f"unknown response {r!r} for grade {grade}")

    def responses_for(self, grade: Grade) -> tuple[str, ...]:
        """The configured responses of ``grade``."""
        return tuple(getattr(self, grade))


DEFAULT_TIERS = TierPolicy()


def responses_for(grade: Grade, tiers: TierPolicy = DEFAULT_TIERS) -> tuple[str, ...]:
    """The responses ``tiers`` configure for ``grade``.

    >>> responses_for("critical"), responses_for("low")
    (('limit_cut', 'collections_case'), ())
    """
    return tiers.responses_for(grade)


# --------------------------------------------------------------------------- #
# Grade outputs
# --------------------------------------------------------------------------- #

_RULE_ID: Final = "risk-grade"
_SEVERITY: Final[dict[Grade, Severity]] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}
_MAX_EVIDENCE: Final = 32


class GradeOutcome(NamedTuple):
    """What one scoring did to the customer's grade.

    ``record``: the ``risk-grades`` record when the grade changed (``None``
    otherwise); ``signal``: a ``risk_grade`` signal when it rose (for the
    engine to turn into a RiskAlert); ``responses``: the new grade's tiered
    responses when it rose.
    """

    state: ScoreState
    grade: Grade
    previous: Grade | None
    changed: bool
    record: RiskGrade | None
    signal: Signal | None
    responses: tuple[str, ...]


def _score_evidence(result: ScoreResult) -> Evidence:
    return Evidence(
        code="risk_score",
        text=f"risk score {result.score} of 1000 (model {result.model_points}, rules "
        f"{result.rule_points}, behaviour {result.behaviour_points}); probability of "
        f"reaching 30+ days past due within the horizon {100.0 * result.probability:.0f}%",
        value=result.score,
        unit="points",
    )


def grade_outputs(
    state: ScoreState,
    result: ScoreResult,
    *,
    customer_id: str,
    trigger_event_id: str,
    event_time: dt.datetime,
    day: int,
    policy_version: str,
    model_version: str,
    policy: GradePolicy = DEFAULT_GRADES,
    tiers: TierPolicy = DEFAULT_TIERS,
) -> GradeOutcome:
    """Grade a scored customer; the new state and any outputs.

    ``state`` is the state :func:`detectors.scoring.score` returned (its
    ``last_grade`` is the previous grade); the returned state records the new
    grade and, on a change, ``grade_day = day``. The record's id is a UUIDv5
    over the rule, the triggering event, the customer and the new grade, so a
    replay gives the same id; the record carries the score and the top factors
    as evidence, and so does the escalation signal.

    >>> from detectors.scoring import ScoreResult, ScoreState
    >>> res = ScoreResult(score=120, probability=0.1, model_probability=0.1, model_points=70,
    ...                   rule_points=50, behaviour_points=0, factors=[])
    >>> t = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    >>> out = grade_outputs(ScoreState(last_grade=2), res, customer_id="c1", trigger_event_id="e9",
    ...                     event_time=t, day=20_513, policy_version="p1", model_version="m1")
    >>> out.grade, out.record.reason_codes, out.signal, out.state.grade_day
    ('low', ['grade_lowered_low'], None, 20513)
    >>> again = grade_outputs(out.state, res, customer_id="c1", trigger_event_id="e10",
    ...                       event_time=t, day=20_514, policy_version="p1", model_version="m1")
    >>> again.changed, again.record, again.state is out.state
    (False, None, True)
    """
    return grade_outputs_positional(state, result, customer_id, trigger_event_id, event_time,
                                    day, policy_version, model_version, policy, tiers)


def grade_outputs_positional(
    state: ScoreState,
    result: ScoreResult,
    customer_id: str,
    trigger_event_id: str,
    event_time: dt.datetime,
    day: int,
    policy_version: str,
    model_version: str,
    policy: GradePolicy,
    tiers: TierPolicy,
    /,
) -> GradeOutcome:
    """:func:`grade_outputs` with every argument given by position, in its order (for the
    engine's once-a-day re-score: ten keyword arguments cost a Python call about 0.4 us).

    >>> from detectors.scoring import ScoreResult, ScoreState
    >>> res = ScoreResult(score=120, probability=0.1, model_probability=0.1, model_points=70,
    ...                   rule_points=50, behaviour_points=0, factors=[])
    >>> t = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    >>> grade_outputs_positional(ScoreState(last_grade=0), res, "c1", "e9", t, 20_513, "p1",
    ...                          "m1", DEFAULT_GRADES, DEFAULT_TIERS).changed
    False
    """
    previous: Grade | None = GRADES[state.last_grade] if 0 <= state.last_grade < 4 else None
    grade = grade_for(result.score, previous, policy)
    if grade == previous:
        return GradeOutcome(state, grade, previous, False, None, None, ())
    new_state = msgspec.structs.replace(state, last_grade=_GRADE_INDEX[grade], grade_day=day)
    base = _GRADE_INDEX[previous] if previous is not None else 0
    rising = _GRADE_INDEX[grade] > base
    if previous is None and not rising and not policy.emit_initial_low:
        return GradeOutcome(new_state, grade, previous, True, None, None, ())
    if rising:
        code = f"grade_escalated_{grade}"
    elif previous is None:
        code = f"grade_initial_{grade}"
    else:
        code = f"grade_lowered_{grade}"
    evidence = [_score_evidence(result)]
    if previous is not None:
        evidence.append(Evidence(code="previous_grade", text=f"was {previous}", value=previous))
    evidence.extend(result.factors)
    evidence = evidence[:_MAX_EVIDENCE]
    record = RiskGrade(
        grade_id=output_id(
            _RULE_ID, policy.rule_version, trigger_event_id, f"{customer_id}:{grade}"
        ),
        customer_id=customer_id,
        trigger_event_id=trigger_event_id,
        event_time=event_time,
        policy_version=policy_version,
        model_version=model_version,
        reason_codes=[code],
        evidence=evidence,
        grade=grade,
        score=min(1000, max(0, result.score)),
        previous_grade=previous,
    )
    signal = None
    responses: tuple[str, ...] = ()
    if rising:
        signal = Signal(
            kind="risk_grade",
            rule_id=_RULE_ID,
            rule_version=policy.rule_version,
            severity=_SEVERITY[grade],
            reason_codes=[code],
            evidence=list(evidence),
            discriminator=grade,
        )
        responses = tiers.responses_for(grade)
    return GradeOutcome(new_state, grade, previous, True, record, signal, responses)


# --------------------------------------------------------------------------- #
# Early-warning lines
# --------------------------------------------------------------------------- #

_INDICATOR = r"^[a-z0-9][a-z0-9_]*(?!\n)$"  # no trailing newline (Python's $)
_CLEAR, _WARN, _BREACH = 0, 1, 2
_Q = 100  # fixed-point hundredths of stored indicator values


class EarlyWarningLine(Struct, **_CFG):
    """One indicator line: breached at or beyond ``line`` (above it, or below if not ``above``).

    >>> EarlyWarningLine(indicator="utilisation", line=0.9).severity
    'high'
    """

    indicator: Annotated[str, Meta(pattern=_INDICATOR, max_length=40)]
    line: Annotated[float, Meta(gt=0)]
    above: bool = True
    severity: Severity = "high"
    warn_severity: Severity = "low"


class EarlyWarningLines(Struct, **_CFG):
    """The configured early-warning lines.

    A value is in the *warning* zone from ``warn_share`` of the way to its
    line (``value >= warn_share * line`` for a line above, ``value <= line /
    warn_share`` for one below). The trend (least-squares slope per day) is
    taken over the last ``trend_points`` values (at most one per day).

    >>> [x.indicator for x in EarlyWarningLines().lines]
    ['max_dpd', 'utilisation', 'score']
    """

    lines: tuple[EarlyWarningLine, ...] = (
        EarlyWarningLine(indicator="max_dpd", line=30.0),
        EarlyWarningLine(indicator="utilisation", line=0.9, severity="medium"),
        EarlyWarningLine(indicator="score", line=750.0),
    )
    warn_share: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.8
    trend_points: Annotated[int, Meta(ge=2, le=16)] = 6
    rule_version: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        names = [x.indicator for x in self.lines]
        if len(names) != len(set(names)):
            raise ValueError("each indicator may have one line")


DEFAULT_LINES = EarlyWarningLines()


def _status(line: EarlyWarningLine, v: float, warn_share: float) -> int:
    if line.above:
        if v >= line.line:
            return _BREACH
        return _WARN if v >= warn_share * line.line else _CLEAR
    if v <= line.line:
        return _BREACH
    return _WARN if v * warn_share <= line.line else _CLEAR


def _slope(points: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope per day, or ``None`` with fewer than two distinct days.

    >>> round(_slope([(1, 10.0), (2, 12.0), (4, 16.0)]), 9), _slope([(1, 3.0)])
    (2.0, None)
    """
    n = len(points)
    if n < 2:
        return None
    md = sum(d for d, _ in points) / n
    mv = sum(v for _, v in points) / n
    sxx = sum((d - md) ** 2 for d, _ in points)
    if sxx == 0:
        return None
    return sum((d - md) * (v - mv) for d, v in points) / sxx


def _fmt(indicator: str, v: float) -> str:
    if indicator == "utilisation" or indicator.endswith(("_share", "_ratio")):
        return f"{100.0 * v:.0f}%"
    return f"{v:.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:.2f}"


_LABELS: Final = {
    "max_dpd": "days past due",
    "utilisation": "utilisation",
    "score": "risk score",
}


def _line_signal(
    line: EarlyWarningLine,
    status: int,
    history: Sequence[tuple[int, float]],
    cfg: EarlyWarningLines,
) -> Signal:
    day, v = history[-1]
    name = line.indicator
    label = _LABELS.get(name, name.replace("_", " "))
    side = "at or above" if line.above else "at or below"
    evidence = [
        Evidence(
            code=name,
            text=f"{label} {_fmt(name, v)}",
            value=round(v, 4),
        ),
        Evidence(
            code="line",
            text=f"early-warning line {_fmt(name, line.line)} ({side})",
            value=line.line,
        ),
    ]
    if status == _BREACH:
        kind, severity = "breached", line.severity
    else:
        kind, severity = "approaching", line.warn_severity
        slope = _slope(history)
        toward = None if slope is None else (slope if line.above else -slope)
        if toward is not None and toward > 0:
            gap = (line.line - v) if line.above else (v - line.line)
            days = max(1, math.ceil(gap / toward))
            evidence.append(
                Evidence(
                    code="projected_days_to_line",
                    text=f"at the trend of the last {len(history)} values "
                    f"({'+' if slope and slope > 0 else ''}{slope:.3g} a day) the line is "
                    f"reached in about {days} days",
                    value=days,
                    unit="days",
                )
            )
        else:
            evidence.append(
                Evidence(
                    code="trend",
                    text=f"no trend toward the line over the last {len(history)} values",
                )
            )
    return Signal(
        kind="early_warning",
        rule_id=f"ewl-{name}",
        rule_version=cfg.rule_version,
        severity=severity,
        reason_codes=[f"line_{kind}_{name}"],
        evidence=evidence,
        discriminator=f"{name}:{kind}@{day}",
    )


def check_lines(
    history: Mapping[str, Sequence[tuple[int, float]]],
    lines: EarlyWarningLines = DEFAULT_LINES,
    warn_share: float | None = None,
) -> list[Signal]:
    """Where each indicator stands against its line now (stateless, by level).

    ``history`` maps an indicator to its recent ``(epoch_day, value)`` points,
    oldest first; the latest point is judged: a signal ``line_breached_<name>``
    when it is at or beyond its line, ``line_approaching_<name>`` (with the
    projected days to the line from the least-squares trend of the last
    ``trend_points``) when it is in the warning zone, nothing otherwise.
    ``warn_share`` overrides the configured one. :func:`update_lines` is the
    edge-triggered, stateful form.

    >>> sigs = check_lines({"utilisation": [(1, 0.70), (2, 0.78), (3, 0.82)], "max_dpd": [(3, 31)]})
    >>> [s.reason_codes[0] for s in sigs]
    ['line_breached_max_dpd', 'line_approaching_utilisation']
    >>> sigs[1].evidence[2].text
    'at the trend of the last 3 values (+0.06 a day) the line is reached in about 2 days'
    """
    share = lines.warn_share if warn_share is None else warn_share
    out: list[Signal] = []
    for line in lines.lines:
        points = history.get(line.indicator)
        if not points:
            continue
        recent = [(int(d), float(v)) for d, v in points[-lines.trend_points :]]
        status = _status(line, recent[-1][1], share)
        if status != _CLEAR:
            out.append(_line_signal(line, status, recent, lines))
    return out


class LineState(Struct, frozen=True, array_like=True, gc=False):
    """Per-customer history for :func:`update_lines`, bounded by ``trend_points`` per line.

    ``points[i]`` is line ``i``'s flat ``(day, value in hundredths, ...)``
    history, oldest first, one point per day; ``flags[i]`` what was last
    announced (0 clear, 1 warning, 2 breached); ``keys[i]`` a 32-bit
    fingerprint of line ``i``'s indicator. A policy that reorders, adds or
    drops lines carries each indicator's history and flag over by its key
    (a new indicator starts clear). A state without keys (kept before they
    were) is taken by position when the number of lines matches, else reset.

    >>> import msgspec
    >>> len(msgspec.msgpack.encode(LineState()))
    4
    """

    points: tuple[tuple[int, ...], ...] = ()
    flags: tuple[int, ...] = ()
    keys: tuple[int, ...] = ()


class _LinePlan(NamedTuple):
    """What :func:`update_lines` reads of one :class:`EarlyWarningLines` (a policy's
    lines are immutable: built once per lines object)."""

    lines: EarlyWarningLines
    #: The 32-bit fingerprints of the lines' indicators, in line order.
    keys: tuple[int, ...]
    #: Per line: (index, indicator, line, above, edge, warning edge of a line above).
    specs: tuple[tuple[int, str, EarlyWarningLine, bool, float, float], ...]
    #: Flat history length kept per line (``2 * trend_points``).
    keep: int


#: The plan of the last lines seen (None: none yet).
_PLAN_CACHE: list[_LinePlan | None] = [None]


def _line_plan(lines: EarlyWarningLines) -> _LinePlan:
    """The :class:`_LinePlan` of ``lines``, built once per lines object."""
    plan = _PLAN_CACHE[0]
    if plan is None or plan.lines is not lines:
        keys = tuple(event_fingerprint(line.indicator) & 0xFFFF_FFFF for line in lines.lines)
        specs = tuple((i, line.indicator, line, line.above, line.line,
                       lines.warn_share * line.line) for i, line in enumerate(lines.lines))
        plan = _PLAN_CACHE[0] = _LinePlan(lines, keys, specs, 2 * lines.trend_points)
    return plan


def _line_keys(lines: EarlyWarningLines) -> tuple[int, ...]:
    """The 32-bit fingerprints of the lines' indicators, in line order."""
    return _line_plan(lines).keys


def _rekeyed(state: LineState | None, keys: tuple[int, ...]) -> LineState:
    """``state`` laid out for lines with ``keys`` (by indicator, see :class:`LineState`)."""
    n = len(keys)
    if state is None:
        return LineState(points=((),) * n, flags=(0,) * n, keys=keys)
    if not state.keys or len(state.keys) != len(state.flags):
        if len(state.flags) == n and len(state.points) == n:
            return LineState(points=state.points, flags=state.flags, keys=keys)
        return LineState(points=((),) * n, flags=(0,) * n, keys=keys)
    where = {k: j for j, k in enumerate(state.keys)}
    old = [where.get(k) for k in keys]
    return LineState(
        points=tuple(() if j is None else state.points[j] for j in old),
        flags=tuple(0 if j is None else state.flags[j] for j in old),
        keys=keys,
    )


def update_lines(
    state: LineState | None,
    values: Mapping[str, float],
    day: int,
    lines: EarlyWarningLines = DEFAULT_LINES,
) -> tuple[LineState, list[Signal]]:
    """Add today's indicator values; signal only when a line is crossed or approached.

    A breach signals once when the indicator reaches its line; a warning once
    when it enters the warning zone from below it. Both re-arm only after the
    value falls back out of the warning zone, so a value wobbling around a
    line does not repeat alerts.
    Indicators missing from ``values`` keep their history. A value for an
    earlier day than the newest kept point is ignored.

    >>> st, out = None, []
    >>> for d, u in enumerate([0.5, 0.6, 0.75, 0.85, 0.93, 0.89, 0.92, 0.5, 0.8]):
    ...     st, sigs = update_lines(st, {"utilisation": u}, 100 + d)
    ...     out.append([s.reason_codes[0].split("_")[1] for s in sigs])
    >>> out
    [[], [], ['approaching'], [], ['breached'], [], [], [], ['approaching']]
    """
    plan = _PLAN_CACHE[0]
    if plan is None or plan.lines is not lines:  # (_line_plan's check, read here first)
        plan = _line_plan(lines)
    _lines, keys, specs, keep = plan
    laid = (state if state is not None and state.keys == keys and len(state.flags) == len(keys)
            else _rekeyed(state, keys))
    points = list(laid.points)
    flags = list(laid.flags)
    signals: list[Signal] = []
    for i, indicator, line, above, edge, warn_edge in specs:
        v = values.get(indicator)
        if v is None or not math.isfinite(v):
            continue
        flat = points[i]
        q = round(float(v) * _Q)
        if flat:
            last = flat[-2]
            if last > day:
                continue
            # (*flat[:-2], day, q) or (*flat, day, q), by concatenation (cheaper)
            flat = flat[:-2] + (day, q) if last == day else flat + (day, q)  # noqa: RUF005
            if len(flat) > keep:
                flat = flat[-keep:]
        else:
            flat = (day, q)[-keep:]
        points[i] = flat
        if above:  # _status(line, q / _Q, lines.warn_share), inlined for a line above
            x = q / _Q
            status = _BREACH if x >= edge else _WARN if x >= warn_edge else _CLEAR
        else:
            status = _status(line, q / _Q, lines.warn_share)
        was = flags[i]
        if (status == _BREACH and was != _BREACH) or (status == _WARN and was == _CLEAR):
            history = [(flat[j], flat[j + 1] / _Q) for j in range(0, len(flat), 2)]
            signals.append(_line_signal(line, status, history, lines))
        flags[i] = _BREACH if was == _BREACH and status == _WARN else status
    new = LineState(tuple(points), tuple(flags), keys)
    return (state if state is not None and new == state else new), signals
