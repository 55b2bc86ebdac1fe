"""Synthetic consumer-lending portfolio: realistic input events plus ground truth.

The simulator plays a portfolio of customers forward day by day and yields the
input events Riskwatch consumes — customer profiles, card transactions,
repayments (dues, payments, reversals, restructuring plans, deferrals), credit
applications, sector indicators and confirmed outcomes — together with the
generator's own *ground truth* of what it injected. It is deterministic for a
seed, pure Python (no Kafka, no Faust) and streams: it holds the customers'
compact state and one day of events, never the whole run.

Usage::

    cfg = Portfolio(customers=1_000, days=180, seed=7)
    for topic, key, record in iter_events(cfg):
        ...  # record is a schemas.models Struct, or a PoisonRecord (bytes)
    counts = write_jsonl(cfg, Path("out/"))  # <topic>.jsonl + ground_truth.jsonl

Order and identity
    Events come in non-decreasing ``event_time`` order, globally and so per
    topic. All profiles come first (at ``start`` 00:00 UTC), then each day's
    events sorted by time. The message key is the ``customer_id``, or the
    ``sector`` for ``sector-indicators``. Event ids are deterministic and unique:
    ``<kind>-<customer>-<seq>`` (``cp`` profile, ``tx`` card transaction, ``rp``
    repayment, ``ca`` application, ``oc`` outcome) and ``si-<sector>-<n>``.
    Times are UTC; money is integer euro cents (``EUR``).

Customers
    Every customer has a profile (credit limit, products among ``credit_card``,
    ``installment_plan`` and ``personal_loan``, one of 8 sectors, one of 6
    regions with its IANA timezone, a segment) and habits: a merchant-category
    mix (one of a few archetypes over groceries 5411, fuel 5541, restaurants
    5812, online retail 5999/5311, airlines 4511, hotels 7011, ...), lognormal
    amounts, a Poisson cadence of transactions per day in local daytime with
    occasional night-time ones, contactless/chip/e-commerce channels, trips
    abroad, foreign web shops, subscriptions, refunds, a few cash advances and
    installment conversions. Transactions that would exceed the credit limit are
    declined (not emitted); a card is blocked at 60 days past due.

Repayments and days past due (DPD)
    Cards get a monthly ``statement_due`` (the balance when it is issued, early
    in the UTC day; minimum = 3 % with a 25 EUR floor, capped at the balance; due 25 days
    later). Loans and installment plans get an ``installment_due`` notice 10 days
    before each monthly due date. ``minimum_minor`` is the statement's *own*
    minimum: arrears stay on their earlier dues. The generator's DPD of an
    account is the age in days of its oldest due not covered by payments, where
    payments settle dues oldest first and count at most what has been issued so
    far (no prepayment of future dues); a reversal takes back what its payment
    settled; a ``plan_agreed`` replaces the account's dues with the plan's
    installments (and closes the card to new spending and statements; plan
    installments get no separate ``installment_due``); days inside a deferral
    (from its start date until ``until``, exclusive) do not count. A customer's
    DPD is the maximum over its accounts, evaluated at the end of each day.
    Reaching 90 DPD emits an ``outcomes`` record ``default`` (and 180 DPD a
    ``charge_off``).

Scenarios (ground truth)
    Assigned by seed in the proportions of :attr:`Portfolio.mix`; ``steady_good``
    takes the remainder.

    ``steady_good``
        Transactors pay in full, revolvers 40–100 % of the statement (at least
        the minimum); a few late payments (at most 12 days) and bounced direct
        debits that are paid again within days. Never reaches 30 DPD.
    ``gradual_deterioration``
        From ``scenario_start``: rising spend and utilisation, cash advances,
        minimum-only payments (a bounced direct debit is still paid again);
        then partial and long-late payments and bounced direct debits left
        unpaid; then missed payments (stage length ``L`` = days/8, clamped
        to 15..40 days). Reaches 30 DPD within about ``0.55*days + 60`` days.
    ``income_shock``
        From ``scenario_start`` every payment stops; spending drops
        (``variant`` ``spending_drop``) or ATM cash advances spike for ten days
        (``cash_advance_spike``). Some ask for a 30–45 day payment holiday
        (``deferral_started`` / ``deferral_ended``, variant suffix ``+deferral``).
    ``card_fraud_burst``
        A steady customer whose card is used for 8–25 card-not-present
        transactions in 1–5 hours (fraudulent merchants are ``m<mcc>-f<nnn>``;
        those over the limit are declined): first a few tiny card tests, then gambling
        7995, crypto 6051, money transfer 4829, pawn 5933, electronics and
        airlines, from foreign countries, often at night. ``fraud_window`` is
        the first and last emitted fraudulent transaction; 1–4 days later a
        ``fraud_confirmed`` outcome and refunds of every fraudulent transaction.
    ``sector_downturn``
        One sector (``Simulator.downturn``) sees its ``prosperity_index`` fall
        from a date (a flash estimate, then monthly); its customers of this
        scenario degrade from ``scenario_start`` (0–21 days later): ``severe``
        (minimum-only, partial, then missed), ``moderate`` (down to partial
        payments) or ``mild`` (minimum-only). The sector's other customers keep
        their own scenario.
    ``hardship_restructured_kept`` / ``hardship_restructured_broken``
        Payments stop at ``scenario_start``; at 30–45 DPD a ``plan_agreed``
        restructures every account (6–24 monthly installments starting 14–28
        days later). *Kept*: every installment paid on time (an outcome
        ``cured`` after the third). *Broken*: one or two installments paid, then
        nothing: DPD rises again from the first missed plan installment.
    ``application_spree``
        3–6 credit applications (internal and bureau) within 48 hours from
        ``scenario_start``, then minimum-only payments (``stretched``) or, for a
        quarter of them, gradual deterioration three weeks later
        (``then_deteriorated``).

    :class:`GroundTruth` per customer: ``customer_id``, ``scenario``,
    ``scenario_start`` (date; the start date for ``steady_good``),
    ``first_30dpd_date`` and ``first_90dpd_date`` (within the horizon, else
    null), ``fraud_window`` ([start, end] UTC timestamps, else null), plus
    ``sector`` and ``variant``.

Sector indicators
    ``prosperity_index`` per sector (around 100), published on the start day
    and on the first of every month, period ``YYYY-MM``.

Poison records (``Portfolio.poison_rate``, default 0)
    After each genuine event, with probability ``poison_rate``, a corrupted
    *copy* of it is yielded as a :class:`PoisonRecord` (``bytes`` with a
    ``reason`` attribute: the :class:`schemas.errors.DecodeError` reason that
    ``schemas.codec.decode`` raises for it) instead of a model, to demo the
    dead-letter path. Kinds: ``malformed_json`` (truncated), ``missing_field``
    (no ``event_id``), ``wrong_type`` (numeric ``event_id``),
    ``negative_amount``, ``unknown_currency`` (``ZZZ``), ``bad_timestamp``
    (year 1999), ``non_finite_number`` (a ``NaN`` indicator value) and
    ``key_mismatch`` (a valid payload under another customer's key). Copies get
    the event id ``<id>-poison``; the genuine event is still emitted, so the
    valid stream and the ground truth are the same with and without poison (a
    separate random stream picks the poison). :func:`write_jsonl` writes poison
    lines into the topic files, except ``key_mismatch`` ones (a JSONL line has
    no message key).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from bisect import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo

import msgspec

from schemas import models as m
from schemas.codec import dumps, encode, loads
from schemas.errors import ConfigError

__all__ = [
    "DEFAULT_MIX",
    "POISON_KINDS",
    "SCENARIOS",
    "SECTORS",
    "SIM_TOPICS",
    "Event",
    "GroundTruth",
    "PoisonRecord",
    "Portfolio",
    "Simulator",
    "ground_truth",
    "iter_events",
    "write_jsonl",
]

# --------------------------------------------------------------------------- #
# Public constants and types
# --------------------------------------------------------------------------- #

T_TX: Final = "card-transactions"
T_REPAY: Final = "repayments"
T_PROFILE: Final = "customer-profiles"
T_APP: Final = "credit-applications"
T_SECTOR: Final = "sector-indicators"
T_OUTCOME: Final = "outcomes"
#: The topics the simulator produces (every one gets a file in :func:`write_jsonl`).
SIM_TOPICS: Final = (T_PROFILE, T_SECTOR, T_TX, T_REPAY, T_APP, T_OUTCOME)

STEADY: Final = "steady_good"
#: Every scenario name, ``steady_good`` first.
SCENARIOS: Final = (
    STEADY,
    "gradual_deterioration",
    "income_shock",
    "card_fraud_burst",
    "sector_downturn",
    "hardship_restructured_kept",
    "hardship_restructured_broken",
    "application_spree",
)
#: Default share of customers per injected scenario; ``steady_good`` gets the rest (79 %).
DEFAULT_MIX: Final[Mapping[str, float]] = {
    "gradual_deterioration": 0.05,
    "income_shock": 0.03,
    "card_fraud_burst": 0.02,
    "sector_downturn": 0.04,
    "hardship_restructured_kept": 0.02,
    "hardship_restructured_broken": 0.02,
    "application_spree": 0.03,
}
SECTORS: Final = (
    "retail",
    "manufacturing",
    "construction",
    "hospitality",
    "healthcare",
    "public_sector",
    "technology",
    "transport",
)
#: Poison kinds; each is also the ``DecodeError.reason`` that decoding raises.
POISON_KINDS: Final = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "negative_amount",
    "unknown_currency",
    "bad_timestamp",
    "non_finite_number",
    "key_mismatch",
)

#: What the simulator yields: (topic, message key, model or poison bytes).
Event: TypeAlias = tuple[str, str, "msgspec.Struct | PoisonRecord"]


@dataclass(frozen=True)
class Portfolio:
    """What to simulate.

    ``mix`` maps injected scenario names to the share of customers that get
    them (a scenario left out gets none); ``steady_good`` is always the
    remainder and may not be given. ``poison_rate`` is the probability that a
    corrupted copy follows a genuine event (see the module docs).
    """

    customers: int = 1_000
    days: int = 90
    seed: int = 0
    start: dt.date = dt.date(2026, 1, 1)
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    poison_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ConfigError(f"customers must be at least 1, got {self.customers}")
        if not 1 <= self.days <= 3_660:
            raise ConfigError(f"days must be within 1..3660, got {self.days}")
        if not 0.0 <= self.poison_rate < 1.0:
            raise ConfigError(f"poison_rate must be within [0, 1), got {self.poison_rate}")
        for name, share in self.mix.items():
            if name == STEADY:
                raise ConfigError("steady_good is the remainder of the mix; do not set it")
            if name not in SCENARIOS:
                raise ConfigError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"share of {name} must be within [0, 1], got {share}")
        if sum(self.mix.values()) > 1.0 + 1e-9:
            raise ConfigError(f"scenario shares sum to {sum(self.mix.values()):.3f} > 1")


class GroundTruth(msgspec.Struct, kw_only=True):
    """What the generator injected for one customer, and when DPD thresholds were hit."""

    customer_id: str
    scenario: str
    scenario_start: dt.date
    first_30dpd_date: dt.date | None = None
    first_90dpd_date: dt.date | None = None
    fraud_window: tuple[dt.datetime, dt.datetime] | None = None
    sector: str = ""
    variant: str = ""


class PoisonRecord(bytes):
    """Raw bytes of a deliberately invalid record.

    ``reason`` is the :class:`schemas.errors.DecodeError` reason that
    ``schemas.codec.decode`` raises for it, given the key it was yielded with.
    """

    reason: str

    def __new__(cls, raw: bytes, reason: str) -> PoisonRecord:
        obj = super().__new__(cls, raw)
        obj.reason = reason
        return obj


# --------------------------------------------------------------------------- #
# Behavioural tables
# --------------------------------------------------------------------------- #

EUR: Final = "EUR"
_DAY: Final = 86_400
_HOUR: Final = 3_600

# mcc -> (median EUR, lognormal sigma, channel kind: p physical, o online, m mixed)
_MCCS: Final[tuple[tuple[str, float, float, str], ...]] = (
    ("5411", 32.0, 0.60, "p"),  # groceries
    ("5541", 55.0, 0.35, "p"),  # fuel
    ("5812", 38.0, 0.55, "p"),  # restaurants
    ("5814", 11.0, 0.45, "p"),  # fast food
    ("5912", 18.0, 0.60, "p"),  # pharmacies
    ("4111", 3.5, 0.50, "p"),  # local transport
    ("5311", 60.0, 0.80, "m"),  # department stores
    ("5651", 65.0, 0.70, "m"),  # clothing
    ("5732", 180.0, 0.90, "m"),  # electronics
    ("5999", 45.0, 0.90, "o"),  # online / miscellaneous retail
    ("5815", 12.0, 0.30, "o"),  # digital media
    ("4511", 220.0, 0.60, "o"),  # airlines
    ("7011", 160.0, 0.60, "m"),  # hotels
)
_MCC_LOG: Final = tuple(math.log(row[1]) for row in _MCCS)
_ARCHETYPES: Final[tuple[tuple[float, ...], ...]] = (
    (30, 12, 6, 6, 6, 2, 8, 6, 2, 14, 3, 1, 1),  # family
    (18, 20, 6, 14, 4, 14, 4, 3, 2, 10, 3, 1, 1),  # commuter
    (15, 4, 5, 6, 4, 6, 5, 8, 5, 35, 6, 0.5, 0.5),  # online shopper
    (20, 5, 25, 12, 3, 10, 4, 5, 1, 10, 3, 1, 1),  # foodie
    (15, 6, 15, 6, 3, 8, 4, 5, 2, 12, 3, 10, 11),  # traveller
    (45, 15, 2, 5, 8, 10, 4, 2, 1, 6, 2, 0.1, 0.1),  # frugal
)


def _cumulate(weights: tuple[float, ...]) -> tuple[float, ...]:
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


_ARCH_CUM: Final = tuple(_cumulate(w) for w in _ARCHETYPES)
# expected amount (EUR) of a purchase per archetype, to size credit limits to habits
_ARCH_MEAN: Final = tuple(
    sum(w * row[1] * math.exp(row[2] ** 2 / 2) for w, row in zip(ws, _MCCS, strict=True)) / sum(ws)
    for ws in _ARCHETYPES
)
# segment -> (weight, credit limit range EUR, tx per day, spend multiplier)
_SEGMENTS: Final[tuple[tuple[str, float, tuple[int, int], float, float], ...]] = (
    ("student", 0.10, (300, 3_000), 0.9, 0.6),
    ("young_professional", 0.18, (1_500, 12_000), 1.6, 1.0),
    ("mass", 0.35, (1_000, 10_000), 1.3, 0.9),
    ("mass_affluent", 0.20, (3_000, 20_000), 1.8, 1.3),
    ("affluent", 0.07, (8_000, 50_000), 2.2, 2.0),
    ("senior", 0.10, (1_000, 10_000), 0.9, 0.9),
)
_SEG_CUM: Final = _cumulate(tuple(s[1] for s in _SEGMENTS))
# region -> (label, IANA timezone, home country)
_REGIONS: Final = (
    ("de-berlin", "Europe/Berlin", "DE"),
    ("fr-paris", "Europe/Paris", "FR"),
    ("es-madrid", "Europe/Madrid", "ES"),
    ("it-milan", "Europe/Rome", "IT"),
    ("nl-amsterdam", "Europe/Amsterdam", "NL"),
    ("pt-lisbon", "Europe/Lisbon", "PT"),
)
_TRAVEL: Final = ("DE", "FR", "ES", "IT", "NL", "PT", "AT", "BE", "GR", "HR", "GB", "CH")
_WEB_ABROAD: Final = ("IE", "LU", "NL", "GB", "US", "CN")
_FRAUD_COUNTRIES: Final = ("US", "GB", "HK", "AE", "TR", "BR", "NG", "SG", "PH")
_HIGH_RISK: Final = ("7995", "6051", "4829", "5933")
_FRAUD_OTHER: Final = ("5732", "5999", "4511")
_ATM_EUR: Final = (50, 100, 100, 150, 200, 200, 250, 300, 400, 500)
_SUBSCRIPTIONS: Final = (("4814", 25.0, 60.0), ("5815", 5.0, 18.0))
_MERCHANTS_PER_MCC: Final = 400
_STATEMENT_DUE_DAYS: Final = 25
_NOTICE_DAYS: Final = 10
_MIN_PCT: Final = 3
_MIN_FLOOR: Final = 2_500

# payment modes
_FULL, _REVOLVE, _MINIMUM, _PARTIAL, _LATE, _LATE_LONG, _MISSED = range(7)


# --------------------------------------------------------------------------- #
# Mutable state
# --------------------------------------------------------------------------- #


class _Account:
    """One account and its repayment ledger (all days are indices from ``start``)."""

    __slots__ = (
        "aid",
        "balance",
        "closed",
        "cum",
        "deferrals",
        "dom",
        "dues",
        "epoch",
        "inst",
        "is_card",
        "n_due",
        "open_due",
        "paid",
        "plan",
        "product",
        "remaining",
    )

    def __init__(self, aid: str, is_card: bool, dom: int) -> None:
        self.aid = aid
        self.is_card = is_card
        self.dom = dom  # statement day (card) or due day (loan) of the month
        self.balance = 0  # card balance in cents
        self.inst = 0  # loan installment in cents
        self.remaining = 0  # loan installments left
        self.n_due = 0
        self.dues: list[tuple[int, int]] = []  # (due day, cumulative amount due)
        self.cum = 0
        self.paid = 0
        self.open_due: int | None = None
        self.product = "credit_card" if is_card else "installment_plan"
        self.deferrals: tuple[tuple[int, int], ...] = ()  # [start, end) days
        self.closed = False
        self.plan = False
        self.epoch = 0

    def refresh(self) -> None:
        """Recompute the oldest due not covered by payments."""
        paid = self.paid
        for due, cum in self.dues:
            if cum > paid:
                self.open_due = due
                return
        self.open_due = None

    def dpd(self, day: int) -> int:
        """Days past due at the end of ``day``."""
        due = self.open_due
        if due is None or due >= day:
            return 0
        late = day - due
        for start, end in self.deferrals:
            late -= max(0, min(day + 1, end) - max(due + 1, start))
        return max(0, late)


class _Customer:
    """A customer's profile, habits, scenario and ground-truth progress."""

    __slots__ = (
        "L",
        "abroad",
        "accounts",
        "arch",
        "blocked",
        "cadence",
        "card",
        "cash_p",
        "charged_off",
        "cid",
        "country",
        "dd",
        "det_start",
        "ecom_p",
        "fav",
        "fraud_first",
        "fraud_last",
        "fraud_txs",
        "gt30",
        "gt90",
        "idx",
        "kept",
        "limit",
        "max_stage",
        "min_open",
        "miss_from",
        "night_p",
        "plan_dpd",
        "plan_paid",
        "plan_state",
        "region",
        "s",
        "scenario",
        "sector",
        "seq",
        "spend",
        "transactor",
        "trip_p",
        "trip_until",
        "variant",
    )

    # set by Simulator._new_customer
    region: int
    country: str
    sector: str
    limit: int
    cadence: float
    spend: float
    arch: tuple[float, ...]
    night_p: float
    ecom_p: float
    trip_p: float
    cash_p: float
    transactor: bool
    dd: bool
    fav: int

    def __init__(self, idx: int, scenario: str) -> None:
        self.idx = idx
        self.cid = f"c{idx:06d}"
        self.seq = 0
        self.scenario = scenario
        self.variant = ""
        self.s = 0
        self.det_start: int | None = None
        self.miss_from: int | None = None
        self.L = 30
        self.max_stage = 3
        self.accounts: list[_Account] = []
        self.card: _Account | None = None
        self.blocked = False
        self.min_open: int | None = None
        self.gt30: int | None = None
        self.gt90: int | None = None
        self.charged_off = False
        self.plan_state = 0  # 0 none, 1 scheduled, 2 agreed
        self.plan_dpd = 0
        self.plan_paid = 0
        self.kept = True
        self.fraud_first: dt.datetime | None = None
        self.fraud_last: dt.datetime | None = None
        self.fraud_txs: list[tuple[str, str, int, str, str]] | None = None
        self.trip_until = -1
        self.abroad = ""

    def next_id(self, kind: str) -> str:
        self.seq += 1
        return f"{kind}-{self.cid}-{self.seq}"

    def refresh(self) -> None:
        opens = [a.open_due for a in self.accounts if a.open_due is not None]
        self.min_open = min(opens) if opens else None


# --------------------------------------------------------------------------- #
# The simulator
# --------------------------------------------------------------------------- #

_Item = tuple[int, int, int, str, tuple[Any, ...]]  # (second of day, seq, customer, kind, data)


class Simulator:
    """One deterministic run of a :class:`Portfolio`.

    Iterate :meth:`events` once; afterwards :meth:`ground_truth` holds the
    truth of every customer.
    """

    def __init__(self, config: Portfolio) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._prng = random.Random(f"riskwatch-poison:{config.seed}")
        self._t0 = dt.datetime.combine(config.start, dt.time(0), dt.UTC)
        self._H = config.days
        self._L = max(15, min(40, config.days // 8))
        self._customers: list[_Customer] = []
        self._agenda: list[list[_Item]] = [[] for _ in range(config.days)]
        self._aseq = 0
        self._today = -1
        self._started = False
        self._nseq = 0
        self._buf: list[tuple[int, str, str, Any]] = []
        self._bseq = 0
        self._zones = [ZoneInfo(r[1]) for r in _REGIONS]
        self._offsets = [0] * len(_REGIONS)
        self._finished = False
        self._assign = self._assign_scenarios()
        #: (sector, date its prosperity index starts to fall), if any.
        self.downturn: tuple[str, dt.date] | None = None
        self._downturn_day = -1
        if config.mix.get("sector_downturn", 0.0) > 0:
            sector = self.rng.choice(SECTORS)
            self._downturn_day = int(self._H * self.rng.uniform(0.15, 0.35))
            self.downturn = (sector, self._date(self._downturn_day))
        self._set_offsets(0)

    # ------------------------------------------------------------------ helpers

    def _assign_scenarios(self) -> list[str]:
        """Scenario per customer: rounded shares (at least one each when asked), shuffled."""
        n = self.config.customers
        counts = {name: round(self.config.mix.get(name, 0.0) * n) for name in SCENARIOS[1:]}
        for name in counts:
            if counts[name] == 0 and self.config.mix.get(name, 0.0) > 0:
                counts[name] = 1
        while sum(counts.values()) > n:
            largest = max(counts, key=lambda k: (counts[k], k))
            counts[largest] -= 1
        assign = [STEADY] * (n - sum(counts.values()))
        for name in SCENARIOS[1:]:
            assign.extend([name] * counts[name])
        self.rng.shuffle(assign)
        return assign

    def _date(self, day: int) -> dt.date:
        return self.config.start + dt.timedelta(days=day)

    def _ts(self, day: int, sec: int) -> dt.datetime:
        return self._t0 + dt.timedelta(seconds=day * _DAY + sec)

    def _set_offsets(self, day: int) -> None:
        noon = dt.datetime.combine(self._date(day), dt.time(12))
        for i, zone in enumerate(self._zones):
            off = zone.utcoffset(noon)
            self._offsets[i] = int(off.total_seconds()) if off is not None else 0

    def _local(self, c: _Customer, lo_h: float, hi_h: float) -> int:
        """A UTC second of the day at a local time between two hours."""
        local = int(self.rng.uniform(lo_h, hi_h) * _HOUR)
        return (local - self._offsets[c.region]) % _DAY

    def _month_day(self, day: int, dom: int) -> int:
        """The day index of day-of-month ``dom`` in the month after ``day``'s."""
        date = self._date(day)
        year, month = (date.year + 1, 1) if date.month == 12 else (date.year, date.month + 1)
        return (dt.date(year, month, dom) - self.config.start).days

    def _first_day(self, dom: int, earliest: int) -> int:
        day = earliest
        while self._date(day).day != dom:
            day += 1
        return day

    def _at(self, day: int, sec: int, c: _Customer | None, kind: str, *data: Any) -> None:
        """Schedule an action; actions at or past the horizon are dropped."""
        if day <= self._today:
            day = self._today + 1
        if day >= self._H:
            return
        self._aseq += 1
        self._agenda[day].append((sec, self._aseq, -1 if c is None else c.idx, kind, data))

    def _emit(self, sec: int, prio: int, topic: str, key: str, obj: Any) -> None:
        self._bseq += 1
        self._buf.append(((sec * 4 + prio) << 32 | self._bseq, topic, key, obj))

    def _stress(self, c: _Customer, day: int) -> int:
        """0 unstressed, 1 stretched (minimum-only stage), 2 distressed."""
        if c.miss_from is not None and day >= c.miss_from:
            return 2
        if c.det_start is not None and day >= c.det_start:
            return 1 if min(c.max_stage, 1 + (day - c.det_start) // c.L) == 1 else 2
        return 0

    # ------------------------------------------------------------------ customers

    def _new_customer(self, idx: int) -> _Customer:
        rng = self.rng
        H = self._H
        scenario = self._assign[idx]
        c = _Customer(idx, scenario)
        seg_name, _w, (lim_lo, lim_hi), seg_cad, seg_spend = _SEGMENTS[
            bisect(_SEG_CUM, rng.random() * _SEG_CUM[-1])
        ]
        c.region = rng.randrange(len(_REGIONS))
        c.country = _REGIONS[c.region][2]
        if scenario == "sector_downturn" and self.downturn is not None:
            c.sector = self.downturn[0]
        else:
            c.sector = rng.choice(SECTORS)
        c.cadence = max(0.2, seg_cad * rng.lognormvariate(0.0, 0.4))
        c.spend = seg_spend * rng.lognormvariate(0.0, 0.3)
        arch = rng.randrange(len(_ARCH_CUM))
        c.arch = _ARCH_CUM[arch]
        # limit: 3-8 months of expected card spend, within the segment's range
        monthly = c.cadence * 30 * _ARCH_MEAN[arch] * c.spend
        limit_eur = min(lim_hi, max(lim_lo, monthly * rng.uniform(3.0, 8.0)))
        c.limit = int(limit_eur / 100) * 100 * 100
        c.night_p = rng.uniform(0.003, 0.04)
        c.ecom_p = rng.uniform(0.1, 0.6)
        c.trip_p = rng.uniform(0.002, 0.02)
        c.cash_p = 0.004
        c.transactor = rng.random() < 0.55
        c.dd = rng.random() < 0.7
        c.fav = rng.randrange(1 << 30)
        needs_card = scenario in ("card_fraud_burst", "gradual_deterioration")
        has_card = needs_card or rng.random() < 0.85
        has_ip = rng.random() < 0.25
        has_pl = rng.random() < 0.2
        if not (has_card or has_ip or has_pl):
            has_card = True
        if scenario == "gradual_deterioration":
            c.transactor = False
            c.cadence = max(c.cadence, 1.0)
        products: list[Any] = []
        if has_card:
            card = _Account(f"{c.cid}-cc", True, rng.randint(1, 28))
            share = rng.uniform(0.0, 0.1) if c.transactor else rng.uniform(0.1, 0.45)
            if scenario == "gradual_deterioration":
                share = rng.uniform(0.3, 0.6)
            card.balance = int(c.limit * share)
            c.card = card
            c.accounts.append(card)
            products.append("credit_card")
            self._at(self._first_day(card.dom, 0), self._stmt_sec(), c, "stmt", card)
        for flag, kind, suffix, (p_lo, p_hi), (n_lo, n_hi) in (
            (has_ip, "installment_plan", "ip", (500, 3_000), (6, 24)),
            (has_pl, "personal_loan", "pl", (3_000, 25_000), (12, 60)),
        ):
            if not flag:
                continue
            loan = _Account(f"{c.cid}-{suffix}", False, rng.randint(1, 28))
            loan.product = kind
            term = rng.randint(n_lo, n_hi)
            principal = rng.randint(p_lo, p_hi) * 100
            loan.inst = int(principal * (1 + 0.07 * term / 12) / term)
            loan.remaining = rng.randint(1, term)
            c.accounts.append(loan)
            products.append(kind)
            due = self._first_day(loan.dom, 1)
            self._at(max(0, due - _NOTICE_DAYS), self._stmt_sec(), c, "inst", loan, due)
        if c.card is not None:
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                mcc, lo, hi = rng.choice(_SUBSCRIPTIONS)
                dom = rng.randint(1, 28)
                sub = (mcc, f"m{mcc}-{rng.randrange(40):04d}", int(rng.uniform(lo, hi) * 100), dom)
                self._at(self._first_day(dom, 0), self._local(c, 0.5, 6.0), c, "sub", *sub)
        # background credit applications (about one a year)
        self._at(int(rng.expovariate(1 / 365)), self._local(c, 9, 21), c, "app", False)
        self._setup_scenario(c, H)
        self._emit_profile(c, seg_name, products)
        return c

    def _stmt_sec(self) -> int:
        return self.rng.randrange(2 * _HOUR, 5 * _HOUR)

    def _setup_scenario(self, c: _Customer, H: int) -> None:
        rng = self.rng
        sc = c.scenario

        def frac(lo: float, hi: float) -> int:
            return min(H - 1, int(H * rng.uniform(lo, hi)))

        if sc == "gradual_deterioration":
            c.s = c.det_start = frac(0.05, 0.3)
            c.L = self._L
        elif sc == "income_shock":
            c.s = c.miss_from = frac(0.1, 0.5)
            c.variant = "spending_drop" if rng.random() < 0.6 else "cash_advance_spike"
            if rng.random() < 0.3:
                c.variant += "+deferral"
                start = c.s + rng.randint(5, 12)
                until = start + rng.randint(30, 45)
                acct = c.card or c.accounts[0]
                self._at(start, self._local(c, 9, 17), c, "defer", acct, start, until)
        elif sc == "card_fraud_burst":
            c.s = frac(0.1, 0.9)
            self._setup_fraud(c)
        elif sc == "sector_downturn":
            c.s = c.det_start = min(H - 1, max(0, self._downturn_day) + rng.randint(0, 21))
            c.variant = rng.choices(("severe", "moderate", "mild"), (5, 3, 2))[0]
            c.max_stage = {"severe": 3, "moderate": 2, "mild": 1}[c.variant]
            c.L = max(10, self._L * 2 // 3)
        elif sc.startswith("hardship"):
            c.s = c.miss_from = frac(0.05, 0.3)
            c.plan_dpd = rng.randint(30, 45)
            c.kept = sc == "hardship_restructured_kept"
            c.variant = "kept" if c.kept else f"broken_after_{rng.randint(1, 2)}"
        elif sc == "application_spree":
            c.s = frac(0.1, 0.7)
            t0 = c.s * _DAY + self._local(c, 8, 20)
            for t in sorted(t0 + rng.randrange(0, 48 * _HOUR) for _ in range(rng.randint(2, 5))):
                self._at(t // _DAY, t % _DAY, c, "app", True)
            self._at(t0 // _DAY, t0 % _DAY, c, "app", True)
            if rng.random() < 0.25:
                c.variant = "then_deteriorated"
                c.det_start = c.s + 21
                c.L = max(15, self._L * 2 // 3)
            else:
                c.variant = "stretched"
                c.det_start = c.s
                c.max_stage = 1

    def _setup_fraud(self, c: _Customer) -> None:
        rng = self.rng
        night = rng.random() < 0.6
        start = c.s * _DAY + (self._local(c, 0.5, 5.0) if night else rng.randrange(_DAY))
        duration = int(rng.uniform(1.0, 5.0) * _HOUR)
        n = rng.randint(8, 25)
        times = [start, *sorted(start + rng.randrange(1, duration) for _ in range(n - 1))]
        tests = min(3, n // 4)
        for k, t in enumerate(times):
            self._at(t // _DAY, t % _DAY, c, "fraud", k < tests)
        confirm = (start + duration) // _DAY + rng.randint(1, 4)
        self._at(confirm, rng.randrange(9 * _HOUR, 17 * _HOUR), c, "fraud_end")

    def _emit_profile(self, c: _Customer, segment: str, products: list[Any]) -> None:
        label, tz, country = _REGIONS[c.region]
        profile = m.CustomerProfile(
            event_id=f"cp-{c.cid}-0",
            event_time=self._t0,
            customer_id=c.cid,
            credit_limit_minor=c.limit,
            currency=EUR,
            products=products,
            sector=c.sector,
            region=label,
            segment=segment,
            timezone=tz,
            country=country,
        )
        self._emit(0, 0, T_PROFILE, c.cid, profile)

    # ------------------------------------------------------------------ sector indicators

    def _schedule_indicators(self) -> None:
        """Every sector on the start day and each first of the month; a flash estimate
        for the downturn sector on the day its fall starts."""
        base = {s: self.rng.uniform(96.0, 104.0) for s in SECTORS}
        for day in range(self._H):
            if day == 0 or self._date(day).day == 1:
                for sector in SECTORS:
                    self._at(day, 8 * _HOUR, None, "ind", sector, base[sector])
            elif self.downturn is not None and day == self._downturn_day:
                sector = self.downturn[0]
                self._at(day, 8 * _HOUR, None, "ind", sector, base[sector])

    def _indicator(self, sec: int, sector: str, base: float) -> None:
        day = self._today
        value = base + self.rng.gauss(0.0, 0.8)
        if self.downturn is not None and sector == self.downturn[0] and day >= self._downturn_day:
            value -= 3.0 + 14.0 * (1.0 - math.exp(-(day - self._downturn_day) / 90.0))
        self._nseq += 1
        event = m.SectorIndicator(
            event_id=f"si-{sector}-{self._nseq}",
            event_time=self._ts(day, sec),
            sector=sector,
            indicator="prosperity_index",
            value=round(value, 1),
            period=self._date(day).strftime("%Y-%m"),
        )
        self._emit(sec, 1, T_SECTOR, sector, event)

    # ------------------------------------------------------------------ card transactions

    def _spend_params(self, c: _Customer, day: int) -> tuple[float, float, float]:
        cadence, spend, cash = c.cadence, c.spend, c.cash_p
        if c.det_start is not None and day >= c.det_start:
            stage = min(c.max_stage, 1 + (day - c.det_start) // c.L) - 1
            cadence *= (1.1, 1.2, 0.8)[stage]
            spend *= (1.15, 1.3, 1.2)[stage]
            cash = (0.1, 0.2, 0.3)[stage]
        if c.miss_from is not None and day >= c.miss_from and c.plan_state == 0:
            if c.variant.startswith("cash_advance_spike") and day < c.miss_from + 10:
                cadence *= 1.5
                cash = 0.6
            else:
                cadence *= 0.3 if c.scenario == "income_shock" else 0.35
        return cadence, spend, cash

    def _card_day(self, c: _Customer, card: _Account) -> None:
        rng = self.rng
        day = self._today
        if c.trip_until < day and rng.random() < c.trip_p:
            c.trip_until = day + rng.randint(2, 10)
            c.abroad = rng.choice([x for x in _TRAVEL if x != c.country])
        abroad = c.abroad if c.trip_until >= day else ""
        cadence, spend, cash_p = (
            (c.cadence, c.spend, c.cash_p)
            if c.det_start is None and c.miss_from is None
            else self._spend_params(c, day)
        )
        # Poisson number of transactions (Knuth)
        limit = math.exp(-cadence)
        n = 0
        p = rng.random()
        while p > limit:
            n += 1
            p *= rng.random()
        offset = self._offsets[c.region]
        for _ in range(n):
            if rng.random() < c.night_p:
                local = rng.randrange(_HOUR // 2, 5 * _HOUR)
            else:
                local = int(rng.triangular(6.5, 23.5, 13.0) * _HOUR)
            sec = (local - offset) % _DAY
            if rng.random() < cash_p:
                amount = rng.choice(_ATM_EUR) * 100
                if cash_p >= 0.5:
                    amount = max(amount, 20_000)
                # the ATM offers what is left of the limit, in whole tens of euros
                amount = min(amount, (c.limit - card.balance) // 1_000 * 1_000)
                if amount < 2_000:
                    continue
                country = abroad or c.country
                self._tx(
                    c,
                    card,
                    sec,
                    "cash_advance",
                    amount,
                    "6011",
                    f"atm-{country.lower()}-{rng.randrange(900):03d}",
                    "atm",
                    country,
                )
                continue
            k = bisect(c.arch, rng.random() * c.arch[-1])
            mcc, _median, sigma, kind = _MCCS[k]
            amount = max(50, int(math.exp(_MCC_LOG[k] + sigma * rng.gauss(0.0, 1.0)) * spend * 100))
            if kind == "m":
                kind = "o" if rng.random() < c.ecom_p else "p"
            if kind == "p":
                channel = "contactless" if amount <= 5_000 and rng.random() < 0.85 else "pos"
                country = abroad or c.country
            else:
                channel = "ecom" if rng.random() < 0.96 else "moto"
                country = rng.choice(_WEB_ABROAD) if rng.random() < 0.12 else c.country
            if rng.random() < 0.6:
                merchant = (c.fav + k * 7 + rng.randrange(3)) % _MERCHANTS_PER_MCC
            else:
                merchant = rng.randrange(_MERCHANTS_PER_MCC)
            merchant_id = f"m{mcc}-{merchant:04d}"
            if not self._tx(c, card, sec, "purchase", amount, mcc, merchant_id, channel, country):
                continue
            if rng.random() < (0.004 if kind == "p" else 0.015):
                refund = amount if rng.random() < 0.7 else max(1, amount // 2)
                self._at(
                    day + rng.randint(2, 14),
                    self._local(c, 9, 20),
                    c,
                    "refund",
                    mcc,
                    merchant_id,
                    refund,
                    channel,
                    country,
                )
            elif amount >= 20_000 and rng.random() < 0.08:
                self._at(
                    day + rng.randint(1, 5),
                    self._local(c, 9, 21),
                    c,
                    "conv",
                    mcc,
                    merchant_id,
                    amount,
                    channel,
                    country,
                    rng.choice((3, 6, 12, 24)),
                )

    def _tx(
        self,
        c: _Customer,
        card: _Account,
        sec: int,
        kind: str,
        amount: int,
        mcc: str,
        merchant_id: str,
        channel: str,
        country: str,
        months: int | None = None,
    ) -> m.CardTransaction | None:
        """Emit a card transaction (declined, and not emitted, above the limit)."""
        if kind in ("purchase", "cash_advance"):
            if card.balance + amount > c.limit:
                return None
            card.balance += amount
        elif kind == "refund":
            card.balance -= amount
        tx = m.CardTransaction(
            event_id=c.next_id("tx"),
            event_time=self._ts(self._today, sec),
            customer_id=c.cid,
            account_id=card.aid,
            type=kind,  # type: ignore[arg-type]
            amount_minor=amount,
            currency=EUR,
            mcc=mcc,
            merchant_id=merchant_id,
            channel=channel,  # type: ignore[arg-type]
            country=country,
            installment_months=months,
        )
        self._emit(sec, 2, T_TX, c.cid, tx)
        return tx

    # ------------------------------------------------------------------ repayments

    def _repay(self, c: _Customer, sec: int, event: Any) -> None:
        self._emit(sec, 2, T_REPAY, c.cid, event)

    def _mode(self, c: _Customer, acct: _Account, due: int) -> int:
        rng = self.rng
        if c.miss_from is not None and due >= c.miss_from and c.plan_state == 0:
            return _MISSED
        if c.det_start is not None and due >= c.det_start:
            stage = min(c.max_stage, 1 + (due - c.det_start) // c.L)
            r = rng.random()
            if stage == 1:
                if acct.is_card:
                    return _MINIMUM
                return _FULL if r < 0.9 else _LATE
            if stage == 2:
                if acct.is_card:
                    return _PARTIAL if r < 0.7 else _LATE_LONG
                return _LATE_LONG if r < 0.5 else _PARTIAL
            return _MISSED
        r = rng.random()
        if not acct.is_card:
            return _FULL if r < 0.97 else _LATE
        if c.transactor:
            return _FULL if r < 0.96 else _LATE
        return _REVOLVE if r < 0.88 else _MINIMUM if r < 0.97 else _LATE

    def _schedule_payment(
        self, c: _Customer, acct: _Account, due: int, amount: int, minimum: int
    ) -> None:
        rng = self.rng
        mode = self._mode(c, acct, due)
        if mode == _MISSED:
            return
        if mode == _FULL:
            pay = amount
        elif mode == _REVOLVE:
            pay = int(amount * rng.uniform(0.4, 1.0))
            pay = max(minimum, pay - pay % 100)
        elif mode == _MINIMUM:
            pay = minimum
        elif mode == _PARTIAL:
            pay = max(1, int(minimum * rng.uniform(0.3, 0.7)))
        else:
            pay = amount if (c.transactor or not acct.is_card) else minimum
        if mode in (_LATE, _LATE_LONG):
            day = due + (rng.randint(1, 12) if mode == _LATE else rng.randint(15, 28))
            sec, channel = self._local(c, 8, 21), "transfer"
        elif c.dd:
            day, sec, channel = due, rng.randrange(4 * _HOUR, 7 * _HOUR), "direct_debit"
        else:
            day = max(self._today + 1, due - rng.randint(0, 8))
            sec, channel = self._local(c, 8, 22), rng.choice(("transfer", "transfer", "card"))
        self._at(day, sec, c, "pay", acct, pay, channel, acct.epoch, True)

    def _add_due(self, c: _Customer, acct: _Account, due: int, amount: int) -> None:
        acct.cum += amount
        acct.dues.append((due, acct.cum))
        acct.refresh()
        c.refresh()

    def _statement(self, c: _Customer, sec: int, card: _Account) -> None:
        if card.closed:
            return
        day = self._today
        amount = card.balance
        if amount > 0:
            minimum = min(amount, max(amount * _MIN_PCT // 100, _MIN_FLOOR))
            due = day + _STATEMENT_DUE_DAYS
            self._repay(
                c,
                sec,
                m.StatementDue(
                    event_id=c.next_id("rp"),
                    event_time=self._ts(day, sec),
                    customer_id=c.cid,
                    account_id=card.aid,
                    due_id=f"{card.aid}-s{self._date(day):%Y%m%d}",
                    due_date=self._date(due),
                    amount_minor=amount,
                    minimum_minor=minimum,
                    currency=EUR,
                ),
            )
            self._add_due(c, card, due, minimum)
            self._schedule_payment(c, card, due, amount, minimum)
        self._at(self._month_day(day, card.dom), self._stmt_sec(), c, "stmt", card)

    def _installment(self, c: _Customer, sec: int, loan: _Account, due: int) -> None:
        if loan.closed or loan.remaining <= 0:
            return
        day = self._today
        loan.remaining -= 1
        loan.n_due += 1
        self._repay(
            c,
            sec,
            m.InstallmentDue(
                event_id=c.next_id("rp"),
                event_time=self._ts(day, sec),
                customer_id=c.cid,
                account_id=loan.aid,
                due_id=f"{loan.aid}-i{loan.n_due}",
                due_date=self._date(due),
                amount_minor=loan.inst,
                currency=EUR,
                product="personal_loan" if loan.product == "personal_loan" else "installment_plan",
            ),
        )
        self._add_due(c, loan, due, loan.inst)
        self._schedule_payment(c, loan, due, loan.inst, loan.inst)
        nxt = self._month_day(due, loan.dom)
        self._at(nxt - _NOTICE_DAYS, self._stmt_sec(), c, "inst", loan, nxt)

    def _payment(
        self,
        c: _Customer,
        sec: int,
        acct: _Account,
        amount: int,
        channel: str,
        epoch: int,
        may_bounce: bool,
    ) -> None:
        if epoch != acct.epoch:
            return  # superseded by a restructuring plan
        rng = self.rng
        day = self._today
        event_id = c.next_id("rp")
        self._repay(
            c,
            sec,
            m.PaymentReceived(
                event_id=event_id,
                event_time=self._ts(day, sec),
                customer_id=c.cid,
                account_id=acct.aid,
                amount_minor=amount,
                currency=EUR,
                channel=channel,  # type: ignore[arg-type]
            ),
        )
        credited = max(0, min(amount, acct.cum - acct.paid))
        acct.paid += credited
        if acct.is_card:
            acct.balance -= amount
        acct.refresh()
        c.refresh()
        if acct.plan and c.kept:
            c.plan_paid += 1
            if c.plan_paid == 3:
                self._outcome(c, sec + 60, "cured", acct, day)
        stress = self._stress(c, day)
        bounce = (0.004, 0.04, 0.1)[stress]
        if may_bounce and channel == "direct_debit" and rng.random() < bounce:
            self._at(
                day + rng.randint(2, 5),
                rng.randrange(5 * _HOUR, 9 * _HOUR),
                c,
                "rev",
                acct,
                event_id,
                amount,
                credited,
                epoch,
                stress < 2,  # paid again unless distressed
            )

    def _reversal(
        self,
        c: _Customer,
        sec: int,
        acct: _Account,
        paid_id: str,
        amount: int,
        credited: int,
        epoch: int,
        repay: bool,
    ) -> None:
        if epoch != acct.epoch:
            return
        day = self._today
        self._repay(
            c,
            sec,
            m.PaymentReversed(
                event_id=c.next_id("rp"),
                event_time=self._ts(day, sec),
                customer_id=c.cid,
                account_id=acct.aid,
                reversed_event_id=paid_id,
                amount_minor=amount,
                currency=EUR,
                reason=self.rng.choice(("insufficient_funds", "insufficient_funds", "recalled")),
            ),
        )
        acct.paid -= credited
        if acct.is_card:
            acct.balance += amount
        acct.refresh()
        c.refresh()
        if repay:
            self._at(
                day + self.rng.randint(1, 4),
                self._local(c, 8, 21),
                c,
                "pay",
                acct,
                amount,
                "transfer",
                epoch,
                False,
            )

    def _deferral(self, c: _Customer, sec: int, acct: _Account, start: int, until: int) -> None:
        day = self._today
        deferral_id = f"{acct.aid}-d1"
        self._repay(
            c,
            sec,
            m.DeferralStarted(
                event_id=c.next_id("rp"),
                event_time=self._ts(day, sec),
                customer_id=c.cid,
                account_id=acct.aid,
                deferral_id=deferral_id,
                until=self._date(until),
                reason="payment_holiday",
            ),
        )
        acct.deferrals = (*acct.deferrals, (start, until))
        self._at(until, self._local(c, 0.1, 2.0), c, "defer_end", acct, deferral_id)

    def _plan(self, c: _Customer, sec: int) -> None:
        rng = self.rng
        day = self._today
        c.plan_state = 2
        c.blocked = True
        terms = rng.randint(6, 24)
        first = day + rng.randint(14, 28)
        dom = min(28, self._date(first).day)
        first = self._first_day(dom, first)
        schedule = [first]
        for _ in range(terms - 1):
            schedule.append(self._month_day(schedule[-1], dom))
        kept_until = terms if c.kept else int(c.variant[-1])
        for acct in c.accounts:
            if acct.closed:
                continue
            if acct.is_card:
                outstanding = max(acct.balance, acct.cum - acct.paid)
                acct.balance = 0
            else:
                outstanding = acct.cum - acct.paid + acct.remaining * acct.inst
                acct.remaining = 0
            acct.closed = True
            if outstanding <= 0:
                continue
            n = max(1, min(terms, outstanding // 2_000))  # installments of 20 EUR or more
            dues = schedule[:n]
            per = outstanding // n
            amounts = [per] * (n - 1) + [outstanding - per * (n - 1)]
            self._repay(
                c,
                sec,
                m.PlanAgreed(
                    event_id=c.next_id("rp"),
                    event_time=self._ts(day, sec),
                    customer_id=c.cid,
                    account_id=acct.aid,
                    plan_id=f"{acct.aid}-plan1",
                    currency=EUR,
                    installments=[
                        m.PlanInstallment(due_date=self._date(d), amount_minor=a)
                        for d, a in zip(dues, amounts, strict=True)
                    ],
                    rate_bps=rng.choice((0, 0, 250, 450)),
                    reason="hardship",
                ),
            )
            acct.plan = True
            acct.epoch += 1
            acct.paid = 0
            acct.cum = 0
            acct.dues = []
            for d, a in zip(dues, amounts, strict=True):
                acct.cum += a
                acct.dues.append((d, acct.cum))
            acct.refresh()
            for d, a in list(zip(dues, amounts, strict=True))[:kept_until]:
                pay_day = d - rng.randint(0, 3)
                self._at(
                    pay_day,
                    rng.randrange(4 * _HOUR, 7 * _HOUR),
                    c,
                    "pay",
                    acct,
                    a,
                    "direct_debit",
                    acct.epoch,
                    False,
                )
        c.refresh()

    # ------------------------------------------------------------------ applications, fraud, outcomes

    def _application(self, c: _Customer, sec: int, spree: bool) -> None:
        rng = self.rng
        product = rng.choices(("credit_card", "personal_loan", "installment_plan"), (4, 4, 2))[0]
        lo, hi = {
            "credit_card": (1_000, 5_000),
            "personal_loan": (3_000, 25_000),
            "installment_plan": (300, 3_000),
        }[product]
        c.seq += 1
        app = m.CreditApplication(
            event_id=f"ca-{c.cid}-{c.seq}",
            event_time=self._ts(self._today, sec),
            customer_id=c.cid,
            application_id=f"{c.cid}-app{c.seq}",
            product=product,  # type: ignore[arg-type]
            amount_minor=rng.randint(lo, hi) // 50 * 5_000,
            currency=EUR,
            source="bureau" if rng.random() < (0.6 if spree else 0.2) else "internal",
        )
        self._emit(sec, 2, T_APP, c.cid, app)
        if not spree:
            self._at(
                self._today + 30 + int(rng.expovariate(1 / 365)),
                self._local(c, 9, 21),
                c,
                "app",
                False,
            )

    def _fraud_tx(self, c: _Customer, sec: int, card_test: bool) -> None:
        rng = self.rng
        card = c.card
        if card is None or card.closed or c.blocked:
            return
        if card_test:
            mcc = rng.choice(("5999", "5815"))
            amount = rng.randint(100, 500)
        elif rng.random() < 0.55:
            mcc = rng.choice(_HIGH_RISK)
            amount = rng.choice((100, 150, 200, 250, 300, 500, 750, 1_000)) * 100
        else:
            mcc = rng.choice(_FRAUD_OTHER)
            amount = int(rng.lognormvariate(math.log(180.0), 0.7) * 100)
        channel = "ecom" if rng.random() < 0.8 else "moto"
        country = rng.choice(_FRAUD_COUNTRIES)
        merchant_id = f"m{mcc}-f{rng.randrange(60):03d}"
        tx = self._tx(c, card, sec, "purchase", amount, mcc, merchant_id, channel, country)
        if tx is None:
            return
        if c.fraud_first is None:
            c.fraud_first = tx.event_time
        c.fraud_last = tx.event_time
        if c.fraud_txs is None:
            c.fraud_txs = []
        c.fraud_txs.append((mcc, merchant_id, amount, channel, country))

    def _fraud_end(self, c: _Customer, sec: int) -> None:
        card = c.card
        if card is None or c.fraud_txs is None:
            return
        self._outcome(c, sec, "fraud_confirmed", card, self._today)
        for k, (mcc, merchant_id, amount, channel, country) in enumerate(c.fraud_txs):
            self._tx(
                c, card, sec + 60 + 30 * k, "refund", amount, mcc, merchant_id, channel, country
            )

    def _outcome(self, c: _Customer, sec: int, label: str, acct: _Account, day: int) -> None:
        self._emit(
            sec,
            2,
            T_OUTCOME,
            c.cid,
            m.Outcome(
                event_id=c.next_id("oc"),
                event_time=self._ts(self._today, sec),
                customer_id=c.cid,
                label=label,  # type: ignore[arg-type]
                account_id=acct.aid,
                effective_date=self._date(day),
            ),
        )

    def _end_of_day(self, c: _Customer) -> None:
        day = self._today
        worst, acct = 0, c.accounts[0]
        for a in c.accounts:
            d = a.dpd(day)
            if d > worst:
                worst, acct = d, a
        if worst >= 30 and c.gt30 is None:
            c.gt30 = day
        if worst >= 60:
            c.blocked = True
        if worst >= 90 and c.gt90 is None:
            c.gt90 = day
            self._outcome(c, self.rng.randrange(20 * _HOUR, 23 * _HOUR), "default", acct, day)
        if worst >= 180 and not c.charged_off:
            c.charged_off = True
            self._outcome(c, self.rng.randrange(20 * _HOUR, 23 * _HOUR), "charge_off", acct, day)
        if c.plan_state == 0 and c.plan_dpd and worst >= c.plan_dpd:
            c.plan_state = 1
            self._at(day + self.rng.randint(1, 3), self._local(c, 9, 17), c, "plan")

    # ------------------------------------------------------------------ the run

    def _dispatch(self, item: _Item) -> None:
        sec, _seq, idx, kind, data = item
        if idx < 0:
            self._indicator(sec, *data)
            return
        c = self._customers[idx]
        if kind == "pay":
            self._payment(c, sec, *data)
        elif kind == "stmt":
            self._statement(c, sec, *data)
        elif kind == "inst":
            self._installment(c, sec, *data)
        elif kind == "sub":
            mcc, merchant_id, amount, dom = data
            card = c.card
            if card is not None and not card.closed and not c.blocked:
                country = c.country if mcc == "4814" else "IE"
                self._tx(c, card, sec, "purchase", amount, mcc, merchant_id, "ecom", country)
            self._at(self._month_day(self._today, dom), sec, c, "sub", *data)
        elif kind == "refund":
            if c.card is not None:
                mcc, merchant_id, amount, channel, country = data
                self._tx(c, c.card, sec, "refund", amount, mcc, merchant_id, channel, country)
        elif kind == "conv":
            card = c.card
            if card is not None and not card.closed:
                mcc, merchant_id, amount, channel, country, months = data
                self._tx(
                    c,
                    card,
                    sec,
                    "installment_conversion",
                    amount,
                    mcc,
                    merchant_id,
                    channel,
                    country,
                    months,
                )
        elif kind == "rev":
            self._reversal(c, sec, *data)
        elif kind == "app":
            self._application(c, sec, *data)
        elif kind == "fraud":
            self._fraud_tx(c, sec, *data)
        elif kind == "fraud_end":
            self._fraud_end(c, sec)
        elif kind == "defer":
            self._deferral(c, sec, *data)
        elif kind == "defer_end":
            acct, deferral_id = data
            self._repay(
                c,
                sec,
                m.DeferralEnded(
                    event_id=c.next_id("rp"),
                    event_time=self._ts(self._today, sec),
                    customer_id=c.cid,
                    account_id=acct.aid,
                    deferral_id=deferral_id,
                ),
            )
        elif kind == "plan":
            self._plan(c, sec)
        else:  # pragma: no cover - a programming error
            raise AssertionError(f"unknown action {kind!r}")

    def _drain(self) -> Iterator[Event]:
        buf = self._buf
        buf.sort(key=itemgetter(0))
        self._buf = []
        rate = self.config.poison_rate
        prng = self._prng
        for _key, topic, key, obj in buf:
            yield topic, key, obj
            if rate and prng.random() < rate:
                yield self._poison(topic, key, obj)

    def events(self) -> Iterator[Event]:
        """Yield every (topic, key, record) of the run, in event-time order."""
        if self._started:
            raise RuntimeError("a Simulator runs once; create a new one")
        self._started = True
        n = self.config.customers
        # Profiles stream out as customers are created: the first events come at once.
        for idx in range(n):
            self._customers.append(self._new_customer(idx))
            yield from self._drain()
        self._schedule_indicators()
        customers = self._customers
        for day in range(self._H):
            self._today = day
            if day:
                self._set_offsets(day)
            items = self._agenda[day]
            items.sort(key=itemgetter(0, 1))
            for item in items:
                self._dispatch(item)
            self._agenda[day] = []
            for c in customers:
                card = c.card
                if card is not None and not card.closed and not c.blocked:
                    self._card_day(c, card)
                if c.min_open is not None and c.min_open < day:
                    self._end_of_day(c)
            yield from self._drain()
        self._finished = True

    def ground_truth(self) -> list[GroundTruth]:
        """Every customer's ground truth (after :meth:`events` is exhausted)."""
        if not self._finished:
            raise RuntimeError("ground truth is complete only after iterating events()")
        out = []
        for c in self._customers:
            window = None
            if c.fraud_first is not None and c.fraud_last is not None:
                window = (c.fraud_first, c.fraud_last)
            out.append(
                GroundTruth(
                    customer_id=c.cid,
                    scenario=c.scenario,
                    scenario_start=self._date(c.s),
                    first_30dpd_date=None if c.gt30 is None else self._date(c.gt30),
                    first_90dpd_date=None if c.gt90 is None else self._date(c.gt90),
                    fraud_window=window,
                    sector=c.sector,
                    variant=c.variant,
                )
            )
        return out

    # ------------------------------------------------------------------ poison

    def _poison(self, topic: str, key: str, obj: Any) -> tuple[str, str, PoisonRecord]:
        prng = self._prng
        doc: dict[str, Any] = loads(encode(obj))
        doc["event_id"] = f"{doc['event_id']}-poison"
        kinds = ["malformed_json", "missing_field", "wrong_type", "bad_timestamp"]
        amount_field = next((f for f in ("amount_minor", "credit_limit_minor") if f in doc), None)
        if amount_field:
            kinds.append("negative_amount")
        if "currency" in doc:
            kinds.append("unknown_currency")
        if "customer_id" in doc:
            kinds.append("key_mismatch")
        if topic == T_SECTOR:
            kinds.append("non_finite_number")
        kind = prng.choice(kinds)
        if kind == "malformed_json":
            raw = dumps(doc)
            return topic, key, PoisonRecord(raw[: max(1, len(raw) * 2 // 3)], kind)
        if kind == "missing_field":
            del doc["event_id"]
        elif kind == "wrong_type":
            doc["event_id"] = prng.randrange(1, 10**9)
        elif kind == "bad_timestamp":
            doc["event_time"] = "1999-12-31T23:59:59Z"
        elif kind == "negative_amount" and amount_field:
            doc[amount_field] = -abs(int(doc[amount_field])) - 1
        elif kind == "unknown_currency":
            doc["currency"] = "ZZZ"
        elif kind == "key_mismatch":
            n = self.config.customers
            other = (int(key[1:]) + 1 + prng.randrange(max(1, n - 1))) % n
            key = f"c{other:06d}" if n > 1 else f"{key}x"
        elif kind == "non_finite_number":
            doc["value"] = "__nan__"
            return topic, key, PoisonRecord(dumps(doc).replace(b'"__nan__"', b"NaN"), kind)
        return topic, key, PoisonRecord(dumps(doc), kind)


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def iter_events(config: Portfolio) -> Iterator[Event]:
    """Yield (topic, key, record) for a portfolio, in non-decreasing event time.

    ``record`` is a :mod:`schemas.models` Struct, or a :class:`PoisonRecord`
    when ``config.poison_rate`` is set. Streams: memory is bounded by the
    customers' state and one day of events.
    """
    yield from Simulator(config).events()


def ground_truth(config: Portfolio) -> list[GroundTruth]:
    """The ground truth of a portfolio (runs the simulation, keeping no events)."""
    sim = Simulator(config)
    for _ in sim.events():
        pass
    return sim.ground_truth()


def write_jsonl(config: Portfolio, out_dir: Path) -> dict[str, int]:
    """Write ``<topic>.jsonl`` per produced topic and ``ground_truth.jsonl``.

    One JSON object per line (``schemas.codec.encode``), in event-time order
    within each file; poison records are written raw, except ``key_mismatch``
    ones. Returns the number of lines per file stem (topic names and
    ``ground_truth``), plus ``poison``: how many of those lines are poison.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SIM_TOPICS, 0)
    counts["poison"] = 0
    sim = Simulator(config)
    files = {topic: (out_dir / f"{topic}.jsonl").open("wb") for topic in SIM_TOPICS}
    try:
        for topic, _key, record in sim.events():
            if isinstance(record, PoisonRecord):
                if record.reason == "key_mismatch":
                    continue
                line = bytes(record)
                counts["poison"] += 1
            else:
                line = encode(record)
            files[topic].write(line + b"\n")
            counts[topic] += 1
    finally:
        for fh in files.values():
            fh.close()
    truth = sim.ground_truth()
    with (out_dir / "ground_truth.jsonl").open("wb") as fh:
        for row in truth:
            fh.write(encode(row) + b"\n")
    counts["ground_truth"] = len(truth)
    return counts
