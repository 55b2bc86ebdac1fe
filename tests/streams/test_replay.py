"""Replay's merge of its input files and its checks of the inputs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from alerts.policy import load_policy
from schemas.errors import ConfigError
from schemas.export import EXAMPLES
from streams.replay import iter_merged, replay, resolve_inputs

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
T = "2026-02-20T10:00:00Z"


def _write(tmp_path: Path, tx_time: str = T, profile_time: str = T) -> tuple[Path, Path]:
    prof = {**EXAMPLES["customer-profiles"], "customer_id": "c1", "event_time": profile_time,
            "credit_limit_minor": 50_000}
    tx = {**EXAMPLES["card-transactions"], "customer_id": "c1", "event_id": "t0",
          "event_time": tx_time, "amount_minor": 45_000, "type": "purchase"}
    profiles = tmp_path / "customer-profiles.jsonl"
    transactions = tmp_path / "card-transactions.jsonl"
    profiles.write_text(json.dumps(prof) + "\n")
    transactions.write_text(json.dumps(tx) + "\n")
    return profiles, transactions


def _topics(args: list[str]) -> list[str]:
    return [topic for _, topic, _, _, _ in iter_merged(resolve_inputs(args), NOW)]


def test_equal_event_times_merge_in_topic_order_whatever_the_argument_order(
    tmp_path: Path,
) -> None:
    profiles, transactions = _write(tmp_path)
    expected = ["card-transactions", "customer-profiles"]  # as the worker's TOPIC_RANK
    assert _topics([str(tmp_path)]) == expected
    assert _topics([str(transactions), str(profiles)]) == expected
    assert _topics([str(profiles), str(transactions)]) == expected
    assert _topics([f"customer-profiles={profiles}", f"card-transactions={transactions}"]) \
        == expected


def test_replay_outputs_do_not_depend_on_the_argument_order(tmp_path: Path) -> None:
    profiles, transactions = _write(tmp_path)

    def alerts(args: list[str], name: str) -> str:
        replay(resolve_inputs(args), tmp_path / name, load_policy(None), now=NOW)
        return (tmp_path / name / "risk-alerts.jsonl").read_text()

    as_dir = alerts([str(tmp_path)], "dir")
    assert alerts([str(profiles), str(transactions)], "profiles_first") == as_dir
    assert alerts([str(transactions), str(profiles)], "transactions_first") == as_dir


def test_event_times_within_one_millisecond_tie_as_in_the_worker(tmp_path: Path) -> None:
    # The worker orders by event time in whole milliseconds: these two are equal.
    _write(tmp_path, tx_time="2026-02-20T10:00:00.000900Z",
           profile_time="2026-02-20T10:00:00.000100Z")
    assert _topics([str(tmp_path)]) == ["card-transactions", "customer-profiles"]
    # One millisecond apart, event time decides.
    _write(tmp_path, tx_time="2026-02-20T10:00:00.001000Z",
           profile_time="2026-02-20T10:00:00.000999Z")
    assert _topics([str(tmp_path)]) == ["customer-profiles", "card-transactions"]


def test_a_topic_given_twice_is_rejected(tmp_path: Path) -> None:
    # Dead letters are identified by topic and line number: two files of one topic
    # would give two different bad lines the same dead-letter id.
    profiles, transactions = _write(tmp_path)
    other = tmp_path / "day2.jsonl"
    other.write_text(transactions.read_text())
    for args in ([f"card-transactions={transactions}", f"card-transactions={other}"],
                 [str(tmp_path), f"card-transactions={other}"],
                 [str(transactions), str(transactions)]):
        with pytest.raises(ConfigError, match="'card-transactions' given twice"):
            resolve_inputs(args)
    assert len(resolve_inputs([str(profiles), f"card-transactions={other}"])) == 2
