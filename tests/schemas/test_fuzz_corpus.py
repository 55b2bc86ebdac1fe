"""Replay the decoder fuzzing corpus (scripts/fuzz_decoder.py) as regression tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from schemas.codec import decode
from schemas.errors import DECODE_REASONS, DecodeError
from schemas.topics import INPUT_TOPICS

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").iterdir())
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_corpus_is_there():
    assert len(CORPUS) >= 12


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name[:24])
def test_corpus_input_decodes_or_fails_cleanly(path: Path):
    data = path.read_bytes()
    if not data:
        return
    topic = INPUT_TOPICS[data[0] % len(INPUT_TOPICS)]
    try:
        decode(topic, data[1:], key="c1" if data[0] & 0x80 else None, now=NOW)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS
        assert topic in str(exc)
