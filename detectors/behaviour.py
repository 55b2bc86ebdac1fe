"""Per-customer behaviour profile: O(1) time and memory per event.

A customer's profile is a :class:`BehaviourState`, an immutable msgspec
struct encoded as a msgpack array: 160 B fresh, about 340 B for an active
customer, bounded by construction (every sequence in it has a fixed maximum
length; the worst case over long random streams stays under 600 B).
The pure functions :func:`on_transaction`, :func:`on_application` and
:func:`on_payment` take the previous state (``None`` for a new customer) and
one event and return a *new* state plus any :class:`~detectors.base.Signal`;
the input state is never modified (it is frozen). Thresholds live in
:class:`BehaviourConfig`.

Each event is scored before it is learnt: rules compare the event (and the
counters that include it: transactions this hour, spend today) with baselines
built from earlier events only (norms, mean amount, category mix).

What the state keeps, and the rule each part feeds (reason codes):

* EWMA mean and variance of the log transaction amount, a fast EWMA of it,
  and a compact Page-Hinkley statistic on it (:mod:`detectors.online`):
  ``habit_drift``;
* spend and cash advanced today, the totals of the previous six days (a
  fixed ring of day totals, so "the last 7 days" is exact), and the 90-day
  norm: an EWMA (weight 1/90, bias-corrected for short histories) of the day
  totals that have left the 7-day window, days without spend counting as
  zero. Because the norm only sees days older than the window, a spike does
  not inflate its own baseline. (Two plain EWMAs, 7-day against 90-day, were
  tried first: with both fed the same days, three days at 11x the usual spend
  only reached 3.5x, the long EWMA absorbing the spike.) ``spend_spike``
  ("spend in the last 7 days is 4.2x the customer's 90-day norm");
* transactions this event-time hour and day and an EWMA of daily counts:
  ``velocity_burst``;
* a bitmask of the merchant categories ever used, and an EWMA category mix:
  ``new_high_risk_category`` (gambling, crypto, money transfer, pawn, set by
  config);
* the cash-advance share of the last 7 days against the 90-day norm's:
  ``cash_advance_surge``;
* times of recent installment conversions (bounded): ``installment_velocity``;
* an approximate balance (spend minus refunds and payments; only trusted once
  payments have been passed in) and an EWMA of the balance just before each
  payment, i.e. where the customer's statement cycle usually peaks:
  ``utilisation_jump`` (comparing with a daily average would flag every
  customer who pays in full, whose balance saw-tooths each month);
* EWMA shares of night, foreign and card-not-present transactions (features);
* times and id hashes of recent credit applications (bounded):
  ``application_velocity``;
* when each rule last fired, so a persisting condition raises one signal per
  cooldown rather than one per event.

Buckets follow event time in the customer's timezone. Days (and the night
flag) follow the local clock; hours are elapsed hours, starting on the local
clock's hour boundaries, so the hour a fall-back DST change repeats is two
hour buckets (two real hours), not one. A late event from a day (hour) that
is already closed updates amounts, mix, shares and balance but not the closed
day's (hour's) counters; it is never compared with them.

Amounts are integer minor units, assumed to be in the account's billing
currency.

>>> import datetime as dt
>>> from schemas.models import CardTransaction
>>> tx = CardTransaction(event_id="e1", event_time=dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC),
...     customer_id="c1", account_id="a1", type="purchase", amount_minor=4_250, currency="EUR",
...     mcc="5411", merchant_id="m1", channel="pos", country="DE")
>>> state, signals, features = on_transaction(None, tx, 500_000, "DE", DEFAULT_CONFIG)
>>> state.n_tx, signals, sorted(features) == sorted(FEATURE_NAMES)
(1, [], True)
>>> len(encode_state(state)) < 1024
True
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import random
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Struct

from detectors.base import Evidence, Severity, Signal, compiled_function
from detectors.money import major as _major
from detectors.money import money as _money
from detectors.online import (
    AnomalyModel,
    ConformanceSpec,
    PageHinkleyParams,
    PHState,
    args_scaler,
    ph_update,
    row_scaler,
    scale_values,
    scaling,
)
from schemas.models import CardTransaction, CreditApplication

__all__ = [
    "CATEGORIES",
    "DEFAULT_CONFIG",
    "FEATURE_NAMES",
    "MODEL_FEATURES",
    "ORDINARY",
    "RULES",
    "BehaviourConfig",
    "BehaviourState",
    "anomaly_baseline",
    "anomaly_factors",
    "anomaly_signal",
    "decode_state",
    "encode_state",
    "make_anomaly_model",
    "mcc_category",
    "on_application",
    "on_payment",
    "on_transaction",
    "on_transaction_row",
]

# --------------------------------------------------------------------------- #
# Vocabulary
# --------------------------------------------------------------------------- #

#: Merchant categories of the mix and of the seen-categories bitmask (bit i = CATEGORIES[i]).
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "dining",
    "fuel",
    "travel",
    "retail",
    "bills",
    "entertainment",
    "cash",
    "gambling",
    "crypto",
    "money_transfer",
    "pawn",
    "other",
)
_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
_CASH_CAT = _CAT_INDEX["cash"]

#: reason code -> (signal kind, rule id, default severity).
RULES: dict[str, tuple[str, str, Severity]] = {
    "spend_spike": ("behaviour_shift", "spend-spike", "medium"),
    "velocity_burst": ("fraud_pattern", "velocity-burst", "high"),
    "new_high_risk_category": ("behaviour_shift", "new-high-risk-category", "medium"),
    "cash_advance_surge": ("behaviour_shift", "cash-advance-surge", "high"),
    "installment_velocity": ("behaviour_shift", "installment-velocity", "low"),
    "utilisation_jump": ("behaviour_shift", "utilisation-jump", "medium"),
    "habit_drift": ("behaviour_shift", "habit-drift", "low"),
    "application_velocity": ("behaviour_shift", "application-velocity", "medium"),
    "anomalous_transaction": ("fraud_pattern", "anomaly-hst", "medium"),
}

#: Features handed to the global anomaly model, all scaled to [0, 1].
FEATURE_NAMES: tuple[str, ...] = (
    "log_amount",
    "amount_z",
    "hour_count",
    "day_count",
    "spend_ratio",
    "category_novelty",
    "high_risk",
    "cash",
    "card_not_present",
    "foreign",
    "night",
    "utilisation",
    "gap_hours",
    "tenure",
)

#: :data:`FEATURE_NAMES` in the global anomaly model's order (sorted, as River sorts).
MODEL_FEATURES: tuple[str, ...] = tuple(sorted(FEATURE_NAMES))

#: An ordinary transaction's raw features (before scaling): the baseline a flagged
#: transaction's factors are found against (:func:`anomaly_factors`). None: the feature
#: is never given as a reason (how long the customer has been seen).
ORDINARY: dict[str, float | None] = {
    "log_amount": math.log1p(40.0),  # a purchase of 40 major units
    "amount_z": 0.0,  # the customer's usual amount
    "hour_count": 1.0,
    "day_count": 2.0,
    "spend_ratio": 1.0,  # the customer's usual daily spend
    "category_novelty": 0.5,
    "high_risk": 0.0,
    "cash": 0.0,
    "card_not_present": 0.0,
    "foreign": 0.0,
    "night": 0.0,
    "utilisation": 0.3,
    "gap_hours": math.log1p(24.0),  # a day since the previous transaction
    "tenure": None,
}

_DEFAULT_FEATURE_RANGES: tuple[tuple[str, float, float], ...] = (
    ("log_amount", 0.0, 10.0),  # ln(1 + amount in major units)
    ("amount_z", -4.0, 8.0),  # z-score of the log amount vs the customer's EWMA
    ("hour_count", 0.0, 20.0),  # spend transactions this hour, this one included
    ("day_count", 0.0, 60.0),  # spend transactions today, this one included
    ("spend_ratio", 0.0, 10.0),  # recent daily spend / 90-day norm
    ("category_novelty", 0.0, 1.0),  # 1 - share of this category in the customer's mix
    ("high_risk", 0.0, 1.0),
    ("cash", 0.0, 1.0),
    ("card_not_present", 0.0, 1.0),
    ("foreign", 0.0, 1.0),
    ("night", 0.0, 1.0),
    ("utilisation", 0.0, 1.5),
    ("gap_hours", 0.0, 8.0),  # ln(1 + hours since the previous transaction)
    ("tenure", 0.0, 8.0),  # ln(1 + transactions seen)
)

_DEFAULT_MCC_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("7995", "gambling"),
    ("7800", "gambling"),
    ("7801", "gambling"),
    ("7802", "gambling"),
    ("6051", "crypto"),
    ("4829", "money_transfer"),
    ("6536", "money_transfer"),
    ("6537", "money_transfer"),
    ("6538", "money_transfer"),
    ("5933", "pawn"),
)

_GROCERY = frozenset({5411, 5422, 5441, 5451, 5462, 5499})
_DINING = frozenset({5811, 5812, 5813, 5814})
_FUEL = frozenset({5172, 5541, 5542, 5552, 5983})
_TRAVEL = frozenset({4111, 4112, 4121, 4131, 4411, 4511, 4722, 7011, 7012, 7512, 7513})


def _base_category(m: int) -> str:
    """Coarse ISO 18245 grouping (before config overrides)."""
    if m in (6010, 6011):
        return "cash"
    if m in _GROCERY:
        return "grocery"
    if m in _DINING:
        return "dining"
    if m in _FUEL:
        return "fuel"
    if 3000 <= m <= 3999 or m in _TRAVEL:
        return "travel"
    if 5815 <= m <= 5818 or 7800 <= m <= 7999:
        return "entertainment"
    if 4800 <= m <= 4999 or 6300 <= m <= 6399 or 8000 <= m <= 9999:
        return "bills"
    if 5000 <= m <= 5999:
        return "retail"
    return "other"


def mcc_category(mcc: str, config: BehaviourConfig | None = None) -> str:
    """The category of a merchant category code, config overrides first.

    >>> mcc_category("5411"), mcc_category("7995"), mcc_category("6011"), mcc_category("0742")
    ('grocery', 'gambling', 'cash', 'other')
    """
    return CATEGORIES[_tables(config or DEFAULT_CONFIG).category(mcc)]


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #


class BehaviourConfig(Struct, frozen=True, kw_only=True):
    """Every threshold of the behaviour rules (immutable; one per policy version).

    Windows given in days or transactions set EWMA weights ``1 / window``.
    Cooldowns stop a persisting condition from signalling on every event.

    >>> cfg = BehaviourConfig(spend_multiple=5.0)
    >>> cfg.spend_multiple, cfg.burst_per_hour, cfg.application_count
    (5.0, 8, 3)
    >>> BehaviourConfig(high_risk_categories=("casino",))
    Traceback (most recent call last):
    ...
    ValueError: unknown category 'casino' in high_risk_categories
    """

    rule_version: int = 1
    #: Baselines are trusted once this many spend transactions and closed days are seen.
    min_history_tx: int = 20
    min_history_days: int = 14
    #: Local timezone (when the caller passes none) and home country (when the caller passes none).
    timezone: str = "UTC"
    home_country: str | None = None

    # transaction amount
    amount_window_tx: float = 50.0
    amount_fast_window_tx: float = 5.0

    # daily spend: spend_spike
    #: "Recent" is the last ``short_window_days`` days (today included), exactly.
    short_window_days: int = 7
    long_window_days: float = 90.0
    spend_multiple: float = 4.0
    #: Ignore spikes against a daily norm below this, or exceeding the norm by less than
    #: this over the whole short window.
    min_daily_norm_minor: int = 1_000
    min_excess_minor: int = 30_000
    #: Days that must have entered the long norm before spend and cash shares are compared
    #: with it (a norm from a week or two of history is too noisy).
    min_norm_days: int = 28

    # velocity_burst
    burst_per_hour: int = 8
    burst_per_day: int = 25
    burst_day_multiple: float = 5.0
    count_window_days: float = 30.0

    # categories: new_high_risk_category
    mcc_categories: tuple[tuple[str, str], ...] = _DEFAULT_MCC_CATEGORIES
    high_risk_categories: tuple[str, ...] = ("gambling", "crypto", "money_transfer", "pawn")
    mix_window_tx: float = 100.0

    # cash_advance_surge: share of recent spend that is cash, and vs the long-run share
    cash_surge_share: float = 0.5
    cash_surge_multiple: float = 3.0
    #: Cash advanced within the short window must reach at least this much.
    cash_min_minor: int = 20_000

    # installment_velocity
    installment_count: int = 3
    installment_window_days: int = 30

    # utilisation_jump
    utilisation_jump: float = 0.3
    utilisation_min: float = 0.6
    #: EWMA weight of each payment's pre-payment balance is 1 / this.
    utilisation_window_payments: float = 6.0
    utilisation_min_payments: int = 3

    # night / foreign / card-not-present shares
    share_window_tx: float = 50.0
    night_start_hour: int = 0
    night_end_hour: int = 6

    # application_velocity
    application_count: int = 3
    application_window_hours: int = 48
    applications_kept: int = 8

    # habit_drift: Page-Hinkley on ln(1 + amount), tuned on synthetic log-normal spend
    drift: PageHinkleyParams = PageHinkleyParams(
        min_instances=30, delta=0.5, threshold=15.0, alpha=1 - 0.0001
    )

    #: Minimum time between two signals of a rule while its condition persists
    #: (velocity_burst per hour: 1 h; application and installment velocity: their
    #: window; utilisation_jump: once between two payments).
    cooldown_hours: int = 72
    severities: tuple[tuple[str, Severity], ...] = ()
    feature_ranges: tuple[tuple[str, float, float], ...] = _DEFAULT_FEATURE_RANGES

    def __post_init__(self) -> None:
        for name in ("high_risk_categories",):
            for c in getattr(self, name):
                if c not in _CAT_INDEX:
                    raise ValueError(f"unknown category {c!r} in {name}")
        for mcc, c in self.mcc_categories:
            if c not in _CAT_INDEX:
                raise ValueError(f"unknown category {c!r} for MCC {mcc}")
        for reason, _ in self.severities:
            if reason not in RULES:
                raise ValueError(f"unknown reason code {reason!r} in severities")
        for k, lo, hi in self.feature_ranges:
            if not hi > lo:
                raise ValueError(f"empty range for feature {k!r}")
        windows = (
            self.amount_window_tx,
            self.amount_fast_window_tx,
            self.long_window_days,
            self.count_window_days,
            self.mix_window_tx,
            self.utilisation_window_payments,
            self.share_window_tx,
        )
        if min(windows) < 1.0:
            raise ValueError("EWMA windows must be at least 1")
        if not 2 <= self.short_window_days <= 31:
            raise ValueError("short_window_days must be within 2..31")
        if self.applications_kept < self.application_count:
            raise ValueError("applications_kept must be at least application_count")
        if not (0 <= self.night_start_hour < 24 and 0 <= self.night_end_hour <= 24):
            raise ValueError("night hours must be within 0..24")


DEFAULT_CONFIG = BehaviourConfig()


class _Tables:
    """Lookups derived from one config, built once."""

    __slots__ = (
        "a_amt",
        "a_cnt",
        "a_fast",
        "a_long",
        "a_mix",
        "a_share",
        "a_util",
        "b_amt",
        "b_cnt",
        "b_long",
        "b_share",
        "cfg",
        "cooldown",
        "debias_cnt",
        "debias_long",
        "debias_mix",
        "high_risk_mask",
        "keep",
        "mcc_cache",
        "mix_step",
        "model_order",
        "model_spec",
        "night",
        "ordinary",
        "overrides",
        "scale_args",
        "scale_row",
        "scale_spec",
        "severity",
    )

    def __init__(self, cfg: BehaviourConfig) -> None:
        self.cfg = cfg
        self.a_amt = 1.0 / cfg.amount_window_tx
        self.a_fast = 1.0 / cfg.amount_fast_window_tx
        self.keep = cfg.short_window_days - 1  # closed days held in the ring
        self.a_long = 1.0 / cfg.long_window_days
        self.a_cnt = 1.0 / cfg.count_window_days
        self.a_mix = 1.0 / cfg.mix_window_tx
        self.a_util = 1.0 / cfg.utilisation_window_payments
        self.a_share = 1.0 / cfg.share_window_tx
        #: 1 - a_* (the same floats as computing ``1 - a`` where it is used)
        self.b_amt, self.b_cnt = 1 - self.a_amt, 1 - self.a_cnt
        self.b_long, self.b_share = 1 - self.a_long, 1 - self.a_share
        self.cooldown = cfg.cooldown_hours * 3_600
        #: night[h]: whether local hour h (0..23) is in the night window
        ns, ne = cfg.night_start_hour, cfg.night_end_hour
        self.night = tuple((ns <= h < ne) if ns <= ne else (h >= ns or h < ne)
                           for h in range(24))
        self.overrides = {m: _CAT_INDEX[c] for m, c in cfg.mcc_categories}
        self.high_risk_mask = 0
        for c in cfg.high_risk_categories:
            self.high_risk_mask |= 1 << _CAT_INDEX[c]
        self.mcc_cache: dict[str, int] = {}
        self.scale_spec = scaling(FEATURE_NAMES, {k: (lo, hi) for k, lo, hi in cfg.feature_ranges})
        #: The spec in the anomaly model's feature order, and that order's positions in
        #: the raw feature row (of FEATURE_NAMES).
        self.model_spec = tuple(sorted(self.scale_spec))
        self.model_order = operator.itemgetter(*map(FEATURE_NAMES.index, MODEL_FEATURES))
        #: scale_values(model_order(row), model_spec), compiled.
        self.scale_row = row_scaler(self.model_spec, [FEATURE_NAMES.index(k)
                                                      for k in MODEL_FEATURES])
        #: scale_row(row) taking the row's values as arguments (no row tuple).
        self.scale_args = args_scaler(self.model_spec, [FEATURE_NAMES.index(k)
                                                        for k in MODEL_FEATURES],
                                      len(FEATURE_NAMES))
        #: _debias denominators 1 - (1 - a) ** n, n = 0 .. _DEBIAS_TABLE - 1 (n = 0: unused).
        self.debias_long = _debias_table(self.a_long)
        self.debias_cnt = _debias_table(self.a_cnt)
        self.debias_mix = _debias_table(self.a_mix)
        #: mix_step[cat](mix): the category mix after a transaction of cat (_mix_step).
        self.mix_step = tuple(_mix_step(len(CATEGORIES), i, 1 - self.a_mix, self.a_mix)
                              for i in range(len(CATEGORIES)))
        #: :data:`ORDINARY` scaled, in the model's order (None kept).
        self.ordinary: tuple[float | None, ...] = tuple(
            None if ORDINARY[k] is None else scale_values((ORDINARY[k],), ((k, lo, inv),))[0]
            for k, lo, inv in self.model_spec)
        self.severity: dict[str, Severity] = {r: m[2] for r, m in RULES.items()}
        self.severity.update(dict(cfg.severities))

    def category(self, mcc: str) -> int:
        i = self.mcc_cache.get(mcc)
        if i is None:
            i = self.overrides.get(mcc)
            if i is None:
                i = _CAT_INDEX[_base_category(int(mcc)) if mcc.isdigit() else "other"]
            self.mcc_cache[mcc] = i  # at most 10 000 four-digit codes
        return i


_TABLES: dict[int, _Tables] = {}


def _tables(cfg: BehaviourConfig) -> _Tables:
    global _LAST_TABLES
    t = _TABLES.get(id(cfg))
    if t is None or t.cfg is not cfg:
        if len(_TABLES) >= 64:
            _TABLES.clear()
        t = _TABLES[id(cfg)] = _Tables(cfg)
    _LAST_TABLES = t
    return t


#: Length of the _Tables.debias_* tables (larger counts compute the denominator).
_DEBIAS_TABLE = 1_024


def _debias_table(a: float) -> list[float]:
    """``1.0 - (1.0 - a) ** n`` for n = 0 .. _DEBIAS_TABLE - 1, as :func:`_debias` computes
    it (the same expression, so the same bits)."""
    return [1.0 - (1.0 - a) ** n for n in range(_DEBIAS_TABLE)]


def _mix_step(size: int, cat: int, keep: float, a: float
              ) -> Callable[[tuple[float, ...]], tuple[float, ...]]:
    """A function of the category mix (a tuple of ``size`` floats) giving the mix after a
    transaction of category ``cat``: every share times ``keep``, plus ``a`` for ``cat``,
    compiled as straight-line code. It replaces building the list
    ``[keep * m for m in mix]``, adding to its ``cat`` item and making it a tuple (the same
    operations on each item).

    >>> _mix_step(3, 1, 0.5, 0.5)((0.2, 0.4, 0.4))
    (0.1, 0.7, 0.2)
    """
    names = [f"m{i}" for i in range(size)]
    lines = [
        "def mix_step(mix, keep=keep, a=a):",
        f" {', '.join(names)}, = mix",
        " return (" + "".join(f"keep * {n} + a, " if i == cat else f"keep * {n}, "
                              for i, n in enumerate(names)) + ")",
    ]
    step: Callable[[tuple[float, ...]], tuple[float, ...]] = compiled_function(
        lines, "<behaviour mix_step>", "mix_step", {"keep": keep, "a": a})
    return step


#: The tables _tables returned last (the hot path checks ``_LAST_TABLES.cfg is cfg``
#: before calling it: one config at a time is the usual case).
_LAST_TABLES = _tables(DEFAULT_CONFIG)


# --------------------------------------------------------------------------- #
# State
# --------------------------------------------------------------------------- #

# Slots of BehaviourState.fired: when each rule (or rule variant) last fired.
_F_SPIKE, _F_BURST_H, _F_BURST_D, _F_CASH, _F_UTIL, _F_INST, _F_APP = range(7)
_N_FIRED = 7
_NEVER: tuple[int, ...] = (-1,) * _N_FIRED
_MAX_GAP_DAYS = 36_600


class BehaviourState(Struct, frozen=True, array_like=True, gc=False):
    """One customer's behaviour profile (immutable; append new fields at the end only).

    EWMAs named ``*_raw`` start at zero and are bias-corrected when read,
    using the number of observations behind them. Times are Unix seconds of
    event time; ``day`` is a local-time day number, ``hour`` an elapsed-hour
    number (:func:`_hour_bucket`; ``v`` 1: a local-time hour number, converted
    on the next transaction).

    >>> import msgspec
    >>> len(msgspec.msgpack.encode(BehaviourState()))
    160
    """

    v: int = 2
    n_tx: int = 0  # spend transactions (purchases and cash advances) learnt
    last_epoch: int = -1  # latest event time of a card transaction
    # log amount
    amt_mean: float = 0.0
    amt_var: float = 0.0
    amt_fast: float = 0.0
    ph: PHState = PHState()
    # days (local)
    day: int = -1
    n_days: int = 0  # closed days since the first one, empty days included
    day_spend: int = 0
    day_cash: int = 0
    day_count: int = 0
    week: tuple[tuple[int, int], ...] = ()  # (spend, cash) of the last closed days, oldest first
    n_long: int = 0  # days that have left the short window into the long norm
    spend_long_raw: float = 0.0
    cash_long_raw: float = 0.0
    count_raw: float = 0.0
    # hours (elapsed, on local hour boundaries)
    hour: int = -1
    hour_count: int = 0
    # categories
    seen_mask: int = 0
    mix_raw: tuple[float, ...] = ()
    # per-transaction shares
    night_raw: float = 0.0
    foreign_raw: float = 0.0
    cnp_raw: float = 0.0
    # installment conversions: recent event times (one per conversion), newest last
    conversions: tuple[int, ...] = ()
    # utilisation
    balance: int = 0
    n_payments: int = 0
    pay_balance_raw: float = 0.0  # balance just before each payment
    # credit applications: (event time, crc32 of application_id), oldest first
    applications: tuple[tuple[int, int], ...] = ()
    fired: tuple[int, ...] = ()


_EMPTY = BehaviourState()
#: The field order :func:`on_transaction_row` builds states in (positionally).
_FIELDS = (
    "v", "n_tx", "last_epoch", "amt_mean", "amt_var", "amt_fast", "ph", "day", "n_days",
    "day_spend", "day_cash", "day_count", "week", "n_long", "spend_long_raw", "cash_long_raw",
    "count_raw", "hour", "hour_count", "seen_mask", "mix_raw", "night_raw", "foreign_raw",
    "cnp_raw", "conversions", "balance", "n_payments", "pay_balance_raw", "applications",
    "fired",
)
if BehaviourState.__struct_fields__ != _FIELDS:  # a new field: build it in on_transaction_row
    raise ImportError("BehaviourState's fields differ from behaviour._FIELDS")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(BehaviourState)


def encode_state(state: BehaviourState) -> bytes:
    """The msgpack bytes of a state (what a state store keeps).

    >>> decode_state(encode_state(BehaviourState(n_tx=3))).n_tx
    3
    """
    return _ENCODER.encode(state)


def decode_state(data: bytes) -> BehaviourState:
    """A state from :func:`encode_state` bytes."""
    return _DECODER.decode(data)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    if name in ("UTC", "Etc/UTC", "Z"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None  # an unknown zone falls back to UTC rather than failing every event


def _local_epoch(t: dt.datetime, tz: str) -> tuple[int, int]:
    """(Unix seconds, local seconds) of an aware datetime.

    >>> t = dt.datetime(2026, 3, 29, 0, 59, 59, tzinfo=dt.UTC)  # Berlin: CET until 01:00
    >>> [_local_epoch(t + dt.timedelta(seconds=s), "Europe/Berlin")[1] - int(t.timestamp())
    ...  for s in (0, 1)]
    [3600, 7201]
    """
    epoch = int(t.timestamp())
    zone = _zone(tz)
    if zone is None:
        return epoch, epoch
    if epoch >= 0 and t.tzinfo is not None:
        # The zone's offset is looked up once per UTC hour (the instant lies in the hour
        # of its truncated seconds); an hour whose offset changes is not cached.
        key = (tz, epoch // 3_600)
        hour_off = _HOUR_OFFSETS.get(key)
        if hour_off is None:
            hour_off = _hour_offset(zone, key[1])
            if len(_HOUR_OFFSETS) >= 65_536:
                _HOUR_OFFSETS.clear()
            _HOUR_OFFSETS[key] = hour_off
        if hour_off is not False:
            return epoch, epoch + hour_off
    off = t.astimezone(zone).utcoffset()
    return epoch, epoch + (int(off.total_seconds()) if off is not None else 0)


#: (zone name, UTC hour) -> the zone's offset in whole seconds throughout that hour, or
#: False when it differs between the hour's first and last second (a transition).
_HOUR_OFFSETS: dict[tuple[str, int], int | bool] = {}


def _offset_at(zone: ZoneInfo, epoch: int) -> int:
    off = dt.datetime.fromtimestamp(epoch, dt.UTC).astimezone(zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _hour_offset(zone: ZoneInfo, hour: int) -> int | bool:
    first = _offset_at(zone, hour * 3_600)
    return first if _offset_at(zone, hour * 3_600 + 3_599) == first else False


def _debias(raw: float, a: float, n: int) -> float:
    """Zero-initialised EWMA -> weighted mean over its ``n`` observations."""
    if n <= 0:
        return 0.0
    return raw / (1.0 - (1.0 - a) ** n)


def _push_days(
    week: tuple[tuple[int, int], ...], today: tuple[int, int], empty: int, keep: int
) -> tuple[tuple[tuple[int, int], ...], list[tuple[int, int]], int]:
    """Close ``today`` and ``empty`` following days into the ring of the last ``keep`` days.

    Returns the new ring, the day totals that left it (oldest first) and how
    many empty days left it after those (fed to the long norm in closed form).

    >>> _push_days(((1, 0), (2, 0)), (3, 0), 1, 2)
    (((3, 0), (0, 0)), [(1, 0), (2, 0)], 0)
    >>> _push_days(((1, 0),), (3, 0), 5, 2)
    (((0, 0), (0, 0)), [(1, 0), (3, 0)], 3)
    >>> _push_days(((1, 0),), (3, 0), 0, 6)
    (((1, 0), (3, 0)), [], 0)
    """
    seq = (*week, today)
    n_out = max(0, len(seq) + empty - keep)
    aged = list(seq[:n_out])
    zeros_out = max(0, n_out - len(seq))
    if empty >= keep:
        ring: tuple[tuple[int, int], ...] = ((0, 0),) * keep
    else:
        ring = (*seq[max(0, len(seq) - (keep - empty)) :], *(((0, 0),) * empty))
    return ring, aged, zeros_out


def _day_label(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def _hour_label(hour: int) -> str:
    return f"{_day_label(hour // 24)}T{hour % 24:02d}"


def _hour_bucket(epoch: int, local: int) -> int:
    """The elapsed-hour bucket of an instant (Unix seconds ``epoch``, local seconds ``local``).

    Hours of real time that start on the local clock's hour boundaries (the
    zone's sub-hour offset is kept): the hour a fall-back change repeats on the
    local clock is two buckets, one per real hour.

    >>> t = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # Berlin: 02:30 CEST
    >>> [_hour_bucket(*_local_epoch(t + dt.timedelta(hours=h), "Europe/Berlin")) -
    ...  int(t.timestamp()) // 3600 for h in (0, 1)]  # 02:30 CEST, 02:30 CET
    [0, 1]
    >>> t = dt.datetime(2026, 3, 2, 12, 10, tzinfo=dt.UTC)  # Kolkata +05:30: 17:40
    >>> _hour_bucket(*_local_epoch(t, "Asia/Kolkata")) - _hour_bucket(*_local_epoch(
    ...     t + dt.timedelta(minutes=25), "Asia/Kolkata"))  # 18:05: the next local hour
    -1
    """
    return (epoch + (local - epoch) % 3_600) // 3_600


def _hour_discriminator(t: dt.datetime, epoch: int, local: int, tz: str) -> str:
    """``hour:<local date>T<local hour>`` of the hour bucket holding the instant; the second
    of two real hours with the same local label (a fall-back change) gets its UTC offset.

    >>> t = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # Berlin: 02:30 CEST
    >>> [_hour_discriminator(x, *_local_epoch(x, "Europe/Berlin"), "Europe/Berlin")
    ...  for x in (t, t + dt.timedelta(hours=1), t + dt.timedelta(hours=2))]
    ['hour:2026-10-25T02', 'hour:2026-10-25T02+01:00', 'hour:2026-10-25T03']
    """
    label = f"hour:{_hour_label(local // 3_600)}"
    _, before = _local_epoch(t - dt.timedelta(hours=1), tz)
    if before // 3_600 < local // 3_600:
        return label
    off = local - epoch
    sign, off = ("+", off) if off >= 0 else ("-", -off)
    return f"{label}{sign}{off // 3_600:02d}:{off % 3_600 // 60:02d}"


def _cooled(fired: tuple[int, ...], slot: int, epoch: int, cooldown_s: int) -> bool:
    last = fired[slot]
    return last < 0 or epoch - last >= cooldown_s


def _signal(
    t: _Tables,
    reason: str,
    evidence: list[Evidence],
    discriminator: str,
    account_id: str | None = None,
) -> Signal:
    kind, rule_id, _ = RULES[reason]
    return Signal(
        kind=kind,
        rule_id=rule_id,
        rule_version=t.cfg.rule_version,
        severity=t.severity[reason],
        reason_codes=[reason],
        evidence=evidence,
        account_id=account_id,
        discriminator=discriminator,
    )


#: Position of each feature in a row of :data:`MODEL_FEATURES`.
_MODEL_POSITION = {name: i for i, name in enumerate(MODEL_FEATURES)}


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f}%"


# --------------------------------------------------------------------------- #
# Events
# --------------------------------------------------------------------------- #


def on_transaction(
    state: BehaviourState | None,
    tx: CardTransaction,
    profile_limit_minor: int | None,
    home_country: str | None,
    config: BehaviourConfig = DEFAULT_CONFIG,
    *,
    timezone: str | None = None,
) -> tuple[BehaviourState, list[Signal], dict[str, float]]:
    """Score one card transaction against the profile, then learn it.

    Returns the new state, the signals raised (possibly none) and the
    transaction's features for the global anomaly model (names
    :data:`FEATURE_NAMES`, scaled to [0, 1]); the feature dict is empty for
    refunds and installment conversions, which are not spend and should not
    be scored. ``profile_limit_minor`` is the credit limit (for utilisation),
    ``home_country`` the customer's ISO country (``config.home_country`` if
    None), ``timezone`` the customer's IANA zone for day and night buckets
    (``config.timezone`` if None).

    >>> import datetime as dt
    >>> from schemas.models import CardTransaction
    >>> def tx(i, minute, mcc="5411", kind="purchase"):
    ...     return CardTransaction(event_id=f"e{i}", customer_id="c1", account_id="a1",
    ...         event_time=dt.datetime(2026, 3, 2, 12, minute, tzinfo=dt.UTC), type=kind,
    ...         amount_minor=2_000, currency="EUR", mcc=mcc, merchant_id="m", channel="ecom",
    ...         country="DE")
    >>> s = None
    >>> for i in range(8):
    ...     s, sigs, _ = on_transaction(s, tx(i, i), 500_000, "DE")
    >>> [(g.kind, g.reason_codes, g.evidence[0].text) for g in sigs]
    [('fraud_pattern', ['velocity_burst'], '8 card transactions within one hour (threshold 8)')]
    """
    new, signals, row = on_transaction_row(state, tx, profile_limit_minor, home_country, config,
                                           timezone=timezone)
    if row is None:
        return new, signals, {}
    return new, signals, {name: row[_MODEL_POSITION[name]] for name in FEATURE_NAMES}


def on_transaction_row(
    state: BehaviourState | None,
    tx: CardTransaction,
    profile_limit_minor: int | None,
    home_country: str | None,
    config: BehaviourConfig = DEFAULT_CONFIG,
    *,
    timezone: str | None = None,
    epoch: int | None = None,
) -> tuple[BehaviourState, list[Signal], tuple[float, ...] | None]:
    """:func:`on_transaction` with the features as a row: their values in the order of
    :data:`MODEL_FEATURES` (what :meth:`AnomalyModel.score_learn_scaled` of
    :func:`make_anomaly_model` takes), ``None`` where the feature dict is empty.
    ``epoch``, if given, must be ``int(tx.event_time.timestamp())`` (a caller that has
    it saves computing it again).
    """
    cfg = config
    t = _LAST_TABLES
    if t.cfg is not cfg:
        t = _tables(cfg)
    s = _EMPTY if state is None else state
    zone_name = timezone or cfg.timezone
    when = tx.event_time
    if epoch is None:
        epoch = int(when.timestamp())
    # _local_epoch(when, zone_name), its cached case inlined (an offset known for the hour)
    hour_off = (_HOUR_OFFSETS.get((zone_name, epoch // 3_600))
                if epoch >= 0 and when.tzinfo is not None else None)
    if hour_off is None or hour_off is False:
        epoch, local = _local_epoch(when, zone_name)
    else:
        local = epoch + hour_off
    day_b = local // 86_400
    hour_b = (epoch + (local - epoch) % 3_600) // 3_600  # _hour_bucket, inlined
    kind = tx.type
    amount = tx.amount_minor
    spend = kind in ("purchase", "cash_advance")
    limit = profile_limit_minor if profile_limit_minor else None
    fired = s.fired or _NEVER

    # ---- roll the day and hour buckets forward ------------------------------------------ #
    day, n_days = s.day, s.n_days
    day_spend, day_cash, day_count = s.day_spend, s.day_cash, s.day_count
    week, n_long = s.week, s.n_long
    sp_l, ca_l, cnt = s.spend_long_raw, s.cash_long_raw, s.count_raw
    if day < 0:
        day = day_b
    elif day_b > day:
        closed = day_b - day  # the current day plus empty days, at most _MAX_GAP_DAYS
        if closed > _MAX_GAP_DAYS:
            closed = _MAX_GAP_DAYS
        a_l, b_l = t.a_long, t.b_long  # b_l: 1 - a_l
        if closed == 1 and len(week) == t.keep:
            # _push_days(week, (day_spend, day_cash), 0, t.keep) and the loop below, for
            # the usual roll (to the next day, the ring full): the oldest day leaves
            x_spend, x_cash = week[0]
            week = (*week[1:], (day_spend, day_cash))
            sp_l = a_l * x_spend + b_l * sp_l
            ca_l = a_l * x_cash + b_l * ca_l
            n_long += 1
        else:
            week, aged, zeros_out = _push_days(week, (day_spend, day_cash), closed - 1, t.keep)
            for x_spend, x_cash in aged:  # at most short_window_days iterations
                sp_l = a_l * x_spend + b_l * sp_l
                ca_l = a_l * x_cash + b_l * ca_l
            if zeros_out:
                f_l = b_l ** zeros_out
                sp_l, ca_l = sp_l * f_l, ca_l * f_l
            n_long += len(aged) + zeros_out
        b_c = t.b_cnt  # 1 - a_cnt
        cnt = t.a_cnt * day_count + b_c * cnt
        if closed > 1:
            cnt *= b_c ** (closed - 1)
        n_days += closed
        day, day_spend, day_cash, day_count = day_b, 0, 0, 0
    late_day = day_b < day
    hour, hour_count = s.hour, s.hour_count
    if s.v < 2 and hour >= 0:  # a local-time hour number: to elapsed hours
        hour -= (local - epoch) // 3_600
    if hour_b > hour:
        hour, hour_count = hour_b, 0
    late_hour = hour_b < hour

    cat = t.mcc_cache.get(tx.mcc)  # t.category(tx.mcc), its cached case inlined
    if cat is None:
        cat = t.category(tx.mcc)
    bit = 1 << cat
    is_cash = kind == "cash_advance" or tx.channel == "atm" or cat == _CASH_CAT
    home = home_country or cfg.home_country
    foreign = home is not None and tx.country != home
    cnp = tx.channel in ("ecom", "moto")
    night = t.night[(local // 3_600) % 24]  # the local hour in the night window
    history = s.n_tx >= cfg.min_history_tx and n_days >= cfg.min_history_days
    cooldown = t.cooldown  # cfg.cooldown_hours in seconds
    signals: list[Signal] = []
    # fired with the rules that fire now, as a list made on the first (most events: none)
    new_fired: list[int] | None = None
    account = tx.account_id
    cur = tx.currency

    # ---- balance ----------------------------------------------------------------------- #
    balance = s.balance
    if spend:
        balance += amount
    elif kind == "refund":
        balance = max(0, balance - amount)

    if not spend:
        conversions = s.conversions
        if kind == "installment_conversion":
            win = cfg.installment_window_days * 86_400
            recent = [c for c in conversions if epoch - win < c <= epoch]
            recent.append(epoch)
            if len(recent) >= cfg.installment_count and _cooled(fired, _F_INST, epoch, win):
                n = len(recent)
                signals.append(
                    _signal(
                        t,
                        "installment_velocity",
                        [
                            Evidence(
                                code="installment_conversions",
                                text=f"{n} purchases converted to installments within "
                                f"{cfg.installment_window_days} days",
                                value=n,
                                unit="conversions",
                            )
                        ],
                        f"day:{_day_label(day_b)}",
                        account,
                    )
                )
                new_fired = new_fired or list(fired)
                new_fired[_F_INST] = epoch
            # A list, not a set: two conversions in the same second are two conversions
            # (a redelivered event never gets here: the engine drops it by event id).
            kept = sorted((*conversions, epoch))[-cfg.installment_count :]
            conversions = tuple(c for c in kept if c > epoch - win)
        new = msgspec.structs.replace(
            s,
            day=day,
            n_days=n_days,
            day_spend=day_spend,
            day_cash=day_cash,
            day_count=day_count,
            week=week,
            n_long=n_long,
            spend_long_raw=sp_l,
            cash_long_raw=ca_l,
            count_raw=cnt,
            hour=hour,
            hour_count=hour_count,
            v=2,
            balance=balance,
            conversions=conversions,
            fired=fired if new_fired is None else tuple(new_fired),
        )
        return new, signals, None

    # ---- counters that include this event ---------------------------------------------- #
    if not late_day:
        day_spend += amount
        day_count += 1
        if is_cash:
            day_cash += amount
    if not late_hour:
        hour_count += 1

    # ---- score (baselines from earlier events only) ------------------------------------ #
    window_days = len(week) + 1
    week_spend = week_cash = 0
    for x_spend, x_cash in week:
        week_spend += x_spend
        week_cash += x_cash
    recent_spend = day_spend + week_spend
    recent_cash = day_cash + week_cash
    # _debias(sp_l, t.a_long, n_long), per day, its denominator from the table
    if 0 < n_long < _DEBIAS_TABLE:
        norm_spend = sp_l / t.debias_long[n_long]
    else:
        norm_spend = _debias(sp_l, t.a_long, n_long)
    norm_window = norm_spend * window_days
    spend_ratio = recent_spend / norm_window if norm_spend >= cfg.min_daily_norm_minor else 1.0

    # velocity_burst
    if (
        not late_hour
        and hour_count >= cfg.burst_per_hour
        and _cooled(fired, _F_BURST_H, epoch, 3_600)
    ):
        signals.append(
            _signal(
                t,
                "velocity_burst",
                [
                    Evidence(
                        code="transactions_per_hour",
                        text=f"{hour_count} card transactions within one hour "
                        f"(threshold {cfg.burst_per_hour})",
                        value=hour_count,
                        unit="tx/h",
                    )
                ],
                _hour_discriminator(tx.event_time, epoch, local, zone_name),
                account,
            )
        )
        new_fired = new_fired or list(fired)
        new_fired[_F_BURST_H] = epoch
    if not late_day and history:
        # _debias(cnt, t.a_cnt, n_days), its denominator from the table
        if 0 < n_days < _DEBIAS_TABLE:
            count_norm = cnt / t.debias_cnt[n_days]
        else:
            count_norm = _debias(cnt, t.a_cnt, n_days)
        day_limit = max(cfg.burst_per_day, cfg.burst_day_multiple * count_norm)
        if day_count >= day_limit and _cooled(fired, _F_BURST_D, epoch, cooldown):
            signals.append(
                _signal(
                    t,
                    "velocity_burst",
                    [
                        Evidence(
                            code="transactions_per_day",
                            text=f"{day_count} card transactions today, against a norm of "
                            f"{count_norm:.1f} a day",
                            value=day_count,
                            unit="tx/day",
                        )
                    ],
                    f"day:{_day_label(day)}",
                    account,
                )
            )
            new_fired = new_fired or list(fired)
            new_fired[_F_BURST_D] = epoch

    # spend_spike
    if (
        not late_day
        and history
        and n_long >= cfg.min_norm_days
        and norm_spend >= cfg.min_daily_norm_minor
        and spend_ratio >= cfg.spend_multiple
        and recent_spend - norm_window >= cfg.min_excess_minor
        and _cooled(fired, _F_SPIKE, epoch, cooldown)
    ):
        ratio = round(spend_ratio, 1)
        signals.append(
            _signal(
                t,
                "spend_spike",
                [
                    Evidence(
                        code="spend_ratio",
                        text=f"spend in the last {window_days} days is {ratio}x the "
                        f"customer's {cfg.long_window_days:g}-day norm",
                        value=ratio,
                        unit="x",
                    ),
                    Evidence(
                        code="recent_spend",
                        text=f"{_money(recent_spend, cur)} spent in the last {window_days} days, "
                        f"against a norm of {_money(norm_window, cur)}",
                        value=round(_major(recent_spend, cur), 3),
                        unit=cur,
                    ),
                ],
                f"day:{_day_label(day)}",
                account,
            )
        )
        new_fired = new_fired or list(fired)
        new_fired[_F_SPIKE] = epoch

    # new_high_risk_category
    if bit & t.high_risk_mask and not s.seen_mask & bit and history:
        name = CATEGORIES[cat]
        label = name.replace("_", " ")
        signals.append(
            _signal(
                t,
                "new_high_risk_category",
                [
                    Evidence(
                        code="first_high_risk_category",
                        text=f"first {label} transaction (MCC {tx.mcc}) after {n_days} days "
                        f"and {s.n_tx} transactions of history",
                        value=name,
                    )
                ],
                f"category:{name}",
                account,
            )
        )

    # cash_advance_surge
    if is_cash and not late_day and history and n_long >= cfg.min_norm_days:
        share = recent_cash / recent_spend if recent_spend > 0 else 0.0
        long_share = ca_l / sp_l if sp_l > 0 else 0.0
        if (
            share >= cfg.cash_surge_share
            and share >= cfg.cash_surge_multiple * long_share
            and recent_cash >= cfg.cash_min_minor
            and _cooled(fired, _F_CASH, epoch, cooldown)
        ):
            signals.append(
                _signal(
                    t,
                    "cash_advance_surge",
                    [
                        Evidence(
                            code="cash_advance_share",
                            text=f"cash advances are {_pct(share)} of spend in the last "
                            f"{window_days} days ({_money(recent_cash, cur)}), against "
                            f"{_pct(long_share)} in the {cfg.long_window_days:g}-day norm",
                            value=round(share, 3),
                            unit="share",
                        )
                    ],
                    f"day:{_day_label(day)}",
                    account,
                )
            )
            new_fired = new_fired or list(fired)
            new_fired[_F_CASH] = epoch

    # utilisation_jump (only once payments make the balance meaningful)
    utilisation = balance / limit if limit is not None else 0.0
    if limit is not None and s.n_payments >= cfg.utilisation_min_payments:
        util_norm = _debias(s.pay_balance_raw, t.a_util, s.n_payments) / limit
        if (
            utilisation >= cfg.utilisation_min
            and utilisation - util_norm >= cfg.utilisation_jump
            and fired[_F_UTIL] < 0
        ):
            signals.append(
                _signal(
                    t,
                    "utilisation_jump",
                    [
                        Evidence(
                            code="utilisation",
                            text=f"utilisation is {_pct(utilisation)} of the credit limit, "
                            f"against {_pct(util_norm)} usually reached before a payment",
                            value=round(utilisation, 3),
                            unit="share",
                        )
                    ],
                    f"day:{_day_label(day)}",
                    account,
                )
            )
            new_fired = new_fired or list(fired)
            new_fired[_F_UTIL] = epoch

    # habit_drift (Page-Hinkley on the log amount)
    log_amt = math.log1p(amount / 100.0)  # scale-free use only: z-score and drift
    ph, direction = ph_update(s.ph, log_amt, cfg.drift)
    a_f = t.a_fast
    amt_fast = log_amt if s.n_tx == 0 else s.amt_fast + a_f * (log_amt - s.amt_fast)
    if direction:
        before = math.expm1(s.ph.mean) * 100.0
        after = math.expm1(amt_fast) * 100.0
        way = "up" if direction > 0 else "down"
        signals.append(
            _signal(
                t,
                "habit_drift",
                [
                    Evidence(
                        code="typical_amount",
                        text=f"typical transaction amount shifted {way} from about "
                        f"{_money(before, cur)} to about {_money(after, cur)}",
                        value=round(_major(after, cur), 3),
                        unit=cur,
                    )
                ],
                f"{way}:{_day_label(day_b)}",
                account,
            )
        )

    # ---- features (before learning) ---------------------------------------------------- #
    n_prev = s.n_tx
    z = (log_amt - s.amt_mean) / math.sqrt(s.amt_var + 1e-6) if n_prev >= 5 else 0.0
    mix_raw = s.mix_raw or (0.0,) * len(CATEGORIES)
    if not n_prev:
        novelty = 1.0
    elif n_prev < _DEBIAS_TABLE:  # 1 - _debias(...), its denominator from the table
        novelty = 1.0 - mix_raw[cat] / t.debias_mix[n_prev]
    else:
        novelty = 1.0 - _debias(mix_raw[cat], t.a_mix, n_prev)
    gap_h = (epoch - s.last_epoch) / 3_600 if s.last_epoch >= 0 else 0.0
    # t.scale_row((log_amt, z, ...)): the raw features (in the order of FEATURE_NAMES) as
    # arguments, scaled and returned in the order of MODEL_FEATURES (no raw row built)
    features = t.scale_args(
        log_amt,  # log_amount
        z,  # amount_z
        hour_count,  # hour_count (an int: the scaler's arithmetic makes it a float)
        day_count,  # day_count
        spend_ratio,  # spend_ratio
        novelty,  # category_novelty
        1.0 if bit & t.high_risk_mask else 0.0,  # high_risk
        1.0 if is_cash else 0.0,  # cash
        1.0 if cnp else 0.0,  # card_not_present
        1.0 if foreign else 0.0,  # foreign
        1.0 if night else 0.0,  # night
        utilisation,  # utilisation
        math.log1p(0.0 if gap_h < 0.0 else gap_h),  # gap_hours: max(gap_h, 0.0)
        math.log1p(n_prev),  # tenure
    )

    # ---- learn ------------------------------------------------------------------------- #
    a = t.a_amt
    if n_prev == 0:
        amt_mean, amt_var = log_amt, 0.0
    else:
        d = log_amt - s.amt_mean
        amt_mean = s.amt_mean + a * d
        amt_var = t.b_amt * (s.amt_var + a * d * d)  # b_amt: 1 - a
    if len(mix_raw) == len(CATEGORIES):
        mix = t.mix_step[cat](mix_raw)  # the list below, by straight-line code
    else:
        am = t.a_mix
        keep = 1 - am
        mix_l = [keep * m for m in mix_raw]
        mix_l[cat] = keep * mix_raw[cat] + am
        mix = tuple(mix_l)
    sh, b_sh = t.a_share, t.b_share  # b_sh: 1 - sh
    last_epoch = s.last_epoch
    # msgspec.structs.replace(s, v=2, n_tx=..., ..., balance=..., fired=...), built
    # positionally (in the order of _FIELDS) at a third of the cost
    new = BehaviourState(
        2,  # v
        n_prev + 1,  # n_tx
        epoch if epoch > last_epoch else last_epoch,  # last_epoch: max(s.last_epoch, epoch)
        amt_mean,
        amt_var,
        amt_fast,
        ph,
        day,
        n_days,
        day_spend,
        day_cash,
        day_count,
        week,
        n_long,
        sp_l,  # spend_long_raw
        ca_l,  # cash_long_raw
        cnt,  # count_raw
        hour,
        hour_count,
        s.seen_mask | bit,  # seen_mask
        mix,  # mix_raw
        b_sh * s.night_raw + (sh if night else 0.0),  # night_raw
        b_sh * s.foreign_raw + (sh if foreign else 0.0),  # foreign_raw
        b_sh * s.cnp_raw + (sh if cnp else 0.0),  # cnp_raw
        s.conversions,
        balance,
        s.n_payments,
        s.pay_balance_raw,
        s.applications,
        fired if new_fired is None else tuple(new_fired),
    )
    return new, signals, features


def on_application(
    state: BehaviourState | None,
    app: CreditApplication,
    config: BehaviourConfig = DEFAULT_CONFIG,
) -> tuple[BehaviourState, list[Signal]]:
    """Record a credit application; signal when too many arrive within the window.

    The same ``application_id`` seen twice (for example internally and at the
    bureau) counts once. At most ``applications_kept`` are kept.

    >>> import datetime as dt
    >>> from schemas.models import CreditApplication
    >>> def app(i, hours):
    ...     return CreditApplication(event_id=f"e{i}", customer_id="c1", application_id=f"a{i}",
    ...         event_time=dt.datetime(2026, 3, 1, tzinfo=dt.UTC) + dt.timedelta(hours=hours),
    ...         product="personal_loan", amount_minor=500_000, currency="EUR")
    >>> s, out = None, []
    >>> for i, h in enumerate([0, 20, 40]):
    ...     s, sigs = on_application(s, app(i, h))
    ...     out.append([e.text for g in sigs for e in g.evidence])
    >>> out  # doctest: +NORMALIZE_WHITESPACE
    [[], [],
     ['3 credit applications within 48 h', 'latest: personal loan for 5,000.00 EUR (internal)']]
    """
    cfg = config
    t = _tables(cfg)
    s = _EMPTY if state is None else state
    epoch = int(app.event_time.timestamp())
    crc = zlib.crc32(app.application_id.encode())
    if any(c == crc for _, c in s.applications):
        return s, []
    win = cfg.application_window_hours * 3_600
    apps = sorted((*s.applications, (epoch, crc)))[-cfg.applications_kept :]
    n = sum(1 for e, _ in apps if epoch - win < e <= epoch)
    fired = s.fired or _NEVER
    signals: list[Signal] = []
    if n >= cfg.application_count and _cooled(fired, _F_APP, epoch, win):
        signals.append(
            _signal(
                t,
                "application_velocity",
                [
                    Evidence(
                        code="applications_in_window",
                        text=f"{n} credit applications within {cfg.application_window_hours} h",
                        value=n,
                        unit="applications",
                    ),
                    Evidence(
                        code="latest_application",
                        text=f"latest: {app.product.replace('_', ' ')} for "
                        f"{_money(app.amount_minor, app.currency)} ({app.source})",
                        value=app.amount_minor,
                        unit=app.currency,
                    ),
                ],
                f"application:{app.application_id}",
            )
        )
        fired = (*fired[:_F_APP], epoch, *fired[_F_APP + 1 :])
    return msgspec.structs.replace(s, applications=tuple(apps), fired=fired), signals


def on_payment(
    state: BehaviourState | None,
    amount_minor: int,
    config: BehaviourConfig = DEFAULT_CONFIG,
) -> BehaviourState:
    """Record a payment: note the balance it found, then lower the balance by it.

    The approximate balance (spend minus refunds and payments) is used for
    utilisation only after ``utilisation_min_payments`` payments. A reversed
    payment can be passed as a negative amount (it is not counted as a
    payment).

    >>> s = on_payment(BehaviourState(balance=10_000), 4_000)
    >>> s.balance, s.n_payments
    (6000, 1)
    >>> on_payment(s, -4_000).balance
    10000
    """
    s = _EMPTY if state is None else state
    balance = max(0, s.balance - amount_minor)
    if amount_minor <= 0:
        return msgspec.structs.replace(s, balance=balance)
    a = _tables(config).a_util
    fired = s.fired
    if fired and fired[_F_UTIL] >= 0:  # a new statement cycle may signal again
        fired = (*fired[:_F_UTIL], -1, *fired[_F_UTIL + 1 :])
    return msgspec.structs.replace(
        s,
        balance=balance,
        n_payments=s.n_payments + 1,
        pay_balance_raw=(1 - a) * s.pay_balance_raw + a * s.balance,
        fired=fired,
    )


# --------------------------------------------------------------------------- #
# Global anomaly model glue
# --------------------------------------------------------------------------- #


def make_anomaly_model(
    config: BehaviourConfig = DEFAULT_CONFIG, *, seed: int = 0, **kwargs: Any
) -> AnomalyModel:
    """The global anomaly model for :func:`on_transaction` features (already scaled).

    >>> make_anomaly_model(seed=1).features == tuple(sorted(FEATURE_NAMES))
    True
    """
    return AnomalyModel(FEATURE_NAMES, seed=seed, **kwargs)


def anomaly_baseline(config: BehaviourConfig = DEFAULT_CONFIG) -> tuple[float | None, ...]:
    """:data:`ORDINARY` scaled as the anomaly model takes it, in :data:`MODEL_FEATURES`
    order (None where a feature is never a reason).

    >>> dict(zip(MODEL_FEATURES, anomaly_baseline()))["foreign"]
    0.0
    """
    return _tables(config).ordinary


def anomaly_factors(
    model: AnomalyModel,
    row: tuple[float, ...],
    config: BehaviourConfig = DEFAULT_CONFIG,
    top: int = 3,
) -> list[tuple[str, float, float]]:
    """Why the anomaly model flagged a transaction: its ``top`` features that an
    :data:`ORDINARY` value would lower the score most, as ``(feature, the transaction's
    raw value, score without it)`` (:meth:`AnomalyModel.explain_scaled`, occlusion on
    the trees as they are; nothing is learnt). ``row`` is the transaction's scaled
    features as :func:`on_transaction_row` returns them.

    >>> import random
    >>> rng = random.Random(3)
    >>> model = make_anomaly_model(seed=1, warmup=0, window_size=100)
    >>> for _ in range(300):
    ...     x = {k: abs(rng.gauss(0.2, 0.03)) for k in FEATURE_NAMES}
    ...     model.learn_one(x | {"foreign": 0.0, "night": 0.0, "high_risk": 0.0})
    >>> x = {k: 0.2 for k in FEATURE_NAMES} | {"foreign": 1.0}
    >>> row = tuple(x[k] for k in MODEL_FEATURES)
    >>> [name for name, _, _ in anomaly_factors(model, row)][:1]
    ['foreign']
    """
    t = _tables(config)
    if model.features == MODEL_FEATURES and model.scales_identity:
        found = model.explain_scaled(row, t.ordinary, top)
    else:
        baseline = {k: b for k, b in zip(MODEL_FEATURES, t.ordinary, strict=True) if b is not None}
        found = model.explain_one(dict(zip(MODEL_FEATURES, row, strict=True)), baseline, top)
    spec = {k: (lo, inv) for k, lo, inv in t.model_spec}
    out = []
    for name, without in found:
        lo, inv = spec[name]
        out.append((name, lo + row[_MODEL_POSITION[name]] / inv, without))
    return out


def _factor_text(name: str, raw: float, scaled: float, tx: CardTransaction) -> str:
    """A factor of :func:`anomaly_factors` in plain terms (values at the edge of the
    feature's range are bounds: "at least")."""
    bound = "at least " if scaled >= 1.0 else ("at most " if scaled <= 0.0 else "")
    if name == "log_amount":
        return f"amount {_money(tx.amount_minor, tx.currency)}"
    if name == "amount_z":
        return f"amount {bound}{raw:+.1f} standard deviations from the customer's usual"
    if name == "hour_count":
        return f"{bound}{raw:.0f} transactions within the hour"
    if name == "day_count":
        return f"{bound}{raw:.0f} transactions today"
    if name == "spend_ratio":
        return f"recent daily spending {bound}{raw:.1f}x the customer's norm"
    if name == "category_novelty":
        return f"merchant category {tx.mcc}, {'new' if raw >= 0.99 else 'rare'} for the customer"
    if name == "high_risk":
        return f"high-risk merchant category {tx.mcc}" if raw else "not a high-risk category"
    if name == "cash":
        return "a cash advance" if raw else "not a cash advance"
    if name == "card_not_present":
        return f"card not present ({tx.channel})" if raw else f"card present ({tx.channel})"
    if name == "foreign":
        return f"abroad ({tx.country})" if raw else f"at home ({tx.country})"
    if name == "night":
        return "at night, customer's local time" if raw else "in the daytime, customer's local time"
    if name == "utilisation":
        return f"utilisation {bound}{_pct(raw)}"
    if name == "gap_hours":
        return f"{bound}{math.expm1(raw):.1f} hours since the previous transaction"
    return f"{name} {raw:.2f}"


def anomaly_signal(
    tx: CardTransaction,
    score: float,
    threshold: float,
    config: BehaviourConfig = DEFAULT_CONFIG,
    factors: list[tuple[str, float, float]] | tuple[()] = (),
) -> Signal:
    """The signal for a transaction the global anomaly model flagged; ``factors`` (of
    :func:`anomaly_factors`) become one evidence item each, after the score: code
    ``anomaly_<feature>``, value the score the factor adds.

    >>> import datetime as dt
    >>> from schemas.models import CardTransaction
    >>> tx = CardTransaction(event_id="e1", event_time=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
    ...     customer_id="c1", account_id="a1", type="purchase", amount_minor=9_900_00,
    ...     currency="EUR", mcc="5732", merchant_id="m1", channel="ecom", country="BR")
    >>> sig = anomaly_signal(tx, 0.93, 0.81, factors=[("foreign", 1.0, 0.71)])
    >>> [e.text for e in sig.evidence]  # doctest: +NORMALIZE_WHITESPACE
    ['transaction unlike the portfolio: anomaly score 0.93, threshold 0.81',
     'abroad (BR); score 0.71 without it']
    >>> sig.evidence[1].code, sig.evidence[1].value
    ('anomaly_foreign', 0.22)
    """
    t = _tables(config)
    evidence = [
        Evidence(
            code="anomaly_score",
            text=f"transaction unlike the portfolio: anomaly score {score:.2f}, "
            f"threshold {threshold:.2f}",
            value=round(score, 4),
            unit="score",
        )
    ]
    spec = {k: (lo, inv) for k, lo, inv in t.model_spec}
    for name, raw, without in factors:
        lo, inv = spec.get(name, (0.0, 1.0))
        evidence.append(Evidence(
            code=f"anomaly_{name}",
            text=f"{_factor_text(name, raw, (raw - lo) * inv, tx)}; score {without:.2f} without it",
            value=round(score - without, 4),
            unit="score",
        ))
    return _signal(t, "anomalous_transaction", evidence, "hst", tx.account_id)


def _sample_features(rng: random.Random) -> dict[str, float]:
    """Scaled features of a random, mostly ordinary transaction (conformance tests)."""
    x = {k: min(1.0, abs(rng.gauss(0.2, 0.1))) for k in FEATURE_NAMES}
    if rng.random() < 0.01:
        x[rng.choice(FEATURE_NAMES)] = 1.0
    return x


#: The production-shaped anomaly model, checked by the conformance suite.
CONFORMANCE_SPECS: list[ConformanceSpec] = [
    ConformanceSpec(
        "behaviour_anomaly_model",
        AnomalyModel,
        lambda seed: make_anomaly_model(seed=seed, warmup=300),
        250_000,
        sample=_sample_features,
    )
]
