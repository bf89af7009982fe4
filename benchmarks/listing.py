#!/usr/bin/env python3
"""The admin listing at scale: ``GET /api/sessions`` (and the ``/sessions`` page) at 2,000 and
100,000 shares, cold (a freshly started server: no cache) and warm (the same request again).

Prints latency, server CPU, the filesystem work the server did for the page (/proc/PID/io: read
syscalls and bytes read) and the response size; and, on S3 (moto behind the counting proxy of
benchmarks/s3.py) at a smaller size, the exact store requests per page. The shares are created over
HTTP with concurrency (create with a label, then one real-client sync that sets the title);
``--cache-dir DIR`` keeps each generated data dir (per build and size) for the next run, which
makes the 100,000-share case cheap after the first time.

    .venv/bin/python benchmarks/listing.py [--cloudsession PATH] [--sizes 2000,100000] [--cache-dir DIR] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    ADMIN_KEY,
    Server,
    add_common_args,
    banner,
    build_info,
    fmt,
    loadavg,
    real_batches,
    resolve_executable,
    session_id,
    table,
    workdir,
    write_json,
)
from load import connector, create_share, post_sync

PUBLIC = {"CLOUDSESSION_PUBLIC_LISTING": "true"}  # /sessions readable without the sign-in cookie


def build_key(executable: str) -> str:
    """A digest of the installed cloudsession package: a cached data dir is only reused by the build that made it."""
    python = Path(executable).with_name("python")
    code = "import cloudsession, os; print(os.path.dirname(cloudsession.__file__))"
    folder = Path(subprocess.run([str(python) if python.exists() else "python3", "-P", "-c", code], capture_output=True, text=True, timeout=60).stdout.strip())
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def session_body(sid: str, secret: str, n: int) -> bytes:
    """The real client's first sync (session, session_diff, model) with its own title."""
    items = json.loads(real_batches()[0].replace("ses_e0398094effebZevp8D0r58s46", sid))
    for item in items:
        if item["type"] == "session":
            item["data"]["title"] = f"Bench session {n}: refactor module {n % 997}"
    return json.dumps({"secret": secret, "data": items}).encode()


async def generate(urls: list[str], start: int, count: int, concurrency: int, progress: bool, data: Path | None = None) -> float:
    """Shares ``start`` .. ``start + count - 1``; returns seconds taken. With ``data``, notes
    every 1,000 shares how far it got there, so an interrupted generation resumes (a create that
    is repeated returns the existing share)."""
    t0 = time.perf_counter()
    next_n = [start]
    retries = [0]
    end = start + count

    async def worker(http: aiohttp.ClientSession, url: str) -> None:
        while next_n[0] < end:
            n = next_n[0]
            next_n[0] += 1
            sid = session_id(n, "ls")
            for attempt in range(5):  # a store that stalls answers 503 (Retry-After): generation waits and goes on
                try:
                    share, secret = await create_share(http, url, sid, labels={"team": f"t{n % 10}"})
                    await post_sync(http, url, share, session_body(sid, secret, n))
                    break
                except RuntimeError as exc:
                    if " 503 " not in str(exc) or attempt == 4:
                        raise
                    retries[0] += 1
                    await asyncio.sleep(2.0)
            if n % 1000 == 999 and data is not None:
                note_progress(data, n + 1 - concurrency)
            if progress and n % 10000 == 9999:
                print(f"    {n + 1} shares, {time.perf_counter() - t0:.0f} s", flush=True)

    async with aiohttp.ClientSession(connector=connector()) as http:
        await asyncio.gather(*(worker(http, urls[k % len(urls)]) for k in range(concurrency)))
    if retries[0]:
        print(f"    generation: {retries[0]} requests answered 503 (store stalled) and were retried", flush=True)
    return time.perf_counter() - t0


async def get(http: aiohttp.ClientSession, server: Server, path: str, admin: bool = True) -> dict[str, Any]:
    io0, cpu0, t0 = server.io(), server.cpu(), time.perf_counter()
    async with http.get(server.url + path, headers={"x-opencode-share-key": ADMIN_KEY, "Accept-Encoding": "identity"} if admin else {"Accept-Encoding": "identity"}) as resp:
        body = await resp.read()
        status = resp.status
    ms, cpu, io1 = (time.perf_counter() - t0) * 1000, (server.cpu() - cpu0) * 1000, server.io()
    entry: dict[str, Any] = {"status": status, "ms": ms, "cpu_ms": cpu, "bytes": len(body), "read_calls": io1.get("syscr", 0) - io0.get("syscr", 0),
                             "read_bytes": io1.get("rchar", 0) - io0.get("rchar", 0)}
    if path.startswith("/api/") and status == 200:
        doc = json.loads(body)
        entry["entries"] = len(doc.get("sessions", []))
        entry["total"] = doc.get("count")
        entry["next"] = next((doc[k] for k in ("cursor", "next", "nextCursor", "next_cursor") if isinstance(doc.get(k), str) and doc.get(k)), None)
    return entry


def cache_path(cache_dir: str | None, key: str, size: int) -> Path | None:
    return Path(cache_dir).expanduser() / key / f"listing-{size}" if cache_dir else None


def generated_so_far(folder: Path) -> int:
    try:
        return max(0, int((folder / "generated").read_text()))
    except (OSError, ValueError):
        return 0


def note_progress(folder: Path, n: int) -> None:
    (folder / "generated").write_text(str(max(0, n)))


def is_complete(folder: Path) -> bool:
    return (folder / "complete").exists()


async def measure_size(args: argparse.Namespace, build: dict[str, Any], tmp: Path, size: int, key: str) -> dict[str, Any]:
    cached = cache_path(args.cache_dir, key, size)
    data = cached if cached else tmp / f"listing-{size}"
    out: dict[str, Any] = {"shares": size}
    if cached and is_complete(cached):
        out["generated_seconds"] = None
    else:
        done = generated_so_far(data)
        if not done and data.exists():
            shutil.rmtree(data)
        # Several processes on the one data dir (replicas on one store) use both cores.
        servers = [Server(build["executable"], data, env=PUBLIC, log_level="WARNING").start() for _ in range(args.gen_servers)]
        try:
            out["generated_seconds"] = await generate([s.url for s in servers], done, size - done, args.concurrency, args.progress, data)
        finally:
            for server in servers:
                server.stop()
        (data / "complete").write_text("")
    if args.generate_only:
        return out
    # Cold: a freshly started server; then warm: the same requests again.
    with Server(build["executable"], data, env=PUBLIC, log_level=args.log_level) as server:
        await asyncio.sleep(1.0)  # startup work (a first sweep) is not the listing's
        async with aiohttp.ClientSession(connector=connector(), auto_decompress=False) as http:
            out["api_cold"] = await get(http, server, "/api/sessions")
            out["api_warm"] = await get(http, server, "/api/sessions")
            if out["api_cold"].get("next"):
                out["api_page2"] = await get(http, server, f"/api/sessions?cursor={out['api_cold']['next']}")
            out["api_label"] = await get(http, server, "/api/sessions?label=team=t3")
            out["page_warm"] = await get(http, server, "/sessions", admin=False)
            out["page_search"] = await get(http, server, "/sessions?q=module+7", admin=False)
        out["rss"] = server.rss()
    with Server(build["executable"], data, env=PUBLIC, log_level=args.log_level) as server:
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession(connector=connector(), auto_decompress=False) as http:
            out["page_cold"] = await get(http, server, "/sessions", admin=False)
    return out


async def measure_s3(args: argparse.Namespace, build: dict[str, Any], tmp: Path, sizes: list[int]) -> dict[str, Any]:
    from s3 import S3Endpoint, counts, delta, quiet

    out: dict[str, Any] = {}
    with S3Endpoint() as s3:
        async with aiohttp.ClientSession(connector=connector()) as http:
            made = 0
            for size in sizes:
                env = {**s3.env("ls"), **PUBLIC}
                with Server(build["executable"], tmp / "s3-gen", env=env, log_level="WARNING") as server:
                    t0 = time.perf_counter()
                    await generate([server.url], made, size - made, min(args.concurrency, 8), False)
                    made = size
                    gen = time.perf_counter() - t0
                with Server(build["executable"], tmp / "s3-read", env=env, log_level=args.log_level) as server:
                    await quiet(http, s3)
                    entry: dict[str, Any] = {"generated_seconds": gen}
                    for name in ("cold", "warm"):
                        before = await counts(http, s3)
                        t0 = time.perf_counter()
                        async with http.get(server.url + "/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY}) as resp:
                            await resp.read()
                        entry[name] = {"ms": (time.perf_counter() - t0) * 1000, **delta(await counts(http, s3), before)}
                    out[str(size)] = entry
    return out


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    sizes = [int(s) for s in (args.sizes or ("2000" if args.quick else "2000,100000")).split(",")]
    s3_spec = args.s3_sizes if args.s3_sizes is not None else ("100,300" if args.quick else "200,600")
    s3_sizes = [int(s) for s in s3_spec.split(",") if s]
    out: dict[str, Any] = {"load_before": loadavg(), "sizes": {}}
    key = build_key(build["executable"]) if args.cache_dir else ""
    with workdir(args.tmp, "bench-listing-") as tmp:
        for size in sizes:
            out["sizes"][str(size)] = await measure_size(args, build, tmp, size, key)
        if s3_sizes and not args.generate_only:
            out["s3"] = await measure_s3(args, build, tmp, s3_sizes)
    out["load_after"] = loadavg()
    return out


def report(out: dict[str, Any]) -> None:
    rows = []
    for size, e in out["sizes"].items():
        for name, label in (("api_cold", "/api/sessions cold"), ("api_warm", "/api/sessions warm"), ("api_page2", "/api/sessions page 2"),
                            ("api_label", "/api/sessions?label="),
                            ("page_cold", "/sessions page cold"), ("page_warm", "/sessions page warm"), ("page_search", "/sessions?q= (search)")):
            r = e.get(name)
            if not r:
                continue
            rows.append([f"{int(size):,} shares: {label}", r["status"], fmt(r["ms"], " ms", 1), fmt(r["cpu_ms"], " ms", 0), f"{r['read_calls']:,}",
                         f"{r['read_bytes'] / 2**20:.1f} MiB", f"{r.get('entries', '-')}", f"{r['bytes'] / 1024:.0f} KiB"])
    table(rows, ["", "status", "latency", "server CPU", "read calls", "read bytes", "entries", "response"])
    for size, e in out["sizes"].items():
        gen = e.get("generated_seconds")
        print(f"  {int(size):,} shares: " + (f"generated over HTTP in {gen:.0f} s" if gen else "data dir reused from --cache-dir") + f"; server RSS after listing {e['rss'] / 2**20:.0f} MiB")
    if out.get("s3"):
        rows = []
        for size, e in out["s3"].items():
            for name in ("cold", "warm"):
                r = e[name]
                rows.append([f"S3, {int(size):,} shares: /api/sessions {name}", fmt(r["ms"], " ms", 1), r.get("requests", 0), r.get("requests_LIST", 0),
                             r.get("requests_GET", 0), f"{r.get('bytes_received', 0) / 1024:.0f} KiB"])
        table(rows, ["", "latency", "store requests", "LIST", "GET", "received"])
    print(f"  load average before {out['load_before']}, after {out['load_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--sizes", default=None, help="share counts on the filesystem store (default 2000,100000; 2000 with --quick)")
    parser.add_argument("--s3-sizes", default=None, help="share counts on S3 for store requests per page (default 200,600; 100,300 with --quick; empty: skip)")
    parser.add_argument("--cache-dir", default=None, help="keep generated data dirs here (per build and size) and reuse them")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients creating shares")
    parser.add_argument("--gen-servers", type=int, default=2, help="server processes (on one data dir) that take the creates")
    parser.add_argument("--generate-only", action="store_true", help="only fill --cache-dir (e.g. under nice, ahead of a measured run)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    build = build_info(resolve_executable(args.cloudsession))
    banner("listing", build)
    out = asyncio.run(measure(args, build))
    if args.generate_only:
        print(json.dumps(out["sizes"]))
        return
    report(out)
    write_json(args.json, {"build": build, "listing": out})


if __name__ == "__main__":
    main()
