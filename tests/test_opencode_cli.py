"""End to end with the real opencode CLI (npm opencode-ai 1.18.33) against a real server process.

The share is built the way the real client builds it (records 0-4 of the captured traffic
replayed through the REST API), then ``opencode import <url>`` reads it and ``opencode export``
shows what opencode stored. The CLI runs in a sandbox (``opencode_cli.py``): its own HOME and
XDG directories, no network beyond loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import factories as f
import pytest
from opencode_cli import VERSION, Sandbox, binary
from servers import ServerProcess
from test_replay import replay

REAL_SESSION_ID = "ses_e0398094effebZevp8D0r58s46"
# Set by opencode import from the importing machine, not carried by the share.
LOCAL_SESSION_KEYS = ("projectID", "directory", "path")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("opencode-e2e") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


async def replay_real_client(server: ServerProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url=server.url) as client:
        return await replay(client, f.load_fixture("real-client-sync-requests.json")[:5])


async def fetch_data(server: ServerProcess, share_id: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(base_url=server.url) as client, client.get(f"/api/share/{share_id}/data") as resp:
        assert resp.status == 200
        return await resp.json()


def expected_export(public_id: str) -> dict[str, Any]:
    """What opencode should hold after importing the real share: real-share-data.json regrouped,
    with the owner's session ID replaced by the public one (the server never reveals it)."""
    items = json.loads(json.dumps(f.load_fixture("real-share-data.json")).replace(REAL_SESSION_ID, public_id))
    session = next(i["data"] for i in items if i["type"] == "session")
    messages = sorted((i["data"] for i in items if i["type"] == "message"), key=lambda m: m["id"])
    parts = [i["data"] for i in items if i["type"] == "part"]
    return {
        "info": session,
        "messages": [{"info": m, "parts": sorted((p for p in parts if p["messageID"] == m["id"]), key=lambda p: p["id"])} for m in messages],
    }


def without_local(document: dict[str, Any]) -> dict[str, Any]:
    info = {k: v for k, v in document["info"].items() if k not in LOCAL_SESSION_KEYS}
    return {"info": info, "messages": document["messages"]}


def test_the_installed_cli_is_the_pinned_release(tmp_path: Path) -> None:
    done = Sandbox(tmp_path).run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == VERSION, binary()


async def test_opencode_imports_a_share_synced_by_the_real_client(server: ServerProcess, tmp_path: Path) -> None:
    share = await replay_real_client(server)
    public_id = (await fetch_data(server, share["id"]))[0]["data"]["id"]
    assert public_id != REAL_SESSION_ID

    sandbox = Sandbox(tmp_path / "opencode")
    done = sandbox.import_(f"{server.url}/share/{share['id']}")
    assert (done.returncode, done.stdout.strip()) == (0, f"Imported session: {public_id}"), done.stdout + done.stderr

    exported = sandbox.export(public_id)
    assert exported["info"]["directory"] == str(sandbox.workdir)  # re-homed by the import
    assert without_local(exported) == without_local(expected_export(public_id))


async def test_cloudsession_import_writes_what_opencode_export_prints(server: ServerProcess, tmp_path: Path) -> None:
    """``cloudsession import`` without opencode gives the same document as opencode's own import
    and export, and ``opencode import FILE`` accepts it."""
    share = await replay_real_client(server)
    out = tmp_path / "share.json"
    done = subprocess.run([sys.executable, "-m", "cloudsession", "import", f"{server.url}/share/{share['id']}", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ours = json.loads(out.read_text())
    public_id = ours["info"]["id"]
    assert without_local(ours) == without_local(expected_export(public_id))

    sandbox = Sandbox(tmp_path / "opencode")
    done = sandbox.import_(str(out))
    assert (done.returncode, done.stdout.strip()) == (0, f"Imported session: {public_id}"), done.stdout + done.stderr
    assert without_local(sandbox.export(public_id)) == without_local(ours)


async def test_opencode_import_of_a_deleted_share_reports_not_found(server: ServerProcess, tmp_path: Path) -> None:
    share = await replay_real_client(server)
    async with aiohttp.ClientSession(base_url=server.url) as client, client.delete(f"/api/share/{share['id']}", json={"secret": share["secret"]}) as resp:
        assert resp.status == 200
    done = Sandbox(tmp_path).import_(f"{server.url}/share/{share['id']}")
    # The client's documented reaction to a non-2xx answer (compat-contract.md §4.6).
    assert "Failed to fetch share data: Not Found" in done.stdout + done.stderr
    assert "Imported session" not in done.stdout
