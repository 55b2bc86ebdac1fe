"""The risk policy: validation errors name the field."""

from __future__ import annotations

import datetime as dt

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
