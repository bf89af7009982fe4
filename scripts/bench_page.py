#!/usr/bin/env python3
"""Weight and first paint of the share page: prints figures, asserts nothing.

Starts ``cloudsession serve`` on a free port with a temporary data directory, syncs a share of
``--messages`` messages (the shape of scripts/bench_render.py: markdown, reasoning, bash output,
edits, written files, step parts), then prints for page 1:

- HTML bytes raw and gzipped (as served with and without ``Accept-Encoding: gzip``);
- DOM elements and DOM nodes counted in Chromium;
- first contentful paint, cold (a fresh browser context: empty cache, first render on the
  server included) and warm (the same context loading the page again), medians over ``--runs``.

Usage: .venv/bin/python scripts/bench_page.py [--messages 400] [--runs 7] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import SES, build_items

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def call(url: str, body: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def fetch(url: str, encoding: str | None) -> tuple[bytes, dict[str, str]]:
    headers = {"Accept-Encoding": encoding} if encoding else {"Accept-Encoding": "identity"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        return response.read(), dict(response.headers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_paint(page: Page, url: str) -> float:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0", timeout=30_000)
    return float(page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "SESSIONS_SHARED_SECRET": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "PUBLIC_URL": base,
               "CLOUDSESSION_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(400):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            items = build_items(args.messages)
            creds = call(base + "/api/share", {"sessionID": SES})
            for start in range(0, len(items), 5000):
                call(f"{base}/api/share/{creds['id']}/sync", {"secret": creds["secret"], "data": items[start : start + 5000]})
            url = f"{base}/share/{creds['id']}"
            raw, _ = fetch(url, None)
            served, headers = fetch(url, "gzip")
            encoding = headers.get("Content-Encoding", "identity")
            gzipped = len(served) if encoding == "gzip" else len(gzip.compress(raw, 6))
            print(f"share of {args.messages} messages, page 1")
            print(f"  HTML raw             {len(raw):>10,} bytes")
            print(f"  HTML gzip            {gzipped:>10,} bytes  (served {encoding} to Accept-Encoding: gzip)")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
                cold, warm = [], []
                elements = nodes = 0
                for _ in range(args.runs):
                    context = browser.new_context(viewport={"width": 1440, "height": 900})
                    page = context.new_page()
                    cold.append(first_paint(page, url))
                    elements = page.evaluate("document.getElementsByTagName('*').length")
                    nodes = page.evaluate(
                        "(() => { let n = 0; const w = document.createTreeWalker(document, NodeFilter.SHOW_ALL);"
                        " while (w.nextNode()) n++; return n; })()"
                    )
                    warm.append(first_paint(page, url))
                    context.close()
                browser.close()
            print(f"  DOM elements         {elements:>10,}")
            print(f"  DOM nodes            {nodes:>10,}")
            print(f"  first paint cold     {statistics.median(cold):>10.0f} ms  (median of {args.runs})")
            print(f"  first paint warm     {statistics.median(warm):>10.0f} ms  (median of {args.runs})")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
