#!/usr/bin/env python3
"""Render timings of a 2,000-message, ~10 MB share: prints medians, asserts nothing.

Measures, on a synthetic share shaped like a long real session (markdown text, reasoning, bash
outputs, edits with diffs, written files, step parts):

- rendering the first page cold (a fresh renderer: every message fragment rendered) and warm
  (fragments cached, as after the first viewer);
- the last page, and the whole share page by page (what a reader paging through costs);
- a live update: one message changes in a new share state, its fragment is fetched;
- GET /share/<id> end to end through a real app (aiohttp server, filesystem store, HTTP).

This one measures the renderer in-process (library internals), so it measures the build installed
in the venv that runs it, not a ``--cloudsession`` executable.

Usage: .venv/bin/python benchmarks/render.py [--messages 2000] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from shapes import SES, build_items

from cloudsession.config import Settings
from cloudsession.render.pages import PageRenderer
from cloudsession.shares.public import PublicShare
from cloudsession.web.app import create_app

# A fixed namespace and public URL: the figures must not depend on the machine's configuration.
BENCH_SETTINGS = {"shared_secret": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "public_url": "http://share.test"}

def to_share(items: list[dict[str, Any]], sync_count: int = 1) -> PublicShare:
    by: dict[str, dict[str, Any]] = {"message": {}, "part": {}}
    session: dict[str, Any] = {}
    diffs: list[Any] = []
    models: list[Any] = []
    for i in items:
        if i["type"] in by:
            by[i["type"]][i["data"]["id"]] = i["data"]
        elif i["type"] == "session":
            session = i["data"]
        elif i["type"] == "session_diff":
            diffs = i["data"]
        else:
            models = i["data"]
    return PublicShare("Bench001", session, list(by["message"].values()), list(by["part"].values()), diffs, models, 1, 2, sync_count)


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def http_median(items: list[dict[str, Any]], runs: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings.model_validate({**BENCH_SETTINGS, "data_dir": Path(tmp)}))
        async with TestClient(TestServer(app)) as client:
            creds = await (await client.post("/api/share", json={"sessionID": SES})).json()
            for start in range(0, len(items), 5000):
                response = await client.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items[start : start + 5000]})
                assert response.status == 200, await response.text()
            times = []
            size = 0
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                response = await client.get(f"/share/{creds['id']}")
                size = len(await response.read())
                times.append((time.perf_counter() - t0) * 1000)
            return times[0], statistics.median(times[1:]), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    items = build_items(args.messages)
    share = to_share(items)
    size = len(orjson.dumps(items))
    print(f"share: {len(share.messages)} messages, {len(share.parts)} parts, {size / 1e6:.1f} MB of sync JSON")

    # "Cold" means no message fragment is cached yet; the template environment is compiled once
    # per process in production, so it is shared here too.
    warm_renderer = PageRenderer()
    warm_renderer.share_page(share, 2)
    env = warm_renderer.env
    cold = median_ms(lambda: PageRenderer(env=env).share_page(share, 1), args.runs)
    html = warm_renderer.share_page(share, 1)
    warm = median_ms(lambda: warm_renderer.share_page(share, 1), args.runs)
    pages = warm_renderer.view(share).pages
    last = median_ms(lambda: PageRenderer(env=env).share_page(share, pages), args.runs)

    def every_page() -> None:
        renderer = PageRenderer(env=env)
        for page in range(1, pages + 1):
            renderer.share_page(share, page)

    all_pages = median_ms(every_page, max(3, args.runs // 2))

    # A live update: one assistant text part changes; a new share state arrives; one fragment.
    changed_part = next(i for i in items if i["type"] == "part" and i["data"]["type"] == "text" and i["data"]["messageID"].startswith("msg_000000000001"))
    edited = [dict(i) for i in items]
    target = edited.index(changed_part)
    edited[target] = {"type": "part", "data": {**changed_part["data"], "text": changed_part["data"]["text"] + " (edited)"}}
    counter = iter(range(2, 10_000))

    def fragment_update() -> None:
        state = to_share(edited, next(counter))
        warm_renderer.fragments(state, [changed_part["data"]["messageID"]], 1)

    update = median_ms(fragment_update, args.runs)
    first_http, http, http_size = asyncio.run(http_median(items, args.runs))

    print(f"page 1 of {pages} ({len(html) / 1e6:.2f} MB HTML): cold render median {cold:.0f} ms, warm (fragments cached) median {warm:.0f} ms")
    print(f"last page cold render median {last:.0f} ms; all {pages} pages cold, one after another, median {all_pages:.0f} ms")
    print(f"live update (new share state + one message fragment) median {update:.1f} ms (includes rebuilding the share view)")
    print(f"GET /share/<id> over HTTP (fs store, {http_size / 1e6:.2f} MB): first {first_http:.0f} ms, then median {http:.0f} ms")


if __name__ == "__main__":
    main()
