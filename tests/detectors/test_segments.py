"""Tests of segment KPIs, sector indicators and tightening (``detectors/segments.py``)."""

from __future__ import annotations

import copy
import pickle
import random
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import Signal
from detectors.segments import (
    NO_TIGHTENING,
    OTHER,
    IndicatorRule,
    SegmentConfig,
    SegmentMonitor,
    Tightening,
)
from schemas.models import Evidence, Label

KEY = ("retail", "credit_card", "north")
PI = "prosperity_index"


def observe(mon: SegmentMonitor, key: Any, day: int, accounts: int, overdue: int = 0,
            new: int = 0) -> None:
    """``accounts`` observations in ``key`` on ``day``; the first ones overdue / new."""
    for i in range(accounts):
        mon.observe_account(key, day, overdue=i < overdue, newly_delinquent=i < new)


def valid_signal(s: Signal) -> None:
    """The signal's evidence and codes pass the output contract."""
    assert s.kind == "segment"
    msgspec.convert(msgspec.to_builtins(s.evidence), list[Evidence])
    msgspec.convert(s.reason_codes, list[Label])
    msgspec.convert(s.discriminator, Annotated[str, msgspec.Meta(max_length=128)])


# --------------------------------------------------------------------------- #
# Windows and KPIs
# --------------------------------------------------------------------------- #


def test_windows_are_tumbling_in_event_time() -> None:
    mon = SegmentMonitor(SegmentConfig(window_days=7, keep_windows=3))
    observe(mon, KEY, 6, 2, overdue=1)  # window 0: days 0-6
    observe(mon, KEY, 7, 4)  # window 1: days 7-13
    observe(mon, KEY, 13, 1)
    assert mon.kpis(0)[KEY]["accounts"] == 2
    assert mon.kpis(6)[KEY]["overdue_rate"] == 0.5
    k1 = mon.kpis(10)[KEY]
    assert k1["accounts"] == 5 and k1["window_start"] == "1970-01-08" and k1["window_days"] == 7
    # A late observation lands in its own (event-time) window, not the newest.
    observe(mon, KEY, 3, 1, overdue=1)
    assert mon.kpis(3)[KEY]["accounts"] == 3 and mon.kpis(10)[KEY]["accounts"] == 5
    assert mon.kpis(14) == {}


def test_old_windows_are_dropped_and_late_observations_counted() -> None:
    mon = SegmentMonitor(SegmentConfig(window_days=7, keep_windows=3))
    for w in range(3):
        observe(mon, KEY, w * 7, 1)
    assert mon.kpis(0)[KEY]["accounts"] == 1
    observe(mon, KEY, 21, 1)  # window 3: window 0 leaves the retention
    assert mon.kpis(0) == {}
    assert {w for w in range(4) if mon.kpis(w * 7)} == {1, 2, 3}
    observe(mon, KEY, 2, 1)  # window 0 is gone: dropped, not resurrected
    assert mon.dropped_late == 1 and mon.kpis(2) == {}
    observe(mon, KEY, 8, 1)  # window 1 is still kept
    assert mon.dropped_late == 1 and mon.kpis(8)[KEY]["accounts"] == 2


def test_an_onset_later_in_the_window_counts_new_not_another_account() -> None:
    mon = SegmentMonitor(SegmentConfig(window_days=7, keep_windows=2))
    mon.observe_account(KEY, 7, overdue=False, newly_delinquent=False)
    mon.observe_account(KEY, 8, overdue=True, newly_delinquent=False)
    mon.observe_onset(KEY, 10, newly_overdue=True)
    mon.observe_onset(KEY, 12, newly_overdue=False)
    k = mon.kpis(7)[KEY]
    assert (k["accounts"], k["overdue"], k["newly_delinquent"]) == (2, 2, 2)
    mon.observe_account(KEY, 30, False, False)  # window 4: window 1 leaves the retention
    mon.observe_onset(KEY, 8, newly_overdue=True)
    assert mon.dropped_late == 1 and mon.kpis(8) == {}


def test_kpi_rates_and_averages() -> None:
    mon = SegmentMonitor()
    observe(mon, KEY, 0, 8, overdue=2, new=1)
    mon.observe_alert(KEY, 1, "medium")
    mon.observe_alert(KEY, 1, "critical")
    mon.observe_alert(KEY, 2, "high")
    mon.observe_score(KEY, 2, 400)
    mon.observe_score(KEY, 3, 601)
    k = mon.kpis(0)[KEY]
    assert k == {
        "window_start": "1970-01-01", "window_days": 7, "accounts": 8, "overdue": 2,
        "newly_delinquent": 1, "alerts": 3, "severe_alerts": 2, "scores": 2,
        "overdue_rate": 0.25, "new_delinquency_rate": 0.125, "alert_rate": 0.375,
        "average_score": 500.5,
    }
    # Alerts without accounts: rates are undefined, not zero or infinite.
    other = ("energy", "personal_loan", "south")
    mon.observe_alert(other, 0, "low")
    k = mon.kpis(0)[other]
    assert k["alerts"] == 1 and k["alert_rate"] is None and k["average_score"] is None


obs_strategy = st.lists(
    st.tuples(
        st.sampled_from(["account", "alert", "score"]),
        st.sampled_from(["retail", "energy", "public_sector"]),
        st.sampled_from(["credit_card", "personal_loan"]),
        st.sampled_from(["north", "south"]),
        st.integers(0, 60),  # day
        st.booleans(),
        st.booleans(),
        st.sampled_from(["info", "low", "medium", "high", "critical"]),
        st.integers(0, 1000),
    ),
    max_size=80,
)


def apply_obs(mon: SegmentMonitor, obs: list[tuple[Any, ...]]) -> None:
    for kind, sector, product, region, day, a, b, severity, score in obs:
        key = (sector, product, region)
        if kind == "account":
            mon.observe_account(key, day, a, b)
        elif kind == "alert":
            mon.observe_alert(key, day, severity)
        else:
            mon.observe_score(key, day, score)


@settings(max_examples=150, deadline=None)
@given(obs_strategy)
def test_kpi_arithmetic_matches_a_naive_count(obs: list[tuple[Any, ...]]) -> None:
    config = SegmentConfig(window_days=7, keep_windows=20)  # everything retained
    mon = SegmentMonitor(config)
    apply_obs(mon, obs)
    expected: dict[tuple[int, Any], dict[str, int]] = {}
    for kind, sector, product, region, day, a, b, severity, score in obs:
        e = expected.setdefault((day // 7, (sector, product, region)), dict.fromkeys(
            ("accounts", "overdue", "newly_delinquent", "alerts", "severe_alerts", "scores",
             "score_sum"), 0))
        if kind == "account":
            e["accounts"] += 1
            e["overdue"] += a
            e["newly_delinquent"] += b
        elif kind == "alert":
            e["alerts"] += 1
            e["severe_alerts"] += severity in ("high", "critical")
        else:
            e["scores"] += 1
            e["score_sum"] += score
    for w in range(9):
        got = mon.kpis(w * 7)
        want = {k: v for (ww, k), v in expected.items() if ww == w}
        assert set(got) == set(want)
        for key, e in want.items():
            k = got[key]
            for name in ("accounts", "overdue", "newly_delinquent", "alerts", "severe_alerts",
                         "scores"):
                assert k[name] == e[name]
            acc = e["accounts"]
            assert k["overdue_rate"] == (e["overdue"] / acc if acc else None)
            assert k["new_delinquency_rate"] == (e["newly_delinquent"] / acc if acc else None)
            assert k["alert_rate"] == (e["alerts"] / acc if acc else None)
            assert k["average_score"] == (e["score_sum"] / e["scores"] if e["scores"] else None)


# --------------------------------------------------------------------------- #
# Cardinality
# --------------------------------------------------------------------------- #


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)),
                max_size=200))
def test_cardinality_bound_holds(values: list[tuple[int, int, int]]) -> None:
    config = SegmentConfig(max_sectors=3, products=(), max_products=2, max_regions=4)
    mon = SegmentMonitor(config)
    for s, p, r in values:
        mon.observe_account((f"s{s}", f"p{p}", f"r{r}"), 0, False, False)
        mon.observe_indicator(f"s{s}", PI, 100.0, s)
    keys = set(mon.kpis(0))
    assert len(keys) <= (3 + 1) * (2 + 1) * (4 + 1)
    for dim, bound in enumerate((3, 2, 4)):
        named = {k[dim] for k in keys} - {OTHER}
        assert len(named) <= bound
    assert len({sector for sector, _ in mon._series}) <= 3
    # Every observation is counted somewhere (folded, never lost).
    assert sum(k["accounts"] for k in mon.kpis(0).values()) == len(values)
    # The first values seen are the ones admitted.
    first_sectors = list(dict.fromkeys(f"s{s}" for s, _, _ in values))[:3]
    assert {k[0] for k in keys} - {OTHER} == set(first_sectors)


def test_allow_lists_fold_everything_else_into_other() -> None:
    mon = SegmentMonitor(SegmentConfig(sectors=("retail", "energy"), regions=("north",)))
    mon.observe_account(("retail", "credit_card", "north"), 0, True, False)
    mon.observe_account(("mining", "mortgage", "south"), 0, False, False)
    assert set(mon.kpis(0)) == {("retail", "credit_card", "north"), (OTHER, OTHER, OTHER)}
    assert mon.key("energy", "personal_loan", "east") == ("energy", "personal_loan", OTHER)
    mon.observe_indicator("mining", PI, 90.0, 0)
    assert mon.ignored_indicators == 1 and not mon._series


# --------------------------------------------------------------------------- #
# Sector indicators
# --------------------------------------------------------------------------- #


def feed(mon: SegmentMonitor, series: list[tuple[int, float]], sector: str = "retail") -> None:
    for day, value in series:
        mon.observe_indicator(sector, PI, value, day)


def tightened(mon: SegmentMonitor, day: int, sector: str = "retail") -> bool:
    return mon.tightening(sector, "credit_card", "north", day).active


def test_indicator_drop_starts_and_recovery_stops_with_hysteresis() -> None:
    rule = IndicatorRule(drop_pct=5.0, recover_pct=2.0, trailing=3, min_tightened_days=20)
    mon = SegmentMonitor(SegmentConfig(indicators={PI: rule}))
    feed(mon, [(0, 100.0), (10, 100.5), (20, 99.5)])
    assert not tightened(mon, 20)
    assert mon.changes(20) == []
    feed(mon, [(30, 96.0)])  # 4 % below the trailing average: not yet
    assert not tightened(mon, 30)
    feed(mon, [(40, 92.0)])  # 6.1 % below avg(100.5, 99.5, 96) = 98.67: starts
    t = mon.tightening("retail", "credit_card", "north", 40)
    assert t.active and t.codes == ["sector_indicator_drop"]
    assert t.reasons == ["sector retail: prosperity_index 92 is 6.8% below its level before "
                         "the fall (98.7)"]
    (start,) = mon.changes(40)
    valid_signal(start)
    assert start.rule_id == "sector-indicator-drop" and start.severity == "medium"
    assert start.discriminator == "sector/retail/prosperity_index:start:1970-02-10"
    assert [e.code for e in start.evidence] == ["indicator_value", "indicator_drop", "since"]
    assert start.evidence[1].value == 6.76 and start.evidence[1].unit == "%"
    # In the hysteresis band (less than 5 % below the moving average, but more
    # than 2 % below the baseline): still tightened.
    feed(mon, [(45, 95.0)])
    assert tightened(mon, 45) and mon.changes(45) == []
    # Back within 2 % of the baseline, but the minimum duration (20 days) has not passed.
    feed(mon, [(50, 97.5)])
    assert tightened(mon, 50) and tightened(mon, 59)
    assert tightened(mon, 40) and not tightened(mon, 39)  # earlier days answer as of then
    assert not tightened(mon, 60)  # 20 days after the start, recovered: stops
    (stop,) = mon.changes(60)
    valid_signal(stop)
    assert stop.reason_codes == ["sector_indicator_recovered"] and stop.severity == "info"
    assert stop.discriminator == "sector/retail/prosperity_index:stop:1970-02-10"
    assert mon.changes(61) == []


def test_a_sector_that_stays_down_stays_tightened() -> None:
    """The moving average sinks with the indicator; the frozen baseline does not."""
    mon = SegmentMonitor()
    feed(mon, [(0, 100.0), (30, 100.0), (60, 100.0)])
    feed(mon, [(90 + 30 * i, 85.0) for i in range(20)])
    assert all(tightened(mon, 90 + 30 * i) for i in range(20))
    # Twenty values at 85: the start left the retained history long ago.
    assert len(mon._series[("retail", PI)].values) == mon.config.indicator_history


def test_level_rule_with_its_own_recovery_level() -> None:
    rule = IndicatorRule(below=80.0, recover_above=85.0, min_tightened_days=0)
    mon = SegmentMonitor(SegmentConfig(indicators={PI: rule}))
    feed(mon, [(0, 82.0)])
    assert not tightened(mon, 0)
    feed(mon, [(1, 79.0)])  # below the level, only a 3.7 % drop
    t = mon.tightening("retail", "credit_card", "north", 1)
    assert t.reasons == ["sector retail: prosperity_index 79 is below 80"]
    feed(mon, [(2, 81.0)])  # above the level, not above the recovery level
    assert tightened(mon, 2)
    feed(mon, [(3, 86.0)])
    assert not tightened(mon, 3)


def test_unwatched_indicators_and_bad_values_are_ignored() -> None:
    mon = SegmentMonitor()
    mon.observe_indicator("retail", "unemployment", 50.0, 0)
    mon.observe_indicator("retail", PI, float("nan"), 0)
    assert not mon._series and mon.ignored_indicators == 1


def test_indicator_revision_replaces_the_days_value() -> None:
    mon = SegmentMonitor()
    feed(mon, [(0, 100.0), (10, 100.0), (20, 80.0)])
    assert tightened(mon, 20)
    feed(mon, [(20, 99.0)])  # revised flash estimate
    assert not tightened(mon, 20)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(70.0, 110.0, allow_nan=False), min_size=1, max_size=10),
    st.randoms(use_true_random=False),
)
def test_late_indicator_values_give_the_in_order_answer(values: list[float],
                                                       rnd: random.Random) -> None:
    series = [(10 * i, round(v, 1)) for i, v in enumerate(values)]
    shuffled = series[:]
    rnd.shuffle(shuffled)
    in_order, out_of_order = SegmentMonitor(), SegmentMonitor()
    feed(in_order, series)
    feed(out_of_order, shuffled)  # at most 10 values: all within the history
    for day in range(0, 10 * len(values) + 30, 5):
        assert (in_order.tightening("retail", "credit_card", "north", day)
                == out_of_order.tightening("retail", "credit_card", "north", day))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(70.0, 110.0, allow_nan=False), min_size=1, max_size=40))
def test_checkpoint_gives_the_same_answer_as_unbounded_history(values: list[float]) -> None:
    series = [(10 * i, v) for i, v in enumerate(values)]
    short = SegmentMonitor(SegmentConfig(indicator_history=4))
    long = SegmentMonitor(SegmentConfig(indicator_history=120))
    for day, v in series:
        feed(short, [(day, v)])
        feed(long, [(day, v)])
        assert tightened(short, day) == tightened(long, day)
        assert tightened(short, day + 9) == tightened(long, day + 9)
    assert len(short._series[("retail", PI)].values) <= 4


# --------------------------------------------------------------------------- #
# Segment rates
# --------------------------------------------------------------------------- #


def rate_monitor(**kw: Any) -> SegmentMonitor:
    base: dict[str, Any] = {
        "window_days": 7, "keep_windows": 8, "min_accounts": 10, "overdue_rate_line": 0.10,
        "new_delinquency_rate_line": 0.02, "rate_recover_factor": 0.8,
        "min_tightened_windows": 2,
    }
    return SegmentMonitor(SegmentConfig(**(base | kw)))


def test_segment_rates_tighten_on_complete_windows_with_hysteresis() -> None:
    mon = rate_monitor()
    observe(mon, KEY, 0, 100, overdue=5)  # window 0: 5 % overdue
    observe(mon, KEY, 7, 100, overdue=15)  # window 1: 15 %
    assert not tightened(mon, 7) and not tightened(mon, 13)  # window 1 still open
    t = mon.tightening(*KEY, 14)
    assert t.codes == ["segment_overdue_rate_high"]
    assert t.reasons == [
        "segment retail/credit_card/north: 0.0% newly delinquent and 15.0% overdue of 100 "
        "accounts in the 7 days from 1970-01-08 (lines 2.0% and 10.0%)"]
    (start,) = mon.changes(14)
    valid_signal(start)
    assert start.rule_id == "segment-rates"
    assert start.discriminator == "segment/retail/credit_card/north:start:1970-01-08"
    assert {e.code: e.value for e in start.evidence}["overdue_rate"] == 0.15
    observe(mon, KEY, 14, 100, overdue=9)  # window 2: 9 %, above 0.8 x line: holds
    assert tightened(mon, 21)
    observe(mon, KEY, 21, 5, overdue=0)  # window 3: too few accounts, holds
    assert tightened(mon, 28)
    observe(mon, KEY, 28, 100, overdue=8)  # window 4: 8 % <= 8 %: recovered
    assert not tightened(mon, 35)
    assert [s.reason_codes for s in mon.changes(35)] == [["segment_rates_recovered"]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 80), st.integers(0, 3),
                          st.booleans(), st.booleans()), max_size=150))
def test_memoised_rate_folds_follow_every_update(steps: list[tuple[Any, ...]]) -> None:
    """Queries between updates (in and out of order, any window) answer as a monitor
    with nothing memoised does."""
    mon = rate_monitor(min_accounts=2, keep_windows=4)
    keys = [KEY, ("retail", "personal_loan", "north"), ("energy", "credit_card", "south"),
            ("energy", "mortgage", "north")]
    for query, day, k, overdue, new in steps:
        if query:
            got = mon.tightening(*keys[k], day)
            fresh = copy.deepcopy(mon)  # nothing memoised (not copied)
            assert got == fresh.tightening(*keys[k], day)
        else:
            mon.observe_account(keys[k], day, overdue, new)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 4)), max_size=60))
def test_memoised_segment_keys_follow_admissions(steps: list[tuple[bool, int, int]]) -> None:
    """key() answers as a monitor with nothing memoised does, as values are admitted up to
    the bounds (and past them: ``other``)."""
    mon = SegmentMonitor(SegmentConfig(max_sectors=2, max_regions=3))
    for observe_it, sector, region in steps:
        values = (f"s{sector}", "credit_card", f"r{region}")
        if observe_it:
            mon.observe_account(values, 0, False, False)
        else:
            assert mon.key(*values) == copy.deepcopy(mon).key(*values)


def test_segment_rate_tightening_lasts_its_minimum() -> None:
    mon = rate_monitor(min_tightened_windows=3)
    observe(mon, KEY, 0, 50, new=2)  # 4 % newly delinquent
    observe(mon, KEY, 7, 50)  # clean, but only one window later
    assert mon.tightening(*KEY, 14).codes == ["segment_new_delinquency_rate_high"]
    observe(mon, KEY, 14, 50)
    assert tightened(mon, 21)
    observe(mon, KEY, 21, 50)
    assert not tightened(mon, 28)


def test_score_add_is_summed_and_capped() -> None:
    mon = rate_monitor(indicator_score_add=70, rate_score_add=60, max_score_add=100)
    observe(mon, KEY, 0, 100, overdue=50)
    feed(mon, [(0, 100.0), (3, 80.0)])
    t = mon.tightening(*KEY, 7)
    assert t.codes == ["sector_indicator_drop", "segment_overdue_rate_high"]
    assert t.score_add == 100 and t.limit_raise_suspended and t.cut_step_multiplier == 1.5
    assert len(t.reasons) == 2
    assert mon.tightening("retail", "personal_loan", "north", 7).score_add == 70
    assert mon.tightening("energy", "personal_loan", "north", 7) == NO_TIGHTENING


def test_changes_are_announced_once_and_restart_as_new_episode() -> None:
    rule = IndicatorRule(min_tightened_days=0)
    mon = SegmentMonitor(SegmentConfig(indicators={PI: rule}))
    feed(mon, [(0, 100.0), (1, 90.0)])
    assert len(mon.changes(1)) == 1 and mon.changes(2) == []
    feed(mon, [(2, 100.0)])  # recovered
    feed(mon, [(3, 100.0), (4, 90.0)])  # and falls again
    signals = mon.changes(4)
    assert [s.discriminator for s in signals] == [
        "sector/retail/prosperity_index:stop:1970-01-02",
        "sector/retail/prosperity_index:start:1970-01-05",
    ]


# --------------------------------------------------------------------------- #
# Pickle, merge, memory
# --------------------------------------------------------------------------- #


def busy_monitor(seed: int, config: SegmentConfig | None = None) -> SegmentMonitor:
    rng = random.Random(seed)
    mon = SegmentMonitor(config or SegmentConfig(min_accounts=5))
    for day in range(0, 70):
        for _ in range(20):
            key = (rng.choice(["retail", "energy"]), "credit_card", rng.choice(["n", "s"]))
            mon.observe_account(key, day, rng.random() < 0.15, rng.random() < 0.03)
            mon.observe_score(key, day, rng.randint(0, 1000))
        if day % 10 == 0:
            mon.observe_indicator("retail", PI, 100.0 - day / 5, day)
    return mon


def test_pickle_round_trip() -> None:
    mon = busy_monitor(1)
    mon.changes(50)
    clone = pickle.loads(pickle.dumps(mon))
    assert clone == mon
    for day in (55, 63, 69, 80):
        assert clone.kpis(day) == mon.kpis(day)
        assert clone.tightening("retail", "credit_card", "n", day) == mon.tightening(
            "retail", "credit_card", "n", day)
        assert clone.changes(day) == mon.changes(day)
    assert clone == mon


def counters(mon: SegmentMonitor) -> dict[Any, Any]:
    return {w: dict(v) for w, v in mon._windows.items() if v}


@settings(max_examples=100, deadline=None)
@given(obs_strategy, obs_strategy, obs_strategy)
def test_merge_is_associative_and_commutative(a_obs: Any, b_obs: Any, c_obs: Any) -> None:
    config = SegmentConfig(window_days=7, keep_windows=4, max_sectors=2, max_regions=1)
    mons = []
    for obs in (a_obs, b_obs, c_obs):
        m = SegmentMonitor(config)
        apply_obs(m, obs)
        mons.append(m)
    a, b, c = mons
    before = [copy.deepcopy(m) for m in mons]
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert counters(left) == counters(right)
    assert left._admitted == right._admitted and left._newest == right._newest
    assert left == right
    assert counters(a.merge(b)) == counters(b.merge(a))
    assert [m == orig for m, orig in zip(mons, before, strict=True)] == [True] * 3
    assert counters(SegmentMonitor.merge_all([a, b, c])) == counters(left)


@settings(max_examples=60, deadline=None)
@given(obs_strategy, st.lists(st.integers(0, 2), max_size=80))
def test_workers_merged_equal_one_monitor_with_allow_lists(obs: Any, owner: list[int]) -> None:
    config = SegmentConfig(sectors=("retail", "energy"), products=("credit_card",),
                           regions=("north",), keep_windows=12)
    whole = SegmentMonitor(config)
    workers = [SegmentMonitor(config) for _ in range(3)]
    apply_obs(whole, obs)
    for i, o in enumerate(obs):
        apply_obs(workers[owner[i] if i < len(owner) else 0], [o])
    merged = SegmentMonitor.merge_all(workers)
    assert counters(merged) == counters(whole)
    for day in range(0, 63, 7):
        assert merged.kpis(day) == whole.kpis(day)


def test_merge_refuses_different_configs() -> None:
    with pytest.raises(ValueError, match="different configurations"):
        SegmentMonitor().merge(SegmentMonitor(SegmentConfig(window_days=1)))
    with pytest.raises(ValueError, match="nothing to merge"):
        SegmentMonitor.merge_all([])


def test_reconfigured_carries_windows_and_series_into_the_new_config() -> None:
    mon = busy_monitor(2)
    mon.changes(60)
    before = copy.deepcopy(mon)
    config = SegmentConfig(min_accounts=50, regions=("n",), keep_windows=3,
                           indicator_history=4)
    new = mon.reconfigured(config)
    assert mon == before  # the old monitor is not changed
    assert new.config == config and new._reported == mon._reported
    assert sorted(new._windows) == [7, 8, 9]  # the newest three windows
    for day in (49, 56, 63, 69):
        old_k, new_k = mon.kpis(day), new.kpis(day)
        assert set(new_k) <= {(s, "credit_card", r) for s in ("retail", "energy")
                              for r in ("n", OTHER)}
        for sector in ("retail", "energy"):
            merged = [old_k[(sector, "credit_card", r)]["accounts"] for r in ("n", "s")
                      if (sector, "credit_card", r) in old_k]
            assert new_k[(sector, "credit_card", "n")]["accounts"] + new_k[
                (sector, "credit_card", OTHER)]["accounts"] == sum(merged)
        assert new_k[("retail", "credit_card", "n")] == old_k[("retail", "credit_card", "n")]
    # The series is trimmed to the new history; the retained values give the answer
    # the full history would under the new configuration.
    assert len(new._series[("retail", PI)].values) == 4
    full = SegmentMonitor(SegmentConfig(**{**msgspec.structs.asdict(config),
                                           "indicator_history": 12}))
    for day in range(0, 70, 10):
        full.observe_indicator("retail", PI, 100.0 - day / 5, day)
    for day in (60, 65, 69, 90):
        assert new._indicator_state("retail", PI, day) == full._indicator_state(
            "retail", PI, day)
    # The new monitor goes on counting in the retained windows.
    new.observe_account(("retail", "credit_card", "s"), 69, True, False)
    assert new.kpis(69)[("retail", "credit_card", OTHER)]["accounts"] == (
        mon.kpis(69)[("retail", "credit_card", "s")]["accounts"] + 1)


def test_reconfigured_drops_what_the_new_config_cannot_hold() -> None:
    mon = busy_monitor(3)
    mon.observe_indicator("energy", "unwatched", 1.0, 60)
    # Another window length: the counters cannot be re-bucketed.
    other_windows = mon.reconfigured(SegmentConfig(window_days=14))
    assert other_windows._windows == {} and other_windows._newest is None
    assert sorted(other_windows._series) == [("retail", PI)]
    other_windows.observe_account(KEY, 69, True, False)
    assert other_windows.kpis(69)[KEY]["accounts"] == 1
    # An indicator no longer watched, a sector no longer admitted.
    rule = {"other_index": IndicatorRule()}
    assert mon.reconfigured(SegmentConfig(indicators=rule))._series == {}
    assert mon.reconfigured(SegmentConfig(sectors=("energy",)))._series == {}
    # First-come bounds: re-admitted in sorted order up to the new bound.
    one = mon.reconfigured(SegmentConfig(max_sectors=1))
    assert one._admitted[0] == {"energy"}
    assert {k[0] for k in one.kpis(63)} == {"energy", OTHER}


def test_memory_is_bounded() -> None:
    config = SegmentConfig(window_days=7, keep_windows=4, max_sectors=4, max_regions=3)
    mon = SegmentMonitor(config)
    rng = random.Random(3)
    sizes = []
    for day in range(0, 2000):
        for _ in range(5):
            key = (f"s{rng.randint(0, 30)}", rng.choice(["credit_card", "personal_loan"]),
                   f"r{rng.randint(0, 30)}")
            mon.observe_account(key, day, rng.random() < 0.1, rng.random() < 0.01)
            mon.observe_alert(key, day, "high")
        mon.observe_indicator(f"s{rng.randint(0, 30)}", PI, rng.uniform(80, 110), day)
        if day in (600, 1999):
            mon.changes(day)
            sizes.append(len(pickle.dumps(mon)))
    assert len(mon._windows) <= 4
    assert all(len(w) <= 5 * 4 * 4 for w in mon._windows.values())
    assert all(len(s.values) <= config.indicator_history for s in mon._series.values())
    print(f"\nsegment monitor pickled: {sizes} B")
    assert sizes[1] <= sizes[0] * 1.2 and sizes[1] < 40_000


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


def test_config_from_a_policy_document() -> None:
    doc = {"window_days": 14, "indicators": {PI: {"drop_pct": 8, "below": 90}},
           "sectors": ["retail"]}
    config = msgspec.convert(doc, SegmentConfig)
    assert config.indicators[PI].drop_pct == 8.0 and config.sectors == ("retail",)
    with pytest.raises(msgspec.ValidationError, match="unknown field `windows_days`"):
        msgspec.convert({"windows_days": 7}, SegmentConfig)
    with pytest.raises(msgspec.ValidationError, match="hysteresis"):
        msgspec.convert({"indicators": {PI: {"drop_pct": 2, "recover_pct": 2}}}, SegmentConfig)
    with pytest.raises(msgspec.ValidationError, match="indicator_history"):
        msgspec.convert({"indicator_history": 3, "indicators": {PI: {"trailing": 3}}},
                        SegmentConfig)
    with pytest.raises(msgspec.ValidationError, match=">= 1"):
        msgspec.convert({"window_days": 0}, SegmentConfig)


def test_tightening_is_a_frozen_value() -> None:
    t = Tightening(score_add=10, codes=["x"])
    assert t.active and not NO_TIGHTENING.active
    with pytest.raises(AttributeError):
        t.score_add = 5  # type: ignore[misc]
    assert Tightening() == NO_TIGHTENING
