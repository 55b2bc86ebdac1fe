"""The risk policy: validation errors name the field."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from alerts.engine import Engine
from alerts.policy import load_policy_text, parse_policy
from schemas.errors import ConfigError, PolicyError
from schemas.models import CustomerProfile, InstallmentDue


@pytest.mark.parametrize(("crisis", "field"), [
    ("{active: true, start: 2026-03-01T00:00:00}", "$.crisis.start"),
    ("{active: true, start: 2026-03-01T00:00:00Z, end: 2026-03-10T00:00:00}", "$.crisis.end"),
    ("{active: true, start: '2026-03-01T00:00:00'}", "$.crisis.start"),
    ("{active: true, end: 2026-03-10}", "$.crisis.end"),
])
def test_crisis_window_without_utc_offset_is_refused_at_load(crisis, field):
    with pytest.raises(PolicyError) as info:
        load_policy_text(f"version: v1\ncrisis: {crisis}")
    assert isinstance(info.value, ConfigError)
    assert f"at `{field}`" in str(info.value)
    assert "timezone" in str(info.value) or "datetime" in str(info.value)


def test_crisis_window_with_offsets_loads_and_applies():
    policy = load_policy_text("version: v1\ncrisis: {active: true, "
                              "start: 2026-03-01T00:00:00+01:00, end: '2026-03-10T00:00:00Z'}")
    crisis = policy.crisis
    assert crisis.start == dt.datetime(2026, 2, 28, 23, tzinfo=dt.UTC)
    assert crisis.in_force(dt.datetime(2026, 3, 2, tzinfo=dt.UTC))
    assert not crisis.in_force(dt.datetime(2026, 3, 10, tzinfo=dt.UTC))
    with pytest.raises(PolicyError, match=r"\$\.crisis\.start"):  # a JSON document too
        parse_policy({"crisis": {"active": True, "start": "2026-03-01T00:00:00"}})
    # The engine evaluates limits under it (a naive window used to crash every evaluation).
    engine = Engine(policy)
    t0 = dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC)
    state = engine.process("customer-profiles", CustomerProfile(
        event_id="p1", event_time=t0, customer_id="c1", credit_limit_minor=500_000,
        currency="EUR", products=["credit_card"], sector="retail", region="de-be",
        segment="mass", timezone="UTC"), None).state
    engine.process("repayments", InstallmentDue(
        event_id="d1", event_time=t0, customer_id="c1", account_id="a1", due_id="i1",
        due_date=dt.date(2026, 3, 11), amount_minor=10_000, currency="EUR"), state)


def test_crisis_pause_days_are_utc_days():
    # 20:00 at -05:00 is 01:00 UTC the next day: day numbering is UTC, like event days.
    policy = load_policy_text("version: v1\ncrisis: {active: true, "
                              "start: '2026-03-01T20:00:00-05:00', end: '2026-03-10T20:00:00-05:00'}")
    epoch = dt.date(1970, 1, 1)
    assert policy.pauses() == [((dt.date(2026, 3, 2) - epoch).days,
                                (dt.date(2026, 3, 11) - epoch).days)]


@pytest.mark.parametrize(("crisis", "field", "message"), [
    ("{start: 2026-03-10T00:00:00Z, end: 2026-03-01T00:00:00Z}", "$.crisis",
     "crisis.start must be before crisis.end"),
    ("{start: 2026-03-10T00:00:00Z, end: 2026-03-10T00:00:00Z}", "$.crisis",
     "crisis.start must be before crisis.end"),
    ("{deferred: [{start: 2026-01-01T00:00:00Z, end: 2026-01-05T00:00:00Z},"
     " {start: 2026-03-10T00:00:00Z, end: 2026-03-01T00:00:00Z}]}", "$.crisis.deferred[1]",
     "start must be before end"),
    ("{deferred: [{start: 2026-01-01T00:00:00Z}]}", "$.crisis.deferred[0]", "missing"),
    ("{deferred: [{start: 2026-01-01T00:00:00, end: 2026-01-05T00:00:00Z}]}",
     "$.crisis.deferred[0].start", "timezone"),
])
def test_crisis_windows_must_end_after_they_start(crisis, field, message):
    with pytest.raises(PolicyError) as info:
        load_policy_text(f"version: v1\ncrisis: {crisis}")
    assert f"at `{field}`" in str(info.value) and message in str(info.value)


def test_deferred_crisis_windows_pause_the_clock_and_old_documents_still_load():
    from alerts.policy import MAX_DEFERRED, CrisisMode

    # A document from before crisis.deferred existed loads with nothing deferred.
    old = parse_policy({"version": "old", "crisis": {"active": False, "defer_payments": True}})
    assert old.crisis.deferred == () and old.pauses() == []
    policy = load_policy_text(
        "version: v1\ncrisis:\n  active: false\n  deferred:\n"
        "    - {start: 2026-01-01T00:00:00Z, end: 2026-01-11T00:00:00Z}\n"
        "    - {start: 2026-02-01T12:00:00Z, end: 2026-02-03T00:00:00Z}\n")
    day = (dt.date(2026, 1, 1) - dt.date(1970, 1, 1)).days
    assert policy.pauses() == [(day, day + 10), (day + 31, day + 33)]
    assert not policy.crisis.in_force(dt.datetime(2026, 1, 5, tzinfo=dt.UTC))  # no limit rule
    days = [dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=d)
            for d in range(MAX_DEFERRED + 1)]
    too_many = [{"start": d.isoformat(), "end": (d + dt.timedelta(hours=12)).isoformat()}
                for d in days]
    with pytest.raises(PolicyError, match=r"length <= 32 - at `\$\.crisis\.deferred`"):
        parse_policy({"crisis": {"deferred": too_many}})
    # Switching off past the bound joins the two oldest windows (in the customers' favour).
    full = parse_policy({"crisis": {"deferred": too_many[:MAX_DEFERRED]}}).crisis
    on = CrisisMode(active=True, start=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
                    deferred=full.deferred)
    off = on.switched_off(dt.datetime(2026, 3, 5, tzinfo=dt.UTC))
    assert len(off.deferred) == MAX_DEFERRED
    assert (off.deferred[0].start, off.deferred[0].end) == (
        dt.datetime(2025, 1, 1, tzinfo=dt.UTC), dt.datetime(2025, 1, 2, 12, tzinfo=dt.UTC))
    assert off.deferred[-1].end == dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    # A crisis that did not defer payments leaves nothing deferred.
    no_deferral = msgspec.structs.replace(on, defer_payments=False, deferred=())
    assert no_deferral.switched_off(dt.datetime(2026, 3, 5, tzinfo=dt.UTC)).deferred == ()


@pytest.mark.parametrize(("text", "field"), [
    ("large_transaction: {multiple: .inf}", "$.large_transaction.multiple"),
    ("large_transaction: {multiple: 'inf'}", "$.large_transaction.multiple"),
    ("anomaly: {min_score: .nan}", "$.anomaly.min_score"),
])
def test_non_finite_numbers_are_refused_at_load(text, field):
    # JSON has no infinity: it would be published as null, which every worker rejects.
    with pytest.raises(PolicyError) as info:
        load_policy_text(f"version: v1\n{text}")
    assert f"at `{field}`" in str(info.value)


def test_text_that_is_not_utf8_is_refused_at_load():
    with pytest.raises(PolicyError) as info:
        parse_policy({"version": "v\ud800"})
    assert "UTF-8" in str(info.value) and "at `$.version`" in str(info.value)
    str(info.value).encode("utf-8")  # the error itself can be sent anywhere
