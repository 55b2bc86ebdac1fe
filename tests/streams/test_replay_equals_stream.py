"""The same input through broker + worker and through replay gives the same output ids."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from alerts.policy import DEFAULT_POLICY
from schemas.codec import loads
from schemas.topics import OUTPUT_TOPICS
from streams.replay import iter_merged, replay, resolve_inputs
from streams.simulator import Portfolio, write_jsonl
from tests.conftest import PARTITIONS
from tests.streams.helpers import collect, send

pytestmark = pytest.mark.broker

#: Outputs whose ids must agree (dead letters carry broker offsets, not line numbers).
COMPARED = [t for t in OUTPUT_TOPICS if t not in ("dead-letters", "audit")]


#: The worker processes each partition in event-time order across its topics, as replay
#: does, so every per-customer output must agree. Only the global anomaly model differs:
#: it learns from all partitions, whose relative order the broker does not fix.
ORDER_DEPENDENT = {"anomalous_transaction"}


def _deterministic(doc: dict) -> bool:
    return not ORDER_DEPENDENT.intersection(doc.get("reason_codes", ()))


def _id(topic: str, doc: dict) -> str:
    from schemas.topics import TOPICS

    return doc[TOPICS[topic].id_field]


def test_replay_and_stream_agree_on_output_ids(broker, worker, tmp_path):
    # The session worker also holds other tests' customers, and a partition's watermark
    # is shared by all its customers: start after every other test's event times so
    # their events do not move this portfolio's watermarks.
    config = Portfolio(customers=150, days=75, seed=20261123, start=dt.date(2026, 8, 1))
    write_jsonl(config, tmp_path / "in")
    inputs = resolve_inputs([str(tmp_path / "in")])
    report = replay(inputs, tmp_path / "out", DEFAULT_POLICY, partitions=PARTITIONS)
    expected: set[tuple[str, str]] = set()
    for topic in COMPARED:
        for line in (tmp_path / "out" / f"{topic}.jsonl").read_bytes().splitlines():
            doc = loads(line)
            if _deterministic(doc):
                expected.add((topic, _id(topic, doc)))
    assert report.dead_letters == {}, report.dead_letters
    assert expected, "the portfolio should raise some outputs"
    customers = {loads(x)["customer_id"]
                 for x in (tmp_path / "in" / "customer-profiles.jsonl").read_bytes().splitlines()}

    records = []
    for _time, topic, _line, raw, obj in iter_merged(inputs):
        key = getattr(obj, "customer_id", None) or getattr(obj, "sector", None)
        records.append((topic, key.encode(), raw))
    started = time.monotonic()
    send(broker.bootstrap, records)

    found = collect(broker.bootstrap, COMPARED,
                    lambda t, d: d.get("customer_id") in customers and _deterministic(d),
                    expect=len(expected),
                    timeout=180)
    got = {(t, _id(t, d)) for t, d, _ in found if _deterministic(d)}
    elapsed = time.monotonic() - started
    if got != expected:
        by_id = {_id(t, d): d for t, d, _ in found}
        for topic in COMPARED:
            for line in (tmp_path / "out" / f"{topic}.jsonl").read_bytes().splitlines():
                doc = loads(line)
                by_id.setdefault(_id(topic, doc), doc)
        missing = [_explain(by_id[i]) for _, i in sorted(expected - got)[:8]]
        extra = [_explain(by_id[i]) for _, i in sorted(got - expected)[:8]]
        raise AssertionError(f"after {elapsed:.0f}s: missing from the stream {missing}; "
                             f"only in the stream {extra}")


def _explain(doc: dict) -> str:
    return (f"{doc.get('customer_id')} {doc.get('rule_id')} {doc.get('trigger_event_id')} "
            f"{doc.get('reason_codes')}")
