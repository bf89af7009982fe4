#!/usr/bin/env python3
"""Every benchmark of issue 12 in one bounded run, with a summary table at the end.

Runs, in this order: throughput (with the trivial handler and the disk rate), sync cost over a
share's life, S3 requests per sync, reads, memory and listing; each prints its own table as it
finishes, with the load average. With several ``--cloudsession`` builds (say main's and the
merged one) each section runs for each build in turn, alternating, ``--rounds`` times, and the
summary shows the median of the rounds side by side, so a busy machine hits both builds alike.

    .venv/bin/python benchmarks/run.py --quick                                  # ~2-3 minutes
    .venv/bin/python benchmarks/run.py --cache-dir ~/.cache/cloudsession-bench   # ~10 minutes (+ the first 100,000-share generation)
    .venv/bin/python benchmarks/run.py --quick --cloudsession /tmp/venv-before --cloudsession .venv --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import listing
import memory
import reads
import s3
import sync_life
import throughput
from common import banner, build_info, loadavg, machine_info, resolve_executable, table, write_json

SECTIONS: dict[str, Any] = {"throughput": throughput, "sync_life": sync_life, "s3": s3, "reads": reads, "memory": memory, "listing": listing}


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(d, dict) and key in d or isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


def at(*path: Any, scale: float = 1.0) -> Callable[[dict[str, Any]], Any]:
    """A getter of ``path`` in a section's figures, times ``scale`` (None when absent)."""

    def get(o: dict[str, Any]) -> Any:
        value = _get(o, *path)
        return value * scale if isinstance(value, int | float) and not isinstance(value, bool) and scale != 1.0 else value

    return get


def last(key: str) -> Callable[[dict[str, Any]], Any]:
    def get(o: dict[str, Any]) -> Any:
        windows = o.get("windows") or []
        return windows[-1][key] if windows else None

    return get


# Summary rows: (section, label, unit, extractor, target)
Metric = tuple[str, str, str, Callable[[dict[str, Any]], Any], str]


def metrics(out: dict[str, Any]) -> list[Metric]:
    rows: list[Metric] = [
        ("throughput", "disk: temp+fsync+rename per s", "/s", at("bounds", "disk_writes_per_s"), ""),
        ("throughput", "trivial handler+fsync, 1 client", "syncs/s", at("bounds", "fsync_c1", "syncs_per_s"), ""),
        ("throughput", "trivial handler+fsync, 32 clients", "syncs/s", at("bounds", "fsync_c32", "syncs_per_s"), ""),
        ("throughput", "trivial handler+fsync, 32 clients: CPU/request", "ms", at("bounds", "fsync_c32", "cpu_ms"), ""),
    ]
    for case in ("1 client", "32 clients, own shares", "32 clients, one share"):
        rows += [
            ("throughput", f"{case}", "syncs/s", at("runs", case, "syncs_per_s"), ""),
            ("throughput", f"{case}: server CPU/sync", "ms", at("runs", case, "cpu_ms"), "<= 1 ms" if case == "1 client" else ""),
            ("throughput", f"{case}: of trivial+fsync", "%", at("runs", case, "vs_trivial_fsync", scale=100), ">= 40%" if "32" in case else ""),
            ("throughput", f"{case}: trivial CPU/req ÷ CPU/sync", "%", at("runs", case, "cpu_vs_trivial_fsync", scale=100), ""),
        ]
    for workers in (2, 4):
        key = f"32 clients, own shares, {workers} workers"
        rows.append(("throughput", f"--workers {workers}, 32 clients", "syncs/s", at("runs", key, "syncs_per_s"), ""))
    rows += [
        ("sync_life", "first 1,000 syncs: p50", "ms", at("windows", 0, "p50_ms"), ""),
        ("sync_life", "last 1,000 syncs: p50", "ms", last("p50_ms"), ""),
        ("sync_life", "first 1,000 syncs: p99", "ms", at("windows", 0, "p99_ms"), ""),
        ("sync_life", "last 1,000 syncs: p99", "ms", last("p99_ms"), ""),
        ("sync_life", "first 1,000 syncs: server CPU/sync", "ms", at("windows", 0, "cpu_ms"), ""),
        ("sync_life", "last 1,000 syncs: server CPU/sync", "ms", last("cpu_ms"), ""),
        ("sync_life", "last/first p50", "x", at("ratio", "p50"), "<= 1.2"),
        ("sync_life", "last/first CPU/sync", "x", at("ratio", "cpu"), "<= 1.2"),
        ("sync_life", "store files after all syncs", "", at("store_files"), "bounded"),
        ("s3", "store requests per sync", "", at("per_sync", "requests"), "1"),
        ("s3", "store requests on a sync's critical path (p50)", "", at("inline_requests_p50"), "1"),
        ("s3", "bytes sent to the store per sync", "KiB", at("per_sync", "bytes_sent", scale=1 / 1024), ""),
        ("s3", "sync p50", "ms", at("latency", "p50_ms"), ""),
        ("s3", "one 3 KB PUT p50 (bound)", "ms", at("one_put", "p50_ms"), ""),
        ("reads", "GET /api/share/<id> after a sync: p50", "ms", at("share", "after_sync", "p50_ms"), ""),
        ("reads", "GET /api/share/<id> warm: p50", "ms", at("share", "warm", "p50_ms"), ""),
        ("reads", "after-sync/warm p50", "x", at("share", "ratio_p50"), "<= 1.5"),
        ("reads", "GET /api/share/<id> after a sync: CPU", "ms", at("share", "after_sync_cpu_ms"), ""),
        ("reads", "GET /api/share/<id> warm: CPU", "ms", at("share", "warm_cpu_ms"), ""),
        ("reads", "/api/share/<id> bytes raw", "KiB", at("share", "bytes_identity", scale=1 / 1024), ""),
        ("reads", "/api/share/<id> bytes gzip", "KiB", at("share", "bytes_gzip", scale=1 / 1024), ""),
        ("reads", "/api/share/<id> bytes br", "KiB", at("share", "bytes_br", scale=1 / 1024), ""),
        ("reads", "/api/share/<id> If-None-Match answer", "", lambda o: _get(o, "share", "conditional", "status") or "no ETag", "304"),
        ("reads", "/share/<id> page 1 bytes raw", "KiB", at("page", "bytes_identity", scale=1 / 1024), ""),
        ("memory", "RSS idle", "MiB", at("idle", scale=1 / 2**20), ""),
        ("memory", "RSS after writing 50 MB share", "MiB", at("after_write", scale=1 / 2**20), ""),
        ("memory", "RSS after reading it", "MiB", at("after_read", scale=1 / 2**20), ""),
        ("memory", "growth after writing / share size", "x", at("ratio_after_write"), ""),
        ("memory", "growth after reading / share size", "x", at("ratio_after_read"), "<= 2.5"),
    ]
    for size in _get(out, "listing", "sizes") or {}:
        n = f"{int(size):,}"
        rows += [
            ("listing", f"{n} shares: /api/sessions cold", "ms", at("sizes", size, "api_cold", "ms"), ""),
            ("listing", f"{n} shares: /api/sessions cold, server CPU", "ms", at("sizes", size, "api_cold", "cpu_ms"), ""),
            ("listing", f"{n} shares: /api/sessions cold, read calls", "", at("sizes", size, "api_cold", "read_calls"), ""),
            ("listing", f"{n} shares: /api/sessions warm", "ms", at("sizes", size, "api_warm", "ms"), ""),
            ("listing", f"{n} shares: /sessions page cold", "ms", at("sizes", size, "page_cold", "ms"), ""),
        ]
    for size in _get(out, "listing", "s3") or {}:
        rows.append(("listing", f"S3, {int(size):,} shares: store requests, cold page", "", at("s3", size, "cold", "requests"), "by page"))
    return rows


def _show(values: list[Any]) -> str:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values or all(v is None for v in values):
        return "-"
    if len(nums) != len(values):
        return "/".join(dict.fromkeys(str(v) for v in values))  # each distinct answer once
    def num(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"

    text = num(statistics.median(nums))
    if len(nums) > 1 and min(nums) != max(nums):
        text += f" ({num(min(nums))}-{num(max(nums))})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cloudsession", action="append", default=None, help="a build to measure (repeat to alternate builds; default: this checkout's .venv)")
    parser.add_argument("--names", default=None, help="comma-separated names of the builds for the summary (e.g. before,after)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter windows (~2-3 minutes a build)")
    parser.add_argument("--rounds", type=int, default=1, help="run everything this many times, alternating builds")
    parser.add_argument("--only", default=None, help=f"comma-separated sections (of {', '.join(SECTIONS)})")
    parser.add_argument("--cache-dir", default=None, help="listing: keep generated data dirs (per build and size) and reuse them")
    parser.add_argument("--tmp", default=None, help="where data dirs go (default: the system temp dir)")
    parser.add_argument("--json", default=None, help="write every figure as JSON to this file")
    parser.add_argument("--log-level", default="INFO", help="the server's CLOUDSESSION_LOG_LEVEL (default INFO, as operators run it)")
    parser.add_argument("--summary", nargs="+", default=None, metavar="JSON", help="only print the summary of earlier --json files, side by side")
    parser.add_argument("--markdown", action="store_true", help="with --summary: the table as Markdown (for docs/performance.md)")
    args = parser.parse_args()
    if args.summary:
        summary_from_files(args.summary, args.markdown)
        return
    builds = [build_info(resolve_executable(spec)) for spec in (args.cloudsession or [None])]
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    for name in sections:
        if name not in SECTIONS:
            parser.error(f"unknown section {name}")
    opts = argparse.Namespace(quick=args.quick, tmp=args.tmp, log_level=args.log_level, json=None, seconds=None, syncs=None, turn_every=10, progress=False,
                              messages=2000, reads=None, megabytes=50.0, sizes=None, s3_sizes=None, cache_dir=args.cache_dir, concurrency=16,
                              gen_servers=2, generate_only=False)
    results: list[dict[str, Any]] = [{"build": b, "rounds": []} for b in builds]
    started = time.monotonic()
    for r in range(args.rounds):
        for entry in results:
            entry["rounds"].append({})
        for name in sections:
            order = builds if r % 2 == 0 else list(reversed(builds))  # alternate which build goes first
            for build in order:
                entry = results[builds.index(build)]
                banner(f"{name} (round {r + 1}/{args.rounds})", build)
                t0 = time.monotonic()
                try:
                    out = asyncio.run(SECTIONS[name].measure(opts, build))
                    SECTIONS[name].report(out)
                except Exception as exc:  # one broken section must not lose the others' figures
                    traceback.print_exc()
                    out = {"error": repr(exc)}
                print(f"  ({time.monotonic() - t0:.0f} s)\n", flush=True)
                entry["rounds"][-1][name] = out
    elapsed = time.monotonic() - started

    print(f"== summary: {args.rounds} round(s), {'quick' if args.quick else 'full'} sizes, {elapsed / 60:.1f} minutes, load average now {loadavg()}")
    names = args.names.split(",") if args.names else []
    names += [f"build {k + 1}" for k in range(len(names), len(builds))]
    for entry, name in zip(results, names, strict=False):
        entry["name"] = name
    summarize(results, sections)
    write_json(args.json, {"machine": machine_info(), "quick": args.quick, "rounds": args.rounds, "elapsed_s": elapsed, "results": results})


def summarize(results: list[dict[str, Any]], sections: list[str], markdown: bool = False) -> None:
    """The summary table: one column per build, the median of its rounds."""
    m = machine_info()
    print(f"   machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, kernel {m['kernel']}, Python {m['python']}")
    for entry in results:
        b = entry["build"]
        print(f"   {entry['name']}: {b['executable']} {b['version']} {b['commit']}")
    header = ["", "unit"] + [entry["name"] for entry in results] + ["target"]
    probe: dict[str, Any] = next((rnd for entry in results for rnd in entry["rounds"]), {})
    rows = []
    for section, label, unit, get, target in metrics(probe):
        if section not in sections:
            continue
        cells = []
        for entry in results:
            values = []
            for rnd in entry["rounds"]:
                try:
                    values.append(get(rnd.get(section) or {}))
                except (KeyError, IndexError, TypeError, ZeroDivisionError):
                    values.append(None)
            cells.append(_show(values))
        rows.append([f"{section}: {label}", unit] + cells + [target])
    if markdown:  # for docs/performance.md
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
    else:
        table(rows, header)
    print("   (median of the rounds; the range in brackets when there were several)")


def summary_from_files(paths: list[str], markdown: bool = False) -> None:
    """``--summary a.json b.json``: the builds of earlier runs side by side (e.g. before and after run separately)."""
    results: list[dict[str, Any]] = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for k, entry in enumerate(doc["results"]):
            entry.setdefault("name", f"{Path(path).stem}:{k + 1}")
            results.append(entry)
    print(f"== summary of {', '.join(paths)}")
    summarize(results, list(SECTIONS), markdown)

if __name__ == "__main__":
    main()
