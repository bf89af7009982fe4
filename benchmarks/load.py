"""The HTTP client side (aiohttp, in the benchmark's own process) and the trivial bounds: the
trivial handler (benchmarks/trivial_server.py) and the disk's own write rate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import BatchMaker, cpu_seconds, free_port, pct, session_id

JSON = {"Content-Type": "application/json"}


def connector(limit: int = 0) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, force_close=False)


async def create_share(http: aiohttp.ClientSession, url: str, sid: str, **extra: Any) -> tuple[str, str]:
    async with http.post(f"{url}/api/share", json={"sessionID": sid, **extra}) as resp:
        body = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"create {sid}: {resp.status} {body}")
        return body["id"], body["secret"]


async def post_sync(http: aiohttp.ClientSession, url: str, share: str, body: bytes) -> int:
    async with http.post(f"{url}/api/share/{share}/sync", data=body, headers=JSON) as resp:
        await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"sync {share}: {resp.status} {(await resp.text())[:300]}")
        return resp.status


@dataclass
class LoadResult:
    completed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu * 1000 / self.completed if self.completed else float("nan")


async def run_load(url: str, targets: list[tuple[str, BatchMaker]], clients: int, seconds: float, cpu: Callable[[], float],
                   warmup: float = 1.0) -> LoadResult:
    """``clients`` concurrent clients, client i syncing into targets[i % len(targets)], each
    waiting for its answer before the next sync (as the real client does), for ``seconds`` after
    ``warmup``. Server CPU is read from /proc around the measured window only."""
    result = LoadResult()
    counters = [0] * len(targets)
    state = {"measuring": False, "stop": False}

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        share, maker = targets[i % len(targets)]
        slot = i % len(targets)
        while not state["stop"]:
            n = counters[slot]
            counters[slot] += 1
            body = maker.body(n)
            t0 = time.perf_counter()
            await post_sync(http, url, share, body)
            if state["measuring"] and not state["stop"]:
                result.latencies.append(time.perf_counter() - t0)
                result.completed += 1

    async with aiohttp.ClientSession(connector=connector()) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
        await asyncio.sleep(warmup)
        state["measuring"] = True
        cpu0, ccpu0, t0 = cpu(), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        state["stop"] = True
        result.seconds = time.perf_counter() - t0
        result.server_cpu, result.client_cpu = cpu() - cpu0, time.process_time() - ccpu0
        await asyncio.gather(*tasks, return_exceptions=False)
    return result


async def make_targets(url: str, count: int, salt: str, turn_every: int = 10) -> list[tuple[str, BatchMaker]]:
    """``count`` fresh shares, each with its own batch maker."""
    out = []
    async with aiohttp.ClientSession(connector=connector()) as http:
        for k in range(count):
            sid = session_id(k, salt)
            share, secret = await create_share(http, url, sid)
            out.append((share, BatchMaker(sid, secret, turn_every)))
    return out


# -- the trivial bounds -----------------------------------------------------------------------------


class TrivialServer:
    """benchmarks/trivial_server.py as a process of its own, measured like the real server."""

    def __init__(self, folder: Path, fsync: bool = True, threads: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        self.threads = threads
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def __enter__(self) -> TrivialServer:
        script = Path(__file__).with_name("trivial_server.py")
        cmd = [sys.executable, str(script), "--port", str(self.port), "--file", str(self.folder / f"trivial-{self.port}.log")]
        if not self.fsync:
            cmd.append("--no-fsync")
        if self.threads:
            cmd.append("--threads")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("trivial server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def disk_rate(folder: Path, seconds: float = 2.0, size: int = 2048) -> float:
    """Temp file + write + fsync + rename per second in ``folder``: the disk's own durable-write rate."""
    payload = os.urandom(size)
    done = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        tmp = folder / f".disk-probe-{done % 64}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / f"disk-probe-{done % 64}")
        done += 1
    return done / (time.perf_counter() - t0)


async def trivial_bounds(folder: Path, clients: list[int], seconds: float, *, disk: bool = True) -> dict[str, Any]:
    """The disk's write rate (unless ``disk`` is False: the caller measures it with
    ``disk_rate``) and the trivial handler (with and without fsync) at each concurrency:
    syncs/s, server CPU per request, p50 and p99. With several clients the fsync handler is also
    run with its writes in a thread pool (concurrent fsyncs overlap); ``fsync_c<N>`` is the
    better of the two, the bound."""
    out: dict[str, Any] = {"disk_writes_per_s": disk_rate(folder, min(seconds, 3.0))} if disk else {}
    for name, fsync, threads in (("fsync", True, False), ("fsync_threads", True, True), ("nofsync", False, False)):
        counts = [c for c in clients if c > 1] if threads else clients
        if not counts:
            continue
        with TrivialServer(folder, fsync, threads) as trivial:
            for c in counts:
                targets = [(f"T{k:07d}", BatchMaker(session_id(k, "t"), "secret", 10)) for k in range(c)]
                r = await run_load(trivial.url, targets, c, seconds, trivial.cpu, warmup=0.5)
                out[f"{name}_c{c}"] = {"syncs_per_s": r.rate, "cpu_ms": r.cpu_ms, "client_cpu_ms": r.client_cpu * 1000 / max(1, r.completed),
                                       "p50_ms": _p(r.latencies, 50), "p99_ms": _p(r.latencies, 99)}
    for c in clients:
        inline, threaded = out.get(f"fsync_c{c}"), out.get(f"fsync_threads_c{c}")
        if inline and threaded and threaded["syncs_per_s"] > inline["syncs_per_s"]:
            out[f"fsync_inline_c{c}"] = inline
            out[f"fsync_c{c}"] = {**threaded, "threads": True}
    return out


def _p(values: list[float], q: float) -> float:
    return pct([v * 1000 for v in values], q)
