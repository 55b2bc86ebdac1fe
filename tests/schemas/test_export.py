"""The committed JSON Schemas and topic reference match the models."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

import schemas
from schemas.codec import decode
from schemas.export import (
    DIALECT,
    EXAMPLES,
    TOPICS_MD,
    build_schemas,
    export,
    main,
    render_topics_md,
    schema_filename,
)
from schemas.models import ISO_4217
from schemas.topics import CONTRACT_VERSION, TOPICS

COMMITTED = Path(schemas.__file__).parent / "json"
REGENERATE = "run `python -m schemas.export schemas/json` and commit the result"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
SCHEMAS = build_schemas()


def test_committed_files_equal_a_fresh_export(tmp_path: Path) -> None:
    fresh = {path.name: path.read_bytes() for path in export(tmp_path)}
    committed = {path.name: path.read_bytes() for path in COMMITTED.iterdir() if path.is_file()}
    assert sorted(committed) == sorted(fresh), f"schemas/json is out of date: {REGENERATE}"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"schemas/json/{stale[0]} is out of date: {REGENERATE}"


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export(tmp_path / "b")}
    assert first == second
    assert all(
        content.endswith(b"\n") and not content.endswith(b"\n\n") for content in first.values()
    )


def test_export_writes_one_schema_per_topic_and_the_reference(tmp_path: Path) -> None:
    (tmp_path / "gone-topic.v1.schema.json").write_text("{}")
    (tmp_path / "README.txt").write_text("not ours")
    names = sorted(p.name for p in export(tmp_path))
    assert names == sorted([*(schema_filename(t) for t in TOPICS), TOPICS_MD])
    assert not (tmp_path / "gone-topic.v1.schema.json").exists()  # stale schema removed
    assert (tmp_path / "README.txt").exists()  # other files left alone
    for topic in TOPICS:
        written = orjson.loads((tmp_path / schema_filename(topic)).read_bytes())
        assert written == orjson.loads(orjson.dumps(SCHEMAS[topic]))


def test_main_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / TOPICS_MD).exists()
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("topic", list(TOPICS))
def test_schema_is_valid_2020_12(topic: str) -> None:
    schema = SCHEMAS[topic]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT
    assert schema["$id"] == f"https://riskwatch.dev/schemas/{topic}/v{CONTRACT_VERSION}.json"
    spec = TOPICS[topic]
    assert schema["title"] == topic
    assert schema["description"] == spec.description
    assert schema["x-riskwatch"] == {
        "topic": topic,
        "direction": spec.direction,
        "key": spec.key,
        "compacted": spec.compacted,
        "id_field": spec.id_field,
        "ce_type": spec.ce_type,
        "contract_version": CONTRACT_VERSION,
    }


def _walk(node: Any, name: str | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    """Every (property name or None, subschema) pair of a schema."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((name, node))
        for key, value in node.items():
            if key == "properties":
                for prop, sub in value.items():
                    out.extend(_walk(sub, prop))
            elif key != "examples":
                out.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_walk(value, name))
    return out


def test_patterns_reject_a_trailing_newline_in_python_and_mean_the_same_in_ecma_262() -> None:
    """Every exported pattern ends in ``(?!\\n)$`` (Python's ``$`` alone also matches
    before a final newline) and compiles as an ECMA-262 regular expression."""
    regress = pytest.importorskip("regress")  # an ECMA-262 engine, where installed
    patterns = {node["pattern"] for schema in SCHEMAS.values()
                for _, node in _walk(schema) if "pattern" in node}
    assert patterns
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("(?!\\n)$"), pattern
        ecma = regress.Regex(pattern)
        assert ecma.find("\n") is None
    ecma_id = regress.Regex(SCHEMAS["card-transactions"]["$defs"]["CardTransaction"]
                            ["properties"]["customer_id"]["pattern"])
    assert ecma_id.find("cust-1") is not None
    assert ecma_id.find("cust-1\n") is None


@pytest.mark.parametrize("topic", list(TOPICS))
def test_schema_expresses_decoder_checks(topic: str) -> None:
    nodes = _walk(SCHEMAS[topic])
    for name, node in nodes:
        if name == "currency" and node.get("type") == "string":
            assert node["enum"] == sorted(ISO_4217)
            assert node["pattern"] == "^[A-Z]{3}(?!\\n)$"
        if node.get("format") in ("date-time", "date"):
            assert "pattern" in node
        if node.get("type") == "object" and "properties" in node:
            assert node["additionalProperties"] is True  # unknown fields are ignored


@pytest.mark.parametrize("topic", list(TOPICS))
def test_example_validates_and_decodes(topic: str) -> None:
    example = EXAMPLES[topic]
    validator = Draft202012Validator(
        SCHEMAS[topic], format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [e.message for e in validator.iter_errors(example)]
    assert not errors, errors
    assert SCHEMAS[topic]["examples"] == [example]
    decode(topic, orjson.dumps(example), key=example.get("customer_id"), now=NOW)


def test_examples_cover_every_topic() -> None:
    assert sorted(EXAMPLES) == sorted(TOPICS)


def test_date_time_format_is_checked() -> None:
    """``date-time`` is asserted only when rfc3339-validator is installed."""
    checker = Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "pip install rfc3339-validator"
    assert not checker.conforms("2026-02-27T18:42:13", "date-time")


def test_topics_md_lists_every_topic_and_field() -> None:
    text = render_topics_md(SCHEMAS)
    assert ">>>" not in text  # the Markdown is collected as a doctest file
    for topic, spec in TOPICS.items():
        assert f"| [{topic}](#{topic}) | {spec.direction} | `{spec.key}` |" in text
        assert f"\n## {topic}\n" in text
        for field in EXAMPLES[topic]:
            assert f"| `{field}` |" in text
    assert "`type` = `plan_agreed` (PlanAgreed)" in text
    assert "### Nested object Evidence" in text
