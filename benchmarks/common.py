"""What every benchmark shares: the build under test, real server processes, /proc readings, the
real client's batches, statistics and the printed/JSON output.

Nothing here imports cloudsession: the scripts drive a ``cloudsession serve`` process over HTTP,
so the same scripts measure any build (``--cloudsession PATH``: an executable or a venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
# The real client captures live beside the checkout, as for the tests (tests/factories.py).
FIXTURES = [Path(os.environ.get("CLOUDSESSION_BENCH_FIXTURES", ROOT.parent / "shared" / "fixtures" / "opencode"))]
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REAL_SESSION = "ses_e0398094effebZevp8D0r58s46"
REAL_SHARE = "D0r58s46"
ID_RE = re.compile(r"\b(msg|prt)_([0-9A-Za-z]{26})\b")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: servers stopped, temp dirs removed


signal.signal(signal.SIGTERM, _terminated)


# -- the build under test ---------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cloudsession", default=None,
                        help="the build to measure: a `cloudsession` executable or a venv directory (default: .venv of this checkout, else PATH)")
    parser.add_argument("--tmp", default=None, help="where data dirs and the disk-rate probe go (default: the system temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--log-level", default="INFO", help="the server's CLOUDSESSION_LOG_LEVEL (default INFO, as operators run it)")


def resolve_executable(spec: str | None) -> str:
    if spec is None:
        local = ROOT / ".venv" / "bin" / "cloudsession"
        found = str(local) if local.exists() else shutil.which("cloudsession")
        if not found:
            sys.exit("no cloudsession executable: pass --cloudsession PATH")
        return found
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "bin" / "cloudsession"
    if not path.exists():
        sys.exit(f"{path}: no such executable")
    return str(path.absolute())


def build_info(executable: str) -> dict[str, Any]:
    """Version, the package's location and whether ``serve --workers`` exists."""
    help_text = subprocess.run([executable, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    commit = ""
    source = Path(executable).resolve().parents[2]  # <venv>/bin/cloudsession -> checkout, for an editable install
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        pass
    return {"executable": executable, "version": version, "commit": commit, "workers": "--workers" in help_text}


# -- the machine ------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)}


def banner(title: str, build: dict[str, Any] | None = None) -> None:
    m = machine_info()
    print(f"== {title}   [{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}]  load average {loadavg()}  "
          f"({m['nproc']} CPUs, {m['cpu']}, Python {m['python']})")
    if build:
        print(f"   build: {build['executable']}  {build['version']} {build['commit']}  workers option: {'yes' if build['workers'] else 'no'}")


# -- /proc readings ---------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --workers N`` forks; all of them are the server)."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the server process and every live descendant."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of the server process and its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io summed over the tree: syscalls and bytes the server read and wrote (the
    filesystem store's "store requests and bytes")."""
    total: dict[str, int] = {}
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/io").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, value = line.split(":")
            total[key] = total.get(key, 0) + int(value)
    return total


# -- a real server process --------------------------------------------------------------------------


# Chromium as the browser benchmarks run it: headless, software rendering, nothing in the background.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def post_json(url: str, body: Any, timeout: float = 60) -> Any:
    """POST ``body`` as JSON, return the decoded answer (the API calls of the browser benchmarks)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The environment minus anything that would configure the server behind our back."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSESSION_", "AWS_", "SESSIONS_", "REDIS_", "PUBLIC_URL", "API_DOMAIN"))}


@dataclass
class Server:
    """``cloudsession serve`` on a free port with its own data dir; the client is another process."""

    executable: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**clean_env(), "SESSIONS_SHARED_SECRET": NAMESPACE, "SESSIONS_RPC_SHARED_KEY": ADMIN_KEY, "PUBLIC_URL": self.url,
               "CLOUDSESSION_RATE_LIMITS": "false", "CLOUDSESSION_LOG_LEVEL": self.log_level, **self.env}
        cmd = [self.executable, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        time.sleep(0.3)  # let startup work (first sweep, workers) settle before a baseline
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not healthy in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def io(self) -> dict[str, int]:
        return io_counters(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def workdir(tmp: str | None, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the real client's batches ----------------------------------------------------------------------


def fixture(name: str) -> Any:
    for folder in FIXTURES:
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    sys.exit(f"{name}: not found in {', '.join(map(str, FIXTURES))}")


def real_batches() -> list[str]:
    """The real opencode 1.18.33 client's sync bodies (0.6-4.2 KB), as JSON text with the recorded
    session id, share id and secret as placeholders."""
    out = []
    for record in fixture("real-client-sync-requests.json"):
        if record["method"] == "POST" and record["path"].endswith("/sync"):
            text = json.dumps(record["body"]["data"], separators=(",", ":"))
            out.append(text)
    return out


class BatchMaker:
    """Real-client sync bodies for one share. Every ``turn_every`` syncs the message and part ids
    change (a new turn of the conversation), so the share grows as a real session does, while the
    syncs in between update the same items (as the client does while an answer streams)."""

    def __init__(self, session_id: str, secret: str, turn_every: int = 10) -> None:
        self.templates = real_batches()
        self.session_id = session_id
        self.secret = secret
        self.turn_every = max(1, turn_every)

    def body(self, n: int) -> bytes:
        turn = n // self.turn_every
        text = self.templates[n % len(self.templates)].replace(REAL_SESSION, self.session_id)
        if turn:
            text = ID_RE.sub(lambda m: f"{m.group(1)}_{turn:06x}{m.group(2)[:-6]}", text)
        return ('{"secret":"' + self.secret + '","data":' + text + "}").encode()


def session_id(n: int, salt: str = "") -> str:
    """A valid session id: ``ses_`` + 26 characters."""
    return "ses_" + f"bench{salt}{n:021d}"[-26:].rjust(26, "0")


# -- statistics and output --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {"n": len(ms), "p50_ms": statistics.median(ms) if ms else float("nan"), "p99_ms": pct(ms, 99), "max_ms": max(ms) if ms else float("nan")}


def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"figures written to {path}")


def run_section(
    args: argparse.Namespace,
    key: str,
    title: str,
    measure: Callable[[argparse.Namespace, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
    report: Callable[[dict[str, Any]], None],
) -> None:
    """What every section script does once its arguments are parsed: name the build, measure it,
    print the table and, with ``--json``, write the figures under ``key``."""
    build = build_info(resolve_executable(args.cloudsession))
    banner(title, build)
    out: dict[str, Any] = asyncio.run(measure(args, build))
    report(out)
    write_json(args.json, {"build": build, key: out})
