#!/usr/bin/env python3
"""Server memory around one large share.

Starts ``cloudsession serve``, then prints its RSS (VmRSS from /proc/PID/status, summed over
worker processes) idle, after writing a ``--megabytes`` (50) MB share over HTTP (the long-session
shape of benchmarks/shapes.py, synced in ~2 MB batches), and after reading it (GET
/api/share/<id>, /data and the share page, twice), with the peak (VmHWM) and the growth above
idle as a multiple of the share's size (target: <= 2.5x after reading).

    .venv/bin/python benchmarks/memory.py [--cloudsession PATH] [--megabytes 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import Server, add_common_args, fmt, loadavg, process_tree, run_section, session_id, table, workdir
from load import connector, create_share
from reads import fill
from shapes import SES, build_items

MESSAGE_BYTES = 4890  # sync JSON per message of benchmarks/shapes.py, measured


def peak(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": loadavg()}
    with workdir(args.tmp, "bench-memory-") as tmp, Server(build["executable"], tmp / "data", log_level=args.log_level) as server:
        async with aiohttp.ClientSession(connector=connector()) as http:
            sid = session_id(1, "mem")
            # One round of a small share first: the code paths are loaded, so "idle" is a real idle.
            warm_sid = session_id(2, "mem")
            warm_share, warm_secret = await create_share(http, server.url, warm_sid)
            await fill(http, server.url, warm_share, warm_secret, json.loads(json.dumps(build_items(20)).replace(SES, warm_sid)))
            for path in (f"/api/share/{warm_share}", f"/api/share/{warm_share}/data", f"/share/{warm_share}"):
                async with http.get(server.url + path) as resp:
                    await resp.read()
            await asyncio.sleep(1.0)
            out["idle"] = server.rss()
            items = json.loads(json.dumps(build_items(int(args.megabytes * 2**20 / MESSAGE_BYTES))).replace(SES, sid))
            out["share_bytes"] = len(json.dumps(items, separators=(",", ":")))
            share, secret = await create_share(http, server.url, sid)
            t0 = time.perf_counter()
            await fill(http, server.url, share, secret, items, chunk=4000)
            out["write_seconds"] = time.perf_counter() - t0
            del items
            await asyncio.sleep(1.0)
            out["after_write"] = server.rss()
            t0 = time.perf_counter()
            for _ in range(2):
                for path in (f"/api/share/{share}", f"/api/share/{share}/data", f"/share/{share}"):
                    async with http.get(server.url + path) as resp:
                        await resp.read()
            out["read_seconds"] = time.perf_counter() - t0
            await asyncio.sleep(1.0)
            out["after_read"] = server.rss()
            out["peak"] = peak(server.pid)
    size = out["share_bytes"]
    out["ratio_after_write"] = (out["after_write"] - out["idle"]) / size
    out["ratio_after_read"] = (out["after_read"] - out["idle"]) / size
    out["load_after"] = loadavg()
    return out


def report(out: dict[str, Any]) -> None:
    size, idle = out["share_bytes"], out["idle"]
    rows = [["idle", f"{idle / 2**20:.1f} MiB", "", ""],
            [f"after writing the share ({out['write_seconds']:.1f} s)", f"{out['after_write'] / 2**20:.1f} MiB", f"+{(out['after_write'] - idle) / 2**20:.1f} MiB",
             fmt(out["ratio_after_write"], "x")],
            [f"after reading it twice ({out['read_seconds']:.1f} s)", f"{out['after_read'] / 2**20:.1f} MiB", f"+{(out['after_read'] - idle) / 2**20:.1f} MiB",
             fmt(out["ratio_after_read"], "x")],
            ["peak (VmHWM)", f"{out['peak'] / 2**20:.1f} MiB", f"+{(out['peak'] - idle) / 2**20:.1f} MiB", fmt((out["peak"] - idle) / size, "x")]]
    table(rows, ["server RSS", "VmRSS", "above idle", "x share size"])
    print(f"  share: {size / 2**20:.1f} MiB of sync JSON; target after reading <= 2.5x; load average {out['load_before']} -> {out['load_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--megabytes", type=float, default=50.0, help="size of the share in MiB of sync JSON (default 50)")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; the size stays 50 MB (the target is defined for it)")
    args = parser.parse_args()
    run_section(args, "memory", "memory", measure, report)


if __name__ == "__main__":
    main()
