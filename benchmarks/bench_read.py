#!/usr/bin/env python3
"""Reads of a large share through a real ``cloudsession serve`` process: prints figures, asserts
nothing.

- **read after a sync vs warm** (a 2,000-message, ~10 MB share): the server's CPU time per
  ``GET /api/share/<id>`` and ``GET /api/share/<id>/data`` (identity encoding), warm (the same
  version read again) and right after a small sync (one part changed), from /proc/<pid>/stat
  (utime + stime) around each read; medians and means over ``--rounds``;
- **bytes on the wire** of a large API read: identity, gzip and br;
- **memory**: VmRSS of a fresh server at idle, after writing a ``--megabytes`` share in syncs of
  about 2 MB, and after reading it (``GET /api/share/<id>`` and ``/data``, identity and gzip).

Usage: .venv/bin/python benchmarks/bench_read.py [--messages 2000] [--rounds 30] [--megabytes 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SES = "ses_bench00000000000000000000"
ROOT = "/home/dev/project"
TICK = os.sysconf("SC_CLK_TCK")


def build_items(messages: int, tag: str = "") -> list[dict[str, Any]]:
    """Sync items for ``messages`` messages shaped like a long real session (~5 KB each)."""
    items: list[dict[str, Any]] = [
        {"type": "session", "data": {"id": SES, "slug": "bench", "projectID": "p", "directory": ROOT,
                                     "title": "A long session", "version": "1.18.33", "time": {"created": 1, "updated": 2}}}
    ]
    seq = 0

    def pid() -> str:
        nonlocal seq
        seq += 1
        return f"prt_{seq:012x}Bench{tag}Part"

    t = 1_795_000_000_000
    parent = ""
    for n in range(messages):
        mid = f"msg_{n:012x}Bench{tag}Msg"
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
            {"type": "tool", "callID": f"c{n}a", "tool": "bash", "state": {
                "status": "completed", "input": {"command": f"pytest tests/test_{n}.py", "description": "Run tests"},
                "output": output, "title": "pytest", "metadata": {}, "time": {"start": t, "end": t + 2000}}},
            {"type": "tool", "callID": f"c{n}b", "tool": "edit", "state": {
                "status": "completed", "input": {"filePath": f"{ROOT}/mod_{n}.py", "oldString": "a", "newString": "b"},
                "output": "Edit applied successfully.", "title": f"mod_{n}.py", "metadata": {"diff": patch}, "time": {"start": t, "end": t + 30}}},
            {"type": "tool", "callID": f"c{n}c", "tool": "write", "state": {
                "status": "completed", "input": {"filePath": f"{ROOT}/gen_{n}.py", "content": code},
                "output": "Wrote file successfully.", "title": f"gen_{n}.py", "metadata": {}, "time": {"start": t, "end": t + 20}}},
            {"type": "step-finish", "reason": "stop", "cost": 0.01, "tokens": {"input": 1000, "output": 200, "reasoning": 50, "cache": {"read": 0, "write": 0}}},
            {"type": "patch", "hash": "5c36d82d3991e5c71c04aa8cf3c0e5a96055f20a", "files": [f"{ROOT}/mod_{n}.py"]},
        ]
        for p in parts:
            items.append({"type": "part", "data": {"id": pid(), "sessionID": SES, "messageID": mid, **p}})
    items.append({"type": "session_diff", "data": [{"file": "mod_1.py", "patch": "@@ -1 +1 @@\n-a\n+b\n", "additions": 1, "deletions": 1}]})
    items.append({"type": "model", "data": [{"id": "m", "providerID": "p", "name": "Model"}]})
    return items


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """A real ``cloudsession serve`` on a fresh data dir: (base url, pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SESSIONS_SHARED_SECRET": NAMESPACE, "PUBLIC_URL": url, "CLOUDSESSION_LOG_LEVEL": "WARNING",
               "RATE_LIMITS_ENABLED": "false", **(extra_env or {})}
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", tmp]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "log", "wb"))  # noqa: SIM115
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def create(url: str) -> dict[str, Any]:
    status, body, _ = call(url + "/api/share", "POST", {"sessionID": SES})
    assert status == 200, body
    return orjson.loads(body)


def sync(url: str, creds: dict[str, Any], items: list[dict[str, Any]]) -> None:
    status, body, _ = call(f"{url}/api/share/{creds['id']}/sync", "POST", {"secret": creds["secret"], "data": items})
    assert status == 200, body[:200]


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def read_costs(messages: int, rounds: int, env: dict[str, str]) -> None:
    items = build_items(messages)
    with server(env) as (url, pid):
        creds = create(url)
        sync(url, creds, items)
        target = next(i["data"] for i in reversed(items) if i["type"] == "part" and i["data"]["type"] == "text")
        for path in ("", "/data"):
            full = f"{url}/api/share/{creds['id']}{path}"
            identity = {"Accept-Encoding": "identity"}
            call(full, headers=identity)
            warm, after = [], []
            for n in range(rounds):
                before = cpu_seconds(pid)
                call(full, headers=identity)
                warm.append(cpu_seconds(pid) - before)
                sync(url, creds, [{"type": "part", "data": {**target, "text": f"edited {path} {n}"}}])
                before = cpu_seconds(pid)
                call(full, headers=identity)
                after.append(cpu_seconds(pid) - before)
            name = f"GET /api/share/<id>{path}"
            w, a = statistics.mean(warm) * 1000, statistics.mean(after) * 1000
            print(f"{name:28} {messages} messages: server CPU per read warm {w:6.1f} ms, right after a sync {a:6.1f} ms"
                  f" (x{a / w:.2f}; medians {statistics.median(warm) * 1000:.0f} / {statistics.median(after) * 1000:.0f} ms)", flush=True)
        full = f"{url}/api/share/{creds['id']}"
        for encoding in ("identity", "gzip", "br"):
            _, body, headers = call(full, headers={"Accept-Encoding": encoding})
            got = headers.get("Content-Encoding", "identity")
            print(f"GET /api/share/<id> Accept-Encoding {encoding:8}: {len(body):>10,} bytes on the wire ({got})", flush=True)


def memory(megabytes: float, env: dict[str, str]) -> None:
    per_message = 5200  # bytes of stored JSON per message of build_items, parts included
    messages = int(megabytes * 1_000_000 / per_message) // 2 * 2
    items = build_items(messages)
    with server(env) as (url, pid):
        time.sleep(1.0)
        idle = rss_bytes(pid)
        creds = create(url)
        batch: list[dict[str, Any]] = []
        size = 0
        for item in items:
            batch.append(item)
            size += len(orjson.dumps(item))
            if size > 2_000_000:
                sync(url, creds, batch)
                batch, size = [], 0
        if batch:
            sync(url, creds, batch)
        time.sleep(2.0)
        written = rss_bytes(pid)
        _, meta, _ = call(f"{url}/api/share/{creds['id']}/metadata")
        share_bytes = sum(len(orjson.dumps(i)) for i in items)
        full = f"{url}/api/share/{creds['id']}"
        for path in ("", "/data"):
            for encoding in ("identity", "gzip"):
                call(full + path, headers={"Accept-Encoding": encoding})
        time.sleep(2.0)
        read = rss_bytes(pid)
        print(f"memory: {mib(share_bytes)} share ({orjson.loads(meta)['messageCount']} messages): idle RSS {mib(idle)}, "
              f"after writing +{mib(written - idle)} ({(written - idle) / share_bytes:.2f}x), "
              f"after reading +{mib(read - idle)} ({(read - idle) / share_bytes:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-reads", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    args = parser.parse_args()
    if not args.skip_reads:
        read_costs(args.messages, args.rounds, dict(pair.split("=", 1) for pair in args.env))
    if not args.skip_memory:
        memory(args.megabytes, dict(pair.split("=", 1) for pair in args.env))


if __name__ == "__main__":
    main()
