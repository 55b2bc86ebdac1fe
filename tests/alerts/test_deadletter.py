"""Dead letters: raw bytes masked before they are cut."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest

from alerts.deadletter import MAX_RAW_KEPT, dead_letter
from schemas.errors import DecodeError

PAN = b"4111111111111111"
MASKED = b"411111******1111"
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _kept(raw: bytes) -> tuple[bytes, bool]:
    dl = dead_letter("card-transactions", 0, 1, None, raw,
                     DecodeError("oversized", "too big"), WHEN)
    return base64.b64decode(dl.raw_b64), dl.truncated


@pytest.mark.parametrize("pan", [PAN, b"4111 1111 1111 1111", b"4111-1111-1111-1111"])
def test_a_card_number_across_the_cut_is_masked_at_every_offset(pan: bytes) -> None:
    for before_cut in range(len(pan) + 1):
        prefix = b"x" * (MAX_RAW_KEPT - before_cut)
        kept, truncated = _kept(prefix + pan + b"y" * 100)
        assert truncated and len(kept) == MAX_RAW_KEPT
        tail = kept[len(prefix):].rstrip(b"y")
        # what is kept of the number is a prefix of its masked form
        assert tail == MASKED[:len(tail)], (before_cut, tail)


def test_a_card_number_past_the_raw_cut_but_inside_the_masked_one_is_masked() -> None:
    # Masking drops the spaces of the 400 numbers in front (1,200 bytes): a number
    # past MAX_RAW_KEPT in the raw bytes lands before the cut of the masked bytes.
    spaced = b"4111 1111 1111 1111,"
    prefix = spaced * 400
    for at in (MAX_RAW_KEPT + 8, MAX_RAW_KEPT + 56, MAX_RAW_KEPT + 200, MAX_RAW_KEPT + 1100):
        raw = prefix + b"x" * (at - len(prefix)) + PAN + b"x" * 100_000
        kept, truncated = _kept(raw)
        assert truncated
        assert re.search(rb"[0-9]{7,}", kept) is None, at


def test_short_raw_is_kept_whole_and_not_truncated() -> None:
    kept, truncated = _kept(b'{"pan":"' + PAN + b'"}')
    assert kept == b'{"pan":"411111******1111"}' and not truncated
