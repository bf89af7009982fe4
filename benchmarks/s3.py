#!/usr/bin/env python3
"""Store requests, bytes and latency per sync on S3.

Starts ``moto_server`` (from this venv) and a counting proxy in front of it
(benchmarks/s3_proxy.py), points ``cloudsession serve`` at the proxy (``AWS_ENDPOINT_URL``), then
makes ``--syncs`` consecutive real-client syncs into one share. Prints, per sync: store requests
(by method) and bytes sent/received, the requests that completed while the sync's HTTP request
was open (the critical path) against all of them (background work included, counted after the
server went quiet), p50/p99 latency and server CPU; and, as the bound measured in the same run,
one 3 KB PUT through the same proxy.

    .venv/bin/python benchmarks/s3.py [--cloudsession PATH] [--syncs 300] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    BatchMaker,
    Server,
    add_common_args,
    fmt,
    free_port,
    loadavg,
    run_section,
    session_id,
    summary_ms,
    table,
    workdir,
)
from load import connector, create_share, post_sync

BUCKET = "bench"


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class S3Endpoint:
    """moto_server plus the counting proxy, both processes of their own."""

    def __enter__(self) -> S3Endpoint:
        moto = Path(sys.executable).with_name("moto_server")
        exe = str(moto) if moto.exists() else shutil.which("moto_server")
        if not exe:
            sys.exit("moto_server not found: install the test extras (pip install -e '.[test]')")
        self.moto_port, self.proxy_port = free_port(), free_port()
        self.moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("s3_proxy.py")), "--port", str(self.proxy_port),
                                       "--upstream", f"http://127.0.0.1:{self.moto_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_up(f"http://127.0.0.1:{self.moto_port}/", self.moto)
        wait_up(self.url + "/__counts", self.proxy)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.moto_port}/{BUCKET}", method="PUT"), timeout=10).close()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def env(self, prefix: str) -> dict[str, str]:
        return {"CLOUDSESSION_STORE": f"s3://{BUCKET}/{prefix}", "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def __exit__(self, *exc: object) -> None:
        for proc in (self.proxy, self.moto):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def counts(http: aiohttp.ClientSession, s3: S3Endpoint, reset: bool = False) -> dict[str, int]:
    async with http.get(s3.url + "/__counts" + ("?reset=1" if reset else "")) as resp:
        return dict(await resp.json())


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


async def quiet(http: aiohttp.ClientSession, s3: S3Endpoint, settle: float = 0.3, limit: float = 10.0) -> dict[str, int]:
    """Counters once no request arrived for ``settle`` seconds (background work finished)."""
    last = await counts(http, s3)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(settle)
        now = await counts(http, s3)
        if now.get("requests") == last.get("requests"):
            return now
        last = now
    return last


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    syncs = args.syncs or (150 if args.quick else 400)
    out: dict[str, Any] = {"syncs": syncs, "load_before": loadavg()}
    with workdir(args.tmp, "bench-s3-") as tmp, S3Endpoint() as s3:
        async with aiohttp.ClientSession(connector=connector()) as http:
            # The bound: one 3 KB PUT through the same proxy to the same moto.
            put_lat = []
            for k in range(50):
                t0 = time.perf_counter()
                async with http.put(f"{s3.url}/{BUCKET}/probe/{k}", data=b"x" * 3000) as resp:
                    await resp.read()
                put_lat.append(time.perf_counter() - t0)
            out["one_put"] = summary_ms(put_lat)
            with Server(build["executable"], tmp / "data", env=s3.env("p"), log_level=args.log_level) as server:
                sid = session_id(1, "s3")
                share, secret = await create_share(http, server.url, sid)
                maker = BatchMaker(sid, secret, args.turn_every)
                await quiet(http, s3)
                lat, inline = [], []
                start = await counts(http, s3)
                cpu0 = server.cpu()
                for n in range(syncs):
                    before = await counts(http, s3)
                    t0 = time.perf_counter()
                    await post_sync(http, server.url, share, maker.body(n))
                    lat.append(time.perf_counter() - t0)
                    inline.append(delta(await counts(http, s3), before))
                end = await quiet(http, s3)
                cpu = server.cpu() - cpu0
                total = delta(end, start)
                out["latency"] = summary_ms(lat)
                out["cpu_ms"] = cpu * 1000 / syncs
                out["per_sync"] = {k: v / syncs for k, v in sorted(total.items())}
                out["inline_requests_p50"] = statistics.median(d.get("requests", 0) for d in inline)
                out["inline_requests_max"] = max(d.get("requests", 0) for d in inline)
                # A read of the share, for the record: what GET /api/share/<id> costs in store requests.
                before = await counts(http, s3)
                async with http.get(f"{server.url}/api/share/{share}") as resp:
                    await resp.read()
                out["read_requests"] = delta(await counts(http, s3), before).get("requests", 0)
    out["load_after"] = loadavg()
    return out


def report(out: dict[str, Any]) -> None:
    p = out["per_sync"]
    methods = ", ".join(f"{k[9:]} {v:.2f}" for k, v in p.items() if k.startswith("requests_") and v)
    rows = [
        [f"cloudsession sync on S3 ({out['syncs']} syncs)", fmt(out["latency"]["p50_ms"], " ms"), fmt(out["latency"]["p99_ms"], " ms"),
         fmt(out["cpu_ms"], " ms", 3), fmt(p.get("requests", 0.0), "", 2), f"{out['inline_requests_p50']:.0f} (max {out['inline_requests_max']})",
         f"{p.get('bytes_sent', 0) / 1024:.1f} KiB", f"{p.get('bytes_received', 0) / 1024:.1f} KiB"],
        ["one 3 KB PUT, same proxy (bound)", fmt(out["one_put"]["p50_ms"], " ms"), fmt(out["one_put"]["p99_ms"], " ms"), "", "1", "1", "3.0 KiB", ""],
    ]
    table(rows, ["", "p50", "p99", "server CPU/sync", "store req/sync", "on critical path", "sent/sync", "received/sync"])
    print(f"  requests per sync by method: {methods}; a cold GET /api/share/<id> afterwards: {out['read_requests']} requests")
    print(f"  load average before {out['load_before']}, after {out['load_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--syncs", type=int, default=None, help="consecutive syncs (default 400; 150 with --quick)")
    parser.add_argument("--turn-every", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run_section(args, "s3", "S3: store requests and bytes per sync", measure, report)


if __name__ == "__main__":
    main()
