"""Large-transaction rule: one transaction far above the customer's usual amount.

The customer's usual amount is an exponentially weighted mean of purchase and
cash-advance amounts, in event order. The rule scores before it learns: the
triggering transaction is compared with the mean of the ones before it.

>>> from detectors.spending import SpendState, large_transaction
>>> state, signals = None, []
>>> for amount in [2000, 2500, 1800, 2200, 2100]:
...     state, signals = large_transaction(state, amount, "EUR", multiple=6.0, min_history=5,
...                                  floor_minor=50_000, half_life_events=20.0)
>>> signals
[]
>>> state, signals = large_transaction(state, 90_000, "EUR", multiple=6.0, min_history=5,
...                              floor_minor=50_000, half_life_events=20.0)
>>> signals[0].reason_codes, signals[0].evidence[0].text
(['large_transaction'], "transaction of 900.00 EUR is 44.6x the customer's usual 20.19 EUR")
"""

from __future__ import annotations

import math

from msgspec import Struct

from detectors.base import Evidence, Signal
from detectors.money import money as _money

RULE_ID = "large-transaction"
RULE_VERSION = 1


class SpendState(Struct, array_like=True, frozen=True, gc=False):
    """Count and exponentially weighted mean of transaction amounts."""

    n: int = 0
    mean: float = 0.0


def large_transaction(
    state: SpendState | None,
    amount_minor: int,
    currency: str,
    *,
    multiple: float,
    min_history: int,
    floor_minor: int,
    half_life_events: float,
) -> tuple[SpendState, list[Signal]]:
    """Score ``amount_minor`` against the usual amount, then learn it."""
    state = state or SpendState()
    signals: list[Signal] = []
    if state.n >= min_history and amount_minor >= floor_minor and state.mean > 0:
        ratio = amount_minor / state.mean
        if ratio >= multiple:
            signals.append(
                Signal(
                    kind="behaviour_shift",
                    rule_id=RULE_ID,
                    rule_version=RULE_VERSION,
                    severity="high" if ratio >= 2 * multiple else "medium",
                    reason_codes=["large_transaction"],
                    evidence=[
                        Evidence(
                            code="amount_vs_usual",
                            text=f"transaction of {_money(amount_minor, currency)} is "
                            f"{ratio:.1f}x the customer's usual {_money(state.mean, currency)}",
                            value=round(ratio, 2),
                            unit="x",
                        )
                    ],
                )
            )
    alpha = _ALPHAS.get(half_life_events)
    if alpha is None:
        alpha = 1.0 - math.exp(-math.log(2) / half_life_events)
        if len(_ALPHAS) >= 64:
            _ALPHAS.clear()
        _ALPHAS[half_life_events] = alpha
    n = state.n
    mean = float(amount_minor) if n == 0 else state.mean + alpha * (amount_minor - state.mean)
    return SpendState(n + 1 if n < 1_000_000 else 1_000_000, mean), signals


#: The learning rate of each half-life seen (``1 - exp(-ln 2 / half_life_events)``).
_ALPHAS: dict[float, float] = {}
