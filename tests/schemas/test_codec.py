"""Property and poison-class tests of :mod:`schemas.codec`."""

from __future__ import annotations

import datetime as dt
import json
import re
import typing
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.codec import (
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    canonical,
    decode,
    dumps,
    encode,
    loads,
    luhn_valid,
    mask_pans,
)
from schemas.errors import DECODE_REASONS, DecodeError
from schemas.export import EXAMPLES
from schemas.models import MAX_MINOR
from schemas.topics import TOPICS

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def record(topic: str, drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    """The topic's example with fields changed or dropped, as JSON bytes."""
    value = {k: v for k, v in EXAMPLES[topic].items() if k not in drop}
    value.update(changes)
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def reject(topic: str, raw: bytes, **kwargs: Any) -> DecodeError:
    """The DecodeError that decoding ``raw`` raises (fails if it decodes)."""
    with pytest.raises(DecodeError) as info:
        decode(topic, raw, now=NOW, **kwargs)
    assert info.value.reason in DECODE_REASONS
    return info.value


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("topic", list(TOPICS))
@FAST
@given(data=st.data())
def test_decode_encode_round_trip(topic: str, model_strategies: Any, data: st.DataObject) -> None:
    """Every valid instance of every input and output model survives encode + decode."""
    obj = data.draw(model_strategies[topic], label="instance")
    raw = encode(obj)
    assert decode(topic, raw, now=NOW) == obj
    key = getattr(obj, "customer_id", None)
    assert decode(topic, raw, key=key, now=NOW) == obj


@pytest.mark.parametrize("topic", list(TOPICS))
def test_examples_decode(topic: str) -> None:
    """Each documented example decodes and re-encodes to the same plain values."""
    obj = decode(topic, orjson.dumps(EXAMPLES[topic]), now=NOW)
    again = decode(topic, encode(obj), now=NOW)
    assert again == obj


def test_input_event_time_is_normalised_to_utc() -> None:
    obj = decode("card-transactions", orjson.dumps(EXAMPLES["card-transactions"]), now=NOW)
    assert obj.event_time.tzinfo is dt.UTC
    assert obj.event_time == dt.datetime(2026, 2, 27, 17, 42, 13, 512000, tzinfo=dt.UTC)


@st.composite
def json_documents(draw: st.DrawFn) -> Any:
    """Plain JSON values as orjson round-trips them (finite floats, 64-bit ints)."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return draw(
        st.recursive(
            leaves,
            lambda inner: (
                st.lists(inner, max_size=5)
                | st.dictionaries(st.text(max_size=10), inner, max_size=5)
            ),
            max_leaves=12,
        )
    )


@settings(max_examples=50, deadline=None)
@given(json_documents())
def test_dumps_loads_round_trip(value: Any) -> None:
    assert loads(dumps(value)) == value
    assert loads(dumps(value).decode("utf-8")) == value
    assert canonical(loads(canonical(value))) == canonical(value)


def test_loads_rejects_malformed_json() -> None:
    with pytest.raises(DecodeError) as info:
        loads(b'{"a": ')
    assert info.value.reason == "malformed_json"


# --------------------------------------------------------------------------- #
# Poison classes
# --------------------------------------------------------------------------- #

TX = "card-transactions"
TX_KEY = EXAMPLES[TX]["customer_id"]


def _padded(size: int) -> bytes:
    """The card-transaction example padded with an unknown field to ``size`` bytes."""
    base = record(TX, pad="")
    return record(TX, pad="x" * (size - len(base)))


def _nested(depth: int) -> bytes:
    """The example with an unknown field nesting the record ``depth`` levels deep."""
    return record(TX, extra=orjson.loads(b"[" * (depth - 1) + b"]" * (depth - 1)))


POISON: list[tuple[str, str, bytes, str | None]] = [
    ("oversized", TX, _padded(MAX_RECORD_BYTES + 1), None),
    ("too_deep", TX, _nested(MAX_DEPTH + 1), None),
    ("too_deep", "risk-policy", b'{"document":' + b"[" * 40 + b"]" * 40 + b"}", None),
    ("invalid_utf8", TX, record(TX, merchant_id="m1").replace(b"m1", b"m\xff1"), None),
    ("invalid_utf8", TX, record(TX, note="x").replace(b'"x"', b'"\xc3\x28"'), None),
    ("malformed_json", TX, record(TX)[:-1], None),
    ("malformed_json", TX, b"", None),
    ("malformed_json", TX, b'{"event_id": "e1",}', None),
    # A NaN in the text of a malformed record is not a NaN literal.
    ("malformed_json", "sector-indicators", b'{"note": "value was NaN or -Infinity", "x": ', None),
    ("wrong_type", TX, record(TX, event_id=42), "event_id"),
    ("wrong_type", TX, record(TX, amount_minor="100"), "amount_minor"),
    ("wrong_type", TX, record(TX, amount_minor=12.5), "amount_minor"),
    ("wrong_type", TX, record(TX, amount_minor=True), "amount_minor"),
    ("wrong_type", TX, b"[]", None),
    ("missing_field", TX, record(TX, drop=("currency",)), "currency"),
    ("missing_field", "repayments", record("repayments", drop=("type",)), "type"),
    ("null_value", TX, record(TX, customer_id=None), "customer_id"),
    ("null_value", TX, record(TX, event_time=None), "event_time"),
    (
        "non_finite_number",
        "sector-indicators",
        record("sector-indicators", value=1.0).replace(b"1.0", b"NaN"),
        None,
    ),
    (
        "non_finite_number",
        "sector-indicators",
        record("sector-indicators", value=1.0).replace(b"1.0", b"-Infinity"),
        None,
    ),
    (
        "non_finite_number",
        "sector-indicators",
        record("sector-indicators", value=1.0).replace(b"1.0", b"1e999"),
        "value",
    ),
    ("amount_out_of_range", TX, record(TX, amount_minor=MAX_MINOR + 1), "amount_minor"),
    ("amount_out_of_range", TX, record(TX, amount_minor=10**30), "amount_minor"),
    (
        "amount_out_of_range",
        "repayments",
        record("repayments", minimum_minor=MAX_MINOR * 10),
        "minimum_minor",
    ),
    ("negative_amount", TX, record(TX, amount_minor=-1), "amount_minor"),
    (
        "negative_amount",
        "repayments",
        record(
            "repayments",
            type="plan_agreed",
            plan_id="plan-1",
            installments=[{"due_date": "2026-04-01", "amount_minor": -5}],
        ),
        "installments[0].amount_minor",
    ),
    ("unknown_currency", TX, record(TX, currency="XXX"), "currency"),
    ("unknown_currency", TX, record(TX, currency="eur"), "currency"),
    ("unknown_currency", TX, record(TX, currency="ZWL"), "currency"),  # withdrawn 2024
    (
        "unknown_currency",
        "limit-adjustments",
        record("limit-adjustments", currency="ZZZ"),
        "currency",
    ),
    ("bad_timestamp", TX, record(TX, event_time="2026-02-27T18:42:13"), "event_time"),
    ("bad_timestamp", TX, record(TX, event_time="1990-06-01T00:00:00Z"), "event_time"),
    ("bad_timestamp", TX, record(TX, event_time="2026-03-04T00:00:00Z"), "event_time"),
    ("bad_timestamp", TX, record(TX, event_time="2999-01-01T00:00:00Z"), "event_time"),
    ("bad_timestamp", TX, record(TX, event_time="2026-02-30T00:00:00Z"), "event_time"),
    ("bad_timestamp", TX, record(TX, event_time="yesterday"), "event_time"),
    ("invalid_value", TX, record(TX, channel="carrier_pigeon"), "channel"),
    ("invalid_value", TX, record(TX, mcc="54111"), "mcc"),
    ("invalid_value", TX, record(TX, event_id=""), "event_id"),
    # Classified on msgspec's message, not on a quoted value in it or on the path.
    ("invalid_value", TX, record(TX, channel="datetime"), "channel"),
    ("invalid_value", TX, record(TX, channel="Expected `int`, got `null`"), "channel"),
    ("invalid_value", "repayments", record("repayments", type="datetime"), "type"),
    (
        "missing_field",
        "repayments",
        record("repayments", type="plan_agreed", plan_id="p", installments=[{"amount_minor": 5}]),
        "installments[0].due_date",
    ),
    (
        "bad_timestamp",
        "repayments",
        record("repayments", type="plan_agreed", plan_id="p",
               installments=[{"amount_minor": 5, "due_date": "2026-02-30"}]),
        "installments[0].due_date",
    ),
    # Python's "$" matches before a final newline: the patterns must not.
    ("invalid_value", TX, record(TX, customer_id="cust-000123\n"), "customer_id"),
    ("invalid_value", TX, record(TX, merchant_id="m-1\n"), "merchant_id"),
    ("invalid_value", TX, record(TX, country="DE\n"), "country"),
    ("invalid_value", TX, record(TX, mcc="5411\n"), "mcc"),
    ("invalid_value", "repayments", record("repayments", type="gift"), "type"),
]


@pytest.mark.parametrize(
    ("reason", "topic", "raw", "field"),
    POISON,
    ids=[f"{reason}-{i}" for i, (reason, *_rest) in enumerate(POISON)],
)
def test_poison_maps_to_reason(reason: str, topic: str, raw: bytes, field: str | None) -> None:
    error = reject(topic, raw)
    assert error.reason == reason, str(error)
    assert error.topic == topic
    assert f"topic={topic}" in str(error)
    if field is not None:
        assert error.field == field, str(error)
        assert f"field={field}" in str(error)


@pytest.mark.parametrize("currency", ["VED", "XCG", "ZWG"])
def test_recent_iso_4217_codes_are_accepted(currency: str) -> None:
    assert decode(TX, record(TX, currency=currency), now=NOW).currency == currency


def test_key_mismatch() -> None:
    error = reject(TX, record(TX), key="cust-999999")
    assert error.reason == "key_mismatch"
    assert (error.topic, error.key, error.field) == (TX, "cust-999999", "customer_id")
    assert "topic=card-transactions" in str(error) and "field=customer_id" in str(error)
    assert decode(TX, record(TX), key=TX_KEY, now=NOW).customer_id == TX_KEY


def test_unknown_topic() -> None:
    error = reject("card-transactionz", record(TX))
    assert error.reason == "unknown_topic"
    assert "card-transactionz" in str(error)


def test_limits_are_inclusive() -> None:
    """A record of exactly the size and depth limits is accepted."""
    assert len(_padded(MAX_RECORD_BYTES)) == MAX_RECORD_BYTES
    decode(TX, _padded(MAX_RECORD_BYTES), now=NOW)
    decode(TX, _nested(MAX_DEPTH), now=NOW)
    decode(TX, record(TX, event_time="2026-03-03T11:59:59Z"), now=NOW)
    decode(TX, record(TX, event_time="2000-01-01T00:00:00Z"), now=NOW)
    decode(TX, record(TX, amount_minor=MAX_MINOR), now=NOW)


def test_invalid_utf8_in_an_unknown_field_is_rejected() -> None:
    """A record that is not UTF-8 is not JSON, even where the model does not look."""
    raw = record(TX, note="x").replace(b'"x"', b'"\xff"')
    assert reject(TX, raw).reason == "invalid_utf8"


@pytest.mark.parametrize("topic", list(TOPICS))
def test_messages_name_topic_and_field(topic: str) -> None:
    """Every field-level DecodeError names the topic and the field."""
    checked = 0
    for name in EXAMPLES[topic]:
        raw = record(topic, **{name: True})
        try:
            decode(topic, raw, now=NOW)
        except DecodeError as error:
            assert error.field == name, str(error)
            assert f"topic={topic}" in str(error) and f"field={name}" in str(error)
            checked += 1
    assert checked >= len(EXAMPLES[topic]) - 2  # only ``Any`` fields take anything


# --------------------------------------------------------------------------- #
# PAN masking
# --------------------------------------------------------------------------- #

_GROUP_RUN = re.compile(rb"[0-9]+(?:[ \t-]{1,3}[0-9]+)*")
_SEPARATORS = ["", " ", "-", "  ", " - ", "\t", "\t\t"]


def _clear_pans(data: bytes) -> list[bytes]:
    """Luhn-valid runs of 13-19 digits in ``data``, grouped or not by up to three
    spaces, tabs or dashes: any sequence of whole digit groups counts (a group is a
    maximal run of plain digits). Independent of the codec's own regex."""
    found = []
    for match in _GROUP_RUN.finditer(data):
        groups = re.split(rb"[ \t-]+", match.group(0))
        for start in range(len(groups)):
            for end in range(start + 1, len(groups) + 1):
                digits = b"".join(groups[start:end])
                if 13 <= len(digits) <= 19 and luhn_valid(digits):
                    found.append(digits)
    return found


def _luhn_complete(body: str) -> str:
    """``body`` with the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        if luhn_valid((body + check).encode()):
            return body + check
    raise AssertionError("unreachable")


@st.composite
def pans(draw: st.DrawFn) -> str:
    """A Luhn-valid card number of 13-19 digits, perhaps grouped by spaces or dashes."""
    length = draw(st.integers(13, 19))
    digits = _luhn_complete(draw(st.text("0123456789", min_size=length - 1, max_size=length - 1)))
    sep = draw(st.sampled_from(_SEPARATORS))
    if sep and draw(st.booleans()):
        digits = sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    return digits


_FILLER = st.text(alphabet=st.sampled_from([*'abc xyz"{}:,-0123456789 ', "é", "\n", "\t"]),
                  max_size=30)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.one_of(pans(), _FILLER), max_size=6))
@example(parts=["card ", "4111 1111 1111 1111", " used"])
@example(parts=["123456789 ", "4111111111111111"])
@example(parts=["4111111111111111", " 12345678901"])
def test_mask_pans_leaves_no_card_number_in_clear(parts: list[str]) -> None:
    raw = "".join(parts).encode("utf-8")
    masked = mask_pans(raw)
    assert _clear_pans(masked) == [], masked
    assert mask_pans(masked) == masked  # idempotent
    # Only digits and their separators change; everything else stays in place.
    assert re.sub(rb"[0-9 \t*-]", b"", masked) == re.sub(rb"[0-9 \t-]", b"", raw)


@settings(max_examples=100, deadline=None)
@given(pan=pans(), before=_FILLER, after=_FILLER)
def test_mask_pans_masks_each_pan(pan: str, before: str, after: str) -> None:
    """A card number between non-digits keeps at most its first six and last four digits."""
    digits = re.sub(r"[ \t-]", "", pan)
    raw = f"{before}|{pan}|{after}".encode()
    masked = mask_pans(raw)
    middle = masked.split(b"|")[1]
    assert middle == (digits[:6] + "*" * (len(digits) - 10) + digits[-4:]).encode()


@settings(max_examples=100, deadline=None)
@given(pan=pans(), before=st.text("0123456789", max_size=6), after=st.text("0123456789", max_size=6))
@example(pan="4111111111111111", before="", after="1228")  # a card number, then its expiry
@example(pan="4111111111111111", before="", after="")
def test_mask_pans_leaves_no_card_number_inside_a_longer_digit_run(
        pan: str, before: str, after: str) -> None:
    raw = f"x {before}{pan}{after} y".encode()
    masked = mask_pans(raw)
    digits = re.sub(rb"[^0-9*]", b"", masked)
    windows = [digits[i:i + n] for n in range(13, 20) for i in range(len(digits) - n + 1)]
    assert not [w for w in windows if w.isdigit() and luhn_valid(w)], masked
    assert re.sub(rb"[ \t-]", b"", pan.encode()) not in re.sub(rb"[ \t-]", b"", masked)


def test_mask_pans_examples() -> None:
    assert mask_pans(b'{"pan":"4111111111111111"}') == b'{"pan":"411111******1111"}'
    assert mask_pans(b"id 1234567890123 end") == b"id ************* end"
    assert mask_pans(b"amount 1250, mcc 5411") == b"amount 1250, mcc 5411"
    # Wider separators, tabs, and a card number followed by its expiry (one 20-digit run).
    for variant in (b"4111  1111  1111  1111", b"4111 - 1111 - 1111 - 1111",
                    b"4111\t1111\t1111\t1111", b"4111 --1111-- 1111 1111"):
        assert mask_pans(b"card " + variant + b".") == b"card 411111******1111.", variant
    assert mask_pans(b"pan 41111111111111111228 end") == b"pan " + b"*" * 20 + b" end"
    assert mask_pans(b"2026-03-01 12:00:00, 1 2 3 4 5") == b"2026-03-01 12:00:00, 1 2 3 4 5"


# --------------------------------------------------------------------------- #
# The pattern-free fast path decides as the models' own decoders do
# --------------------------------------------------------------------------- #

_CUSTOMER_TOPICS = ["card-transactions", "repayments", "customer-profiles",
                    "credit-applications", "outcomes"]
_TRICKY_TEXT = st.text(alphabet="AZaz09._:@/-\n é[", max_size=6)
_REPAYMENT_TYPES = ["installment_due", "statement_due", "payment_received",
                    "payment_reversed", "plan_agreed", "deferral_started", "deferral_ended"]


def _outcome(topic: str, raw: bytes, key: str | None) -> Any:
    """What :func:`decode` gives: the object, or the error's reason, field and text."""
    try:
        return decode(topic, raw, key=key, now=NOW)
    except DecodeError as error:
        return (error.reason, error.field, str(error))


def test_the_hot_topics_have_fast_decoders() -> None:
    from schemas.codec import _FAST

    assert {"card-transactions", "repayments"} <= set(_FAST)


@pytest.mark.parametrize("topic", _CUSTOMER_TOPICS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_outcome_equals_the_model_decoders(topic: str, data: st.DataObject) -> None:
    """Valid or not (ids, codes and other fields changed to text that may or may not
    match their patterns, to other types, or dropped), a record decodes to the same
    object, or fails with the same reason, field and message, with the fast path as
    with the model's decoder alone."""
    import schemas.codec as codec

    example = dict(EXAMPLES[topic])
    if topic == "repayments":
        example["type"] = data.draw(st.sampled_from(_REPAYMENT_TYPES), label="type")
    names = sorted(example)
    changes = data.draw(st.dictionaries(
        st.sampled_from(names),
        st.one_of(_TRICKY_TEXT, st.sampled_from(["EUR", "DE", "5411", "c1", "eur"]),
                  st.integers(-1, 3), st.none()),
        max_size=3), label="changes")
    drop = tuple(data.draw(st.lists(st.sampled_from(names), max_size=1), label="drop"))
    value = {k: v for k, v in {**example, **changes}.items() if k not in drop}
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8")
    key = data.draw(st.sampled_from([None, str(value.get("customer_id"))]), label="key")
    fast = _outcome(topic, raw, key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "_FAST", {})
        assert _outcome(topic, raw, key) == fast
    if not isinstance(fast, tuple):
        assert type(fast) in (*typing.get_args(TOPICS[topic].model), TOPICS[topic].model)


def test_fast_path_values_matched_once_are_not_searched_again() -> None:
    from schemas.codec import _PATTERN_CACHES

    decode(TX, record(TX, merchant_id="m-cached-1"), now=NOW)
    assert any("m-cached-1" in seen for seen in _PATTERN_CACHES.values())
    # A value that does not match is never cached (each record is checked again).
    reject(TX, record(TX, merchant_id="m-cached-2\n"))
    assert not any("m-cached-2\n" in seen for seen in _PATTERN_CACHES.values())
