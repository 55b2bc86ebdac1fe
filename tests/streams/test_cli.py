"""The command line: help, errors, replay over JSONL, schema export."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from schemas.codec import encode, loads
from schemas.models import CardTransaction
from streams.cli import app

runner = CliRunner()
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)


def _tx(i: int, amount: int) -> CardTransaction:
    return CardTransaction(
        event_id=f"cli-{i}", event_time=T0 + dt.timedelta(hours=i), customer_id="cli-c1",
        account_id="a1", type="purchase", amount_minor=amount, currency="EUR", mcc="5411",
        merchant_id="m", channel="pos", country="DE")


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("broker", "worker", "demo", "generate", "replay", "schemas"):
        assert name in result.output


def test_replay_writes_outputs_snapshot_and_dead_letters(tmp_path):
    lines = [encode(_tx(i, 2_000)) for i in range(11)]
    lines.append(b'{"broken": ')
    lines.append(encode(_tx(12, 500_000)))
    (tmp_path / "card-transactions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["replay", str(tmp_path / "card-transactions.jsonl"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    alerts = [loads(x) for x in (out / "risk-alerts.jsonl").read_bytes().splitlines()]
    assert [a["trigger_event_id"] for a in alerts
            if a["rule_id"] == "large-transaction"] == ["cli-12"]
    dead = [loads(x) for x in (out / "dead-letters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["offset"]) for d in dead] == [("malformed_json", 12)]
    snapshot = [loads(x) for x in (out / "snapshot.jsonl").read_bytes().splitlines()]
    assert snapshot[0]["customer_id"] == "cli-c1"
    summary = loads((out / "summary.json").read_bytes())
    assert summary["events_total"] == 13


def test_replay_rejects_unknown_topic_file(tmp_path):
    bogus = tmp_path / "not-a-topic.jsonl"
    bogus.write_text("{}\n")
    result = runner.invoke(app, ["replay", str(bogus)])
    assert result.exit_code == 2
    assert "not-a-topic" in result.output


def test_worker_rejects_bad_broker_url():
    result = runner.invoke(app, ["worker", "--broker", "http://nope:1"])
    assert result.exit_code == 2
    assert "--broker" in result.output


def test_replay_rejects_bad_policy(tmp_path):
    (tmp_path / "card-transactions.jsonl").write_bytes(encode(_tx(0, 1)) + b"\n")
    policy = tmp_path / "p.yaml"
    policy.write_text("large_transaction: {multiple: 0.5}\n")
    result = runner.invoke(app, ["replay", str(tmp_path), "--policy", str(policy),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "multiple" in result.output


def test_replay_backtest_compares_policies(tmp_path):
    lines = [encode(_tx(i, 2_000)) for i in range(11)] + [encode(_tx(12, 100_000))]
    (tmp_path / "card-transactions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    current = tmp_path / "current.yaml"
    current.write_text("version: current-1\n")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("version: candidate-2\nlarge_transaction: {multiple: 3.0, "
                         "floor_minor: 0, min_history: 5}\n")
    out = tmp_path / "bt"
    result = runner.invoke(app, ["replay", str(tmp_path), "--policy", str(candidate),
                                 "--baseline", str(current), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = loads((out / "backtest.json").read_bytes())
    assert (report["baseline"], report["candidate"]) == ("current-1", "candidate-2")
    assert report["alerts_by_reason"]["large_transaction"] == [0, 1, 1]
    assert (out / "baseline" / "risk-alerts.jsonl").exists()
    assert (out / "candidate" / "risk-alerts.jsonl").exists()


@pytest.mark.parametrize("case", ["replay topic=<directory>", "replay --out <file>",
                                  "audit verify --file <missing>", "schemas export <file>",
                                  "generate <file>", "generate --customers 0",
                                  "generate --poison-rate 5"])
def test_bad_paths_and_options_end_in_an_error_not_a_traceback(tmp_path, case):
    good = tmp_path / "card-transactions.jsonl"
    good.write_bytes(encode(_tx(0, 1)) + b"\n")
    taken = tmp_path / "taken"
    taken.write_text("x")
    args = {
        "replay topic=<directory>": ["replay", f"card-transactions={tmp_path}",
                                     "--out", str(tmp_path / "o")],
        "replay --out <file>": ["replay", str(good), "--out", str(taken)],
        "audit verify --file <missing>": ["audit", "verify", "--file",
                                          str(tmp_path / "nope.jsonl")],
        "schemas export <file>": ["schemas", "export", str(taken)],
        "generate <file>": ["generate", str(taken), "--customers", "2", "--days", "2"],
        "generate --customers 0": ["generate", str(tmp_path / "g"), "--customers", "0"],
        "generate --poison-rate 5": ["generate", str(tmp_path / "g"), "--poison-rate", "5"],
    }[case]
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 2
    assert "error:" in result.output
    named = {"replay topic=<directory>": "is not a file", "replay --out <file>": str(taken),
             "audit verify --file <missing>": "nope.jsonl", "schemas export <file>": str(taken),
             "generate <file>": str(taken), "generate --customers 0": "customers",
             "generate --poison-rate 5": "poison_rate"}[case]
    assert named in result.output
