"""Worker settings: command-line options over environment variables over defaults.

Environment variables (all optional): ``RISKWATCH_BROKER`` (``kafka://host:port``,
comma-separated for several), ``RISKWATCH_METRICS_ADDR`` (``host:port``, default
``127.0.0.1:9464``), ``RISKWATCH_DATA_DIR``, ``RISKWATCH_POLICY_FILE``,
``RISKWATCH_PARTITIONS``, ``RISKWATCH_APP_ID``.

Kafka client security (every client: worker, CLI, admin, control, demo; see
:mod:`streams.security`): ``RISKWATCH_KAFKA_SECURITY_PROTOCOL`` (``PLAINTEXT``,
``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``), ``RISKWATCH_KAFKA_SASL_MECHANISM``
(``SCRAM-SHA-256``, ``SCRAM-SHA-512``, ``PLAIN``), ``RISKWATCH_KAFKA_SASL_USERNAME``,
``RISKWATCH_KAFKA_SASL_PASSWORD`` or (better) ``RISKWATCH_KAFKA_SASL_PASSWORD_FILE``,
``RISKWATCH_KAFKA_SSL_CAFILE``, ``RISKWATCH_KAFKA_SSL_CERTFILE``,
``RISKWATCH_KAFKA_SSL_KEYFILE``, ``RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME`` (default true).

Secrets are read from files and held in :class:`~alerts.privacy.Secret` (masked in
every ``repr``): ``RISKWATCH_CONTROL_TOKEN_FILE`` (bearer token of the HTTP control
endpoints; unset = control disabled) and ``RISKWATCH_PSEUDONYM_KEY_FILE`` with
``RISKWATCH_PSEUDONYM_KEY_VERSION`` (key of the customer pseudonyms in log lines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from alerts.privacy import PseudonymKey, Secret, read_secret_file
from schemas.errors import ConfigError

#: Kafka security protocols and SASL mechanisms a client may use.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
#: Shortest accepted control token, in characters.
MIN_TOKEN_CHARS = 16
#: Bounds of Settings.producer_max_batch_size: aiokafka's default, and Faust's producer
#: request size (producer_max_request_size), under Kafka's default message.max.bytes.
MIN_BATCH_BYTES = 16 * 1024
MAX_BATCH_BYTES = 1_000_000


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
    >>> parse_broker_url("kafka://h:99999")
    Traceback (most recent call last):
    ...
    schemas.errors.ConfigError: --broker 'kafka://h:99999': 'h:99999': port 99999 is outside 1-65535
    """
    text = url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "kafka":
            raise ConfigError(f"--broker {url!r}: expected kafka://host:port[,host:port]")
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    for host in hosts:
        _split_host_port(host, f"--broker {url!r}: {host!r}")
    if not hosts:
        raise ConfigError(f"--broker {url!r}: no host given")
    return hosts


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as (host, port); a port outside 1-65535, or an
    IPv6 address without brackets, is refused naming ``what``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: expected host:port (an IPv6 address as [::1]:port)")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ConfigError(f"{what}: an IPv6 address goes in brackets, as [::1]:port")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ConfigError(f"{what}: port {number} is outside 1-65535")
    return host, number


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[ipv6]:port``) as a tuple.

    >>> parse_addr("127.0.0.1:9464")
    ('127.0.0.1', 9464)
    >>> parse_addr("[::1]:9464")
    ('::1', 9464)
    >>> parse_addr("0.0.0.0:99999")
    Traceback (most recent call last):
    ...
    schemas.errors.ConfigError: --metrics-addr (RISKWATCH_METRICS_ADDR) '0.0.0.0:99999': port 99999 is outside 1-65535
    """
    return _split_host_port(addr, f"--metrics-addr (RISKWATCH_METRICS_ADDR) {addr!r}")


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
    #: Largest producer batch per partition, in bytes (Faust and aiokafka: 16 KiB). A
    #: state flush writes one changelog value (about 1 KB) per dirty customer at once: with
    #: 16 KiB batches, every 15th value waited for the broker to take the batch before it
    #: (a produce round trip): 20-47 ms per flush at half of saturation, against 11 ms
    #: with 512 KiB (bench/, experiment batch16k). Bounded by Kafka's default broker
    #: limit (message.max.bytes, 1 MiB) and Faust's producer request size.
    producer_max_batch_size: int = 512 * 1024
    #: Group consumer fetch wait in seconds (None: Faust's 1.5 s; see streams.tuning).
    fetch_max_wait: float | None = None
    #: The fetch loop hands the customer topics' records straight to the handler,
    #: without Faust's conductor, stream and agent (streams.tuning.use_fetch_loop);
    #: False delivers them through Faust's agent.
    direct_delivery: bool = True
    loglevel: str = "warning"
    #: Coalesced state writes: flush (and acknowledge) at least this often, in seconds...
    state_flush_interval: float = 0.5
    #: ...or after this many events.
    state_flush_every: int = 2000
    #: Seconds table recovery may spend reading changelogs past the reported end offsets.
    recovery_catchup_timeout: float = 60.0
    #: Seconds between checkpoints of the global models (with their input offsets).
    checkpoint_interval: float = 30.0
    #: Seconds between watermark-sweep checks per partition.
    sweep_interval: float = 1.0
    #: Seconds between checks of records held for event-time order across topics.
    order_recheck_interval: float = 0.01
    #: Hold a record of history (older than sweep_live_window) until every other topic
    #: of its partition that counts as read to its end was fetched after the record came
    #: (PartitionClock.bound): exact event-time order across topics in a backfill.
    fetch_gates: bool = True
    #: A partition with no event for this many seconds is idle.
    sweep_idle: float = 30.0
    #: An idle partition whose newest event is younger than this is live: wall-clock
    #: time then advances its sweep (a historical replay never is). A record younger
    #: than this is live too: released without the fetch gates.
    sweep_live_window: float = 2 * 86_400.0
    #: Seconds between broker probes (reachability and broker-state checks, streams.guard).
    broker_probe_interval: float = 5.0
    #: Kafka client security, for every client (see :mod:`streams.security`).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret[str] | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    #: Bearer token of the HTTP control endpoints; None = control disabled (403).
    control_token: Secret[str] | None = None
    #: Key of customer pseudonyms in log lines; None = a random per-process key.
    pseudonym_key: PseudonymKey | None = None

    def __post_init__(self) -> None:
        _check_security(self)
        if not MIN_BATCH_BYTES <= self.producer_max_batch_size <= MAX_BATCH_BYTES:
            raise ConfigError(f"producer_max_batch_size {self.producer_max_batch_size}: expected "
                              f"{MIN_BATCH_BYTES:,} to {MAX_BATCH_BYTES:,} bytes")

    @property
    def bootstrap_servers(self) -> list[str]:
        return parse_broker_url(self.broker)

    def fast(self) -> Settings:
        """Timings for a single-machine broker (tests, demo, benchmarks)."""
        return replace(self, session_timeout=6.0, heartbeat_interval=0.5, rebalance_timeout=2.0,
                       fetch_max_wait=0.05, producer_linger=0.01,
                       broker_probe_interval=1.0)

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
        if "RISKWATCH_DIRECT_DELIVERY" in env:
            values["direct_delivery"] = _parse_bool("RISKWATCH_DIRECT_DELIVERY",
                                                    env["RISKWATCH_DIRECT_DELIVERY"])
        values.update(security_from_env(env))
        values.update(_secret_values(env))
        for name in ("security_protocol", "sasl_mechanism"):
            if isinstance(overrides.get(name), str):
                overrides[name] = str(overrides[name]).strip().upper()
        password_file = overrides.pop("sasl_password_file", None)
        if password_file is not None:
            values["sasl_password"] = _password_from_file(password_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.bootstrap_servers  # noqa: B018 - validate early
        parse_addr(settings.metrics_addr)
        if settings.partitions < 1:
            raise ConfigError("partitions must be at least 1")
        return settings


def _check_security(settings: Settings) -> None:
    """Refuse contradictory or unsafe Kafka security settings (no file is read here)."""
    protocol = settings.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"--security-protocol {protocol!r}: expected one of "
                          f"{', '.join(SECURITY_PROTOCOLS)}")
    sasl = protocol.startswith("SASL_")
    tls = protocol in ("SSL", "SASL_SSL")
    if sasl:
        if settings.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"--sasl-mechanism {settings.sasl_mechanism!r}: {protocol} needs "
                              f"one of {', '.join(SASL_MECHANISMS)}")
        if not settings.sasl_username:
            raise ConfigError(f"--sasl-username: {protocol} needs a user name")
        if not settings.sasl_password:
            raise ConfigError(f"--sasl-password-file: {protocol} needs a password "
                              "(RISKWATCH_KAFKA_SASL_PASSWORD_FILE or RISKWATCH_KAFKA_SASL_PASSWORD)")
        if settings.sasl_mechanism == "PLAIN" and not tls:
            raise ConfigError("--sasl-mechanism PLAIN over SASL_PLAINTEXT would send the password "
                              "in clear: use SASL_SSL, or a SCRAM mechanism")
    else:
        given = [name for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                 if getattr(settings, name)]
        if given:
            raise ConfigError(f"--security-protocol {protocol}: {', '.join(given)} would not be "
                              "used; choose SASL_SSL or SASL_PLAINTEXT")
    if not tls:
        given = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                 if getattr(settings, name) is not None]
        if given:
            raise ConfigError(f"--security-protocol {protocol}: {', '.join(given)} would not be "
                              "used; choose SSL or SASL_SSL")
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile (the client certificate)")


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} {text!r}: expected true or false")


def _password_from_file(path: object, what: str = "--sasl-password-file") -> Secret[str]:
    data = read_secret_file(Path(str(path)), what=what)
    try:
        return Secret(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r}: not UTF-8 text") from None


def security_from_env(env: dict[str, str] | os._Environ[str] | None = None) -> dict[str, object]:
    """The Kafka client security settings given by ``RISKWATCH_KAFKA_*`` variables."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for field_name, var in (("security_protocol", "SECURITY_PROTOCOL"),
                            ("sasl_mechanism", "SASL_MECHANISM")):
        if env.get(f"RISKWATCH_KAFKA_{var}"):
            values[field_name] = env[f"RISKWATCH_KAFKA_{var}"].strip().upper()
    if env.get("RISKWATCH_KAFKA_SASL_USERNAME"):
        values["sasl_username"] = env["RISKWATCH_KAFKA_SASL_USERNAME"]
    inline = env.get("RISKWATCH_KAFKA_SASL_PASSWORD")
    path = env.get("RISKWATCH_KAFKA_SASL_PASSWORD_FILE")
    if inline and path:
        raise ConfigError("set RISKWATCH_KAFKA_SASL_PASSWORD_FILE or RISKWATCH_KAFKA_SASL_PASSWORD, "
                          "not both")
    if path:
        values["sasl_password"] = _password_from_file(path, "RISKWATCH_KAFKA_SASL_PASSWORD_FILE")
    elif inline:
        values["sasl_password"] = Secret(inline)
    for field_name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        var = f"RISKWATCH_KAFKA_{field_name.upper()}"
        if env.get(var):
            values[field_name] = Path(env[var])
    if env.get("RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME"):
        values["ssl_check_hostname"] = _parse_bool("RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME",
                                                   env["RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME"])
    return values


def control_token_from_file(path: str | Path) -> Secret[str]:
    """The HTTP control bearer token stored in ``path`` (at least 16 characters)."""
    data = read_secret_file(path, what="RISKWATCH_CONTROL_TOKEN_FILE")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"RISKWATCH_CONTROL_TOKEN_FILE {str(path)!r}: not ASCII text") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"RISKWATCH_CONTROL_TOKEN_FILE {str(path)!r}: the token must be at "
                          f"least {MIN_TOKEN_CHARS} characters, without spaces")
    return Secret(token)


def _secret_values(env: dict[str, str] | os._Environ[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if env.get("RISKWATCH_CONTROL_TOKEN_FILE"):
        values["control_token"] = control_token_from_file(env["RISKWATCH_CONTROL_TOKEN_FILE"])
    key = PseudonymKey.from_env(dict(env))
    if key is not None:
        values["pseudonym_key"] = key
    return values
