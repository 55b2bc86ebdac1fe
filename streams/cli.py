"""The ``riskwatch`` command line."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas.errors import RiskwatchError

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

BrokerOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional
    typer.Option("--broker", envvar="RISKWATCH_BROKER",
                 help="kafka://host:port of an external Kafka (default: embedded broker)"),
]


def _fail(exc: RiskwatchError) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2)


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
) -> None:
    """Run a stream worker against a Kafka broker (blocks until stopped)."""
    from streams.app import run_worker
    from streams.config import Settings

    try:
        settings = Settings.from_env(broker=broker, metrics_addr=metrics_addr, policy_file=policy,
                                     data_dir=data_dir, partitions=partitions, app_id=app_id,
                                     loglevel=loglevel)
        if fast:
            settings = settings.fast()
        run_worker(settings)
    except RiskwatchError as exc:
        _fail(exc)


@schemas_app.command("export")
def schemas_export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the schemas into")],
) -> None:
    """Write one JSON Schema per topic and a Markdown topic reference."""
    from schemas.export import export

    paths = export(out_dir)
    typer.echo(f"wrote {len(paths)} files to {out_dir}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
