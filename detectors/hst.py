"""Half-Space Trees on flat arrays: River's algorithm, the same scores, 4-5x less CPU.

River's :class:`river.anomaly.HalfSpaceTrees` keeps each tree as linked node
objects and walks them twice per event (once to score, once to learn). The
global anomaly model runs on every card transaction, so that walk was the
largest single cost of the engine (about 60 µs of a worker's event). Here each
tree is a complete binary tree in heap order (node ``i`` has children
``2i + 1`` and ``2i + 2``), its split features, thresholds and masses are plain
lists, and an event's leaf path through every tree is computed once and used
for the score and the learning step.

The trees are built by River's own ``make_padded_tree`` from the same seeded
``random.Random``, and the score and learning rules are River's, so for the same
seed and input the scores equal River's exactly (``tests/detectors/test_hst.py``
checks it over window pivots). Two shortcuts keep them equal at less cost: an
event is counted at its leaf only (internal masses are sums over leaves, added
up at the window's pivot), and a tree's score part, fixed within a window for a
given leaf, is memoised per leaf. Input is a
dict of every feature, already scaled to [0, 1] (``score_one`` / ``learn_one``),
or for the hot path a sequence of floats in the order of ``features`` (sorted
names, as River sorts them) given to :meth:`path`, whose result
:meth:`score_path` and :meth:`learn_path` share.

>>> t = FlatHalfSpaceTrees(("a", "b"), n_trees=3, height=4, window_size=5, seed=1)
>>> t.score_one({"a": 0.2, "b": 0.7})  # first window: no reference mass yet
0.0
>>> for v in (0.2, 0.25, 0.22, 0.21, 0.24, 0.23):
...     t.learn_one({"a": v, "b": 0.7})
>>> t.score_one({"a": 0.21, "b": 0.7}) < t.score_one({"a": 0.95, "b": 0.05})
True
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from river.tree.padded import make_padded_tree

from detectors.base import compiled_function


class FlatHalfSpaceTrees:
    """Half-Space Trees over ``features`` (each in [0, 1]), River-identical scores.

    Memory is fixed: ``n_trees * (2 ** (height + 1) - 1)`` nodes, two masses each,
    and a split feature and threshold per internal node.

    >>> t = FlatHalfSpaceTrees(("x",), n_trees=2, height=3, window_size=2, seed=0)
    >>> for v in (0.1, 0.12, 0.11, 0.13):
    ...     t.learn_one({"x": v})
    >>> t.score_one({"x": 0.12}) < t.score_one({"x": 0.9})
    True
    """

    def __init__(self, features: Iterable[str], *, n_trees: int = 10, height: int = 8,
                 window_size: int = 250, seed: int | None = None) -> None:
        self.features = tuple(sorted(features))
        if not self.features:
            raise ValueError("FlatHalfSpaceTrees needs at least one feature")
        if n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_trees, height and window_size must be positive")
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.counter = 0
        self.first_window = True
        self.size_limit = 0.1 * window_size
        self.max_score = n_trees * window_size * (2 ** (height + 1) - 1)
        rng = random.Random(seed)
        position = {name: i for i, name in enumerate(self.features)}
        inner = 2 ** height - 1
        n_nodes = 2 ** (height + 1) - 1
        self._feature: list[list[int]] = []
        self._threshold: list[list[float]] = []
        for _ in range(n_trees):
            root = make_padded_tree(limits={name: (0.0, 1.0) for name in self.features},
                                    height=height, padding=0.15, rng=rng, r_mass=0, l_mass=0)
            feature = [0] * inner
            threshold = [0.0] * inner
            level = [root]
            index = 0
            while index < inner:  # breadth first: heap order
                below = []
                for node in level:
                    feature[index] = position[node.feature]
                    threshold[index] = node.threshold
                    below.extend(node.children)
                    index += 1
                level = below
            self._feature.append(feature)
            self._threshold.append(threshold)
        self._l_mass = [[0] * n_nodes for _ in range(n_trees)]  # leaves kept by _prepare
        self._r_mass = [[0] * n_nodes for _ in range(n_trees)]
        self._prepare()

    def _prepare(self) -> None:
        """Derived tables of the hot path (rebuilt on unpickling, never pickled).

        Learning counts an event at its leaves only (``_l_leaf``): a node's mass is
        the sum of the masses of the leaves below it, because every learnt event
        passes from the root to a leaf, so the full ``_l_mass`` is summed up at
        the window's pivot (and when pickled). Within a window the reference masses
        are fixed, so each tree's score contribution is a function of the leaf,
        memoised in ``_leaf_score`` until the next pivot.
        """
        height = self.height
        inner = 2 ** height - 1
        self._inner = inner
        self._split = [list(zip(f, t, strict=True))
                       for f, t in zip(self._feature, self._threshold, strict=True)]
        self._paths = _leaf_paths(height)
        self._l_leaf = [list(mass[inner:]) for mass in self.__dict__.pop("_l_mass")]
        #: A part not yet known is _unknown, below minus any score: one unknown makes
        #: the sum of a forest's parts negative (tested for, instead of catching the
        #: TypeError a None raised).
        self._unknown = -(self.max_score + 1)
        self._leaf_score: list[list[int]] = [
            [self._unknown] * (inner + 1) for _ in range(self.n_trees)]
        self._leaves = _leaf_finder(self._feature, self._threshold, height)
        self._count = _leaf_counter(self.n_trees)
        self._sum_parts = _part_summer(self.n_trees)

    def path(self, x: Sequence[float]) -> list[tuple[int, ...]]:
        """Each tree's root-to-leaf node indices for ``x`` (``height + 1`` each)."""
        paths = self._paths
        return [paths[leaf] for leaf in self.leaves(x)]

    def leaves(self, x: Sequence[float]) -> tuple[int, ...]:
        """Each tree's leaf for ``x``, numbered 0 .. 2**height - 1 from the left (the
        hot path's form of :meth:`path`: ``path(x)[t][-1] == 2**height - 1 + leaves(x)[t]``)."""
        if self._leaves is not None:
            return self._leaves(x)
        inner = self._inner
        levels = range(self.height)
        out = []
        for split in self._split:
            i = 0
            for _ in levels:
                f, t = split[i]
                i = 2 * i + 1 if x[f] < t else 2 * i + 2
            out.append(i - inner)
        return tuple(out)

    def score_path(self, paths: Sequence[Sequence[int]]) -> float:
        """Anomaly score in [0, 1] of the event whose :meth:`path` is ``paths``."""
        inner = self._inner
        return self.score_leaves([nodes[-1] - inner for nodes in paths])

    def score_leaves(self, leaves: Sequence[int]) -> float:
        """Anomaly score in [0, 1] of the event whose :meth:`leaves` are ``leaves``."""
        if self.first_window:
            return 0.0
        # Every tree's part already memoised: about 5 events in 6 (else the sum is negative)
        score = self._sum_parts(self._leaf_score, leaves)
        if score >= 0:
            return 1 - score / self.max_score
        paths = self._paths
        unknown = self._unknown
        score = 0
        for memo, r_mass, leaf in zip(self._leaf_score, self._r_mass, leaves, strict=True):
            part = memo[leaf]
            if part == unknown:
                part = memo[leaf] = _walk(r_mass, paths[leaf], self.size_limit)
            score += part
        return 1 - score / self.max_score

    def learn_path(self, paths: Sequence[Sequence[int]]) -> None:
        """Count the event whose :meth:`path` is ``paths``; pivot at the window's end."""
        inner = self._inner
        self.learn_leaves([nodes[-1] - inner for nodes in paths])

    def learn_leaves(self, leaves: Sequence[int]) -> None:
        """Count the event whose :meth:`leaves` are ``leaves``; pivot at the window's end."""
        self._count(self._l_leaf, leaves)  # l_leaf[leaf] += 1 for each tree's pair
        self.counter += 1
        if self.counter == self.window_size:
            self._r_mass = self._full_l_mass()
            self._l_leaf = [[0] * len(leaf) for leaf in self._l_leaf]
            self._leaf_score = [[self._unknown] * len(memo) for memo in self._leaf_score]
            self.first_window = False
            self.counter = 0

    def _full_l_mass(self) -> list[list[int]]:
        """Every node's learnt mass, summed up from the leaves."""
        out = []
        for leaf in self._l_leaf:
            levels = [leaf]
            below = leaf
            while len(below) > 1:  # a level's nodes are the pairs of the level below
                below = list(map(operator.add, below[0::2], below[1::2]))
                levels.append(below)
            mass: list[int] = []
            for level in reversed(levels):
                mass += level
            out.append(mass)
        return out

    def vector(self, x: Mapping[str, float]) -> tuple[float, ...]:
        """``x`` as the sequence :meth:`path` takes (a missing feature is an error)."""
        try:
            return tuple(x[name] for name in self.features)
        except KeyError as exc:
            raise ValueError(f"FlatHalfSpaceTrees: feature {exc.args[0]!r} missing") from None

    def score_one(self, x: Mapping[str, float]) -> float:
        """Anomaly score of ``x`` (a dict of every feature), before learning it."""
        return self.score_path(self.path(self.vector(x)))

    def learn_one(self, x: Mapping[str, float]) -> None:
        """Learn ``x`` (a dict of every feature)."""
        self.learn_path(self.path(self.vector(x)))

    def __getstate__(self) -> dict[str, Any]:
        # The layout of before the leaf-only counting: full masses, no derived tables.
        state = {k: v for k, v in self.__dict__.items() if k not in _DERIVED}
        state["_l_mass"] = self._full_l_mass()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prepare()


#: Attributes :meth:`FlatHalfSpaceTrees._prepare` derives (not pickled).
_DERIVED = frozenset({"_inner", "_split", "_paths", "_l_leaf", "_unknown", "_leaf_score",
                      "_leaves", "_count", "_sum_parts"})

#: Largest forest (internal nodes over all trees) :func:`_leaf_finder` compiles.
_MAX_COMPILED_NODES = 20_000


def _leaf_finder(features: Sequence[Sequence[int]], thresholds: Sequence[Sequence[float]],
                 height: int) -> Callable[[Sequence[float]], tuple[int, ...]] | None:
    """A function of ``x`` giving each tree's leaf (offset among the leaves), compiled
    from the splits as nested ``if x[f] < threshold`` tests (each ``x[f]`` read once, into
    a local, first): the same comparisons as the walk in :meth:`FlatHalfSpaceTrees.path`,
    without the indexing (about 3x faster). ``None`` (walk the lists instead) for a large forest or a split that is
    not a plain int feature and finite float threshold.

    >>> find = _leaf_finder([[0, 1, 1]], [[0.5, 0.2, 0.7]], 2)
    >>> find([0.1, 0.9]), find([0.9, 0.9]), find([0.9, 0.1])
    ((1,), (3,), (2,))
    """
    inner = 2 ** height - 1
    if len(features) * inner > _MAX_COMPILED_NODES:
        return None
    return _compiled(tuple(map(tuple, features)), tuple(map(tuple, thresholds)), height)


@lru_cache(maxsize=8)
def _compiled(features: tuple[tuple[int, ...], ...], thresholds: tuple[tuple[float, ...], ...],
              height: int) -> Callable[[Sequence[float]], tuple[int, ...]] | None:
    inner = 2 ** height - 1
    lines = ["def leaves(x):"]
    for tree, (feature, threshold) in enumerate(zip(features, thresholds, strict=True)):
        if len(feature) != inner or len(threshold) != inner or not all(
                type(f) is int and f >= 0 for f in feature) or not all(
                type(t) is float and math.isfinite(t) for t in threshold):
            return None

        def emit(i: int, depth: int, tree: int = tree, feature: Sequence[int] = feature,
                 threshold: Sequence[float] = threshold) -> None:
            pad = " " * (depth + 1)
            if depth == height:
                lines.append(f"{pad}l{tree} = {i - inner}")
                return
            lines.append(f"{pad}if x{feature[i]} < {threshold[i]!r}:")
            emit(2 * i + 1, depth + 1)
            lines.append(f"{pad}else:")
            emit(2 * i + 2, depth + 1)

        emit(0, 0)
    lines.append(" return (" + "".join(f"l{t}, " for t in range(len(features))) + ")")
    # Each feature read from x once, into a local (x3 = x[3]), before the tests.
    lines[1:1] = [f" x{f} = x[{f}]" for f in sorted({f for fs in features for f in fs})]
    leaves: Callable[[Sequence[float]], tuple[int, ...]] = compiled_function(
        lines, "<FlatHalfSpaceTrees leaves>", "leaves")
    return leaves


@lru_cache(maxsize=16)
def _leaf_counter(n_trees: int) -> Callable[[Sequence[list[int]], Sequence[int]], None]:
    """A function adding one to ``counts[t][leaves[t]]`` for each of ``n_trees`` trees,
    compiled as straight-line code (a ValueError if either is not ``n_trees`` long, as
    ``zip(..., strict=True)`` gives).

    >>> counts = [[0, 0], [0, 0, 0]]
    >>> _leaf_counter(2)(counts, (1, 2))
    >>> counts
    [[0, 1], [0, 0, 1]]
    """
    names = [f"l{t}" for t in range(n_trees)]
    leaves = [f"a{t}" for t in range(n_trees)]
    lines = [
        "def count(counts, leaves):",
        f" {', '.join(names)}, = counts",
        f" {', '.join(leaves)}, = leaves",
        *(f" {n}[{a}] += 1" for n, a in zip(names, leaves, strict=True)),
    ]
    count: Callable[[Sequence[list[int]], Sequence[int]], None] = compiled_function(
        lines, "<FlatHalfSpaceTrees count>", "count")
    return count


@lru_cache(maxsize=16)
def _part_summer(n_trees: int) -> Callable[[Sequence[list[int]], Sequence[int]], int]:
    """A function summing ``parts[t][leaves[t]]`` over ``n_trees`` trees, compiled as
    straight-line code (replaces ``sum(map(list.__getitem__, parts, leaves))``, in the
    same order; a ValueError if either is not ``n_trees`` long).

    >>> _part_summer(2)([[5, 6], [7, 8, 9]], (1, 2))
    15
    """
    names = [f"p{t}" for t in range(n_trees)]
    leaves = [f"a{t}" for t in range(n_trees)]
    lines = [
        "def sum_parts(parts, leaves):",
        f" {', '.join(names)}, = parts",
        f" {', '.join(leaves)}, = leaves",
        " return " + " + ".join(f"{n}[{a}]" for n, a in zip(names, leaves, strict=True)),
    ]
    sum_parts: Callable[[Sequence[list[int]], Sequence[int]], int] = compiled_function(
        lines, "<FlatHalfSpaceTrees sum_parts>", "sum_parts")
    return sum_parts


@lru_cache(maxsize=16)
def _leaf_paths(height: int) -> tuple[tuple[int, ...], ...]:
    """Root-to-leaf node indices of every leaf of a heap-ordered tree of ``height``.

    >>> _leaf_paths(2)
    ((0, 1, 3), (0, 1, 4), (0, 2, 5), (0, 2, 6))
    """
    inner = 2 ** height - 1
    out = []
    for leaf in range(inner, 2 * inner + 1):
        nodes = [leaf]
        while nodes[-1]:
            nodes.append((nodes[-1] - 1) // 2)
        out.append(tuple(reversed(nodes)))
    return tuple(out)


def _walk(r_mass: Sequence[int], nodes: Sequence[int], size_limit: float) -> int:
    """One tree's part of the score (before normalising): River's walk, stopping at
    the first node whose reference mass is below ``size_limit``."""
    score = 0
    depth_pow = 1
    for i in nodes:
        r = r_mass[i]
        score += r * depth_pow
        if r < size_limit:
            break
        depth_pow <<= 1
    return score

