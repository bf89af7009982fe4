#!/usr/bin/env python3
"""Print the time from SIGTERM to exit of a real ``cloudsession serve`` that has an open
``/ws/<id>`` viewer and a sync in flight, and what the viewer and the sync saw.

    .venv/bin/python scripts/measure_shutdown.py [--runs 5] [--items 4000]

Each run starts a server on a fresh filesystem store, creates a share, connects a viewer and
starts one large sync (``--items`` parts, several MB): its headers and first half are sent, then
SIGTERM, then the rest of the body, so the sync is certainly in flight when the signal lands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from servers import NAMESPACE, ServerProcess  # noqa: E402


def big_sync(session_id: str, items: int) -> list[dict[str, object]]:
    message = {"id": "msg_0001", "sessionID": session_id, "role": "user", "time": {"created": 1}}
    parts = [
        {"type": "part", "data": {"id": f"prt_{n:06d}", "messageID": "msg_0001", "sessionID": session_id, "type": "text", "text": "x" * 1500}}
        for n in range(items)
    ]
    return [{"type": "message", "data": message}, *parts]


async def one_run(base: Path, items: int, delay: float) -> dict[str, object]:
    server = ServerProcess(base / "data", env={"SESSIONS_SHARED_SECRET": NAMESPACE, "CLOUDSESSION_LOG_LEVEL": "WARNING"}).start()
    assert server.proc is not None
    try:
        async with aiohttp.ClientSession() as http:
            session_id = "ses_shutdownmeasure" + os.urandom(4).hex()
            async with http.post(server.url + "/api/share", json={"sessionID": session_id}) as resp:
                share = await resp.json()
            ws = await http.ws_connect(f"{server.url}/ws/{share['id']}?format=events")
            await ws.receive()  # hello
            raw = json.dumps({"secret": share["secret"], "data": big_sync(session_id, items)}).encode()
            signalled = asyncio.Event()
            sent = 0.0

            async def body() -> AsyncIterator[bytes]:
                yield raw[: len(raw) // 2]
                await signalled.wait()
                yield raw[len(raw) // 2 :]

            async def sync() -> str:
                headers = {"Content-Type": "application/json", "Content-Length": str(len(raw))}
                try:
                    async with http.post(f"{server.url}/api/share/{share['id']}/sync", data=body(), headers=headers) as resp:
                        answered = time.monotonic()
                        return f"HTTP {resp.status} " + (f"{answered - sent:.3f}s after SIGTERM" if sent else "before SIGTERM")
                except aiohttp.ClientError as exc:
                    return f"failed: {type(exc).__name__}"

            async def watch() -> str:
                # Read like a browser does, so the close handshake is answered at once.
                events = 0
                while True:
                    message = await ws.receive(timeout=30)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        return f"{events} sync event(s), then {message.type.name} {message.data}"
                    events += 1

            viewer_task = asyncio.create_task(watch())
            in_flight = asyncio.create_task(sync())
            await asyncio.sleep(delay)
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)  # the signal is handled before the rest of the body arrives
            signalled.set()
            code = await asyncio.to_thread(server.proc.wait, 120)
            exited = time.monotonic() - sent
            sync_result = await in_flight
            viewer = await viewer_task
            return {"seconds": exited, "exit": code, "sync": sync_result, "viewer": viewer}
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=4000, help="parts in the in-flight sync (about 1.6 KB each)")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds between sending the first half of the sync and SIGTERM")
    args = parser.parse_args()
    times = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            result = await one_run(Path(tmp), args.items, args.delay)
        times.append(float(result["seconds"]))  # type: ignore[arg-type]
        print(f"run {n + 1}: SIGTERM -> exit {result['seconds']:.3f}s, exit status {result['exit']}, "
              f"in-flight sync {result['sync']}, viewer {result['viewer']}", flush=True)
    print(f"SIGTERM to exit with an open viewer and an in-flight sync of {args.items} parts: "
          f"median {statistics.median(times):.3f}s, max {max(times):.3f}s over {args.runs} runs")


if __name__ == "__main__":
    asyncio.run(main())
