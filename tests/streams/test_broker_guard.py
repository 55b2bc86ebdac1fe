"""streams.guard: the broker-state checks, without a broker."""

from __future__ import annotations

from streams.guard import LOST, OK, UNREACHABLE, BrokerGuard

WATCHED = frozenset({"card-transactions", "riskwatch-customer-state-changelog"})
TOPICS = {"card-transactions", "riskwatch-customer-state-changelog", "other"}


def _seen() -> BrokerGuard:
    guard = BrokerGuard(WATCHED)
    assert guard.observe("c1", TOPICS, {("card-transactions", 0): 40,
                                        ("riskwatch-customer-state-changelog", 0): 7}) == []
    return guard


def test_an_outage_holds_processing_and_an_unchanged_broker_resumes_it():
    guard = _seen()
    assert guard.state == OK and guard.clear.is_set() and guard.reason is None
    assert guard.unreachable()
    assert not guard.unreachable()  # once per outage
    assert guard.state == UNREACHABLE and not guard.clear.is_set()
    assert guard.reason == "broker unreachable"
    # Back with everything it had, and more: processing resumes.
    assert guard.observe("c1", TOPICS, {("card-transactions", 0): 45,
                                        ("riskwatch-customer-state-changelog", 0): 7}) == []
    assert guard.state == OK and guard.clear.is_set()


def test_an_empty_broker_is_lost_state():
    guard = _seen()
    guard.unreachable()
    found = guard.observe("c1", set(), {})
    assert {f.check for f in found} == {"topic_missing"}
    assert sorted(f.topic for f in found) == sorted(WATCHED)  # "other" is not watched
    assert guard.state == LOST and not guard.clear.is_set()
    assert guard.reason == "broker state lost"
    # Lost stays lost (until a restart), whatever the broker answers next.
    assert guard.observe("c1", TOPICS, {}) == []
    assert guard.state == LOST and not guard.clear.is_set()
    assert not guard.unreachable()
    assert "topic card-transactions is gone" in guard.summary()


def test_recreated_topics_show_as_end_offsets_moving_back():
    guard = _seen()
    found = guard.observe("c1", TOPICS, {("card-transactions", 0): 3,
                                         ("riskwatch-customer-state-changelog", 0): 7})
    assert [(f.check, f.topic, f.partition, f.before, f.now) for f in found] == [
        ("offset_rewind", "card-transactions", 0, 40, 3)]
    assert found[0].describe() == "card-transactions[0]: end offset 3, below 40 reported before"
    assert guard.state == LOST


def test_another_cluster_is_lost_state():
    guard = _seen()
    found = guard.observe("c2", TOPICS, {("card-transactions", 0): 40})
    assert [f.check for f in found] == ["cluster_id"]
    assert "'c1' to 'c2'" in found[0].describe()


def test_topics_appearing_later_are_watched_from_then_on():
    guard = BrokerGuard(WATCHED)
    assert guard.observe(None, {"card-transactions"}, {}) == []
    assert guard.observe(None, TOPICS, {}) == []
    found = guard.observe(None, {"card-transactions"}, {})
    assert [f.topic for f in found] == ["riskwatch-customer-state-changelog"]
