"""Amounts in plain words, with the currency's ISO 4217 minor unit.

Shared by the detectors' evidence texts (pure: no I/O, no Kafka).

>>> money(123456, "EUR"), money(1234, "JPY"), money(1234567, "KWD")
('1,234.56 EUR', '1,234 JPY', '1,234.567 KWD')
"""

from __future__ import annotations

from typing import Final

__all__ = ["decimals", "major", "money"]

#: Currencies without a minor unit.
ZERO_DECIMALS: Final = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW"}
    | {"PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
#: Currencies with three decimals.
THREE_DECIMALS: Final = frozenset(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"))


def decimals(currency: str) -> int:
    """Decimals of the currency's minor unit (2 unless listed).

    >>> decimals("EUR"), decimals("JPY"), decimals("BHD")
    (2, 0, 3)
    """
    if currency in ZERO_DECIMALS:
        return 0
    return 3 if currency in THREE_DECIMALS else 2


def major(amount_minor: float, currency: str) -> float:
    """Minor units to major units of ``currency``.

    >>> major(1234, "EUR"), major(1234, "JPY")
    (12.34, 1234.0)
    """
    return amount_minor / 10 ** decimals(currency)


def money(amount_minor: float, currency: str) -> str:
    """Plain-terms amount: ``1,234.56 EUR`` (the currency's decimals).

    >>> money(2019.4, "EUR"), money(900_000, "JPY"), money(20_000, "KWD")
    ('20.19 EUR', '900,000 JPY', '20.000 KWD')
    """
    d = decimals(currency)
    return f"{amount_minor / 10**d:,.{d}f} {currency}"
