"""Dead-letter records: what could not be processed, where it came from, and why.

The raw bytes are kept (base64, truncated past a limit) with card-number-like
digit runs masked before the cut; the id is deterministic over the record's
position, so a redelivered bad record dead-letters under the same id.

>>> import datetime as dt
>>> from schemas.errors import DecodeError
>>> dl = dead_letter("card-transactions", 3, 17, b"c1", b'{"pan":"4111111111111111"',
...     DecodeError("malformed_json", "truncated"), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
>>> dl.reason, dl.partition, dl.offset, base64.b64decode(dl.raw_b64)
('malformed_json', 3, 17, b'{"pan":"411111******1111"')
"""

from __future__ import annotations

import base64
import datetime as dt

from alerts.envelope import Emit
from alerts.ids import output_id
from schemas.codec import mask_pans
from schemas.errors import DecodeError
from schemas.models import DeadLetter

#: Raw bytes kept in a dead letter, at most.
MAX_RAW_KEPT = 16 * 1024
#: Raw bytes masked before the cut. Masking drops the separators inside a run
#: (at most every other byte), so the masked window is at least MAX_RAW_KEPT + 64
#: bytes long whenever the raw is longer than it: the digits of a card number cut
#: by the window's end (at most 37 bytes) land past MAX_RAW_KEPT and are cut off.
_MASK_WINDOW = 2 * MAX_RAW_KEPT + 128


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes | None,
    error: DecodeError,
    when: dt.datetime,
) -> DeadLetter:
    """The dead-letter record for a record at ``topic``/``partition``/``offset``."""
    raw = raw or b""
    # Mask, then cut: cutting first would leave up to 12 digits of a card number
    # straddling the cut in clear (too few to look like one to the masker).
    masked = mask_pans(raw[:_MASK_WINDOW])
    kept = masked[:MAX_RAW_KEPT]
    key_text = mask_pans(key).decode("utf-8", "replace")[:512] if key is not None else None
    return DeadLetter(
        dead_letter_id=output_id("dead-letter", 1, f"{topic}:{partition}:{offset}"),
        source_topic=topic,
        partition=partition,
        offset=offset,
        reason=error.reason,
        detail=mask_pans(error.detail.encode("utf-8", "replace")).decode()[:2000],
        key=key_text,
        raw_b64=base64.b64encode(kept).decode(),
        raw_size=len(raw),
        truncated=len(masked) > MAX_RAW_KEPT,
        event_time=when.astimezone(dt.UTC),
    )


def dead_letter_emit(record: DeadLetter) -> Emit:
    """The dead letter as an output, keyed by its source topic."""
    return Emit("dead-letters", record.source_topic, record.dead_letter_id, record)
