#!/usr/bin/env python3
"""Sync throughput against the trivial bound, measured in the same run.

For 1 and 32 concurrent clients (each waiting for its answer, as the real client does), each on
its own share and all on one share, prints syncs/s, server CPU per sync (utime+stime from
/proc/PID/stat over the measured window), p50 and p99 latency, and the ratio to the trivial
handler (parse the same body, append it with an fsync per request; benchmarks/trivial_server.py)
at the same concurrency, plus the disk's own temp+fsync+rename rate. When the build has
``serve --workers N`` it also prints the scaling with N workers (32 clients, own shares).

    .venv/bin/python benchmarks/throughput.py [--cloudsession PATH] [--seconds 8] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
from typing import Any

from common import Server, add_common_args, fmt, loadavg, run_section, table, workdir
from load import disk_rate, make_targets, run_load, trivial_bounds


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    seconds = args.seconds or (4.0 if args.quick else 8.0)
    out: dict[str, Any] = {"seconds": seconds, "load_before": loadavg()}
    with workdir(args.tmp, "bench-throughput-") as tmp:
        # The disk's rate is measured after the servers, not before: its probe creates and
        # replaces files by the thousand, and on a file system without a journal (ext4 here) the
        # inodes it frees stay "recently deleted" for a minute or more, during which every file
        # the next process creates nearby pays a scan over them (the kernel's
        # find_inode_bit/recently_deleted: up to 1/3 of the server's CPU in a profile). The
        # trivial handlers create no files, so only cloudsession would pay for it.
        out["bounds"] = await trivial_bounds(tmp, [1, 32], seconds, disk=False)
        cases = [("1 client", 1, 1), ("32 clients, own shares", 32, 32), ("32 clients, one share", 32, 1)]
        runs: dict[str, Any] = {}
        workers = [1]
        if build["workers"]:
            workers += [n for n in (2, 4) if n not in workers]
        for n in workers:
            extra = ["--workers", str(n)] if n > 1 else []
            with Server(build["executable"], tmp / f"data-w{n}", args=extra, log_level=args.log_level) as server:
                for label, clients, shares in cases if n == 1 else cases[1:2]:
                    targets = await make_targets(server.url, shares, f"w{n}c{clients}s{shares}")
                    r = await run_load(server.url, targets, clients, seconds, server.cpu)
                    key = f"{label}, {n} workers" if n > 1 else label
                    bound = out["bounds"][f"fsync_c{clients}"]
                    runs[key] = {"clients": clients, "workers": n, "syncs_per_s": r.rate, "cpu_ms": r.cpu_ms, "p50_ms": _ms(r.latencies, 50),
                                 "p99_ms": _ms(r.latencies, 99), "client_cpu_ms": r.client_cpu * 1000 / max(1, r.completed),
                                 "vs_trivial_fsync": r.rate / bound["syncs_per_s"] if bound["syncs_per_s"] else None,
                                 # What the throughput ratio would be if CPU were the only limit (a disk that keeps up):
                                 "cpu_vs_trivial_fsync": bound["cpu_ms"] / r.cpu_ms if r.cpu_ms else None}
        out["runs"] = runs
        out["bounds"]["disk_writes_per_s"] = disk_rate(tmp, min(seconds, 3.0))
        for r in runs.values():
            r["vs_disk"] = r["syncs_per_s"] / out["bounds"]["disk_writes_per_s"]
    out["load_after"] = loadavg()
    return out


def _ms(values: list[float], q: float) -> float:
    from common import pct

    return pct([v * 1000 for v in values], q)


def report(out: dict[str, Any]) -> None:
    b = out["bounds"]
    print(f"  disk: {b['disk_writes_per_s']:.0f} temp+fsync+rename writes/s")
    rows = []
    labels = {"fsync_c1": "fsync", "fsync_c32": "fsync, the better of in the loop / in threads", "fsync_inline_c32": "fsync in the loop",
              "fsync_threads_c32": "fsync in threads", "nofsync_c1": "no fsync", "nofsync_c32": "no fsync"}
    for name, label in labels.items():
        r = b.get(name)
        if not r or (name == "fsync_threads_c32" and "fsync_inline_c32" in b):  # then it is the bound, shown above
            continue
        rows.append([f"trivial handler, {label}, {name.rsplit('c', 1)[1]} clients",
                     fmt(r["syncs_per_s"], "", 0), fmt(r["cpu_ms"], " ms", 3), fmt(r["p50_ms"], " ms"), fmt(r["p99_ms"], " ms"), "", "", ""])
    for name, r in out["runs"].items():
        rows.append([f"cloudsession, {name}", fmt(r["syncs_per_s"], "", 0), fmt(r["cpu_ms"], " ms", 3), fmt(r["p50_ms"], " ms"), fmt(r["p99_ms"], " ms"),
                     fmt(100 * r["vs_trivial_fsync"], "%", 0) if r["vs_trivial_fsync"] else "-", fmt(100 * r["vs_disk"], "%", 0),
                     fmt(100 * r["cpu_vs_trivial_fsync"], "%", 0) if r.get("cpu_vs_trivial_fsync") else "-"])
    table(rows, ["", "syncs/s", "server CPU/sync", "p50", "p99", "of trivial+fsync", "of disk rate", "trivial CPU/req ÷ CPU/sync"])
    print("  when the disk is shared and slow, the trivial+fsync handler is disk-bound: the last column (CPU ratio) is the comparison that holds on any disk")
    print(f"  load average before {out['load_before']}, after {out['load_after']}; client CPU per sync is printed in the JSON (the client shares the 2 cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per case (default 8; 4 with --quick)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run_section(args, "throughput", "throughput", measure, report)


if __name__ == "__main__":
    main()
