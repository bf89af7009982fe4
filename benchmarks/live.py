#!/usr/bin/env python3
"""Sync-to-screen latency of live updates: prints the median, asserts nothing.

Starts ``cloudsession serve`` on a free port with a temporary data directory, opens a share in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), then repeatedly syncs a new
message through the REST API and times how long until it is visible on the open page.

Usage: .venv/bin/python benchmarks/live.py [--runs 20] [--chromium /usr/bin/chromium] [--cloudsession PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import CHROMIUM_ARGS, Server, add_common_args, post_json, resolve_executable, workdir, write_json
from playwright.sync_api import sync_playwright

SES = "ses_benchlive00000000000000000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    add_common_args(parser)
    args = parser.parse_args()

    executable = resolve_executable(args.cloudsession)
    with workdir(args.tmp, "bench-live-") as tmp, Server(executable, tmp / "data", log_level=args.log_level) as server:
        base = server.url
        creds = post_json(base + "/api/share", {"sessionID": SES})
        sync_url = f"{base}/api/share/{creds['id']}/sync"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/share/{creds['id']}")
            page.wait_for_selector("#live-status.ok")
            latencies = []
            for n in range(args.runs):
                message_id = f"msg_{n:012x}BenchLive0000"
                message = {"id": message_id, "sessionID": SES, "role": "user", "time": {"created": 1_795_000_000_000 + n},
                           "agent": "build", "model": {"providerID": "p", "modelID": "m"}}
                text = {"id": f"prt_{n:012x}BenchLive0000", "sessionID": SES, "messageID": message_id, "type": "text", "text": f"message {n}"}
                start = time.perf_counter()
                post_json(sync_url, {"secret": creds["secret"], "data": [{"type": "message", "data": message}, {"type": "part", "data": text}]})
                page.wait_for_selector(f"#msg-{message_id}", timeout=10_000)
                latencies.append((time.perf_counter() - start) * 1000)
                page.wait_for_timeout(100)
            browser.close()
    print(f"sync to visible on an open page, {args.runs} syncs: median {statistics.median(latencies):.0f} ms, "
          f"max {max(latencies):.0f} ms (includes the sync request itself)")
    write_json(args.json, {"runs": args.runs, "latencies_ms": latencies, "median_ms": statistics.median(latencies)})


if __name__ == "__main__":
    main()
