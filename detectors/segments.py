"""Segment and sector deterioration: portfolio KPIs, sector indicators, tightening.

A :class:`SegmentMonitor` watches the portfolio by *segment* -- the triple
``(sector, product, region)`` -- and the external indicators of each sector,
and answers one question for the integrator: should customers of this segment
be treated more strictly right now? The answer is a :class:`Tightening`
(points added to the risk score, raises suspended, cuts made bigger), applied
when scoring and when proposing limits (:func:`alerts.limits.propose` takes it).
:meth:`SegmentMonitor.changes` reports when a segment or sector starts or stops
being tightened, as :class:`~detectors.base.Signal` of kind ``"segment"``.

Pure and event-time only: every method takes the epoch day (days since
1970-01-01, UTC) of the event it is about; there is no clock. Same observations
in the same order give the same answers, and the KPI counters do not depend on
the order at all.

What is kept (bounded)
----------------------

* **KPI counters** per segment per tumbling event-time window of
  ``window_days`` days (window ``n`` holds epoch days ``n * window_days`` to
  ``(n + 1) * window_days - 1``): accounts observed, of them overdue, newly
  delinquent, alerts, severe alerts (high/critical), scores and their sum.
  Only the last ``keep_windows`` windows up to the newest one seen are kept; an
  observation for an older window is dropped (counted in ``dropped_late``).
* **Cardinality**: each dimension admits either the configured allow-list
  (``sectors``, ``products``, ``regions``) or, when that is empty, the first
  ``max_*`` distinct values seen; every other value falls into ``"other"``. So
  there are at most ``(max_sectors + 1) * (max_products + 1) * (max_regions + 1)``
  segments, each with at most ``keep_windows`` windows of seven integers.
* **Indicator series** per ``(sector, indicator)`` for the indicators named in
  ``config.indicators``: the last ``indicator_history`` values by day, and a
  checkpoint of the tightening state before the oldest of them.
* What :meth:`changes` has announced, one entry per tightened subject.

When a segment is tightened
---------------------------

* **Sector indicator** (e.g. ``prosperity_index``): tightening starts when a value
  is ``drop_pct`` % or more below the average of the previous ``trailing`` values,
  or below the level ``below``. The average at the start is frozen as the
  *baseline*: the tightening stops only when a value is back within
  ``recover_pct`` % of that baseline (and at or above ``recover_above``), and not
  before ``min_tightened_days`` days. Comparing with the frozen baseline, not
  with a moving average, is deliberate: a moving average sinks with the
  indicator, so a sector that fell and stayed down would look "recovered" after
  a few periods. The state is a fold over the values in day order, so a late
  value (newer than the checkpoint) lands at its place and the answer is the
  same as if it had arrived in order.
* **Segment rates**, judged on complete windows only (the window before the
  one holding ``day``) with at least ``min_accounts`` accounts: tightening
  starts when the new-delinquency rate is above ``new_delinquency_rate_line``
  or the overdue rate above ``overdue_rate_line``; it stops when both are at
  or below ``rate_recover_factor`` times their lines, after at least
  ``min_tightened_windows`` windows. This hysteresis is a fold over the
  retained windows only, so it remembers at most ``keep_windows`` windows.

Streaming and several workers
-----------------------------

In the stream, each worker sees only the customers of its own partitions, so
its KPI counters are a *sample* of the portfolio (an unbiased one when
customers are spread by a hash of their id, but noisier: ``min_accounts`` is
checked against the worker's own counts). Sector indicators are broadcast
reference data and reach every worker, so the indicator part is the same on
every worker (up to arrival order of late values, which the fold absorbs).
:meth:`SegmentMonitor.merge` combines monitors, e.g. in a later aggregation
step over all workers: window counters are summed and the admitted values are
united, which is associative and commutative. The KPIs of a merged monitor are
exact when every worker admitted the same values -- guaranteed with
allow-lists; with first-come admission a value folded into ``"other"`` on one
worker but admitted on another stays split. Indicator series and announcements
are taken from the left operand when both have them (they are identical when
broadcast), which keeps ``merge`` associative.

The integrator must report each account at most once per window
(:meth:`SegmentMonitor.observe_account` counts observations, not distinct
accounts: memory stays bounded because no account id is kept), e.g. on its first
event in a window, with ``newly_delinquent=True`` when it entered delinquency
in that window; an onset later in the same window is reported with
:meth:`SegmentMonitor.observe_onset`.

>>> mon = SegmentMonitor(SegmentConfig(min_accounts=1))
>>> for day, value in [(0, 100.0), (30, 101.0), (60, 99.5), (90, 88.0)]:
...     mon.observe_indicator("retail", "prosperity_index", value, day)
>>> t = mon.tightening("retail", "credit_card", "north", 90)
>>> t.score_add, t.limit_raise_suspended, t.cut_step_multiplier, t.codes
(50, True, 1.5, ['sector_indicator_drop'])
>>> t.reasons
['sector retail: prosperity_index 88 is 12.1% below its level before the fall (100.2)']
>>> [(s.reason_codes, s.severity) for s in mon.changes(90)]
[(['sector_indicator_drop'], 'medium')]
>>> mon.changes(91)
[]
>>> mon.tightening("hospitality", "credit_card", "north", 90).active
False
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Iterable
from typing import Annotated, Any, Final, NamedTuple

from msgspec import Meta, Struct, field

from detectors.base import Evidence, Signal

__all__ = [
    "NO_TIGHTENING",
    "OTHER",
    "IndicatorRule",
    "SegmentConfig",
    "SegmentKey",
    "SegmentMonitor",
    "Tightening",
]

#: A segment: ``(sector, product, region)``.
SegmentKey = tuple[str, str, str]

#: Where values beyond the cardinality bound go.
OTHER: Final = "other"

_CFG: dict[str, Any] = {"kw_only": True, "frozen": True, "forbid_unknown_fields": True}
_EPOCH: Final = dt.date(1970, 1, 1)

# Counter slots of one segment in one window.
_ACC, _OVD, _NEW, _ALR, _SEV, _NSC, _SSC = range(7)
_N_COUNTERS: Final = 7
_SEVERE: Final = frozenset({"high", "critical"})


# --------------------------------------------------------------------------- #
# Configuration and result
# --------------------------------------------------------------------------- #


class IndicatorRule(Struct, **_CFG):
    """When one sector indicator tightens its sector (and when it stops).

    >>> IndicatorRule(drop_pct=5.0, recover_pct=2.0).trailing
    3
    >>> IndicatorRule(drop_pct=2.0, recover_pct=3.0)
    Traceback (most recent call last):
    ...
    ValueError: recover_pct must be below drop_pct (hysteresis)
    """

    #: Start when a value is this many percent below the average of the previous values ...
    drop_pct: Annotated[float, Meta(gt=0, le=100)] = 5.0
    #: ... over at most this many previous values (at least one is needed).
    trailing: Annotated[int, Meta(ge=1, le=24)] = 3
    #: Stop when a value is back within this many percent of the pre-fall baseline.
    recover_pct: Annotated[float, Meta(ge=0, le=100)] = 2.0
    #: Also start when a value is below this level (None: no level rule) ...
    below: float | None = None
    #: ... and stop only at or above this level (None: ``below``).
    recover_above: float | None = None
    #: A tightening lasts at least this many days.
    min_tightened_days: Annotated[int, Meta(ge=0, le=3660)] = 14

    def __post_init__(self) -> None:
        if self.recover_pct >= self.drop_pct:
            raise ValueError("recover_pct must be below drop_pct (hysteresis)")
        if self.recover_above is not None and (
            self.below is None or self.recover_above < self.below
        ):
            raise ValueError("recover_above needs below and must be >= below")


def _default_indicators() -> dict[str, IndicatorRule]:
    return {"prosperity_index": IndicatorRule()}


class SegmentConfig(Struct, **_CFG):
    """Windows, cardinality bounds and tightening lines of the segment monitor.

    >>> c = SegmentConfig()
    >>> c.window_days, c.keep_windows, sorted(c.indicators)
    (7, 8, ['prosperity_index'])
    >>> SegmentConfig(sectors=("a", "b"), max_sectors=1)
    Traceback (most recent call last):
    ...
    ValueError: more sectors listed than max_sectors
    """

    #: Length of the tumbling event-time windows (days).
    window_days: Annotated[int, Meta(ge=1, le=92)] = 7
    #: Windows kept per segment (the newest and the ones before it).
    keep_windows: Annotated[int, Meta(ge=2, le=53)] = 8
    #: Allow-lists per dimension (empty: the first ``max_*`` values seen are admitted).
    sectors: tuple[str, ...] = ()
    products: tuple[str, ...] = ("credit_card", "installment_plan", "personal_loan")
    regions: tuple[str, ...] = ()
    max_sectors: Annotated[int, Meta(ge=1, le=256)] = 32
    max_products: Annotated[int, Meta(ge=1, le=32)] = 8
    max_regions: Annotated[int, Meta(ge=1, le=256)] = 32
    #: Sector indicators watched, by name (other indicators are ignored).
    indicators: dict[str, IndicatorRule] = field(default_factory=_default_indicators)
    #: Indicator values kept per (sector, indicator).
    indicator_history: Annotated[int, Meta(ge=2, le=120)] = 12
    #: A complete window above either line tightens the segment ...
    new_delinquency_rate_line: Annotated[float, Meta(gt=0, le=1)] = 0.02
    overdue_rate_line: Annotated[float, Meta(gt=0, le=1)] = 0.10
    #: ... until both rates are at or below this fraction of their lines.
    rate_recover_factor: Annotated[float, Meta(gt=0, lt=1)] = 0.8
    #: Windows with fewer accounts observed do not count.
    min_accounts: Annotated[int, Meta(ge=1)] = 30
    #: A rate tightening lasts at least this many windows.
    min_tightened_windows: Annotated[int, Meta(ge=1, le=52)] = 2
    #: Score points added for customers of a tightened sector / segment (summed, capped).
    indicator_score_add: Annotated[int, Meta(ge=0, le=1000)] = 50
    rate_score_add: Annotated[int, Meta(ge=0, le=1000)] = 50
    max_score_add: Annotated[int, Meta(ge=0, le=1000)] = 100
    #: Limit-cut steps are multiplied by this while tightened (still capped by the policy).
    cut_step_multiplier: Annotated[float, Meta(ge=1, le=10)] = 1.5
    #: Whether limit raises are suspended while tightened.
    suspend_raises: bool = True
    rule_version: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        for name, listed, bound in (
            ("sectors", self.sectors, self.max_sectors),
            ("products", self.products, self.max_products),
            ("regions", self.regions, self.max_regions),
        ):
            if len(listed) > bound:
                raise ValueError(f"more {name} listed than max_{name}")
        if self.indicator_history <= max(
            (r.trailing for r in self.indicators.values()), default=1
        ):
            raise ValueError("indicator_history must exceed every indicator's trailing")


class Tightening(Struct, kw_only=True, frozen=True):
    """How to treat customers of a segment right now (the neutral value: no tightening).

    ``reasons`` are plain-words sentences with the numbers (for evidence),
    ``codes`` the matching reason codes.

    >>> NO_TIGHTENING.active, NO_TIGHTENING.score_add, NO_TIGHTENING.cut_step_multiplier
    (False, 0, 1.0)
    """

    score_add: int = 0
    limit_raise_suspended: bool = False
    cut_step_multiplier: float = 1.0
    reasons: list[str] = []
    codes: list[str] = []

    @property
    def active(self) -> bool:
        """Whether anything is tightened."""
        return bool(self.codes)


#: No tightening.
NO_TIGHTENING: Final = Tightening()


# --------------------------------------------------------------------------- #
# Indicator state machine
# --------------------------------------------------------------------------- #


class _Ind(NamedTuple):
    """Tightening state of one indicator series after its latest value."""

    tightened: bool = False
    since: int = -1  # day the tightening started
    baseline: float | None = None  # trailing average frozen at the start
    recovered: bool = False  # latest value meets the stop condition
    day: int = -1  # day of the latest value (-1: none)
    value: float = 0.0
    avg: float | None = None  # trailing average before the latest value
    prev: tuple[float, ...] = ()  # the last ``trailing`` values


def _settle(st: _Ind, day: int, rule: IndicatorRule) -> _Ind:
    """Let time pass to ``day``: a recovered tightening ends once its minimum has passed."""
    if st.tightened and st.recovered and day - st.since >= rule.min_tightened_days:
        return st._replace(tightened=False, recovered=False)
    return st


def _step(st: _Ind, day: int, value: float, rule: IndicatorRule) -> _Ind:
    """Fold one value (in day order) into the state.

    >>> r = IndicatorRule(min_tightened_days=0)
    >>> s = _Ind()
    >>> for d, v in [(0, 100.0), (1, 100.0), (2, 90.0), (3, 95.0), (4, 99.0)]:
    ...     s = _step(s, d, v, r)
    ...     print(d, s.tightened, s.recovered)
    0 False False
    1 False False
    2 True False
    3 True False
    4 True True
    >>> _settle(s, 4, r).tightened
    False
    """
    st = _settle(st, day, rule)
    avg = math.fsum(st.prev) / len(st.prev) if st.prev else None
    tightened, since, baseline = st.tightened, st.since, st.baseline
    if not tightened:
        dropped = avg is not None and avg > 0 and (avg - value) * 100.0 >= rule.drop_pct * avg
        low = rule.below is not None and value < rule.below
        if dropped or low:
            tightened, since, baseline = True, day, (avg if dropped else None)
    recovered = False
    if tightened:
        level = rule.recover_above if rule.recover_above is not None else rule.below
        recovered = (
            baseline is None or value * 100.0 >= baseline * (100.0 - rule.recover_pct)
        ) and (level is None or value >= level)
    prev = (*st.prev, value)[-rule.trailing :]
    return _Ind(tightened, since, baseline if tightened else None, recovered, day, value, avg, prev)


class _Series:
    """Retained values of one (sector, indicator), oldest first, after a checkpoint."""

    __slots__ = ("base", "values")

    def __init__(self) -> None:
        self.base = _Ind()
        self.values: list[tuple[int, float]] = []

    def __getstate__(self) -> tuple[_Ind, list[tuple[int, float]]]:
        return (self.base, self.values)

    def __setstate__(self, st: tuple[_Ind, list[tuple[int, float]]]) -> None:
        self.base, self.values = st


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _date(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _kpi(counters: list[int], window: int, window_days: int) -> dict[str, Any]:
    acc = counters[_ACC]
    return {
        "window_start": _date(window * window_days),
        "window_days": window_days,
        "accounts": acc,
        "overdue": counters[_OVD],
        "newly_delinquent": counters[_NEW],
        "alerts": counters[_ALR],
        "severe_alerts": counters[_SEV],
        "scores": counters[_NSC],
        "overdue_rate": _rate(counters[_OVD], acc),
        "new_delinquency_rate": _rate(counters[_NEW], acc),
        "alert_rate": _rate(counters[_ALR], acc),
        "average_score": _rate(counters[_SSC], counters[_NSC]),
    }


#: A window number below every real one (``SegmentMonitor._rate_memo_last`` of no entry).
_NO_WINDOW = -(1 << 62)


class _RateState(NamedTuple):
    tightened: bool
    since: int  # window the tightening started (-1: never)
    codes: tuple[str, ...]  # rates above their lines at the start
    window: int  # latest window with enough accounts (-1: none)
    counters: tuple[int, ...]  # its counters


_RATE_CODES: Final = ("segment_new_delinquency_rate_high", "segment_overdue_rate_high")


# --------------------------------------------------------------------------- #
# The monitor
# --------------------------------------------------------------------------- #


class SegmentMonitor:
    """Bounded per-segment KPIs, sector indicators and the tightening they imply.

    Plain Python, pickleable, deterministic; see the module docstring for what is
    kept and how decisions are made. Days are epoch days.

    >>> mon = SegmentMonitor(SegmentConfig(window_days=7, min_accounts=2))
    >>> key = ("retail", "credit_card", "north")
    >>> for i in range(4):
    ...     mon.observe_account(key, 7, overdue=i < 2, newly_delinquent=i == 0)
    >>> mon.observe_score(key, 8, 700)
    >>> k = mon.kpis(10)[key]
    >>> k["accounts"], k["overdue_rate"], k["new_delinquency_rate"], k["average_score"]
    (4, 0.5, 0.25, 700.0)
    >>> mon.tightening("retail", "credit_card", "north", 13).active  # window still open
    False
    >>> mon.tightening("retail", "credit_card", "north", 14).codes
    ['segment_new_delinquency_rate_high', 'segment_overdue_rate_high']
    """

    def __init__(self, config: SegmentConfig | None = None) -> None:
        self.config = config or SegmentConfig()
        c = self.config
        self._allow: tuple[frozenset[str], ...] = (
            frozenset(c.sectors),
            frozenset(c.products),
            frozenset(c.regions),
        )
        self._bound = (c.max_sectors, c.max_products, c.max_regions)
        #: First-come admitted values per dimension (unused where an allow-list is set).
        self._admitted: tuple[set[str], set[str], set[str]] = (set(), set(), set())
        #: Newest window seen (None: no observation yet).
        self._newest: int | None = None
        #: window -> segment -> counters.
        self._windows: dict[int, dict[SegmentKey, list[int]]] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        #: Announced tightened subjects -> the day their tightening started.
        self._reported: dict[str, int] = {}
        #: Observations refused because their window had already left the retention.
        self.dropped_late = 0
        #: Indicator values refused (sector beyond the bound, too late or not finite).
        self.ignored_indicators = 0
        self._cache: dict[tuple[str, str], _Ind] = {}
        #: _rate_state results by (segment, last complete window); emptied whenever
        #: counters are handed out for an update (_counters) of a window one of them
        #: read, or the retained windows move; never pickled.
        self._rate_memo: dict[tuple[SegmentKey, int], _RateState] = {}
        #: The newest window any entry of _rate_memo read (_NO_WINDOW: none).
        self._rate_memo_last = _NO_WINDOW
        #: key() by its arguments; emptied whenever a value is admitted; never pickled.
        self._key_memo: dict[tuple[str, str, str], SegmentKey] = {}
        #: The configured indicators, sorted (never pickled: the config's).
        self._indicator_names = tuple(sorted(c.indicators))

    # -- pickling (the caches are rebuilt on demand) ---------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        state.pop("_rate_memo", None)
        state.pop("_rate_memo_last", None)
        state.pop("_key_memo", None)
        state.pop("_indicator_names", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rate_memo = {}
        self._rate_memo_last = _NO_WINDOW
        self._key_memo = {}
        self._indicator_names = tuple(sorted(self.config.indicators))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentMonitor):
            return NotImplemented
        return self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]

    def _comparable(self) -> tuple[Any, ...]:
        return (
            self.config,
            self._admitted,
            self._newest,
            self._windows,
            {k: (s.base, s.values) for k, s in self._series.items()},
            self._reported,
            self.dropped_late,
            self.ignored_indicators,
        )

    # -- cardinality ------------------------------------------------------------

    def _canon(self, dim: int, value: str, admit: bool) -> str:
        allow = self._allow[dim]
        if allow:
            return value if value in allow else OTHER
        admitted = self._admitted[dim]
        if value in admitted:
            return value
        if len(admitted) < self._bound[dim]:
            if admit:
                admitted.add(value)
                self._key_memo.clear()  # key() of this value (and past the bound) changes
            return value
        return OTHER

    def key(self, sector: str, product: str, region: str) -> SegmentKey:
        """The segment these values fall into (without admitting new values).

        >>> mon = SegmentMonitor(SegmentConfig(max_regions=1))
        >>> mon.observe_account(("retail", "credit_card", "north"), 0, False, False)
        >>> mon.key("retail", "credit_card", "south"), mon.key("retail", "mortgage", "north")
        (('retail', 'credit_card', 'other'), ('retail', 'other', 'north'))
        """
        memo = self._key_memo.get((sector, product, region))
        if memo is not None:
            return memo
        key = (
            self._canon(0, sector, False),
            self._canon(1, product, False),
            self._canon(2, region, False),
        )
        if len(self._key_memo) >= 4_096:
            self._key_memo.clear()
        self._key_memo[(sector, product, region)] = key
        return key

    def _admit(self, key: SegmentKey) -> SegmentKey:
        return (
            self._canon(0, key[0], True),
            self._canon(1, key[1], True),
            self._canon(2, key[2], True),
        )

    # -- observations -----------------------------------------------------------

    def _counters(self, key: SegmentKey, day: int) -> list[int] | None:
        """The counters of ``key`` in the window of ``day`` (None: window already dropped)."""
        c = self.config
        w = day // c.window_days
        if self._newest is None or w > self._newest or w <= self._rate_memo_last:
            # The retained windows move, or a memoised fold read this window (a fold of
            # windows before the one being counted, the usual case, stays as it is).
            self._rate_memo.clear()
            self._rate_memo_last = _NO_WINDOW
        if self._newest is None or w > self._newest:
            self._newest = w
            oldest = w - c.keep_windows + 1
            for old in [x for x in self._windows if x < oldest]:
                del self._windows[old]
        elif w <= self._newest - c.keep_windows:
            self.dropped_late += 1
            return None
        seg = self._admit(key)
        window = self._windows.setdefault(w, {})
        counters = window.get(seg)
        if counters is None:
            counters = window[seg] = [0] * _N_COUNTERS
        return counters

    def observe_account(
        self, segment_key: SegmentKey, day: int, overdue: bool, newly_delinquent: bool
    ) -> None:
        """Count one account observation (at most one per account per window)."""
        counters = self._counters(segment_key, day)
        if counters is not None:
            counters[_ACC] += 1
            counters[_OVD] += bool(overdue)
            counters[_NEW] += bool(newly_delinquent)

    def observe_onset(self, segment_key: SegmentKey, day: int, newly_overdue: bool) -> None:
        """An account already observed in the window of ``day`` entered delinquency later
        in that window: count it newly delinquent (and overdue if it was observed not
        overdue), not as another account.

        >>> mon = SegmentMonitor()
        >>> mon.observe_account(("s", "credit_card", "r"), 0, False, False)
        >>> mon.observe_onset(("s", "credit_card", "r"), 3, newly_overdue=True)
        >>> k = mon.kpis(0)[("s", "credit_card", "r")]
        >>> k["accounts"], k["overdue"], k["newly_delinquent"]
        (1, 1, 1)
        """
        counters = self._counters(segment_key, day)
        if counters is not None:
            counters[_NEW] += 1
            counters[_OVD] += bool(newly_overdue)

    def observe_alert(self, segment_key: SegmentKey, day: int, severity: str) -> None:
        """Count one alert about a customer of the segment."""
        counters = self._counters(segment_key, day)
        if counters is not None:
            counters[_ALR] += 1
            counters[_SEV] += severity in _SEVERE

    def observe_score(self, segment_key: SegmentKey, day: int, score: int) -> None:
        """Count one risk score of a customer of the segment."""
        counters = self._counters(segment_key, day)
        if counters is not None:
            counters[_NSC] += 1
            counters[_SSC] += int(score)

    def observe_indicator(self, sector: str, indicator: str, value: float, day: int) -> None:
        """Record one sector-indicator value (a revision of the same day replaces it).

        Indicators not named in the config are ignored; so are non-finite
        values, sectors beyond the cardinality bound and values older than the
        series' checkpoint (counted in ``ignored_indicators``).
        """
        rule = self.config.indicators.get(indicator)
        if rule is None:
            return
        if not math.isfinite(value):
            self.ignored_indicators += 1
            return
        canon = self._canon(0, sector, True)
        if canon == OTHER and sector != OTHER:
            self.ignored_indicators += 1
            return
        series = self._series.get((sector, indicator))
        if series is None:
            series = self._series[(sector, indicator)] = _Series()
        if day <= series.base.day:
            self.ignored_indicators += 1
            return
        values = series.values
        i = len(values)
        while i and values[i - 1][0] > day:
            i -= 1
        if i and values[i - 1][0] == day:
            values[i - 1] = (day, float(value))
        else:
            values.insert(i, (day, float(value)))
        while len(values) > self.config.indicator_history:
            d, v = values.pop(0)
            series.base = _step(series.base, d, v, rule)
        self._cache.pop((sector, indicator), None)

    # -- reading ----------------------------------------------------------------

    def kpis(self, day: int) -> dict[SegmentKey, dict[str, Any]]:
        """KPIs of every segment in the window holding ``day`` (empty if not retained).

        Rates are ``None`` without accounts; ``average_score`` is ``None`` without scores.
        """
        w = day // self.config.window_days
        window = self._windows.get(w, {})
        return {k: _kpi(v, w, self.config.window_days) for k, v in sorted(window.items())}

    def _indicator_state(self, sector: str, indicator: str, day: int) -> _Ind | None:
        series = self._series.get((sector, indicator))
        if series is None:
            return None
        rule = self.config.indicators[indicator]
        values = series.values
        if not values or day >= values[-1][0]:
            st = self._cache.get((sector, indicator))
            if st is None:
                st = series.base
                for d, v in values:
                    st = _step(st, d, v, rule)
                self._cache[(sector, indicator)] = st
        else:
            st = series.base
            for d, v in values:
                if d > day:
                    break
                st = _step(st, d, v, rule)
        return _settle(st, day, rule) if st.day >= 0 else None

    def _rate_state(self, key: SegmentKey, day: int) -> _RateState:
        """Fold the retained complete windows before the one holding ``day``."""
        c = self.config
        last = day // c.window_days - 1
        memo = self._rate_memo.get((key, last))
        if memo is not None:
            return memo
        tightened, since = False, -1
        codes: tuple[str, ...] = ()
        seen_w = -1
        seen_c: tuple[int, ...] = ()
        if self._newest is not None:
            for w in range(self._newest - c.keep_windows + 1, last + 1):
                counters = self._windows.get(w, {}).get(key)
                if counters is None or counters[_ACC] < c.min_accounts:
                    continue
                seen_w, seen_c = w, tuple(counters)
                acc = counters[_ACC]
                new_rate, overdue_rate = counters[_NEW] / acc, counters[_OVD] / acc
                if not tightened:
                    above = (
                        new_rate > c.new_delinquency_rate_line,
                        overdue_rate > c.overdue_rate_line,
                    )
                    if any(above):
                        tightened, since = True, w
                        codes = tuple(code for code, a in zip(_RATE_CODES, above, strict=True) if a)
                elif (
                    new_rate <= c.new_delinquency_rate_line * c.rate_recover_factor
                    and overdue_rate <= c.overdue_rate_line * c.rate_recover_factor
                    and w - since >= c.min_tightened_windows
                ):
                    tightened = False
        if len(self._rate_memo) >= 4_096:  # bounded: segments x days between window moves
            self._rate_memo.clear()
            self._rate_memo_last = _NO_WINDOW
        rs = self._rate_memo[(key, last)] = _RateState(tightened, since, codes, seen_w, seen_c)
        if last > self._rate_memo_last:
            self._rate_memo_last = last
        return rs

    def _indicator_reason(self, sector: str, indicator: str, st: _Ind) -> str:
        if st.baseline is not None:
            drop = (st.baseline - st.value) / st.baseline
            return (
                f"sector {sector}: {indicator} {st.value:g} is {_pct(drop)} below its level "
                f"before the fall ({st.baseline:.1f})"
            )
        rule = self.config.indicators[indicator]
        return f"sector {sector}: {indicator} {st.value:g} is below {rule.below:g}"

    def _rate_reason(self, key: SegmentKey, rs: _RateState) -> str:
        c = self.config
        acc = rs.counters[_ACC]
        return (
            f"segment {'/'.join(key)}: {_pct(rs.counters[_NEW] / acc)} newly delinquent and "
            f"{_pct(rs.counters[_OVD] / acc)} overdue of {acc} accounts in the "
            f"{c.window_days} days from {_date(rs.window * c.window_days)} "
            f"(lines {_pct(c.new_delinquency_rate_line)} and {_pct(c.overdue_rate_line)})"
        )

    def tightening(self, sector: str, product: str, region: str, day: int) -> Tightening:
        """How to treat customers of this segment at ``day`` (equal to :data:`NO_TIGHTENING`
        if nothing is tightened).

        Indicators are judged on their values up to ``day`` (a day before the
        oldest retained value gets the checkpoint's answer), rates on the
        complete window before the one holding ``day``.
        """
        found = self.tightening_or_none(sector, product, region, day)
        return Tightening() if found is None else found  # a fresh value: the caller may
        # keep or change its lists

    def tightening_or_none(self, sector: str, product: str, region: str,
                           day: int) -> Tightening | None:
        """:meth:`tightening`, or ``None`` where it is equal to :data:`NO_TIGHTENING`
        (the engine's once-a-day re-score: nothing is built for the usual segment).

        >>> SegmentMonitor().tightening_or_none("retail", "credit_card", "north", 90) is None
        True
        """
        c = self.config
        reasons: list[str] = []
        codes: list[str] = []
        add = 0
        key = self.key(sector, product, region)
        sector_key = key[0]
        # (no series at all: no indicator state to read, the usual case)
        for indicator in self._indicator_names if self._series else ():  # sorted(c.indicators)
            st = self._indicator_state(sector_key, indicator, day)
            if st is not None and st.tightened:
                reasons.append(self._indicator_reason(sector_key, indicator, st))
                if "sector_indicator_drop" not in codes:
                    codes.append("sector_indicator_drop")
                    add += c.indicator_score_add
        # _rate_state's memo, read here first (a memoised fold is the usual case)
        rs = self._rate_memo.get((key, day // c.window_days - 1)) or self._rate_state(key, day)
        if rs.tightened:
            reasons.append(self._rate_reason(key, rs))
            codes.extend(rs.codes)
            add += c.rate_score_add
        if not codes:
            return None
        return Tightening(
            score_add=min(add, c.max_score_add),
            limit_raise_suspended=c.suspend_raises,
            cut_step_multiplier=c.cut_step_multiplier,
            reasons=reasons,
            codes=codes,
        )

    # -- segment-level events ---------------------------------------------------

    def _subjects(self, day: int) -> dict[str, tuple[int, Signal]]:
        """Every tightened subject at ``day``: subject -> (start marker, start signal)."""
        c = self.config
        out: dict[str, tuple[int, Signal]] = {}
        for (sector, indicator), _series in sorted(self._series.items()):
            st = self._indicator_state(sector, indicator, day)
            if st is None or not st.tightened:
                continue
            subject = f"sector/{sector}/{indicator}"
            evidence = [
                Evidence(
                    code="indicator_value",
                    text=self._indicator_reason(sector, indicator, st),
                    value=st.value,
                )
            ]
            if st.baseline is not None:
                evidence.append(
                    Evidence(
                        code="indicator_drop",
                        text=f"{_pct((st.baseline - st.value) / st.baseline)} below the "
                        f"baseline {st.baseline:.1f}",
                        value=round(100.0 * (st.baseline - st.value) / st.baseline, 2),
                        unit="%",
                    )
                )
            evidence.append(
                Evidence(code="since", text=f"tightened since {_date(st.since)}",
                         value=_date(st.since))
            )
            out[subject] = (st.since, self._signal(subject, "sector-indicator-drop", True,
                                                   ["sector_indicator_drop"], evidence, st.since))
        keys = sorted({k for window in self._windows.values() for k in window})
        for key in keys:
            rs = self._rate_state(key, day)
            if not rs.tightened:
                continue
            subject = f"segment/{'/'.join(key)}"
            acc = rs.counters[_ACC]
            evidence = [
                Evidence(code="segment_rates", text=self._rate_reason(key, rs), value=acc,
                         unit="accounts"),
                Evidence(code="new_delinquency_rate",
                         text=f"{_pct(rs.counters[_NEW] / acc)} newly delinquent "
                         f"(line {_pct(c.new_delinquency_rate_line)})",
                         value=round(rs.counters[_NEW] / acc, 6)),
                Evidence(code="overdue_rate",
                         text=f"{_pct(rs.counters[_OVD] / acc)} overdue "
                         f"(line {_pct(c.overdue_rate_line)})",
                         value=round(rs.counters[_OVD] / acc, 6)),
            ]
            since_day = rs.since * c.window_days
            out[subject] = (since_day, self._signal(subject, "segment-rates", True,
                                                    list(rs.codes), evidence, since_day))
        return out

    def _signal(self, subject: str, rule: str, start: bool, codes: list[str],
                evidence: list[Evidence], since: int) -> Signal:
        return Signal(
            kind="segment",
            rule_id=rule,
            rule_version=self.config.rule_version,
            severity="medium" if start else "info",
            reason_codes=codes,
            evidence=evidence,
            discriminator=f"{subject}:{'start' if start else 'stop'}:{_date(since)}",
        )

    def changes(self, day: int) -> list[Signal]:
        """Segments and sectors that started or stopped being tightened since the last call.

        Call with non-decreasing days (e.g. the partition's watermark). A start
        has severity ``medium`` and the reason codes of the trigger; a stop has
        severity ``info`` and ``sector_indicator_recovered`` or
        ``segment_rates_recovered``. Discriminators name the subject and the day
        the tightening started, so the same change always gets the same output id.
        """
        now = self._subjects(day)
        out: list[Signal] = []
        for subject in sorted(set(now) | set(self._reported)):
            since = self._reported.get(subject)
            current = now.get(subject)
            if since is not None and (current is None or current[0] != since):
                sector_rule = subject.startswith("sector/")
                out.append(self._signal(
                    subject,
                    "sector-indicator-drop" if sector_rule else "segment-rates",
                    False,
                    ["sector_indicator_recovered" if sector_rule else "segment_rates_recovered"],
                    [Evidence(code="since",
                              text=f"{subject} no longer tightened as of {_date(day)} "
                              f"(tightened since {_date(since)})",
                              value=_date(since))],
                    since,
                ))
                del self._reported[subject]
            if current is not None and self._reported.get(subject) != current[0]:
                out.append(current[1])
                self._reported[subject] = current[0]
        return out

    # -- combining workers --------------------------------------------------------

    def merge(self, other: SegmentMonitor) -> SegmentMonitor:
        """A new monitor with both monitors' KPI counters summed (neither is changed).

        Admitted values are united (the result may hold more than ``max_*``
        values per dimension: at most the sum over the merged monitors);
        windows older than the newest window's retention are dropped. Indicator
        series and announcements come from ``self`` where both have them.
        Associative and commutative on the KPI counters.

        >>> a, b = SegmentMonitor(), SegmentMonitor()
        >>> a.observe_account(("s", "credit_card", "r"), 0, True, False)
        >>> b.observe_account(("s", "credit_card", "r"), 1, False, False)
        >>> a.merge(b).kpis(0)[("s", "credit_card", "r")]["overdue_rate"]
        0.5
        """
        if other.config != self.config:
            raise ValueError("cannot merge monitors with different configurations")
        out = SegmentMonitor(self.config)
        mine, theirs = self._admitted, other._admitted
        out._admitted = (mine[0] | theirs[0], mine[1] | theirs[1], mine[2] | theirs[2])
        newest = [n for n in (self._newest, other._newest) if n is not None]
        out._newest = max(newest) if newest else None
        oldest = (out._newest or 0) - self.config.keep_windows + 1
        windows: dict[int, dict[SegmentKey, list[int]]] = {}
        for source in (self._windows, other._windows):
            for w, segs in source.items():
                if w < oldest:
                    continue
                target = windows.setdefault(w, {})
                for key, counters in segs.items():
                    have = target.get(key)
                    target[key] = (
                        list(counters) if have is None
                        else [x + y for x, y in zip(have, counters, strict=True)]
                    )
        out._windows = windows
        out._series = copy.deepcopy({**other._series, **self._series})
        out._reported = dict(self._reported)
        out.dropped_late = self.dropped_late + other.dropped_late
        out.ignored_indicators = self.ignored_indicators + other.ignored_indicators
        return out

    # -- a new configuration -----------------------------------------------------

    def reconfigured(self, config: SegmentConfig) -> SegmentMonitor:
        """A new monitor under ``config`` carrying over what this one observed
        (this one is not changed), e.g. when a newly published policy changes the
        ``segments`` section.

        * **KPI windows** are kept (the ones ``config.keep_windows`` retains up to
          the newest) when ``window_days`` is unchanged; segments are re-keyed
          under the new allow-lists and bounds (values no longer admitted fall into
          ``"other"``, whose counters are summed; values already folded into
          ``"other"`` stay there). A different ``window_days`` drops the windows:
          counters of one window length cannot be split into another's.
        * **Admitted values** (first-come dimensions) are re-admitted in sorted
          order up to the new bounds.
        * **Indicator series** are kept for the indicators ``config`` still
          watches and the sectors it still admits, trimmed to
          ``config.indicator_history`` (values that leave are folded into the
          checkpoint with the new rule). The retained values are judged with the
          new rules; a checkpoint folded under an old rule stays as it was.
        * **Announcements** are kept, so :meth:`changes` reports the subjects the
          new configuration no longer tightens as stopped (and new ones as started).

        >>> mon = SegmentMonitor(SegmentConfig(min_accounts=1))
        >>> mon.observe_account(("retail", "credit_card", "north"), 14, True, False)
        >>> mon.observe_indicator("retail", "prosperity_index", 100.0, 14)
        >>> new = mon.reconfigured(SegmentConfig(min_accounts=10, regions=("south",)))
        >>> new.config.min_accounts, list(new.kpis(14))
        (10, [('retail', 'credit_card', 'other')])
        >>> sorted(new._series), mon.config.min_accounts
        ([('retail', 'prosperity_index')], 1)
        """
        out = SegmentMonitor(config)
        old = self.config

        def canon(dim: int, value: str) -> str:
            return OTHER if value == OTHER else out._canon(dim, value, True)

        for dim in range(3):
            for value in sorted(self._admitted[dim]):
                canon(dim, value)
        if config.window_days == old.window_days and self._newest is not None:
            oldest = self._newest - config.keep_windows + 1
            for w in sorted(self._windows):
                if w < oldest:
                    continue
                target = out._windows.setdefault(w, {})
                for key, counters in sorted(self._windows[w].items()):
                    new_key = (canon(0, key[0]), canon(1, key[1]), canon(2, key[2]))
                    have = target.get(new_key)
                    target[new_key] = (
                        list(counters) if have is None
                        else [x + y for x, y in zip(have, counters, strict=True)]
                    )
            out._newest = self._newest
        for (sector, indicator), series in sorted(self._series.items()):
            rule = config.indicators.get(indicator)
            if rule is None or (canon(0, sector) == OTHER and sector != OTHER):
                continue
            kept = _Series()
            kept.base = series.base
            kept.values = list(series.values)
            while len(kept.values) > config.indicator_history:
                d, v = kept.values.pop(0)
                kept.base = _step(kept.base, d, v, rule)
            out._series[(sector, indicator)] = kept
        out._reported = dict(self._reported)
        out.dropped_late = self.dropped_late
        out.ignored_indicators = self.ignored_indicators
        return out

    @classmethod
    def merge_all(cls, monitors: Iterable[SegmentMonitor]) -> SegmentMonitor:
        """Fold :meth:`merge` over several monitors (left to right).

        >>> SegmentMonitor.merge_all([SegmentMonitor(), SegmentMonitor()]).kpis(0)
        {}
        """
        it = iter(monitors)
        first = next(it, None)
        if first is None:
            raise ValueError("nothing to merge")
        out = copy.deepcopy(first)
        for m in it:
            out = out.merge(m)
        return out
