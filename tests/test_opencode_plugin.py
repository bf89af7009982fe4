"""The opencode plugin shipped in cloudsession/opencode_plugin: its outbox logic under the Bun
embedded in the pinned opencode binary (``BUN_BE_BUN=1 opencode test``), and delivery to a real
``cloudsession serve`` process."""

from __future__ import annotations

import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opencode_cli import Sandbox, binary
from opencode_runs import share_items
from servers import ServerProcess, free_port

import cloudsession

PLUGIN_DIR = Path(cloudsession.__file__).parent / "opencode_plugin"
JS_TESTS = Path(__file__).parent / "plugin"


def run_bun(*args: str, tmp: Path, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """bun with the plugin's directory; its temporary files (outbox databases) go under ``tmp``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCODE", "npm_config_"))}
    full_env.update({"BUN_BE_BUN": "1", "CLOUDSESSION_PLUGIN_DIR": str(PLUGIN_DIR), "NO_COLOR": "1", "TMPDIR": str(tmp)})
    full_env.update(env or {})
    return subprocess.run([str(binary()), *args], cwd=JS_TESTS, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_plugin_outbox_logic_under_the_binarys_bun(tmp_path: Path) -> None:
    done = run_bun("test", "./outbox.test.mjs", tmp=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert " 0 fail" in output and " 12 pass" in output, output


def test_the_plugin_backfill_logic_under_the_binarys_bun(tmp_path: Path) -> None:
    """A session shared mid-way: its earlier messages and parts are read and recorded once, without
    replacing newer changes (backfill.test.mjs)."""
    done = run_bun("test", "./backfill.test.mjs", tmp=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert " 0 fail" in output and " 11 pass" in output, output


# -- the real opencode 1.18.33 with the plugin installed, against real share servers ---------------


class OpencodeServe:
    """``opencode serve`` in a sandbox with the plugin installed by ``cloudsession opencode install``.
    Sessions and user messages are made through its HTTP API (``noReply``: no model needed)."""

    def __init__(self, sandbox: Sandbox, share_server: str) -> None:
        self.sandbox = sandbox
        install = subprocess.run(
            [sys.executable, "-m", "cloudsession", "opencode", "install", "--server", share_server, "--share", "auto"],
            env=sandbox.env, capture_output=True, text=True, timeout=60,
        )
        assert install.returncode == 0, install.stderr
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpencodeServe:
        log = open(self.sandbox.root / f"opencode-{self.port}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [str(binary()), "serve", "--port", str(self.port), "--hostname", "127.0.0.1"],
            cwd=self.sandbox.workdir, env=self.sandbox.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(lambda: self._ready(), what="opencode serve to answer")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "opencode serve exited"
        try:
            self.call("GET", "/session", timeout=2)
            return True
        except OSError:
            return False

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, method=method, data=data, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def new_session(self, title: str) -> str:
        session_id: str = self.call("POST", "/session", {"title": title})["id"]
        return session_id

    def say(self, session_id: str, text: str) -> None:
        self.call("POST", f"/session/{session_id}/message", {"noReply": True, "parts": [{"type": "text", "text": text}], "model": MODEL})

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """opencode's own state of the session: [{info, parts}]."""
        found: list[dict[str, Any]] = self.call("GET", f"/session/{session_id}/message")
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


MODEL = {"providerID": "cloudsession-test", "modelID": "none"}


def wait_for(check: Callable[[], Any], *, what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` (a deadline on every wait)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status(sandbox: Sandbox) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "cloudsession", "opencode", "status", "--json"], env=sandbox.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def share_of(sandbox: Sandbox, session_id: str) -> dict[str, Any]:
    [share] = [s for s in status(sandbox)["shares"] if s["sessionID"] == session_id]
    return share


def on_share(server_url: str, share_id: str) -> tuple[set[str], dict[str, str]]:
    """(message ids, part id -> text) the share holds."""
    items = share_items(server_url, share_id)
    messages = {i["data"]["id"] for i in items if i["type"] == "message"}
    parts = {i["data"]["id"]: i["data"].get("text", "") for i in items if i["type"] == "part"}
    return messages, parts


def in_opencode(opencode: OpencodeServe, session_id: str) -> tuple[set[str], dict[str, str]]:
    found = opencode.messages(session_id)
    return {m["info"]["id"] for m in found}, {p["id"]: p.get("text", "") for m in found for p in m["parts"]}


def delivered(server_url: str, sandbox: Sandbox, session_id: str, expected: tuple[set[str], dict[str, str]]) -> bool:
    shares = [s for s in status(sandbox)["shares"] if s["sessionID"] == session_id]
    return bool(shares and shares[0]["shareID"] and on_share(server_url, shares[0]["shareID"]) == expected and shares[0]["pending"] == 0)


@pytest.fixture
def share_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "share-data").start()
    try:
        yield proc
    finally:
        proc.stop()


def test_every_message_and_part_of_an_opencode_session_reaches_the_share(share_server: ServerProcess, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "opencode")
    opencode = OpencodeServe(sandbox, share_server.url).start()
    try:
        session_id = opencode.new_session("durable sharing")
        for text in ("first message", "second message", "third message"):
            opencode.say(session_id, text)
        expected = in_opencode(opencode, session_id)
        assert len(expected[0]) == 3 and len(expected[1]) == 3
        wait_for(lambda: delivered(share_server.url, sandbox, session_id, expected), what="the share to hold the session")
        share = share_of(sandbox, session_id)
        items = share_items(share_server.url, share["shareID"])
        [session] = [i["data"] for i in items if i["type"] == "session"]
        assert session["title"] == "durable sharing"
        assert session_id not in json.dumps(items)  # the public copy never shows the real session ID
        assert (share["failed"], share["lastError"]) == (0, None)
        assert share["acked"] >= 7  # the session, 3 messages, 3 parts (and updates of them)
    finally:
        opencode.stop()
    outbox = Path(sandbox.env["XDG_DATA_HOME"]) / "opencode" / "cloudsession-outbox.sqlite"
    assert outbox.stat().st_mode & 0o777 == 0o600


def test_a_share_server_killed_mid_session_gets_the_changes_after_its_restart(share_server: ServerProcess, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "opencode")
    opencode = OpencodeServe(sandbox, share_server.url).start()
    try:
        session_id = opencode.new_session("server restarts")
        opencode.say(session_id, "before the outage")
        wait_for(lambda: delivered(share_server.url, sandbox, session_id, in_opencode(opencode, session_id)), what="the first message")
        share_server.stop()
        opencode.say(session_id, "during the outage")
        opencode.say(session_id, "still down")
        wait_for(lambda: share_of(sandbox, session_id)["lastError"], what="the plugin to notice the outage")
        assert share_of(sandbox, session_id)["pending"] > 0
        share_server.start()
        expected = in_opencode(opencode, session_id)
        assert len(expected[0]) == 3
        wait_for(lambda: delivered(share_server.url, sandbox, session_id, expected), what="the changes made during the outage")
    finally:
        opencode.stop()


def test_changes_left_by_a_stopped_opencode_are_delivered_by_the_next_opencode_command(tmp_path: Path) -> None:
    share_server = ServerProcess(tmp_path / "share-data")  # not running yet: down for the whole session
    sandbox = Sandbox(tmp_path / "opencode")
    opencode = OpencodeServe(sandbox, share_server.url).start()
    try:
        session_id = opencode.new_session("offline session")
        opencode.say(session_id, "written while the share server was down")
        expected = in_opencode(opencode, session_id)
        wait_for(lambda: share_of(sandbox, session_id)["lastError"], what="a failed delivery")
    finally:
        opencode.stop()
    assert share_of(sandbox, session_id)["pending"] > 0
    share_server.start()
    try:
        # Any opencode command that loads the plugins delivers what is left (export awaits dispose).
        done = sandbox.run("export", session_id)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: delivered(share_server.url, sandbox, session_id, expected), what="the next command to deliver", timeout=30)
    finally:
        share_server.stop()


def test_the_plugin_delivery_against_a_real_server_under_the_binarys_bun(tmp_path: Path) -> None:
    """Lost answers (duplicates), rotation (403), 413 splits, expiry (410), backoff, legacy syncs of
    the stock client on the same share: sender.test.mjs."""
    server = ServerProcess(tmp_path / "share-data", env={"CLOUDSESSION_MAX_BODY_BYTES": "2048"}).start()
    try:
        done = run_bun("test", "./sender.test.mjs", tmp=tmp_path, env={"CLOUDSESSION_TEST_SERVER": server.url})
    finally:
        server.stop()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert " 0 fail" in output and " 9 pass" in output, output


class DroppingProxy:
    """A loopback HTTP proxy to the share server that forwards every request but, for the first
    ``drop`` calls to ``/ops``, closes the connection instead of passing the answer on: the server
    applied the batch, the plugin never learns it."""

    def __init__(self, upstream: str, drop: int) -> None:
        self.upstream, self.drop, self.dropped = upstream, drop, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("content-length") or 0)))

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command, headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as resp:
                        status, payload = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                if self.path.endswith("/ops") and proxy.dropped < proxy.drop:
                    proxy.dropped += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DroppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_answers_dropped_by_a_proxy_come_back_as_duplicates_and_nothing_is_applied_twice(share_server: ServerProcess, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "opencode")
    with DroppingProxy(share_server.url, drop=2) as proxy:
        opencode = OpencodeServe(sandbox, proxy.url).start()
        try:
            session_id = opencode.new_session("lossy network")
            for text in ("one", "two"):
                opencode.say(session_id, text)
            expected = in_opencode(opencode, session_id)
            wait_for(lambda: delivered(proxy.url, sandbox, session_id, expected), what="delivery through the lossy proxy")
        finally:
            opencode.stop()
    assert proxy.dropped == 2
    share = share_of(sandbox, session_id)
    # Every acknowledged op was applied exactly once: the share's cursor counts applied ops.
    outbox = sqlite3.connect(Path(sandbox.env["XDG_DATA_HOME"]) / "opencode" / "cloudsession-outbox.sqlite")
    acks = [row[0] for row in outbox.execute("SELECT ack_cursor FROM ops WHERE state = 'acked' ORDER BY ack_cursor")]
    outbox.close()
    assert acks == list(range(1, len(acks) + 1))
    assert share["cursor"] == len(acks) == share["acked"]
    request = urllib.request.Request(f"{share_server.url}/api/share/{share['shareID']}/metadata")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read())["syncCount"] == len(acks)
