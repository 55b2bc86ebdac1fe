"""JSON Schema export of the topic contracts, and the Markdown topic reference.

The msgspec models in :mod:`schemas.models` are the source of truth. This module
derives one self-contained JSON Schema (draft 2020-12) per topic from them and
post-processes it so that it expresses what :func:`schemas.codec.decode`
enforces beyond the model's own constraints:

* every ``currency`` property is limited to the active ISO 4217 codes (``enum``);
* ``date-time`` and ``date`` strings keep their ``format`` and also get a
  ``pattern`` (``format`` is only an annotation unless a validator opts in to
  asserting it; the pattern also rejects a trailing newline, which the
  ``rfc3339-validator`` package used by Python's ``jsonschema`` lets through);
* objects allow unknown properties, as the models do (forward compatibility).

What no schema can express stays a decoder-only check: the event-time window
relative to the decoder's clock, the message key matching ``customer_id``, the
record size and nesting limits, and integral floats such as ``5.0`` (the same
number as ``5`` in JSON Schema's data model, but rejected for integer fields).

Regenerate the committed files after changing a model or topic::

    python -m schemas.export schemas/json

>>> sorted(build_schemas()) == sorted(TOPICS)
True
>>> schema_filename("risk-alerts")
'risk-alerts.v1.schema.json'
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.models import ISO_4217
from schemas.topics import CONTRACT_VERSION, TOPICS, TopicSpec

#: JSON Schema dialect of every exported schema.
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Base of every schema's ``$id``.
ID_BASE = "https://riskwatch.dev/schemas"
#: What an RFC 3339 ``date-time`` with a mandatory offset looks like (the decoder
#: rejects times without an offset); ``(?!\n)$`` keeps Python's ``$`` from
#: matching before a trailing newline and means plain ``$`` in ECMA-262.
DATE_TIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})(?!\n)$"
)
#: What a calendar ``date`` (``YYYY-MM-DD``) looks like.
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?!\n)$"
#: Name of the generated Markdown topic reference.
TOPICS_MD = "TOPICS.md"

_CURRENCY_ENUM: list[str] = sorted(ISO_4217)

#: One realistic, valid record per topic (used by the docs, the schemas'
#: ``examples`` and the tests). Event times lie in February 2026.
EXAMPLES: dict[str, dict[str, Any]] = {
    "card-transactions": {
        "event_id": "tx-20260227-000184",
        "event_time": "2026-02-27T18:42:13.512+01:00",
        "customer_id": "cust-000123",
        "account_id": "acc-000123-cc",
        "type": "cash_advance",
        "amount_minor": 40000,
        "currency": "EUR",
        "mcc": "6011",
        "merchant_id": "atm-de-berlin-0042",
        "channel": "atm",
        "country": "DE",
    },
    "repayments": {
        "type": "statement_due",
        "event_id": "rp-20260225-000981",
        "event_time": "2026-02-25T06:00:00Z",
        "customer_id": "cust-000123",
        "account_id": "acc-000123-cc",
        "due_id": "stmt-000123-2026-02",
        "due_date": "2026-03-20",
        "amount_minor": 184250,
        "minimum_minor": 9213,
        "currency": "EUR",
    },
    "customer-profiles": {
        "event_id": "prof-000123-0007",
        "event_time": "2026-02-01T09:15:00Z",
        "customer_id": "cust-000123",
        "credit_limit_minor": 500000,
        "currency": "EUR",
        "products": ["credit_card", "installment_plan"],
        "sector": "hospitality",
        "region": "de-be",
        "segment": "mass_affluent",
        "timezone": "Europe/Berlin",
    },
    "credit-applications": {
        "event_id": "app-evt-88213",
        "event_time": "2026-02-26T14:05:31Z",
        "customer_id": "cust-000123",
        "application_id": "bureau:app-5521907",
        "product": "personal_loan",
        "amount_minor": 1500000,
        "currency": "EUR",
        "source": "bureau",
    },
    "sector-indicators": {
        "event_id": "ind-hospitality-2026-01",
        "event_time": "2026-02-15T08:00:00Z",
        "sector": "hospitality",
        "indicator": "prosperity_index",
        "value": 92.4,
        "period": "2026-01",
    },
    "risk-policy": {
        "event_id": "policy-2026.02.1",
        "event_time": "2026-02-20T10:30:00Z",
        "version": "2026.02.1",
        "actor": "jane.doe@riskwatch.dev",
        "reason": "Lower the cash-advance alert threshold after the Q4 back-test.",
        "document": {
            "rules": [
                {
                    "id": "cash_advance_spike",
                    "version": 3,
                    "enabled": True,
                    "params": {"min_amount_minor": 30000, "window_days": 30},
                }
            ],
            "grades": {"medium": 500, "high": 700, "critical": 850},
        },
    },
    "outcomes": {
        "event_id": "out-000123-0001",
        "event_time": "2026-02-28T23:00:00Z",
        "customer_id": "cust-000123",
        "label": "cured",
        "account_id": "acc-000123-cc",
        "effective_date": "2026-02-28",
    },
    "risk-alerts": {
        "alert_id": "alert-3f9c2a1e7b40",
        "customer_id": "cust-000123",
        "trigger_event_id": "tx-20260227-000184",
        "event_time": "2026-02-27T17:42:13.512Z",
        "policy_version": "2026.02.1",
        "model_version": "hst-2026.02.0",
        "reason_codes": ["cash_advance_spike", "utilisation_high"],
        "evidence": [
            {
                "code": "cash_advance_30d",
                "text": "Cash advances in the last 30 days: EUR 700.00, 5.8 times the "
                "6-month average",
                "value": 70000,
                "unit": "minor",
            },
            {
                "code": "utilisation",
                "text": "Credit-limit utilisation is 91%",
                "value": 0.91,
                "unit": "ratio",
            },
        ],
        "alert_type": "cash_advance_spike",
        "severity": "high",
        "rule_id": "cash_advance_spike",
        "rule_version": 3,
        "routing": ["collections", "case_management"],
        "account_id": "acc-000123-cc",
    },
    "limit-adjustments": {
        "adjustment_id": "adj-3f9c2a1e7b40",
        "customer_id": "cust-000123",
        "trigger_event_id": "tx-20260227-000184",
        "event_time": "2026-02-27T17:42:13.512Z",
        "policy_version": "2026.02.1",
        "model_version": "hst-2026.02.0",
        "reason_codes": ["cash_advance_spike"],
        "evidence": [
            {
                "code": "utilisation",
                "text": "Credit-limit utilisation is 91%",
                "value": 0.91,
                "unit": "ratio",
            }
        ],
        "direction": "cut",
        "current_limit_minor": 500000,
        "proposed_limit_minor": 350000,
        "currency": "EUR",
        "requires_approval": True,
        "notify_customer": True,
        "account_id": "acc-000123-cc",
    },
    "customer-actions": {
        "action_id": "act-3f9c2a1e7b40",
        "customer_id": "cust-000123",
        "trigger_event_id": "rp-20260225-000981",
        "event_time": "2026-02-25T06:00:00Z",
        "policy_version": "2026.02.1",
        "model_version": "hst-2026.02.0",
        "reason_codes": ["statement_due_soon"],
        "evidence": [
            {
                "code": "minimum_due",
                "text": "Minimum payment of EUR 92.13 due on 2026-03-20",
                "value": 9213,
                "unit": "minor",
            }
        ],
        "action": "reminder",
        "channel": "sms",
        "account_id": "acc-000123-cc",
        "not_before": "2026-03-17T09:00:00+01:00",
    },
    "risk-grades": {
        "grade_id": "grade-3f9c2a1e7b40",
        "customer_id": "cust-000123",
        "trigger_event_id": "tx-20260227-000184",
        "event_time": "2026-02-27T17:42:13.512Z",
        "policy_version": "2026.02.1",
        "model_version": "hst-2026.02.0",
        "reason_codes": ["cash_advance_spike", "utilisation_high"],
        "evidence": [],
        "grade": "high",
        "score": 742,
        "previous_grade": "medium",
    },
    "dead-letters": {
        "dead_letter_id": "dl-card-transactions-3-1048576",
        "source_topic": "card-transactions",
        "partition": 3,
        "offset": 1048576,
        "reason": "wrong_type",
        "detail": "wrong_type: Expected `str`, got `int` - at `$.event_id` "
        "(topic=card-transactions, key=cust-000777, field=event_id)",
        "key": "cust-000777",
        "raw_b64": "eyJldmVudF9pZCI6NDIsImV2ZW50X3RpbWUiOiIyMDI2LTAyLTI3VDE4OjQyOjEzWiIsImN1c3RvbWVy"
        "X2lkIjoiY3VzdC0wMDA3NzciLCJub3RlIjoiY2FyZCA0MTExMTEqKioqKioxMTExIn0=",
        "raw_size": 110,
        "truncated": False,
        "event_time": "2026-02-27T17:42:14.020Z",
    },
    "audit": {
        "audit_id": "audit-000042",
        "seq": 42,
        "event_time": "2026-02-20T10:30:01Z",
        "actor": "jane.doe@riskwatch.dev",
        "action": "policy.publish",
        "subject": "risk-policy",
        "version": "2026.02.1",
        "before": {"grades": {"high": 720}},
        "after": {"grades": {"high": 700}},
        "why": "Lower the cash-advance alert threshold after the Q4 back-test.",
        "prev_hash": "175c8430b4c6f16a6b5ef49eb290f295ce7fd6f4e2848314f59a08f5802a107e",
        "hash": "c7c34aaaa643607d652ff4c9e471c1635b84cf25dbcc5df8023f4dd395baeddb",
    },
}


# --------------------------------------------------------------------------- #
# Schemas
# --------------------------------------------------------------------------- #


def schema_id(topic: str) -> str:
    """The ``$id`` of ``topic``'s schema."""
    return f"{ID_BASE}/{topic}/v{CONTRACT_VERSION}.json"


def schema_filename(topic: str) -> str:
    """The file name of ``topic``'s schema in an export directory."""
    return f"{topic}.v{CONTRACT_VERSION}.schema.json"


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a schema tree, depth first (the root included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _subschemas(value)


def _string_branches(prop: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The string-typed schema(s) of a property, looking through ``anyOf``."""
    if prop.get("type") == "string":
        yield prop
    for branch in prop.get("anyOf", ()):
        yield from _string_branches(branch)


def _post_process(schema: dict[str, Any]) -> None:
    """Make ``schema`` express the decoder's checks (see the module docstring)."""
    for node in list(_subschemas(schema)):
        if node.get("type") == "object" and "properties" in node:
            # A struct: unknown fields are ignored by the decoder.
            node.setdefault("additionalProperties", True)
            currency = node["properties"].get("currency")
            if currency is not None:
                for branch in _string_branches(currency):
                    branch["enum"] = list(_CURRENCY_ENUM)
        if node.get("type") == "string":
            if node.get("format") == "date-time":
                node["pattern"] = DATE_TIME_PATTERN
            elif node.get("format") == "date":
                node["pattern"] = DATE_PATTERN


def build_schema(spec: TopicSpec) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one topic's records."""
    body = copy.deepcopy(msgspec.json.schema(spec.model))
    _post_process(body)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": schema_id(spec.name),
        "title": spec.name,
        "description": spec.description,
        "x-riskwatch": {
            "topic": spec.name,
            "direction": spec.direction,
            "key": spec.key,
            "compacted": spec.compacted,
            "id_field": spec.id_field,
            "ce_type": spec.ce_type,
            "contract_version": CONTRACT_VERSION,
        },
    }
    if spec.name in EXAMPLES:
        schema["examples"] = [EXAMPLES[spec.name]]
    schema.update(body)
    return schema


def build_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per topic, keyed by topic name (registry order)."""
    return {name: build_schema(spec) for name, spec in TOPICS.items()}


def render_json(value: Any) -> bytes:
    """Deterministic file form of a JSON document: indented, sorted, newline-ended."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# --------------------------------------------------------------------------- #
# Markdown topic reference
# --------------------------------------------------------------------------- #


def _cell(text: str) -> str:
    """Text made safe for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: Any) -> str:
    """Inline code, with a wider fence when the text holds a backtick."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _non_null(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null branch of ``X | None`` and whether null is allowed."""
    branches = prop.get("anyOf")
    if branches is not None:
        rest = [b for b in branches if b.get("type") != "null"]
        if len(rest) == 1 and len(rest) < len(branches):
            return rest[0], True
    return prop, False


def _type_name(prop: dict[str, Any]) -> str:
    """A short human name of a property's type."""
    prop, nullable = _non_null(prop)
    if "$ref" in prop:
        name = f"object {_ref_name(prop['$ref'])}"
    elif "anyOf" in prop:
        name = " or ".join(_type_name(b) for b in prop["anyOf"])
    elif "enum" in prop and "type" not in prop:
        name = "constant" if len(prop["enum"]) == 1 else "enum"
    elif prop.get("type") == "array":
        name = f"array of {_type_name(prop.get('items', {}))}"
    elif "type" in prop:
        name = str(prop["type"])
        if "format" in prop:
            name += f" ({prop['format']})"
    else:
        name = "any JSON value"
    return f"{name} or null" if nullable else name


def _bounds(what: str, low: Any, high: Any) -> str:
    """``length 1..128``, ``value >= 1``, ``items <= 32`` or nothing."""
    if low is not None and high is not None:
        return f"{what} {low}..{high}"
    if low is not None:
        return f"{what} >= {low}"
    if high is not None:
        return f"{what} <= {high}"
    return ""


def _constraints(prop: dict[str, Any]) -> list[str]:
    """Plain-language constraints of a property."""
    prop, _ = _non_null(prop)
    out: list[str] = []
    enum = prop.get("enum")
    if enum == _CURRENCY_ENUM:
        out.append(f"enum of the {len(enum)} active ISO 4217 codes")
    elif enum is not None and len(enum) == 1:
        out.append("always " + _code(enum[0]))
    elif enum is not None:
        out.append("one of " + ", ".join(_code(v) for v in enum))
    for what, low, high in (
        ("length", "minLength", "maxLength"),
        ("value", "minimum", "maximum"),
        ("items", "minItems", "maxItems"),
    ):
        bounds = _bounds(what, prop.get(low), prop.get(high))
        if bounds:
            out.append(bounds)
    if prop.get("format") == "date":
        out.append("calendar date YYYY-MM-DD")
    if "pattern" in prop and "format" not in prop:
        out.append("pattern " + _code(prop["pattern"]))
    if prop.get("type") == "array":
        items = prop.get("items", {})
        inner = _constraints(items)
        if items.get("description"):
            inner.insert(0, items["description"])
        if inner:
            out.append("each item: " + "; ".join(inner))
    return out


def _field_table(struct: dict[str, Any]) -> list[str]:
    """A Markdown table of a struct schema's fields."""
    lines = [
        "| Field | Type | Required | Description and constraints |",
        "|---|---|---|---|",
    ]
    required = set(struct.get("required", ()))
    for name, prop in struct["properties"].items():
        notes = []
        if prop.get("description"):
            notes.append(prop["description"])
        notes.extend(_constraints(prop))
        if name not in required and "default" in prop:
            notes.append("default " + _code(orjson.dumps(prop["default"]).decode()))
        lines.append(
            f"| {_code(name)} | {_cell(_type_name(prop))} | "
            f"{'yes' if name in required else 'no'} | {_cell('; '.join(notes)) or '-'} |"
        )
    return lines


def _refs(node: Any) -> list[str]:
    """Names of the ``$defs`` referenced under ``node``, in order of first use."""
    seen: list[str] = []
    for sub in _subschemas(node):
        ref = sub.get("$ref")
        if isinstance(ref, str) and _ref_name(ref) not in seen:
            seen.append(_ref_name(ref))
    return seen


def _topic_section(topic: str, schema: dict[str, Any]) -> list[str]:
    """The Markdown section of one topic."""
    spec = TOPICS[topic]
    defs: dict[str, Any] = schema["$defs"]
    lines = [f"## {topic}", "", spec.description, ""]
    lines += [
        f"- Direction: {spec.direction}; message key: {_code(spec.key)}; "
        f"compacted: {'yes' if spec.compacted else 'no'}",
        f"- Record id field: {_code(spec.id_field)}; CloudEvents type: {_code(spec.ce_type)}",
        f"- Contract: [{schema_filename(topic)}]({schema_filename(topic)}) "
        f"({_code(schema['$id'])})",
        "",
    ]
    if "anyOf" in schema:
        tag = schema.get("discriminator", {}).get("propertyName", "type")
        variants = [_ref_name(b["$ref"]) for b in schema["anyOf"]]
        lines += [f"A record is one of these variants, told apart by {_code(tag)}.", ""]
        for name in variants:
            struct = defs[name]
            tag_value = struct["properties"][tag]["enum"][0]
            lines += [f"### {_code(tag)} = {_code(tag_value)} ({name})", ""]
            lines += [struct.get("description", ""), ""]
            lines += [*_field_table(struct), ""]
        top = variants
    else:
        top = [_ref_name(schema["$ref"])]
        struct = defs[top[0]]
        lines += [f"Model {_code(top[0])}: {struct.get('description', '')}", ""]
        lines += [*_field_table(struct), ""]
    for name in _refs([defs[t] for t in top]):
        if name in top:
            continue
        struct = defs[name]
        lines += [f"### Nested object {name}", "", struct.get("description", ""), ""]
        lines += [*_field_table(struct), ""]
    example = EXAMPLES[topic]
    lines += [
        "Example:",
        "",
        "```json",
        orjson.dumps(example, option=orjson.OPT_INDENT_2).decode(),
        "```",
        "",
    ]
    return lines


def render_topics_md(schemas: dict[str, dict[str, Any]]) -> str:
    """The Markdown topic reference for ``schemas`` (as built by :func:`build_schemas`)."""
    lines = [
        "# Riskwatch topic reference",
        "",
        "Generated by `python -m schemas.export schemas/json` from `schemas/models.py` and",
        f"`schemas/topics.py`; do not edit by hand. Contract version {CONTRACT_VERSION}.",
        "",
        "Conventions: money is an integer amount of minor units (`*_minor`) next to an",
        "active ISO 4217 `currency`; times are RFC 3339 with an offset (normalised to UTC",
        "on decode); dates are `YYYY-MM-DD`; unknown fields are ignored, so producers may",
        "add fields without breaking consumers.",
        "",
        "The decoder also checks what the schemas cannot express: an input's `event_time`",
        "lies between 2000-01-01 and two days past the decoder's clock; the message key",
        "equals `customer_id` where the record has one; a record is at most 64 KiB and",
        "nests at most 16 levels; integer fields take integer literals only (`5`, not `5.0`).",
        "",
        "| Topic | Direction | Key | Compacted | Contract |",
        "|---|---|---|---|---|",
    ]
    for topic in schemas:
        spec = TOPICS[topic]
        lines.append(
            f"| [{topic}](#{topic}) | {spec.direction} | {_code(spec.key)} | "
            f"{'yes' if spec.compacted else 'no'} | "
            f"[{schema_filename(topic)}]({schema_filename(topic)}) |"
        )
    lines.append("")
    for topic, schema in schemas.items():
        lines += _topic_section(topic, schema)
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------- #


def export(directory: Path) -> list[Path]:
    """Write every topic's schema and ``TOPICS.md`` to ``directory``.

    Schema files of topics no longer in the registry are removed, so the
    directory always equals a fresh export. Returns the written paths, sorted.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    schemas = build_schemas()
    files: dict[str, bytes] = {
        schema_filename(topic): render_json(schema) for topic, schema in schemas.items()
    }
    files[TOPICS_MD] = render_topics_md(schemas).encode("utf-8")
    for stale in directory.glob("*.schema.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, content in sorted(files.items()):
        path = directory / name
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m schemas.export DIR``: write the schemas and the reference to DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m schemas.export DIR", file=sys.stderr)
        return 2
    for path in export(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
