"""Customer risk score: a global online model of 30+ DPD, rule points, delayed labels.

Pure and deterministic: no Kafka, no Faust, no clock but the epoch day given.
A customer's score combines three parts, all in points of a 0-1000 scale:

* **model**: ``model_weight * p``, where ``p`` is a global River model's
  probability that the customer first reaches 30+ days past due (DPD) within
  ``horizon_days`` (``p`` is 1 for a customer already 30+ DPD: the event has
  happened);
* **rules**: points per delinquency / warning reason code of recent signals
  (``rule_points``), decayed with a half-life, capped;
* **behaviour**: the same for behaviour signals (``behaviour_points``; signal
  kinds ``behaviour_shift`` and ``fraud_pattern``), weighted separately.

Per-customer flow, in the engine (the integrator's wiring): the
:class:`ScoreState` lives in the customer's state next to the behaviour
profile and the ledgers; the :class:`RiskModel` and :class:`ProgressiveMetrics`
are global to the worker, like the anomaly model (each worker learns from the
labels of its own partitions), and pickle for checkpoints::

    feats = features(limit, summarise_ledgers(ledgers, day, dcfg, pauses=p), behaviour, day)
    state = expire(state, day, model, metrics, cfg)         # learns old snapshots as negatives
    for positive, label_day in labels_from_signals(signals):  # reached_30dpd -> positives
        state = on_label(state, positive, label_day, model, metrics, cfg)
    state, result = score(state, feats, signals, model, cfg, day)   # never learns
    # an Outcome: label_from_outcome(outcome.label, day) -> on_label(...)

Measured cost per call (one core, the test suite's figures): :func:`features`
about 10 us from two ledgers and a profile, :func:`score` about 20 us, one
model predict-then-learn about 20 us; scoring on repayment events,
applications, signals and sweeps (rather than every card transaction) keeps
it off the hot path.

Delayed labels: :func:`score` keeps at most one *pending snapshot* (the day and
the feature vector) per ``snapshot_every_days``. When the customer first
reaches 30+ DPD (the ledger's ``reached_30dpd`` label, or an ``Outcome``
``default`` / ``charge_off``), :func:`on_label` scores every pending snapshot
taken within the horizon before that day into the progressive metrics, then
learns it as positive; :func:`expire` does the same as negative for snapshots
whose horizon has passed without a label. Each snapshot is learnt exactly
once; snapshots are kept only while the customer has not yet reached 30+ DPD
(the target is *first* delinquency, like the simulator's ``first_30dpd_date``;
the ledger announces each threshold once per account, so a later relapse
would otherwise be mislearnt as negative).

Warm-up: labels are asymmetric in time. A positive arrives as soon as the
customer reaches 30+ DPD, a negative only once the horizon has passed, so
during its first horizon a fresh model learns almost only positives and
rates everyone as risky; the bias fades only as negatives accumulate. Until
the model has learnt ``warmup_negatives`` negatives, ``warmup_positives``
positives and negatives for ``warmup_days`` days, the model part uses
``prior_probability`` instead (:func:`model_ready`). Measured on a generated
portfolio (1,000 customers, 180 days, weekly scores): of 849 customers who
never reached 30+ DPD, 849 scored 550+ at some point without the guard, 281
with the count thresholds alone and 35 with the default guard. A model
restored from a checkpoint (with its ``first_negative_day``) is ready at once.

State size: a :class:`ScoreState` stores the snapshot features as fixed-point
integers (counts and days whole, shares in hundredths, the spend ratio in
tenths: the resolution :func:`features` rounds to, so scoring and learning see
identical values), one or two msgpack bytes each: six float64 vectors of 13
features alone would take about 700 B; as integers the whole state is at most
about 180 B with the defaults (measured on a generated portfolio: 136 B at
most, 92 B on average; 271 B at most with weekly snapshots, 13 kept). Rule points are kept per reason code (at most ``max_rule_entries``)
as ``(code index, day, points)``.

>>> cfg = ScoreConfig()
>>> model, metrics = RiskModel.from_config(cfg), ProgressiveMetrics()
>>> feats = features(500_000, {}, None, 20_000)
>>> state, result = score(None, feats, [], model, cfg, 20_000)
>>> result.score, result.probability, result.model_ready, len(state.pending)
(35, 0.05, False, 1)
>>> state = on_label(state, True, 20_030, model, metrics, cfg)
>>> state.pending, state.reached_day, model.n_positive, metrics.n
((), 20030, 1, 1)
"""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from msgspec import Struct
from river import compose, linear_model, metrics, optim, preprocessing

from detectors.base import Evidence, Signal, compiled_function
from detectors.behaviour import DEFAULT_CONFIG as DEFAULT_BEHAVIOUR
from detectors.behaviour import RULES as BEHAVIOUR_RULES
from detectors.behaviour import BehaviourConfig, BehaviourState
from detectors.delinquency import (
    _C_CURED,
    _C_LATE,
    _C_MIN,
    _C_RATIO,
    _C_STMT,
    AccountLedger,
    DelinquencyConfig,
    Pause,
    _oldest_unpaid,
    days_past_due,
    epoch_day,
)
from detectors.delinquency import DEFAULT_CONFIG as DEFAULT_DELINQUENCY
from detectors.online import ConformanceSpec

__all__ = [
    "CONFORMANCE_SPECS",
    "FEATURES",
    "LABEL_DPD",
    "REASON_VOCAB",
    "LedgerSummary",
    "ProgressiveMetrics",
    "ReliabilityBin",
    "RiskModel",
    "ScoreConfig",
    "ScoreResult",
    "ScoreState",
    "decode_state",
    "encode_state",
    "expire",
    "expire_due",
    "features",
    "features_row",
    "label_from_outcome",
    "labels_from_signals",
    "model_ready",
    "on_label",
    "score",
    "score_row",
    "summarise_ledgers",
]

# --------------------------------------------------------------------------- #
# Features
# --------------------------------------------------------------------------- #

#: The model's features, in the fixed order of a stored snapshot.
FEATURES: tuple[str, ...] = (
    "max_dpd",  # days past due of the oldest unpaid due, max over accounts (cap 120)
    "overdue_accounts",  # accounts with DPD > 0
    "min_only_cycles",  # minimum-only payments among the last 4 statements
    "payment_ratio",  # paid / due over the last 3 due dates per account (1.0 if none)
    "late_cycles",  # due dates paid late among the last 6 per account
    "late_cured",  # of which later cured
    "utilisation",  # approximate balance / credit limit (cap 2)
    "cash_share_7d",  # cash advances / spend, last 7 days
    "cash_share_90d",  # the same in the 90-day norm
    "spend_ratio",  # spend in the last 7 days / 7 x the 90-day daily norm (1.0 until known)
    "applications_30d",  # credit applications in the last 30 days
    "open_accounts",  # accounts with a repayment ledger
    "inactive_days",  # days since the last card transaction (cap 90; 90 if none)
)
_N_FEATURES = len(FEATURES)
#: The memo key of a feature vector: its values' bits (``array("d", values).tobytes()``).
_ROW_KEY = struct.Struct(f"{_N_FEATURES}d").pack
_isfinite = math.isfinite
_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}
#: Version of the feature layout of stored snapshots (snapshots of another layout are dropped).
FEATURE_VERSION = 1
#: The DPD whose first crossing is the positive label.
LABEL_DPD = 30
#: Fixed-point scale of each stored feature: counts and days are whole numbers, shares
#: and ratios hundredths, the spend ratio tenths (each value fits one or two msgpack bytes).
_SCALES: tuple[int, ...] = (1, 1, 1, 100, 1, 1, 100, 100, 100, 10, 1, 1, 1)
_DAY_S = 86_400
_EPOCH = dt.date(1970, 1, 1)
_MIN_ONLY_WINDOW = 4
_RATIO_WINDOW = 3
_LATE_WINDOW = 6
#: Which way a feature raises risk, for explanations: a model term is shown as a factor
#: only when its weight has this sign (0: either way). Terms against it still count.
_DIRECTION: dict[str, int] = {name: 1 for name in FEATURES}
_DIRECTION.update(payment_ratio=-1, spend_ratio=0)
_CAPS = {
    "max_dpd": 120.0,
    "overdue_accounts": 8.0,
    "min_only_cycles": 8.0,
    "late_cycles": 12.0,
    "late_cured": 12.0,
    "utilisation": 2.0,
    "spend_ratio": 10.0,
    "applications_30d": 8.0,
    "open_accounts": 8.0,
    "inactive_days": 90.0,
}


#: ``_CAPS`` in the order of ``FEATURES`` (1.0 where none is listed).
_CAP_OF: tuple[float, ...] = tuple(_CAPS.get(name, 1.0) for name in FEATURES)


def _fix(v: float, scale: int) -> int:
    """Fixed-point value at ``scale`` units per 1 (non-finite values become 0)."""
    return round(v * scale) if math.isfinite(v) else 0


class LedgerSummary(NamedTuple):
    """What :func:`features` needs from a customer's repayment ledgers.

    Built by :func:`summarise_ledgers`; an engine that already has these
    numbers may build it directly. Counts are summed over accounts.

    >>> LedgerSummary().payment_ratio
    1.0
    """

    max_dpd: int = 0
    overdue_accounts: int = 0
    min_only: int = 0
    payment_ratio: float = 1.0
    late: int = 0
    cured: int = 0
    accounts: int = 0


def summarise_ledgers(
    ledgers: Mapping[str, AccountLedger],
    now_day: int,
    config: DelinquencyConfig = DEFAULT_DELINQUENCY,
    *,
    pauses: Sequence[Pause] = (),
) -> LedgerSummary:
    """Summarise the ledgers at epoch day ``now_day``: O(accounts x recorded cycles).

    Reads each ledger's DPD (:func:`detectors.delinquency.days_past_due`, with
    the policy's global ``pauses``) and its recorded cycle statistics
    (``AccountLedger.cycles``: paid ratio, minimum-only, late, cured bits).

    >>> from detectors.delinquency import Due
    >>> led = AccountLedger("a1", 100, dues=[Due("i1", 90, 10_000)],
    ...                     cycles=[30, 100, 60, 1024 | 128 | 20])
    >>> s = summarise_ledgers({"a1": led}, 100)
    >>> s.max_dpd, s.min_only, s.payment_ratio, s.accounts
    (10, 1, 0.6, 1)
    """
    return _tuple_new(LedgerSummary, _summary(ledgers, now_day, config, pauses))


#: What :func:`_summary` gives for no ledgers (``LedgerSummary()``).
_NO_LEDGERS = (0, 0, 0, 1.0, 0, 0, 0)
_tuple_new = tuple.__new__


def _summary(
    ledgers: Mapping[str, AccountLedger], now_day: int, config: DelinquencyConfig,
    pauses: Sequence[Pause],
) -> tuple[int, int, int, float, int, int, int]:
    """:func:`summarise_ledgers` as a plain tuple, in :class:`LedgerSummary`'s order."""
    if not ledgers:
        return _NO_LEDGERS
    max_dpd = overdue = min_only = late = cured = ratio_n = ratio_sum = 0
    for led in ledgers.values():
        # days_past_due is 0 without an unpaid due (checked first: the usual case)
        if _oldest_unpaid(led, config) is not None:
            dpd = days_past_due(led, now_day, config, pauses=pauses)
            if dpd > 0:
                overdue += 1
                max_dpd = max(max_dpd, dpd)
        if not led.cycles:
            continue
        recs = led.cycles[1::2]
        for c in [c for c in recs if c & _C_STMT][-_MIN_ONLY_WINDOW:]:
            if c & _C_MIN:
                min_only += 1
        for c in recs[-_RATIO_WINDOW:]:
            ratio_sum += c & _C_RATIO
            ratio_n += 1
        for c in recs[-_LATE_WINDOW:]:
            if c & _C_LATE:
                late += 1
                if c & _C_CURED:
                    cured += 1
    ratio = ratio_sum / (100.0 * ratio_n) if ratio_n else 1.0
    return (max_dpd, overdue, min_only, ratio, late, cured, len(ledgers))


def features(
    profile_limit: int | None,
    ledgers: LedgerSummary | Mapping[str, AccountLedger],
    behaviour_state: BehaviourState | None,
    now_day: int,
    *,
    behaviour_config: BehaviourConfig = DEFAULT_BEHAVIOUR,
    delinquency_config: DelinquencyConfig = DEFAULT_DELINQUENCY,
    pauses: Sequence[Pause] = (),
) -> dict[str, float]:
    """The model's features (:data:`FEATURES`, in order) at epoch day ``now_day``.

    ``profile_limit`` is the credit limit in minor units (``None``: unknown,
    utilisation 0). ``ledgers`` is a :class:`LedgerSummary`, or the
    customer's ledgers by account (summarised with ``delinquency_config`` and
    ``pauses``). ``behaviour_state`` is the customer's behaviour profile
    (``None``: no card activity yet). Values are clipped to documented caps
    and rounded to the resolution snapshots are stored at (counts and days
    whole, shares and ratios to hundredths, the spend ratio to tenths).

    The 7-day windows are read from the behaviour profile's ring of day totals
    and shifted to ``now_day`` (days with no transaction since count as zero);
    the profile's days are in the customer's local time, ``now_day`` in UTC,
    so the window edge may differ by one day.

    >>> f = features(500_000, LedgerSummary(max_dpd=12, overdue_accounts=1, min_only=3,
    ...              payment_ratio=0.4, accounts=2), BehaviourState(balance=450_000), 20_000)
    >>> f["max_dpd"], f["min_only_cycles"], f["utilisation"], f["inactive_days"]
    (12.0, 3.0, 0.9, 90.0)
    >>> list(f) == list(FEATURES)
    True
    """
    return dict(zip(FEATURES, features_row(
        profile_limit, ledgers, behaviour_state, now_day, behaviour_config, delinquency_config,
        pauses), strict=True))


def features_row(
    profile_limit: int | None,
    ledgers: LedgerSummary | Mapping[str, AccountLedger],
    behaviour_state: BehaviourState | None,
    now_day: int,
    behaviour_config: BehaviourConfig = DEFAULT_BEHAVIOUR,
    delinquency_config: DelinquencyConfig = DEFAULT_DELINQUENCY,
    pauses: Sequence[Pause] = (),
    /,
) -> tuple[float, ...]:
    """:func:`features` as a tuple in the order of :data:`FEATURES`, every argument by
    position (the engine's once-a-day re-score: it reads two values and hands the rest
    to :func:`score_row`, so no dict is built).

    >>> features_row(500_000, LedgerSummary(max_dpd=12), None, 20_000)[:2]
    (12.0, 0.0)
    """
    if isinstance(ledgers, LedgerSummary):
        quantised = _quantised_row
        max_dpd, overdue, min_only, ratio, late, cured, accounts = ledgers
    else:
        # Whole counts (and applications and inactive days): the clip-and-round of a
        # count is the count itself, clipped (_quantised_counts_row skips the rounding).
        quantised = _quantised_counts_row
        max_dpd, overdue, min_only, ratio, late, cured, accounts = _summary(
            ledgers, now_day, delinquency_config, pauses)
    utilisation = cash_7d = cash_90d = applications = 0.0
    spend_ratio = 1.0
    inactive: float = 90.0
    b = behaviour_state
    if b is not None:
        if profile_limit:
            utilisation = b.balance / profile_limit
        first = now_day - behaviour_config.short_window_days + 1
        recent = cash = 0
        if b.day >= first:
            recent, cash = b.day_spend, b.day_cash
            n_week = len(b.week)
            for i, (sp, ca) in enumerate(b.week):
                if b.day - n_week + i >= first:
                    recent += sp
                    cash += ca
        if recent > 0:
            cash_7d = cash / recent
        if b.spend_long_raw > 0:
            cash_90d = b.cash_long_raw / b.spend_long_raw
            if b.n_long >= behaviour_config.min_norm_days:
                a = 1.0 / behaviour_config.long_window_days
                norm = b.spend_long_raw / (1.0 - (1.0 - a) ** b.n_long)
                if norm >= behaviour_config.min_daily_norm_minor:
                    spend_ratio = recent / (behaviour_config.short_window_days * norm)
        if b.applications:
            since = (now_day + 1) * _DAY_S - 30 * _DAY_S
            applications = float(sum(1 for t, _ in b.applications if t >= since))
        if b.last_epoch >= 0:
            inactive = float((now_day + 1) - (b.last_epoch // _DAY_S + 1))
    return quantised(
        float(max_dpd),
        float(overdue),
        float(min_only),
        ratio,
        float(late),
        float(cured),
        utilisation,
        cash_7d,
        cash_90d,
        spend_ratio,
        applications,
        float(accounts),
        inactive,
    )


def _quantiser(whole: bool = False) -> Any:
    """``_quantised_row(*raw)``: the feature values of raw values in the order of
    ``FEATURES``, each clipped to its cap and rounded to its scale (``_fix(v, scale) /
    scale`` of a value that is 0.0 or in (0, cap], finite), compiled as straight-line code.

    ``whole``: ``_quantised_counts_row``, for raw values of which those of a feature at
    scale 1 with a whole cap are whole floats: such a value is kept as it is, clipped
    (what rounding it would give), not rounded.

    >>> raw = (3.0, 0.0, -1.0, 0.456, 0.0, 0.0, 2.5, 0.0, 0.0, 1.234, 0.0, 9.0, 90.0)
    >>> _quantised_row(*raw)
    (3.0, 0.0, 0.0, 0.46, 0.0, 0.0, 2.0, 0.0, 0.0, 1.2, 0.0, 8.0, 90.0)
    >>> _quantised_counts_row(*raw) == _quantised_row(*raw)
    True
    """
    names = [f"v{i}" for i in range(_N_FEATURES)]
    lines = [f"def _quantised_row({', '.join(names)}):", " return ("]
    for name, v, scale, cap in zip(FEATURES, names, _SCALES, _CAP_OF, strict=True):
        clipped = f"({cap!r} if {cap!r} < {v} else {v})"  # min(v, cap): cap when cap < v
        if whole and scale == 1 and cap.is_integer():
            lines.append(f"  {clipped} if {v} > 0.0 else 0.0,  # {name}")
        else:
            # round(min(v, cap) * scale) / scale if v > 0.0 else 0.0
            lines.append(f"  round({clipped} * {scale!r}) / {scale!r} if {v} > 0.0 else 0.0,"
                         f"  # {name}")
    lines.append(" )")
    return compiled_function(lines, "<scoring features>", "_quantised_row")


_quantised_row = _quantiser()
_quantised_counts_row = _quantiser(whole=True)


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #

_BUCKET_CODES = ("dpd_1_29", "dpd_30_59", "dpd_60_89", "dpd_90_179", "dpd_180_plus")

#: Every reason code a stored rule entry can name, by index (append only: stored states
#: refer to codes by position). Codes of unknown signals are stored as ``other_rule`` or
#: ``other_behaviour`` with points by severity.
REASON_VOCAB: tuple[str, ...] = (
    "other_rule",
    "other_behaviour",
    "delinquency_onset",
    "dpd_bucket_worsened",
    *_BUCKET_CODES,
    "broken_promise",
    "plan_installment_missed",
    "min_payment_only_streak",
    "payment_ratio_falling",
    "late_but_cured_repeated",
    *BEHAVIOUR_RULES,
    "large_transaction",
)
_VOCAB_INDEX = {c: i for i, c in enumerate(REASON_VOCAB)}
#: Codes whose points count in the behaviour part (the rest count as rules).
_BEHAVIOUR_CODES = frozenset((*BEHAVIOUR_RULES, "large_transaction", "other_behaviour"))
_IS_BEHAVIOUR = tuple(c in _BEHAVIOUR_CODES for c in REASON_VOCAB)
_OTHER_RULE, _OTHER_BEHAVIOUR = 0, 1

_DEFAULT_RULE_POINTS: tuple[tuple[str, float], ...] = (
    ("delinquency_onset", 40.0),
    ("dpd_bucket_worsened", 60.0),
    ("dpd_1_29", 40.0),
    ("dpd_30_59", 100.0),
    ("dpd_60_89", 140.0),
    ("dpd_90_179", 180.0),
    ("dpd_180_plus", 200.0),
    ("broken_promise", 120.0),
    ("plan_installment_missed", 120.0),
    ("min_payment_only_streak", 60.0),
    ("payment_ratio_falling", 80.0),
    ("late_but_cured_repeated", 40.0),
)
_DEFAULT_BEHAVIOUR_POINTS: tuple[tuple[str, float], ...] = (
    ("spend_spike", 30.0),
    ("velocity_burst", 20.0),
    ("new_high_risk_category", 30.0),
    ("cash_advance_surge", 60.0),
    ("installment_velocity", 20.0),
    ("utilisation_jump", 50.0),
    ("habit_drift", 10.0),
    ("application_velocity", 60.0),
    ("anomalous_transaction", 20.0),
    ("large_transaction", 20.0),
)
_DEFAULT_SEVERITY_POINTS: tuple[tuple[str, float], ...] = (
    ("info", 0.0),
    ("low", 10.0),
    ("medium", 25.0),
    ("high", 50.0),
    ("critical", 80.0),
)


class ScoreConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the score is built and the model trained (one per policy version).

    Points: ``model_weight * p`` + ``rule_weight * rules`` + ``behaviour_weight
    * behaviour``, clipped to 0..1000 (``rule_points`` lists delinquency and
    warning codes, ``behaviour_points`` behaviour codes; a code of neither
    counts by its signal's kind). A signal adds the points of its
    best-scoring reason code (signals of ``info`` severity and of
    ``ignored_kinds`` add none; an unlisted code gets ``severity_points``),
    each code's points decay with ``half_life_days`` and are capped at
    ``max_code_points``, each part at ``max_rule_points`` /
    ``max_behaviour_points``. A signal with a ``cure_codes`` reason clears the
    ``cleared_by_cure`` entries.

    Snapshots: at most one per ``snapshot_every_days``, at most
    ``max_pending`` kept (it must cover the horizon). Model: River logistic
    regression with SGD at ``learning_rate`` (weights and intercept), ``l2``
    and ``positive_weight`` on positive examples; ``prior_probability`` stands
    in for it until it has learnt ``warmup_negatives`` negatives and
    ``warmup_positives`` positives, and its first negative is
    ``warmup_days`` old.

    >>> ScoreConfig().horizon_days, ScoreConfig(snapshot_every_days=30).max_pending
    (90, 6)
    >>> ScoreConfig(max_pending=2)
    Traceback (most recent call last):
    ...
    ValueError: max_pending (2) must be at least ceil(horizon_days / snapshot_every_days) = 6
    """

    horizon_days: int = 90
    model_weight: float = 700.0
    rule_weight: float = 1.0
    behaviour_weight: float = 1.0
    rule_points: tuple[tuple[str, float], ...] = _DEFAULT_RULE_POINTS
    behaviour_points: tuple[tuple[str, float], ...] = _DEFAULT_BEHAVIOUR_POINTS
    severity_points: tuple[tuple[str, float], ...] = _DEFAULT_SEVERITY_POINTS
    behaviour_kinds: tuple[str, ...] = ("behaviour_shift", "fraud_pattern")
    ignored_kinds: tuple[str, ...] = ("label", "risk_grade", "early_warning")
    cure_codes: tuple[str, ...] = ("delinquency_cured", "dpd_bucket_improved", "plan_completed")
    cleared_by_cure: tuple[str, ...] = (
        "delinquency_onset",
        "dpd_bucket_worsened",
        *_BUCKET_CODES,
        "broken_promise",
        "plan_installment_missed",
    )
    half_life_days: float = 30.0
    max_code_points: float = 200.0
    max_rule_points: float = 300.0
    max_behaviour_points: float = 150.0
    max_rule_entries: int = 8
    snapshot_every_days: int = 15
    max_pending: int = 6
    learning_rate: float = 0.05
    l2: float = 0.01
    positive_weight: float = 1.0
    seed: int = 0
    max_factors: int = 3
    prior_probability: float = 0.05
    warmup_negatives: int = 1_000
    warmup_positives: int = 50
    warmup_days: int = 28

    def __post_init__(self) -> None:
        if self.horizon_days < 1 or self.snapshot_every_days < 1:
            raise ValueError("horizon_days and snapshot_every_days must be at least 1")
        need = -(-self.horizon_days // self.snapshot_every_days)
        if self.max_pending < need:
            raise ValueError(
                f"max_pending ({self.max_pending}) must be at least "
                f"ceil(horizon_days / snapshot_every_days) = {need}"
            )
        for name, behaviour in (("rule_points", False), ("behaviour_points", True)):
            for code, pts in getattr(self, name):
                if code not in _VOCAB_INDEX:
                    raise ValueError(f"unknown reason code {code!r} in {name}")
                if (code in _BEHAVIOUR_CODES) != behaviour:
                    raise ValueError(f"reason code {code!r} belongs in the other points table")
                if not 0.0 <= pts <= 1000.0:
                    raise ValueError(f"points of {code!r} must be within 0..1000")
        for code in self.cleared_by_cure:
            if code not in _VOCAB_INDEX:
                raise ValueError(f"unknown reason code {code!r} in cleared_by_cure")
        if self.half_life_days <= 0 or self.learning_rate <= 0 or self.positive_weight <= 0:
            raise ValueError("half_life_days, learning_rate and positive_weight must be > 0")
        if min(self.model_weight, self.rule_weight, self.behaviour_weight, self.l2) < 0:
            raise ValueError("weights and l2 must be >= 0")
        if not 0.0 <= self.prior_probability <= 1.0:
            raise ValueError("prior_probability must be within 0..1")
        if min(self.warmup_negatives, self.warmup_positives, self.warmup_days) < 0:
            raise ValueError("warm-up counts must be >= 0")
        if self.max_rule_entries < 1 or self.max_factors < 0:
            raise ValueError("max_rule_entries must be >= 1 and max_factors >= 0")


DEFAULT_CONFIG = ScoreConfig()


class _Tables:
    """Lookups derived from one config, built once per config object."""

    __slots__ = ("beh_kinds", "cfg", "cleared", "cures", "decay", "ignored", "points", "sev")

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        self.points: dict[str, tuple[int, float]] = {}
        for code, pts in cfg.rule_points:
            self.points[code] = (_VOCAB_INDEX[code], pts)
        for code, pts in cfg.behaviour_points:
            self.points[code] = (_VOCAB_INDEX[code], pts)
        self.sev = dict(cfg.severity_points)
        self.beh_kinds = frozenset(cfg.behaviour_kinds)
        self.ignored = frozenset(cfg.ignored_kinds)
        self.cures = frozenset(cfg.cure_codes)
        self.cleared = frozenset(_VOCAB_INDEX[c] for c in cfg.cleared_by_cure)
        self.decay = math.log(2.0) / cfg.half_life_days


_TABLES: dict[int, _Tables] = {}


def _tables(cfg: ScoreConfig) -> _Tables:
    t = _TABLES.get(id(cfg))
    if t is None or t.cfg is not cfg:
        if len(_TABLES) >= 64:
            _TABLES.clear()
        t = _TABLES[id(cfg)] = _Tables(cfg)
    return t



# --------------------------------------------------------------------------- #
# Model and metrics
# --------------------------------------------------------------------------- #


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class RiskModel:
    """Global online model of P(first 30+ DPD within the horizon | features).

    A River pipeline ``preprocessing.StandardScaler() |
    linear_model.LogisticRegression`` (SGD, zero-initialised weights: it is
    deterministic, so ``seed`` only identifies the model). Inputs are dicts;
    only :data:`FEATURES` are read (missing or non-finite ones count as 0), so
    extra keys never leak in. Predicting never learns (the scaler learns in
    :meth:`learn_one` only). Pickles with its learnt state, for checkpointing
    next to the consumer offsets.

    River-style detector interface (for the conformance suite):
    ``score_one(x)`` is the probability, ``learn_one(x)`` without ``y``
    reads the label from ``x[label_key]``.

    >>> m = RiskModel()
    >>> m.predict_proba_one({"max_dpd": 20.0})
    0.5
    >>> for _ in range(200):
    ...     m.learn_one({"max_dpd": 20.0, "payment_ratio": 0.2}, True)
    ...     m.learn_one({"max_dpd": 0.0, "payment_ratio": 1.0}, False)
    >>> hi = m.predict_proba_one({"max_dpd": 20.0, "payment_ratio": 0.2})
    >>> lo = m.score_one({"max_dpd": 0.0, "payment_ratio": 1.0})
    >>> hi > 0.9 > 0.1 > lo, m.n_learned, m.n_positive
    (True, 400, 200)
    """

    def __init__(
        self,
        learning_rate: float = 0.05,
        l2: float = 0.01,
        seed: int = 0,
        *,
        positive_weight: float = 1.0,
        label_key: str = "label",
    ) -> None:
        self.seed = seed
        self.label_key = label_key
        self.scaler = preprocessing.StandardScaler()
        self.lr = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate),
            loss=optim.losses.Log(weight_pos=positive_weight),
            l2=l2,
            intercept_lr=learning_rate,
        )
        self.pipeline: compose.Pipeline = self.scaler | self.lr
        self.n_learned = 0
        self.n_positive = 0
        #: Epoch day of the first negative learnt with a day (-1: none yet), for the warm-up.
        self.first_negative_day = -1
        self._explained: tuple[int, dict[bytes, tuple[float, dict[str, float]]]] | None = None

    @classmethod
    def from_config(cls, config: ScoreConfig = DEFAULT_CONFIG) -> RiskModel:
        """The model a :class:`ScoreConfig` describes.

        >>> RiskModel.from_config(ScoreConfig(seed=3)).seed
        3
        """
        return cls(
            config.learning_rate,
            config.l2,
            config.seed,
            positive_weight=config.positive_weight,
        )

    @staticmethod
    def _x(x: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in FEATURES:
            v = x.get(k)
            f = 0.0 if v is None else float(v)
            out[k] = f if math.isfinite(f) else 0.0
        return out

    def predict_proba_one(self, x: Mapping[str, Any]) -> float:
        """Probability of the positive class (no learning)."""
        z = self.scaler.transform_one(self._x(x))
        return float(self.lr.predict_proba_one(z)[True])

    def explain(self, x: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        """The probability and each feature's term of the log-odds (weight x scaled value).

        >>> RiskModel().explain({"max_dpd": 3.0})[0]
        0.5
        """
        # Memoised per model state (n_learned: the model learns through learn_one only)
        # and exact feature values (their bits): customers often share a feature vector.
        key: bytes | None = None
        if type(x) is dict and tuple(x) == FEATURES:
            # What features() returns: keyed by the values as given, which determine
            # _x(x) (a value the key refuses is keyed as _x makes it).
            try:
                key = _ROW_KEY(*x.values())
            except (TypeError, OverflowError, struct.error):
                key = None
        if key is None:
            xs = self._x(x)
            p, terms = self._explained_key(_ROW_KEY(*xs.values()), xs)
        else:
            p, terms = self._explained_key(key, x)
        return p, dict(terms)

    def _explain_row(self, row: tuple[float, ...]) -> tuple[float, dict[str, float]]:
        """:meth:`explain` of a feature row (:func:`features_row`), sharing its memo; the
        terms are the memo's own dict, which the caller must not change (the once-a-day
        re-score reads them, when at all, without the copy :meth:`explain` makes).

        >>> m = RiskModel()
        >>> m._explain_row((3.0,) + (0.0,) * 12) == m.explain({"max_dpd": 3.0})
        True
        """
        key = _ROW_KEY(*row)
        memo = self.__dict__.get("_explained")
        if memo is not None and memo[0] == self.n_learned:  # a hit, read here first
            hit = memo[1].get(key)
            if hit is not None:
                return hit
        return self._explained_key(key, row)

    def _explained_key(
        self, key: bytes, x: Mapping[str, Any] | tuple[float, ...]
    ) -> tuple[float, dict[str, float]]:
        """The memo entry of ``key`` (the bits of the feature values of ``x``, a mapping
        or a row in the order of :data:`FEATURES`), computed on a miss."""
        memo: tuple[int, dict[bytes, tuple[float, dict[str, float]]]] | None
        memo = self.__dict__.get("_explained")
        if memo is None or memo[0] != self.n_learned:
            memo = (self.n_learned, {})
            self._explained = memo
        hit = memo[1].get(key)
        if hit is None:
            xs = self._x(dict(zip(FEATURES, x, strict=True)) if isinstance(x, tuple) else x)
            z = self.scaler.transform_one(xs)
            p = float(self.lr.predict_proba_one(z)[True])
            w = self.lr.weights
            hit = (p, {k: w.get(k, 0.0) * v for k, v in z.items()})
            if len(memo[1]) >= 4_096:
                memo[1].clear()
            memo[1][key] = hit
        return hit

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_explained"}

    @property
    def weights(self) -> dict[str, float]:
        """The logistic regression's weights on the standardised features.

        >>> RiskModel().weights
        {}
        """
        return dict(self.lr.weights)

    def learn_one(
        self, x: Mapping[str, Any], y: bool | None = None, *, day: int | None = None
    ) -> None:
        """Learn one labelled example (``y=None``: the label is ``x[label_key]``).

        ``day``, the epoch day the label became known, dates the first negative
        (see :func:`model_ready`).
        """
        label = bool(x.get(self.label_key)) if y is None else bool(y)
        self.pipeline.learn_one(self._x(x), label)
        self.n_learned += 1
        self.n_positive += label
        if not label and day is not None and self.first_negative_day < 0:
            self.first_negative_day = day

    def score_one(self, x: Mapping[str, Any]) -> float:
        """Same as :meth:`predict_proba_one` (the detector protocol)."""
        return self.predict_proba_one(x)


class ReliabilityBin(NamedTuple):
    """One bin of a reliability diagram: predictions in ``[lo, hi)``."""

    lo: float
    hi: float
    n: int
    mean_predicted: float
    observed_rate: float


class ProgressiveMetrics:
    """Predict-then-learn validation of the risk model, in bounded memory.

    Fed ``update(y, p)`` with each labelled snapshot's probability *before*
    the model learns it: a rolling ROC AUC over the last ``window`` labels
    (``river.metrics.RollingROCAUC``, exact within the window), the running
    log loss (``river.metrics.LogLoss``) and Brier score, and a reliability
    table (mean predicted against observed rate) over ``bins`` equal-width
    probability bins.

    >>> pm = ProgressiveMetrics(window=100, bins=2)
    >>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.6), (False, 0.4)]:
    ...     pm.update(y, p)
    >>> pm.auc, round(pm.log_loss, 3), pm.n, pm.positives
    (1.0, 0.338, 4, 2)
    >>> [(b.n, b.mean_predicted, b.observed_rate) for b in pm.calibration()]
    [(2, 0.3, 0.0), (2, 0.75, 1.0)]
    """

    def __init__(self, window: int = 5_000, bins: int = 10) -> None:
        self.window = window
        self.rolling_auc = metrics.RollingROCAUC(window_size=window)
        self.running_log_loss = metrics.LogLoss()
        self.n = 0
        self.positives = 0
        self.brier_sum = 0.0
        self.bins = bins
        self.bin_n = [0] * bins
        self.bin_pred = [0.0] * bins
        self.bin_pos = [0] * bins

    def update(self, y: bool, p: float) -> None:
        """Record one outcome and the probability predicted for it."""
        y = bool(y)
        p = min(1.0, max(0.0, float(p)))
        self.rolling_auc.update(y, p)
        self.running_log_loss.update(y, p)
        self.n += 1
        self.positives += y
        self.brier_sum += (p - y) ** 2
        i = min(self.bins - 1, int(p * self.bins))
        self.bin_n[i] += 1
        self.bin_pred[i] += p
        self.bin_pos[i] += y
        if self.n % self.window == 0:
            self.rolling_auc.get()  # flushes River's update buffer: memory stays bounded

    @property
    def auc(self) -> float:
        """ROC AUC over the last ``window`` labels (0.5 while one class is missing)."""
        return float(self.rolling_auc.get())

    @property
    def log_loss(self) -> float:
        """Mean log loss since the start."""
        return float(self.running_log_loss.get())

    @property
    def brier(self) -> float:
        """Mean squared error of the probabilities since the start."""
        return self.brier_sum / self.n if self.n else 0.0

    def calibration(self) -> list[ReliabilityBin]:
        """Reliability bins that hold at least one prediction."""
        w = 1.0 / self.bins
        return [
            ReliabilityBin(
                round(i * w, 6),
                round((i + 1) * w, 6),
                n,
                round(self.bin_pred[i] / n, 6),
                round(self.bin_pos[i] / n, 6),
            )
            for i, n in enumerate(self.bin_n)
            if n
        ]

    def summary(self) -> dict[str, Any]:
        """Every figure as plain values (for logs and dashboards).

        >>> ProgressiveMetrics().summary()["n"]
        0
        """
        return {
            "n": self.n,
            "positives": self.positives,
            "rolling_auc": round(self.auc, 4),
            "log_loss": round(self.log_loss, 4),
            "brier": round(self.brier, 4),
            "calibration": [tuple(b) for b in self.calibration()],
        }


# --------------------------------------------------------------------------- #
# Per-customer state and result
# --------------------------------------------------------------------------- #


class ScoreState(Struct, frozen=True, array_like=True, gc=False):
    """One customer's scoring state (immutable; msgpack array; append fields at the end).

    ``pending``: snapshots awaiting a label, oldest first, each ``(day,
    *features)`` with the :data:`FEATURES` in fixed point (``_SCALES``). ``rules``: ``(code
    index in REASON_VOCAB, day, points on that day)``. ``reached_day``: day of
    the first positive label (no snapshots afterwards). Grades are indices
    into ``alerts.grades.GRADES`` (-1: none yet).

    >>> len(encode_state(ScoreState()))
    9
    """

    v: int = FEATURE_VERSION
    pending: tuple[tuple[int, ...], ...] = ()
    rules: tuple[tuple[int, int, int], ...] = ()
    last_snapshot_day: int = -1
    reached_day: int = -1
    last_score: int = -1
    last_grade: int = -1
    grade_day: int = -1


_FRESH = ScoreState()
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ScoreState)


def encode_state(state: ScoreState) -> bytes:
    """The msgpack bytes of a state.

    >>> decode_state(encode_state(ScoreState(last_score=420))).last_score
    420
    """
    return _ENCODER.encode(state)


def decode_state(data: bytes) -> ScoreState:
    """A state from :func:`encode_state` bytes."""
    return _DECODER.decode(data)


def _current(state: ScoreState | None) -> ScoreState:
    if state is None:
        return _FRESH
    if state.v != FEATURE_VERSION:  # snapshots of another feature layout cannot be learnt
        return msgspec.structs.replace(state, v=FEATURE_VERSION, pending=())
    return state


class ScoreResult(Struct, frozen=True, kw_only=True):
    """A customer's score and why.

    ``score`` = ``model_points + rule_points + behaviour_points`` clipped to
    0..1000; ``probability`` is the one in ``model_points`` (1.0 once 30+ DPD,
    the prior while the model warms up: ``model_ready`` False),
    ``model_probability`` what the model alone said. ``factors`` are the top
    contributions in points, largest first (``Evidence.value`` = points).
    """

    score: int
    probability: float
    model_probability: float
    model_points: int
    rule_points: int
    behaviour_points: int
    factors: list[Evidence]
    snapshot_taken: bool = False
    model_ready: bool = True


# --------------------------------------------------------------------------- #
# Plain-words factors
# --------------------------------------------------------------------------- #

_CODE_TEXT = {
    "other_rule": "other risk signal",
    "other_behaviour": "other behaviour signal",
    "delinquency_onset": "fell past due",
    "dpd_bucket_worsened": "moved to a worse days-past-due bucket",
    "dpd_1_29": "1-29 days past due",
    "dpd_30_59": "30-59 days past due",
    "dpd_60_89": "60-89 days past due",
    "dpd_90_179": "90-179 days past due",
    "dpd_180_plus": "180+ days past due",
    "broken_promise": "broke a restructuring plan",
    "plan_installment_missed": "missed a plan installment",
    "min_payment_only_streak": "minimum payment only, statements in a row",
    "payment_ratio_falling": "share of the amount due paid is falling",
    "late_but_cured_repeated": "repeatedly paid late, then caught up",
    "spend_spike": "spend spike against the 90-day norm",
    "velocity_burst": "burst of card transactions",
    "new_high_risk_category": "first spending in a high-risk category",
    "cash_advance_surge": "surge of cash advances",
    "installment_velocity": "several installment conversions",
    "utilisation_jump": "utilisation jump",
    "habit_drift": "typical transaction amount shifted",
    "application_velocity": "several credit applications in a short time",
    "anomalous_transaction": "transaction unlike the portfolio",
    "large_transaction": "unusually large transaction",
}


def _n(v: float) -> str:
    return f"{v:g}"


def _feature_text(name: str, v: float) -> str:
    """Plain words for a feature value."""
    pct = f"{100.0 * v:.0f}%"
    if name == "max_dpd":
        return f"{_n(v)} days past due"
    if name == "overdue_accounts":
        return f"{_n(v)} account(s) past due"
    if name == "min_only_cycles":
        return f"{_n(v)} minimum-only payments in the last {_MIN_ONLY_WINDOW} statements"
    if name == "payment_ratio":
        return f"paid {pct} of the amount due over the last {_RATIO_WINDOW} due dates"
    if name == "late_cycles":
        return f"{_n(v)} of the last {_LATE_WINDOW} due dates paid late"
    if name == "late_cured":
        return f"{_n(v)} late payments caught up later, of the last {_LATE_WINDOW}"
    if name == "utilisation":
        return f"balance at {pct} of the credit limit"
    if name == "cash_share_7d":
        return f"cash advances are {pct} of spend in the last 7 days"
    if name == "cash_share_90d":
        return f"cash advances are {pct} of spend over 90 days"
    if name == "spend_ratio":
        return f"spend in the last 7 days is {v:.1f}x the 90-day norm"
    if name == "applications_30d":
        return f"{_n(v)} credit applications in the last 30 days"
    if name == "open_accounts":
        return f"{_n(v)} open credit accounts"
    return f"no card spending for {_n(v)} days"


def _day_label(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #


def _decayed(points: float, since: int, day: int, rate: float) -> float:
    return points if day <= since else points * math.exp(-rate * (day - since))


def _apply_signals(
    rules: tuple[tuple[int, int, int], ...], signals: Iterable[Signal], t: _Tables, day: int
) -> tuple[tuple[int, int, int], ...]:
    """Add the signals' points to the per-code entries (decayed to ``day``), bounded."""
    if isinstance(signals, (list, tuple)) and not signals:
        return rules  # what the loop below returns when nothing changed
    cfg = t.cfg
    entries = {code: (d, float(p)) for code, d, p in rules}
    changed = False
    for sig in signals:
        if sig.kind in t.ignored:
            continue
        if any(c in t.cures for c in sig.reason_codes):
            for code in [c for c in entries if c in t.cleared]:
                del entries[code]
                changed = True
            continue
        if sig.severity == "info":
            continue
        best: tuple[int, float] | None = None
        for c in sig.reason_codes:
            hit = t.points.get(c)
            if hit is not None and (best is None or hit[1] > best[1]):
                best = hit
        if best is None:
            other = _OTHER_BEHAVIOUR if sig.kind in t.beh_kinds else _OTHER_RULE
            best = (other, t.sev.get(sig.severity, 0.0))
        code, add = best
        if add <= 0.0:
            continue
        since, pts = entries.get(code, (day, 0.0))
        pts = min(cfg.max_code_points, _decayed(pts, since, day, t.decay) + add)
        entries[code] = (max(since, day), pts)
        changed = True
    if not changed:
        return rules
    live = [
        (code, d, round(p))
        for code, (d, p) in entries.items()
        if _decayed(p, d, day, t.decay) >= 0.5
    ]
    if len(live) > cfg.max_rule_entries:
        live.sort(key=lambda e: (-_decayed(e[2], e[1], day, t.decay), e[0]))
        live = live[: cfg.max_rule_entries]
    live.sort()
    return tuple(live)


def model_ready(model: RiskModel, config: ScoreConfig, day: int) -> bool:
    """Whether the model may be used on epoch day ``day`` (else: the prior).

    It must have learnt ``warmup_positives`` positives, ``warmup_negatives``
    negatives, and negatives for ``warmup_days`` (counted from the first
    negative learnt with a day; ``warmup_days=0`` skips this).

    >>> m = RiskModel()
    >>> model_ready(m, ScoreConfig(), 100), model_ready(m, ScoreConfig(
    ...     warmup_negatives=0, warmup_positives=0, warmup_days=0), 100)
    (False, True)
    >>> m.learn_one({}, False, day=100)
    >>> cfg = ScoreConfig(warmup_negatives=1, warmup_positives=0, warmup_days=28)
    >>> model_ready(m, cfg, 127), model_ready(m, cfg, 128)
    (False, True)
    """
    if (
        model.n_positive < config.warmup_positives
        or model.n_learned - model.n_positive < config.warmup_negatives
    ):
        return False
    if config.warmup_days <= 0:
        return True
    first = model.first_negative_day
    return first >= 0 and day - first >= config.warmup_days


def score(
    state: ScoreState | None,
    feats: Mapping[str, float],
    signals: Sequence[Signal],
    model: RiskModel,
    config: ScoreConfig,
    day: int,
) -> tuple[ScoreState, ScoreResult]:
    """Score a customer at epoch day ``day``; return the new state and the result.

    ``feats`` come from :func:`features`; ``signals`` are the detector signals
    raised since the previous call (their points are added, decayed from
    ``day``). Never learns and never mutates its inputs. Records a pending
    snapshot when none was taken in the last ``snapshot_every_days``, the
    customer has not reached 30+ DPD and the state's ``reached_day`` is unset;
    if ``max_pending`` are already waiting (:func:`expire` not called), the
    oldest is dropped unlearnt.

    >>> cfg = ScoreConfig(warmup_negatives=0, warmup_positives=0, warmup_days=0)  # no warm-up
    >>> sig = Signal(kind="warning", rule_id="warn-min-payment-streak", rule_version=1,
    ...              severity="low", reason_codes=["min_payment_only_streak"], evidence=[])
    >>> feats = features(None, LedgerSummary(min_only=3), None, 20_000)
    >>> st, res = score(None, feats, [sig], RiskModel(), cfg, 20_000)
    >>> res.score, res.model_points, res.rule_points, [e.text for e in res.factors]
    (410, 350, 60, ['minimum payment only, statements in a row, 2024-10-04 (+60 points)'])
    >>> st2, res2 = score(st, feats, [], RiskModel(), cfg, 20_030)  # one half-life later
    >>> res2.rule_points, len(st2.pending), res2.snapshot_taken
    (30, 2, True)
    """
    row = tuple([0.0 if (v := feats.get(k)) is None else float(v) for k in FEATURES])
    return score_row(state, row, signals, model, config, day)


def score_row(
    state: ScoreState | None,
    row: tuple[float, ...],
    signals: Sequence[Signal],
    model: RiskModel,
    config: ScoreConfig,
    day: int,
) -> tuple[ScoreState, ScoreResult]:
    """:func:`score` of the feature values in the order of :data:`FEATURES` (what
    :func:`features_row` returns): the engine's once-a-day re-score, without a dict.

    >>> cfg = ScoreConfig(warmup_negatives=0, warmup_positives=0, warmup_days=0)
    >>> row = features_row(None, LedgerSummary(min_only=3), None, 20_000)
    >>> score_row(None, row, [], RiskModel(), cfg, 20_000) == score(
    ...     None, dict(zip(FEATURES, row)), [], RiskModel(), cfg, 20_000)
    True
    """
    t = _tables(config)
    s = _current(state)
    rules = _apply_signals(s.rules, signals, t, day) if signals else s.rules
    p_model, terms = model._explain_row(row)  # terms: read only
    dpd = row[0]  # max_dpd
    delinquent = dpd >= LABEL_DPD
    ready = model_ready(model, config, day)
    p = 1.0 if delinquent else (p_model if ready else config.prior_probability)
    model_pts = config.model_weight * p
    rule_pts = beh_pts = 0.0
    candidates: list[tuple[float, int, Evidence]] = []
    for code, since, pts in rules:
        now = _decayed(pts, since, day, t.decay)
        if _IS_BEHAVIOUR[code]:
            beh_pts += now
        else:
            rule_pts += now
        weight = config.behaviour_weight if _IS_BEHAVIOUR[code] else config.rule_weight
        shown = round(now * weight)
        if shown >= 1:
            name = REASON_VOCAB[code]
            text = f"{_CODE_TEXT.get(name, name)}, {_day_label(since)} (+{shown} points)"
            candidates.append(
                (
                    now * weight,
                    len(candidates),
                    Evidence(code=name, text=text, value=shown, unit="points"),
                )
            )
    rule_part = config.rule_weight * min(rule_pts, config.max_rule_points)
    beh_part = config.behaviour_weight * min(beh_pts, config.max_behaviour_points)
    if delinquent:
        text = _feature_text("max_dpd", dpd)
        shown = round(model_pts)
        candidates.append(
            (
                model_pts,
                -1,
                Evidence(
                    code="max_dpd",
                    text=f"{text}, already {LABEL_DPD}+ (+{shown} points)",
                    value=shown,
                    unit="points",
                ),
            )
        )
    elif ready:
        logit = math.log(p_model / (1.0 - p_model)) if 0.0 < p_model < 1.0 else 0.0
        weights = model.weights
        for name, term in terms.items():
            if term <= 0.0 or weights.get(name, 0.0) * _DIRECTION[name] < 0.0:
                continue
            gain = config.model_weight * (p_model - _sigmoid(logit - term))
            shown = round(gain)
            if shown >= 1:
                text = _feature_text(name, row[_FEATURE_INDEX[name]])
                candidates.append(
                    (
                        gain,
                        -100 + _FEATURE_INDEX[name],
                        Evidence(
                            code=name, text=f"{text} (+{shown} points)", value=shown, unit="points"
                        ),
                    )
                )
    if len(candidates) > 1:
        candidates.sort(key=lambda c: (-c[0], c[1]))
    total = model_pts + rule_part + beh_part
    value = round(min(1000.0, max(0.0, total)))
    pending = s.pending
    last_snap = s.last_snapshot_day
    taken = (
        not delinquent
        and s.reached_day < 0
        and (last_snap < 0 or day - last_snap >= config.snapshot_every_days)
    )
    if taken:
        # _fix(v, q) of each value, inlined
        snap = (day, *[round(v * q) if _isfinite(v) else 0
                       for v, q in zip(row, _SCALES, strict=True)])
        pending = (*pending, snap)[-config.max_pending :]
        last_snap = day
    new = msgspec.structs.replace(
        s, pending=pending, rules=rules, last_snapshot_day=last_snap, last_score=value
    )
    result = ScoreResult(
        score=value,
        probability=p,
        model_probability=p_model,
        model_points=round(model_pts),
        rule_points=round(rule_part),
        behaviour_points=round(beh_part),
        factors=[c[2] for c in candidates[: config.max_factors]] if candidates else [],
        snapshot_taken=taken,
        model_ready=ready,
    )
    return new, result


# --------------------------------------------------------------------------- #
# Delayed labels
# --------------------------------------------------------------------------- #


def _snapshot_features(snap: tuple[int, ...]) -> dict[str, float]:
    return {k: snap[i + 1] / q for i, (k, q) in enumerate(zip(FEATURES, _SCALES, strict=True))}


def _learn(
    snap: tuple[int, ...],
    y: bool,
    model: RiskModel,
    progress: ProgressiveMetrics | None,
    day: int,
) -> None:
    x = _snapshot_features(snap)
    if progress is not None:
        progress.update(y, model.predict_proba_one(x))
    model.learn_one(x, y, day=day)


def expire(
    state: ScoreState | None,
    day: int,
    model: RiskModel,
    progress: ProgressiveMetrics | None,
    config: ScoreConfig,
    *,
    learn: bool = True,
) -> ScoreState:
    """Learn, as negatives, the snapshots whose horizon has passed by ``day``.

    A snapshot taken on day ``s`` is negative once ``day - s >= horizon_days``
    with no positive label. Each is first scored into ``progress`` (if given).
    Returns the input state object itself when nothing expired.

    ``learn=False`` (an event the model learned before a restart) drops the
    expired snapshots from the state all the same, but neither ``model`` nor
    ``progress`` learns them.

    >>> cfg, m = ScoreConfig(), RiskModel()
    >>> st = ScoreState(pending=((100, *[0] * len(FEATURES)), (150, *[0] * len(FEATURES))))
    >>> [snap[0] for snap in expire(st, 190, m, None, cfg).pending], m.n_learned, m.n_positive
    ([150], 1, 0)
    >>> expire(st, 100, m, None, cfg) is st
    True
    >>> [snap[0] for snap in expire(st, 250, m, None, cfg, learn=False).pending], m.n_learned
    ([], 1)
    """
    s = _current(state)
    pending = s.pending
    due = 0
    for snap in pending:
        if day - snap[0] < config.horizon_days:
            break
        due += 1
    if not due:
        return s
    if learn:
        for snap in pending[:due]:
            if len(snap) == _N_FEATURES + 1:
                _learn(snap, False, model, progress, day)
    return msgspec.structs.replace(s, pending=pending[due:])


def expire_due(state: ScoreState | None, day: int, config: ScoreConfig) -> bool:
    """Whether :func:`expire` at ``day`` has a snapshot to learn or drop; else it returns
    the state as it is (``None``: the fresh state, and a state of another feature layout
    without its snapshots, which :func:`score` makes of either all the same).

    >>> st = ScoreState(pending=((100, *[0] * len(FEATURES)),))
    >>> expire_due(st, 189, ScoreConfig()), expire_due(st, 190, ScoreConfig())
    (False, True)
    """
    return (state is not None and bool(state.pending)
            and day - state.pending[0][0] >= config.horizon_days)


def on_label(
    state: ScoreState | None,
    positive: bool,
    day: int,
    model: RiskModel,
    progress: ProgressiveMetrics | None,
    config: ScoreConfig,
    *,
    learn: bool = True,
) -> ScoreState:
    """Learn the pending snapshots from a label that arrived about day ``day``.

    ``positive``: the customer reached 30+ DPD on ``day`` (pass the day it was
    reached, e.g. the ledger label's ``reached_on``): snapshots taken within
    ``horizon_days`` before it are learnt as positive, older ones as negative
    (their horizon had passed), later ones dropped (taken once already
    delinquent); ``reached_day`` is set and no more snapshots are taken.

    Not positive: the customer is confirmed not to reach 30+ DPD within any
    pending snapshot's horizon (e.g. the account closed in good standing):
    every pending snapshot is learnt as negative. Each learnt snapshot is
    first scored into ``progress`` (predict, then learn) and learnt once.

    ``learn=False`` (an event the model learned before a restart) changes the
    state exactly the same way, but neither ``model`` nor ``progress`` learns.

    >>> cfg, m = ScoreConfig(), RiskModel()
    >>> zeros = [0] * len(FEATURES)
    >>> st = ScoreState(pending=((10, *zeros), (40, *zeros), (120, *zeros)))
    >>> new = on_label(st, True, 110, m, None, cfg)
    >>> new.pending, new.reached_day, m.n_learned, m.n_positive
    ((), 110, 2, 1)
    >>> on_label(new, True, 130, m, None, cfg).reached_day, m.n_learned
    (110, 2)
    >>> on_label(st, True, 110, m, None, cfg, learn=False) == new, m.n_learned
    (True, 2)
    """
    s = _current(state)
    if not positive:
        if not s.pending:
            return s
        if learn:
            for snap in s.pending:
                if len(snap) == _N_FEATURES + 1:
                    _learn(snap, False, model, progress, day)
        return msgspec.structs.replace(s, pending=())
    if learn:
        for snap in s.pending:
            age = day - snap[0]
            if age < 0 or len(snap) != _N_FEATURES + 1:
                continue  # taken after the event: not a prediction of it
            _learn(snap, age < config.horizon_days, model, progress, day)
    reached = day if s.reached_day < 0 else min(s.reached_day, day)
    if not s.pending and reached == s.reached_day:
        return s
    return msgspec.structs.replace(s, pending=(), reached_day=reached)


def labels_from_signals(signals: Iterable[Signal]) -> list[tuple[bool, int]]:
    """``(positive, day)`` for each ``reached_30dpd`` label among detector signals.

    The day is the label's ``reached_on`` evidence (the day DPD reached 30),
    which may be earlier than the event that revealed it.

    >>> from detectors.delinquency import AccountLedger, Due, advance
    >>> _, sigs = advance(AccountLedger("a1", 100, dues=[Due("i1", 100, 10_000)]), 140)
    >>> labels_from_signals(sigs)
    [(True, 130)]
    """
    out: list[tuple[bool, int]] = []
    for sig in signals:
        if sig.kind != "label" or "reached_30dpd" not in sig.reason_codes:
            continue
        day: int | None = None
        for ev in sig.evidence:
            if ev.code == "reached_on" and isinstance(ev.value, str):
                day = epoch_day(dt.date.fromisoformat(ev.value))
        if day is not None:
            out.append((True, day))
    return out


def label_from_outcome(label: str, day: int) -> tuple[bool, int] | None:
    """The training label of a confirmed ``Outcome`` label on epoch day ``day``.

    ``default`` and ``charge_off`` are positive (a customer that defaults has
    reached 30+ DPD; if the ledger label came first this learns nothing
    new); fraud and cure outcomes are not credit labels.

    >>> label_from_outcome("default", 20_100), label_from_outcome("fraud_confirmed", 20_100)
    ((True, 20100), None)
    """
    if label in ("default", "charge_off"):
        return True, day
    return None


# --------------------------------------------------------------------------- #
# Conformance
# --------------------------------------------------------------------------- #


def _sample_features(rng: random.Random) -> dict[str, Any]:
    """A random feature vector and its label (risk rising with DPD and minimum payments)."""
    dpd = rng.choice((0, 0, 0, 0, 3, 12, 25))
    x: dict[str, Any] = {
        "max_dpd": float(dpd),
        "overdue_accounts": float(dpd > 0),
        "min_only_cycles": float(rng.randint(0, 4)),
        "payment_ratio": round(rng.random(), 2),
        "late_cycles": float(rng.randint(0, 3)),
        "late_cured": 0.0,
        "utilisation": round(rng.random() * 1.2, 2),
        "cash_share_7d": round(rng.random() * 0.3, 2),
        "cash_share_90d": round(rng.random() * 0.2, 2),
        "spend_ratio": round(rng.lognormvariate(0.0, 0.4), 2),
        "applications_30d": float(rng.randint(0, 2)),
        "open_accounts": float(rng.randint(1, 3)),
        "inactive_days": float(rng.randint(0, 10)),
    }
    logit = -3.0 + 0.12 * dpd + 0.5 * x["min_only_cycles"] - 1.5 * x["payment_ratio"]
    x["label"] = rng.random() < _sigmoid(logit)
    return x


#: The risk model, checked by the conformance suite.
CONFORMANCE_SPECS: list[ConformanceSpec] = [
    ConformanceSpec(
        "risk_model",
        RiskModel,
        lambda seed: RiskModel(seed=seed),
        6_000,
        sample=_sample_features,
    )
]
