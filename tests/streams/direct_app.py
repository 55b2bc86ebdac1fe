"""A Faust app whose records go to a direct-delivery sink, run as a subprocess by
``tests/streams/test_direct_delivery.py``.

    python tests/streams/direct_app.py BROKER_URL TOPIC GROUP REPORT_PATH DELAY_MS

The fetch loop (``streams.tuning.use_fetch_loop``) hands each record of ``TOPIC`` to
the sink, which notes (consumer generation, partition, offset), sleeps ``DELAY_MS``
(to stretch the run over a rebalance) and acknowledges it through the consumer, as
the worker does. The agent on the topic only subscribes to it; it must get nothing.
The notes are written as JSON to ``REPORT_PATH`` every 0.2 s.
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
from streams.tuning import Sink, set_group_fetch_wait, use_fetch_loop


def main() -> None:
    url, topic_name, group, report = sys.argv[1:5]
    delay = int(sys.argv[5]) / 1000
    mode.loop.use("uvloop")
    s = Settings().fast()
    set_group_fetch_wait(50)
    use_fetch_loop()
    app = faust.App(
        group, broker=url, store="memory://", web_enabled=False,
        datadir=str(Path(report).parent / f"data-{Path(report).stem}"),
        topic_allow_declare=True, topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=s.rebalance_timeout, stream_wait_empty=False,
        broker_commit_interval=0.2, logging_config=None)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    seen: dict[str, Any] = {"delivered": [], "to_agent": 0}

    async def deliver(message: Any) -> None:
        seen["delivered"].append([app.consumer_generation_id, message.partition,
                                  message.offset])
        if delay:
            await asyncio.sleep(delay)
        app.consumer.ack(message)

    app.riskwatch_sink = Sink(frozenset({topic_name}), deliver)  # type: ignore[attr-defined]

    @app.agent(topic, concurrency=1)
    async def subscribe(stream: Any) -> None:
        async for _ in stream:
            seen["to_agent"] += 1

    @app.timer(0.2)
    async def write_report() -> None:
        tmp = Path(report + ".tmp")
        tmp.write_bytes(orjson.dumps(seen))
        tmp.rename(report)

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None
    sys.argv = [sys.argv[0]]
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
