#!/usr/bin/env python3
"""Reads of a 2,000-message share (~10 MB of sync JSON, benchmarks/shapes.py).

Prints, for ``GET /api/share/<id>`` and ``GET /api/share/<id>/data``: latency and server CPU per
read right after a sync (one small real-client-like update, then the read) against warm (the same
read again, nothing changed); the response bytes as sent raw, with ``Accept-Encoding: gzip`` and
with ``br`` (the Content-Encoding the server chose, bytes on the wire, not decoded), and what gzip
would make of the raw body (computed here, for reference); and, if the server sends an ``ETag``,
what a conditional GET (``If-None-Match``) answers, with its bytes and server CPU. The share page
``/share/<id>`` is reported the same way for bytes.

    .venv/bin/python benchmarks/reads.py [--cloudsession PATH] [--messages 2000] [--reads 15] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import time
from typing import Any

import aiohttp
from common import Server, add_common_args, fmt, loadavg, run_section, session_id, summary_ms, table, workdir
from load import JSON, connector, create_share, post_sync
from shapes import SES, build_items


async def fill(http: aiohttp.ClientSession, url: str, share: str, secret: str, items: list[dict[str, Any]], chunk: int = 2000) -> None:
    for start in range(0, len(items), chunk):
        await post_sync(http, url, share, json.dumps({"secret": secret, "data": items[start : start + chunk]}).encode())


def small_update(items: list[dict[str, Any]], sid: str, secret: str, n: int) -> bytes:
    """The last assistant text part grows, and its message is touched: what the client sends while streaming."""
    part = next(i for i in reversed(items) if i["type"] == "part" and i["data"].get("type") == "text")
    message = next(i for i in reversed(items) if i["type"] == "message" and i["data"]["id"] == part["data"]["messageID"])
    data = [{"type": "message", "data": {**message["data"], "sessionID": sid}},
            {"type": "part", "data": {**part["data"], "sessionID": sid, "text": part["data"]["text"] + f" more {n}"}}]
    return json.dumps({"secret": secret, "data": data}).encode()


async def timed_get(http: aiohttp.ClientSession, server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[float, float, int, int, dict[str, str]]:
    cpu0, t0 = server.cpu(), time.perf_counter()
    async with http.get(server.url + path, headers=headers or {"Accept-Encoding": "identity"}) as resp:
        body = await resp.read()
        status, hdrs = resp.status, dict(resp.headers)
    return time.perf_counter() - t0, server.cpu() - cpu0, status, len(body), hdrs


async def measure(args: argparse.Namespace, build: dict[str, Any]) -> dict[str, Any]:
    reads = args.reads or (8 if args.quick else 15)
    out: dict[str, Any] = {"messages": args.messages, "reads": reads, "load_before": loadavg()}
    with workdir(args.tmp, "bench-reads-") as tmp, Server(build["executable"], tmp / "data", log_level=args.log_level) as server:
        async with aiohttp.ClientSession(connector=connector(), auto_decompress=False) as http:
            sid = session_id(1, "read")
            items = json.loads(json.dumps(build_items(args.messages)).replace(SES, sid))
            share, secret = await create_share(http, server.url, sid)
            await fill(http, server.url, share, secret, items)
            out["sync_json_bytes"] = len(json.dumps(items))
            n = 0
            for name, path in (("share", f"/api/share/{share}"), ("data", f"/api/share/{share}/data")):
                after, after_cpu, warm, warm_cpu = [], [], [], []
                await timed_get(http, server, path)
                for _ in range(reads):
                    n += 1
                    async with http.post(f"{server.url}/api/share/{share}/sync", data=small_update(items, sid, secret, n), headers=JSON) as resp:
                        await resp.read()
                    await asyncio.sleep(0.1)  # whatever the sync does after answering is not the read's
                    lat, cpu, *_ = await timed_get(http, server, path)
                    after.append(lat)
                    after_cpu.append(cpu)
                    lat, cpu, *_ = await timed_get(http, server, path)
                    warm.append(lat)
                    warm_cpu.append(cpu)
                entry: dict[str, Any] = {"after_sync": summary_ms(after), "after_sync_cpu_ms": 1000 * sum(after_cpu) / reads,
                                         "warm": summary_ms(warm), "warm_cpu_ms": 1000 * sum(warm_cpu) / reads}
                entry["ratio_p50"] = entry["after_sync"]["p50_ms"] / entry["warm"]["p50_ms"]
                entry["ratio_cpu"] = entry["after_sync_cpu_ms"] / entry["warm_cpu_ms"] if entry["warm_cpu_ms"] else None
                entry.update(await encodings(http, server, path))
                out[name] = entry
            page = await encodings(http, server, f"/share/{share}")
            out["page"] = {k: v for k, v in page.items() if k.startswith("bytes") or k.startswith("encoding")}
    out["load_after"] = loadavg()
    return out


async def encodings(http: aiohttp.ClientSession, server: Server, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw_body = b""
    for enc in ("identity", "gzip", "br"):
        async with http.get(server.url + path, headers={"Accept-Encoding": enc}) as resp:
            body = await resp.read()
            out[f"bytes_{enc}"] = len(body)
            out[f"encoding_{enc}"] = resp.headers.get("Content-Encoding", "none")
            if enc == "identity":
                raw_body = body
                etag = resp.headers.get("ETag")
    out["bytes_gzip_would_be"] = len(gzip.compress(raw_body, 6))
    out["etag"] = etag
    if etag:
        lat, cpu, status, size, _ = await timed_get(http, server, path, {"If-None-Match": etag, "Accept-Encoding": "identity"})
        out["conditional"] = {"status": status, "bytes": size, "ms": lat * 1000, "cpu_ms": cpu * 1000}
    return out


def report(out: dict[str, Any]) -> None:
    rows = []
    for name in ("share", "data"):
        e = out[name]
        label = "GET /api/share/<id>" if name == "share" else "GET /api/share/<id>/data"
        rows.append([f"{label} right after a sync", fmt(e["after_sync"]["p50_ms"], " ms"), fmt(e["after_sync"]["p99_ms"], " ms"), fmt(e["after_sync_cpu_ms"], " ms")])
        rows.append([f"{label} warm", fmt(e["warm"]["p50_ms"], " ms"), fmt(e["warm"]["p99_ms"], " ms"), fmt(e["warm_cpu_ms"], " ms")])
    table(rows, ["", "p50", "p99", "server CPU/read"])
    for name in ("share", "data"):
        e = out[name]
        print(f"  {name}: after-sync/warm p50 x{e['ratio_p50']:.2f}, CPU x{fmt(e['ratio_cpu'])} (target <= 1.5)")
    rows = []
    for name, label in (("share", "/api/share/<id>"), ("data", "/api/share/<id>/data"), ("page", "/share/<id> (page 1)")):
        e = out[name]
        cond = e.get("conditional")
        rows.append([label, f"{e['bytes_identity']:,}", f"{e['bytes_gzip']:,} ({e['encoding_gzip']})", f"{e['bytes_br']:,} ({e['encoding_br']})",
                     f"{e['bytes_gzip_would_be']:,}", "no ETag" if name != "page" and not e.get("etag") else
                     (f"{cond['status']}, {cond['bytes']} B, {cond['cpu_ms']:.2f} ms CPU" if cond else "-")])
    table(rows, ["response bytes", "raw", "Accept-Encoding: gzip", "br", "gzip -6 of raw (reference)", "If-None-Match"])
    print(f"  share: {out['messages']} messages, {out['sync_json_bytes'] / 2**20:.1f} MiB of sync JSON; load average {out['load_before']} -> {out['load_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=None, help="reads of each kind (default 15; 8 with --quick)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run_section(args, "reads", "reads", measure, report)


if __name__ == "__main__":
    main()
