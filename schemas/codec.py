"""The one codec of Riskwatch: bytes in, typed models out, and back.

Typed decoding uses msgspec (the hot path: one pre-built decoder per topic, with
the string patterns checked here, once per distinct value: see :class:`_Unpatterned`;
about 3 us for a 1.2 KB card transaction); untyped documents (policy files,
snapshots, audit hashing, JSONL lines of unknown shape) use orjson. Nothing else in
the code base parses or writes JSON.

:func:`decode` checks, in this order, and raises :class:`DecodeError` with a
stable ``reason`` code for each class of bad input:

1. size (``oversized``) and nesting depth (``too_deep``), before parsing;
2. UTF-8 (``invalid_utf8``) and JSON syntax (``malformed_json``, or
   ``non_finite_number`` for NaN / Infinity literals);
3. types and constraints (``wrong_type``, ``null_value``, ``missing_field``,
   ``negative_amount``, ``amount_out_of_range``, ``non_finite_number``,
   ``invalid_value``);
4. semantics: active ISO 4217 currency (``unknown_currency``), event time
   within bounds (``bad_timestamp``), finite floats, and the message key
   matching the payload's customer (``key_mismatch``).

>>> tx = decode("card-transactions", b'{"event_id":"e1","event_time":"2026-01-01T10:00:00+01:00",'
...     b'"customer_id":"c1","account_id":"a1","type":"purchase","amount_minor":1250,'
...     b'"currency":"EUR","mcc":"5411","merchant_id":"m1","channel":"pos","country":"DE"}')
>>> tx.event_time.isoformat(), tx.amount_minor
('2026-01-01T09:00:00+00:00', 1250)
>>> decode("card-transactions", b'{"event_id": 1}')
Traceback (most recent call last):
...
schemas.errors.DecodeError: wrong_type: Expected `str`, got `int` - at `$.event_id` (topic=card-transactions, field=event_id)
"""

from __future__ import annotations

import datetime as dt
import math
import re
import types
import typing
from typing import Any, NamedTuple

import msgspec
import orjson

from schemas.codegen import compiled_function
from schemas.errors import DecodeError
from schemas.models import ISO_4217_SET, Input, Struct
from schemas.topics import CUSTOMER_TOPICS, TOPICS

#: Records larger than this are dead-lettered without being parsed.
MAX_RECORD_BYTES = 64 * 1024
#: Deepest JSON nesting accepted (policy documents are the deepest inputs).
MAX_DEPTH = 16
#: Earliest event time accepted.
MIN_EVENT_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
#: How far past the decoder's clock an event time may be.
MAX_FUTURE_SKEW = dt.timedelta(days=2)

_UTC = dt.UTC


class _Unpatterned:
    """A topic's decoder without msgspec's regex checks, which then run here.

    msgspec calls ``re.Pattern.search`` on every constrained string (about 0.3 us
    each: ids, currency, MCC and country are two thirds of a card transaction's
    decode). Here the record is decoded into a twin of its model whose strings carry
    every constraint but the pattern; each pattern is then checked with the same
    ``search``, once per distinct value (the customer, account and merchant ids and
    the codes repeat; event ids do not and are searched every time), and the model
    is built from the twin's fields. A record the twin refuses, or with a value that
    does not match, is decoded again by the model's own decoder, whose error is what
    :func:`decode` reports: the outcome is the model decoder's in every case
    (``tests/schemas/test_codec.py`` checks).

    Only for models whose patterns are on their own string fields (not in lists or
    nested models): :meth:`of` leaves the others to the model's decoder (a union's
    other members decode through it).
    """

    __slots__ = ("decoder", "finish")

    #: Values found matching, per pattern (cleared when this many are held: at most
    #: about 1.5 MB each).
    CACHE_LIMIT = 16_384

    def __init__(self, decoder: msgspec.json.Decoder[Any],
                 finish: dict[type, Any]) -> None:
        self.decoder = decoder
        #: Per twin class: twin -> the model's instance, or None (a pattern fails).
        self.finish = finish

    @classmethod
    def of(cls, model: Any) -> _Unpatterned | None:
        members = typing.get_args(model) if typing.get_origin(model) in (
            typing.Union, types.UnionType) else (model,)
        finish: dict[type, Any] = {}
        twins = []
        for member in members:
            built = _twin(member)
            if built is None:
                continue  # its records fail the twin union: the model's decoder takes them
            twin, function = built
            twins.append(twin)
            finish[twin] = function
        if not any(getattr(f, "checks", 0) for f in finish.values()):
            return None  # nothing to gain (or no member eligible)
        union = twins[0] if len(twins) == 1 else typing.Union[tuple(twins)]  # noqa: UP007
        return cls(msgspec.json.Decoder(union), finish)

    def __call__(self, raw: bytes) -> Any:
        """The model's instance, or None: let the model's decoder decide (and say why)."""
        try:
            twin = self.decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError included
            return None
        return self.finish[type(twin)](twin)


_PATTERN_CACHES: dict[str, set[str]] = {}


def _strip_pattern(tp: Any) -> tuple[Any, str | None]:
    """``tp`` without its string pattern, and the pattern (None: none). Raises
    ValueError for a pattern this cannot take out (in a list, a nested model)."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *metas = typing.get_args(tp)
        pattern = None
        kept = []
        for meta in metas:
            if isinstance(meta, msgspec.Meta) and meta.pattern is not None:
                pattern = meta.pattern
                options = {name: getattr(meta, name) for name in _META_OPTIONS
                           if getattr(meta, name) is not None}
                meta = msgspec.Meta(**options)
            kept.append(meta)
        _strip_pattern(base)  # (raises for a nested pattern)
        return typing.Annotated[(base, *kept)], pattern  # type: ignore[return-value]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        parts = [_strip_pattern(arg) for arg in typing.get_args(tp)]
        patterns = {pattern for _, pattern in parts if pattern is not None}
        if len(patterns) > 1:
            raise ValueError(f"two patterns in {tp!r}")
        return (typing.Union[tuple(t for t, _ in parts)],  # noqa: UP007
                patterns.pop() if patterns else None)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        raise ValueError(f"nested model {tp!r}")
    for arg in typing.get_args(tp):
        if typing.get_origin(tp) is not typing.Literal and _strip_pattern(arg)[1] is not None:
            raise ValueError(f"pattern inside {tp!r}")
    return tp, None


_META_OPTIONS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz",
                 "title", "description", "examples", "extra_json_schema", "extra")


def _twin(model: Any) -> tuple[type, Any] | None:
    """(twin class, twin -> model instance or None) of a model (None: not eligible)."""
    if not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
        return None
    hints = typing.get_type_hints(model, include_extras=True)
    config = model.__struct_config__
    infos = msgspec.structs.fields(model)
    fields: list[Any] = []
    checks: list[tuple[str, str]] = []
    try:
        for info in infos:
            tp, pattern = _strip_pattern(hints[info.name])
            if pattern is not None:
                checks.append((info.name, pattern))
            if info.required:
                fields.append((info.name, tp))
            elif info.default_factory is not msgspec.NODEFAULT:
                fields.append((info.name, tp, msgspec.field(default_factory=info.default_factory)))
            else:
                fields.append((info.name, tp, info.default))
    except ValueError:
        return None
    rename = {info.name: info.encode_name for info in infos
              if info.encode_name != info.name} or None
    twin = msgspec.defstruct(
        f"{model.__name__}Unpatterned", fields, kw_only=True, tag=config.tag,
        tag_field=config.tag_field, rename=rename,
        forbid_unknown_fields=config.forbid_unknown_fields, module=__name__)
    # Generated: one ``if`` per pattern, then the model from the twin's fields.
    lines = ["def finish(t):"]
    namespace: dict[str, Any] = {"Model": model}
    for i, (name, pattern) in enumerate(checks):
        namespace[f"search{i}"] = re.compile(pattern).search
        if name == "event_id":  # unique per record: a cache of them would only churn
            lines += [f"    if search{i}(t.{name}) is None:", "        return None"]
            continue
        namespace[f"seen{i}"] = _PATTERN_CACHES.setdefault(pattern, set())
        namespace[f"limit{i}"] = _Unpatterned.CACHE_LIMIT
        lines += [f"    v = t.{name}",
                  f"    if v is not None and v not in seen{i}:",
                  f"        if search{i}(v) is None:",
                  "            return None",
                  f"        if len(seen{i}) >= limit{i}:",
                  f"            seen{i}.clear()",
                  f"        seen{i}.add(v)"]
    args = ", ".join(f"{info.name}=t.{info.name}" for info in infos)
    lines.append(f"    return Model({args})")
    function = compiled_function(lines, f"<{model.__name__} finish>", "finish", namespace)
    function.checks = len(checks)
    return twin, function


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(spec.model) for name, spec in TOPICS.items()
}
#: The customer-keyed input topics' pattern-free decoders (the hot path).
_FAST: dict[str, _Unpatterned] = {
    name: fast for name, spec in TOPICS.items()
    if name in CUSTOMER_TOPICS and (fast := _Unpatterned.of(spec.model)) is not None
}
_ENCODER = msgspec.json.Encoder()
_QUOTED = re.compile(r"'.*'", re.DOTALL)
_WRONG_TYPE = re.compile(r"Expected `[^`]*`, got `[^`]*`")
_NON_FINITE = re.compile(rb"(NaN|Infinity)(?![A-Za-z])")
_BYTE_AT = re.compile(r"\(byte ([0-9]+)\)")
#: A run of 13 or more digits, each perhaps apart from the next by up to three spaces,
#: tabs or dashes (separators and digits are disjoint, so matching is linear).
_PAN = re.compile(rb"(?<![0-9])[0-9](?:[ \t-]{0,3}[0-9]){12,}")
_PAN_SEPARATORS = re.compile(rb"[ \t-]")


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    """True when ``raw`` nests deeper than ``limit`` (strings are skipped)."""
    depth = 0
    in_str = False
    escaped = False
    for byte in raw:
        if in_str:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_str = False
        elif byte == 0x22:
            in_str = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return False


#: Every byte but ``{`` and ``[`` (deleted by :func:`_openings`).
_NOT_OPENING = bytes(b for b in range(256) if b not in b"{[")


def _openings(raw: bytes) -> int:
    """``raw.count(b"{") + raw.count(b"[")`` in one pass over ``raw``.

    >>> _openings(b'{"a": [1, {"b": "[x"}]}')
    4
    """
    return len(raw.translate(None, _NOT_OPENING))


def check_envelope(raw: bytes, *, topic: str | None = None, key: str | None = None) -> None:
    """Reject a record on size and nesting before any parser sees it."""
    if len(raw) > MAX_RECORD_BYTES:
        raise DecodeError(
            "oversized",
            f"{len(raw)} bytes is over the limit of {MAX_RECORD_BYTES}",
            topic=topic,
            key=key,
        )
    # Cheap bound first: a record with few brackets cannot nest deeply.
    if _openings(raw) > MAX_DEPTH and _depth_exceeds(raw, MAX_DEPTH):
        raise DecodeError(
            "too_deep", f"nesting deeper than {MAX_DEPTH} levels", topic=topic, key=key
        )


def _classify_validation(message: str) -> tuple[str, str | None]:
    """The reason code and field path of a msgspec validation message.

    Only the message proper is looked at, not the path after `` - at `` nor a
    quoted value in it (``Invalid enum value 'datetime'`` is no bad timestamp).

    >>> _classify_validation("Invalid enum value 'datetime' - at `$.channel`")
    ('invalid_value', 'channel')
    >>> _classify_validation("Object missing required field `due_date` - at `$.plan[0]`")
    ('missing_field', 'plan[0].due_date')
    """
    head, sep, at = message.rpartition(" - at `")
    if not sep:
        head, at = message, ""
    field = at.rstrip("`").removeprefix("$").removeprefix(".") or None
    if head.startswith("Object missing required field `"):
        missing = head.split("`")[1]
        return "missing_field", f"{field}.{missing}" if field else missing
    # Values are quoted ('...') in a message: classify on the rest only.
    head = _QUOTED.sub("''", head)
    leaf = field.rsplit(".", 1)[-1] if field else ""
    if head.startswith("Expected `") and head.endswith(", got `null`"):
        return "null_value", field
    if _WRONG_TYPE.fullmatch(head):
        return "wrong_type", field
    if head.startswith("Number out of range"):
        return "non_finite_number", field
    if "datetime" in head or "date`" in head or "encoded date" in head:
        return "bad_timestamp", field
    if leaf.endswith("_minor"):
        if ">= 0" in head:
            return "negative_amount", field
        if "<=" in head:
            return "amount_out_of_range", field
    if leaf == "currency":
        return "unknown_currency", field
    return "invalid_value", field


class _Checks(NamedTuple):
    """Which of :func:`_check_semantics`'s checks apply to a model's fields."""

    currency: bool
    event_time: bool
    value: bool
    customer_id: bool


_CHECKS: dict[type, _Checks] = {}


def _checks(model: type) -> _Checks:
    """The checks of ``model`` (cached per model class)."""
    checks = _CHECKS.get(model)
    if checks is None:
        fields = getattr(model, "__struct_fields__", ())
        checks = _CHECKS[model] = _Checks("currency" in fields, issubclass(model, Input),
                                          "value" in fields, "customer_id" in fields)
    return checks


def _check_semantics(obj: Any, topic: str, key: str | None, now: dt.datetime) -> None:
    checks = _checks(type(obj))
    if checks.currency:
        currency = obj.currency
        if currency is not None and currency not in ISO_4217_SET:
            raise DecodeError(
                "unknown_currency",
                f"{currency!r} is not an active ISO 4217 code",
                topic=topic,
                key=key,
                field="currency",
            )
    if checks.event_time:
        event_time = obj.event_time
        if event_time < MIN_EVENT_TIME or event_time > now + MAX_FUTURE_SKEW:
            raise DecodeError(
                "bad_timestamp",
                f"event_time {event_time.isoformat()} is outside "
                f"[{MIN_EVENT_TIME.date()}, now + {MAX_FUTURE_SKEW.days} days]",
                topic=topic,
                key=key,
                field="event_time",
            )
        if event_time.tzinfo is not _UTC:
            obj.event_time = event_time.astimezone(_UTC)
    if checks.value:
        value = obj.value
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(
                "non_finite_number", "value is not finite", topic=topic, key=key, field="value"
            )
    if key is not None and checks.customer_id:
        customer_id = obj.customer_id
        if customer_id is not None and customer_id != key:
            raise DecodeError(
                "key_mismatch",
                f"message key {key!r} differs from customer_id {customer_id!r}",
                topic=topic,
                key=key,
                field="customer_id",
            )


def decode(
    topic: str,
    raw: bytes,
    *,
    key: str | None = None,
    now: dt.datetime | None = None,
) -> Any:
    """Decode and validate one record of ``topic`` into its model.

    ``key`` is the Kafka message key (checked against ``customer_id``);
    ``now`` is the clock for the future-time bound (default: wall clock).
    """
    try:
        decoder = _DECODERS[topic]
    except KeyError:
        raise DecodeError("unknown_topic", f"no contract for topic {topic!r}", topic=topic) from None
    # check_envelope's cheap bounds first (it raises the error, or finds the nesting fine)
    if len(raw) > MAX_RECORD_BYTES or _openings(raw) > MAX_DEPTH:
        check_envelope(raw, topic=topic, key=key)
    if not raw.isascii():
        # msgspec skips unknown fields unchecked: bad UTF-8 there would get through.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", str(exc), topic=topic, key=key) from exc
    try:
        fast = _FAST.get(topic)
        obj = fast(raw) if fast is not None else None
        if obj is None:
            obj = decoder.decode(raw)
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc), topic=topic, key=key) from exc
    except msgspec.ValidationError as exc:
        reason, field = _classify_validation(str(exc))
        raise DecodeError(reason, str(exc), topic=topic, key=key, field=field) from exc
    except msgspec.DecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise DecodeError("invalid_utf8", str(uexc), topic=topic, key=key) from exc
        # Only a NaN / Infinity literal where the parser stopped, not one in a string.
        at = _BYTE_AT.search(str(exc))
        literal = at is not None and _NON_FINITE.match(raw, int(at.group(1))) is not None
        reason = "non_finite_number" if literal else "malformed_json"
        raise DecodeError(reason, str(exc), topic=topic, key=key) from exc
    _check_semantics(obj, topic, key, now or dt.datetime.now(_UTC))
    return obj


def encode(obj: Struct) -> bytes:
    """Encode a model as compact JSON bytes."""
    return _ENCODER.encode(obj)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Encode plain Python values (dicts, lists, models) as JSON bytes."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    return orjson.dumps(value, default=msgspec.to_builtins, option=option)


def loads(raw: bytes | str) -> Any:
    """Parse JSON into plain Python values (for documents of no fixed model)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("malformed_json", str(exc)) from exc


def canonical(value: Any) -> bytes:
    """Canonical JSON (sorted keys, compact) for hashing and comparison."""
    return dumps(value, sort_keys=True)


def to_plain(obj: Struct) -> Any:
    """A model as plain JSON-ready Python values."""
    return msgspec.to_builtins(obj)


def from_plain(model: type[Any], value: Any) -> Any:
    """Validate plain Python values as ``model`` (for YAML and test data)."""
    try:
        return msgspec.convert(value, model)
    except msgspec.ValidationError as exc:
        reason, field = _classify_validation(str(exc))
        raise DecodeError(reason, str(exc), field=field) from exc


def mask_pans(raw: bytes) -> bytes:
    """Mask card-number-like digit runs: 13 or more digits, each apart from the next by
    up to three spaces, tabs or dashes.

    A run of 13-19 digits that passes the Luhn check keeps at most its first six and
    last four digits; any other run of that length is masked whole, so that nothing
    that might be a card number leaves in clear. A longer run is masked whole too: it
    may hold a card number next to other digits (an expiry date, a CVV), and nearly
    every such run has a Luhn-valid 13-19 digit window somewhere anyway.

    >>> mask_pans(b'{"note":"card 4111 1111 1111 1111 used"}')
    b'{"note":"card 411111******1111 used"}'
    >>> mask_pans(b'id 1234567890123 end')
    b'id ************* end'
    >>> mask_pans(b'4111 - 1111 - 1111 - 1111, 4111\\t1111\\t1111\\t1111')
    b'411111******1111, 411111******1111'
    >>> mask_pans(b'pan+expiry 41111111111111111228')
    b'pan+expiry ********************'
    """

    def repl(match: re.Match[bytes]) -> bytes:
        digits = _PAN_SEPARATORS.sub(b"", match.group(0))
        if len(digits) <= 19 and luhn_valid(digits):
            return digits[:6] + b"*" * (len(digits) - 10) + digits[-4:]
        return b"*" * len(digits)

    # Kept digits can join a neighbouring digit group into a new 13-19 digit
    # run ("123456789 411111******1111"): mask until nothing changes.
    masked = _PAN.sub(repl, raw)
    while masked != raw:
        raw, masked = masked, _PAN.sub(repl, masked)
    return masked


def luhn_valid(digits: bytes) -> bool:
    """The Luhn checksum of an ASCII digit string.

    >>> luhn_valid(b"4111111111111111"), luhn_valid(b"4111111111111112")
    (True, False)
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = char - 48
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0
