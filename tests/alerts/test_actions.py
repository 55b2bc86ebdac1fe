"""Customer actions: escalation ladder, quiet hours, frequency caps."""

from __future__ import annotations

import datetime as dt
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.actions import (
    TIER_ACTIONS,
    TIER_NON_ACTIONS,
    ActionPolicy,
    DueReminder,
    PreDueReminder,
    plan_actions,
    plan_pre_due,
    plan_tier_actions,
)
from alerts.grades import RESPONSES
from schemas.models import ActionChannel, ActionKind, RiskAlert

T = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)


def alert(codes, when=T, alert_id="a-1", alert_type="delinquency"):
    return RiskAlert(alert_id=alert_id, customer_id="c1", trigger_event_id="e1", event_time=when,
                     policy_version="p", model_version="m", reason_codes=codes, evidence=[],
                     alert_type=alert_type, severity="medium", rule_id="r", rule_version=1,
                     routing=[], account_id="acc")


def kinds(codes, policy=ActionPolicy()):
    actions, _, _ = plan_actions(alert(codes), "UTC", [], policy)
    return [(a.action, a.channel) for a in actions]


def test_escalation_ladder():
    assert kinds(["delinquency_onset", "dpd_1_29"]) == [("sms", "sms")]
    assert kinds(["dpd_bucket_worsened", "dpd_30_59"]) == [
        ("collections_case", "internal"), ("call", "call")]
    assert kinds(["dpd_bucket_worsened", "dpd_30_59"],
                 ActionPolicy(collections_at_dpd=60)) == [("call", "call")]
    assert kinds(["dpd_bucket_worsened", "dpd_60_89"]) == [
        ("collections_case", "internal"), ("call", "call")]
    assert kinds(["broken_promise"]) == [("call", "call")]
    assert kinds(["payment_ratio_falling"]) == [("restructuring_offer", "letter")]
    assert kinds(["large_transaction"]) == []


def test_quiet_hours_follow_the_customer_time_zone():
    late_evening_utc = dt.datetime(2026, 3, 2, 20, 30, tzinfo=dt.UTC)  # 21:30 Berlin, 15:30 NY
    a = alert(["delinquency_onset"], when=late_evening_utc)
    berlin, _, _ = plan_actions(a, "Europe/Berlin", [], ActionPolicy())
    new_york, _, _ = plan_actions(a, "America/New_York", [], ActionPolicy())
    assert berlin[0].not_before == dt.datetime(2026, 3, 3, 7, tzinfo=dt.UTC)
    assert new_york[0].not_before is None


def test_unknown_time_zone_falls_back_to_utc():
    actions, _, _ = plan_actions(alert(["delinquency_onset"]), "Mars/Olympus", [], ActionPolicy())
    assert actions and actions[0].not_before is None


def test_action_ids_are_deterministic_and_derive_from_the_alert():
    a1, _, _ = plan_actions(alert(["broken_promise"]), "UTC", [], ActionPolicy())
    a2, _, _ = plan_actions(alert(["broken_promise"]), "UTC", [], ActionPolicy())
    a3, _, _ = plan_actions(alert(["broken_promise"], alert_id="a-2"), "UTC", [], ActionPolicy())
    assert a1[0].action_id == a2[0].action_id != a3[0].action_id


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30 * 24), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=16), st.integers(min_value=1, max_value=10))
def test_frequency_cap_never_exceeded_in_any_window(hours, cap, window_days):
    policy = ActionPolicy(cap_per_channel=cap, cap_window_days=window_days,
                          quiet_start_hour=0, quiet_end_hour=0)
    history: list = []
    sent: list[dt.datetime] = []
    for i, h in enumerate(sorted(hours)):
        when = T + dt.timedelta(hours=h)
        actions, history, suppressed = plan_actions(
            alert(["delinquency_onset"], when=when, alert_id=f"a{i}"), "UTC", history, policy)
        assert len(actions) + len(suppressed) == 1
        sent.extend(when for a in actions if a.channel == "sms")
    window = dt.timedelta(days=window_days)
    for t in sent:
        assert sum(1 for u in sent if t - window < u <= t) <= cap


def tier(responses, when=T, history=(), policy=ActionPolicy(), trigger="e1"):
    return plan_tier_actions(responses, customer_id="c1", grade="high", trigger_event_id=trigger,
                             event_time=when, timezone="Europe/Berlin", history=list(history),
                             policy=policy, policy_version="p", model_version="m")


def test_tier_actions_respect_quiet_hours_and_share_the_frequency_cap():
    late = dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC)  # 23:30 in Berlin
    acts, history, suppressed = tier(["call", "monitoring", "collections_case"],
                                     when=late)
    assert [(a.action, a.not_before) for a in acts] == [
        ("call", dt.datetime(2026, 3, 3, 7, tzinfo=dt.UTC)), ("collections_case", None)]
    assert [c for c, _ in history] == [3] and not suppressed  # the call counts, internal not
    # An SMS reminder from an alert fills the cap; the tier's SMS is then suppressed.
    policy = ActionPolicy(cap_per_channel=1)
    _, history, _ = plan_actions(alert(["delinquency_onset"]), "UTC", [], policy)
    acts, history, suppressed = tier(["reminder"], history=history,
                                     policy=policy)
    assert acts == [] and suppressed == ["reminder"] and len(history) == 1
    # Ids: deterministic, by response, trigger and customer.
    assert tier(["call"])[0] == tier(["call"])[0]
    assert (tier(["call"])[0][0].action_id
            != tier(["call"], trigger="e2")[0][0].action_id)


def test_actions_switched_off_plan_no_action_of_any_kind():
    off = ActionPolicy(enabled=False)
    codes = ["dpd_bucket_worsened", "dpd_30_59"]
    assert kinds(codes) and kinds(codes, policy=off) == []
    assert tier(["call"])[0]
    assert tier(["call", "reminder", "collections_case"], policy=off) == ([], [], [])
    due = DueReminder(customer_id="c1", account_id="acc", due_id="i1",
                      due_date=dt.date(2026, 3, 5), unpaid_minor=100, days_to_due=3,
                      grade="high")
    assert plan_pre_due(due, trigger_event_id="e1", event_time=T, timezone="UTC", history=[],
                        policy=ActionPolicy(), policy_version="p", model_version="m")[0]
    for policy in (off, ActionPolicy(pre_due_reminder=PreDueReminder(enabled=False))):
        assert plan_pre_due(due, trigger_event_id="e1", event_time=T, timezone="UTC",
                            history=[], policy=policy, policy_version="p",
                            model_version="m") == (None, [])


def test_every_tier_response_is_an_action_or_documented_as_none():
    assert set(TIER_ACTIONS) | set(TIER_NON_ACTIONS) == RESPONSES
    assert not set(TIER_ACTIONS) & set(TIER_NON_ACTIONS)
    for action, channel in TIER_ACTIONS.values():
        assert action in typing.get_args(ActionKind)
        assert channel in typing.get_args(ActionChannel)
    assert TIER_ACTIONS["sms"] == ("sms", "sms")
    assert TIER_ACTIONS["restructuring_offer"] == ("restructuring_offer", "letter")


def test_frequency_cap_holds_above_sixteen_sends_and_across_channels():
    # cap 16 on one channel: the 17th within the window is suppressed.
    policy = ActionPolicy(cap_per_channel=16, cap_window_days=7)
    history: list = []
    sent = 0
    for i in range(40):
        due = DueReminder(customer_id="c1", account_id="a1", due_id=f"i{i}",
                          due_date=dt.date(2026, 3, 5), unpaid_minor=100, days_to_due=3,
                          grade="high")
        action, history = plan_pre_due(due, trigger_event_id=f"e{i}",
                                       event_time=T + dt.timedelta(minutes=i), timezone="UTC",
                                       history=history, policy=policy, policy_version="p",
                                       model_version="m")
        sent += action is not None
    assert sent == 16 and len(history) == 16
    # cap 10 on three channels: 30 sends in the window, each channel still capped at 10
    # (a history of 16 sends in all let each channel go on past its cap).
    policy = ActionPolicy(cap_per_channel=10)
    history = []
    counts = {"sms": 0, "call": 0, "letter": 0}
    for i in range(30):
        for codes in (["delinquency_onset"], ["broken_promise"], ["payment_ratio_falling"]):
            actions, history, _ = plan_actions(
                alert(codes, when=T + dt.timedelta(minutes=i), alert_id=f"a{i}-{codes[0]}"),
                "UTC", history, policy)
            for a in actions:
                counts[a.channel] += 1
    assert counts == {"sms": 10, "call": 10, "letter": 10} and len(history) == 30


def test_cap_per_channel_is_bounded_in_the_policy():
    from alerts.policy import load_policy_text
    from schemas.errors import PolicyError

    assert load_policy_text("actions: {cap_per_channel: 16}").actions.cap_per_channel == 16
    with pytest.raises(PolicyError, match=r"\$\.actions\.cap_per_channel"):
        load_policy_text("actions: {cap_per_channel: 17}")


def test_pre_due_reminder_ids_do_not_collide_across_customers_with_slashes():
    def reminder(customer, account):
        due = DueReminder(customer_id=customer, account_id=account, due_id="i1",
                          due_date=dt.date(2026, 3, 5), unpaid_minor=100, days_to_due=3,
                          grade="high")
        action, _ = plan_pre_due(due, trigger_event_id="e1", event_time=T, timezone="UTC",
                                 history=[], policy=ActionPolicy(), policy_version="p",
                                 model_version="m")
        return action.action_id

    assert reminder("x/y", "z") != reminder("x", "y/z")
    assert reminder("x/y", "z") == reminder("x/y", "z")
