"""Per-account repayment ledger: days past due, buckets, cures and early warnings.

Pure and event-time only: no Kafka, no Faust, no wall clock. The stream layer
keeps one :class:`AccountLedger` per account (msgpack, a few hundred bytes) and
calls

* :func:`apply` for every repayment event of the account,
* :func:`advance` from a watermark sweep when event time passes the day
  returned by :func:`next_check_day` (kept in a :class:`DueIndex`, so no sweep
  ever scans all accounts),
* :func:`days_past_due` / :func:`snapshot` to read the state.

All days are *epoch days* (days since 1970-01-01, UTC); see :func:`epoch_day`.

How the ledger works
--------------------

**Dues** (installments, statements, plan installments) are kept while they
matter: open, or paid by a payment that could still be reversed. Each due
records ``base`` (paid by finalised payments), ``paid`` (total) and ``ontime``
(paid by its due date plus grace, as of that day). A statement's obligation
is its minimum payment; it absorbs payments up to its balance until a newer
statement is issued, then only ``max(minimum, what was paid by then)`` (the
unpaid balance lives on in the newer statement). A due is dropped (its paid
amount added to ``retired``) once it is settled, final and its cycle recorded;
when the statement that rolled an older, kept one is dropped, the older one's
cap is flagged final, so it is never recomputed from a later statement's issue
(the state after a settle does not depend on whether another settle follows,
i.e. on the sweep schedule).

**Payments and reversals** are kept as a short journal of *live items* in a
canonical order (event time, then a hash of the event id). The allocation is a
left fold over that journal, recomputed on every change:

* a payment pays open dues oldest-due-first (due date, then due id), partial
  payments included; what is left is credit;
* credit (first in, first out) pays dues that appear or re-open later;
* a reversal takes back exactly what the reversed payment had paid, newest
  first (its unused credit, then its allocations in reverse), and the credit
  pool then refills the re-opened dues.

Because the fold only depends on the *set* of events, a late or out-of-order
event simply lands at its place in the journal and the allocation is the same
as if it had arrived in order. A payment leaves the journal (is *finalised*
into ``base``) once it is older than ``reversal_window_days +
lateness_days``, together with its reversals; the hashes of finalised events
are kept for idempotency. What finalised money paid on dues due after
``clock - lateness_days`` (up to the first such due it leaves unfilled) stays
``floating``, given back to those dues oldest-first on every fold, so a due
arriving late still sorts before them. The part of it paid after the current
restructuring plan (``float_post``, fixed when the money starts floating) is
never given to a due the plan superseded, whenever the ledger is settled.

**Deferrals** stop the DPD clock for their days; a crisis-wide pause is passed
in by the caller as ``pauses`` (list of ``(start_day, end_day_exclusive |
None)``), so it never has to be written into millions of ledgers.

**Restructuring plans** supersede every due issued before the plan (those stop
counting as overdue); all plan installments become dues when it is agreed
(about 35 bytes of state each).

**Cycles and warnings.** At due date + grace + ``lateness_days`` each due's
cycle is recorded (paid/due ratio in percent -- for statements, payments dated
between issue and due date over the balance, counted whether or not they are
still in the journal --, minimum-only, late; cured is
set while a late due is paid up; the due keeps its record's code, so the mark
goes to its own record when two dues share a due date). Warnings fire on a rising edge: a streak of
``min_only_streak`` minimum-only statements, a paid/due ratio falling over
``ratio_cycles`` cycles to at most ``ratio_threshold_pct``, and
``late_cured_count`` late-but-cured cycles within ``late_cured_window``.

**Announcements** -- the announced bucket, bucket history, labels, warning
flags and the count of bucket moves -- record what has been signalled (a bucket
move's discriminator is ``<bucket>@<day>#<move number>``, so two moves to one
bucket on one day get distinct ids); a late event can add a signal, not
retract one. :func:`apply` first advances time to the event's day (as
:func:`advance` would), so a bucket crossed between sweeps is still
announced, dated on the day it was crossed.

Limits (documented, tested where stated):

* Order independence (property-tested, with finalisation and retirement
  happening along the way): applying the same events in any arrival order,
  each event arriving less than ``lateness_days`` after the newest event
  already applied, gives the same ledger apart from the announcement fields.
  Events later than that still count, but land after the finalised part of the
  journal, and cycle statistics already recorded are not revised. A due that
  sorts before dues already paid by finalised money, and arrives after a hole
  was left among them, does not take that money over.
* Idempotency is structural (due ids, payment and deferral ids in the ledger)
  plus a bounded memory of ``max_seen`` hashes (64-bit) of finalised events,
  retired dues and pruned deferrals: a duplicate re-delivered after that
  memory rolled over is counted again (a retired due would re-open).
* More than ``max_items`` live payments/reversals force early finalisation; a
  reversal whose payment is forced out is then netted into it (the payment's
  remaining allocation shrinks oldest-first instead of exactly).
* A reversal of a payment no longer in the journal (or dated more than
  ``reversal_window_days`` after it) becomes a new due on the reversal day; a
  reversal whose payment never shows up becomes such a due once it is final.
* Amounts re-opened on superseded (pre-plan) dues are not demanded again.
* Two restructuring plans that arrive out of order keep the newer one but may
  leave slightly different superseded history. A newer plan replaces the
  older one's remaining schedule.
* A correction of a due (same due id, newer event) after the due was retired
  is ignored. A due retires on the first settle of a day on which it is paid by
  final money and its cycle is recorded -- a sweep to that day or any event of
  it, the correction itself included (it is applied after the settle, as after
  a sweep) --, so a correction dated that day or later is ignored in any order.
  One dated before that day but arriving after it (within the lateness) is
  ignored too, although it counts in event-time order: an exception to order
  independence.
* One currency per account is assumed; currencies are not converted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import itertools
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, Final

import msgspec
from msgspec import Struct, field
from msgspec.structs import replace

from detectors.base import Evidence, Severity, Signal
from schemas.models import (
    DeferralEnded,
    DeferralStarted,
    InstallmentDue,
    PaymentReceived,
    PaymentReversed,
    PlanAgreed,
    StatementDue,
)

__all__ = [
    "DEFAULT_CONFIG",
    "AccountLedger",
    "Bucket",
    "DelinquencyConfig",
    "Due",
    "DueIndex",
    "Pause",
    "advance",
    "apply",
    "bucket_history",
    "bucket_index",
    "days_past_due",
    "decode_ledger",
    "encode_ledger",
    "epoch_day",
    "next_check_day",
    "next_reminder_day",
    "on_time_streak",
    "snapshot",
    "upcoming_dues",
]

#: Seconds per day.
DAY: Final = 86_400
_EPOCH_ORDINAL: Final = 719_163  # dt.date(1970, 1, 1).toordinal()
_NEVER: Final = -(10**9)  # "before any due date" for credit applied up front

# Due kinds.
INSTALLMENT: Final = 0
STATEMENT: Final = 1
PLAN_INSTALLMENT: Final = 2
REVERSAL_CARRY: Final = 3

# Due flags.
_CLOSED: Final = 1  # cycle statistics recorded
_LATE: Final = 2  # short at due date + grace
_CURED: Final = 4  # late, then paid: counted as late-but-cured
_CAPPED: Final = 8  # statement whose ``cap`` is final (its rolling statement was retired)

# Ledger announcement flags.
_F_L30: Final = 1
_F_L90: Final = 2
_F_WMIN: Final = 4
_F_WRATIO: Final = 8
_F_WLATE: Final = 16

# Plan announcement flags.
_P_BROKEN: Final = 1
_P_DONE: Final = 2

# Cycle record bits: ratio in percent | flags.
_C_RATIO: Final = 127
_C_MIN: Final = 128
_C_LATE: Final = 256
_C_CURED: Final = 512
_C_STMT: Final = 1024

#: A pause of the DPD clock: ``(start_day, end_day_exclusive)``; ``None`` = open-ended.
Pause = tuple[int, int | None]


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


class Bucket(Struct, frozen=True):
    """A delinquency bucket: DPD from ``lo`` to ``hi`` inclusive (``None`` = no upper end).

    >>> Bucket("dpd_30_59", 30, 59).hi
    59
    """

    name: str
    lo: int
    hi: int | None = None


def _default_buckets() -> list[Bucket]:
    """The standard ladder: current, 1-29, 30-59, 60-89, 90-179, 180+.

    >>> [b.name for b in _default_buckets()][:3]
    ['current', 'dpd_1_29', 'dpd_30_59']
    """
    return [
        Bucket("current", 0, 0),
        Bucket("dpd_1_29", 1, 29),
        Bucket("dpd_30_59", 30, 59),
        Bucket("dpd_60_89", 60, 89),
        Bucket("dpd_90_179", 90, 179),
        Bucket("dpd_180_plus", 180, None),
    ]


def _check_buckets(buckets: Sequence[Bucket]) -> None:
    """Raise ``ValueError`` unless ``buckets`` tile ``0..inf`` in order, names unique.

    >>> _check_buckets([Bucket("current", 0, 0), Bucket("late", 1)])
    >>> _check_buckets([Bucket("current", 0, 0), Bucket("late", 2)])
    Traceback (most recent call last):
    ...
    ValueError: bucket 'late' must start at 1
    """
    if not buckets:
        raise ValueError("at least one bucket is required")
    expect = 0
    for i, b in enumerate(buckets):
        if b.lo != expect:
            raise ValueError(f"bucket {b.name!r} must start at {expect}")
        last = i == len(buckets) - 1
        if b.hi is None:
            if not last:
                raise ValueError(f"only the last bucket may be open-ended ({b.name!r})")
        else:
            if last:
                raise ValueError(f"the last bucket must be open-ended ({b.name!r})")
            if b.hi < b.lo:
                raise ValueError(f"bucket {b.name!r} ends before it starts")
            expect = b.hi + 1
    if buckets[0].hi != 0 and len(buckets) > 1:
        raise ValueError("the first bucket must be 'current' (0..0)")
    if len({b.name for b in buckets}) != len(buckets):
        raise ValueError("bucket names must be unique")


class DelinquencyConfig(Struct, frozen=True, kw_only=True):
    """Ledger and warning parameters (part of the policy document).

    >>> cfg = DelinquencyConfig(grace_days=3,
    ...     buckets_by_product={"credit_card": [Bucket("current", 0, 0), Bucket("late", 1)]})
    >>> [b.name for b in cfg.buckets_for("credit_card")], cfg.buckets_for("personal_loan")[1].name
    (['current', 'late'], 'dpd_1_29')
    """

    #: Unpaid amounts up to this (minor units) do not count as overdue.
    tolerance_minor: int = 500
    #: Days after the due date before a due counts as past due.
    grace_days: int = 0
    buckets: list[Bucket] = field(default_factory=_default_buckets)
    buckets_by_product: dict[str, list[Bucket]] = field(default_factory=dict)
    #: Consecutive minimum-only statement cycles that raise a warning.
    min_only_streak: int = 3
    #: A payment up to minimum * (1 + pct/100) counts as "minimum only".
    min_only_margin_pct: int = 10
    #: Cycles over which a falling paid/due ratio is detected ...
    ratio_cycles: int = 3
    #: ... and the ratio (percent) the latest cycle must be at or below.
    ratio_threshold_pct: int = 50
    #: Late-but-cured cycles, within the last ``late_cured_window`` cycles, that warn.
    late_cured_count: int = 2
    late_cured_window: int = 6
    #: Allowed lateness of events (days); also delays cycle statistics by this much.
    lateness_days: int = 7
    #: Payments stay reversible (kept in the journal) this long after their day.
    reversal_window_days: int = 60
    #: Bounds that keep the ledger small.
    max_items: int = 12
    max_history: int = 12
    max_cycles: int = 12
    max_seen: int = 12
    max_deferrals: int = 8
    #: While an open-ended pause (e.g. a crisis window without end) blocks the
    #: DPD clock, :func:`next_check_day` still asks for a look this often.
    paused_recheck_days: int = 30
    rule_version: int = 1

    def __post_init__(self) -> None:
        _check_buckets(self.buckets)
        for buckets in self.buckets_by_product.values():
            _check_buckets(buckets)
        if self.tolerance_minor < 0 or self.grace_days < 0 or self.lateness_days < 0:
            raise ValueError("tolerance, grace and lateness must be >= 0")
        if self.reversal_window_days < 0 or self.max_items < 1 or self.max_seen < 1:
            raise ValueError("reversal window must be >= 0, max_items and max_seen >= 1")
        if min(self.min_only_streak, self.ratio_cycles, self.late_cured_count) < 1:
            raise ValueError("warning thresholds must be >= 1")
        if self.ratio_cycles < 2:
            raise ValueError("ratio_cycles must be >= 2 to see a trend")

    def buckets_for(self, product: str) -> list[Bucket]:
        """The bucket ladder for ``product`` (the default ladder if not overridden).

        >>> len(DelinquencyConfig().buckets_for("anything"))
        6
        """
        return self.buckets_by_product.get(product, self.buckets)


DEFAULT_CONFIG: Final = DelinquencyConfig()


# --------------------------------------------------------------------------- #
# State
# --------------------------------------------------------------------------- #


class Due(Struct, array_like=True, frozen=True, gc=False):
    """One due of the account (array-encoded).

    ``minimum`` is the statement minimum (0 for other kinds); ``key`` the event
    time (s) of the due's event, or of the plan for plan installments; ``cap``
    what a statement can still absorb once a newer statement was issued (-1:
    not rolled, the full ``amount``). ``period_paid`` (statements) is what
    payments dated from its issue to its due date + grace paid in all, net of
    their reversals, counted when they are finalised (the live journal holds
    the rest), so the cycle's paid/due ratio does not depend on when that
    happened; 0 once the cycle is recorded (trailing field: older states decode
    with 0). ``cycle_day`` is
    the due date its cycle was recorded under, if a correction moved the due
    date after that (-1: ``day``; trailing field). ``cycle_code`` is the record
    written for its cycle, without the cured bit (-1: not recorded, or recorded
    by an older version; trailing field), so the cured mark goes to this due's
    own record when another due shares its due date.

    >>> Due("i1", 20000, 10000).kind == INSTALLMENT
    True
    """

    id: str
    day: int
    amount: int
    minimum: int = 0
    kind: int = INSTALLMENT
    key: int = 0
    flags: int = 0
    base: int = 0
    base_ontime: int = 0
    paid: int = 0
    ontime: int = 0
    cap: int = -1
    period_paid: int = 0
    cycle_day: int = -1
    cycle_code: int = -1


class Item(Struct, array_like=True, frozen=True, gc=False):
    """A live journal item: a payment (``target == 0``) or a reversal of ``target``.

    >>> Item(h=7, key=1_700_000_000, amount=500).target
    0
    """

    h: int
    key: int
    amount: int
    target: int = 0


class Deferral(Struct, array_like=True, frozen=True, gc=False):
    """A payment pause: days ``[start, min(stop, end))`` are paused; ``-1`` = unknown/open.

    >>> Deferral(h=1, start=10, stop=20).end
    -1
    """

    h: int
    start: int = -1
    stop: int = -1
    end: int = -1


class Plan(Struct, array_like=True, frozen=True, gc=False):
    """The current restructuring plan (its ``n`` installments are dues ``{id}#{i}``).

    >>> Plan("p1", 1_700_000_000, 12).n
    12
    """

    id: str
    key: int
    n: int
    flags: int = 0


class AccountLedger(Struct, array_like=True, frozen=True, gc=False):
    """The per-account state (array-encoded msgpack, a few hundred bytes).

    ``clock`` is the newest event-time day seen. ``bucket``, ``history``
    (flattened ``[day, bucket_index, ...]``), ``flags`` and ``moves`` (bucket
    moves announced, numbering their discriminators) are announcements;
    ``cycles`` is flattened ``[due_day, code, ...]`` cycle statistics; ``seen``
    flattened ``[day, hash, ...]`` of finalised events and dropped dues.

    >>> AccountLedger("a1", 19700).credit
    0
    """

    account_id: str
    clock: int
    product: str = ""
    dues: list[Due] = []
    items: list[Item] = []
    credit: int = 0
    base_credit: int = 0
    floating: int = 0
    float_from: int = 0
    frontier: int = 0
    retired: int = 0
    bucket: int = 0
    flags: int = 0
    cycles: list[int] = []
    seen: list[int] = []
    history: list[int] = []
    deferrals: list[Deferral] = []
    plan: Plan | None = None
    #: Bucket moves announced so far (an announcement field, appended last so
    #: states encoded before it decode with 0): makes each move's discriminator
    #: unique, e.g. cured, re-opened and cured again on one day.
    moves: int = 0
    #: The part of ``floating`` paid at or after the plan: it may not go to
    #: superseded dues (trailing, default 0: all of it predates the plan).
    float_post: int = 0


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(AccountLedger)


def encode_ledger(ledger: AccountLedger) -> bytes:
    """The ledger as compact msgpack bytes (for the state store).

    >>> len(encode_ledger(AccountLedger("a1", 19700))) < 40
    True
    """
    return _ENCODER.encode(ledger)


def decode_ledger(raw: bytes) -> AccountLedger:
    """The inverse of :func:`encode_ledger`.

    >>> decode_ledger(encode_ledger(AccountLedger("a1", 19700))).account_id
    'a1'
    """
    return _DECODER.decode(raw)


# --------------------------------------------------------------------------- #
# Small helpers: days, hashes, pauses
# --------------------------------------------------------------------------- #


def epoch_day(value: dt.date | dt.datetime) -> int:
    """Days since 1970-01-01 of a date, or of a datetime in UTC (naive = UTC).

    >>> epoch_day(dt.date(1970, 1, 2)), epoch_day(dt.datetime(2024, 1, 1, 23, tzinfo=dt.UTC))
    (1, 19723)
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is _UTC:  # the UTC calendar day is the day of the seconds
            return value.toordinal() - _EPOCH_ORDINAL
        return _secs(value) // DAY
    return value.toordinal() - _EPOCH_ORDINAL


_UTC = dt.UTC
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND = dt.timedelta(seconds=1)


def _secs(ts: dt.datetime) -> int:
    """Whole seconds since the epoch (UTC; naive datetimes are taken as UTC).

    >>> _secs(dt.datetime(1970, 1, 1, 0, 1, tzinfo=dt.UTC))
    60
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return (ts - _EPOCH_UTC) // _SECOND  # exact integer arithmetic, floors like timegm


def _date(day: int) -> str:
    """ISO date of an epoch day.

    >>> _date(19723)
    '2024-01-01'
    """
    return dt.date.fromordinal(day + _EPOCH_ORDINAL).isoformat()


def _h(text: str) -> int:
    """A stable positive 63-bit hash (event ids, due ids, deferral ids).

    >>> _h("e1") == _h("e1") != _h("e2")
    True
    """
    return (int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1) or 1


def _merge(intervals: Iterable[Pause]) -> list[tuple[int, int | None]]:
    """Sorted, merged union of half-open day intervals (``None`` end = open).

    >>> _merge([(5, 8), (1, 3), (7, 10), (20, None), (25, 30)])
    [(1, 3), (5, 10), (20, None)]
    """
    out: list[tuple[int, int | None]] = []
    for s, e in sorted(intervals, key=lambda p: p[0]):
        if e is not None and e <= s:
            continue
        if out:
            ps, pe = out[-1]
            if pe is None:
                break
            if s <= pe:
                out[-1] = (ps, None if e is None else max(pe, e))
                continue
        out.append((s, e))
    return out


def _unpaused_count(after: int, upto: int, merged: Sequence[tuple[int, int | None]]) -> int:
    """Days ``d`` with ``after < d <= upto`` outside every merged pause.

    >>> _unpaused_count(10, 20, [(12, 15)]), _unpaused_count(10, 20, [(0, None)])
    (7, 0)
    """
    if upto <= after:
        return 0
    n = upto - after
    lo, hi = after + 1, upto + 1
    for s, e in merged:
        end = hi if e is None else min(e, hi)
        start = max(s, lo)
        if end > start:
            n -= end - start
    return n


def _kth_unpaused(after: int, k: int, merged: Sequence[tuple[int, int | None]]) -> int | None:
    """The first day on which ``_unpaused_count(after, day) == k`` (``None``: never).

    >>> _kth_unpaused(10, 1, []), _kth_unpaused(10, 3, [(11, 13)])
    (11, 15)
    >>> _kth_unpaused(10, 1, [(5, None)]) is None
    True
    """
    t = after + k
    for s, e in merged:
        if e is not None and e <= after + 1:
            continue
        start = max(s, after + 1)
        if start > t:
            break
        if e is None:
            return None
        t += e - start
    return t


def _deferral_pauses(deferrals: Iterable[Deferral]) -> list[Pause]:
    """The paused intervals of the account's deferrals.

    >>> _deferral_pauses([Deferral(1, 10, 20, 15), Deferral(2, -1, -1, 9), Deferral(3, 30)])
    [(10, 15), (30, None)]
    """
    out: list[Pause] = []
    for d in deferrals:
        if d.start < 0:
            continue
        stops = [x for x in (d.stop, d.end) if x >= 0]
        out.append((d.start, min(stops) if stops else None))
    return out


def _pauses(ledger: AccountLedger, pauses: Sequence[Pause]) -> list[tuple[int, int | None]]:
    """Deferrals of the ledger merged with the caller's global (crisis) pauses.

    >>> _pauses(AccountLedger("a", 0, deferrals=[Deferral(1, 10, 20)]), [(15, 30)])
    [(10, 30)]
    """
    if not pauses and not ledger.deferrals:
        return []  # what _merge([]) gives
    return _merge([*_deferral_pauses(ledger.deferrals), *pauses])


# --------------------------------------------------------------------------- #
# Due arithmetic
# --------------------------------------------------------------------------- #


def _cap(d: Due) -> int:
    """How much a due can absorb: a rolled statement only what ``cap`` says.

    >>> _cap(Due("s", 1, 10000, 500, STATEMENT)), _cap(Due("s", 1, 10000, 500, STATEMENT, cap=500))
    (10000, 500)
    """
    return d.amount if d.cap < 0 else d.cap


def _obligation(d: Due) -> int:
    """What must be paid by the due date: the minimum of a statement, else the amount.

    >>> _obligation(Due("s", 1, 10000, 500, STATEMENT)), _obligation(Due("i", 1, 10000))
    (500, 10000)
    """
    return min(d.minimum, d.amount) if d.kind == STATEMENT else d.amount


def _superseded(d: Due, plan: Plan | None) -> bool:
    """True for a due issued before the current restructuring plan.

    >>> _superseded(Due("i", 1, 1, key=5), Plan("p", 9, 0)), _superseded(Due("i", 1, 1), None)
    (True, False)
    """
    return plan is not None and d.key < plan.key


def _replaced(d: Due, plan: Plan | None, grace: int) -> bool:
    """True for a due superseded by a plan agreed by its due date (+ grace): its
    cycle never happened.

    >>> _replaced(Due("i", 10, 1, key=5), Plan("p", 9 * DAY, 0), 0)
    True
    """
    return plan is not None and d.key < plan.key and plan.key // DAY <= d.day + grace


def _unpaid(d: Due, plan: Plan | None) -> int:
    """Unpaid obligation of a due (0 once superseded by a plan).

    >>> _unpaid(Due("i", 1, 10000, paid=2500), None)
    7500
    """
    if _superseded(d, plan):
        return 0
    return max(0, _obligation(d) - d.paid)


def _oldest_unpaid(ledger: AccountLedger, cfg: DelinquencyConfig) -> Due | None:
    """The oldest due whose unpaid obligation exceeds the tolerance.

    >>> led = AccountLedger("a", 0, dues=[Due("i1", 5, 10000, paid=9600), Due("i2", 9, 10000)])
    >>> _oldest_unpaid(led, DEFAULT_CONFIG).id
    'i2'
    """
    plan = ledger.plan
    tolerance = cfg.tolerance_minor
    for d in ledger.dues:  # sorted by (day, id)
        # _unpaid(d, plan), inlined
        if plan is not None and d.key < plan.key:
            unpaid = 0
        else:
            obligation = min(d.minimum, d.amount) if d.kind == STATEMENT else d.amount
            unpaid = max(0, obligation - d.paid)
        if unpaid > tolerance:
            return d
    return None


def _overdue(ledger: AccountLedger, as_of: int, cfg: DelinquencyConfig) -> int:
    """Sum of unpaid obligations already past their due date plus grace.

    >>> led = AccountLedger("a", 0, dues=[Due("i1", 5, 10000), Due("i2", 50, 10000)])
    >>> _overdue(led, 20, DEFAULT_CONFIG)
    10000
    """
    g = cfg.grace_days
    return sum(_unpaid(d, ledger.plan) for d in ledger.dues if d.day + g < as_of)


# --------------------------------------------------------------------------- #
# Reading the ledger
# --------------------------------------------------------------------------- #


def days_past_due(
    ledger: AccountLedger,
    as_of_day: int,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
) -> int:
    """Days past due at ``as_of_day``.

    Counted from the oldest due whose unpaid amount exceeds the tolerance:
    ``as_of - due_date - grace`` (at least 0), minus days paused by the
    account's deferrals or by the caller's global ``pauses`` (the policy's
    crisis windows, ``(start_day, end_day_exclusive | None)``).

    >>> led = AccountLedger("a", 100, dues=[Due("i1", 100, 10000)])
    >>> days_past_due(led, 130), days_past_due(led, 130, DelinquencyConfig(grace_days=5))
    (30, 25)
    >>> days_past_due(led, 130, pauses=[(110, 120)])
    20
    """
    oldest = _oldest_unpaid(ledger, config)
    if oldest is None:
        return 0
    merged = _pauses(ledger, pauses)
    return _unpaused_count(oldest.day + config.grace_days, as_of_day, merged)


def bucket_index(buckets: Sequence[Bucket], dpd: int) -> int:
    """Index of the bucket holding ``dpd``.

    >>> bucket_index(_default_buckets(), 0), bucket_index(_default_buckets(), 45)
    (0, 2)
    """
    for i, b in enumerate(buckets):
        if b.hi is None or dpd <= b.hi:
            return i
    return len(buckets) - 1


def bucket_history(
    ledger: AccountLedger, config: DelinquencyConfig = DEFAULT_CONFIG
) -> list[tuple[int, str]]:
    """The recorded bucket moves, oldest first, as ``(epoch_day, bucket_name)``.

    >>> bucket_history(AccountLedger("a", 0, history=[19700, 1, 19729, 2]))
    [(19700, 'dpd_1_29'), (19729, 'dpd_30_59')]
    """
    buckets = config.buckets_for(ledger.product)
    h = ledger.history
    return [(h[i], buckets[min(h[i + 1], len(buckets) - 1)].name) for i in range(0, len(h), 2)]


def snapshot(
    ledger: AccountLedger,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    as_of_day: int | None = None,
    pauses: Sequence[Pause] = (),
) -> dict[str, Any]:
    """A plain summary of the ledger (for features, dashboards and tests).

    ``total_due == paid + outstanding`` over the dues kept; every payment
    received is in ``paid + credit + retired`` (unless reversed).

    >>> s = snapshot(AccountLedger("a", 30, dues=[Due("i1", 10, 10000, paid=4000)]))
    >>> s["dpd"], s["bucket"], s["overdue_minor"], s["outstanding_minor"]
    (20, 'dpd_1_29', 6000, 6000)
    """
    day = ledger.clock if as_of_day is None else as_of_day
    dpd = days_past_due(ledger, day, config, pauses=pauses)
    buckets = config.buckets_for(ledger.product)
    oldest = _oldest_unpaid(ledger, config)
    total = paid = 0
    for d in ledger.dues:
        paid += d.paid
        total += d.paid if _superseded(d, ledger.plan) else _cap(d)
    return {
        "account_id": ledger.account_id,
        "as_of_day": day,
        "dpd": dpd,
        "bucket": buckets[bucket_index(buckets, dpd)].name,
        "overdue_minor": _overdue(ledger, day, config),
        "oldest_unpaid_day": None if oldest is None else oldest.day,
        "total_due_minor": total,
        "paid_minor": paid,
        "outstanding_minor": total - paid,
        "credit_minor": ledger.credit,
        "retired_minor": ledger.retired,
        "plan_id": None if ledger.plan is None else ledger.plan.id,
    }


# --------------------------------------------------------------------------- #
# The allocation fold
# --------------------------------------------------------------------------- #


def _item_order(items: Sequence[Item]) -> list[Item]:
    """Canonical journal order: payments by (time, hash); a reversal right
    after its payment at the earliest.

    >>> [i.h for i in _item_order([Item(3, 5, 1, target=1), Item(2, 9, 1), Item(1, 7, 1)])]
    [1, 3, 2]
    """
    pay_key = {it.h: it.key for it in items if it.target == 0}

    def sort_key(it: Item) -> tuple[int, int, int]:
        if it.target == 0:
            return (it.key, 0, it.h)
        return (max(it.key, pay_key.get(it.target, it.key)), 1, it.h)

    return sorted(items, key=sort_key)


def _eff_key(it: Item, pay_key: dict[int, int]) -> int:
    """Effective time of an item: a reversal acts no earlier than its payment.

    >>> _eff_key(Item(3, 5, 1, target=1), {1: 7}), _eff_key(Item(1, 7, 1), {})
    (7, 7)
    """
    if it.target == 0:
        return it.key
    return max(it.key, pay_key.get(it.target, it.key))


def _roll_keys(dues: Sequence[Due]) -> dict[int, int]:
    """For each statement with a newer one: when the newer one was issued (its key).

    >>> _roll_keys([Due("s1", 10, 1, kind=STATEMENT, key=5), Due("i", 20, 1, key=1),
    ...             Due("s2", 40, 1, kind=STATEMENT, key=30)])
    {0: 30}
    """
    out: dict[int, int] = {}
    later: int | None = None
    for i in range(len(dues) - 1, -1, -1):
        if dues[i].kind != STATEMENT:
            continue
        if later is not None:
            out[i] = later
        later = dues[i].key if later is None else min(later, dues[i].key)
    return out


def _fold(
    dues: Sequence[Due],
    base_credit: int,
    items: Sequence[Item],
    plan: Plan | None,
    frontier: int,
    grace: int,
    until: int | None = None,
    floating: int = 0,
    boundary: int | None = None,
    float_post: int = 0,
) -> tuple[list[int], list[int], int, list[int]]:
    """Allocate ``items`` (canonical order) on top of the finalised ``base``.

    Returns ``(paid, ontime, credit, caps)`` per due (same order as
    ``dues``). ``ontime`` is what was paid by the due date + grace, as of that
    day: a reversal dated later re-opens the due but leaves ``ontime`` alone.

    A statement is *rolled* when a newer statement is issued: from then on it
    can absorb only ``max(minimum, paid so far)`` (its unpaid balance lives on
    in the newer statement); ``caps`` holds that value (-1: not rolled by
    ``until``, default: the end of the fold).

    ``floating`` is finalised money that paid dues due on or after
    ``boundary``; it goes back to those dues first, oldest first. Of it,
    ``float_post`` may have been paid at or after the plan (ignored while
    ``frontier`` predates the plan): it never goes to a superseded due (the
    rest can), and is used first on the other dues.

    >>> dues = [Due("d1", 10, 100), Due("d2", 40, 100)]
    >>> _fold(dues, 0, [Item(1, 5 * DAY, 150)], None, 0, 0)[:3]
    ([100, 50], [100, 50], 0)
    >>> _fold(dues, 0, [Item(1, 5 * DAY, 100), Item(2, 35 * DAY, 100),
    ...                 Item(3, 45 * DAY, 100, target=1)], None, 0, 0)[:3]
    ([0, 100], [100, 100], 0)
    >>> stmts = [Due("s1", 10, 1000, 50, STATEMENT, 0), Due("s2", 40, 900, 50, STATEMENT, 20 * DAY)]
    >>> _fold(stmts, 0, [Item(1, 5 * DAY, 300), Item(2, 25 * DAY, 400)], None, 0, 0)
    ([300, 400], [300, 400], 0, [300, -1])
    """
    n = len(dues)
    rolls = _roll_keys(dues)
    cap = [d.amount for d in dues]
    frozen = [False] * n
    for i, d in enumerate(dues):
        # Rolled inside the finalised part, or the newer statement that rolled
        # it is already retired (flagged, or no newer statement left): the cap
        # is final.
        rk = rolls.get(i)
        if (
            (rk is not None and rk <= frontier)
            or (rk is None and d.cap >= 0)
            or (d.flags & _CAPPED and d.cap >= 0)
        ):
            cap[i] = d.cap if d.cap >= 0 else min(d.amount, max(d.minimum, d.base))
            frozen[i] = True
    dl = [d.day + grace for d in dues]
    paid = [0] * n
    ontime = [0] * n
    pool = base_credit
    for i, d in enumerate(dues):
        b = d.base
        if b > cap[i]:  # capacity shrank (amount corrected)
            pool += b - cap[i]
            b = cap[i]
        paid[i] = b
        # (ontime is a snapshot at the due date and may exceed what is paid now)
        ontime[i] = d.base_ontime if b == d.base else min(d.base_ontime, b)
    plan_key = plan.key if plan is not None else None
    sup = [plan_key is not None and d.key < plan_key for d in dues]
    allocs: dict[int, list[list[int]]] = {}
    pending_rolls = sorted((rk, i) for i, rk in rolls.items() if not frozen[i])

    def roll(k: int | None) -> None:
        while pending_rolls and (k is None or pending_rolls[0][0] <= k):
            _, i = pending_rolls.pop(0)
            d = dues[i]
            cap[i] = min(d.amount, max(d.minimum, paid[i]))
            frozen[i] = True

    def fill(amount: int, owner: int, t: int, k: int) -> int:
        for i in range(n):
            if amount <= 0:
                break
            need = cap[i] - paid[i]
            if need <= 0 or (sup[i] and plan_key is not None and k >= plan_key):
                continue
            a = need if need < amount else amount
            paid[i] += a
            amount -= a
            if t <= dl[i]:
                ontime[i] += a
            if owner >= 0:
                allocs[owner].append([i, a, t])
        return amount

    # (while the newest finalised payment predates the plan, so does all of it:
    # ``float_post`` may still refer to an older plan)
    post = min(float_post, floating) if plan_key is not None and frontier >= plan_key else 0
    pre = floating - post
    for i in range(n):
        if pre <= 0 and post <= 0:
            break
        if boundary is not None and dues[i].day < boundary:
            continue
        need = cap[i] - paid[i]
        if need <= 0:
            continue
        if sup[i]:  # only money paid before the plan
            a = need if need < pre else pre
            pre -= a
        else:
            a = need if need < post else post
            post -= a
            if a < need and pre > 0:
                x = min(need - a, pre)
                pre -= x
                a += x
        paid[i] += a
        ontime[i] += a
    pool += pre + post
    fifo: list[list[int]] = []  # [owner, amount]; owner -1 = finalised credit
    if pool:
        left = fill(pool, -1, _NEVER, frontier)
        if left:
            fifo.append([-1, left])
    pay_key: dict[int, int] = {}
    for it in items:
        if it.target == 0:
            k = it.key
            roll(k)
            allocs[it.h] = []
            pay_key[it.h] = k
            left = fill(it.amount, it.h, k // DAY, k)
            if left:
                fifo.append([it.h, left])
            continue
        if it.target not in pay_key:  # pending: its payment is not here (yet)
            continue
        k = max(it.key, pay_key[it.target])
        roll(k)
        t = k // DAY
        amt = it.amount
        for entry in fifo:  # unused credit of the payment goes first
            if amt > 0 and entry[0] == it.target:
                x = min(entry[1], amt)
                entry[1] -= x
                amt -= x
        al = allocs[it.target]
        while amt > 0 and al:  # then its allocations, newest first
            i, a, ta = al[-1]
            x = min(a, amt)
            paid[i] -= x
            if ta <= dl[i] and t <= dl[i]:
                ontime[i] -= x
            amt -= x
            if x == a:
                al.pop()
            else:
                al[-1][1] -= x
        refilled: list[list[int]] = []
        for owner, a in fifo:  # credit refills what re-opened, oldest credit first
            left = fill(a, owner, t, k) if a > 0 else 0
            if left:
                refilled.append([owner, left])
        fifo = refilled
    roll(until)
    caps = [cap[i] if frozen[i] else -1 for i in range(n)]
    return paid, ontime, sum(a for _, a in fifo), caps


def _recompute(led: AccountLedger, cfg: DelinquencyConfig) -> AccountLedger:
    """Sort dues and journal canonically and refold the allocation.

    >>> led = AccountLedger("a", 0, dues=[Due("d1", 10, 100)], items=[Item(1, 5 * DAY, 130)])
    >>> r = _recompute(led, DEFAULT_CONFIG)
    >>> r.dues[0].paid, r.credit
    (100, 30)
    """
    dues = sorted(led.dues, key=lambda d: (d.day, d.id))
    # Finalised money on dues old enough that no due can still arrive before
    # them is final: persist it in their base.
    g = cfg.grace_days
    bnd = led.clock - cfg.lateness_days
    if led.floating or led.base_credit or any(d.base > min(d.amount, _cap(d)) for d in dues):
        base, base_ontime, left, base_caps = _fold(
            dues, led.base_credit, [], led.plan, led.frontier, g,
            until=led.frontier, floating=led.floating, boundary=led.float_from,
            float_post=led.float_post,
        )  # fmt: skip
        dues, fl, base_credit, fp = _rebase(
            dues, base, base_ontime, base_caps, left, bnd, led.plan, led.frontier
        )
    else:  # nothing finalised to place (the common case)
        fl = base_credit = fp = 0
    ff = bnd if fl else 0
    items = _item_order(led.items)
    paid, ontime, credit, caps = _fold(
        dues, base_credit, items, led.plan, led.frontier, g, floating=fl, boundary=ff,
        float_post=fp,
    )  # fmt: skip
    new_dues = [
        d if (d.paid, d.ontime, d.cap) == (p, o, c) else replace(d, paid=p, ontime=o, cap=c)
        for d, p, o, c in zip(dues, paid, ontime, caps, strict=True)
    ]
    return replace(
        led,
        dues=new_dues,
        items=items,
        credit=credit,
        base_credit=base_credit,
        floating=fl,
        float_from=ff,
        float_post=fp,
    )


def _rebase(
    dues: Sequence[Due],
    paid: Sequence[int],
    ontime: Sequence[int],
    caps: Sequence[int],
    credit: int,
    boundary: int,
    plan: Plan | None = None,
    frontier: int = 0,
) -> tuple[list[Due], int, int, int]:
    """Split finalised money (``paid`` by a fold without live items) into
    ``base``, *floating* money and credit.

    Finalised money on dues due before ``boundary`` becomes their ``base``.
    Dues on or after it could still be preceded by a due arriving late, so
    finalised money that fills them oldest-first *floats*: every fold gives
    it back to those dues, oldest first. Past the first due it does not fill
    (an exact reversal left a hole there), money stays with its due. Returns
    ``(dues, floating, credit, float_post)``.

    ``float_post`` is the floating money that may have been paid at or after
    ``plan`` (finalised money is all older than the plan while ``frontier``,
    the newest finalised payment time, is): what floats on dues the plan did
    not supersede once ``frontier`` reached the plan. Money on a superseded
    due was always paid before the plan.

    >>> dues = [Due("a", 5, 100), Due("b", 50, 100), Due("c", 60, 100), Due("d", 70, 100)]
    >>> dues, fl, cr, fp = _rebase(dues, [100, 100, 0, 40], [100, 100, 0, 40], [-1] * 4, 7, 20)
    >>> [d.base for d in dues], fl, cr, fp
    ([100, 0, 0, 40], 100, 7, 0)
    >>> _rebase([Due("a", 50, 100, key=1), Due("b", 60, 100, key=9)], [100, 60], [100, 60],
    ...         [-1] * 2, 0, 20, Plan("p", 5, 1), 7)[1:]
    (160, 0, 60)
    """
    out: list[Due] = []
    floating = post = 0
    mixed = plan is not None and frontier >= plan.key
    hole = False
    for d, p, o, c in zip(dues, paid, ontime, caps, strict=True):
        if d.day < boundary or hole:
            b, bo = p, o
        else:
            b = min(d.base, p)
            bo = d.base_ontime if b == d.base else min(d.base_ontime, b)
            floating += p - b
            if mixed and not _superseded(d, plan):
                post += p - b
            hole = p < (c if c >= 0 else _cap(d))
        out.append(d if (d.base, d.base_ontime) == (b, bo) else replace(d, base=b, base_ontime=bo))
    return out, floating, credit, post


# --------------------------------------------------------------------------- #
# Bounded memories
# --------------------------------------------------------------------------- #


def _seen_has(seen: Sequence[int], h: int) -> bool:
    """Whether hash ``h`` is in the flattened ``[day, hash, ...]`` memory.

    >>> _seen_has([10, 7, 12, 9], 9), _seen_has([10, 7], 10)
    (True, False)
    """
    return any(seen[i] == h for i in range(1, len(seen), 2))


def _seen_add(seen: Sequence[int], pairs: Iterable[tuple[int, int]], limit: int) -> list[int]:
    """Add ``(day, hash)`` pairs, keep them sorted, drop the oldest beyond ``limit``.

    >>> _seen_add([10, 7], [(5, 3), (12, 9)], 2)
    [10, 7, 12, 9]
    """
    have = {(seen[i], seen[i + 1]) for i in range(0, len(seen), 2)}
    have.update(pairs)
    keep = sorted(have)[-limit:]
    return [x for pair in keep for x in pair]


def _add_cycle(cycles: Sequence[int], day: int, code: int, limit: int) -> list[int]:
    """Insert a cycle record ``(due_day, code)`` in day order, keep the last ``limit``.

    >>> _add_cycle([10, 100, 40, 90], 25, 80, 2)
    [25, 80, 40, 90]
    """
    pairs = [(cycles[i], cycles[i + 1]) for i in range(0, len(cycles), 2)]
    pairs.append((day, code))
    pairs.sort()
    return [x for pair in pairs[-limit:] for x in pair]


# --------------------------------------------------------------------------- #
# Incorporating one event into the core state
# --------------------------------------------------------------------------- #


def _carry_due(h: int, day: int, key: int, amount: int) -> Due:
    """The due created by a reversal whose payment is no longer reversible here.

    >>> _carry_due(255, 100, 100 * DAY, 5000).id
    'rev:00000000000000ff'
    """
    return Due(f"rev:{h:016x}", day, amount, 0, REVERSAL_CARRY, key)


def _add_due(led: AccountLedger, due: Due) -> AccountLedger:
    """Add a due, or replace one with the same id by a newer version.

    Versions compare by ``(key, day, amount, minimum)``, so the outcome does
    not depend on arrival order. A due dropped earlier stays dropped. A due
    whose cycle was already recorded remembers the day it was recorded under
    (``cycle_day``), so its cured mark still finds the record.

    >>> led = _add_due(AccountLedger("a", 0), Due("i1", 10, 100, key=5))
    >>> _add_due(led, Due("i1", 10, 120, key=4)) is led
    True
    >>> _add_due(led, Due("i1", 10, 120, key=6)).dues[0].amount
    120
    """
    if _seen_has(led.seen, _h("due:" + due.id)):
        return led
    for i, d in enumerate(led.dues):
        if d.id != due.id:
            continue
        if (due.key, due.day, due.amount, due.minimum) <= (d.key, d.day, d.amount, d.minimum):
            return led
        moved = d.flags & _CLOSED and d.cycle_day < 0 and due.day != d.day
        cday = d.day if moved else d.cycle_day
        new = replace(
            d, day=due.day, amount=due.amount, minimum=due.minimum, key=due.key, cycle_day=cday
        )
        return replace(led, dues=[*led.dues[:i], new, *led.dues[i + 1 :]])
    return replace(led, dues=[*led.dues, due])


def _incorporate(
    led: AccountLedger, ev: Any, day: int, key: int, h: int, cfg: DelinquencyConfig
) -> AccountLedger:
    """The ledger with ``ev`` recorded in its core state (the input itself if nothing changes).

    >>> ev = PaymentReceived(event_id="p1", event_time=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    ...     customer_id="c", account_id="a", amount_minor=100, currency="EUR")
    >>> args = (19723, 19723 * DAY, _h("p1"), DEFAULT_CONFIG)
    >>> led = _incorporate(AccountLedger("a", 19723), ev, *args)
    >>> len(led.items), _incorporate(led, ev, *args) is led
    (1, True)
    """
    if isinstance(ev, InstallmentDue):
        return _add_due(
            led, Due(ev.due_id, epoch_day(ev.due_date), ev.amount_minor, 0, INSTALLMENT, key)
        )
    if isinstance(ev, StatementDue):
        return _add_due(
            led,
            Due(
                ev.due_id, epoch_day(ev.due_date), ev.amount_minor, ev.minimum_minor, STATEMENT, key
            ),
        )
    if isinstance(ev, PaymentReceived | PaymentReversed):
        if _seen_has(led.seen, h) or any(it.h == h for it in led.items):
            return led
        if any(d.id == f"rev:{h:016x}" for d in led.dues):
            return led
        if isinstance(ev, PaymentReceived):
            return _add_payment(led, Item(h, key, ev.amount_minor), cfg)
        target = _h(ev.reversed_event_id)
        pay = next((it for it in led.items if it.h == target and it.target == 0), None)
        late = pay is not None and day > pay.key // DAY + cfg.reversal_window_days
        if late or (pay is None and _seen_has(led.seen, target)):
            return _add_due(led, _carry_due(h, day, key, ev.amount_minor))
        return replace(led, items=[*led.items, Item(h, key, ev.amount_minor, target)])
    if isinstance(ev, PlanAgreed):
        if led.plan is not None and (led.plan.id == ev.plan_id or led.plan.key > key):
            return led
        # All installments become dues at once, so that the allocation never
        # depends on when they were added (about 35 bytes each in the state).
        inst = sorted((epoch_day(x.due_date), x.amount_minor) for x in ev.installments)
        dues = [
            Due(f"{ev.plan_id}#{i}", day, amount, 0, PLAN_INSTALLMENT, key)
            for i, (day, amount) in enumerate(inst)
        ]
        mine = {d.id for d in dues}
        others = [d for d in led.dues if d.id not in mine]
        return replace(led, plan=Plan(ev.plan_id, key, len(inst)), dues=[*others, *dues])
    if isinstance(ev, DeferralStarted | DeferralEnded):
        dh = _h("def:" + ev.deferral_id)
        if _seen_has(led.seen, dh):
            return led
        old = next((d for d in led.deferrals if d.h == dh), None) or Deferral(dh)
        if isinstance(ev, DeferralStarted):
            stop = -1 if ev.until is None else epoch_day(ev.until) + 1
            start = day if old.start < 0 else min(old.start, day)
            if old.start >= 0:  # a repeated start can only extend the pause
                stop = -1 if (old.stop < 0 or stop < 0) else max(old.stop, stop)
            new = replace(old, start=start, stop=stop)
        else:
            new = replace(old, end=day if old.end < 0 else min(old.end, day))
        if new == old and any(d.h == dh for d in led.deferrals):
            return led
        kept = [x for x in led.deferrals if x.h != dh]
        return replace(led, deferrals=sorted([*kept, new], key=lambda x: (x.start, x.h)))
    raise TypeError(f"not a repayment event: {type(ev).__name__}")


def _add_payment(led: AccountLedger, pay: Item, cfg: DelinquencyConfig) -> AccountLedger:
    """Add a payment; reversals already waiting for it that are too late become dues.

    >>> led = AccountLedger("a", 200, items=[Item(9, 150 * DAY, 40, target=5)])
    >>> r = _add_payment(led, Item(5, 10 * DAY, 40), DEFAULT_CONFIG)
    >>> [it.h for it in r.items], r.dues[0].id
    ([5], 'rev:0000000000000009')
    """
    items = [*led.items, pay]
    limit = pay.key // DAY + cfg.reversal_window_days
    late = [it for it in items if it.target == pay.h and it.key // DAY > limit]
    for it in late:
        items.remove(it)
        led = _add_due(led, _carry_due(it.h, it.key // DAY, it.key, it.amount))
    return replace(led, items=items)


# --------------------------------------------------------------------------- #
# Settling: plan installments, cycles, finalisation, compaction
# --------------------------------------------------------------------------- #


def _window_paid(items: Sequence[Item], first_day: int, last_day: int) -> int:
    """Payments dated in ``[first_day, last_day]``, net of reversals dated by ``last_day``.

    >>> _window_paid([Item(1, 5 * DAY, 300), Item(2, 6 * DAY, 100, target=1)], 0, 10)
    200
    """
    pay_key = {it.h: it.key for it in items if it.target == 0}
    net: dict[int, int] = {}
    for it in items:
        if it.target == 0 and first_day <= it.key // DAY <= last_day:
            net[it.h] = net.get(it.h, 0) + it.amount
    for it in items:
        if it.target in net and _eff_key(it, pay_key) // DAY <= last_day:
            net[it.target] = max(0, net[it.target] - it.amount)
    return sum(net.values())


def _close_cycles(led: AccountLedger, cfg: DelinquencyConfig) -> AccountLedger:
    """Record cycle statistics of dues whose due date + grace + lateness has passed.

    A record is ``ratio_pct | min_only | late | cured | statement`` bits; a
    late due is marked cured once its obligation is met.

    >>> led = AccountLedger("a", 30, dues=[Due("i1", 10, 10000, paid=10000, ontime=4000)])
    >>> c = _close_cycles(led, DEFAULT_CONFIG)
    >>> c.cycles, c.dues[0].flags == _CLOSED | _LATE | _CURED
    ([10, 808], True)
    """
    g, tol = cfg.grace_days, cfg.tolerance_minor
    cycles = led.cycles
    dues: list[Due] = []
    changed = False
    for d in led.dues:
        flags, recorded = d.flags, d.cycle_code
        if not flags & _CLOSED and d.day + g + cfg.lateness_days < led.clock:
            flags |= _CLOSED
            # (a plan agreed before the due date replaced this cycle)
            if not (_replaced(d, led.plan, g) or d.kind == REVERSAL_CARRY):
                obl = _obligation(d)
                code = 0
                if d.kind == STATEMENT:
                    got = d.period_paid + _window_paid(led.items, d.key // DAY, d.day + g)
                    ratio = 100 if d.amount <= tol else min(100, got * 100 // d.amount)
                    top = d.minimum * (100 + cfg.min_only_margin_pct) // 100 + tol
                    if d.minimum > 0 and d.minimum - tol <= got <= top and got < d.amount - tol:
                        code |= _C_MIN
                    code |= _C_STMT
                else:
                    ratio = 100 if d.amount <= 0 else min(100, d.ontime * 100 // d.amount)
                if obl - d.ontime > tol:
                    flags |= _LATE
                    code |= _C_LATE
                recorded = code | ratio
                cycles = _add_cycle(cycles, d.day, recorded, cfg.max_cycles)
        if flags & _LATE and bool(flags & _CURED) != (_obligation(d) - d.paid <= tol):
            # Cured = late at the due date and met now; a reversal can un-cure.
            flags ^= _CURED
            cday = d.day if d.cycle_day < 0 else d.cycle_day  # (the day it was recorded under)
            cycles = _mark_cured(cycles, cday, bool(flags & _CURED), recorded)
        if flags != d.flags:
            changed = True
            # Once recorded, the period's payments are not needed: cleared, so the
            # ledger does not depend on whether they were finalised before or after.
            d = replace(d, flags=flags, period_paid=0 if flags & _CLOSED else d.period_paid,
                        cycle_code=recorded)
        dues.append(d)
    return replace(led, dues=dues, cycles=cycles) if changed else led


def _mark_cured(
    cycles: Sequence[int], day: int, cured: bool = True, recorded: int = -1
) -> list[int]:
    """Set (or clear) the cured bit on the first late record of ``day`` that differs.

    ``recorded`` (the due's own record without the cured bit; -1: unknown)
    picks the due's record among records of the same day, so which record is
    marked does not depend on the order the dues were cured in.

    >>> _mark_cured([10, 256 | 40], 10), _mark_cured([10, 808], 10, False)
    ([10, 808], [10, 296])
    >>> _mark_cured([10, 256 | 40, 10, 256 | 90], 10, True, 256 | 90)
    [10, 296, 10, 858]
    """
    out = list(cycles)
    for i in range(0, len(out), 2):
        code = out[i + 1]
        if recorded >= 0 and code & ~_C_CURED != recorded:
            continue
        if out[i] == day and code & _C_LATE and bool(code & _C_CURED) != cured:
            out[i + 1] = code ^ _C_CURED
            break
    return out


def _finalize(led: AccountLedger, cfg: DelinquencyConfig) -> AccountLedger:
    """Fold old journal items into ``base`` (and force out items beyond ``max_items``).

    An item is old once its day is more than ``reversal_window_days +
    lateness_days`` behind the clock. A payment is only finalised together
    with every reversal of it. Old reversals whose payment never came become
    dues.

    >>> led = AccountLedger("a", 200, dues=[Due("d1", 10, 100, paid=100, ontime=100)],
    ...                     items=[Item(1, 5 * DAY, 100)])
    >>> f = _finalize(led, DEFAULT_CONFIG)
    >>> f.items, f.dues[0].base, _seen_has(f.seen, 1)
    ([], 100, True)
    """
    items = list(led.items)  # canonical order (after _recompute)
    if not items:
        return led
    horizon = led.clock - cfg.reversal_window_days - cfg.lateness_days
    pay_key = {it.h: it.key for it in items if it.target == 0}
    last_rev: dict[int, int] = {}
    for j, it in enumerate(items):
        if it.target in pay_key:
            last_rev[it.target] = j
    k = 0
    need = -1
    for j, it in enumerate(items):
        if _eff_key(it, pay_key) // DAY >= horizon:
            break
        if it.target == 0:
            need = max(need, last_rev.get(it.h, j))
        if need <= j:
            k = j + 1
    prefix = items[:k]
    rest = items[k:]

    # Safety valve: too many live items -> force the oldest out, netting reversals in.
    # (Reversals still waiting for their payment do not count and are left alone.)
    def live_count() -> int:
        return sum(1 for it in rest if it.target == 0 or it.target in pay_key)

    while live_count() > cfg.max_items:
        j = next(j for j, it in enumerate(rest) if it.target == 0 or it.target in pay_key)
        it = rest.pop(j)
        if it.target == 0:
            revs = [r for r in rest if r.target == it.h]
            net = max(0, it.amount - sum(r.amount for r in revs))
            rest = [r for r in rest if r.target != it.h]
            prefix.append(replace(it, amount=net))
            prefix.extend(revs)
        else:
            prefix.append(it)
    if not prefix:
        return led
    folded = [it for it in prefix if it.target == 0 or it.target in pay_key]
    pending = [it for it in prefix if not (it.target == 0 or it.target in pay_key)]
    # Netted reversals are already inside their payment's amount: drop them from the fold.
    netted = {it.h for it in prefix if it.target == 0 and it not in led.items}
    folded = [it for it in folded if it.target not in netted]
    frontier = max([led.frontier, *(_eff_key(it, pay_key) for it in folded)])
    bnd = led.clock - cfg.lateness_days
    paid, ontime, credit, caps = _fold(
        led.dues,
        led.base_credit,
        folded,
        led.plan,
        led.frontier,
        cfg.grace_days,
        frontier,
        led.floating,
        led.float_from,
        led.float_post,
    )
    dues, floating, credit, float_post = _rebase(
        led.dues, paid, ontime, caps, credit, bnd, led.plan, frontier
    )
    dues = [d if c < 0 else replace(d, cap=c) for d, c in zip(dues, caps, strict=True)]
    for i, d in enumerate(dues):
        # Keep the statement period's payments that leave the journal counted.
        if d.kind == STATEMENT and not d.flags & _CLOSED:
            got = _window_paid(folded, d.key // DAY, d.day + cfg.grace_days)
            if got:
                dues[i] = replace(d, period_paid=d.period_paid + got)
    seen = _seen_add(
        led.seen, [(_eff_key(it, pay_key) // DAY, it.h) for it in prefix], cfg.max_seen
    )
    out = replace(
        led,
        dues=dues,
        items=rest,
        base_credit=credit,
        floating=floating,
        float_from=bnd if floating else 0,
        float_post=float_post,
        frontier=frontier,
        seen=seen,
    )
    for it in pending:
        out = _add_due(out, _carry_due(it.h, it.key // DAY, it.key, it.amount))
    return _recompute(out, cfg)


def _compact(led: AccountLedger, cfg: DelinquencyConfig) -> AccountLedger:
    """Drop settled, final, closed dues and deferrals that no longer matter.

    >>> led = AccountLedger("a", 90, dues=[Due("d1", 10, 100, flags=_CLOSED, base=100, paid=100)])
    >>> c = _compact(led, DEFAULT_CONFIG)
    >>> c.dues, c.retired, _seen_has(c.seen, _h("due:d1"))
    ([], 100, True)
    """
    keep: list[Due] = []
    gone: list[Due] = []
    # A superseded due can still be paid by payments dated before the plan,
    # a rolled statement by payments dated before the roll: both only once no
    # such payment is live or can still arrive.
    settled_by = led.clock - cfg.lateness_days
    pay_key = {it.h: it.key for it in led.items if it.target == 0}
    first_live = min((_eff_key(it, pay_key) for it in led.items), default=None)

    def over(key: int) -> bool:
        return key // DAY < settled_by and (first_live is None or key <= first_live)

    plan_old = led.plan is not None and over(led.plan.key)
    rolls = _roll_keys(led.dues)
    for i, d in enumerate(led.dues):
        # (a replaced due has no cycle to record: it need not be closed)
        final = d.paid == d.base and (d.flags & _CLOSED or _replaced(d, led.plan, cfg.grace_days))
        rolled_for_good = d.cap >= 0 and (
            bool(d.flags & _CAPPED) or i not in rolls or over(rolls[i])
        )
        settled = (
            d.paid >= d.amount
            or (plan_old and _superseded(d, led.plan))
            or (rolled_for_good and d.paid >= _cap(d))
        )
        (gone if final and settled else keep).append(d)
    deferrals = led.deferrals
    if deferrals:
        # A pause ending before every due that could still count (or arrive
        # within lateness) can no longer change any DPD.
        oldest = min([led.clock - cfg.lateness_days, *(d.day for d in keep)])
        first = oldest + cfg.grace_days + 1
        live = [x for x in deferrals if (e := _deferral_end(x)) is None or e > first]
        if len(live) > cfg.max_deferrals:
            live = live[-cfg.max_deferrals :]
        if len(live) != len(deferrals):
            deferrals = live
    if not gone and deferrals is led.deferrals:
        return led
    if gone:
        keep = _freeze_caps(led.dues, rolls, keep)
    pairs = [(d.day, _h("due:" + d.id)) for d in gone]
    # Remember pruned deferrals, so a re-delivered start cannot re-open them.
    pairs += [
        (_deferral_end(x) or max(x.start, x.stop, x.end), x.h)
        for x in led.deferrals
        if x not in deferrals
    ]
    seen = _seen_add(led.seen, pairs, cfg.max_seen)
    return replace(
        led,
        dues=keep,
        retired=led.retired + sum(d.paid for d in gone),
        seen=seen,
        deferrals=deferrals,
    )


def _freeze_caps(dues: Sequence[Due], rolls: dict[int, int], keep: Sequence[Due]) -> list[Due]:
    """Flag the caps of kept statements whose rolling statement is being retired.

    A statement is rolled when the first newer statement is issued; the fold
    finds that moment from the newer statements it still holds. Retiring the
    statement that rolled an older kept one would move its roll to the next
    newer statement (or forget it) and let the next fold recompute the cap
    from a later moment: the retained state would then depend on whether
    the ledger is settled again after the retirement (the sweep schedule).
    The cap the fold found is kept instead, flagged final.

    >>> s1 = Due("s1", 10, 1000, 100, STATEMENT, 0, paid=100, cap=500)
    >>> s2 = Due("s2", 40, 1000, 100, STATEMENT, 20 * DAY, paid=1000, cap=1000)
    >>> s3 = Due("s3", 70, 1000, 100, STATEMENT, 50 * DAY)
    >>> [d.flags for d in _freeze_caps([s1, s2, s3], _roll_keys([s1, s2, s3]), [s1, s3])]
    [8, 0]
    """
    before = {dues[i].id: rk for i, rk in rolls.items()}
    after = {keep[i].id: rk for i, rk in _roll_keys(keep).items()}
    out: list[Due] = []
    for d in keep:
        rk = before.get(d.id)
        if rk is not None and after.get(d.id) != rk and d.cap >= 0 and not d.flags & _CAPPED:
            d = replace(d, flags=d.flags | _CAPPED)
        out.append(d)
    return out


def _deferral_end(d: Deferral) -> int | None:
    """The exclusive end day of a deferral's pause (``None``: open or never started).

    >>> _deferral_end(Deferral(1, 10, 20, 15)), _deferral_end(Deferral(1, 10))
    (15, None)
    """
    stops = [x for x in (d.stop, d.end) if x >= 0]
    if d.start < 0 or not stops:
        return None
    return min(stops)


def _settle(led: AccountLedger, cfg: DelinquencyConfig) -> AccountLedger:
    """Bring the core state up to ``clock``: plan dues, allocation, cycles, compaction.

    >>> led = AccountLedger("a", 50, dues=[Due("d1", 10, 100)], items=[Item(1, 5 * DAY, 100)])
    >>> _settle(led, DEFAULT_CONFIG).dues[0].paid
    100
    """
    led = _recompute(led, cfg)
    led = _close_cycles(led, cfg)
    led = _finalize(led, cfg)
    led = _close_cycles(led, cfg)
    return _compact(led, cfg)


# --------------------------------------------------------------------------- #
# Announcements -> signals
# --------------------------------------------------------------------------- #


def _severity(dpd: int) -> Severity:
    """Severity of a worsening by DPD reached.

    >>> _severity(5), _severity(45), _severity(75), _severity(120)
    ('low', 'medium', 'high', 'critical')
    """
    if dpd < 30:
        return "low"
    if dpd < 60:
        return "medium"
    if dpd < 90:
        return "high"
    return "critical"


def _dpd_evidence(dpd: int, overdue: int, oldest: Due | None, bucket: Bucket) -> list[Evidence]:
    """The standard DPD facts: days past due, amount overdue, oldest due date, bucket.

    >>> [e.code for e in _dpd_evidence(3, 100, Due("d", 19723, 100), Bucket("x", 1, 29))]
    ['dpd', 'overdue_amount', 'oldest_due_date', 'bucket']
    """
    out = [
        Evidence(code="dpd", text=f"{dpd} days past due", value=dpd, unit="days"),
        Evidence(
            code="overdue_amount",
            text=f"{overdue} minor units overdue",
            value=overdue,
            unit="minor",
        ),
    ]
    if oldest is not None:
        out.append(
            Evidence(
                code="oldest_due_date",
                text=f"oldest unpaid due {_date(oldest.day)}",
                value=_date(oldest.day),
            )
        )
    out.append(Evidence(code="bucket", text=f"bucket {bucket.name}", value=bucket.name))
    return out


def _signal(
    led: AccountLedger,
    cfg: DelinquencyConfig,
    kind: str,
    rule: str,
    severity: Severity,
    codes: list[str],
    evidence: list[Evidence],
    disc: str,
) -> Signal:
    """A :class:`Signal` about this ledger's account.

    >>> _signal(AccountLedger("a", 0), DEFAULT_CONFIG, "label", "label-30dpd", "info",
    ...         ["reached_30dpd"], [], "x").discriminator
    'label-30dpd:x'
    """
    return Signal(
        kind=kind,
        rule_id=rule,
        rule_version=cfg.rule_version,
        severity=severity,
        reason_codes=codes,
        evidence=evidence,
        account_id=led.account_id,
        discriminator=f"{rule}:{disc}",
    )


def _records(cycles: Sequence[int]) -> list[int]:
    """Cycle codes in due-day order.

    >>> _records([10, 100, 40, 90])
    [100, 90]
    """
    return [cycles[i] for i in range(1, len(cycles), 2)]


def on_time_streak(ledger: AccountLedger) -> int:
    """Consecutive most recent recorded cycles paid on time (not late).

    >>> on_time_streak(AccountLedger("a1", 0))
    0
    """
    cycles = ledger.cycles
    if len(cycles) < 2:
        return 0
    run = 0
    for code in cycles[(len(cycles) - 2) | 1::-2]:  # reversed(_records(cycles))
        if code & _C_LATE:
            break
        run += 1
    return run


def _warnings(
    led: AccountLedger, cfg: DelinquencyConfig, base_ev: Callable[[], list[Evidence]]
) -> tuple[int, list[Signal]]:
    """Pre-delinquency warnings raised on a rising edge; returns new flags and signals.

    >>> led = AccountLedger("a", 0, cycles=[1, 90, 2, 60, 3, 30])
    >>> flags, sigs = _warnings(led, DEFAULT_CONFIG, list)
    >>> [s.rule_id for s in sigs], bool(flags & _F_WRATIO)
    (['warn-payment-ratio-falling'], True)
    """
    recs = _records(led.cycles)
    last_day = led.cycles[-2] if led.cycles else led.clock
    flags = led.flags
    sigs: list[Signal] = []
    stmts = [c for c in recs if c & _C_STMT]
    n = cfg.min_only_streak
    cond = len(stmts) >= n and all(c & _C_MIN for c in stmts[-n:])
    if cond and not flags & _F_WMIN:
        sigs.append(
            _signal(
                led,
                cfg,
                "warning",
                "warn-min-payment-streak",
                "low",
                ["min_payment_only_streak"],
                [
                    Evidence(
                        code="min_only_cycles",
                        text=f"minimum payment only for {n} statements in a row",
                        value=n,
                        unit="cycles",
                    ),
                    *base_ev(),
                ],
                str(last_day),
            )
        )
    flags = flags | _F_WMIN if cond else flags & ~_F_WMIN
    k = cfg.ratio_cycles
    ratios = [c & _C_RATIO for c in recs[-k:]]
    cond = (
        len(ratios) == k
        and all(b <= a for a, b in itertools.pairwise(ratios))
        and ratios[-1] < ratios[0]
        and ratios[-1] <= cfg.ratio_threshold_pct
    )
    if cond and not flags & _F_WRATIO:
        text = "paid/due ratio falling: " + " > ".join(f"{r}%" for r in ratios)
        sigs.append(
            _signal(
                led,
                cfg,
                "warning",
                "warn-payment-ratio-falling",
                "medium",
                ["payment_ratio_falling"],
                [
                    Evidence(
                        code="payment_ratios",
                        text=text,
                        value=",".join(map(str, ratios)),
                        unit="pct",
                    ),
                    *base_ev(),
                ],
                str(last_day),
            )
        )
    flags = flags | _F_WRATIO if cond else flags & ~_F_WRATIO
    cured = sum(1 for c in recs[-cfg.late_cured_window :] if c & _C_CURED)
    cond = cured >= cfg.late_cured_count
    if cond and not flags & _F_WLATE:
        sigs.append(
            _signal(
                led,
                cfg,
                "warning",
                "warn-late-cured-repeated",
                "low",
                ["late_but_cured_repeated"],
                [
                    Evidence(
                        code="late_cured_cycles",
                        text=f"{cured} of the last {cfg.late_cured_window} cycles "
                        "paid late, then cured",
                        value=cured,
                        unit="cycles",
                    ),
                    *base_ev(),
                ],
                str(last_day),
            )
        )
    flags = flags | _F_WLATE if cond else flags & ~_F_WLATE
    return flags, sigs


def _plan_due_missed(after: int, clock: int, merged: Sequence[tuple[int, int | None]]) -> bool:
    """Whether an installment due (with grace) up to day ``after`` is missed by ``clock``:
    its first unpaused day after ``after`` has come.

    >>> _plan_due_missed(10, 11, []), _plan_due_missed(10, 10, [])
    (True, False)
    >>> _plan_due_missed(10, 12, [(9, 14)]), _plan_due_missed(10, 14, [(9, 14)])
    (False, True)
    >>> _plan_due_missed(10, 99, [(9, None)])
    False
    """
    day = _kth_unpaused(after, 1, merged)
    return day is not None and day <= clock


def _plan_signals(
    led: AccountLedger, cfg: DelinquencyConfig, base_ev: Callable[[], list[Evidence]],
    merged: Sequence[tuple[int, int | None]] = (),
) -> tuple[Plan | None, list[Signal]]:
    """Broken promise (a plan installment missed) and plan completed, once per plan.

    An installment is missed on the first unpaused day after its due date and grace
    (``merged`` pauses: the account's deferrals and crisis-wide pauses), the day its
    days past due would reach 1: a payment holiday defers the promise too.

    >>> led = AccountLedger("a", 50, plan=Plan("p", 0, 1),
    ...                     dues=[Due("p#0", 40, 500, kind=PLAN_INSTALLMENT, paid=500)])
    >>> plan, sigs = _plan_signals(led, DEFAULT_CONFIG, list)
    >>> [s.rule_id for s in sigs], plan.flags
    (['plan-completed'], 2)
    """
    plan = led.plan
    if plan is None or plan.flags & (_P_BROKEN | _P_DONE) == _P_BROKEN | _P_DONE:
        return plan, []
    g, tol = cfg.grace_days, cfg.tolerance_minor
    mine = [d for d in led.dues if d.kind == PLAN_INSTALLMENT and d.key == plan.key]
    sigs: list[Signal] = []
    pflags = plan.flags
    if not pflags & _P_BROKEN:
        missed = [d for d in mine if _plan_due_missed(d.day + g, led.clock, merged)
                  and _unpaid(d, plan) > tol]
        if missed:
            pflags |= _P_BROKEN
            d = missed[0]
            sigs.append(
                _signal(
                    led,
                    cfg,
                    "delinquency",
                    "plan-broken-promise",
                    "high",
                    ["broken_promise", "plan_installment_missed"],
                    [
                        Evidence(code="plan_id", text=f"plan {plan.id}", value=plan.id),
                        Evidence(
                            code="missed_installment_date",
                            text=f"installment due {_date(d.day)} unpaid",
                            value=_date(d.day),
                        ),
                        Evidence(
                            code="missed_amount",
                            text=f"{_unpaid(d, plan)} minor units unpaid",
                            value=_unpaid(d, plan),
                            unit="minor",
                        ),
                        *base_ev(),
                    ],
                    plan.id,
                )
            )
    if not pflags & _P_DONE:
        left = sum(max(0, d.amount - d.paid) for d in mine)
        if left <= led.credit + tol:
            pflags |= _P_DONE
            sigs.append(
                _signal(
                    led,
                    cfg,
                    "delinquency",
                    "plan-completed",
                    "info",
                    ["plan_completed"],
                    [
                        Evidence(code="plan_id", text=f"plan {plan.id} fully paid", value=plan.id),
                        Evidence(code="installments", text=f"{plan.n} installments", value=plan.n),
                    ],
                    plan.id,
                )
            )
    return (replace(plan, flags=pflags) if pflags != plan.flags else plan), sigs


def _evaluate(
    led: AccountLedger, cfg: DelinquencyConfig, pauses: Sequence[Pause], trigger_day: int | None
) -> tuple[AccountLedger, list[Signal]]:
    """Compare the state at ``clock`` with what was announced; announce the differences.

    ``trigger_day`` is the event-time day of the triggering event (``None``
    for a time-only step): an improvement is dated on it, a worsening on the
    later of it and the day the bucket was actually crossed.

    >>> led = AccountLedger("a", 45, dues=[Due("d1", 10, 10000)])
    >>> new, sigs = _evaluate(led, DEFAULT_CONFIG, (), None)
    >>> [s.rule_id for s in sigs], bucket_history(new)
    (['delinquency-onset', 'label-30dpd'], [(40, 'dpd_30_59')])
    """
    buckets = cfg.buckets_for(led.product)
    merged = _pauses(led, pauses)
    g = cfg.grace_days
    oldest = _oldest_unpaid(led, cfg)
    start = 0 if oldest is None else oldest.day + g
    dpd = 0 if oldest is None else _unpaused_count(start, led.clock, merged)
    idx = bucket_index(buckets, dpd)
    old = min(led.bucket, len(buckets) - 1)
    cache: list[list[Evidence]] = []

    def ev() -> list[Evidence]:  # built only when a signal needs it
        if not cache:
            cache.append(_dpd_evidence(dpd, _overdue(led, led.clock, cfg), oldest, buckets[idx]))
        return cache[0]

    sigs: list[Signal] = []
    history = led.history
    moves = led.moves
    if idx != old:
        moves += 1
        if idx > old:
            crossed = _kth_unpaused(start, buckets[idx].lo, merged) or led.clock
            day = crossed if trigger_day is None else max(crossed, trigger_day)
            rule = "delinquency-onset" if old == 0 else "dpd-bucket-worsened"
            severity = _severity(dpd)
        else:
            day = led.clock if trigger_day is None else trigger_day
            rule = "delinquency-cured" if idx == 0 else "dpd-bucket-improved"
            severity = "info"
        prev = Evidence(
            code="previous_bucket", text=f"was {buckets[old].name}", value=buckets[old].name
        )
        moved = Evidence(code="moved_on", text=f"moved on {_date(day)}", value=_date(day))
        # The account's product, for roll rates by product (``riskwatch_bucket_transitions``).
        product = (
            [Evidence(code="product", text=f"product {led.product}", value=led.product)]
            if led.product
            else []
        )
        sigs.append(
            _signal(
                led,
                cfg,
                "delinquency",
                rule,
                severity,
                [rule.replace("-", "_"), buckets[idx].name],
                [*ev(), prev, moved, *product],
                f"{buckets[idx].name}@{day}#{moves}",
            )
        )
        history = [*history, day, idx][-2 * cfg.max_history :]
    flags = led.flags
    for threshold, bit in ((30, _F_L30), (90, _F_L90)):
        if dpd >= threshold and not flags & bit:
            flags |= bit
            day = _kth_unpaused(start, threshold, merged) or led.clock
            code = f"reached_{threshold}dpd"
            sigs.append(
                _signal(
                    led,
                    cfg,
                    "label",
                    f"label-{threshold}dpd",
                    "info",
                    [code],
                    [
                        *ev(),
                        Evidence(
                            code="reached_on", text=f"reached on {_date(day)}", value=_date(day)
                        ),
                    ],
                    str(day),
                )
            )
    plan, plan_sigs = _plan_signals(led, cfg, ev, merged)
    out = replace(led, bucket=idx, history=history, flags=flags, plan=plan, moves=moves)
    flags, warn_sigs = _warnings(out, cfg, ev)
    if (idx, history, flags, plan) != (led.bucket, led.history, led.flags, led.plan):
        out = replace(out, flags=flags)
    else:
        out = led
    return out, [*sigs, *plan_sigs, *warn_sigs]


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #

_REPAYMENTS: Final = (
    InstallmentDue,
    StatementDue,
    PaymentReceived,
    PaymentReversed,
    PlanAgreed,
    DeferralStarted,
    DeferralEnded,
)


def _step(
    led: AccountLedger,
    day: int,
    cfg: DelinquencyConfig,
    pauses: Sequence[Pause],
    trigger_day: int | None,
) -> tuple[AccountLedger, list[Signal]]:
    """Move the clock to ``day``, settle, and announce.

    >>> new, sigs = _step(AccountLedger("a", 0, dues=[Due("d1", 10, 10000)]), 11, DEFAULT_CONFIG,
    ...                   (), None)
    >>> new.clock, [s.rule_id for s in sigs]
    (11, ['delinquency-onset'])
    """
    return _evaluate(_settle(replace(led, clock=day), cfg), cfg, pauses, trigger_day)


def apply(
    ledger: AccountLedger | None,
    event: Any,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
    product: str | None = None,
) -> tuple[AccountLedger, list[Signal]]:
    """Apply one repayment event; return the new ledger and the signals it raises.

    Never mutates ``ledger``. If the event is newer than the ledger's clock,
    time is first advanced to the event's day (as :func:`advance` would), so
    no bucket move is missed between sweeps. A duplicate (or an event that
    changes nothing) returns the input ledger object itself and no signals, so
    callers can skip the state write with ``new is old``.

    ``pauses`` are global (crisis) pauses of the DPD clock; ``product`` picks
    the bucket ladder (stored on the ledger).

    >>> t = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    >>> due = InstallmentDue(event_id="e1", event_time=t, customer_id="c1", account_id="a1",
    ...     due_id="i1", due_date=dt.date(2024, 1, 10), amount_minor=10000, currency="EUR")
    >>> led, sigs = apply(None, due)
    >>> pay = PaymentReceived(event_id="e2", event_time=t + dt.timedelta(days=40),
    ...     customer_id="c1", account_id="a1", amount_minor=10000, currency="EUR")
    >>> led, sigs = apply(led, pay)
    >>> [s.rule_id for s in sigs]
    ['delinquency-onset', 'label-30dpd', 'delinquency-cured']
    >>> days_past_due(led, led.clock), apply(led, pay) == (led, [])
    (0, True)
    """
    if not isinstance(event, _REPAYMENTS):
        raise TypeError(f"not a repayment event: {type(event).__name__}")
    key = _secs(event.event_time)
    day = key // DAY
    if ledger is None:
        ledger = AccountLedger(event.account_id, day, product or "")
    elif ledger.account_id != event.account_id:
        raise ValueError(
            f"event for account {event.account_id!r} applied to ledger of {ledger.account_id!r}"
        )
    led = ledger
    if product is not None and product != led.product:
        led = replace(led, product=product)
    signals: list[Signal] = []
    unsettled = False
    if day > led.clock:
        nxt = next_check_day(led, config, pauses=pauses)
        if nxt is not None and nxt <= day:
            led, signals = _step(led, day, config, pauses, None)
        elif isinstance(event, InstallmentDue | StatementDue) and any(
            d.id == event.due_id for d in led.dues
        ):
            # A correction: the settle at the new day may retire the due (then
            # the correction is ignored), as after a sweep to that day; the
            # check days above do not include retirements.
            led = _settle(replace(led, clock=day), config)
            unsettled = True
        else:  # nothing to announce on the way: the settle below does the rest
            led = replace(led, clock=day)
            unsettled = True
    new = _incorporate(led, event, day, key, _h(event.event_id), config)
    if new is led and not unsettled:
        return led, signals
    new, more = _evaluate(_settle(new, config), config, pauses, day)
    if not more and new == led:  # e.g. a re-delivered event for a pruned deferral
        return led, signals
    return new, [*signals, *more]


def advance(
    ledger: AccountLedger,
    as_of_day: int,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
) -> tuple[AccountLedger, list[Signal]]:
    """Re-evaluate the ledger at event-time day ``as_of_day`` (watermark sweep).

    Raises bucket moves, onset, labels, broken promises and warnings that
    follow from time passing alone; never mutates ``ledger``. A day not after
    the ledger's clock changes nothing (the input is returned).

    >>> led = AccountLedger("a1", 19723, dues=[Due("i1", 19732, 10000)])
    >>> led2, sigs = advance(led, 19733)
    >>> [s.rule_id for s in sigs], days_past_due(led2, 19733)
    (['delinquency-onset'], 1)
    >>> advance(led2, 19700) == (led2, [])
    True
    """
    if as_of_day <= ledger.clock:
        return ledger, []
    return _step(ledger, as_of_day, config, pauses, None)


def next_check_day(
    ledger: AccountLedger,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
) -> int | None:
    """The next day after ``clock`` on which :func:`advance` could change anything.

    That is the earliest of: the next bucket/label threshold (1, 30, 90 and
    every bucket start) crossed by the oldest unpaid due, pauses taken into
    account; a plan installment falling past due; the day a due's cycle
    statistics are recorded (due date + grace + lateness + 1); the day a
    reversal waiting for its payment becomes final.
    While an open-ended pause blocks the clock: ``clock + paused_recheck_days``
    (so a crisis window that later gets an end date is picked up without
    scanning all accounts). ``None`` when nothing can happen without a new
    event. Index the account under this day in a :class:`DueIndex`.

    >>> led = AccountLedger("a1", 19723, dues=[Due("i1", 19732, 10000)])
    >>> next_check_day(led)
    19733
    >>> next_check_day(advance(led, 19733)[0], DelinquencyConfig(lateness_days=100))
    19762
    """
    c = ledger.clock
    g = config.grace_days
    cands: list[int] = []
    oldest = _oldest_unpaid(ledger, config)
    merged: Sequence[tuple[int, int | None]] | None = None  # built once, when needed
    if oldest is not None:
        merged = _pauses(ledger, pauses)
        start = oldest.day + g
        dpd = _unpaused_count(start, c, merged)
        lows = {b.lo for b in config.buckets_for(ledger.product) if b.lo > 0} | {1, 30, 90}
        nxt = min((t for t in lows if t > dpd), default=None)
        if nxt is not None:
            day = _kth_unpaused(start, nxt, merged)
            cands.append(c + config.paused_recheck_days if day is None else day)
    plan = ledger.plan
    for d in ledger.dues:
        if not d.flags & _CLOSED:
            cands.append(d.day + g + config.lateness_days + 1)
        if d.kind == PLAN_INSTALLMENT and _unpaid(d, plan) > config.tolerance_minor:
            # Missed on its first unpaused day after the grace (_plan_signals).
            if merged is None:
                merged = _pauses(ledger, pauses)
            missed = _kth_unpaused(d.day + g, 1, merged)
            cands.append(c + config.paused_recheck_days if missed is None else missed)
    live = {it.h for it in ledger.items if it.target == 0}
    for it in ledger.items:
        if it.target and it.target not in live:
            cands.append(it.key // DAY + config.reversal_window_days + config.lateness_days + 1)
    return min((x for x in cands if x > c), default=None)


def _paused_on(day: int, merged: Sequence[tuple[int, int | None]]) -> bool:
    """Whether ``day`` falls in one of the merged pauses.

    >>> _paused_on(12, [(10, 15)]), _paused_on(15, [(10, 15)]), _paused_on(99, [(20, None)])
    (True, False, True)
    """
    return any(s <= day and (e is None or day < e) for s, e in merged)


def upcoming_dues(
    ledger: AccountLedger,
    as_of_day: int,
    days_before: int,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
) -> list[tuple[str, int, int]]:
    """Dues a pre-due reminder on ``as_of_day`` is for, as ``(due_id, due_day, unpaid)``.

    A due qualifies when its due date is still ahead and within ``days_before``
    days (``as_of_day < due_day <= as_of_day + days_before``) and its unpaid
    obligation (a statement's minimum) exceeds the tolerance: not paid in
    advance, not superseded by a restructuring plan. Nothing qualifies on a
    paused day (the account's deferral or a crisis-wide pause), nor a due
    whose due date is paused.

    >>> led = AccountLedger("a", 100, dues=[Due("i1", 103, 10000), Due("i2", 104, 9000),
    ...                                     Due("i3", 102, 10000, paid=10000)])
    >>> upcoming_dues(led, 100, 3)
    [('i1', 103, 10000)]
    >>> upcoming_dues(led, 101, 3), upcoming_dues(led, 101, 3, pauses=[(101, 105)])
    ([('i1', 103, 10000), ('i2', 104, 9000)], [])
    """
    merged = _pauses(ledger, pauses)
    if _paused_on(as_of_day, merged):
        return []
    out = []
    for d in ledger.dues:  # sorted by (day, id)
        if d.day <= as_of_day or d.kind == REVERSAL_CARRY:
            continue
        if d.day > as_of_day + days_before:
            break
        unpaid = _unpaid(d, ledger.plan)
        if unpaid > config.tolerance_minor and not _paused_on(d.day, merged):
            out.append((d.id, d.day, unpaid))
    return out


def next_reminder_day(
    ledger: AccountLedger,
    after_day: int,
    days_before: int,
    config: DelinquencyConfig = DEFAULT_CONFIG,
    *,
    pauses: Sequence[Pause] = (),
    skip: Container[str] = (),
) -> int | None:
    """The first day after ``after_day`` on which :func:`upcoming_dues` lists a due
    not in ``skip`` (the dues already reminded), or ``None``.

    That is ``due_day - days_before`` (or the day after ``after_day``, for a due
    already inside its window), moved to the end of a pause covering it, for
    every unpaid due whose date is neither passed nor paused. Index it together
    with :func:`next_check_day` so a watermark sweep reaches the reminder with
    no scan: a check day per due date, not per account.

    >>> led = AccountLedger("a", 100, dues=[Due("i1", 110, 10000), Due("i2", 120, 10000)])
    >>> next_reminder_day(led, 100, 3), next_reminder_day(led, 100, 3, skip={"i1"})
    (107, 117)
    >>> next_reminder_day(led, 108, 3), next_reminder_day(led, 100, 3, pauses=[(105, 109)])
    (109, 109)
    >>> next_reminder_day(led, 100, 3, pauses=[(105, 111)], skip={"i2"}) is None
    True
    """
    merged = _pauses(ledger, pauses)
    best: int | None = None
    for d in ledger.dues:
        if d.day <= after_day + 1 or d.kind == REVERSAL_CARRY or d.id in skip:
            continue
        if best is not None and d.day - days_before >= best:
            break  # dues are sorted by day: no later one can come first
        if _unpaid(d, ledger.plan) <= config.tolerance_minor or _paused_on(d.day, merged):
            continue
        day: int | None = max(d.day - days_before, after_day + 1)
        for s, e in merged:
            if day is not None and s <= day and (e is None or day < e):
                day = e
        if day is not None and day < d.day and (best is None or day < best):
            best = day
    return best


class DueIndex:
    """Which keys (accounts) need a check on which day: one pending day per key.

    ``add`` replaces the key's previous day; ``pop_due`` returns, sorted by
    day then key, every key due up to a day, with work proportional to the
    days crossed (stale heap entries are skipped, and compacted when they
    outnumber live days).

    >>> idx = DueIndex()
    >>> idx.add("a1", 19733); idx.add("a2", 19740); idx.add("a1", 19735); idx.add("a3", None)
    >>> len(idx), idx.next_day()
    (2, 19735)
    >>> idx.pop_due(19736), idx.pop_due(19739), idx.pop_due(19740)
    (['a1'], [], ['a2'])
    """

    __slots__ = ("_by_day", "_day_of", "_heap")

    def __init__(self) -> None:
        """An empty index.

        >>> len(DueIndex())
        0
        """
        self._by_day: dict[int, set[str]] = {}
        self._day_of: dict[str, int] = {}
        self._heap: list[int] = []

    def __len__(self) -> int:
        """Number of keys waiting.

        >>> i = DueIndex(); i.add("k", 1); len(i)
        1
        """
        return len(self._day_of)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is waiting.

        >>> i = DueIndex(); i.add("k", 1); "k" in i, "x" in i
        (True, False)
        """
        return key in self._day_of

    def day_of(self, key: str) -> int | None:
        """The day ``key`` waits for, if any.

        >>> i = DueIndex(); i.add("k", 7); i.day_of("k"), i.day_of("x")
        (7, None)
        """
        return self._day_of.get(key)

    def add(self, key: str, day: int | None) -> None:
        """Wait for ``day`` (``None`` removes the key); replaces any earlier day of the key.

        >>> i = DueIndex(); i.add("k", 7); i.add("k", 3); i.day_of("k")
        3
        """
        old = self._day_of.get(key)
        if old == day:
            return
        if old is not None:
            self.discard(key)
        if day is None:
            return
        keys = self._by_day.get(day)
        if keys is None:
            self._by_day[day] = keys = set()
            heapq.heappush(self._heap, day)
        keys.add(key)
        self._day_of[key] = day
        if len(self._heap) > 2 * len(self._by_day) + 64:
            self._heap = list(self._by_day)
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        """Stop waiting for ``key`` (no error if absent).

        >>> i = DueIndex(); i.add("k", 7); i.discard("k"); i.discard("k"); len(i)
        0
        """
        day = self._day_of.pop(key, None)
        if day is None:
            return
        keys = self._by_day[day]
        keys.discard(key)
        if not keys:
            del self._by_day[day]

    def next_day(self) -> int | None:
        """The earliest day any key waits for.

        >>> i = DueIndex(); i.next_day() is None
        True
        """
        while self._heap and self._heap[0] not in self._by_day:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def pop_due(self, up_to_day: int) -> list[str]:
        """Remove and return every key waiting for a day ``<= up_to_day``.

        >>> i = DueIndex(); i.add("b", 5); i.add("a", 5); i.add("c", 9); i.pop_due(6)
        ['a', 'b']
        """
        out: list[str] = []
        heap = self._heap
        while heap and heap[0] <= up_to_day:
            day = heapq.heappop(heap)
            keys = self._by_day.pop(day, None)
            if not keys:
                continue
            for key in sorted(keys):
                del self._day_of[key]
                out.append(key)
        return out
