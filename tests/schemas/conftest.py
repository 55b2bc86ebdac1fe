"""Shared fixtures of the schema tests: a fixed clock and model strategies.

The strategies are derived from the msgspec models themselves
(:func:`msgspec.inspect.type_info`), so a new field or constraint is covered
without touching the tests. They generate *valid* instances only: the checks the
decoder adds on top of the types (active currency, input event-time window) are
honoured here too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import strategies as st

from schemas.models import ISO_4217, Input
from schemas.topics import TOPICS

#: The decoder clock of every schema test.
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

_INT64 = (-(2**63), 2**63 - 1)
_MAX_ITEMS = 4

#: Fixed UTC offsets in whole minutes (RFC 3339 cannot carry seconds).
OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)


def aware_datetimes(low: dt.datetime, high: dt.datetime) -> st.SearchStrategy[dt.datetime]:
    """Timezone-aware datetimes whose instant lies in ``[low, high]`` (naive UTC bounds)."""
    margin = dt.timedelta(days=1)
    return st.datetimes(min_value=low + margin, max_value=high - margin, timezones=OFFSETS)


#: Event times the decoder accepts for an input at :data:`NOW`.
INPUT_TIMES = aware_datetimes(dt.datetime(2000, 1, 1), NOW.replace(tzinfo=None))
#: Times of outputs, which the decoder does not bound.
OUTPUT_TIMES = aware_datetimes(dt.datetime(1971, 1, 1), dt.datetime(2200, 1, 1))
DATES = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 12, 31))


def json_values(max_depth: int = 2) -> st.SearchStrategy[Any]:
    """Plain JSON values (what orjson and msgspec round-trip) nested at most ``max_depth``."""
    leaves: st.SearchStrategy[Any] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(*_INT64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    value = leaves
    for _ in range(max_depth):
        value = st.one_of(
            leaves,
            st.lists(value, max_size=_MAX_ITEMS),
            st.dictionaries(st.text(max_size=10), value, max_size=_MAX_ITEMS),
        )
    return value


def _strings(info: mi.StrType) -> st.SearchStrategy[str]:
    low = info.min_length or 0
    high = info.max_length
    if info.pattern is None:
        short = st.text(min_size=low, max_size=min(high, 24) if high is not None else 24)
        if high is None or high <= 24:
            return short
        return short | st.text(st.characters(codec="utf-8"), min_size=high, max_size=high)
    pattern = st.from_regex(info.pattern, fullmatch=True)
    return pattern.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))


def _ints(info: mi.IntType) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else _INT64[0])
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else _INT64[1])
    return st.integers(low, high)


def strategy_for(
    info: mi.Type, *, field: str | None = None, owner: type | None = None
) -> st.SearchStrategy[Any]:
    """A strategy of valid values of a msgspec type (from :func:`msgspec.inspect.type_info`)."""
    if isinstance(info, mi.Metadata):
        return strategy_for(info.type, field=field, owner=owner)
    if isinstance(info, mi.StructType):
        return _structs(info)
    if isinstance(info, mi.UnionType):
        return st.one_of([strategy_for(t, field=field, owner=owner) for t in info.types])
    if isinstance(info, mi.StrType):
        if field == "currency":
            return st.sampled_from(ISO_4217)
        return _strings(info)
    if isinstance(info, mi.IntType):
        return _ints(info)
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.ListType):
        high = min(info.max_length if info.max_length is not None else _MAX_ITEMS, _MAX_ITEMS)
        return st.lists(strategy_for(info.item_type), min_size=info.min_length or 0, max_size=high)
    if isinstance(info, mi.DictType):
        return st.dictionaries(
            strategy_for(info.key_type), strategy_for(info.value_type), max_size=_MAX_ITEMS
        )
    if isinstance(info, mi.DateTimeType):
        if owner is not None and issubclass(owner, Input) and field == "event_time":
            return INPUT_TIMES
        return OUTPUT_TIMES
    if isinstance(info, mi.DateType):
        return DATES
    if isinstance(info, mi.AnyType):
        return json_values()
    raise NotImplementedError(f"no strategy for {info!r}")  # a new kind of field type


def _structs(info: mi.StructType) -> st.SearchStrategy[Any]:
    cls = info.cls
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in info.fields:
        strategy = strategy_for(field.type, field=field.name, owner=cls)
        (required if field.required else optional)[field.name] = strategy
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


def model_strategy(model: Any) -> st.SearchStrategy[Any]:
    """Valid instances of a model (a Struct class or a union of them)."""
    return strategy_for(mi.type_info(model))


@pytest.fixture(scope="session")
def now() -> dt.datetime:
    """The decoder clock of the schema tests."""
    return NOW


@pytest.fixture(scope="session")
def model_strategies() -> dict[str, st.SearchStrategy[Any]]:
    """Topic name -> strategy of valid instances of the topic's model."""
    return {name: model_strategy(spec.model) for name, spec in TOPICS.items()}


@pytest.fixture(scope="session")
def plain_strategies(
    model_strategies: dict[str, st.SearchStrategy[Any]],
) -> dict[str, st.SearchStrategy[Any]]:
    """Topic name -> strategy of valid records as plain JSON-ready values."""
    return {name: s.map(msgspec.to_builtins) for name, s in model_strategies.items()}
