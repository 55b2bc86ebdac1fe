"""A one-agent Faust app with direct delivery, run as a subprocess by
``tests/streams/test_direct_delivery.py``.

    python tests/streams/direct_app.py BROKER_URL TOPIC EXPECT REPORT_PATH [faust]

It reads ``EXPECT`` records of ``TOPIC`` (one partition, pre-produced) and, for each,
notes how many records wait in the agent's stream buffer when the agent takes it
and whether a callback scheduled on the event loop by the previous record has run.
It writes the counts as JSON to ``REPORT_PATH`` (the test then stops it). ``faust``
as the last argument runs Faust's own fetch loop instead (the reference).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import faust
import mode.loop
import orjson

from streams.config import Settings
from streams.tuning import set_group_fetch_wait, use_fetch_loop


def main() -> None:
    url, topic_name, expect, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    direct = sys.argv[5:] != ["faust"]
    mode.loop.use("uvloop")
    s = Settings().fast()
    set_group_fetch_wait(50)
    if direct:
        use_fetch_loop(direct=True)
    app = faust.App(
        f"direct-test-{topic_name}", broker=url, store="memory://", web_enabled=False,
        datadir=str(Path(report).parent / "data"), topic_allow_declare=True,
        topic_disable_leader=True, consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=s.rebalance_timeout, stream_wait_empty=False,
        logging_config=None)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    seen: dict[str, Any] = {"n": 0, "max_buffered": 0, "loop_ran": 0, "direct": direct}

    @app.agent(topic, concurrency=1)
    async def take(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        flag = {"ran": True}
        async for _ in stream:
            seen["n"] += 1
            seen["max_buffered"] = max(seen["max_buffered"], stream.channel.queue.qsize())
            seen["loop_ran"] += flag["ran"]
            flag = {"ran": False}
            loop.call_soon(flag.__setitem__, "ran", True)
            if seen["n"] == expect:
                Path(report + ".tmp").write_bytes(orjson.dumps(seen))
                Path(report + ".tmp").rename(report)

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None
    sys.argv = [sys.argv[0]]
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
