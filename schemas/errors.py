"""The one root exception type of Riskwatch and its families.

Every error a caller can act on derives from :class:`RiskwatchError`. Errors that
wrap a third-party failure are raised ``from`` it, and their messages name the
topic, key and field involved where those are known.
"""

from __future__ import annotations


class RiskwatchError(Exception):
    """Root of every error Riskwatch raises on purpose."""


class ConfigError(RiskwatchError):
    """Bad configuration: a setting, a policy file, a command-line option."""


class DecodeError(RiskwatchError):
    """A record that cannot be decoded or validated.

    ``reason`` is a short stable code (used as the dead-letter reason and as a
    metric label, so its set of values is fixed: see :data:`DECODE_REASONS`).
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        topic: str | None = None,
        key: str | None = None,
        field: str | None = None,
    ) -> None:
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}")
        self.reason = reason
        self.detail = detail
        self.topic = topic
        self.key = key
        self.field = field
        where = ", ".join(
            f"{name}={value}"
            for name, value in (("topic", topic), ("key", key), ("field", field))
            if value is not None
        )
        super().__init__(f"{reason}: {detail}" + (f" ({where})" if where else ""))


#: The fixed set of dead-letter reasons (also the ``reason`` metric label values).
DECODE_REASONS: frozenset[str] = frozenset(
    {
        "oversized",  # payload over the byte limit, checked before parsing
        "too_deep",  # JSON nesting deeper than allowed, checked before parsing
        "invalid_utf8",
        "malformed_json",
        "wrong_type",
        "missing_field",
        "null_value",
        "invalid_value",  # a constraint failed (pattern, enum, length)
        "non_finite_number",  # NaN, infinity, or a number too large to represent
        "amount_out_of_range",  # an amount above the absurdity limit
        "negative_amount",
        "unknown_currency",
        "bad_timestamp",  # not UTC-aware, or too far in the past / future
        "key_mismatch",  # message key differs from the payload's customer id
        "unknown_topic",
        "duplicate_event",
        "too_late",  # event time older than the allowed lateness
        "processing_error",  # a bug: the event decoded but processing raised
    }
)


class BrokerError(RiskwatchError):
    """The Kafka broker could not be started, reached or administered."""


class PolicyError(ConfigError):
    """A risk policy that does not validate."""
