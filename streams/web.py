"""The worker's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz`` and control.

Bound to the metrics address (127.0.0.1 by default). Faust's own web server,
with its table and router views, is disabled.

``/readyz`` answers 200 ``{"ready": true}``, or 503 with a ``reason`` (``broker
unreachable``, ``broker state lost`` with its ``findings``, ``policy not caught up``,
``no partitions assigned``, ``rebalancing``, ``table recovery``).

Control endpoints publish through :mod:`streams.control`, so every change is a
new policy version with a hash-chained audit record, applied by every worker:

* ``POST /control/policy``: the body is a policy document (YAML or JSON); the
  ``X-Riskwatch-Actor`` and ``X-Riskwatch-Why`` headers are required (they go into
  the audit record).
* ``POST /control/crisis``: the body is ``{"active": true|false, "why": "..."}``; the
  current policy is republished with crisis mode switched, under a version such as
  ``"<version>+crisis-on-<n>"``. ``X-Riskwatch-Actor`` is required.

Both require ``Authorization: Bearer <token>`` with the token of
``RISKWATCH_CONTROL_TOKEN_FILE`` (compared in constant time). Without a configured
token they answer 403 (control disabled); a missing or wrong token gets 401 and
changes nothing. Bodies over :data:`MAX_BODY` bytes get 413, an invalid policy 422,
a version conflict or a switch already in force 409, an unreachable broker 503,
a header that is not UTF-8 text 400, and a bug a JSON 500 (the traceback goes to the
log, masked, never to the client).
The token is never logged (there is no access log) and the actor is an audit
label, not an identity: the token is the only credential.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import traceback
from typing import TYPE_CHECKING, Any, cast

import orjson
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from alerts.policy import Policy, load_policy_text, parse_policy
from schemas.errors import PolicyError, RiskwatchError
from streams.config import parse_addr
from streams.control import AlreadyInState, VersionConflict, publish_crisis, publish_policy
from streams.security import REDACT

if TYPE_CHECKING:
    from streams.app import Riskwatch

log = logging.getLogger("riskwatch.web")

#: Largest accepted request body, in bytes (a policy document is a few KiB).
MAX_BODY = 64 * 1024
#: Longest accepted actor and reason (the audit record's limits).
MAX_ACTOR = 128
MAX_WHY = 2000

_LOOPBACK = ("localhost",)


def _error(status: int, message: str, **headers: str) -> web.Response:
    # A message may quote what the client sent, lone surrogates included: escaped.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def _internal_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A bug answers a JSON 500 without the traceback; the traceback goes to the log,
    with card numbers and secrets masked."""
    try:
        return cast(web.StreamResponse, await handler(request))
    except web.HTTPException:
        raise
    except Exception as exc:
        trace = "".join(traceback.format_exception(exc))
        log.error("%s %s failed: %s", request.method, request.path, REDACT.redact(trace))
        return _error(500, f"internal error ({type(exc).__name__}); the worker log has the "
                           "details, and the change may or may not have been published")


def authorize(request: web.Request, token: Any) -> web.Response | None:
    """None when the request carries the control token; else the 403/401 answer."""
    if not token:
        return _error(403, "control endpoints are disabled: no RISKWATCH_CONTROL_TOKEN_FILE "
                           "is configured")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.reveal().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return _error(401, "missing or wrong bearer token",
                      **{"WWW-Authenticate": 'Bearer realm="riskwatch-control"'})
    return None


def _header(request: web.Request, name: str, limit: int) -> str:
    value = request.headers.get(name, "").strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        raise web.HTTPBadRequest(text=orjson.dumps(
            {"error": f"header {name} is not UTF-8 text"}).decode(),
            content_type="application/json") from None
    if not value:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": f"header {name} is required"})
                                 .decode(), content_type="application/json")
    if len(value) > limit:
        raise web.HTTPBadRequest(text=orjson.dumps(
            {"error": f"header {name} is longer than {limit} characters"}).decode(),
            content_type="application/json")
    return value


def parse_policy_body(body: bytes, content_type: str) -> Policy:
    """A posted policy document (JSON, or YAML without anchors and aliases)."""
    source = "POST /control/policy"
    if content_type == "application/json":
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(f"policy {source}: not valid JSON: {exc}") from None
        return parse_policy(document, source=source)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"policy {source}: not UTF-8 text") from None
    try:
        # Aliases can expand a small document exponentially during validation.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise PolicyError(f"policy {source}: YAML aliases are not accepted")
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy {source}: not valid YAML: {exc}") from None
    return load_policy_text(text, source=source)


def build_http(rw: Riskwatch) -> web.Application:
    """The aiohttp application serving the worker's endpoints."""
    publishing = asyncio.Lock()  # one control change at a time from this worker

    async def metrics_view(request: web.Request) -> web.Response:
        body = generate_latest(rw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = rw.not_ready_reason()
        rw.metrics.ready.set(0 if reason else 1)
        if reason is None:
            return web.json_response({"ready": True})
        body: dict[str, object] = {"ready": False, "reason": reason}
        if rw.guard is not None and rw.guard.findings:
            # Topics, partitions and offsets only: what an operator needs to act.
            body["findings"] = [f.describe() for f in rw.guard.findings[:20]]
        return web.json_response(body, status=503)

    async def _publish(action: str, run: Any) -> web.Response:
        try:
            async with publishing:
                record, entry = await run()
        except (AlreadyInState, VersionConflict) as exc:
            return _error(409, str(exc))
        except PolicyError as exc:
            return _error(422, str(exc))
        except RiskwatchError as exc:
            log.warning("control: %s failed: %s", action, exc)
            return _error(503, str(exc))
        log.warning("control: %s published policy %s (actor %r, audit seq %d)", action,
                    record.version, record.actor, entry.seq)
        return web.json_response({"published": record.version, "audit_seq": entry.seq,
                                  "audit_hash": entry.hash}, status=201)

    async def control_policy(request: web.Request) -> web.Response:
        denied = authorize(request, rw.settings.control_token)
        if denied is not None:
            return denied
        actor = _header(request, "X-Riskwatch-Actor", MAX_ACTOR)
        why = _header(request, "X-Riskwatch-Why", MAX_WHY)
        body = await request.read()  # 413 past client_max_size
        try:
            policy = parse_policy_body(body, request.content_type)
        except PolicyError as exc:
            return _error(422, str(exc))
        return await _publish("POST /control/policy", lambda: publish_policy(
            rw.settings.bootstrap_servers, policy, actor=actor, why=why,
            security=rw.settings))

    async def control_crisis(request: web.Request) -> web.Response:
        denied = authorize(request, rw.settings.control_token)
        if denied is not None:
            return denied
        actor = _header(request, "X-Riskwatch-Actor", MAX_ACTOR)
        body = await request.read()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, 'expected JSON: {"active": true|false, "why": "..."}')
        if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
            return _error(400, 'expected JSON: {"active": true|false, "why": "..."}')
        why = doc.get("why")
        if not isinstance(why, str) or not why.strip() or len(why) > MAX_WHY:
            return _error(400, f'"why" is required: a reason of 1-{MAX_WHY} characters')
        return await _publish("POST /control/crisis", lambda: publish_crisis(
            rw.settings.bootstrap_servers, doc["active"], actor=actor, why=why,
            fallback=rw.engine.policy, security=rw.settings))

    http = web.Application(client_max_size=MAX_BODY, middlewares=[_internal_errors])
    http.router.add_get("/metrics", metrics_view)
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    http.router.add_post("/control/policy", control_policy)
    http.router.add_post("/control/crisis", control_crisis)
    return http


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def start_http(rw: Riskwatch) -> web.AppRunner:
    """Serve the worker's endpoints on the metrics address."""
    runner = web.AppRunner(build_http(rw), access_log=None)
    await runner.setup()
    host, port = parse_addr(rw.settings.metrics_addr)
    await web.TCPSite(runner, host, port).start()
    log.info("metrics and health on http://%s:%d", host, port)
    if rw.settings.control_token and not is_loopback(host):
        log.warning("control endpoints are enabled on %s, not a loopback address: the bearer "
                    "token travels in clear unless a TLS proxy fronts this port", host)
    return runner
