"""A published policy reaches every worker without restart, and is audited."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from alerts.audit import verify_chain
from alerts.policy import DEFAULT_POLICY
from schemas.codec import encode
from schemas.models import CardTransaction
from streams.cli import app as cli
from streams.control import read_audit
from tests.conftest import launch_worker
from tests.streams.helpers import collect, send

pytestmark = pytest.mark.broker
T0 = dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)


def _tx(customer: str, i: int, amount: int) -> bytes:
    return encode(CardTransaction(
        event_id=f"pl-{customer}-{i}", event_time=T0 + dt.timedelta(hours=i),
        customer_id=customer, account_id="a", type="purchase", amount_minor=amount,
        currency="EUR", mcc="5411", merchant_id="m", channel="pos", country="DE"))


def wait_for_metric(worker, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://{worker.metrics_addr}/metrics").read().decode()
        if line in text:
            return
        time.sleep(0.2)
    raise AssertionError(f"{line!r} not exported by {worker.metrics_addr} in {timeout}s")


@pytest.fixture(scope="module")
def two_workers(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy-workers")
    workers = [launch_worker(broker, tmp / f"w{i}", "--app-id", "riskwatch-policy-test")
               for i in range(2)]
    yield workers
    for w in workers:
        w.stop()


@pytest.fixture
def restore_default_policy(broker, tmp_path):
    """Other tests share the broker (and the session worker follows every policy)."""
    yield
    default = tmp_path / "default.yaml"
    default.write_text(f"version: {DEFAULT_POLICY.version}\n")
    result = CliRunner().invoke(cli, ["policy", "publish", str(default), "--actor", "tests",
                                      "--why", "restore the default after the test",
                                      "--broker", broker.url])
    assert result.exit_code == 0, result.output


def test_publish_changes_live_decisions_on_every_worker(broker, two_workers, tmp_path,
                                                        restore_default_policy):
    # Under the default policy (12x) a 5x transaction (event 10) raises nothing; a 20x one
    # after it (event 11) alerts and shows event 10 was processed.
    customers = [f"pl-before-{i}" for i in range(8)]
    amounts = [40_000] * 10 + [200_000, 800_000]
    send(broker.bootstrap, [("card-transactions", c.encode(), _tx(c, i, amounts[i]))
                            for c in customers for i in range(12)])
    before = collect(broker.bootstrap, ["risk-alerts"],
                     lambda t, d: d["customer_id"].startswith("pl-before")
                     and d["rule_id"] == "large-transaction",
                     expect=len(customers))
    assert sorted(d["trigger_event_id"] for _, d, _ in before) == sorted(
        f"pl-{c}-11" for c in customers)
    assert {d["policy_version"] for _, d, _ in before} == {DEFAULT_POLICY.version}
    policy = tmp_path / "tight.yaml"
    policy.write_text("version: tight-2026-06\nlarge_transaction:\n  multiple: 3.0\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["policy", "publish", str(policy), "--actor", "risk-manager-1",
                                 "--why", "tighten spend spikes", "--broker", broker.url])
    assert result.exit_code == 0, result.output
    # Both workers apply it (eventually: each follows the policy topic on its own).
    for w in two_workers:
        wait_for_metric(w, 'riskwatch_policy_info{version="tight-2026-06"} 1.0')
    # Each owns half the partitions: customers spread over all partitions now alert under
    # the new version.
    after = [f"pl-after-{i}" for i in range(8)]
    send(broker.bootstrap, [("card-transactions", c.encode(), _tx(c, i, amounts[i]))
                            for c in after for i in range(11)])
    found = collect(broker.bootstrap, ["risk-alerts"],
                    lambda t, d: d["customer_id"].startswith("pl-after")
                    and d["rule_id"] == "large-transaction", expect=len(after),
                    timeout=60)
    alerted = {d["customer_id"]: d["policy_version"] for _, d, _ in found}
    assert set(alerted) == set(after)
    assert set(alerted.values()) == {"tight-2026-06"}

    records = asyncio.run(read_audit(broker.bootstrap))
    assert verify_chain(records) == []
    last = records[-1]
    assert (last.actor, last.version, last.why) == ("risk-manager-1", "tight-2026-06",
                                                    "tighten spend spikes")
    assert last.after["large_transaction"]["multiple"] == 3.0

    # The same version with other content is refused.
    policy.write_text("version: tight-2026-06\nlarge_transaction:\n  multiple: 2.0\n")
    again = runner.invoke(cli, ["policy", "publish", str(policy), "--actor", "x", "--why", "y",
                                "--broker", broker.url])
    assert again.exit_code == 2 and "already published" in again.output
    verify = runner.invoke(cli, ["audit", "verify", "--broker", broker.url])
    assert verify.exit_code == 0, verify.output


def test_the_crisis_gauge_follows_the_crisis_window_on_the_clock(broker, worker, tmp_path,
                                                                  restore_default_policy):
    """``riskwatch_crisis_mode`` (and so RiskwatchCrisisModeOn) says whether crisis rules
    are in force now: not for a window switched on that has not started, and no longer
    once the window has ended, without a new policy."""
    def publish(name: str, crisis: str) -> None:
        policy = tmp_path / f"{name}.yaml"
        policy.write_text(f"version: {name}\ncrisis:\n{crisis}", encoding="utf-8")
        result = CliRunner().invoke(cli, ["policy", "publish", str(policy), "--actor", "tests",
                                          "--why", "crisis gauge test", "--broker", broker.url])
        assert result.exit_code == 0, result.output
        wait_for_metric(worker, f'riskwatch_policy_info{{version="{name}"}} 1.0')

    def gauge() -> str:
        text = urllib.request.urlopen(f"http://{worker.metrics_addr}/metrics").read().decode()
        return next(line for line in text.splitlines()
                    if line.startswith("riskwatch_crisis_mode "))

    def iso(at: dt.datetime) -> str:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    tag = time.time_ns()
    # Scheduled: switched on, its window starts in 2099 (no event of the tests is in it).
    publish(f"crisis-scheduled-{tag}", "  active: true\n  start: 2099-01-01T00:00:00Z\n")
    assert gauge() == "riskwatch_crisis_mode 0.0"
    # A window that is open now and ends in 25 s: 1, then 0 once it has ended.
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(seconds=25)
    publish(f"crisis-closing-{tag}", f"  active: true\n  start: {iso(now - dt.timedelta(minutes=1))}\n"
                                     f"  end: {iso(end)}\n")
    assert gauge() == "riskwatch_crisis_mode 1.0"
    time.sleep(max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    assert gauge() == "riskwatch_crisis_mode 0.0"
    assert f'riskwatch_policy_info{{version="crisis-closing-{tag}"}} 1.0' in urllib.request.urlopen(
        f"http://{worker.metrics_addr}/metrics").read().decode()
