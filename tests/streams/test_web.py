"""The control endpoints' answers to malformed requests and to bugs (no broker)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from alerts.policy import DEFAULT_POLICY
from alerts.privacy import Secret
from streams.config import Settings
from streams.metrics import Metrics
from streams.web import build_http

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rw() -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(broker="kafka://127.0.0.1:1",
                                             control_token=Secret(TOKEN)),
                           metrics=Metrics(), engine=SimpleNamespace(policy=DEFAULT_POLICY))


async def _raw_post(port: int, path: str, head: bytes, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 + head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_a_header_that_is_not_utf8_is_a_400_naming_it():
    client = TestClient(TestServer(build_http(_rw())))  # type: ignore[arg-type]
    await client.start_server()
    try:
        head = (b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                b"X-Riskwatch-Actor: ana\r\nX-Riskwatch-Why: caf\xe9 review\r\n")
        answer = await _raw_post(client.port, "/control/policy", head, b"version: v-w1\n")
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
        assert b'"header X-Riskwatch-Why is not UTF-8 text"' in answer
        head = b"Authorization: Bearer " + TOKEN.encode() + b"\r\nX-Riskwatch-Actor: \xffna\r\n"
        answer = await _raw_post(client.port, "/control/crisis", head,
                                 b'{"active": true, "why": "storm"}')
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
        assert b"X-Riskwatch-Actor is not UTF-8" in answer
    finally:
        await client.close()


async def test_text_that_cannot_be_utf8_is_a_422_naming_the_field():
    client = TestClient(TestServer(build_http(_rw())))  # type: ignore[arg-type]
    await client.start_server()
    try:
        headers = {**AUTH, "X-Riskwatch-Actor": "ana", "X-Riskwatch-Why": "w"}
        resp = await client.post("/control/policy", data='version: "v\\ud800"\n',
                                 headers=headers)
        assert resp.status == 422
        error = (await resp.json())["error"]
        assert "UTF-8" in error and "$.version" in error
        resp = await client.post("/control/policy", data='version: v1\n"x\\ud800": 1\n',
                                 headers=headers)
        assert resp.status == 422
        assert "a key not encodable as UTF-8 text - at `$`" in (await resp.json())["error"]
        resp = await client.post("/control/policy", data=b'{"version": "v1", "x\\ud800": 1}',
                                 headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 422  # orjson refuses a lone surrogate itself
        resp = await client.post("/control/crisis", data=b'{"active": true, "why": "\\ud800"}',
                                 headers={**AUTH, "X-Riskwatch-Actor": "ana"})
        assert resp.status == 400
    finally:
        await client.close()


async def test_a_bug_is_a_json_500_without_the_traceback_and_a_masked_log(monkeypatch, caplog):
    import streams.web

    async def broken(*args, **kwargs):
        raise RuntimeError("card 4111111111111111 in a bug")

    monkeypatch.setattr(streams.web, "publish_policy", broken)
    client = TestClient(TestServer(build_http(_rw())))  # type: ignore[arg-type]
    await client.start_server()
    try:
        with caplog.at_level(logging.ERROR, logger="riskwatch.web"):
            resp = await client.post("/control/policy", data="version: v-bug\n", headers={
                **AUTH, "X-Riskwatch-Actor": "ana", "X-Riskwatch-Why": "w"})
        assert resp.status == 500
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert "RuntimeError" in body["error"] and "4111" not in body["error"]
        assert "Traceback" not in await resp.text()
    finally:
        await client.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "riskwatch.web")
    assert "Traceback" in logged and "RuntimeError: card 411111******1111" in logged
    assert "4111111111111111" not in logged
