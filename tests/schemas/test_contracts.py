"""The typed decoder and the exported JSON Schema accept and reject the same records.

For every topic, the documented example, one sample per repayment variant and
hypothesis-generated valid records are mutated (fields dropped, nulled, given
wrong types, out-of-range numbers, bad enum values and patterns, unknown
currencies, malformed dates and times, extra unknown fields) and each sample is
judged twice: by :func:`schemas.codec.decode` with a fixed clock, and by
``Draft202012Validator`` with format checking on (``date-time`` is checked with
the installed ``rfc3339-validator``; ``test_export`` fails if it goes missing).

Excluded, because no JSON Schema can express them, and listed in
``test_known_divergences`` so that a change in either side shows up:

* the input event-time window (2000-01-01 to two days past the decoder's clock):
  a sample whose only fault is that must still pass the schema;
* the message key matching ``customer_id`` (samples are decoded without a key);
* integral floats such as ``5.0`` for an integer field (JSON Schema's data model
  does not tell ``5.0`` from ``5``; msgspec rejects the float literal), so
  generated floats are never integral;
* non-finite numbers and unpaired surrogate escapes, which are JSON text the
  decoder refuses before any schema sees a value;
* the size and nesting limits (generated samples stay far below them).

Two decoder leniencies make the schema stricter than the decoder, which is the
safe direction for producers: msgspec also takes a space instead of ``T`` and an
offset without a colon (``+0100``) in a date-time.

Patterns are Python regular expressions on both sides here; they end in
``(?!\\n)$``, since Python's ``$`` alone also matches before a trailing newline,
so ``"cust-1\\n"`` fails an ``Id`` pattern in both, as in an ECMA-262 validator.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.codec import decode
from schemas.errors import DecodeError
from schemas.export import EXAMPLES, build_schemas
from schemas.models import MAX_MINOR
from schemas.topics import TOPICS

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
VALIDATORS = {
    topic: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for topic, schema in build_schemas().items()
}

Path = tuple[str | int, ...]
_DROP = object()


# --------------------------------------------------------------------------- #
# Judging a sample
# --------------------------------------------------------------------------- #


def to_json(value: Any) -> bytes:
    """A sample as JSON bytes (stdlib json: exact big integers, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def decoder_error(topic: str, value: Any) -> DecodeError | None:
    """Why the decoder rejects ``value``, or None when it accepts it."""
    try:
        decode(topic, to_json(value), now=NOW)
    except DecodeError as error:
        return error
    return None


def schema_errors(topic: str, value: Any) -> list[str]:
    """Why the topic's JSON Schema rejects ``value`` (empty when it accepts it)."""
    validator = VALIDATORS[topic]
    if validator.is_valid(value):  # the fast path
        return []
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]


def outside_event_time_window(error: DecodeError) -> bool:
    """The decoder's only objection is the input event-time window (not schema-expressible).

    The window is checked last, after every type and value check passed, so the
    schema must accept such a sample.
    """
    return error.reason == "bad_timestamp" and "is outside" in error.detail


def assert_agree(topic: str, value: Any, label: str = "") -> None:
    """The decoder and the schema both accept or both reject ``value``."""
    error = decoder_error(topic, value)
    errors = schema_errors(topic, value)
    if error is not None and outside_event_time_window(error):
        assert not errors, f"{topic} {label}: schema rejects {errors} for {value!r}"
        return
    assert (error is None) == (not errors), (
        f"{topic} {label}: decoder {'accepts' if error is None else f'rejects ({error})'}, "
        f"schema {'accepts' if not errors else f'rejects ({errors})'}: {to_json(value)!r}"
    )


# --------------------------------------------------------------------------- #
# Samples and mutations
# --------------------------------------------------------------------------- #

_REPAYMENT_BASE = {
    k: EXAMPLES["repayments"][k]
    for k in ("event_id", "event_time", "customer_id", "account_id", "currency")
}
#: One sample per repayment variant (the example covers ``statement_due``).
REPAYMENT_VARIANTS: list[dict[str, Any]] = [
    {
        **_REPAYMENT_BASE,
        "type": "installment_due",
        "due_id": "inst-000123-07",
        "due_date": "2026-03-05",
        "amount_minor": 25000,
    },
    {**_REPAYMENT_BASE, "type": "payment_received", "amount_minor": 9213, "channel": "transfer"},
    {
        **_REPAYMENT_BASE,
        "type": "payment_reversed",
        "reversed_event_id": "rp-20260210-000412",
        "amount_minor": 9213,
        "reason": "insufficient funds",
    },
    {
        **_REPAYMENT_BASE,
        "type": "plan_agreed",
        "plan_id": "plan-000123-1",
        "installments": [
            {"due_date": "2026-04-01", "amount_minor": 30000},
            {"due_date": "2026-05-01", "amount_minor": 30000},
        ],
        "rate_bps": 450,
        "reason": "hardship",
    },
    {
        **_REPAYMENT_BASE,
        "type": "deferral_started",
        "deferral_id": "def-000123-1",
        "until": "2026-05-31",
        "reason": "medical leave",
    },
    {**_REPAYMENT_BASE, "type": "deferral_ended", "deferral_id": "def-000123-1"},
]

#: Topic -> the valid samples that get mutated.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    topic: [example, *(REPAYMENT_VARIANTS if topic == "repayments" else ())]
    for topic, example in EXAMPLES.items()
}

#: Values of the wrong type for most fields, tried at every path (never an
#: integral float: see the module docstring).
WRONG_TYPES: list[Any] = [None, True, 1, 1.5, "x", [], {}]
#: Values tried where the sample has a value of the same type.
POOL: dict[type, list[Any]] = {
    int: [0, -1, 2**63, 10**30, -(10**30), -0.25],
    float: [0, -1, 10**30, -0.25, 1e300],
    bool: [False, 0],
    str: [
        "",
        "EUR",
        "XXX",
        "eur",
        "cust-000123\n",
        " cust-000123",
        "bad value!",
        "€uro",
        "x" * 300,
        "2026-02-27T10:00:00Z",
        "2026-02-27t10:00:00.123456789z",
        "2026-02-27T10:00:00-05:30",
        "2026-02-27T10:00:00",
        "2026-02-27T10:00Z",
        "2026-02-27T24:00:00Z",
        "2026-02-27T23:59:60Z",
        "2026-02-27T10:00:00Z\n",
        "2026-02-30T10:00:00Z",
        "1990-01-01T00:00:00Z",
        "2026-02-27",
        "2026-02-27\n",
        "2026-2-27",
        "20260227",
        "2026-02-30",
        "credit_card",
        "purchase",
        "high",
    ],
    list: [
        [None],
        ["credit_card"],
        ["x" * 65],
        [{"due_date": "2026-04-01", "amount_minor": 1}],
        [{"code": "c", "text": ""}],
    ],
    dict: [{"code": "c", "text": ""}, {"due_date": "2026-04-01"}],
}


#: Fields of any JSON value: mutated as a whole, not inside (anything goes there).
FREE_FORM = frozenset({"document", "before", "after"})


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path to a dict entry or list item under ``value`` (depth first)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            if key not in FREE_FORM:
                yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths(item, (*prefix, index))


def containers(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Paths of every object in ``value`` (the root is ``()``)."""
    if isinstance(value, dict):
        yield prefix
        for key, item in value.items():
            yield from containers(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from containers(item, (*prefix, index))


def get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def replaced(value: Any, path: Path, new: Any) -> Any:
    """A copy of ``value`` with the item at ``path`` set to ``new`` (or dropped: ``_DROP``)."""
    out = copy.deepcopy(value)
    parent = get(out, path[:-1])
    if new is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


def variations(current: Any) -> list[Any]:
    """Values near ``current``: boundaries, case and whitespace changes, sizes."""
    if isinstance(current, bool) or current is None:
        return [not current]
    if isinstance(current, int):
        return [current + 1, current - 1, -current - 1, MAX_MINOR, MAX_MINOR + 1, 10_000, 120, 121]
    if isinstance(current, float):
        return [-current, current * 1e300, 0.5]
    if isinstance(current, str):
        return [
            current.upper(),
            current.lower(),
            current + "\n",
            current + " ",
            current[:-1],
            current + current[-1:] * 200,
            current * 2,
        ]
    if isinstance(current, list):
        return [current * 9, current[:1] * 33, current[:0], [*current, None]]
    return []


def field_schema(topic: str, sample: Any, path: Path) -> Any:
    """The subschema that judges the value at ``path`` of ``sample`` (None: unknown field)."""
    schema = VALIDATORS[topic].schema
    defs = schema["$defs"]

    def resolve(node: Any, value: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        if isinstance(node, dict) and "anyOf" in node and isinstance(value, dict):
            for branch in node["anyOf"]:  # a tagged union: the branch of the record's tag
                struct = resolve(branch, None)
                if struct["properties"]["type"]["enum"] == [value.get("type")]:
                    return struct
        return node

    node, value = schema, sample
    for step in path:
        node = resolve(node, value)
        if node is None or ("properties" not in node and "items" not in node):
            return None
        node = node["properties"].get(step) if isinstance(step, str) else node["items"]
        value = value[step]
    return node


def mutations(
    topic: str, sample: dict[str, Any], seen: set[Any] | None = None
) -> Iterator[tuple[str, Any]]:
    """(label, mutated sample) for every path and every kind of mutation.

    ``seen`` skips a value already tried at a field with the same subschema (in
    this or another sample of the topic). The decoder's extra checks keyed on a
    field's name have distinct subschemas (``currency``) or are part of the key
    (``event_time``), so fields sharing a subschema are judged alike.
    """
    seen = set() if seen is None else seen
    for path in paths(sample):
        current = get(sample, path)
        if isinstance(path[-1], str):
            yield f"drop {path}", replaced(sample, path, _DROP)
        shape = orjson.dumps(field_schema(topic, sample, path), option=orjson.OPT_SORT_KEYS)
        kind = (shape, path[-1] == "event_time", type(current))
        for new in [*WRONG_TYPES, *POOL.get(type(current), ()), *variations(current)]:
            tried = (kind, repr(new))
            if tried in seen:
                continue
            seen.add(tried)
            yield f"{path} = {tried[1]:.40}", replaced(sample, path, new)
    for where in containers(sample):
        for name, extra in (("x_new_field", {"any": ["thing", 1]}), ("_", None)):
            mutated = copy.deepcopy(sample)
            get(mutated, where)[name] = extra
            yield f"extra field at {where}", mutated


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("topic", list(TOPICS))
def test_mutated_samples_agree(topic: str) -> None:
    seen: set[Any] = set()
    count = 0
    for sample in SAMPLES[topic]:
        assert decoder_error(topic, sample) is None
        assert schema_errors(topic, sample) == []
        for label, mutated in mutations(topic, sample, seen):
            assert_agree(topic, mutated, label)
            count += 1
    assert count > 100


@pytest.mark.parametrize("topic", list(TOPICS))
def test_extra_unknown_fields_are_accepted_by_both(topic: str) -> None:
    sample = {**EXAMPLES[topic], "x_added_by_a_newer_producer": {"nested": [1, 2.5, "x"]}}
    assert decoder_error(topic, sample) is None
    assert schema_errors(topic, sample) == []


@pytest.mark.parametrize("topic", list(TOPICS))
def test_every_required_field_is_required_by_both(topic: str) -> None:
    example = EXAMPLES[topic]
    struct_name = type(decode(topic, to_json(example), now=NOW)).__name__
    required = VALIDATORS[topic].schema["$defs"][struct_name]["required"]
    assert required
    for field in required:
        sample = {k: v for k, v in example.items() if k != field}
        error = decoder_error(topic, sample)
        assert error is not None and error.reason == "missing_field", (field, error)
        assert schema_errors(topic, sample), field


# Hypothesis: generated valid records, then random mutations.

_NOT_INTEGRAL = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: not f.is_integer()
)
_LEAVES = st.one_of(
    st.sampled_from([*WRONG_TYPES, *(v for values in POOL.values() for v in values)]),
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-2, MAX_MINOR + 2),
    _NOT_INTEGRAL,
    st.text(max_size=12),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2})?)?", fullmatch=True
    ),
    st.from_regex(r"[A-Z]{3}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True),
)
MUTATION_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def same_type(current: Any) -> st.SearchStrategy[Any]:
    """Values of ``current``'s JSON type, often near it (to probe constraints, not types)."""
    if isinstance(current, bool) or current is None:
        return st.booleans() | st.none()
    if isinstance(current, int):
        return st.integers() | st.integers(-3, 3).map(lambda d: current + d) | _BOUNDARY_INTS
    if isinstance(current, float):
        return _NOT_INTEGRAL | st.integers()
    if isinstance(current, str):
        return (
            st.text(max_size=12)
            | st.text(max_size=3).map(lambda tail: current + tail)
            | st.integers(0, len(current)).map(lambda n: current[:n])
            | st.sampled_from([current.upper(), current.lower(), current * 3, *POOL[str]])
        )
    if isinstance(current, list):
        return st.lists(st.sampled_from(current), max_size=40) if current else st.just([None])
    return st.dictionaries(st.text(max_size=8), MUTATION_VALUES, max_size=3)


_BOUNDARY_INTS = st.sampled_from(
    [-1, 0, 1, 2, 119, 120, 121, 1000, 1001, 10_000, 10_001, MAX_MINOR, MAX_MINOR + 1]
)


@st.composite
def mutated(draw: st.DrawFn, sample: Any) -> tuple[str, Any]:
    """One random mutation of ``sample``: drop, replace, tweak or add a field."""
    kind = draw(st.sampled_from(["drop", "replace", "tweak", "tweak", "tweak", "add"]))
    if kind == "add":
        where = draw(st.sampled_from(list(containers(sample))))
        out = copy.deepcopy(sample)
        name = draw(st.text(max_size=12))
        get(out, where)[name] = draw(MUTATION_VALUES)
        return f"add {name!r} at {where}", out
    candidates = [p for p in paths(sample) if kind != "drop" or isinstance(p[-1], str)]
    if not candidates:
        return "unchanged", sample
    path = draw(st.sampled_from(candidates))
    if kind == "drop":
        return f"drop {path}", replaced(sample, path, _DROP)
    values = same_type(get(sample, path)) if kind == "tweak" else MUTATION_VALUES
    new = draw(values)
    return f"{kind} {path} = {new!r:.40}", replaced(sample, path, new)


@pytest.mark.parametrize("topic", list(TOPICS))
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_generated_mutations_agree(
    topic: str, plain_strategies: dict[str, Any], data: st.DataObject
) -> None:
    sample = data.draw(plain_strategies[topic], label="valid record")
    assert_agree(topic, sample, "valid")
    assert decoder_error(topic, sample) is None
    labels = []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        label, sample = data.draw(mutated(sample))
        labels.append(label)
    assert_agree(topic, sample, "; ".join(labels))


TX = "card-transactions"
SI = "sector-indicators"


def _raw(topic: str, **changes: Any) -> bytes:
    return to_json({**EXAMPLES[topic], **changes})


#: (what, topic, raw record, decoder accepts, schema accepts the value stdlib json parses)
KNOWN_DIVERGENCES: list[tuple[str, str, bytes, bool, bool]] = [
    ("event time before 2000", TX, _raw(TX, event_time="1999-12-31T23:59:59Z"), False, True),
    ("event time past now + 2 days", TX, _raw(TX, event_time="2026-03-04T00:00:00Z"), False, True),
    (
        "integral float for an integer",
        TX,
        _raw(TX, amount_minor=7).replace(b": 7,", b": 7.0,"),
        False,
        True,
    ),
    ("non-finite number", SI, _raw(SI, value=7.5).replace(b"7.5", b"1e999"), False, True),
    ("NaN literal", SI, _raw(SI, value=7.5).replace(b"7.5", b"NaN"), False, True),
    (
        "unpaired surrogate escape",
        SI,
        _raw(SI, period="Q1").replace(b"Q1", b"Q1\\ud800"),
        False,
        True,
    ),
    ("space instead of T", TX, _raw(TX, event_time="2026-02-27 10:00:00Z"), True, False),
    ("offset without a colon", TX, _raw(TX, event_time="2026-02-27T10:00:00+0100"), True, False),
]


@pytest.mark.parametrize(
    ("what", "topic", "raw", "decoder_accepts", "schema_accepts"),
    KNOWN_DIVERGENCES,
    ids=[case[0] for case in KNOWN_DIVERGENCES],
)
def test_known_divergences(
    what: str, topic: str, raw: bytes, decoder_accepts: bool, schema_accepts: bool
) -> None:
    """Documented differences; if one closes, move the case to the agreeing samples."""
    try:
        decode(topic, raw, now=NOW)
        accepted = True
    except DecodeError:
        accepted = False
    assert accepted is decoder_accepts, what
    value = json.loads(raw)  # stdlib json: parses what msgspec refuses
    assert VALIDATORS[topic].is_valid(value) is schema_accepts, what


def test_key_mismatch_is_decoder_only() -> None:
    raw = to_json(EXAMPLES[TX])
    with pytest.raises(DecodeError) as info:
        decode(TX, raw, key="cust-999999", now=NOW)
    assert info.value.reason == "key_mismatch"
    assert VALIDATORS[TX].is_valid(EXAMPLES[TX])
