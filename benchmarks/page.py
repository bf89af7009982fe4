#!/usr/bin/env python3
"""Weight and first paint of the share page: prints figures, asserts nothing.

Starts ``cloudsession serve`` on a free port with a temporary data directory, syncs a share of
``--messages`` messages (the shape of the render benchmark: markdown, reasoning, bash output,
edits, written files, step parts), then prints for page ``--page``:

- HTML bytes raw and gzipped (as served with and without ``Accept-Encoding: gzip``), and the
  bytes of the navigator alone (it must not grow with the share);
- DOM elements and DOM nodes counted in Chromium;
- the server's CPU time for the first render of the page and for a render from warm caches
  (from /proc/<pid>/stat of the serve process, so other load on the machine does not count);
- first contentful paint, medians over ``--runs``, and the load average while measuring: cold (a
  fresh browser context: empty cache), warm (the same context loading the page again a second
  after its previous load, as a reader reloading it: cached, and the previous page done with its
  start-up), and warm at once (loading it again the moment the cold load painted, while that
  page's start-up work and the browser's cache writes may still be running: what this script
  called warm until it printed both);
- the trivial bound, measured in the same runs: the first paint of a one-line page with the
  share page's own ``<head>`` (its stylesheets and scripts), cold, warm and warm at once;
- the style and layout a theme switch costs on the loaded page (light to dark and back);
- the browser's own main-thread work before a cold first paint (HTML parsing, style, layout,
  scripts, paint: from a Chromium trace), which a loaded machine inflates far less than the
  paint times (an event nested in another, a script run while parsing, counts in both).

``--cloudsession`` runs another build's server (an executable or another checkout's venv: a
before/after comparison on one machine, alternating runs).

Usage: .venv/bin/python benchmarks/page.py [--messages 400] [--page 1] [--runs 7]
       [--chromium /usr/bin/chromium] [--cloudsession PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import CHROMIUM_ARGS, Server, add_common_args, cpu_seconds, loadavg, post_json, resolve_executable, workdir, write_json
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright
from shapes import SES, build_items  # the share shape every benchmark uses


def fetch(url: str, encoding: str | None) -> tuple[bytes, dict[str, str]]:
    headers = {"Accept-Encoding": encoding} if encoding else {"Accept-Encoding": "identity"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        return response.read(), dict(response.headers)


def first_paint(page: Page, url: str) -> float:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0", timeout=30_000)
    return float(page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime"))


VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
SETTLE_MS = 1000  # a reader reloading: the previous load has finished its start-up
THEME_SWITCH = """() => {
    const root = document.documentElement, spent = [];
    for (const theme of ["dark", "light", "dark", "light"]) {
        const start = performance.now();
        root.setAttribute("data-theme", theme);
        document.body.offsetHeight;  // style and layout now, not at the next frame
        spent.push(performance.now() - start);
    }
    root.removeAttribute("data-theme");
    return spent;
}"""


def paints(page: Page, url: str) -> tuple[float, float, float]:
    """Cold, warm (reloaded after the last load settled) and warm at once (reloaded the moment
    the cold load painted), in one fresh context's page."""
    cold = first_paint(page, url)
    at_once = first_paint(page, url)
    page.wait_for_timeout(SETTLE_MS)
    return cold, first_paint(page, url), at_once


def serve_bound(page_html: str, origin: str, cache_control: str) -> ThreadingHTTPServer:
    """The trivial bound, served on its own port: the share page's own ``<head>`` (its
    stylesheets and its one blocking script, from the server under test) and a one-line body,
    with the share page's ``Cache-Control``. Its first paint is what any page costs in this
    browser here."""
    head = page_html[: page_html.index("<body")].replace('="/static/', f'="{origin}/static/')
    body = (head + "<body><p>One line of text.</p></body></html>").encode()

    class Bound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", cache_control)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Main-thread work the browser does before the first paint, by trace event name.
WORK = ("ParseHTML", "UpdateLayoutTree", "Layout", "EvaluateScript", "ParseAuthorStyleSheet", "PrePaint", "Paint")


def traced_paint(browser: Browser, page: Page, url: str) -> dict[str, float]:
    """Loads ``url`` under a Chromium trace and sums, per kind, the main-thread work that ended
    before the first contentful paint (ms): what the page itself costs the browser, as opposed
    to waiting for the network, the server or a busy machine."""
    browser.start_tracing(page=page, categories=["devtools.timeline", "loading"])
    page.goto(url, wait_until="load")
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0", timeout=30_000)
    trace = json.loads(browser.stop_tracing())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    painted = next((e["ts"] for e in events if e.get("name") == "firstContentfulPaint"), None)
    work = dict.fromkeys(WORK, 0.0)
    if painted is None:
        return work
    for event in events:
        if event.get("ph") == "X" and event.get("name") in work and event["ts"] + event.get("dur", 0) <= painted:
            work[event["name"]] += event.get("dur", 0) / 1000
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--page", type=int, default=1)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    add_common_args(parser)
    args = parser.parse_args()

    executable = resolve_executable(args.cloudsession)
    with workdir(args.tmp, "bench-page-") as tmp, Server(executable, tmp / "data", log_level=args.log_level) as server:
        base = server.url
        items = build_items(args.messages)
        creds = post_json(base + "/api/share", {"sessionID": SES})
        for start in range(0, len(items), 5000):
            post_json(f"{base}/api/share/{creds['id']}/sync", {"secret": creds["secret"], "data": items[start : start + 5000]})
        url = f"{base}/share/{creds['id']}?page={args.page}"
        before = cpu_seconds(server.pid)
        raw, page_headers = fetch(url, None)
        first_render = cpu_seconds(server.pid) - before
        served, headers = fetch(url, "gzip")
        encoding = headers.get("Content-Encoding", "identity")
        gzipped = len(served) if encoding == "gzip" else len(gzip.compress(raw, 6))
        before = cpu_seconds(server.pid)
        for _ in range(10):
            fetch(url, None)
        warm_render = (cpu_seconds(server.pid) - before) / 10
        text = raw.decode("utf-8")
        start = text.find('<ol id="nav-list">')
        navigator = len(text[start : text.find("</ol>", start)].encode()) if start >= 0 else 0
        print(f"share of {args.messages} messages, page {args.page}")
        print(f"  HTML raw             {len(raw):>10,} bytes")
        print(f"  HTML gzip            {gzipped:>10,} bytes  (served {encoding} to Accept-Encoding: gzip)")
        print(f"  navigator            {navigator:>10,} bytes")
        print(f"  server CPU first     {first_render * 1000:>10.0f} ms  (first render of the page)")
        print(f"  server CPU warm      {warm_render * 1000:>10.1f} ms  (mean of 10, caches warm)")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            bound = serve_bound(text, base, page_headers.get("Cache-Control", "no-store"))
            bound_url = f"http://127.0.0.1:{bound.server_address[1]}/"
            try:
                page_runs, bound_runs = [], []
                theme: list[float] = []
                elements = nodes = 0
                for _ in range(args.runs):
                    context = browser.new_context(viewport=VIEWPORT)
                    bound_runs.append(paints(context.new_page(), bound_url))
                    context.close()
                    context = browser.new_context(viewport=VIEWPORT)
                    page = context.new_page()
                    page_runs.append(paints(page, url))
                    elements = page.evaluate("document.getElementsByTagName('*').length")
                    nodes = page.evaluate(
                        "(() => { let n = 0; const w = document.createTreeWalker(document, NodeFilter.SHOW_ALL);"
                        " while (w.nextNode()) n++; return n; })()"
                    )
                    page.wait_for_timeout(SETTLE_MS)
                    theme += page.evaluate(THEME_SWITCH)
                    context.close()
                traces = []
                for _ in range(args.runs):
                    context = browser.new_context(viewport=VIEWPORT)
                    traces.append(traced_paint(browser, context.new_page(), url))
                    context.close()
                browser.close()
            finally:
                bound.shutdown()
                bound.server_close()
        # Per run (cold, warm, at once) -> per kind, one list each.
        cold, warm, at_once = (list(kind) for kind in zip(*page_runs, strict=True))
        bound_cold, bound_warm, bound_at_once = (list(kind) for kind in zip(*bound_runs, strict=True))
        print(f"  DOM elements         {elements:>10,}")
        print(f"  DOM nodes            {nodes:>10,}")
        print(f"  first paint cold     {statistics.median(cold):>10.0f} ms  (median of {args.runs})")
        print(f"  first paint warm     {statistics.median(warm):>10.0f} ms  (median of {args.runs}: reloaded {SETTLE_MS} ms after the previous load)")
        print(f"  warm at once         {statistics.median(at_once):>10.0f} ms  (median of {args.runs}: reloaded as soon as the cold load painted)")
        print(f"  trivial bound        {statistics.median(bound_cold):>10.0f} ms cold, {statistics.median(bound_warm):.0f} ms warm,"
              f" {statistics.median(bound_at_once):.0f} ms at once  (a one-line page with this page's <head>, same runs)")
        print(f"  theme switch         {statistics.median(theme):>10.1f} ms  (style and layout, median of {len(theme)} switches)")
        work = {name: statistics.median(t[name] for t in traces) for name in WORK}
        print(f"  browser work cold    {sum(work.values()):>10.0f} ms  (main thread before first paint, median of {args.runs}:"
              f" {', '.join(f'{k} {v:.0f}' for k, v in work.items() if v >= 0.5)})")
        print(f"  load average         {loadavg()}")
    write_json(args.json, {
        "messages": args.messages, "page": args.page, "html_bytes": len(raw), "gzip_bytes": gzipped, "navigator_bytes": navigator,
        "server_cpu_first_ms": first_render * 1000, "server_cpu_warm_ms": warm_render * 1000, "dom_elements": elements,
        "dom_nodes": nodes, "first_paint_cold_ms": cold, "first_paint_warm_settled_ms": warm, "first_paint_warm_at_once_ms": at_once,
        "bound_first_paint_cold_ms": bound_cold, "bound_first_paint_warm_settled_ms": bound_warm,
        "bound_first_paint_warm_at_once_ms": bound_at_once, "theme_switch_ms": theme, "browser_work_cold_ms": work,
    })


if __name__ == "__main__":
    main()
