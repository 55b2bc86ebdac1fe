"""Kafka client security for every client Riskwatch builds: TLS and SASL.

One place turns :class:`~streams.config.Settings` into client configuration:

* :func:`aiokafka_kwargs` for the aiokafka producers, consumers and admin clients
  (admin helpers, policy control, the demo);
* :func:`faust_credentials` for the Faust worker (``broker_credentials=``).

Supported: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` and ``SASL_SSL``; SASL
mechanisms ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` and ``PLAIN`` (PLAIN only over
TLS: over ``SASL_PLAINTEXT`` it would send the password in clear, and the
settings refuse it). TLS verifies the broker certificate against
``ssl_cafile`` (or the system store), and its host name unless
``ssl_check_hostname`` is off; ``ssl_certfile``/``ssl_keyfile`` add a client
certificate (mutual TLS).

A client that cannot start is explained, not just reported: :func:`start_client`
turns the failure into a :class:`~schemas.errors.BrokerError` that names the
broker, the protocol, the mechanism and user, and the cause found by probing one
connection (refused, TLS verification failed, credentials rejected, ...). The
password never appears in a message, a ``repr`` or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import re
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from schemas.codec import mask_pans
from schemas.errors import BrokerError, ConfigError
from streams.config import Settings, security_from_env

#: Exceptions a client start may fail with (aiokafka's SCRAM client raises KeyError /
#: ValueError when the broker answers the SCRAM exchange with an error).
START_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError, OSError, TimeoutError, KeyError, ValueError, AssertionError,
)


_DIGIT_RUN = re.compile(r"[0-9](?:[ \t-]{0,3}[0-9]){12}")


class RedactSecrets(logging.Filter):
    """Masks secrets and card numbers in every record of the logger it is attached to.

    aiokafka logs each request and response at DEBUG: a SASL PLAIN request carries
    the password, a fetch response the raw records (card numbers in a bad record, or
    in an unknown field of a good one). This filter rewrites such a record before any
    handler sees it: the secrets (plain, and with the ``repr`` escapes of a bytes
    literal) become ``********`` and card-number-like digit runs are masked as in dead
    letters (:func:`schemas.codec.mask_pans`).
    """

    def __init__(self) -> None:
        super().__init__("riskwatch-redact")
        self.secrets: set[str] = set()

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on (with its ``repr`` escapes)."""
        if secret:
            self.secrets.update({secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]})

    def redact(self, text: str) -> str:
        """``text`` with the secrets and card-number-like digit runs masked."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "********")
        if _DIGIT_RUN.search(text):
            text = mask_pans(text.encode("utf-8", "surrogateescape")).decode(
                "utf-8", "surrogateescape")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        # A traceback carries the exception's message (a bad record, a password in a
        # failed login): format it here, masked, and drop the exception itself, which
        # handlers would format again in clear.
        if record.exc_info and not record.exc_text:
            with contextlib.suppress(Exception):
                record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


#: The one redaction filter, attached to the loggers of the Kafka client libraries.
REDACT = RedactSecrets()


def protect_logs(settings: Settings) -> None:
    """Mask ``settings``' SASL password, and card numbers, in log records.

    Called whenever a client is configured. A logger filter only sees records
    created on that very logger, so the filter goes on every ``aiokafka``, ``faust``,
    ``mode`` and ``riskwatch`` logger that exists by now (their modules are
    imported) and on the root logger.
    """
    if settings.sasl_password is not None:
        REDACT.add(settings.sasl_password.reveal())
    names = [name for name in list(logging.root.manager.loggerDict)
             if name.split(".", 1)[0] in ("aiokafka", "faust", "mode", "riskwatch")]
    for logger in [logging.getLogger(name) for name in names] + [logging.getLogger()]:
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)


class _MaskedKwargs(dict[str, Any]):
    """Client keyword arguments whose ``repr`` hides the password."""

    def __repr__(self) -> str:
        shown = {k: ("********" if k == "sasl_plain_password" and v else v)
                 for k, v in self.items()}
        return repr(shown)

    __str__ = __repr__


def client_security(security: Settings | None) -> Settings:
    """``security`` itself, or settings holding only the ``RISKWATCH_KAFKA_*`` variables."""
    return security if security is not None else Settings(**security_from_env())  # type: ignore[arg-type]


def _no_key_password() -> str:
    raise ConfigError("ssl_keyfile is encrypted: give an unencrypted key file (mount it as a "
                      "secret) - an interactive passphrase prompt would hang a worker")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for ``SSL``/``SASL_SSL`` (None for the plaintext protocols).

    Built with :func:`aiokafka.helpers.create_ssl_context`: the broker certificate
    is verified (against ``ssl_cafile`` or the system store), TLS 1.2 at least.
    """
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    for option, path in (("ssl_cafile", settings.ssl_cafile),
                         ("ssl_certfile", settings.ssl_certfile),
                         ("ssl_keyfile", settings.ssl_keyfile)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {str(path)!r}: no such file")
    try:
        context = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            password=_no_key_password,
        )
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS files ({_tls_files(settings)}) are not usable: "
                          f"{exc.reason or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Hostname checking needs verification; verification stays on either way.
    context.check_hostname = settings.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tls_files(settings: Settings) -> str:
    parts = [f"{name}={value}" for name, value in (
        ("ssl_cafile", settings.ssl_cafile), ("ssl_certfile", settings.ssl_certfile),
        ("ssl_keyfile", settings.ssl_keyfile)) if value is not None]
    return ", ".join(parts) or "system defaults"


def aiokafka_kwargs(settings: Settings | None = None) -> dict[str, Any]:
    """Security keyword arguments for any aiokafka client built from ``settings``.

    ``security_protocol`` always; ``ssl_context`` for SSL/SASL_SSL; ``sasl_mechanism``,
    ``sasl_plain_username`` and ``sasl_plain_password`` for the SASL protocols. The
    returned mapping holds the password in clear, because aiokafka needs it so, but
    its ``repr`` masks it; pass it straight to the client constructor.

    >>> aiokafka_kwargs(Settings())
    {'security_protocol': 'PLAINTEXT'}
    """
    settings = client_security(settings)
    protect_logs(settings)
    kwargs = _MaskedKwargs(security_protocol=settings.security_protocol)
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password is not None  # checked by Settings
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.reveal()
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """Faust ``broker_credentials`` for ``settings`` (None for PLAINTEXT).

    ``SSL`` gives :class:`faust.SSLCredentials` around the TLS context; the SASL
    protocols give :class:`faust.SASLCredentials` (with the TLS context for
    ``SASL_SSL``, which is what makes Faust choose ``SASL_SSL``).
    """
    import faust

    protect_logs(settings)
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.sasl_password is not None
    credentials = faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.reveal(),
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )
    assert credentials.protocol.value == protocol
    return credentials


def describe(settings: Settings, servers: Iterable[str] | str) -> str:
    """``"Kafka broker <servers> (<protocol>[, <mechanism> as '<user>'])"``, no secret."""
    where = servers if isinstance(servers, str) else ",".join(servers)
    how = settings.security_protocol
    if how.startswith("SASL_"):
        how += f", {settings.sasl_mechanism} as {settings.sasl_username!r}"
    return f"Kafka broker {where} ({how})"


def _scrub(text: str, settings: Settings) -> str:
    password = settings.sasl_password.reveal() if settings.sasl_password else ""
    return text.replace(password, "********") if password else text


def explain(exc: BaseException, settings: Settings) -> tuple[str, bool]:
    """A cause for a failed connection, and whether retrying cannot help."""
    sasl = settings.security_protocol.startswith("SASL_")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed ({exc.verify_message}); "
                f"trusted: {_tls_files(settings)}", True)
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})", True
    if isinstance(exc, SaslAuthenticationFailed) or (sasl and isinstance(exc, KeyError | ValueError)):
        return (f"authentication failed: the broker rejected the {settings.sasl_mechanism} "
                f"credentials of user {settings.sasl_username!r}", True)
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"the broker does not offer SASL mechanism {settings.sasl_mechanism}", True
    if isinstance(exc, KafkaConnectionError):
        if sasl:
            return ("the broker closed the connection during the SASL handshake (is "
                    f"{settings.sasl_mechanism} enabled there, and the protocol right?)", True)
        return ("the broker closed the connection (does it require TLS or SASL? "
                f"this client uses {settings.security_protocol})", False)
    if isinstance(exc, TimeoutError):
        hint = " (TLS to a plaintext listener?)" if settings.security_protocol.endswith("SSL") else ""
        return f"no answer in time{hint}", False
    if isinstance(exc, ConnectionError | OSError):
        return f"cannot connect ({exc.strerror or exc!r})", False
    return repr(exc), False


async def probe(settings: Settings, servers: Iterable[str] | str, *,
                timeout: float = 10.0) -> tuple[str, bool] | None:
    """Open (and authenticate) one connection to the first bootstrap server that
    answers; None when that works, else :func:`explain`'s cause for the last failure."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    hosts = [servers] if isinstance(servers, str) else list(servers)
    kwargs = aiokafka_kwargs(settings)
    failure: tuple[str, bool] | None = None
    for server in hosts:
        host, _, port = server.rpartition(":")
        conn = None
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **kwargs),
                timeout)
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = explain(exc, settings)
        finally:
            if conn is not None:
                conn.close()
    return failure


async def start_client(client: Any, settings: Settings | None, servers: Iterable[str] | str,
                       what: str) -> None:
    """``await client.start()``; on failure stop it and raise a :class:`BrokerError`
    that names the broker and the cause (found by :func:`probe`), never the password."""
    settings = client_security(settings)
    try:
        await client.start()
    except asyncio.CancelledError:
        raise
    except START_ERRORS as exc:
        with contextlib.suppress(Exception):
            stop = getattr(client, "stop", None) or client.close
            await stop()
        found = await probe(settings, servers)
        reason = found[0] if found is not None else f"connected, but the client failed: {exc!r}"
        raise BrokerError(_scrub(f"{what}: {describe(settings, servers)}: {reason}",
                                 settings)) from None


def preflight(settings: Settings, *, timeout: float = 15.0) -> None:
    """Fail fast (``BrokerError``) when the broker refuses the configured TLS or SASL.

    Only definitive refusals fail (certificate not trusted, credentials rejected,
    mechanism not offered): an unreachable broker is left to the worker's own
    retries, so a worker may still start before its broker. Runs on a private event
    loop, so it can be called before Faust sets up its own.
    """
    if settings.security_protocol == "PLAINTEXT":
        return
    loop = asyncio.new_event_loop()
    try:
        found = loop.run_until_complete(probe(settings, settings.bootstrap_servers,
                                              timeout=timeout))
    finally:
        loop.close()
    if found is not None and found[1]:
        raise BrokerError(_scrub(f"worker: {describe(settings, settings.bootstrap_servers)}: "
                                 f"{found[0]}", settings))


# --------------------------------------------------------------------------- #
# Command-line options
# --------------------------------------------------------------------------- #

def kafka_security_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Typer command with the Kafka security options.

    The command declares a ``security: dict`` parameter and receives the given
    options as :meth:`Settings.from_env` overrides (None = not given, so the
    ``RISKWATCH_KAFKA_*`` variables apply). The password is never an option (it
    would show in the process list): ``--sasl-password-file`` or the
    ``RISKWATCH_KAFKA_SASL_PASSWORD[_FILE]`` variables.
    """
    import typer

    def opt(help_text: str, *names: str) -> Any:
        return typer.Option(*names, help=help_text, rich_help_panel="Kafka security")

    added: list[tuple[str, Any]] = [
        ("security_protocol", Annotated[Optional[str], opt(  # noqa: UP045 - typer
            "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (env RISKWATCH_KAFKA_SECURITY_PROTOCOL)",
            "--security-protocol")]),
        ("sasl_mechanism", Annotated[Optional[str], opt(  # noqa: UP045
            "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (env RISKWATCH_KAFKA_SASL_MECHANISM)",
            "--sasl-mechanism")]),
        ("sasl_username", Annotated[Optional[str], opt(  # noqa: UP045
            "SASL user (env RISKWATCH_KAFKA_SASL_USERNAME)", "--sasl-username")]),
        ("sasl_password_file", Annotated[Optional[Path], opt(  # noqa: UP045
            "File holding the SASL password (env RISKWATCH_KAFKA_SASL_PASSWORD_FILE)",
            "--sasl-password-file")]),
        ("ssl_cafile", Annotated[Optional[Path], opt(  # noqa: UP045
            "CA bundle to verify the broker (env RISKWATCH_KAFKA_SSL_CAFILE)", "--ssl-cafile")]),
        ("ssl_certfile", Annotated[Optional[Path], opt(  # noqa: UP045
            "Client certificate (mutual TLS) (env RISKWATCH_KAFKA_SSL_CERTFILE)",
            "--ssl-certfile")]),
        ("ssl_keyfile", Annotated[Optional[Path], opt(  # noqa: UP045
            "Client key (unencrypted) (env RISKWATCH_KAFKA_SSL_KEYFILE)", "--ssl-keyfile")]),
        ("ssl_check_hostname", Annotated[Optional[bool], opt(  # noqa: UP045
            "Check the broker certificate's host name (default on) "
            "(env RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME)",
            "--ssl-check-hostname/--no-ssl-check-hostname")]),
    ]
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "security"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
             for name, ann in added]
    names = [name for name, _ in added]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        security = {name: kwargs.pop(name, None) for name in names}
        return command(*args, security=security, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=kept + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "security"}
    return wrapper
