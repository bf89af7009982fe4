"""Structured logs of a real ``cloudsession serve`` process (logs.py, web/observability.py): JSON
lines that parse, the request id accepted when sane (else generated), returned and on every line
about the request with its route, share id, public session id, status and duration; one line at
startup with the redacted configuration and one at shutdown; and no secret, token, admin key,
real session ID or session content in any line, whatever the requests carried. Plus the text
format a terminal gets."""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from servers import ServerProcess

from cloudsession import logs

ADMIN_KEY = "admin-key-9d81f0c2e7"
METRICS_TOKEN = "metrics-token-5b2a7e"
# Long enough to be redacted everywhere; unique, so any appearance in the log is a leak.
REAL_SESSION_ID = "ses_LogLeakCheckRealId7Q4wZp"
CONTENT_MARKER = "content-marker-3f9c1a-private-words"
READ_TOKEN_GUESS = "rt_guessed_token_77aa"


def request(url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the server's output that is a log record, parsed (the one "listening on"
    line the serve command prints for the terminal is not a log record)."""
    records = []
    for line in text.splitlines():
        if line.startswith("cloudsession ") and " listening on " in line:
            continue
        records.append(json.loads(line))  # fails the test when a log line is not JSON
    return records


def test_json_lines_request_ids_and_no_secrets(tmp_path: Path):
    env = {
        "CLOUDSESSION_LOG_FORMAT": "json",
        "CLOUDSESSION_LOG_LEVEL": "DEBUG",
        "SESSIONS_RPC_SHARED_KEY": ADMIN_KEY,
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    server = ServerProcess(tmp_path / "data", env).start()
    try:
        status, headers, body = request(server.url + "/api/share", method="POST", body={"sessionID": REAL_SESSION_ID}, headers={"X-Request-ID": "client-req.0001"})
        assert status == 200 and headers["X-Request-ID"] == "client-req.0001"
        share = json.loads(body)
        items = [
            {"type": "session", "data": {"id": REAL_SESSION_ID, "title": CONTENT_MARKER, "directory": f"/home/u/{REAL_SESSION_ID}"}},
            {"type": "message", "data": {"id": "msg_1", "sessionID": REAL_SESSION_ID, "role": "user", "time": {"created": 1}}},
            {"type": "part", "data": {"id": "prt_1", "messageID": "msg_1", "sessionID": REAL_SESSION_ID, "type": "text", "text": CONTENT_MARKER}},
        ]
        status, headers, _ = request(f"{server.url}/api/share/{share['id']}/sync", method="POST", body={"secret": share["secret"], "data": items}, headers={"X-Request-ID": "sync-req-2"})
        assert status == 200 and headers["X-Request-ID"] == "sync-req-2"
        # Wrong secrets, tokens and keys, and insane request ids.
        status, headers, _ = request(f"{server.url}/api/share/{share['id']}/sync", method="POST", body={"secret": "wrong-" + share["secret"], "data": items}, headers={"X-Request-ID": "bad id with spaces"})
        assert status == 403 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
        status, headers, _ = request(f"{server.url}/api/share/{share['id']}/data?token={READ_TOKEN_GUESS}", headers={"X-Request-ID": "x" * 129})
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
        assert request(server.url + "/api/sessions", headers={"x-opencode-share-key": "guess-" + ADMIN_KEY})[0] == 401
        assert request(server.url + "/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY})[0] == 200
        assert request(server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[0] == 200
        assert request(f"{server.url}/share/{share['id']}?token={READ_TOKEN_GUESS}")[0] == 200
        assert request(server.url + "/api/share/nosuchid")[0] == 404
    finally:
        server.stop()
    text = server.log_path.read_text()
    records = json_lines(text)

    # Nothing secret or private, anywhere.
    for needle in (share["secret"], REAL_SESSION_ID, CONTENT_MARKER, ADMIN_KEY, METRICS_TOKEN, READ_TOKEN_GUESS, "NAMESPACE", "6ba7b810"):
        assert needle not in text, needle

    startup = [r for r in records if r["message"].startswith("cloudsession ") and r["message"].endswith(" starting")]
    assert len(startup) == 1
    config = startup[0]["config"]
    assert config["rpc_shared_key"] == "<set>" and config["shared_secret"] == "<set>" and config["metrics_token"] == "<set>"
    assert config["rate_limits"]["create"] == "60/minute" and config["log_format"] == "json"
    assert records[-1]["message"].startswith("cloudsession stopped")
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

    access = {r["request_id"]: r for r in records if r["logger"] == "aiohttp.access" and "request_id" in r}
    sync = access["sync-req-2"]
    assert sync["route"] == "api.sync" and sync["share_id"] == share["id"] and sync["status"] == 200
    assert sync["method"] == "POST" and sync["path"] == f"/api/share/{share['id']}/sync"
    assert re.fullmatch(r"ses_[0-9A-Za-z]{26}", sync["session"]) and sync["session"] != REAL_SESSION_ID
    assert isinstance(sync["duration_ms"], float | int) and sync["duration_ms"] >= 0
    assert access["client-req.0001"]["route"] == "api.create" and access["client-req.0001"]["session"] == sync["session"]
    refused = [r for r in records if r.get("status") == 403]
    assert len(refused) == 1 and refused[0]["route"] == "api.sync" and re.fullmatch(r"[0-9a-f]{32}", refused[0]["request_id"])
    # Every request got exactly one access line with an id (besides the start-up /healthz polls).
    assert len([r for r in records if r["logger"] == "aiohttp.access" and r.get("route") != "healthz"]) == 9
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,128}", r["request_id"]) for r in records if r["logger"] == "aiohttp.access")
    missing = [r for r in records if r.get("status") == 404]
    assert len(missing) == 1 and missing[0]["route"] == "api.get" and "session" not in missing[0]


def test_text_format_for_a_terminal(capsys):
    stream = _Capture()
    logs.configure("INFO", "text", stream)
    try:
        token = logs.bind(request_id="req-7", route="api.get", share_id="abcd1234")
        logs.annotate(session="ses_" + "p" * 26, secret="never")
        logging.getLogger("cloudsession.test").info("hello", extra={"status": 200})
        logs.unbind(token)
        logging.getLogger("cloudsession.test").info("outside")
    finally:
        logging.getLogger().handlers.clear()
    first, second = stream.text.splitlines()
    assert first.endswith(f"INFO cloudsession.test: hello [request_id=req-7 route=api.get share_id=abcd1234 session=ses_{'p' * 26}]")
    assert "never" not in stream.text
    assert second.endswith("INFO cloudsession.test: outside")


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, data: str) -> None:
        self.text += data

    def flush(self) -> None:
        pass
