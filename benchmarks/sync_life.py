#!/usr/bin/env python3
"""Sync cost over a share's life: ``--syncs`` (20,000) consecutive syncs of the real client's
batches (0.6-4.2 KB, opencode 1.18.33) into one share, one client waiting for each answer.

Prints, per window of 1,000 syncs: p50 and p99 latency, server CPU per sync (utime+stime of the
server from /proc/PID/stat over the window) and bytes the server wrote per sync (/proc/PID/io
wchar); then the first window against the last (target: last within 1.2x of first), the store's
file count at the end (is the footprint bounded?), and the trivial handler's CPU and latency per
request measured in the same run. The share grows as a real session does: the ids change every
``--turn-every`` syncs (a new turn), the syncs in between update the same items.

    .venv/bin/python benchmarks/sync_life.py [--cloudsession PATH] [--syncs 20000] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    BatchMaker,
    Server,
    add_common_args,
    fmt,
    loadavg,
    run_section,
    session_id,
    summary_ms,
    table,
    workdir,
)
from load import connector, create_share, post_sync, trivial_bounds


def footprint(folder: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            files += 1
            try:
                size += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return files, size


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    syncs = args.syncs or (4000 if args.quick else 20000)
    window = min(1000, max(1, syncs // 4))
    out: dict[str, Any] = {"syncs": syncs, "window": window, "turn_every": args.turn_every, "load_before": loadavg()}
    with workdir(args.tmp, "bench-synclife-") as tmp:
        out["bounds"] = await trivial_bounds(tmp, [1], 2.0)
        with Server(build["executable"], tmp / "data", log_level=args.log_level) as server:
            windows: list[dict[str, Any]] = []
            async with aiohttp.ClientSession(connector=connector()) as http:
                sid = session_id(1, "life")
                share, secret = await create_share(http, server.url, sid)
                maker = BatchMaker(sid, secret, args.turn_every)
                bodies = 0
                lat: list[float] = []
                cpu0, io0, t_start = server.cpu(), server.io(), time.perf_counter()
                for n in range(syncs):
                    body = maker.body(n)
                    bodies += len(body)
                    t0 = time.perf_counter()
                    await post_sync(http, server.url, share, body)
                    lat.append(time.perf_counter() - t0)
                    if len(lat) == window:
                        cpu1, io1 = server.cpu(), server.io()
                        windows.append({"first_sync": n + 1 - window, **summary_ms(lat), "cpu_ms": (cpu1 - cpu0) * 1000 / window,
                                        "written_per_sync": (io1.get("wchar", 0) - io0.get("wchar", 0)) / window,
                                        "write_syscalls_per_sync": (io1.get("syscw", 0) - io0.get("syscw", 0)) / window,
                                        "body_bytes_per_sync": bodies / window, "load": loadavg()})
                        cpu0, io0, lat, bodies = cpu1, io1, [], 0
                        if args.progress:
                            w = windows[-1]
                            print(f"    syncs {n + 1:6d}: p50 {w['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f} ms  CPU {w['cpu_ms']:.2f} ms/sync  load {w['load']}", flush=True)
                out["seconds"] = time.perf_counter() - t_start
                async with http.get(f"{server.url}/api/share/{share}/metadata") as resp:
                    out["metadata"] = await resp.json() if resp.status == 200 else resp.status
            out["windows"] = windows
            out["store_files"], out["store_bytes"] = footprint(tmp / "data")
    first, last = windows[0], windows[-1]
    out["ratio"] = {"p50": last["p50_ms"] / first["p50_ms"], "p99": last["p99_ms"] / first["p99_ms"], "cpu": last["cpu_ms"] / first["cpu_ms"]}
    out["load_after"] = loadavg()
    return out


def report(out: dict[str, Any]) -> None:
    rows = []
    shown = out["windows"] if len(out["windows"]) <= 6 else [w for k, w in enumerate(out["windows"]) if k % max(1, len(out["windows"]) // 5) == 0 or k == len(out["windows"]) - 1]
    for w in shown:
        rows.append([f"syncs {w['first_sync'] + 1}-{w['first_sync'] + w['n']}", fmt(w["p50_ms"], " ms"), fmt(w["p99_ms"], " ms"), fmt(w["cpu_ms"], " ms", 3),
                     f"{w['written_per_sync'] / 1024:.1f} KiB", fmt(w["write_syscalls_per_sync"], "", 1), w["load"]])
    t = out["bounds"]["fsync_c1"]
    rows.append(["trivial handler + fsync (same run)", fmt(t["p50_ms"], " ms"), fmt(t["p99_ms"], " ms"), fmt(t["cpu_ms"], " ms", 3), "", "", ""])
    table(rows, ["", "p50", "p99", "server CPU/sync", "written/sync", "write calls/sync", "load avg"])
    r = out["ratio"]
    print(f"  last {out['window']} vs first {out['window']} of {out['syncs']}: p50 x{r['p50']:.2f}, p99 x{r['p99']:.2f}, CPU/sync x{r['cpu']:.2f} (target <= 1.2)")
    print(f"  store at the end: {out['store_files']} files, {out['store_bytes'] / 2**20:.1f} MiB; {out['seconds']:.0f} s for all syncs; "
          f"disk {out['bounds']['disk_writes_per_s']:.0f} temp+fsync+rename/s; load average {out['load_before']} -> {out['load_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--syncs", type=int, default=None, help="consecutive syncs (default 20,000; 4,000 with --quick)")
    parser.add_argument("--turn-every", type=int, default=10, help="a new turn (new message and part ids) every N syncs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--progress", action="store_true", help="print each window as it completes")
    args = parser.parse_args()
    run_section(args, "sync_life", "sync cost over a share's life", measure, report)


if __name__ == "__main__":
    main()
