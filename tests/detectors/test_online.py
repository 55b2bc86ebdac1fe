"""detectors.online helpers (the models themselves: test_conformance and their own tests)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.online import args_scaler, row_scaler, scale_values, scaling

#: Per feature, (low bound, width) of its range.
_RANGES = st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6)),
                   min_size=1, max_size=6)


def _spec(ranges: list[tuple[float, float]]) -> Any:
    names = [f"f{i}" for i in range(len(ranges))]
    return scaling(names, {n: (lo, lo + w) for n, (lo, w) in zip(names, ranges, strict=True)})


@settings(max_examples=200, deadline=None)
@given(_RANGES, st.data())
def test_row_scaler_equals_scale_values(ranges: list[tuple[float, float]],
                                        data: st.DataObject) -> None:
    """The generated row scaler does what ``scale_values`` does, value for value."""
    spec = _spec(ranges)
    width = len(spec) + data.draw(st.integers(0, 3))
    row = data.draw(st.lists(st.none() | st.floats(allow_nan=True, allow_infinity=True),
                             min_size=width, max_size=width))
    order = data.draw(st.permutations(range(width)))[: len(spec)]
    got = row_scaler(spec, order)(row)
    assert got == scale_values(tuple(row[i] for i in order), spec)
    assert all(type(v) is float for v in got)


@settings(max_examples=200, deadline=None)
@given(_RANGES, st.data())
def test_args_scaler_equals_row_scaler_bit_for_bit(ranges: list[tuple[float, float]],
                                                   data: st.DataObject) -> None:
    """The scaler taking arguments gives the row scaler's floats, sign of zero included."""
    spec = _spec(ranges)
    width = len(spec) + data.draw(st.integers(0, 3))
    row = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-9, 9),
                             min_size=width, max_size=width))
    order = data.draw(st.permutations(range(width)))[: len(spec)]
    got = args_scaler(spec, order, width)(*row)
    want = row_scaler(spec, order)(row)
    assert [math.copysign(1.0, v) for v in got] == [math.copysign(1.0, v) for v in want]
    assert got == want and all(type(v) is float for v in got)
