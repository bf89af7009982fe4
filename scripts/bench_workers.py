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

    .venv/bin/python scripts/bench_workers.py [--workers 1,2] [--clients 32] [--seconds 6] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its children (the workers)."""
    pids = [pid]
    try:
        pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


class Server:
    def __init__(self, workers: int, data_dir: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SESSIONS_SHARED_SECRET": NAMESPACE, "PUBLIC_URL": self.url, "CLOUDSESSION_RATE_LIMITS": "false", "CLOUDSESSION_LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self.log = open(data_dir.parent / f"server-w{workers}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}") from None
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=40)
        self.log.close()


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
        cpu0, client0, t0 = cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        cpu1, client1 = cpu_seconds(server.proc.pid), time.process_time()
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
    args = parser.parse_args()
    counts = [int(value) for value in args.workers.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {loadavg()}; "
          f"{args.clients} clients, {args.seconds:g} s per round, {args.rounds} rounds per worker count")
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        servers = {n: Server(n, Path(tmp) / f"data-w{n}") for n in counts}
        try:
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
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
