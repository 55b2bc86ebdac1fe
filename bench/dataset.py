"""Benchmark input: customer-keyed events as ``(topic, key, value)`` in event-time order.

Two sources:

* ``synthetic`` (always available): one profile per customer, then card
  transactions of about 1 KB each (the contract's fields padded with the
  fields a card processor really sends: merchant, terminal, 3-D Secure, device,
  FX), customers drawn at random. Every ``spike_every``-th transaction of a
  customer is a spend spike, so about ``1/spike_every`` of transactions raise
  an alert, as in a real early-warning feed.
* ``simulator``: ``streams.simulator`` (the portfolio simulator) when it is
  importable, restricted to the customer-keyed topics the worker consumes.

``auto`` picks the simulator when present, else the synthetic source. Every
generator is deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from schemas.topics import CUSTOMER_TOPICS

Record = tuple[str, bytes, bytes]

_MCC = (("5411", "FreshCo Supermarkets", "grocery"), ("5812", "Trattoria Bella", "restaurant"),
        ("5541", "Autohof Tank & Rast", "fuel"), ("5912", "Apotheke am Markt", "pharmacy"),
        ("5732", "MediaWorld Electronics", "electronics"), ("4111", "Stadtwerke Verkehr",
        "transport"), ("5691", "Nordic Outfitters", "apparel"), ("7011", "Hotel Adler",
        "lodging"), ("5999", "Marketplace Seller", "misc"), ("4814", "TeleNet Mobile",
        "telecom"))
_CITIES = (("Berlin", "DE", "10115"), ("Hamburg", "DE", "20095"), ("Munich", "DE", "80331"),
           ("Vienna", "AT", "1010"), ("Amsterdam", "NL", "1012"), ("Paris", "FR", "75001"),
           ("Milan", "IT", "20121"), ("Madrid", "ES", "28001"))
_CHANNELS = ("pos", "contactless", "ecom", "contactless", "pos", "ecom", "atm")
_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro) AppleWebKit/537.36 (KHTML, like Gecko) "
       "Chrome/124.0.6367.82 Mobile Safari/537.36")
_SECTORS = ("retail", "manufacturing", "hospitality", "construction", "public", "tech")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the synthetic input."""

    customers: int = 2_000
    events: int = 40_000
    seed: int = 7
    spike_every: int = 50
    padded: bool = True
    prefix: str = "c"
    #: Event time of the first event; default: 30 days before now (UTC, whole day).
    start: dt.datetime | None = None
    #: Event-time step between consecutive events.
    step: dt.timedelta = dt.timedelta(seconds=1)


def _start(config: SyntheticConfig) -> dt.datetime:
    if config.start is not None:
        return config.start
    now = dt.datetime.now(dt.UTC)
    return dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) - dt.timedelta(days=30)


def _rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def customer_id(prefix: str, n: int) -> str:
    return f"{prefix}-{n:07d}"


def profile_doc(cid: str, when: str, rnd: random.Random) -> dict[str, object]:
    return {
        "event_id": f"p-{cid}", "event_time": when, "customer_id": cid,
        "credit_limit_minor": rnd.choice((150_000, 300_000, 500_000, 1_000_000)),
        "currency": "EUR", "products": ["credit_card"], "sector": rnd.choice(_SECTORS),
        "region": "north", "segment": rnd.choice(("mass", "affluent", "student")),
        "timezone": "Europe/Berlin",
    }


def transaction_doc(cid: str, seq: int, when: str, amount: int, rnd: random.Random,
                    padded: bool) -> dict[str, object]:
    mcc, _, _ = _MCC[rnd.randrange(len(_MCC))]
    _, country, _ = _CITIES[rnd.randrange(len(_CITIES))]
    channel = _CHANNELS[rnd.randrange(len(_CHANNELS))]
    doc: dict[str, object] = {
        "event_id": f"tx-{cid}-{seq}", "event_time": when, "customer_id": cid,
        "account_id": f"acc-{cid}", "type": "purchase" if channel != "atm" else "cash_advance",
        "amount_minor": amount, "currency": "EUR", "mcc": mcc,
        "merchant_id": f"m-{mcc}-{rnd.randrange(10_000):05d}", "channel": channel,
        "country": country,
    }
    if padded:
        pad(doc, rnd)
    return doc


def pad(doc: dict[str, object], rnd: random.Random) -> dict[str, object]:
    """Add what a card processor sends besides the contract (ignored on decode), ~1 KB."""
    mcc = str(doc.get("mcc", "5999"))
    merchant, category = next(((m, c) for code, m, c in _MCC if code == mcc),
                              ("Marketplace Seller", "misc"))
    city, country, postcode = _CITIES[rnd.randrange(len(_CITIES))]
    channel = str(doc.get("channel", "pos"))
    when = str(doc.get("event_time", ""))
    amount = doc.get("amount_minor", 0)
    ref = rnd.getrandbits(40)
    extra: dict[str, object] = {
        "merchant_name": merchant, "merchant_category": category, "merchant_city": city,
        "merchant_postcode": postcode, "merchant_country": doc.get("country", country),
        "terminal_id": f"T{rnd.randrange(10**7):07d}", "acquirer_id": f"ACQ-{rnd.randrange(999):03d}",
        "auth_code": f"{rnd.randrange(10**6):06d}", "auth_response_code": "00",
        "pos_entry_mode": "07" if channel == "contactless" else "05" if channel == "pos" else "81",
        "card_present": channel in ("pos", "contactless", "chip", "atm"),
        "card_token": f"tok_{ref:010x}{rnd.getrandbits(24):06x}", "card_product": "visa_classic",
        "card_last4": f"{rnd.randrange(10_000):04d}", "issuer_country": "DE",
        "billing_amount_minor": amount, "billing_currency": doc.get("currency", "EUR"),
        "fx_rate": 1.0, "network_reference": f"NR{ref:012x}", "processing_code": "000000",
        "settlement_date": when[:10],
        "three_ds": {"version": "2.2.0", "eci": "05", "authentication": "frictionless",
                     "ds_transaction_id": f"{ref:08x}-3ds0-4a1b-9c2d-{rnd.getrandbits(48):012x}"},
        "device": {"ip": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
                   "user_agent": _UA if channel == "ecom" else None,
                   "fingerprint": f"fp_{rnd.getrandbits(64):016x}", "wallet": "none"},
        "risk_signals": {"velocity_1h": rnd.randrange(5), "geo_distance_km": rnd.randrange(900),
                         "new_merchant": rnd.random() < 0.2, "score_v": 3},
        "description": f"{merchant} {city} {postcode}",
        "tags": ["card", category, channel],
    }
    for key, value in extra.items():
        doc.setdefault(key, value)
    return doc


def synthetic(config: SyntheticConfig) -> Iterator[Record]:
    """Profiles for every customer, then transactions: ``config.events`` records in all."""
    rnd = random.Random(config.seed)
    customers = max(1, min(config.customers, config.events))
    t = _start(config)
    step = config.step
    profiles = min(customers, config.events)
    for n in range(profiles):
        cid = customer_id(config.prefix, n)
        yield ("customer-profiles", cid.encode(),
               orjson.dumps(profile_doc(cid, _rfc3339(t), rnd)))
        t += step
    usual = [rnd.randrange(1_500, 9_000) for _ in range(customers)]
    seq = [0] * customers
    for _ in range(config.events - profiles):
        n = rnd.randrange(customers)
        seq[n] += 1
        s = seq[n]
        if config.spike_every and s % config.spike_every == 0 and s >= 10:
            amount = usual[n] * 40 + 100_000
        else:
            amount = max(50, int(rnd.lognormvariate(0, 0.4) * usual[n]))
        cid = customer_id(config.prefix, n)
        yield ("card-transactions", cid.encode(),
               orjson.dumps(transaction_doc(cid, s, _rfc3339(t), amount, rnd, config.padded)))
        t += step


def latency_events(customers: int, spike_every: int, prefix: str, seed: int,
                   start: dt.datetime | None = None, *,
                   storm: bool = False) -> Iterator[tuple[Record, str, bool]]:
    """Endless paced-phase input: ``((topic, key, value), event_id, expects_alert)``.

    Customers take turns; every ``spike_every``-th transaction of a customer
    (from its 10th on, once the usual amount is learnt) is a spend spike. The
    customers' spikes are staggered, so one event in ``spike_every`` is a spike
    throughout; ``storm=True`` lines them up instead: every ``spike_every``-th
    round, every customer spikes at once (a burst of alerts only).

    >>> def rounds(storm):  # 4 customers, rounds 10 to 13, S: a spike
    ...     it = latency_events(4, 2, "x", 1, storm=storm)
    ...     marks = ["S" if next(it)[2] else "." for _ in range(4 * 13)][36:]
    ...     return " ".join("".join(marks[i:i + 4]) for i in range(0, 16, 4))
    >>> rounds(storm=False)
    'S.S. .S.S S.S. .S.S'
    >>> rounds(storm=True)
    'SSSS .... SSSS ....'
    """
    rnd = random.Random(seed)
    t = start or (dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    usual = [rnd.randrange(1_500, 9_000) for _ in range(customers)]
    i = 0
    while True:
        n = i % customers
        s = i // customers + 1
        spike = s >= 10 and (s + (0 if storm else n)) % spike_every == 0
        amount = usual[n] * 40 + 100_000 if spike else max(
            50, int(rnd.lognormvariate(0, 0.3) * usual[n]))
        cid = customer_id(prefix, n)
        doc = transaction_doc(cid, s, _rfc3339(t), amount, rnd, True)
        yield ("card-transactions", cid.encode(), orjson.dumps(doc)), str(doc["event_id"]), spike
        t += dt.timedelta(milliseconds=10)
        i += 1


def simulator_available() -> bool:
    try:
        import streams.simulator  # noqa: F401
    except Exception:
        return False
    return True


def simulator_days(customers: int, events: int) -> int:
    """Days of simulated history that give about ``events`` customer-keyed events."""
    return max(1, min(3_660, math.ceil(events / (customers * 1.3)) + 1))


def live_start(start: dt.date, newest: dt.date, today: dt.date | None = None) -> dt.date:
    """The start date that moves history from ``start`` to ``newest`` (its last event's
    date) to end yesterday (UTC), so that a paced phase continuing from its end is a
    live stream (event times within a day or two of the wall clock, as the worker
    tells live records from history).

    >>> live_start(dt.date(2026, 1, 1), dt.date(2026, 2, 4), dt.date(2026, 11, 24))
    datetime.date(2026, 10, 20)
    """
    today = today or dt.datetime.now(dt.UTC).date()
    return start + (today - dt.timedelta(days=1) - newest)


def _newest_date(records: list[Record]) -> dt.date:
    newest = max(orjson.loads(value)["event_time"] for _, _, value in records)
    return dt.date.fromisoformat(newest[:10])


def from_simulator(customers: int, events: int, seed: int, *, padded: bool = True,
                   days: int | None = None, start: dt.date | None = None) -> Iterator[Record]:
    """The first ``events`` customer-keyed records of a simulated portfolio.

    With ``padded``, card transactions carry the processor fields :func:`pad` adds;
    ``start``: the portfolio's start date (default the simulator's fixed date, the same
    input on every day).
    """
    import msgspec

    from schemas.codec import encode
    from streams.simulator import Portfolio, iter_events

    days = days or simulator_days(customers, events)
    dated = {"start": start} if start is not None else {}
    config = Portfolio(customers=customers, days=days, seed=seed, poison_rate=0.0, **dated)
    rnd = random.Random(seed)
    count = 0
    for topic, key, record in iter_events(config):
        if topic not in CUSTOMER_TOPICS:
            continue
        if isinstance(record, bytes):
            value = bytes(record)
        elif padded and topic == "card-transactions":
            value = orjson.dumps(pad(msgspec.to_builtins(record), rnd))
        else:
            value = encode(record)
        yield topic, key.encode() if isinstance(key, str) else key, value
        count += 1
        if count >= events:
            return


def build(source: str, customers: int, events: int, seed: int, *,
          padded: bool = True, live: bool = False) -> tuple[str, list[Record]]:
    """Materialise the input: ``(source actually used, records)``; ``live``: the
    simulated history ends yesterday (:func:`from_simulator`; the synthetic one always
    ends near today)."""
    if source == "auto":
        source = "simulator" if simulator_available() else "synthetic"
    if source == "simulator":
        records: list[Record] = []
        days = simulator_days(customers, events)
        while True:
            records = list(from_simulator(customers, events, seed, padded=padded, days=days))
            if len(records) >= events or days >= 3_660:
                break
            days = min(3_660, days * 2)
        if live:  # the same portfolio, dated to end yesterday (a second pass)
            from streams.simulator import Portfolio

            first = Portfolio().start
            start = live_start(first, _newest_date(records))
            records = list(from_simulator(customers, events, seed, padded=padded, days=days,
                                          start=start))
        return source, records
    if source != "synthetic":
        raise ValueError(f"unknown source {source!r}")
    config = SyntheticConfig(customers=customers, events=events, seed=seed, padded=padded)
    return source, list(synthetic(config))


def write_jsonl(records: list[Record] | Iterator[Record], out_dir: Path) -> dict[str, int]:
    """One ``<topic>.jsonl`` per topic (the replay input); return counts per topic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}
    counts: dict[str, int] = {}
    try:
        for topic, _key, value in records:
            handle = handles.get(topic)
            if handle is None:
                handle = handles[topic] = (out_dir / f"{topic}.jsonl").open("wb")
            handle.write(value + b"\n")  # type: ignore[attr-defined]
            counts[topic] = counts.get(topic, 0) + 1
    finally:
        for handle in handles.values():
            handle.close()  # type: ignore[attr-defined]
    return counts
