"""One conformance suite for every online detector.

The suite imports every module of the ``detectors`` package and runs each
check below on every :class:`detectors.online.ConformanceSpec` found in a
module-level ``CONFORMANCE_SPECS`` list. To register a detector, add a spec to
``CONFORMANCE_SPECS`` in its own module, for example::

    CONFORMANCE_SPECS = [
        ConformanceSpec("my_detector", MyDetector, lambda seed: MyDetector(seed=seed), 2_000),
    ]

``test_every_detector_class_is_registered`` fails for any class in
``detectors/`` that has both ``learn_one`` and ``score_one`` but no spec.

Checks: score before learn on a fresh instance; the input dict is never
mutated; a pickle round-trip gives identical subsequent scores; the same seed
gives the identical score sequence; the pickled size after 10 000 events is
within the spec's bound and does not grow with the number of events (at most
``spec.growth_bytes``, 64 B by default, from 2 000 to 10 000 events); the class
docstring has a runnable example (collected by ``--doctest-modules``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import pickle
import pkgutil
import random
from typing import Any

import pytest

import detectors
from detectors.online import ConformanceSpec

#: Events fed before the pickled size is measured.
N_EVENTS = 10_000


def _modules() -> list[Any]:
    mods = []
    for info in sorted(pkgutil.iter_modules(detectors.__path__, "detectors."), key=str):
        mods.append(importlib.import_module(info.name))
    return mods


def _specs() -> list[ConformanceSpec]:
    specs: list[ConformanceSpec] = []
    for mod in _modules():
        specs.extend(getattr(mod, "CONFORMANCE_SPECS", []))
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), f"duplicate conformance spec names: {names}"
    return specs


SPECS = _specs()


def _detector_classes() -> set[type]:
    found: set[type] = set()
    for mod in _modules():
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ != mod.__name__ or getattr(obj, "_is_protocol", False):
                continue
            if callable(getattr(obj, "learn_one", None)) and callable(
                getattr(obj, "score_one", None)
            ):
                found.add(obj)
    return found


def _run(det: Any, spec: ConformanceSpec, rng: random.Random, n: int) -> list[float]:
    scores = []
    for _ in range(n):
        x = spec.sample(rng)
        scores.append(det.score_one(x))
        det.learn_one(x)
    return scores


spec_param = pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])


def test_every_detector_class_is_registered() -> None:
    registered = {s.cls for s in SPECS}
    missing = sorted(c.__qualname__ for c in _detector_classes() - registered)
    assert not missing, f"detector classes without a ConformanceSpec: {missing}"


@spec_param
def test_score_before_learn_on_fresh_instance(spec: ConformanceSpec) -> None:
    det = spec.factory(0)
    x = spec.sample(random.Random(1))
    score = det.score_one(x)
    assert isinstance(score, float) and math.isfinite(score)
    det.learn_one(x)
    assert math.isfinite(det.score_one(x))


@spec_param
def test_input_not_mutated(spec: ConformanceSpec) -> None:
    det = spec.factory(0)
    rng = random.Random(2)
    for _ in range(500):
        x = spec.sample(rng)
        before = copy.deepcopy(x)
        det.score_one(x)
        assert x == before
        det.learn_one(x)
        assert x == before


@spec_param
def test_pickle_round_trip_gives_identical_scores(spec: ConformanceSpec) -> None:
    det = spec.factory(3)
    _run(det, spec, random.Random(3), 700)
    clone = pickle.loads(pickle.dumps(det))
    rng_a, rng_b = random.Random(4), random.Random(4)
    assert _run(det, spec, rng_a, 700) == _run(clone, spec, rng_b, 700)


@spec_param
def test_same_seed_same_scores(spec: ConformanceSpec) -> None:
    a, b = spec.factory(11), spec.factory(11)
    assert _run(a, spec, random.Random(5), 1_200) == _run(b, spec, random.Random(5), 1_200)


@spec_param
def test_memory_bounded(spec: ConformanceSpec) -> None:
    det = spec.factory(0)
    rng = random.Random(6)
    _run(det, spec, rng, 2_000)
    size_2k = len(pickle.dumps(det))
    _run(det, spec, rng, N_EVENTS - 2_000)
    size_10k = len(pickle.dumps(det))
    print(f"\n{spec.name}: pickled {size_2k} B after 2k events, {size_10k} B after 10k")
    assert size_10k <= spec.max_pickle_bytes
    assert size_10k <= size_2k + spec.growth_bytes


@spec_param
def test_docstring_has_example(spec: ConformanceSpec) -> None:
    assert spec.cls.__doc__ and ">>>" in spec.cls.__doc__
