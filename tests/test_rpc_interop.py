"""Interop with the real npm capnweb client (0.12.x and 0.4.0) under node, against real server
processes: ``cloudsession serve`` for /rpc/share, and the toy target for the generic protocol.

The node scripts live in tests/interop and resolve their packages from tests/node (installed by
``npm ci --prefix tests/node``, which the README's test command runs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from servers import ServerProcess, free_port

HERE = Path(__file__).resolve().parent
INTEROP = HERE / "interop"
NODE_MODULES = HERE / "node" / "node_modules"
CLIENTS = {"capnweb": "0.12.", "capnweb04": "0.4.0"}


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    assert path, "node is required for the interop tests (see README: the test command installs it)"
    return path


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> str:
    """The npm package name of one capnweb client version, checked to be the version we claim."""
    package = json.loads((NODE_MODULES / request.param / "package.json").read_text())
    assert package["name"] == "capnweb" and package["version"].startswith(CLIENTS[request.param])
    return request.param


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(tmp_path_factory.mktemp("rpc-open") / "data", {"SESSIONS_RPC_SHARED_KEY": ""}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(tmp_path_factory.mktemp("rpc-keyed") / "data", {"SESSIONS_RPC_SHARED_KEY": "k3y"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def toy_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "rpc_toy.py"), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/rpc", data=b""), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def run(node: str, script: str, *args: str) -> dict[str, object]:
    """Run one interop script; returns its steps by name."""
    done = subprocess.run([node, str(INTEROP / script), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {step["step"]: step["value"] for step in steps}


def share_data(server: ServerProcess, share_id: str) -> list[dict]:
    with urllib.request.urlopen(f"{server.url}/api/share/{share_id}/data", timeout=5) as resp:
        return json.loads(resp.read())


def reject(name: str, message: str) -> dict[str, object]:
    return {"error": {"name": name, "message": message}}


def test_create(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "create")
    share = steps["create"]
    assert list(share) == ["id", "secret", "url"]
    assert share["url"] == f"{open_server.url}/share/{share['id']}"
    assert steps["again"] == share, "create is idempotent per session id"
    assert steps["initial"]["id"] != share["id"]
    titles = [i["data"].get("title") for i in share_data(open_server, steps["initial"]["id"]) if i["type"] == "session"]
    assert titles == ["with initial data"]


def test_sync(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "sync")
    assert steps["sync"] == {"success": True, "syncCount": 1}
    assert steps["sync2"] == {"success": True, "syncCount": 2}
    types = [i["type"] for i in share_data(open_server, steps["create"]["id"])]
    assert "session" in types and "message" in types


def test_pipelined_create_and_sync_in_one_batch(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "pipelined")
    assert steps["sync"] == {"success": True, "syncCount": 1}
    stored = share_data(open_server, steps["create"]["id"])
    assert [i["data"]["title"] for i in stored if i["type"] == "session"] == ["pipelined"]


def test_pipelined_with_only_the_second_call_awaited(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "pipelined_unawaited")
    assert steps["sync"] == {"success": True, "syncCount": 1}
    stored = share_data(open_server, steps["create_again"]["id"])
    assert [i["data"]["title"] for i in stored if i["type"] == "session"] == ["only the sync awaited"]


def test_websocket_session_with_several_calls(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "websocket")
    assert steps["sync"] == {"success": True, "syncCount": 1}
    assert steps["concurrent"] == [
        {"success": True, "syncCount": 1},
        reject("Error", "Invalid secret"),
        {"success": True, "syncCount": 2},
    ]
    assert steps["delete"] == {"success": True}
    assert steps["delete_again"] == reject("Error", "Share not found")


def test_errors(node, client, open_server):
    steps = run(node, "share_client.mjs", client, open_server.url, "errors")
    assert steps["wrong_secret"] == reject("Error", "Invalid secret")
    assert steps["unknown_share"] == reject("Error", "Share not found")
    assert steps["unknown_method"] == reject("TypeError", "'noSuchMethod' is not a function.")
    assert steps["probe"] == reject("TypeError", "'probeValue' is not a function.")
    assert steps["bad_items"]["error"]["name"] == "TypeError"
    assert "unknown item type 'weird'" in steps["bad_items"]["error"]["message"]
    assert steps["bad_session_id"] == reject("TypeError", "sessionID must be a non-empty string")
    assert steps["delete_wrong_secret"] == reject("Error", "Invalid secret")
    assert steps["delete"] == {"success": True}


def test_auth(node, client, keyed_server):
    for key in (None, "wrong"):
        steps = run(node, "share_client.mjs", client, keyed_server.url, "auth", *([key] if key else []))
        assert steps["create"] == reject("Error", "RPC request failed: 401 Unauthorized")
        assert steps["ws_create"]["error"]["message"].startswith("WebSocket connection failed")
    steps = run(node, "share_client.mjs", client, keyed_server.url, "auth", "k3y")
    assert list(steps["create"]) == ["id", "secret", "url"], (steps, keyed_server.log())
    assert list(steps["ws_create"]) == ["id", "secret", "url"], (steps, keyed_server.log())


def test_generic_protocol(node, client, toy_server):
    steps = run(node, "toy_client.mjs", client, toy_server)
    assert steps["echo_types"] == {
        "date": 1757214689123,
        "bigint": "12345678901234567890",
        "undefinedKept": True,
        "nested": [1, [2, [3]], {"a": []}],
        "bytes": [1, 2, 3, 250],
        "inf": True,
        "nan": True,
        "error": ["RangeError", "boom"],
        "nul": None,
    }
    assert steps["pipelined_target"] == {"info": {"name": "h1"}, "joined": "id-x/2"}
    assert steps["error"] == [True, "RangeError", "nope"]
    assert steps["websocket"] == {
        "answer": "client got ping",
        "infos": [{"name": "kept"}, {"name": "kept"}],
        "pair": ["only", "default"],
    }
