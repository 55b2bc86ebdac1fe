"""The ``riskwatch`` command line."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from schemas.errors import ConfigError, RiskwatchError
from streams.security import kafka_security_options

app = typer.Typer(
    name="riskwatch",
    help="Credit-risk monitoring and early-warning stream processor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schemas_app = typer.Typer(help="Event contracts: JSON Schemas and the topic reference.",
                          no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
policy_app = typer.Typer(help="Risk policy: validate, diff, publish (with an audit record).",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

BrokerOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional
    typer.Option("--broker", envvar="RISKWATCH_BROKER",
                 help="kafka://host:port of an external Kafka (default: embedded broker)"),
]


def _fail(exc: RiskwatchError) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2)


def _path_error(exc: OSError) -> ConfigError:
    """A file-system failure of a command (missing input, output path taken) as a
    :class:`ConfigError` naming the path."""
    where = str(exc.filename) if exc.filename is not None else "a file"
    return ConfigError(f"{where}: {exc.strerror or exc}")


def _kafka(broker: str | None, security: dict[str, Any] | None) -> Any:
    """Settings carrying the Kafka security options (and env) of a client command."""
    from streams.config import Settings

    return Settings.from_env(broker=broker, **(security or {}))


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one)")] = 0,
    create_topics: Annotated[bool, typer.Option(help="Create the Riskwatch topics")] = True,
    partitions: Annotated[int, typer.Option(help="Partitions per topic")] = 8,
) -> None:
    """Start the embedded Tansu broker and keep it running until Ctrl-C."""
    from streams.admin import ensure_topics
    from streams.broker import EmbeddedBroker

    try:
        with EmbeddedBroker(port or None) as b:
            if create_topics:
                asyncio.run(ensure_topics(b.bootstrap, partitions))
            typer.echo(f"broker ready: {b.url}", err=False)
            sys.stdout.flush()
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                while not stop.wait(0.5):
                    if not b.alive():
                        typer.secho("error: broker exited", fg="red", err=True)
                        raise typer.Exit(1)
            except KeyboardInterrupt:
                pass
    except RiskwatchError as exc:
        _fail(exc)


@app.command()
@kafka_security_options
def worker(
    broker: BrokerOpt = None,
    metrics_addr: Annotated[Optional[str], typer.Option(  # noqa: UP045
        envvar="RISKWATCH_METRICS_ADDR", help="host:port for /metrics, /healthz, /readyz")] = None,
    policy: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        envvar="RISKWATCH_POLICY_FILE", help="Policy YAML")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        envvar="RISKWATCH_DATA_DIR", help="Worker data directory")] = None,
    partitions: Annotated[Optional[int], typer.Option(help="Partitions per topic")] = None,  # noqa: UP045
    app_id: Annotated[Optional[str], typer.Option(help="Consumer group / app id")] = None,  # noqa: UP045
    fast: Annotated[bool, typer.Option(help="Short group timings (single-machine broker)")] = False,
    loglevel: Annotated[str, typer.Option(help="Log level")] = "warning",
    security: dict[str, Any] | None = None,
) -> None:
    """Run a stream worker against a Kafka broker (blocks until stopped)."""
    from streams.app import run_worker
    from streams.config import Settings

    try:
        settings = Settings.from_env(broker=broker, metrics_addr=metrics_addr, policy_file=policy,
                                     data_dir=data_dir, partitions=partitions, app_id=app_id,
                                     loglevel=loglevel, **(security or {}))
        if fast:
            settings = settings.fast()
        run_worker(settings)
    except RiskwatchError as exc:
        _fail(exc)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds to run")] = 30.0,
    customers: Annotated[int, typer.Option(help="Customers in the generated portfolio")] = 400,
    days: Annotated[int, typer.Option(help="Days of history to generate")] = 120,
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 7,
    rate: Annotated[float, typer.Option(help="Events per second to produce (0 = as fast as "
                                             "possible)")] = 0.0,
    poison_rate: Annotated[float, typer.Option(help="Share of deliberately bad records")] = 0.002,
    partitions: Annotated[int, typer.Option(help="Partitions per topic")] = 4,
) -> None:
    """Run the whole pipeline on the embedded broker with a live summary."""
    from streams.demo import run_demo

    try:
        code = asyncio.run(run_demo(customers=customers, days=days, seed=seed, duration=duration,
                                    rate=rate, poison_rate=poison_rate, partitions=partitions))
    except RiskwatchError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command()
@kafka_security_options
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Directory for <topic>.jsonl files")],
    customers: Annotated[int, typer.Option(help="Customers")] = 1000,
    days: Annotated[int, typer.Option(help="Days of history")] = 180,
    seed: Annotated[int, typer.Option(help="Seed (same seed, same portfolio)")] = 7,
    poison_rate: Annotated[float, typer.Option(help="Share of deliberately bad records")] = 0.0,
    broker: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Also produce to this broker (kafka://host:port)")] = None,
    rate: Annotated[float, typer.Option(help="Events/s when producing (0 = max)")] = 0.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Generate a synthetic portfolio with ground truth (JSONL per topic)."""
    from streams.simulator import Portfolio, write_jsonl

    try:
        config = Portfolio(customers=customers, days=days, seed=seed, poison_rate=poison_rate)
        counts = write_jsonl(config, out_dir)
    except RiskwatchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_path_error(exc))
    for topic, count in sorted(counts.items()):
        typer.echo(f"{topic:<22} {count}")
    if broker:
        from streams.config import parse_broker_url
        from streams.replay import iter_merged, resolve_inputs

        hosts = parse_broker_url(broker)
        inputs = resolve_inputs([str(out_dir)])

        async def _send() -> int:
            from streams.admin import produce

            records = ((topic, _key_of(raw), raw) for _, topic, _, raw, _ in iter_merged(inputs))
            return await produce(hosts, _paced(records, rate), security=kafka)

        try:
            kafka = _kafka(broker, security)
            typer.echo(f"produced {asyncio.run(_send())} records to {broker}")
        except RiskwatchError as exc:
            _fail(exc)


def _key_of(raw: bytes) -> bytes | None:
    from schemas.codec import loads

    try:
        doc = loads(raw)
        value = doc.get("customer_id") or doc.get("sector") or doc.get("version")
        return str(value).encode() if value is not None else None
    except Exception:
        return None


def _paced(records: Any, rate: float) -> Any:
    import time

    started = time.monotonic()
    for n, record in enumerate(records, start=1):
        if rate > 0 and n % 100 == 0:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        yield record


@app.command()
def replay(
    inputs: Annotated[list[str], typer.Argument(
        help="<topic>.jsonl files, topic=path pairs, or a directory of them")],
    out: Annotated[Path, typer.Option("--out", help="Output directory")] = Path("replay-out"),
    policy: Annotated[Optional[Path], typer.Option(help="Policy YAML")] = None,  # noqa: UP045
    partitions: Annotated[int, typer.Option(
        help="Emulate the worker's per-partition watermarks for this many partitions")] = 1,
    baseline: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Backtest: also replay this (current) policy and compare with --policy")] = None,
) -> None:
    """Run the worker's logic in-process over JSONL history, in event-time order.

    With --baseline, a backtest: both policies replay the same history (outputs in
    OUT/baseline and OUT/candidate) and the differences are reported count by count.
    """
    from alerts.policy import load_policy
    from schemas.codec import dumps
    from streams.replay import replay as run_replay
    from streams.replay import resolve_inputs

    try:
        if partitions < 1:
            raise RiskwatchError(f"--partitions {partitions}: must be at least 1")
        resolved = resolve_inputs(inputs)
        candidate = load_policy(policy)
        if baseline is not None:
            from streams.replay import compare

            base = run_replay(resolved, out / "baseline", load_policy(baseline),
                              partitions=partitions)
            cand = run_replay(resolved, out / "candidate", candidate, partitions=partitions)
            result = compare(base, cand)
            (out / "backtest.json").write_bytes(dumps(result) + b"\n")
            typer.echo(dumps(result).decode())
            return
        report = run_replay(resolved, out, candidate, partitions=partitions)
        summary = report.as_dict()
        (out / "summary.json").write_bytes(dumps(summary) + b"\n")
    except RiskwatchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_path_error(exc))
    typer.echo(dumps(summary).decode())


@policy_app.command("validate")
def policy_validate(path: Annotated[Path, typer.Argument(help="Policy YAML")]) -> None:
    """Check a policy file; print its version or the errors."""
    from alerts.policy import load_policy

    try:
        policy = load_policy(path)
    except RiskwatchError as exc:
        _fail(exc)
    typer.echo(f"ok: {path} is valid (version {policy.version})")


@policy_app.command("diff")
def policy_diff(
    old: Annotated[Path, typer.Argument(help="Current policy YAML")],
    new: Annotated[Path, typer.Argument(help="Candidate policy YAML")],
) -> None:
    """Show what a candidate policy changes, field by field."""
    from alerts.audit import diff
    from alerts.policy import load_policy, policy_document

    try:
        changes = diff(policy_document(load_policy(old)), policy_document(load_policy(new)))
    except RiskwatchError as exc:
        _fail(exc)
    for line in changes or ["no changes"]:
        typer.echo(line)


@policy_app.command("publish")
@kafka_security_options
def policy_publish(
    path: Annotated[Path, typer.Argument(help="Policy YAML")],
    actor: Annotated[str, typer.Option(help="Who publishes (recorded in the audit log)")],
    why: Annotated[str, typer.Option(help="Why (recorded in the audit log)")],
    broker: BrokerOpt = None,
    security: dict[str, Any] | None = None,
) -> None:
    """Publish a policy to every worker (risk-policy topic) and audit it."""
    from alerts.policy import load_policy
    from streams.config import parse_broker_url
    from streams.control import publish_policy

    try:
        if not broker:
            raise RiskwatchError("publish: --broker (or RISKWATCH_BROKER) is required")
        policy = load_policy(path)
        record, entry = asyncio.run(
            publish_policy(parse_broker_url(broker), policy, actor=actor, why=why,
                           security=_kafka(broker, security)))
    except RiskwatchError as exc:
        _fail(exc)
    typer.echo(f"published {record.version}; audit seq {entry.seq} hash {entry.hash[:16]}")


@audit_app.command("verify")
@kafka_security_options
def audit_verify(
    broker: BrokerOpt = None,
    file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Verify a JSONL export of the audit topic instead of the broker")] = None,
    security: dict[str, Any] | None = None,
) -> None:
    """Check the audit chain; exit 1 and say where if it was tampered with."""
    from alerts.audit import verify_chain
    from schemas.codec import decode

    try:
        if file is not None:
            records = [decode("audit", line) for line in file.read_bytes().splitlines()
                       if line.strip()]
        elif broker:
            from streams.config import parse_broker_url
            from streams.control import read_audit

            records = asyncio.run(read_audit(parse_broker_url(broker),
                                             security=_kafka(broker, security)))
        else:
            raise RiskwatchError("audit verify: give --broker or --file")
    except RiskwatchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_path_error(exc))
    problems = verify_chain(records)
    for problem in problems:
        typer.secho(f"TAMPERED: {problem}", fg="red", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {len(records)} audit records, chain intact")


@schemas_app.command("export")
def schemas_export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the schemas into")],
) -> None:
    """Write one JSON Schema per topic and a Markdown topic reference."""
    from schemas.export import export

    try:
        paths = export(out_dir)
    except OSError as exc:
        _fail(_path_error(exc))
    typer.echo(f"wrote {len(paths)} files to {out_dir}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
