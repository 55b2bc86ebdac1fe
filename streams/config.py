"""Worker settings: command-line options over environment variables over defaults.

Environment variables (all optional): ``RISKWATCH_BROKER`` (``kafka://host:port``,
comma-separated for several), ``RISKWATCH_METRICS_ADDR`` (``host:port``, default
``127.0.0.1:9464``), ``RISKWATCH_DATA_DIR``, ``RISKWATCH_POLICY_FILE``,
``RISKWATCH_PARTITIONS``, ``RISKWATCH_APP_ID``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from schemas.errors import ConfigError


def parse_broker_url(url: str) -> list[str]:
    """``kafka://h1:p1,h2:p2`` (or bare ``h:p``) as a list of ``host:port``.

    >>> parse_broker_url("kafka://127.0.0.1:9092")
    ['127.0.0.1:9092']
    >>> parse_broker_url("kafka://a:1,b:2")
    ['a:1', 'b:2']
    >>> parse_broker_url("http://x:1")
    Traceback (most recent call last):
    ...
    schemas.errors.ConfigError: --broker 'http://x:1': expected kafka://host:port[,host:port]
    """
    text = url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "kafka":
            raise ConfigError(f"--broker {url!r}: expected kafka://host:port[,host:port]")
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"--broker {url!r}: {host!r} is not host:port")
    if not hosts:
        raise ConfigError(f"--broker {url!r}: no host given")
    return hosts


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` as a tuple.

    >>> parse_addr("127.0.0.1:9464")
    ('127.0.0.1', 9464)
    """
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--metrics-addr {addr!r}: expected host:port")
    return host, int(port)


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to run."""

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "riskwatch"
    metrics_addr: str = "127.0.0.1:9464"
    data_dir: Path = field(default_factory=lambda: Path(".riskwatch"))
    policy_file: Path | None = None
    partitions: int = 8
    source: str = "urn:riskwatch:worker"
    #: Consumer-group timing; lowered by tests and the demo on the embedded broker.
    session_timeout: float = 30.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 30.0
    #: Producer linger in seconds (batches outputs and changelog writes).
    producer_linger: float = 0.005
    loglevel: str = "warning"
    #: Coalesced state writes: flush (and acknowledge) at least this often, in seconds...
    state_flush_interval: float = 0.5
    #: ...or after this many events.
    state_flush_every: int = 2000
    #: Seconds between checkpoints of the global models (with their input offsets).
    checkpoint_interval: float = 30.0
    #: Seconds between watermark-sweep checks per partition.
    sweep_interval: float = 1.0
    #: A partition with no event for this many seconds is idle.
    sweep_idle: float = 30.0
    #: An idle partition whose newest event is younger than this is live: wall-clock
    #: time then advances its sweep (a historical replay never is).
    sweep_live_window: float = 2 * 86_400.0

    @property
    def bootstrap_servers(self) -> list[str]:
        return parse_broker_url(self.broker)

    def fast(self) -> Settings:
        """Timings for a single-machine broker (tests, demo, benchmarks)."""
        return replace(self, session_timeout=6.0, heartbeat_interval=0.5, rebalance_timeout=2.0)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``RISKWATCH_*`` variables, then ``overrides`` (None = unset)."""
        env = os.environ
        values: dict[str, object] = {}
        if "RISKWATCH_BROKER" in env:
            values["broker"] = env["RISKWATCH_BROKER"]
        if "RISKWATCH_METRICS_ADDR" in env:
            values["metrics_addr"] = env["RISKWATCH_METRICS_ADDR"]
        if "RISKWATCH_DATA_DIR" in env:
            values["data_dir"] = Path(env["RISKWATCH_DATA_DIR"])
        if "RISKWATCH_POLICY_FILE" in env:
            values["policy_file"] = Path(env["RISKWATCH_POLICY_FILE"])
        if "RISKWATCH_APP_ID" in env:
            values["app_id"] = env["RISKWATCH_APP_ID"]
        if "RISKWATCH_PARTITIONS" in env:
            try:
                values["partitions"] = int(env["RISKWATCH_PARTITIONS"])
            except ValueError as exc:
                raise ConfigError("RISKWATCH_PARTITIONS: not a whole number") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.bootstrap_servers  # noqa: B018 - validate early
        parse_addr(settings.metrics_addr)
        if settings.partitions < 1:
            raise ConfigError("partitions must be at least 1")
        return settings
