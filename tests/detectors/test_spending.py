"""Tests of the large-transaction rule (``detectors/spending.py``)."""

from __future__ import annotations

import pytest

from detectors.spending import large_transaction


def alert_text(currency: str, usual: int, big: int) -> str:
    state = None
    for _ in range(5):
        state, _signals = large_transaction(state, usual, currency, multiple=6.0, min_history=5,
                                            floor_minor=50_000, half_life_events=20.0)
    state, signals = large_transaction(state, big, currency, multiple=6.0, min_history=5,
                                       floor_minor=50_000, half_life_events=20.0)
    [signal] = signals
    return signal.evidence[0].text


@pytest.mark.parametrize(("currency", "usual", "big", "text"), [
    ("EUR", 2_000, 90_000, "transaction of 900.00 EUR is 45.0x the customer's usual 20.00 EUR"),
    ("JPY", 3_000, 900_000,
     "transaction of 900,000 JPY is 300.0x the customer's usual 3,000 JPY"),
    ("KWD", 20_000, 900_000,
     "transaction of 900.000 KWD is 45.0x the customer's usual 20.000 KWD"),
])
def test_amounts_are_stated_in_the_currencys_minor_unit(currency: str, usual: int, big: int,
                                                        text: str) -> None:
    assert alert_text(currency, usual, big) == text
