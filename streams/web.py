"""The worker's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``.

Bound to the metrics address (127.0.0.1 by default). Faust's own web server,
with its table and router views, is disabled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.config import parse_addr

if TYPE_CHECKING:
    from streams.app import Riskwatch

log = logging.getLogger("riskwatch.web")


def build_http(rw: Riskwatch) -> web.Application:
    """The aiohttp application serving the worker's endpoints."""

    async def metrics_view(request: web.Request) -> web.Response:
        body = generate_latest(rw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = rw.ready()
        rw.metrics.ready.set(1 if ready else 0)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    http = web.Application()
    http.router.add_get("/metrics", metrics_view)
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    return http


async def start_http(rw: Riskwatch) -> web.AppRunner:
    """Serve the worker's endpoints on the metrics address."""
    runner = web.AppRunner(build_http(rw), access_log=None)
    await runner.setup()
    host, port = parse_addr(rw.settings.metrics_addr)
    await web.TCPSite(runner, host, port).start()
    log.info("metrics and health on http://%s:%d", host, port)
    return runner


