"""The CI recipe end to end with the real opencode CLI: a session in opencode's local store is
shared with ``cloudsession push --from-opencode`` as an expiring, labelled, final artifact."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import factories as f
import pytest
from opencode_cli import Sandbox, binary
from servers import ServerProcess
from test_opencode_cli import expected_export

SESSION = "ses_ci0recipe0000000000000001"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("ci-push") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


def opencode_with_a_session(root: Path) -> tuple[Sandbox, dict]:
    """An opencode installation holding one session (imported, as a CI job's run would leave it)."""
    sandbox = Sandbox(root)
    document = expected_export(SESSION)
    source = root / "session.json"
    source.write_text(json.dumps(document))
    done = sandbox.import_(str(source))
    assert done.returncode == 0 and SESSION in done.stdout, done.stdout + done.stderr
    return sandbox, sandbox.export(SESSION)


def push(sandbox: Sandbox, server: ServerProcess, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cloudsession", "push", "--from-opencode", SESSION, "--opencode", str(binary()), "--server", server.url,
           "--outbox", str(tmp_path / "outbox.sqlite"), *extra]  # fmt: skip
    return subprocess.run(cmd, env=sandbox.env, capture_output=True, text=True, timeout=180)


async def test_push_from_opencode_makes_a_complete_labelled_expiring_final_share(server: ServerProcess, tmp_path: Path) -> None:
    sandbox, exported = opencode_with_a_session(tmp_path / "opencode")
    done = push(sandbox, server, tmp_path, "--ttl", "7d", "--label", "job=https://ci.example/jobs/42", "--label", "commit=abc123", "--finalize", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["final"] is True and result["failed"] == 0 and result["url"] == f"{server.url}/share/{result['id']}"
    parts = sum(len(m["parts"]) for m in exported["messages"])
    assert result["delivered"] == 1 + len(exported["messages"]) + parts
    assert "ops acknowledged" in done.stderr  # progress goes to stderr when stdout is the JSON line

    async with aiohttp.ClientSession(base_url=server.url) as client:
        async with client.get(f"/api/share/{result['id']}/data") as resp:
            data = await resp.json()
        async with client.get(f"/api/share/{result['id']}/metadata") as resp:
            metadata = await resp.json()
        # Every message and part opencode holds is on the share.
        assert len([i for i in data if i["type"] == "message"]) == len(exported["messages"])
        assert len([i for i in data if i["type"] == "part"]) == parts
        assert metadata["labels"] == {"job": "https://ci.example/jobs/42", "commit": "abc123"}
        assert metadata["final"] is True
        assert 6.99 < (metadata["expiresAt"] - time.time() * 1000) / 86_400_000 <= 7
        # The share is final: even its owner's secret (kept in the outbox, never printed) cannot change it.
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            [(secret,)] = db.execute("SELECT secret FROM shares WHERE share_id = ?", (result["id"],)).fetchall()
        assert secret not in done.stdout + done.stderr
        async with client.post(f"/api/share/{result['id']}/sync", json={"secret": secret, "data": [f.item("session", f.session(SESSION))]}) as resp:
            assert resp.status == 409


def test_push_from_opencode_reports_an_unknown_session(server: ServerProcess, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "opencode")
    done = push(sandbox, server, tmp_path)
    assert done.returncode == 2
    assert "cannot read opencode session" in done.stderr and "Traceback" not in done.stderr
