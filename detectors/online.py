"""Online detectors sharing one River-style interface.

Every class here implements :class:`detectors.base.Detector`:
``score_one(x) -> float`` is called *before* ``learn_one(x)`` on each event,
neither mutates ``x``, every instance pickles, is deterministic for its seed
and keeps bounded memory (``tests/detectors/test_conformance.py`` checks all of
that for every class listed in :data:`CONFORMANCE_SPECS`).

Per-customer drift: why a compact Page-Hinkley and not River's ADWIN
--------------------------------------------------------------------
Per-customer state is multiplied by millions of customers and lives in a
changelogged table, so it must be tiny. Measured with River 0.26.1 on a
Gaussian stream, ``pickle.dumps(river.drift.ADWIN())`` is 483 B fresh,
about 1.4 KB after 1 000 updates, 1.8 KB after 10 000 and 2.3 KB after
100 000: it keeps a logarithmic bucket histogram and grows with the stream.
``river.drift.PageHinkley`` is constant-size but still about 400 B pickled,
most of it class and attribute names. :class:`PHState` holds the same
statistic as five floats, one int and one flag (48 B fresh with
``msgspec.msgpack``, at most 52 B as the count grows), and :func:`ph_update` reproduces River's PageHinkley
update exactly (same floating-point operations in the same order; a test
checks identical detections). :class:`RiverDrift` keeps the River detectors
available as the reference and for the conformance suite.

Score semantics of the drift detectors: ``score_one(x)`` is 1.0 when learning
``x`` would flag a drift (the detection "on the last update" once ``x`` is
learnt), else 0.0, so the score belongs to the event that causes it;
``drift_detected`` reports the detection of the latest ``learn_one``.

>>> det = CompactPageHinkley("spend", PageHinkleyParams(threshold=5.0, min_instances=5))
>>> [det.score_one({"spend": v}) for v in (1.0, 1.0)]
[0.0, 0.0]
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from river import drift, stats

from detectors.base import compiled_function
from detectors.hst import FlatHalfSpaceTrees

__all__ = [
    "CONFORMANCE_SPECS",
    "AnomalyModel",
    "CompactPageHinkley",
    "ConformanceSpec",
    "EwmaZScore",
    "PHState",
    "PageHinkleyParams",
    "RiverDrift",
    "ThresholdRule",
    "minmax_scale",
    "ph_update",
    "scale",
    "scaling",
]


# --------------------------------------------------------------------------- #
# Compact Page-Hinkley
# --------------------------------------------------------------------------- #


class PageHinkleyParams(msgspec.Struct, frozen=True, kw_only=True):
    """Parameters of the Page-Hinkley test (same meaning and defaults as River's).

    ``delta`` is the tolerated drift per observation, ``threshold`` the
    detection level (lambda), ``alpha`` the forgetting factor of the
    cumulative sums, ``mode`` which direction of change is tested.

    >>> PageHinkleyParams().threshold
    50.0
    """

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    mode: Literal["up", "down", "both"] = "both"


class PHState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Page-Hinkley statistic: one int, five floats and one flag, immutable.

    ``min_inc`` is meaningless while ``n == 0`` (River starts it at +inf;
    keeping 0.0 instead keeps the state JSON-safe).

    >>> import msgspec
    >>> len(msgspec.msgpack.encode(PHState()))
    48
    """

    n: int = 0
    mean: float = 0.0
    sum_inc: float = 0.0
    sum_dec: float = 0.0
    min_inc: float = 0.0
    max_dec: float = -1.0
    drift: bool = False


_PH_FRESH = PHState()


def ph_update(state: PHState, x: float, p: PageHinkleyParams) -> tuple[PHState, int]:
    """Learn one value; return the new state and the drift direction.

    The direction is ``1`` for an increase, ``-1`` for a decrease and ``0``
    for no drift. The computation is River's ``PageHinkley.update`` step for
    step (including the reset on the update after a detection), so both flag
    the same observations.

    >>> p = PageHinkleyParams(threshold=3.0, min_instances=3)
    >>> s, hits = PHState(), []
    >>> for v in [1.0] * 10 + [5.0] * 3:
    ...     s, d = ph_update(s, v, p)
    ...     hits.append(d)
    >>> hits[-3:]
    [1, 0, 0]
    """
    if state.drift:
        state = _PH_FRESH
    n = state.n + 1
    mean = state.mean + (1.0 / n) * (x - state.mean)
    dev = x - mean
    sum_inc = p.alpha * state.sum_inc + dev - p.delta
    sum_dec = p.alpha * state.sum_dec + dev + p.delta
    min_inc = sum_inc if (n == 1 or sum_inc < state.min_inc) else state.min_inc
    max_dec = sum_dec if sum_dec > state.max_dec else state.max_dec
    direction = 0
    if n >= p.min_instances:
        if p.mode != "down" and sum_inc - min_inc > p.threshold:
            direction = 1
        elif p.mode != "up" and max_dec - sum_dec > p.threshold:
            direction = -1
    return PHState(n, mean, sum_inc, sum_dec, min_inc, max_dec, direction != 0), direction


def _feature(x: Mapping[str, Any], key: str) -> float | None:
    v = x.get(key)
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class CompactPageHinkley:
    """Page-Hinkley drift detector on one feature, with a tiny immutable state.

    Identical detections to ``river.drift.PageHinkley`` with the same
    parameters; the state is a :class:`PHState` (48 B with msgpack).
    Events missing the feature (or with a non-finite value) are ignored.

    >>> det = CompactPageHinkley("x", PageHinkleyParams(threshold=3.0, min_instances=3))
    >>> scores = []
    >>> for v in [1.0] * 10 + [5.0] * 3:
    ...     scores.append(det.score_one({"x": v}))
    ...     det.learn_one({"x": v})
    >>> scores[-3:], det.drift_detected
    ([1.0, 0.0, 0.0], False)
    """

    __slots__ = ("feature", "params", "state")

    def __init__(
        self, feature: str, params: PageHinkleyParams | None = None, seed: int | None = None
    ) -> None:
        self.feature = feature
        self.params = params or PageHinkleyParams()
        self.state = _PH_FRESH

    @property
    def drift_detected(self) -> bool:
        """Whether the latest ``learn_one`` flagged a drift."""
        return self.state.drift

    def score_one(self, x: Mapping[str, Any]) -> float:
        """1.0 if learning ``x`` would flag a drift, else 0.0 (no side effects)."""
        v = _feature(x, self.feature)
        if v is None:
            return 0.0
        return 1.0 if ph_update(self.state, v, self.params)[1] else 0.0

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Update the statistic with ``x[feature]``."""
        v = _feature(x, self.feature)
        if v is not None:
            self.state = ph_update(self.state, v, self.params)[0]

    def __getstate__(self) -> tuple[str, PageHinkleyParams, PHState]:
        return (self.feature, self.params, self.state)

    def __setstate__(self, st: tuple[str, PageHinkleyParams, PHState]) -> None:
        self.feature, self.params, self.state = st


class RiverDrift:
    """Reference wrapper around ``river.drift.ADWIN`` or ``river.drift.PageHinkley``.

    Not meant for per-customer state (ADWIN grows to about 2 KB pickled, see
    the module docstring); ``score_one`` deep-copies the detector, so it is
    also slower. Keyword arguments go to the River constructor.

    >>> det = RiverDrift("x", kind="page_hinkley", threshold=3.0, min_instances=3)
    >>> scores = []
    >>> for v in [1.0] * 10 + [5.0] * 3:
    ...     scores.append(det.score_one({"x": v}))
    ...     det.learn_one({"x": v})
    >>> scores[-3:]
    [1.0, 0.0, 0.0]
    """

    def __init__(
        self,
        feature: str,
        kind: Literal["adwin", "page_hinkley"] = "adwin",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.feature = feature
        self.kind = kind
        cls = drift.ADWIN if kind == "adwin" else drift.PageHinkley
        self.detector: drift.ADWIN | drift.PageHinkley = cls(**kwargs)

    @property
    def drift_detected(self) -> bool:
        """Whether the latest ``learn_one`` flagged a drift."""
        return bool(self.detector.drift_detected)

    def score_one(self, x: Mapping[str, Any]) -> float:
        """1.0 if learning ``x`` would flag a drift, else 0.0 (works on a copy)."""
        v = _feature(x, self.feature)
        if v is None:
            return 0.0
        probe = copy.deepcopy(self.detector)
        probe.update(v)
        return 1.0 if probe.drift_detected else 0.0

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Update the River detector with ``x[feature]``."""
        v = _feature(x, self.feature)
        if v is not None:
            self.detector.update(v)


# --------------------------------------------------------------------------- #
# Threshold rules
# --------------------------------------------------------------------------- #


class ThresholdRule:
    """Stateless rule: 1.0 when ``x[feature]`` is at or beyond a fixed threshold.

    >>> rule = ThresholdRule("hour_count", 8)
    >>> rule.score_one({"hour_count": 9}), rule.score_one({"hour_count": 2}), rule.score_one({})
    (1.0, 0.0, 0.0)
    >>> ThresholdRule("balance", 0, above=False).score_one({"balance": -5})
    1.0
    """

    __slots__ = ("above", "feature", "threshold")

    def __init__(
        self, feature: str, threshold: float, above: bool = True, seed: int | None = None
    ) -> None:
        self.feature = feature
        self.threshold = float(threshold)
        self.above = above

    def score_one(self, x: Mapping[str, Any]) -> float:
        """1.0 if the rule holds for ``x``, else 0.0."""
        v = _feature(x, self.feature)
        if v is None:
            return 0.0
        hit = v >= self.threshold if self.above else v <= self.threshold
        return 1.0 if hit else 0.0

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Nothing to learn."""

    def __getstate__(self) -> tuple[str, float, bool]:
        return (self.feature, self.threshold, self.above)

    def __setstate__(self, st: tuple[str, float, bool]) -> None:
        self.feature, self.threshold, self.above = st


class EwmaZScore:
    """Absolute z-score of ``x[feature]`` against an exponentially weighted mean and variance.

    The score is 0.0 until ``warmup`` values have been learnt. ``half_life``
    is in observations. Three floats and one int of state.

    >>> det = EwmaZScore("amount", half_life=20, warmup=5)
    >>> for v in [10, 11, 9, 10, 11, 9, 10]:
    ...     det.learn_one({"amount": v})
    >>> round(det.score_one({"amount": 10}), 2), det.score_one({"amount": 30}) > 10
    (0.01, True)
    """

    __slots__ = ("alpha", "feature", "mean", "n", "var", "warmup")

    def __init__(
        self, feature: str, half_life: float = 50.0, warmup: int = 10, seed: int | None = None
    ) -> None:
        self.feature = feature
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.warmup = warmup
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def score_one(self, x: Mapping[str, Any]) -> float:
        """``|x - mean| / std`` before learning ``x`` (0.0 during warm-up)."""
        v = _feature(x, self.feature)
        if v is None or self.n < self.warmup:
            return 0.0
        return abs(v - self.mean) / math.sqrt(self.var + 1e-12)

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Update the weighted mean and variance."""
        v = _feature(x, self.feature)
        if v is None:
            return
        if self.n == 0:
            self.mean = v
        else:
            d = v - self.mean
            self.mean += self.alpha * d
            self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d)
        self.n += 1

    def __getstate__(self) -> tuple[str, float, int, int, float, float]:
        return (self.feature, self.alpha, self.warmup, self.n, self.mean, self.var)

    def __setstate__(self, st: tuple[str, float, int, int, float, float]) -> None:
        self.feature, self.alpha, self.warmup, self.n, self.mean, self.var = st


# --------------------------------------------------------------------------- #
# Global anomaly model
# --------------------------------------------------------------------------- #


ScaleSpec = tuple[tuple[str, float, float], ...]


def scaling(features: Iterable[str], ranges: Mapping[str, tuple[float, float]]) -> ScaleSpec:
    """Precompute min-max scaling: ``(name, low, 1 / (high - low))`` per feature.

    Features without a range are taken as already in (0, 1).

    >>> scaling(("a", "b"), {"a": (0, 10)})
    (('a', 0.0, 0.1), ('b', 0.0, 1.0))
    """
    spec = []
    for k in features:
        lo, hi = ranges.get(k, (0.0, 1.0))
        if not hi > lo:
            raise ValueError(f"empty range for feature {k!r}: ({lo}, {hi})")
        spec.append((k, float(lo), 1.0 / (float(hi) - float(lo))))
    return tuple(spec)


def scale(x: Mapping[str, Any], spec: ScaleSpec) -> dict[str, float]:
    """Scale ``x`` to [0, 1] with a :func:`scaling` spec, clipping.

    Every feature of the spec is present in the result (Half-Space Trees fix
    their features on the first event); missing, None and NaN values become
    0.0, infinities are clipped; extra keys of ``x`` are dropped.

    >>> scale({"a": 5, "b": float("nan"), "z": 1}, scaling(("a", "b", "c"), {"a": (0, 10)}))
    {'a': 0.5, 'b': 0.0, 'c': 0.0}
    """
    values = scale_values(tuple(x.get(k) for k, _, _ in spec), spec)
    return dict(zip([k for k, _, _ in spec], values, strict=True))


def scale_values(values: Sequence[float | None], spec: ScaleSpec) -> tuple[float, ...]:
    """:func:`scale` of the spec's features given as a row of values, in spec order: the
    scaled values as a tuple in spec order, with no dict built (None, NaN and negatives
    become 0.0).

    >>> scale_values((5.0, float("nan"), None, 3.0), scaling(("a", "b", "c", "d"), {"a": (0, 10)}))
    (0.5, 0.0, 0.0, 1.0)
    """
    out: list[float] = []
    append = out.append
    for (_, lo, inv), v in zip(spec, values, strict=True):
        if v is None:
            append(0.0)
            continue
        s = (v - lo) * inv
        if s > 1.0:
            s = 1.0
        elif not s >= 0.0:  # negative or NaN
            s = 0.0
        append(float(s))
    return tuple(out)


def row_scaler(spec: ScaleSpec, order: Sequence[int]
               ) -> Callable[[Sequence[float | None]], tuple[float, ...]]:
    """``scale_values`` of a row's values picked by ``order``, compiled for the spec:
    ``row_scaler(spec, order)(row) == scale_values(tuple(row[i] for i in order), spec)``
    for a row of floats or None (each value scaled by straight-line code, the same
    operations as :func:`scale_values`: no loop, no zip, no tuple of the picked values).

    >>> spec = scaling(("a", "b", "c", "d"), {"a": (0, 10), "d": (2, 4)})
    >>> row = (float("nan"), 5.0, None, 3.0, 9.0)
    >>> f = row_scaler(spec, (1, 0, 2, 4))
    >>> f(row), scale_values((5.0, float("nan"), None, 9.0), spec)
    ((0.5, 0.0, 0.0, 1.0), (0.5, 0.0, 0.0, 1.0))
    >>> row_scaler(scaling(("a",), {"a": (-math.inf, 0.0)}), (0,))((-3.0,))
    (0.0,)
    """
    scale_row: Callable[[Sequence[float | None]], tuple[float, ...]] = _scaler(spec, order, None)
    return scale_row


def args_scaler(spec: ScaleSpec, order: Sequence[int], width: int
                ) -> Callable[..., tuple[float, ...]]:
    """:func:`row_scaler` taking the row as ``width`` positional arguments rather than a
    tuple (the caller builds no row): ``args_scaler(spec, order, len(row))(*row) ==
    row_scaler(spec, order)(row)``, bit for bit, for a row of Python floats and ints
    (never None: there is no None test, and no ``float()`` of each result, which is a
    float already: the bounds are floats).

    >>> spec = scaling(("a", "b", "c", "d"), {"a": (0, 10), "d": (2, 4)})
    >>> args_scaler(spec, (1, 0, 2, 4), 5)(float("nan"), 5.0, -1.0, 3, 9.0)
    (0.5, 0.0, 0.0, 1.0)
    """
    if not all(0 <= i < width for i in order):
        raise ValueError("args_scaler: a position beyond the row's width")
    return _scaler(spec, order, width)


def _scaler(spec: ScaleSpec, order: Sequence[int], width: int | None) -> Callable[..., Any]:
    """The compiled scaler of :func:`row_scaler` (``width`` None: takes a row) or of
    :func:`args_scaler` (takes ``width`` values)."""
    if len(order) != len(spec) or not all(type(i) is int for i in order):
        raise ValueError("row_scaler: one int position per feature of the spec")
    # The bounds are bound as local defaults, not written as literals: an infinite
    # bound (a range like (-inf, 0), or 1 / (high - low) overflowing) has no literal.
    namespace: dict[str, Any] = {}
    for n, (_, lo, inv) in enumerate(spec):
        namespace[f"lo{n}"], namespace[f"inv{n}"] = float(lo), float(inv)
    params = "row, " if width is None else "".join(f"v{i}, " for i in range(width))
    lines = ["def scale_row(" + params + "".join(f"lo{n}=lo{n}, inv{n}=inv{n}, "
                                                 for n in range(len(spec))) + "):"]
    for n, ((_, _, inv), i) in enumerate(zip(spec, order, strict=True)):
        if width is None:
            lines += [
                f" v = row[{i}]",
                " if v is None:",
                f"  s{n} = 0.0",
                " else:",
                f"  s{n} = (v - lo{n}) * inv{n}",
                f"  if s{n} > 1.0:",
                f"   s{n} = 1.0",
                f"  elif not s{n} >= 0.0:",  # negative or NaN
                f"   s{n} = 0.0",
                "  else:",
                f"   s{n} = float(s{n})",
            ]
        else:  # (x * 1.0 is x: no multiplication by an inverse width of 1.0)
            lines += [
                f" s{n} = v{i} - lo{n}" if inv == 1.0 else f" s{n} = (v{i} - lo{n}) * inv{n}",
                f" if s{n} > 1.0:",
                f"  s{n} = 1.0",
                f" elif not s{n} >= 0.0:",  # negative or NaN
                f"  s{n} = 0.0",
            ]
    lines.append(" return (" + "".join(f"s{n}, " for n in range(len(spec))) + ")")
    scale_row: Callable[..., Any] = compiled_function(lines, "<row_scaler>", "scale_row",
                                                      namespace)
    return scale_row


def minmax_scale(
    x: Mapping[str, Any], features: Iterable[str], ranges: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """One-off :func:`scale` (builds the spec each call; hot paths keep a spec).

    >>> minmax_scale({"a": 5, "b": 99, "z": 1}, ("a", "b", "c"), {"a": (0, 10), "b": (0, 50)})
    {'a': 0.5, 'b': 1.0, 'c': 0.0}
    """
    return scale(x, scaling(features, ranges))


class AnomalyModel:
    """Global Half-Space Trees anomaly model with a running-quantile threshold.

    Features are min-max scaled with fixed ``ranges`` (default (0, 1), i.e.
    already scaled, which is what :func:`detectors.behaviour.on_transaction`
    returns), so scaling never depends on the data seen. Usage per event::

        score = model.score_one(x)        # before learning
        flagged = model.is_anomalous(score)
        model.learn_one(x)                # skips the trees if x is flagged

    ``learn_one`` feeds every score to the quantile estimate
    (``river.stats.Quantile``, P² algorithm, five markers) but trains the
    trees only on events that are not flagged, so a burst of anomalies does
    not teach the model that they are normal. ``is_anomalous`` is False until
    ``warmup`` events have been learnt; afterwards it is
    ``score >= max(quantile, min_score)``. The scored-but-not-learnt score is
    cached (by value of the scaled features) with the event's leaf paths, so
    ``score_one`` then ``learn_one`` walks the trees once. The trees are
    :class:`detectors.hst.FlatHalfSpaceTrees`: River's algorithm and scores on
    flat arrays. Memory is fixed by ``n_trees`` and ``height``
    (``n_trees * (2 ** (height + 1) - 1)`` nodes).

    The P² estimate neither forgets nor is exact at extreme quantiles: on a
    steady synthetic stream, whose Half-Space-Trees scores take few distinct
    values, it put the 99.5th percentile at 0.755 where the empirical one was
    0.673, so fewer than 0.5 % of events were flagged (none there). Treat
    ``quantile`` as a ceiling on the flag rate, not a target.

    >>> import random
    >>> rng = random.Random(7)
    >>> m = AnomalyModel(("a", "b"), window_size=50, warmup=200, seed=42)
    >>> flags = 0
    >>> for _ in range(600):
    ...     x = {"a": rng.gauss(0.3, 0.05), "b": rng.gauss(0.6, 0.05)}
    ...     s = m.score_one(x)
    ...     flags += m.is_anomalous(s)
    ...     m.learn_one(x)
    >>> far = m.score_one({"a": 0.95, "b": 0.02})
    >>> m.is_anomalous(far), far > m.threshold, flags < 20
    (True, True, True)
    """

    def __init__(
        self,
        features: Iterable[str],
        ranges: Mapping[str, tuple[float, float]] | None = None,
        *,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        quantile: float = 0.995,
        warmup: int = 1000,
        min_score: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.features: tuple[str, ...] = tuple(sorted(features))
        self.spec = scaling(self.features, ranges or {})
        self.seed = seed
        self.warmup = warmup
        self.min_score = min_score
        self.hst = FlatHalfSpaceTrees(
            self.features, n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.quantile = stats.Quantile(quantile)
        self.n_learnt = 0
        self.n_flagged = 0
        self._cache_key: tuple[float, ...] | None = None
        #: Leaves of the cached event (``_cache_path``, its paths, is kept empty: the
        #: attribute marks FlatHalfSpaceTrees-era checkpoints for Engine.restore_models).
        self._cache_leaves: Sequence[int] = ()
        self._cache_path: list[tuple[int, ...]] = []
        self._cache_score = 0.0

    def _scale(self, x: Mapping[str, Any]) -> tuple[float, ...]:
        """The features of ``x`` scaled to [0, 1] (see :func:`scale`), in feature order."""
        out = []
        for k, lo, inv in self.spec:
            v = x.get(k)
            if v is None:
                out.append(0.0)
                continue
            # (v - 0.0) * 1.0 is v itself for a float
            s = v if type(v) is float and lo == 0.0 and inv == 1.0 else (v - lo) * inv
            if s > 1.0:
                s = 1.0
            elif not s >= 0.0:  # negative or NaN
                s = 0.0
            out.append(float(s))
        return tuple(out)

    def _score_scaled(self, xs: tuple[float, ...]) -> float:
        if xs == self._cache_key:
            return self._cache_score
        self._cache_leaves = self.hst.leaves(xs)
        score = float(self.hst.score_leaves(self._cache_leaves))
        self._cache_key, self._cache_score = xs, score
        return score

    @property
    def threshold(self) -> float:
        """Current flagging threshold (``min_score`` until the quantile exists)."""
        q = self.quantile.get()
        return self.min_score if q is None else max(float(q), self.min_score)

    def score_one(self, x: Mapping[str, Any]) -> float:
        """Anomaly score in [0, 1] (high = unusual); 0.0 during the first window."""
        return self._score_scaled(self._scale(x))

    def is_anomalous(self, score: float) -> bool:
        """Whether ``score`` is above the running threshold (False during warm-up)."""
        return self.n_learnt >= self.warmup and score >= self.threshold

    def explain_one(
        self, x: Mapping[str, Any], baseline: Mapping[str, Any], top: int = 3
    ) -> list[tuple[str, float]]:
        """Which features make ``x`` unusual, by occlusion: for each feature of
        ``baseline`` on which ``x`` differs, the score ``x`` would get with that one
        feature at its baseline value. The ``top`` features whose baseline value lowers
        the score most, as ``(feature, score without it)``, the largest drop first
        (ties by feature name); features that lower nothing are left out. Reads the
        trees only: nothing is learnt, the threshold and the score cache stay as they
        are, so it can follow ``score_one`` of a flagged event.

        >>> import random
        >>> rng = random.Random(7)
        >>> m = AnomalyModel(("a", "b", "c"), window_size=50, warmup=0, seed=42)
        >>> for _ in range(300):
        ...     m.learn_one({"a": rng.gauss(0.3, 0.05), "b": rng.gauss(0.6, 0.05), "c": 0.0})
        >>> ordinary = {"a": 0.3, "b": 0.6, "c": 0.0}
        >>> [f for f, _ in m.explain_one({"a": 0.3, "b": 0.6, "c": 1.0}, ordinary)]
        ['c']
        >>> m.explain_one(ordinary, ordinary)
        []
        """
        xs = self._scale(x)
        base = self._scale({**x, **baseline})
        index = [i for i, k in enumerate(self.features) if k in baseline]
        return [(self.features[i], without) for i, without in self._explain(xs, base, index, top)]

    def explain_scaled(
        self, xs: tuple[float, ...], baseline: Sequence[float | None], top: int = 3
    ) -> list[tuple[str, float]]:
        """:meth:`explain_one` of an event already scaled (as :meth:`score_learn_scaled`
        takes it), against a baseline scaled the same way (None: the feature is never a
        reason)."""
        base = tuple(x if b is None else b for x, b in zip(xs, baseline, strict=True))
        index = [i for i, b in enumerate(baseline) if b is not None]
        return [(self.features[i], without) for i, without in self._explain(xs, base, index, top)]

    def _explain(self, xs: tuple[float, ...], base: tuple[float, ...], index: list[int],
                 top: int) -> list[tuple[int, float]]:
        hst = self.hst
        score = float(hst.score_leaves(hst.leaves(xs)))
        drops: list[tuple[float, int, float]] = []
        for i in index:
            if xs[i] == base[i]:
                continue
            without = float(hst.score_leaves(hst.leaves((*xs[:i], base[i], *xs[i + 1:]))))
            if without < score:
                drops.append((score - without, i, without))
        drops.sort(key=lambda d: (-d[0], self.features[d[1]]))
        return [(i, without) for _, i, without in drops[:top]]

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Update the threshold with x's score; train the trees unless x is flagged."""
        self._learn_scaled(self._scale(x))

    def _learn_scaled(self, xs: tuple[float, ...]) -> None:
        score = self._score_scaled(xs)
        flagged = self.is_anomalous(score)
        self.quantile.update(score)
        self.n_learnt += 1
        if flagged:
            self.n_flagged += 1
            return
        self.hst.learn_leaves(self._cache_leaves)
        self._cache_key = None

    def score_learn(self, x: Mapping[str, Any], learn: bool = True) -> tuple[float, bool]:
        """``score_one``, ``is_anomalous`` and (with ``learn``) ``learn_one``, scaling once."""
        return self.score_learn_scaled(self._scale(x), learn)

    @property
    def scales_identity(self) -> bool:
        """Whether scaling leaves features already in [0, 1] as they are (no ``ranges``):
        then :meth:`score_learn_scaled` takes such features without a dict.

        >>> AnomalyModel(("a",)).scales_identity, AnomalyModel(("a",), {"a": (0, 2)}).scales_identity
        (True, False)
        """
        return all(lo == 0.0 and inv == 1.0 for _, lo, inv in self.spec)

    def score_learn_scaled(self, xs: tuple[float, ...], learn: bool = True) -> tuple[float, bool]:
        """:meth:`score_learn` of an event already scaled: ``xs`` is what :meth:`_scale`
        returns for it (one float in [0, 1] per feature, in the order of ``features``).

        >>> m = AnomalyModel(("a", "b"), window_size=2, warmup=0)
        >>> m.score_learn_scaled((0.2, 0.9)), m.n_learnt
        ((0.0, False), 1)
        """
        # self._score_scaled(xs) and self.is_anomalous(score), inlined; a new event is
        # cached only when it is left unlearnt (learning it would clear the cache again)
        key = self._cache_key
        hit = key is not None and xs == key
        if hit:
            score, leaves = self._cache_score, self._cache_leaves
        else:
            hst = self.hst
            leaves = hst.leaves(xs)
            score = hst.score_leaves(leaves)  # a float (FlatHalfSpaceTrees)
        if self.n_learnt >= self.warmup:
            # the threshold property: max(float(q), min_score), without the calls (q is a
            # float; max keeps q on a tie, an equal value)
            q = self.quantile.get()
            min_score = self.min_score
            flagged = score >= (min_score if q is None or min_score > q else q)
        else:
            flagged = False
        if learn:  # _learn_scaled(xs), whose score and verdict are those above
            self.quantile.update(score)
            self.n_learnt += 1
            if not flagged:
                self.hst.learn_leaves(leaves)
                self._cache_key = None
                return score, flagged
            self.n_flagged += 1
        if not hit:
            self._cache_key, self._cache_leaves, self._cache_score = xs, leaves, score
        return score, flagged

    def __getstate__(self) -> dict[str, Any]:
        # Without the score cache (recomputed on demand): the same layout as before
        # leaves were cached, so either version loads the other's checkpoints.
        state = dict(self.__dict__)
        state.pop("_cache_leaves", None)
        state.update(_cache_key=None, _cache_path=[], _cache_score=0.0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_key, self._cache_leaves, self._cache_path = None, (), []

    def process_one(self, x: Mapping[str, Any]) -> tuple[float, bool]:
        """Score, decide and learn in one call: ``(score, flagged)``."""
        score = self.score_one(x)
        flagged = self.is_anomalous(score)
        self.learn_one(x)
        return score, flagged


# --------------------------------------------------------------------------- #
# Conformance registry
# --------------------------------------------------------------------------- #


def _default_sample(rng: random.Random) -> dict[str, Any]:
    return {
        "x": rng.gauss(3.5, 0.8),
        "amount": rng.lognormvariate(3.5, 0.8),
        "hour_count": rng.randint(0, 10),
        "a": rng.random(),
        "b": rng.random(),
    }


@dataclass(frozen=True)
class ConformanceSpec:
    """How the conformance suite builds and feeds one detector class.

    To register a detector, list a spec in a module-level
    ``CONFORMANCE_SPECS`` of any module in ``detectors/``; the suite imports
    every such module and runs all checks on every spec. ``factory(seed)``
    builds a fresh instance, ``sample(rng)`` draws one input dict,
    ``max_pickle_bytes`` bounds the pickled size after 10 000 events and
    ``growth_bytes`` bounds its growth from 2 000 to 10 000 events (constant
    memory; raise it only for a reference detector whose growth is known,
    such as ADWIN's logarithmic bucket list).

    >>> spec = ConformanceSpec("rule", ThresholdRule, lambda s: ThresholdRule("x", 1.0), 200)
    >>> spec.factory(0).score_one({"x": 2.0})
    1.0
    """

    name: str
    cls: type
    factory: Callable[[int], Any]
    max_pickle_bytes: int
    sample: Callable[[random.Random], dict[str, Any]] = _default_sample
    growth_bytes: int = 64


#: Specs of the detectors of this module, picked up by the conformance suite.
CONFORMANCE_SPECS: list[ConformanceSpec] = [
    ConformanceSpec(
        "compact_page_hinkley",
        CompactPageHinkley,
        lambda seed: CompactPageHinkley("x", PageHinkleyParams(threshold=5.0)),
        400,
    ),
    ConformanceSpec(
        "river_page_hinkley",
        RiverDrift,
        lambda seed: RiverDrift("x", kind="page_hinkley", threshold=5.0),
        1_000,
    ),
    ConformanceSpec(
        "river_adwin",
        RiverDrift,
        lambda seed: RiverDrift("x", kind="adwin"),
        4_000,
        growth_bytes=512,  # reference only: ADWIN's buckets grow as log(events)
    ),
    ConformanceSpec(
        "threshold_rule", ThresholdRule, lambda seed: ThresholdRule("hour_count", 8), 200
    ),
    ConformanceSpec("ewma_zscore", EwmaZScore, lambda seed: EwmaZScore("amount"), 300),
    ConformanceSpec(
        "flat_half_space_trees",
        FlatHalfSpaceTrees,
        lambda seed: FlatHalfSpaceTrees(("a", "b"), window_size=50, seed=seed),
        60_000,
    ),
    ConformanceSpec(
        "anomaly_model",
        AnomalyModel,
        lambda seed: AnomalyModel(("a", "b", "x"), {"x": (0.0, 8.0)}, warmup=300, seed=seed),
        250_000,
    ),
]
