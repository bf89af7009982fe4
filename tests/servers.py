"""Run real ``cloudsession serve`` processes for tests, exactly as operators and the acceptance
checks start them (``cloudsession serve --host 127.0.0.1 --port PORT --data-dir DIR``)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``url + /healthz`` answers 200; RuntimeError if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    return False


class ServerProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None, *, pass_data_dir: bool = True, args: list[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "SESSIONS_SHARED_SECRET": NAMESPACE,
            "PUBLIC_URL": self.url,
            "CLOUDSESSION_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.pass_data_dir = pass_data_dir
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.pass_data_dir:
            cmd += ["--data-dir", str(self.data_dir)]
        cmd += self.args
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = wait_healthy(self.url, self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None
        if not ready:
            self.stop()
            raise RuntimeError(f"server did not become ready in {timeout}s:\n{self.log()}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def running_servers(count: int, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[list[ServerProcess]]:
    """``count`` server processes sharing one data dir / store."""
    servers = [ServerProcess(data_dir, env, args=args) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
