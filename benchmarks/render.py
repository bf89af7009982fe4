#!/usr/bin/env python3
"""Render timings of a 2,000-message, ~10 MB share: prints medians, asserts nothing.

Measures, on a synthetic share shaped like a long real session (markdown text, reasoning, bash
outputs, edits with diffs, written files, step parts):

- rendering the first page cold (a fresh renderer: every message fragment rendered) and warm
  (fragments cached, as after the first viewer);
- the last page, and the whole share page by page (what a reader paging through costs);
- a live update: one message changes in a new share state, its fragment is fetched;
- GET /share/<id> end to end through a real app (aiohttp server, filesystem store, HTTP).

Usage: .venv/bin/python scripts/bench_render.py [--messages 2000] [--runs 7]
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

from cloudsession.config import Settings
from cloudsession.render.pages import PageRenderer
from cloudsession.shares.public import PublicShare
from cloudsession.web.app import create_app

# A fixed namespace and public URL: the figures must not depend on the machine's configuration.
BENCH_SETTINGS = {"shared_secret": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "public_url": "http://share.test"}

SES = "ses_bench00000000000000000000"
ROOT = "/home/dev/project"


def build_items(messages: int) -> list[dict[str, Any]]:
    """Sync items for ``messages`` messages, alternating user and assistant (~5 KB each)."""
    items: list[dict[str, Any]] = [
        {"type": "session", "data": {"id": SES, "slug": "bench", "projectID": "p", "directory": ROOT,
                                     "title": "A long session", "version": "1.18.33", "time": {"created": 1, "updated": 2}}}
    ]
    seq = 0

    def pid() -> str:
        nonlocal seq
        seq += 1
        return f"prt_{seq:012x}BenchPart0000"

    t = 1_795_000_000_000
    parent = ""
    for n in range(messages):
        mid = f"msg_{n:012x}BenchMsg000000"
        t += 30_000
        if n % 2 == 0:
            items.append({"type": "message", "data": {"id": mid, "sessionID": SES, "role": "user", "time": {"created": t},
                                                      "agent": "build", "model": {"providerID": "p", "modelID": "m"}}})
            items.append({"type": "part", "data": {"id": pid(), "sessionID": SES, "messageID": mid, "type": "text",
                                                   "text": f"Please change module {n} so that it handles edge case {n}. " * 6}})
            parent = mid
            continue
        items.append({"type": "message", "data": {
            "id": mid, "sessionID": SES, "role": "assistant", "time": {"created": t, "completed": t + 9000}, "parentID": parent,
            "modelID": "m", "providerID": "p", "mode": "build", "agent": "build", "path": {"cwd": ROOT, "root": ROOT},
            "cost": 0.01, "tokens": {"input": 1000, "output": 200, "reasoning": 50, "cache": {"read": 0, "write": 0}}}})
        code = "".join(f"def handler_{n}_{k}(value):\n    return value * {k}  # scale\n\n" for k in range(16))
        patch = "@@ -1,6 +1,6 @@\n" + "".join(f" line {k}\n-old {k}\n+new {k}\n" for k in range(6))
        output = "".join(f"tests/test_{n}.py::test_case_{k} PASSED\n" for k in range(110))
        parts = [
            {"type": "step-start", "snapshot": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
            {"type": "reasoning", "text": "I need to look at the module first, then adjust the handler. " * 4, "time": {"start": t, "end": t + 800}},
            {"type": "text", "text": f"## Step {n}\n\nI'll update **module {n}**:\n\n- read it\n- edit it\n\n```python\n{code[:300]}```\n"},
            {"type": "tool", "callID": f"c{n}a", "tool": "bash", "state": {"status": "completed", "input": {"command": f"pytest tests/test_{n}.py", "description": "Run tests"},
                                                                   "output": output, "title": "pytest", "metadata": {}, "time": {"start": t, "end": t + 2000}}},
            {"type": "tool", "callID": f"c{n}b", "tool": "edit", "state": {"status": "completed", "input": {"filePath": f"{ROOT}/mod_{n}.py", "oldString": "a", "newString": "b"},
                                                                   "output": "Edit applied successfully.", "title": f"mod_{n}.py", "metadata": {"diff": patch}, "time": {"start": t, "end": t + 30}}},
            {"type": "tool", "callID": f"c{n}c", "tool": "write", "state": {"status": "completed", "input": {"filePath": f"{ROOT}/gen_{n}.py", "content": code},
                                                                    "output": "Wrote file successfully.", "title": f"gen_{n}.py", "metadata": {}, "time": {"start": t, "end": t + 20}}},
            {"type": "step-finish", "reason": "stop", "cost": 0.01, "tokens": {"input": 1000, "output": 200, "reasoning": 50, "cache": {"read": 0, "write": 0}}},
            {"type": "patch", "hash": "5c36d82d3991e5c71c04aa8cf3c0e5a96055f20a", "files": [f"{ROOT}/mod_{n}.py"]},
        ]
        for p in parts:
            items.append({"type": "part", "data": {"id": pid(), "sessionID": SES, "messageID": mid, **p}})
    items.append({"type": "session_diff", "data": [{"file": "mod_1.py", "patch": "@@ -1 +1 @@\n-a\n+b\n", "additions": 1, "deletions": 1}]})
    items.append({"type": "model", "data": [{"id": "m", "providerID": "p", "name": "Model"}]})
    return items


def to_share(items: list[dict[str, Any]], sync_count: int = 1) -> PublicShare:
    by = {"message": {}, "part": {}}
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
                start = time.perf_counter()
                response = await client.get(f"/share/{creds['id']}")
                size = len(await response.read())
                times.append((time.perf_counter() - start) * 1000)
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
