"""FlatHalfSpaceTrees gives River's HalfSpaceTrees scores exactly."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.anomaly import HalfSpaceTrees

from detectors.hst import FlatHalfSpaceTrees
from detectors.online import AnomalyModel


def _stream(seed: int, n: int, features: tuple[str, ...]) -> list[dict[str, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 97 == 0:  # an outlier now and then
            out.append({f: rng.random() for f in features})
        else:
            out.append({f: min(1.0, max(0.0, rng.gauss(0.3 + 0.1 * j, 0.05)))
                        for j, f in enumerate(features)})
    return out


@pytest.mark.parametrize(("n_trees", "height", "window"), [(10, 8, 250), (3, 4, 17), (1, 1, 1)])
def test_scores_equal_rivers(n_trees: int, height: int, window: int) -> None:
    features = ("amount", "hour", "velocity")
    river = HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window, seed=11)
    flat = FlatHalfSpaceTrees(features, n_trees=n_trees, height=height, window_size=window,
                              seed=11)
    for x in _stream(3, 2_000, features):
        assert flat.score_one(x) == pytest.approx(float(river.score_one(x)), abs=0.0)
        river.learn_one(x)
        flat.learn_one(x)
    assert flat.counter == river.counter


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       xs=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=60))
def test_scores_equal_rivers_property(seed: int, xs: list[tuple[float, float]]) -> None:
    river = HalfSpaceTrees(n_trees=4, height=5, window_size=7, seed=seed)
    flat = FlatHalfSpaceTrees(("a", "b"), n_trees=4, height=5, window_size=7, seed=seed)
    for a, b in xs:
        x = {"a": a, "b": b}
        assert flat.score_one(x) == float(river.score_one(x))
        river.learn_one(x)
        flat.learn_one(x)


def test_pickles_and_continues_identically() -> None:
    flat = FlatHalfSpaceTrees(("a", "b"), n_trees=5, height=6, window_size=20, seed=2)
    stream = _stream(5, 300, ("a", "b"))
    for x in stream[:150]:
        flat.learn_one(x)
    copy = pickle.loads(pickle.dumps(flat))
    for x in stream[150:]:
        assert copy.score_one(x) == flat.score_one(x)
        copy.learn_one(x)
        flat.learn_one(x)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="'b' missing"):
        FlatHalfSpaceTrees(("a", "b")).score_one({"a": 0.5})
    with pytest.raises(ValueError, match="feature"):
        FlatHalfSpaceTrees(())
    with pytest.raises(ValueError, match="positive"):
        FlatHalfSpaceTrees(("a",), window_size=0)


def test_score_learn_equals_score_then_learn() -> None:
    one = AnomalyModel(("a", "b"), window_size=30, warmup=60, seed=4)
    two = AnomalyModel(("a", "b"), window_size=30, warmup=60, seed=4)
    for x in _stream(9, 500, ("a", "b")):
        score = one.score_one(x)
        flagged = one.is_anomalous(score)
        one.learn_one(x)
        assert two.score_learn(x) == (score, flagged)
    assert two.score_learn({"a": 0.9, "b": 0.01}, learn=False)[0] == one.score_one(
        {"a": 0.9, "b": 0.01})
    assert (one.n_learnt, one.n_flagged) == (two.n_learnt, two.n_flagged)


def test_pickled_masses_are_full_path_counts() -> None:
    """Leaf-only counting pickles the per-node masses of River's walk (same layout)."""
    flat = FlatHalfSpaceTrees(("a", "b"), n_trees=3, height=4, window_size=40, seed=6)
    stream = _stream(8, 95, ("a", "b"))
    expected = [[0] * (2 ** 5 - 1) for _ in range(3)]
    for n, x in enumerate(stream, start=1):
        for mass, nodes in zip(expected, flat.path(flat.vector(x)), strict=True):
            for i in nodes:
                mass[i] += 1
        flat.learn_one(x)
        if n % 40 == 0:
            expected = [[0] * (2 ** 5 - 1) for _ in range(3)]
    state = flat.__getstate__()
    assert state["_l_mass"] == expected
    assert set(state) == {"features", "n_trees", "height", "window_size", "seed", "counter",
                          "first_window", "size_limit", "max_score", "_feature", "_threshold",
                          "_l_mass", "_r_mass"}


def test_explanation_reads_the_trees_only_and_agrees_in_both_forms() -> None:
    rng = random.Random(11)
    names = ("a", "b", "c", "d")
    explained, twin = (AnomalyModel(names, window_size=40, warmup=50, seed=5) for _ in "12")
    for _ in range(200):
        x = {"a": rng.gauss(0.3, 0.05), "b": rng.gauss(0.6, 0.05), "c": 0.0, "d": 0.5}
        explained.process_one(x)
        twin.process_one(x)
    odd = {"a": 0.3, "b": 0.6, "c": 1.0, "d": 0.95}
    base = {"a": 0.3, "b": 0.6, "c": 0.0, "d": 0.5}
    score = explained.score_one(odd)
    by_dict = explained.explain_one(odd, base, top=4)
    row = tuple(odd[k] for k in explained.features)
    assert explained.explain_scaled(row, tuple(base[k] for k in explained.features), 4) == by_dict
    assert by_dict and by_dict[0][0] == "c"
    assert all(without < score for _, without in by_dict)
    # A feature left out of the baseline (None) is never a reason.
    left_out = tuple(None if k == "c" else base[k] for k in explained.features)
    assert "c" not in {f for f, _ in explained.explain_scaled(row, left_out, 4)}
    # Nothing learnt: the model goes on exactly as its twin that explained nothing.
    for _ in range(100):
        x = {"a": rng.gauss(0.3, 0.05), "b": rng.gauss(0.6, 0.05), "c": 0.0, "d": 0.5}
        assert explained.process_one(x) == twin.process_one(x)
    assert explained.threshold == twin.threshold
