"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer).

    python scripts/fuzz_decoder.py tests/schemas/fuzz_corpus -max_total_time=60

The property: for every topic and any bytes, ``schemas.codec.decode`` returns a
model or raises ``DecodeError`` (with a reason from ``DECODE_REASONS``); never any
other exception. Inputs that crashed are written as ``crash-*`` by libFuzzer:
add them to the corpus directory and the regression test replays them forever.
"""

from __future__ import annotations

import datetime as dt
import sys

import atheris

with atheris.instrument_imports():
    from schemas.codec import decode
    from schemas.errors import DECODE_REASONS, DecodeError
    from schemas.topics import INPUT_TOPICS

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def one_input(data: bytes) -> None:
    if not data:
        return
    topic = INPUT_TOPICS[data[0] % len(INPUT_TOPICS)]
    try:
        decode(topic, data[1:], key="c1" if data[0] & 0x80 else None, now=NOW)
    except DecodeError as exc:
        if exc.reason not in DECODE_REASONS:
            raise


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
