"""Tests of the synthetic portfolio generator (``streams/simulator.py``).

The generator must be deterministic, stream with bounded memory, emit only
records that the codec accepts (except deliberate poison, which must fail with
the advertised reason), keep event-time order, and its ground truth must agree
with the events it emitted: the days-past-due dates are recomputed here from the
repayment events alone, independently of the generator's ledger.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import subprocess
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import models as m
from schemas.codec import decode, encode, from_plain, loads
from schemas.errors import ConfigError, DecodeError
from streams.simulator import (
    DEFAULT_MIX,
    POISON_KINDS,
    SCENARIOS,
    SECTORS,
    SIM_TOPICS,
    GroundTruth,
    PoisonRecord,
    Portfolio,
    Simulator,
    ground_truth,
    iter_events,
    write_jsonl,
)

Events = list[tuple[str, str, Any]]

SMALL = Portfolio(customers=120, days=75, seed=11)
#: Long enough for every scenario to play out, with a larger share of each.
LONG = Portfolio(
    customers=320,
    days=240,
    seed=2026,
    mix={name: 0.06 for name in SCENARIOS[1:]},
)


def _now(cfg: Portfolio) -> dt.datetime:
    """A fixed decoder clock just after the last possible event."""
    return dt.datetime.combine(cfg.start, dt.time(0), dt.UTC) + dt.timedelta(days=cfg.days + 1)


def _run(cfg: Portfolio) -> tuple[Events, list[GroundTruth], Simulator]:
    sim = Simulator(cfg)
    events = list(sim.events())
    return events, sim.ground_truth(), sim


@pytest.fixture(scope="module")
def small() -> tuple[Events, list[GroundTruth], Simulator]:
    return _run(SMALL)


@pytest.fixture(scope="module")
def long() -> tuple[Events, list[GroundTruth], Simulator]:
    return _run(LONG)


def _blob(events: Iterable[tuple[str, str, Any]]) -> bytes:
    parts = []
    for topic, key, record in events:
        raw = bytes(record) if isinstance(record, bytes) else encode(record)
        parts.append(f"{topic}\t{key}\t".encode() + raw)
    return b"\n".join(parts)


# --------------------------------------------------------------------------- #
# Determinism, streaming, speed
# --------------------------------------------------------------------------- #


def test_same_seed_same_bytes_and_other_seed_differs(small: Any) -> None:
    events, truth, _ = small
    again, truth_again, _ = _run(SMALL)
    assert _blob(events) == _blob(again)
    assert [encode(g) for g in truth] == [encode(g) for g in truth_again]
    other = list(iter_events(Portfolio(customers=120, days=75, seed=12)))
    assert _blob(events) != _blob(other)


def test_write_jsonl_is_deterministic_and_counts_lines(tmp_path: Path) -> None:
    cfg = Portfolio(customers=60, days=40, seed=5)
    counts_a = write_jsonl(cfg, tmp_path / "a")
    counts_b = write_jsonl(cfg, tmp_path / "b")
    assert counts_a == counts_b
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"{t}.jsonl" for t in SIM_TOPICS] + ["ground_truth.jsonl"])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    now = _now(cfg)
    for topic in SIM_TOPICS:
        lines = (tmp_path / "a" / f"{topic}.jsonl").read_bytes().splitlines()
        assert len(lines) == counts_a[topic]
        times = [decode(topic, line, now=now).event_time for line in lines]
        assert times == sorted(times), topic
    truth_lines = (tmp_path / "a" / "ground_truth.jsonl").read_bytes().splitlines()
    assert counts_a["ground_truth"] == len(truth_lines) == cfg.customers
    truth = [from_plain(GroundTruth, loads(line)) for line in truth_lines]
    assert truth == ground_truth(cfg)
    assert counts_a["poison"] == 0


def test_iter_events_is_a_lazy_stream() -> None:
    assert inspect.isgeneratorfunction(iter_events)
    big = Portfolio(customers=100_000, days=30, seed=1)
    started = time.perf_counter()
    first = list(itertools.islice(iter_events(big), 500))
    assert time.perf_counter() - started < 2.0
    # Profiles come first, one per customer, before any other event.
    assert [topic for topic, _, _ in first] == ["customer-profiles"] * 500
    assert [key for _, key, _ in first] == [f"c{i:06d}" for i in range(500)]


def test_memory_stays_bounded_over_a_long_run() -> None:
    cfg = Portfolio(customers=25, days=500, seed=3)
    tracemalloc.start()
    try:
        count = 0
        encoded = 0
        for _topic, _key, record in iter_events(cfg):
            count += 1
            if count % 50 == 0:
                assert isinstance(record, msgspec.Struct)
                encoded += 50 * len(encode(record))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 10_000
    # Materialising the run would take far more than its encoded size; a stream
    # holds only the customers' state and one day of events.
    assert peak < 2_000_000, peak
    assert peak < encoded / 2, (peak, encoded)


def test_generation_is_fast_enough() -> None:
    cfg = Portfolio(customers=600, days=30, seed=4)
    started = time.perf_counter()
    count = sum(1 for _ in iter_events(cfg))
    rate = count / (time.perf_counter() - started)
    assert count > 15_000
    assert rate > 10_000, f"{rate:.0f} events/s"


# --------------------------------------------------------------------------- #
# Contracts: decode, order, ids, keys
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("which", ["small", "long"])
def test_every_record_decodes_back_to_itself(which: str, request: pytest.FixtureRequest) -> None:
    events, _, sim = request.getfixturevalue(which)
    now = _now(sim.config)
    for topic, key, record in events:
        assert not isinstance(record, bytes)
        assert decode(topic, encode(record), key=key, now=now) == record


@pytest.mark.parametrize("which", ["small", "long"])
def test_event_time_order_ids_and_keys(which: str, request: pytest.FixtureRequest) -> None:
    events, _, sim = request.getfixturevalue(which)
    cfg = sim.config
    start = dt.datetime.combine(cfg.start, dt.time(0), dt.UTC)
    end = start + dt.timedelta(days=cfg.days)
    times = [record.event_time for _, _, record in events]
    assert times == sorted(times)
    assert start <= times[0] and times[-1] < end
    assert all(t.tzinfo is dt.UTC for t in times)
    per_topic: dict[str, list[dt.datetime]] = defaultdict(list)
    for topic, _, record in events:
        per_topic[topic].append(record.event_time)
    for topic, topic_times in per_topic.items():
        assert topic_times == sorted(topic_times), topic
    ids = [record.event_id for _, _, record in events]
    assert len(ids) == len(set(ids))
    seen_profile: set[str] = set()
    for topic, key, record in events:
        if topic == "sector-indicators":
            assert key == record.sector
            continue
        assert key == record.customer_id
        if topic == "customer-profiles":
            seen_profile.add(key)
        else:
            assert key in seen_profile, "profile must come before the customer's other events"
    assert len(seen_profile) == cfg.customers
    assert set(per_topic) == set(SIM_TOPICS)


def test_records_look_like_a_real_portfolio(long: Any) -> None:
    events, _, _ = long
    profiles = [r for t, _, r in events if t == "customer-profiles"]
    assert {p.currency for p in profiles} == {"EUR"}
    assert len({p.sector for p in profiles}) == len(SECTORS)
    assert len({p.region for p in profiles}) == 6
    assert all(p.timezone.startswith("Europe/") for p in profiles)
    assert {prod for p in profiles for prod in p.products} == {
        "credit_card",
        "installment_plan",
        "personal_loan",
    }
    txs = [r for t, _, r in events if t == "card-transactions"]
    assert {tx.type for tx in txs} == {
        "purchase",
        "cash_advance",
        "refund",
        "installment_conversion",
    }
    assert {tx.channel for tx in txs} == {"pos", "contactless", "ecom", "moto", "atm"}
    mccs = Counter(tx.mcc for tx in txs)
    assert mccs.most_common(1)[0][0] in ("5411", "5999", "5812")
    assert {"5411", "5541", "5812", "5999", "5311", "4511", "6011"} <= set(mccs)
    assert all(tx.installment_months for tx in txs if tx.type == "installment_conversion")
    purchases = [tx.amount_minor for tx in txs if tx.type == "purchase"]
    median = sorted(purchases)[len(purchases) // 2]
    assert 1_000 <= median <= 10_000  # 10-100 EUR
    repayments = Counter(r.__struct_config__.tag for t, _, r in events if t == "repayments")
    assert set(repayments) == {
        "statement_due",
        "installment_due",
        "payment_received",
        "payment_reversed",
        "plan_agreed",
        "deferral_started",
        "deferral_ended",
    }
    for r in (r for t, _, r in events if isinstance(r, m.StatementDue)):
        assert r.minimum_minor <= r.amount_minor
        assert r.minimum_minor == min(r.amount_minor, max(r.amount_minor * 3 // 100, 2_500))
        assert (r.due_date - r.event_time.date()).days == 25
    outcomes = Counter(r.label for t, _, r in events if t == "outcomes")
    assert {"default", "fraud_confirmed", "cured"} <= set(outcomes)
    indicators = [r for t, _, r in events if t == "sector-indicators"]
    assert {i.indicator for i in indicators} == {"prosperity_index"}
    assert all(80 < i.value < 110 for i in indicators)


# --------------------------------------------------------------------------- #
# Ground truth
# --------------------------------------------------------------------------- #


def _by_customer(events: Events) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for topic, key, record in events:
        if topic != "sector-indicators":
            out[key].append((topic, record))
    return out


def test_scenario_assignment_follows_the_mix() -> None:
    sim = Simulator(Portfolio(customers=1_000, days=10, seed=9))
    counts = Counter(sim._assign)
    for name, share in DEFAULT_MIX.items():
        assert counts[name] == round(share * 1_000)
    assert counts["steady_good"] == 1_000 - sum(round(s * 1_000) for s in DEFAULT_MIX.values())
    tiny = Simulator(Portfolio(customers=10, days=10, seed=9, mix={"income_shock": 0.01}))
    assert Counter(tiny._assign) == {"steady_good": 9, "income_shock": 1}


def test_every_scenario_has_consistent_ground_truth(long: Any) -> None:
    events, truth, sim = long
    cfg = sim.config
    horizon_end = cfg.start + dt.timedelta(days=cfg.days)
    by_scenario: dict[str, list[GroundTruth]] = defaultdict(list)
    for g in truth:
        by_scenario[g.scenario].append(g)
    assert set(by_scenario) == set(SCENARIOS)
    assert len(by_scenario["steady_good"]) > len(truth) // 2
    per_customer = _by_customer(events)
    defaults = {r.customer_id: r for t, _, r in events if t == "outcomes" and r.label == "default"}

    for g in truth:
        assert cfg.start <= g.scenario_start < horizon_end
        if g.first_30dpd_date is not None:
            assert g.first_30dpd_date < horizon_end
        if g.first_90dpd_date is not None:
            assert g.first_30dpd_date is not None
            assert (g.first_90dpd_date - g.first_30dpd_date).days >= 60
            assert defaults[g.customer_id].effective_date == g.first_90dpd_date
        else:
            assert g.customer_id not in defaults
        if g.scenario != "card_fraud_burst":
            assert g.fraud_window is None

    for g in by_scenario["steady_good"]:
        assert g.first_30dpd_date is None and g.first_90dpd_date is None

    def cash_share(group: list[GroundTruth]) -> float:
        txs = [
            r
            for g in group
            for t, r in per_customer[g.customer_id]
            if t == "card-transactions" and r.event_time.date() >= g.scenario_start
        ]
        return sum(r.type == "cash_advance" for r in txs) / len(txs)

    rising = 0
    for g in by_scenario["gradual_deterioration"]:
        assert g.first_30dpd_date is not None, g
        assert g.first_30dpd_date > g.scenario_start
        statements = [
            r.amount_minor for t, r in per_customer[g.customer_id] if isinstance(r, m.StatementDue)
        ]
        rising += statements[-1] > statements[0]
    assert rising >= len(by_scenario["gradual_deterioration"]) * 0.8  # utilisation rises
    assert cash_share(by_scenario["gradual_deterioration"]) > 4 * cash_share(
        by_scenario["steady_good"]
    )
    assert any(g.first_90dpd_date for g in by_scenario["gradual_deterioration"])

    for g in by_scenario["income_shock"]:
        paid = [
            r
            for t, r in per_customer[g.customer_id]
            if isinstance(r, m.PaymentReceived) and r.event_time.date() >= g.scenario_start
        ]
        assert not paid, "payments stop at the shock"
    assert sum(g.first_30dpd_date is not None for g in by_scenario["income_shock"]) >= (
        len(by_scenario["income_shock"]) * 3 // 4
    )

    for g in by_scenario["card_fraud_burst"]:
        assert g.fraud_window is not None
        first, last = g.fraud_window
        assert first.date() == g.scenario_start
        assert dt.timedelta(0) < last - first <= dt.timedelta(hours=5)
        burst = [
            r
            for t, r in per_customer[g.customer_id]
            if t == "card-transactions" and r.type == "purchase" and first <= r.event_time <= last
        ]
        fraud = [r for r in burst if r.merchant_id.split("-")[1].startswith("f")]
        assert len(fraud) >= 5
        assert {r.channel for r in fraud} <= {"ecom", "moto"}
        assert all(r.country not in ("DE", "FR", "ES", "IT", "NL", "PT") for r in fraud)
        assert {r.mcc for r in fraud} & {"7995", "6051", "4829", "5933"}
        confirmed = [
            r
            for t, r in per_customer[g.customer_id]
            if t == "outcomes" and r.label == "fraud_confirmed"
        ]
        if confirmed:
            assert confirmed[0].event_time > last
            refunds = [
                r
                for t, r in per_customer[g.customer_id]
                if t == "card-transactions"
                and r.type == "refund"
                and r.event_time > confirmed[0].event_time
            ]
            assert len(refunds) >= len(fraud)
        assert g.first_30dpd_date is None

    assert sim.downturn is not None
    sector, fall_starts = sim.downturn
    for g in by_scenario["sector_downturn"]:
        assert g.sector == sector
        assert g.scenario_start >= fall_starts
        assert g.variant in ("severe", "moderate", "mild")
    assert any(g.first_30dpd_date for g in by_scenario["sector_downturn"])
    values = [
        (r.event_time.date(), r.value)
        for t, key, r in events
        if t == "sector-indicators" and key == sector
    ]
    before = [v for d, v in values if d < fall_starts]
    after = [v for d, v in values if d >= fall_starts]
    assert before and len(after) >= 2
    assert max(after) < min(before) - 2
    assert after[-1] < after[0] - 3
    in_sector = [p for t, _, p in events if t == "customer-profiles" and p.sector == sector]
    assert len(in_sector) > len(by_scenario["sector_downturn"])  # only a share degrades

    for name in ("hardship_restructured_kept", "hardship_restructured_broken"):
        for g in by_scenario[name]:
            plans = [r for t, r in per_customer[g.customer_id] if isinstance(r, m.PlanAgreed)]
            if g.first_30dpd_date is None:
                continue  # nothing was due after the hardship began
            assert plans, g
            assert plans[0].event_time.date() > g.first_30dpd_date
            if name.endswith("kept"):
                assert g.first_90dpd_date is None
        assert sum(g.first_30dpd_date is not None for g in by_scenario[name]) >= (
            len(by_scenario[name]) * 3 // 4
        )

    for g in by_scenario["application_spree"]:
        apps = sorted(
            r.event_time
            for t, r in per_customer[g.customer_id]
            if t == "credit-applications" and r.event_time.date() >= g.scenario_start
        )
        window = [a for a in apps if a - apps[0] <= dt.timedelta(hours=48)]
        assert apps[0].date() == g.scenario_start
        assert len(window) >= 3
        assert g.variant in ("stretched", "then_deteriorated")
        if g.variant == "stretched":
            assert g.first_30dpd_date is None


def _reference_dpd(events: Events, cfg: Portfolio) -> dict[str, tuple[Any, Any]]:
    """First 30 and 90 DPD dates per customer, from the repayment events only.

    Dues are statement minimums and installments; payments settle the oldest
    dues first and count at most what has been issued; a reversal takes back what
    its payment settled; a plan replaces the account's dues; deferral days do not
    count; DPD is evaluated at the end of each UTC day.
    """

    class Acct:
        def __init__(self) -> None:
            self.dues: list[tuple[dt.date, int]] = []
            self.cum = 0
            self.paid = 0
            self.credits: dict[str, int] = {}
            self.deferrals: list[tuple[dt.date, dt.date]] = []

        def dpd(self, day: dt.date) -> int:
            due = next((d for d, cum in self.dues if cum > self.paid), None)
            if due is None or due >= day:
                return 0
            late = (day - due).days
            for start, until in self.deferrals:
                lo, hi = (
                    max(due + dt.timedelta(days=1), start),
                    min(day + dt.timedelta(days=1), until),
                )
                late -= max(0, (hi - lo).days)
            return late

    accts: dict[str, Acct] = defaultdict(Acct)
    owner: dict[str, str] = {}
    first: dict[str, list[Any]] = defaultdict(lambda: [None, None])

    def close(day: dt.date) -> None:
        worst: dict[str, int] = defaultdict(int)
        for aid, acct in accts.items():
            worst[owner[aid]] = max(worst[owner[aid]], acct.dpd(day))
        for cid, dpd in worst.items():
            if dpd >= 30 and first[cid][0] is None:
                first[cid][0] = day
            if dpd >= 90 and first[cid][1] is None:
                first[cid][1] = day

    day = cfg.start
    for topic, _, r in events:
        if topic != "repayments":
            continue
        while day < r.event_time.date():
            close(day)
            day += dt.timedelta(days=1)
        acct = accts[r.account_id]
        owner[r.account_id] = r.customer_id
        if isinstance(r, m.StatementDue | m.InstallmentDue):
            acct.cum += r.minimum_minor if isinstance(r, m.StatementDue) else r.amount_minor
            acct.dues.append((r.due_date, acct.cum))
        elif isinstance(r, m.PaymentReceived):
            credited = max(0, min(r.amount_minor, acct.cum - acct.paid))
            acct.paid += credited
            acct.credits[r.event_id] = credited
        elif isinstance(r, m.PaymentReversed):
            acct.paid -= acct.credits.pop(r.reversed_event_id)
        elif isinstance(r, m.PlanAgreed):
            acct.dues, acct.cum, acct.paid, acct.credits = [], 0, 0, {}
            for inst in r.installments:
                acct.cum += inst.amount_minor
                acct.dues.append((inst.due_date, acct.cum))
        elif isinstance(r, m.DeferralStarted):
            assert r.until is not None
            acct.deferrals.append((r.event_time.date(), r.until))
    end = cfg.start + dt.timedelta(days=cfg.days)
    while day < end:
        close(day)
        day += dt.timedelta(days=1)
    return {cid: (v[0], v[1]) for cid, v in first.items()}


def test_ground_truth_dpd_matches_the_emitted_repayments(long: Any) -> None:
    events, truth, sim = long
    reference = _reference_dpd(events, sim.config)
    mismatches = [
        (
            g.customer_id,
            g.scenario,
            (g.first_30dpd_date, g.first_90dpd_date),
            reference.get(g.customer_id, (None, None)),
        )
        for g in truth
        if (g.first_30dpd_date, g.first_90dpd_date) != reference.get(g.customer_id, (None, None))
    ]
    assert not mismatches
    assert sum(1 for v in reference.values() if v[0]) > 40


# --------------------------------------------------------------------------- #
# Poison records
# --------------------------------------------------------------------------- #


def test_poison_records_fail_decode_with_their_reason() -> None:
    cfg = Portfolio(customers=60, days=45, seed=8, poison_rate=0.1)
    now = _now(cfg)
    events = list(iter_events(cfg))
    poison = [(t, k, r) for t, k, r in events if isinstance(r, PoisonRecord)]
    assert 0.05 < len(poison) / len(events) < 0.15
    reasons = Counter(r.reason for _, _, r in poison)
    assert set(reasons) >= set(POISON_KINDS) - {"non_finite_number"}
    for topic, key, record in poison:
        assert isinstance(record, bytes) and b"\n" not in record
        with pytest.raises(DecodeError) as info:
            decode(topic, record, key=key, now=now)
        assert info.value.reason == record.reason, (topic, key, record)
    # The genuine stream is untouched by poison.
    genuine = [e for e in events if not isinstance(e[2], PoisonRecord)]
    assert _blob(genuine) == _blob(iter_events(Portfolio(customers=60, days=45, seed=8)))


def test_sector_indicator_poison_includes_non_finite() -> None:
    cfg = Portfolio(customers=5, days=5, seed=1)
    sim = Simulator(cfg)
    indicator = m.SectorIndicator(
        event_id="si-retail-1",
        event_time=dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC),
        sector="retail",
        indicator="prosperity_index",
        value=101.5,
        period="2026-01",
    )
    seen = set()
    for _ in range(200):
        topic, key, record = sim._poison("sector-indicators", "retail", indicator)
        with pytest.raises(DecodeError) as info:
            decode(topic, record, key=key, now=_now(cfg))
        assert info.value.reason == record.reason
        seen.add(record.reason)
    assert "non_finite_number" in seen
    assert "key_mismatch" not in seen  # an indicator has no customer to mismatch


def test_write_jsonl_with_poison(tmp_path: Path) -> None:
    cfg = Portfolio(customers=40, days=35, seed=2, poison_rate=0.05)
    counts = write_jsonl(cfg, tmp_path)
    now = _now(cfg)
    bad = 0
    for topic in SIM_TOPICS:
        lines = (tmp_path / f"{topic}.jsonl").read_bytes().splitlines()
        assert len(lines) == counts[topic]
        for line in lines:
            try:
                decode(topic, line, now=now)
            except DecodeError as exc:
                assert exc.reason in POISON_KINDS and exc.reason != "key_mismatch"
                bad += 1
    assert bad == counts["poison"] > 0


# --------------------------------------------------------------------------- #
# Configuration and properties
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customers": 0},
        {"days": 0},
        {"poison_rate": 1.0},
        {"poison_rate": -0.1},
        {"mix": {"steady_good": 0.5}},
        {"mix": {"no_such_scenario": 0.1}},
        {"mix": {"income_shock": 0.7, "card_fraud_burst": 0.5}},
        {"mix": {"income_shock": -0.1}},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Portfolio(**kwargs)


def test_module_needs_no_kafka_client() -> None:
    code = (
        "import sys, streams.simulator; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_a_simulator_runs_once() -> None:
    sim = Simulator(Portfolio(customers=2, days=2))
    with pytest.raises(RuntimeError):
        sim.ground_truth()
    list(sim.events())
    assert len(sim.ground_truth()) == 2
    with pytest.raises(RuntimeError):
        list(sim.events())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    customers=st.integers(1, 25),
    days=st.integers(1, 70),
    seed=st.integers(0, 2**32),
    share=st.floats(0.0, 0.12),
    start=st.dates(dt.date(2024, 1, 1), dt.date(2030, 12, 31)),
)
def test_any_small_portfolio_is_valid_and_ordered(
    customers: int, days: int, seed: int, share: float, start: dt.date
) -> None:
    cfg = Portfolio(
        customers=customers,
        days=days,
        seed=seed,
        start=start,
        mix={name: share for name in SCENARIOS[1:]},
    )
    now = _now(cfg)
    sim = Simulator(cfg)
    last = None
    record: Any
    for topic, key, record in sim.events():
        assert decode(topic, encode(record), key=key, now=now) == record
        assert last is None or record.event_time >= last
        last = record.event_time
    truth = sim.ground_truth()
    assert [g.customer_id for g in truth] == [f"c{i:06d}" for i in range(customers)]
    assert all(isinstance(msgspec.to_builtins(g), dict) for g in truth)


def test_installment_dues_name_the_accounts_product(small: Any) -> None:
    """Personal loans and installment plans roll under their own products."""
    events, _, _ = small
    dues = [r for _, _, r in events if isinstance(r, m.InstallmentDue)]
    products = {r.product for r in dues}
    assert products == {"installment_plan", "personal_loan"}
    for due in dues:
        assert due.account_id.endswith("-pl") == (due.product == "personal_loan")
