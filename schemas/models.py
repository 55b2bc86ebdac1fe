"""Typed event models: the hot-path form of every topic's contract.

The JSON Schema files in ``schemas/json/`` are generated from these models
(``riskwatch schemas export``), so the two cannot drift apart; a test checks
that both accept and reject the same samples.

Conventions, for every model:

* money is an integer amount of minor units (``*_minor``) next to an ISO 4217
  ``currency``;
* times are timezone-aware RFC 3339 strings, normalised to UTC on decode;
  calendar dates (due dates) are ``YYYY-MM-DD``;
* every input carries ``event_id`` and ``event_time``; every output carries a
  deterministic id, the policy and model versions that produced it, reason codes
  and evidence, and the id of the event that triggered it;
* unknown fields are ignored (forward compatibility for producers), but every
  declared field is type- and range-checked.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# --------------------------------------------------------------------------- #
# Shared field types
# --------------------------------------------------------------------------- #

# Patterns end in ``(?!\n)$``: msgspec matches them with Python's ``re``, whose
# ``$`` also matches before a trailing newline ("cust-1\n" would pass ``...$``);
# in ECMA-262 (the exported JSON Schemas) ``(?!\n)$`` means the same as ``$``.

#: Active ISO 4217 currency codes (List One, currencies only: no fund codes, no
#: precious metals). VED (Venezuela, 2021), XCG (Curaçao and Sint Maarten, 2025)
#: and ZWG (Zimbabwe, 2024) are in; ZWL (withdrawn in 2024) is out.
ISO_4217: tuple[str, ...] = tuple(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB
    BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD
    EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS
    INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD
    LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK
    NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH
    UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG""".split()  # noqa: SIM905
)
ISO_4217_SET = frozenset(ISO_4217)

#: Largest accepted amount in minor units (10 billion major units at 2 decimals).
MAX_MINOR = 1_000_000_000_000

Id = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*(?!\n)$",
        description="Opaque identifier: letters, digits and . _ : @ / -",
    ),
]
Currency = Annotated[
    str,
    Meta(
        pattern=r"^[A-Z]{3}(?!\n)$",
        description="ISO 4217 alphabetic code; must be an active code (checked on decode)",
    ),
]
AmountMinor = Annotated[
    int, Meta(ge=0, le=MAX_MINOR, description="Non-negative amount in minor units")
]
Timestamp = Annotated[
    dt.datetime, Meta(tz=True, description="RFC 3339 timestamp with offset; stored as UTC")
]
Country = Annotated[str, Meta(pattern=r"^[A-Z]{2}(?!\n)$", description="ISO 3166-1 alpha-2")]
Mcc = Annotated[
    str, Meta(pattern=r"^[0-9]{4}(?!\n)$", description="ISO 18245 merchant category code")
]
ShortText = Annotated[str, Meta(max_length=200)]
Label = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*(?!\n)$")
]
Product = Literal["credit_card", "installment_plan", "personal_loan"]
Score = Annotated[int, Meta(ge=0, le=1000)]

_CFG: dict[str, Any] = {"kw_only": True}


class Input(Struct, **_CFG):
    """Fields every input event carries."""

    event_id: Id
    event_time: Timestamp


class CustomerInput(Input, **_CFG):
    """An input about one customer; the Kafka message key is ``customer_id``."""

    customer_id: Id


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #


class CardTransaction(CustomerInput, **_CFG):
    """A card transaction (topic ``card-transactions``)."""

    account_id: Id
    type: Literal["purchase", "cash_advance", "refund", "installment_conversion"]
    amount_minor: AmountMinor
    currency: Currency
    mcc: Mcc
    merchant_id: Id
    channel: Literal["pos", "contactless", "ecom", "moto", "atm"]
    country: Country
    installment_months: Annotated[int, Meta(ge=2, le=120)] | None = None


class _Repayment(CustomerInput, tag_field="type", **_CFG):
    account_id: Id


class InstallmentDue(_Repayment, tag="installment_due", **_CFG):
    """An installment of a loan or installment plan falls due."""

    due_id: Id
    due_date: dt.date
    amount_minor: AmountMinor
    currency: Currency
    #: The account's product: its delinquency bucket ladder and roll-rate label
    #: (records without it are installment plans, as before the field existed).
    product: Literal["installment_plan", "personal_loan"] = "installment_plan"


class StatementDue(_Repayment, tag="statement_due", **_CFG):
    """A card statement is issued with its due date and minimum payment."""

    due_id: Id
    due_date: dt.date
    amount_minor: AmountMinor
    minimum_minor: AmountMinor
    currency: Currency


class PaymentReceived(_Repayment, tag="payment_received", **_CFG):
    """A payment is credited to the account."""

    amount_minor: AmountMinor
    currency: Currency
    channel: Literal["direct_debit", "transfer", "card", "cash", "other"] = "other"


class PaymentReversed(_Repayment, tag="payment_reversed", **_CFG):
    """An earlier payment bounced or was recalled; what it paid is due again."""

    reversed_event_id: Id
    amount_minor: AmountMinor
    currency: Currency
    reason: ShortText = ""


class PlanInstallment(Struct, **_CFG):
    """One installment of a restructuring plan."""

    due_date: dt.date
    amount_minor: AmountMinor


class PlanAgreed(_Repayment, tag="plan_agreed", **_CFG):
    """A restructuring plan replaces the remaining schedule of the account."""

    plan_id: Id
    currency: Currency
    installments: Annotated[list[PlanInstallment], Meta(min_length=1, max_length=360)]
    rate_bps: Annotated[int, Meta(ge=0, le=10_000)] = 0
    reason: ShortText = ""


class DeferralStarted(_Repayment, tag="deferral_started", **_CFG):
    """A payment pause starts: the days-past-due clock stops."""

    deferral_id: Id
    until: dt.date | None = None
    reason: ShortText = ""


class DeferralEnded(_Repayment, tag="deferral_ended", **_CFG):
    """A payment pause ends: the clock resumes."""

    deferral_id: Id


Repayment = (
    InstallmentDue
    | StatementDue
    | PaymentReceived
    | PaymentReversed
    | PlanAgreed
    | DeferralStarted
    | DeferralEnded
)


class CustomerProfile(CustomerInput, **_CFG):
    """Reference data for a customer (topic ``customer-profiles``, compacted)."""

    credit_limit_minor: AmountMinor
    currency: Currency
    products: Annotated[list[Product], Meta(min_length=1, max_length=8)]
    sector: Label
    region: Label
    segment: Label
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"
    #: Home country (ISO 3166-1 alpha-2): card transactions elsewhere count as foreign
    #: (the policy's ``behaviour.home_country`` when absent).
    country: Country | None = None


class CreditApplication(CustomerInput, **_CFG):
    """A credit application by the customer, here or seen at the bureau."""

    application_id: Id
    product: Product
    amount_minor: AmountMinor
    currency: Currency
    source: Literal["internal", "bureau"] = "internal"


class SectorIndicator(Input, **_CFG):
    """An external indicator for an economic sector (topic ``sector-indicators``)."""

    sector: Label
    indicator: Label
    value: float
    period: Annotated[str, Meta(min_length=1, max_length=16)]


class RiskPolicyRecord(Input, **_CFG):
    """A published version of the risk policy (topic ``risk-policy``, compacted)."""

    version: Annotated[str, Meta(min_length=1, max_length=64)]
    actor: Annotated[str, Meta(min_length=1, max_length=128)]
    reason: Annotated[str, Meta(max_length=2000)]
    document: dict[str, Any]


class Outcome(CustomerInput, **_CFG):
    """A confirmed outcome for a customer, used as a training label."""

    label: Literal["default", "charge_off", "fraud_confirmed", "fraud_cleared", "cured"]
    account_id: Id | None = None
    effective_date: dt.date | None = None


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #

Severity = Literal["info", "low", "medium", "high", "critical"]
Grade = Literal["low", "medium", "high", "critical"]


class Evidence(Struct, **_CFG):
    """One fact behind a decision, in plain terms, with its number."""

    code: Label
    text: Annotated[str, Meta(max_length=500)]
    value: float | int | str | None = None
    unit: Annotated[str, Meta(max_length=16)] | None = None


class Output(Struct, **_CFG):
    """Fields every output carries."""

    customer_id: Id
    trigger_event_id: Id
    event_time: Timestamp
    policy_version: Annotated[str, Meta(max_length=64)]
    model_version: Annotated[str, Meta(max_length=64)]
    reason_codes: Annotated[list[Label], Meta(max_length=32)]
    evidence: Annotated[list[Evidence], Meta(max_length=32)]


class RiskAlert(Output, **_CFG):
    """An early-warning alert for case management and collections (``risk-alerts``)."""

    alert_id: Id
    alert_type: Label
    severity: Severity
    rule_id: Label
    rule_version: Annotated[int, Meta(ge=1)]
    routing: Annotated[list[Label], Meta(max_length=8)]
    account_id: Id | None = None


class LimitAdjustment(Output, **_CFG):
    """A credit-limit proposal within guardrails (``limit-adjustments``)."""

    adjustment_id: Id
    direction: Literal["cut", "freeze", "raise", "restore"]
    current_limit_minor: AmountMinor
    proposed_limit_minor: AmountMinor
    currency: Currency
    requires_approval: bool
    notify_customer: bool
    account_id: Id | None = None


ActionKind = Literal[
    "reminder", "sms", "call", "collections_case", "restructuring_offer", "review_queue"
]
ActionChannel = Literal["sms", "email", "push", "call", "letter", "internal"]


class CustomerAction(Output, **_CFG):
    """An action towards the customer (``customer-actions``)."""

    action_id: Id
    action: ActionKind
    channel: ActionChannel
    account_id: Id | None = None
    not_before: Timestamp | None = None


class RiskGrade(Output, **_CFG):
    """The latest risk grade of a customer (``risk-grades``, compacted)."""

    grade_id: Id
    grade: Grade
    score: Score
    previous_grade: Grade | None = None


class DeadLetter(Struct, **_CFG):
    """A record that could not be processed, with why (``dead-letters``)."""

    dead_letter_id: Id
    source_topic: Annotated[str, Meta(max_length=249)]
    partition: int
    offset: int
    reason: Label
    detail: Annotated[str, Meta(max_length=2000)]
    key: Annotated[str, Meta(max_length=512)] | None
    raw_b64: str
    raw_size: Annotated[int, Meta(ge=0)]
    truncated: bool
    event_time: Timestamp


class AuditRecord(Struct, **_CFG):
    """An append-only, hash-chained record of a control action (``audit``)."""

    audit_id: Id
    seq: Annotated[int, Meta(ge=0)]
    event_time: Timestamp
    actor: Annotated[str, Meta(min_length=1, max_length=128)]
    action: Label
    subject: Annotated[str, Meta(max_length=128)]
    version: Annotated[str, Meta(max_length=64)]
    before: Any
    after: Any
    why: Annotated[str, Meta(max_length=2000)]
    prev_hash: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}(?!\n)$")]
    hash: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}(?!\n)$")]


def to_builtins(obj: Struct) -> Any:
    """A model as plain JSON-ready Python values."""
    return msgspec.to_builtins(obj)
