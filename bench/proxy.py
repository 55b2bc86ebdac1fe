"""A TCP fault proxy for the Kafka protocol, loopback only, with runtime controls.

:class:`FaultProxy` forwards every connection accepted on ``127.0.0.1:<listen>``
to ``127.0.0.1:<upstream>`` and can, while running:

* add latency (``set_latency(ms)``): every chunk is held ``ms`` before it is
  forwarded, in both directions, pipelined (throughput is not capped);
* black out the network (``blackout("stall")``): connections are still
  accepted, but no byte moves in either direction until ``restore()`` (a
  partition that heals without a reset: clients time out on their own);
* refuse (``blackout("refuse")``): the listening socket is closed (connection
  refused) and every open connection is reset;
* reset every open connection once (``reset_all()``: RST, SO_LINGER 0);
* pass through again (``restore()``: no latency, no blackout).

Kafka clients reconnect to the *advertised* listener, not to the address they
bootstrapped from, so :class:`ProxiedBroker` starts a dedicated Tansu broker that
listens on its own port and advertises the proxy's port: every client (workers,
producers, admin) then talks to the broker through the proxy.

:class:`ProxyThread` runs a proxy on its own event loop in a thread, so a
harness may block (subprocess waits, sleeps) without stalling the traffic.

Command line (a broker behind a proxy, controlled by lines on stdin)::

    python -m bench.proxy --with-broker
    > latency 200 | stall | refuse | reset | pass | stats | quit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import threading
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

LOOPBACK = "127.0.0.1"
CHUNK = 256 * 1024
#: Chunks in flight per direction before a reader waits (bounds memory under latency).
QUEUE_CHUNKS = 512

BlackoutMode = Literal["stall", "refuse"]
T = TypeVar("T")


def _loopback(host: str) -> str:
    if host not in (LOOPBACK, "localhost"):
        raise ValueError(f"the fault proxy is loopback-only; refusing host {host!r}")
    return LOOPBACK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class ProxyStats:
    accepted: int = 0
    refused_while_blackout: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    open: int = 0


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """An asyncio TCP proxy ``127.0.0.1:listen_port`` -> ``127.0.0.1:upstream_port``."""

    def __init__(self, upstream_port: int, listen_port: int = 0, *,
                 upstream_host: str = LOOPBACK) -> None:
        self.upstream_host = _loopback(upstream_host)
        self.upstream_port = upstream_port
        self.listen_port = listen_port or free_port()
        self.latency_s = 0.0
        self.mode: str = "pass"
        self.stats = ProxyStats()
        self._open = asyncio.Event()  # set: bytes may flow
        self._open.set()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.listen_port,
                                                  reuse_address=True)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def stop(self) -> None:
        await self._unlisten()
        self.reset_all()

    # -- controls ----------------------------------------------------------

    def set_latency(self, ms: float) -> None:
        """Hold every chunk ``ms`` milliseconds before forwarding it (0 = none)."""
        self.latency_s = max(0.0, ms) / 1000.0
        if self.mode in ("pass", "latency"):
            self.mode = "latency" if ms > 0 else "pass"

    def reset_all(self) -> int:
        """Reset every open connection (both sides); return how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.reset()
        self._conns.clear()
        self.stats.resets += len(conns)
        self.stats.open = 0
        return len(conns)

    async def blackout(self, mode: BlackoutMode = "stall") -> None:
        """Stop the network: ``stall`` (accept, move nothing) or ``refuse`` (close, reset)."""
        if mode == "stall":
            self._open.clear()
        elif mode == "refuse":
            await self._unlisten()
            self.reset_all()
        else:  # pragma: no cover - guarded by the type
            raise ValueError(mode)
        self.mode = mode

    async def restore(self) -> None:
        """Pass-through: no latency, no blackout, listening."""
        self.latency_s = 0.0
        if self._server is None:
            await self._listen()
        self._open.set()
        self.mode = "pass"

    # -- forwarding --------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # a connection that raced a refuse
            self.stats.refused_while_blackout += 1
            _rst(writer)
            return
        self.stats.accepted += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        self.stats.open = len(self._conns)
        try:
            await self._open.wait()  # a stalled network accepts but does not connect
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host,
                                                                 self.upstream_port)
            conn.upstream = up_writer
            conn.tasks = [
                asyncio.ensure_future(self._pipe(reader, up_writer, up=True)),
                asyncio.ensure_future(self._pipe(up_reader, writer, up=False)),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for task in conn.tasks:
                task.cancel()
            for w in (writer, conn.upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self._conns.discard(conn)
            self.stats.open = len(self._conns)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    up: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            while True:
                await self._open.wait()
                data = await reader.read(CHUNK)
                if not data:
                    await queue.put((0.0, b""))
                    return
                await queue.put((loop.time() + self.latency_s, data))

        reading = asyncio.ensure_future(read())
        try:
            while True:
                release, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                delay = release - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._open.wait()
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (OSError, ConnectionError):
            return
        finally:
            reading.cancel()


class ProxyThread:
    """A :class:`FaultProxy` on its own event loop in a daemon thread."""

    def __init__(self, upstream_port: int, listen_port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self.proxy = FaultProxy(upstream_port, listen_port)
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.listen_port

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> ProxyThread:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self.proxy.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def set_latency(self, ms: float) -> None:
        self._loop.call_soon_threadsafe(self.proxy.set_latency, ms)

    def blackout(self, mode: BlackoutMode = "stall") -> None:
        self._call(self.proxy.blackout(mode))

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def reset_all(self) -> int:
        async def reset() -> int:
            return self.proxy.reset_all()

        return self._call(reset())

    def stats(self) -> dict[str, Any]:
        async def snap() -> dict[str, Any]:
            return {**asdict(self.proxy.stats), "mode": self.proxy.mode,
                    "latency_ms": self.proxy.latency_s * 1000}

        return self._call(snap())


class ProxiedBroker:
    """A Tansu broker reachable only through a :class:`ProxyThread`; a context manager.

    The broker listens on ``broker_port`` and advertises ``proxy.port``: clients
    bootstrap from :attr:`bootstrap` (the proxy) and every later connection
    (coordinator, partition leaders) goes through the proxy too.
    """

    def __init__(self, *, log_path: Path | None = None) -> None:
        from streams.broker import EmbeddedBroker

        self.broker_port = free_port()
        self.proxy = ProxyThread(self.broker_port)
        self.log_path = log_path
        self._broker: Any = None
        self._make = lambda: EmbeddedBroker(self.broker_port, log_path=log_path,
                                            advertised_port=self.proxy.port)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.proxy.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        return self._broker.pid if self._broker else None

    @property
    def _proc(self) -> Any:  # the broker process (bench.run reads its pid)
        return self._broker._proc if self._broker else None

    def start(self, timeout: float = 20.0) -> ProxiedBroker:
        self.proxy.start()
        self._broker = self._make()
        try:
            self._broker.start(timeout)
        except Exception:
            self.proxy.stop()
            raise
        return self

    def alive(self) -> bool:
        return self._broker is not None and self._broker.alive()

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        self.proxy.stop()

    def __enter__(self) -> ProxiedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _command(proxy: ProxyThread, line: str) -> str:
    words = line.split()
    if not words:
        return ""
    verb = words[0]
    if verb == "latency" and len(words) == 2:
        proxy.set_latency(float(words[1]))
    elif verb in ("stall", "refuse"):
        proxy.blackout(verb)  # type: ignore[arg-type]
    elif verb == "reset":
        return f"reset {proxy.reset_all()} connections"
    elif verb == "pass":
        proxy.restore()
    elif verb != "stats":
        return "commands: latency MS | stall | refuse | reset | pass | stats | quit"
    return json.dumps(proxy.stats())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=int, help="upstream port on 127.0.0.1")
    parser.add_argument("--listen", type=int, default=0, help="listen port (0 = a free one)")
    parser.add_argument("--with-broker", action="store_true",
                        help="start a Tansu broker that advertises the proxy's port")
    args = parser.parse_args(argv)
    broker: ProxiedBroker | None = None
    if args.with_broker:
        broker = ProxiedBroker().start()
        proxy = broker.proxy
        print(f"broker {broker.url} (Tansu on {LOOPBACK}:{broker.broker_port}, via the proxy)")
    elif args.upstream:
        proxy = ProxyThread(args.upstream, args.listen).start()
        print(f"proxy {LOOPBACK}:{proxy.port} -> {LOOPBACK}:{args.upstream}")
    else:
        parser.error("give --upstream PORT or --with-broker")
    sys.stdout.flush()
    try:
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            print(_command(proxy, line), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if broker is not None:
            broker.stop()
        else:
            proxy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
