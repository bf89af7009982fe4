#!/usr/bin/env python3
"""Scaling of ``cloudsession serve --workers N`` on one machine: syncs/s and server CPU per sync.

Starts one real server per worker count (filesystem store, rate limits off), each on its own data
dir, then runs rounds that alternate between them (1, 2, 1, 2, ...: a machine shared with other
work drifts, and alternating spreads the drift over both): in each round ``--clients`` concurrent
clients, each syncing into its own share and waiting for its answer before the next sync (as the
real client does), send a real-client batch (a message update and a ~2 KB text part) for
``--seconds``. Server CPU is utime+stime of the parent and its workers from /proc over the
measured window. The client runs in this process, on the same machine: it competes with the
workers for the cores, and its CPU per sync is printed too.

    .venv/bin/python benchmarks/workers.py [--workers 1,2] [--clients 32] [--seconds 6] [--rounds 4]
        [--cloudsession PATH] [--log-level WARNING]

The figures in docs/running.md were taken with the server logging at WARNING (``--log-level
WARNING``; the default is INFO, as operators run it, which adds an access-log line per sync).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp
from common import Server, add_common_args, cpu_seconds, loadavg, resolve_executable, workdir, write_json


def batch(session_id: str, secret: str, n: int) -> dict[str, Any]:
    message = f"msg_{n // 10:08d}"
    return {
        "secret": secret,
        "data": [
            {"type": "message", "data": {"id": message, "sessionID": session_id, "role": "assistant", "time": {"created": 1_700_000_000_000 + n}}},
            {"type": "part", "data": {"id": f"prt_{n:08d}", "messageID": message, "sessionID": session_id, "type": "text", "text": "lorem ipsum " * 170}},
        ],
    }


async def round_(server: Server, clients: int, seconds: float, salt: str) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        shares = []
        for k in range(clients):
            session_id = f"ses_benchworkers{salt}{k:06d}".ljust(30, "0")
            async with http.post(server.url + "/api/share", json={"sessionID": session_id}) as resp:
                share = await resp.json()
            shares.append((session_id, share["id"], share["secret"]))
        state = {"measuring": False, "stop": False}
        done = [0]
        errors = [0]

        async def client(session_id: str, share_id: str, secret: str) -> None:
            n = 0
            while not state["stop"]:
                async with http.post(f"{server.url}/api/share/{share_id}/sync", json=batch(session_id, secret, n)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors[0] += 1
                n += 1
                if state["measuring"] and not state["stop"]:
                    done[0] += 1

        tasks = [asyncio.create_task(client(*share)) for share in shares]
        await asyncio.sleep(1.0)  # warm up: connections open, shares cached
        state["measuring"] = True
        cpu0, client0, t0 = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        cpu1, client1 = cpu_seconds(server.pid), time.process_time()
        state["stop"] = True
        await asyncio.gather(*tasks)
    count = max(done[0], 1)
    return {"rate": done[0] / elapsed, "cpu_ms": (cpu1 - cpu0) * 1000 / count, "client_cpu_ms": (client1 - client0) * 1000 / count, "errors": errors[0]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per worker count, alternated")
    add_common_args(parser)
    args = parser.parse_args()
    executable = resolve_executable(args.cloudsession)
    counts = [int(value) for value in args.workers.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {loadavg()}; "
          f"{args.clients} clients, {args.seconds:g} s per round, {args.rounds} rounds per worker count")
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with workdir(args.tmp, "bench-workers-") as tmp:
        servers: dict[int, Server] = {}
        try:
            for n in counts:
                servers[n] = Server(executable, tmp / f"data-w{n}", args=["--workers", str(n)] if n > 1 else [], log_level=args.log_level).start()
            for r in range(args.rounds):
                for n in counts if r % 2 == 0 else reversed(counts):
                    result = await round_(servers[n], args.clients, args.seconds, f"{r:02d}")
                    results[n].append(result)
                    print(f"  round {r + 1}, {n} worker(s): {result['rate']:7.1f} syncs/s  server CPU {result['cpu_ms']:.2f} ms/sync  "
                          f"client CPU {result['client_cpu_ms']:.2f} ms/sync  errors {result['errors']:.0f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(f"load average after: {loadavg()}")
    base = statistics.median(r["rate"] for r in results[counts[0]])
    print("workers  syncs/s (median)  vs first  server CPU ms/sync (median)")
    for n in counts:
        rate = statistics.median(r["rate"] for r in results[n])
        cpu = statistics.median(r["cpu_ms"] for r in results[n])
        print(f"{n:7d}  {rate:16.1f}  {rate / base:7.2f}x  {cpu:27.2f}")
    write_json(args.json, {"clients": args.clients, "seconds": args.seconds, "rounds": {str(n): results[n] for n in counts}})
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
