"""The demo's summary (the demo itself is run by hand and in the closing checks)."""

from __future__ import annotations

import io
from collections import Counter

from streams.demo import DemoStats, _final


def test_summary_says_which_produced_records_are_reference_data() -> None:
    # The worker counts customer-keyed records as processed; sector indicators go to
    # every worker's reference reader. Without this line the summary read as if 33
    # records of 70,542 had been lost.
    stats = DemoStats(produced=12, processed=9.0)
    stats.produced_by.update({"card-transactions": 8, "outcomes": 1, "sector-indicators": 3})
    out = io.StringIO()
    _final(stats, out)
    lines = out.getvalue().splitlines()
    assert "events produced     12" in lines
    assert ("  of which reference data every worker reads: sector-indicators 3 "
            "(not counted as processed)") in lines
    assert "events processed    9" in lines


def test_summary_without_reference_data_has_no_such_line() -> None:
    stats = DemoStats(produced=2, processed=2.0, produced_by=Counter({"repayments": 2}))
    out = io.StringIO()
    _final(stats, out)
    assert "reference data" not in out.getvalue()
