"""Startup that explains itself, and the first run on the embedded default.

Every configuration and environment mistake runs the real ``cloudsession`` command in a
subprocess and must end in exactly one line on stderr that names the setting (the environment
variable, the flag or the config file key it came from), a non-zero exit status, and no
traceback. The first run on the filesystem store generates an admin key (0600) and prints a
one-time sign-in link that a real server honours once.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from servers import NAMESPACE, ServerProcess, free_port

BASE_ENV = {"PATH": "/usr/bin:/bin", "SESSIONS_SHARED_SECRET": NAMESPACE, "SESSIONS_RPC_SHARED_KEY": "admin-key-for-tests"}
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def run_cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None, data_dir: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cloudsession", *argv]
    if data_dir and "--data-dir" not in argv:
        cmd += ["--data-dir", str(tmp_path / "data")]
    full_env = {**BASE_ENV, "HOME": str(tmp_path / "home"), **(env or {})}
    return subprocess.run(cmd, env={k: v for k, v in full_env.items() if v is not None}, capture_output=True, text=True, timeout=30)


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str, status: int = 2) -> str:
    """Exit ``status``, exactly one line on stderr holding every needle, no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_bad_log_level_names_the_variable(tmp_path: Path, command: str) -> None:
    proc = run_cli(tmp_path, command, "--port", "0", env={"CLOUDSESSION_LOG_LEVEL": "LOUD"}) if command == "serve" else run_cli(
        tmp_path, command, env={"CLOUDSESSION_LOG_LEVEL": "LOUD"}
    )
    assert_one_line(proc, "CLOUDSESSION_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING")


@pytest.mark.parametrize(
    "env, needles",
    [
        ({"CLOUDSESSION_MAX_BODY_BYTES": "0"}, ["CLOUDSESSION_MAX_BODY_BYTES", "greater than or equal to 1024"]),
        ({"CLOUDSESSION_MAX_ITEMS_PER_SYNC": "-3"}, ["CLOUDSESSION_MAX_ITEMS_PER_SYNC", "greater than or equal to 1"]),
        ({"CLOUDSESSION_MAX_SHARE_BYTES": "1.5"}, ["CLOUDSESSION_MAX_SHARE_BYTES", "valid integer"]),
        ({"CLOUDSESSION_COMPACT_MAX_ENTRIES": "lots"}, ["CLOUDSESSION_COMPACT_MAX_ENTRIES", "valid integer"]),
        ({"CLOUDSESSION_PORT": "70000"}, ["CLOUDSESSION_PORT", "less than or equal to 65535"]),
        ({"CLOUDSESSION_SWEEP_INTERVAL_SECONDS": "-1"}, ["CLOUDSESSION_SWEEP_INTERVAL_SECONDS"]),
        ({"CLOUDSESSION_PUBLIC_LISTING": "maybe"}, ["CLOUDSESSION_PUBLIC_LISTING", "true or false"]),
        ({"PUBLIC_URL": "share.example.com"}, ["PUBLIC_URL", "must be an origin"]),
        ({"PUBLIC_URL": "https://share.example.com/base"}, ["PUBLIC_URL", "no path"]),
        ({"REDIS_URL": "http://cache:6379"}, ["REDIS_URL", "redis://"]),
        ({"CLOUDSESSION_STORE": "ftp://bucket"}, ["CLOUDSESSION_STORE", "unsupported scheme"]),
        ({"CLOUDSESSION_STORE": "s3://bucket", "AWS_ENDPOINT_URL": "minio:9000"}, ["AWS_ENDPOINT_URL", "http:// or https://"]),
        ({"CLOUDSESSION_STORE": "s3://bucket", "AWS_ENDPOINT_URL": "http://minio:port"}, ["AWS_ENDPOINT_URL", "numeric port"]),
        ({"SESSIONS_SHARED_SECRET": "not-a-uuid"}, ["SESSIONS_SHARED_SECRET", "UUID"]),
    ],
)
def test_invalid_environment_values_name_the_variable(tmp_path: Path, env: dict[str, str], needles: list[str]) -> None:
    line = assert_one_line(run_cli(tmp_path, "serve", env={"CLOUDSESSION_PORT": "0", **env}), *needles)
    assert "not-a-uuid" not in line  # a secret's value is never echoed


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_several_mistakes_are_still_one_line(tmp_path: Path, command: str) -> None:
    env = {"CLOUDSESSION_PORT": "http", "CLOUDSESSION_MAX_BODY_BYTES": "-5", "PUBLIC_URL": "ftp://x", "REDIS_URL": "redis//x"}
    assert_one_line(run_cli(tmp_path, command, env=env), "CLOUDSESSION_PORT", "CLOUDSESSION_MAX_BODY_BYTES", "PUBLIC_URL", "REDIS_URL")


def test_a_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    assert_one_line(run_cli(tmp_path, "serve", "--port", "99999"), "--port", "less than or equal to 65535")


@pytest.mark.parametrize(
    "text, needles",
    [
        ('[vars]\nPUBLIC_ULR = "https://x.test"\n', ["vars.PUBLIC_ULR", "did you mean PUBLIC_URL?"]),
        ('[vars]\nLOG_LEVLE = "DEBUG"\n', ["vars.LOG_LEVLE", "did you mean LOG_LEVEL?"]),
        ('nmae = "x"\n', ["nmae", "unknown key", "did you mean name?"]),
        ('[[r2_buckets]]\nbinding = "SESSIONS_STORE"\nbucket = "b"\n', ["r2_buckets.0.bucket", "did you mean bucket_name?"]),
        ('[vars]\nLOG_LEVEL = "LOUD"\n', ["vars.LOG_LEVEL", "LOUD"]),
        ('[vars]\nMAX_BODY_BYTES = 12.5\n', ["vars.MAX_BODY_BYTES", "valid integer"]),
        ('[vars]\nPORT = 0.5\n', ["vars.PORT"]),
        ('[vars]\nREDIS_URL = "redis//cache"\n', ["vars.REDIS_URL", "redis://"]),
        ('[[r2_buckets]]\nbinding = "SESSIONS_STORE"\nbucket_name = "b"\nendpoint = "ftp://r2"\n', ["r2_buckets.endpoint", "http://"]),
        ('name = \n', ["not valid TOML"]),
    ],
)
def test_config_file_mistakes_name_the_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    config = tmp_path / "wrangler.toml"
    config.write_text(text)
    assert_one_line(run_cli(tmp_path, "serve", "--config", str(config)), str(config), *needles)


def test_missing_config_file_and_env_section(tmp_path: Path) -> None:
    assert_one_line(run_cli(tmp_path, "serve", "--config", str(tmp_path / "nope.toml")), "--config", "file not found")
    config = tmp_path / "wrangler.toml"
    config.write_text('[env.production.vars]\nPUBLIC_LISTING = false\n')
    assert_one_line(run_cli(tmp_path, "serve", "--config", str(config), "--env", "prod"), "--env prod", "defined: production")


# --------------------------------------------------------------------------- the environment


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_port_in_use_is_one_line_and_never_announced(tmp_path: Path, source: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        if source == "flag":
            proc, name = run_cli(tmp_path, "serve", "--port", port), "--port"
        else:
            proc, name = run_cli(tmp_path, "serve", env={"CLOUDSESSION_PORT": port}), "CLOUDSESSION_PORT"
    assert_one_line(proc, name, f"127.0.0.1:{port}", "in use")
    assert "listening" not in proc.stdout


def test_an_address_this_machine_does_not_have_names_the_host(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "serve", "--port", "0", env={"CLOUDSESSION_HOST": "192.0.2.1"})  # TEST-NET-1: never local
    assert_one_line(proc, "CLOUDSESSION_HOST", "192.0.2.1")


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_unusable_data_dir_is_one_line(tmp_path: Path, source: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    bad = str(blocker / "data")
    if source == "flag":
        proc, name = run_cli(tmp_path, "serve", "--port", "0", "--data-dir", bad), "--data-dir"
    else:
        proc, name = run_cli(tmp_path, "serve", "--port", "0", env={"CLOUDSESSION_DATA_DIR": bad}, data_dir=False), "CLOUDSESSION_DATA_DIR"
    assert_one_line(proc, name, bad, "not a usable directory")


def test_unusable_default_data_dir_names_the_way_to_change_it(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".local").write_text("a file where a directory should be")
    proc = run_cli(tmp_path, "serve", "--port", "0", env={"SESSIONS_SHARED_SECRET": None}, data_dir=False)  # type: ignore[dict-item]
    assert_one_line(proc, "--data-dir", "CLOUDSESSION_DATA_DIR", "not a usable directory")


def test_unusable_store_path_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "wrangler.toml"
    (tmp_path / "store-file").write_text("x")
    config.write_text(f'[[r2_buckets]]\nbinding = "SESSIONS_STORE"\nbackend = "fs"\npath = "{tmp_path / "store-file" / "store"}"\n')
    assert_one_line(run_cli(tmp_path, "serve", "--port", "0", "--config", str(config)), "r2_buckets.path", "not a usable directory")


# --------------------------------------------------------------------------- the store


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {"CLOUDSESSION_STORE": f"s3://{bucket}/shares", "AWS_ENDPOINT_URL": endpoint, **DUMMY_AWS}


def test_an_unreachable_store_stops_serve_naming_endpoint_and_bucket(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_cli(tmp_path, "serve", "--port", "0", env=s3_env(endpoint, "team-sessions"))
    assert_one_line(proc, endpoint, "s3://team-sessions/shares/", "CLOUDSESSION_STORE", "AWS_ENDPOINT_URL", status=1)
    assert "listening" not in proc.stdout
    check = run_cli(tmp_path, "check-config", "--check-store", "--store-timeout", "20", env=s3_env(endpoint, "team-sessions"))
    assert_one_line(check, endpoint, "s3://team-sessions/shares/", status=1)


def test_check_store_against_a_real_endpoint(tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> None:
    ok = run_cli(tmp_path, "check-config", "--check-store", env=s3_env(moto_endpoint, s3_bucket))
    assert ok.returncode == 0, ok.stderr
    assert f"s3://{s3_bucket}/shares/ at {moto_endpoint}: answers" in ok.stderr
    missing = run_cli(tmp_path, "check-config", "--check-store", env=s3_env(moto_endpoint, "no-such-bucket-here"))
    assert_one_line(missing, "s3://no-such-bucket-here/shares/", moto_endpoint, "NoSuchBucket", status=1)


def test_check_store_on_the_filesystem(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "check-config", "--check-store", env={"SESSIONS_SHARED_SECRET": None})  # type: ignore[dict-item]
    assert proc.returncode == 0, proc.stderr
    assert "answers" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- first run on the embedded default


def _get(url: str, cookie: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    request = urllib.request.Request(url, headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def sign_in_link(log: str) -> str:
    links = re.findall(r"http://\S+/sessions/login\?token=\S+", log)
    assert links, log
    return links[-1]


def test_first_run_generates_an_admin_key_and_a_one_time_sign_in_link(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, env={"SESSIONS_RPC_SHARED_KEY": "", "CLOUDSESSION_LOG_LEVEL": "INFO"})
    server.env.pop("SESSIONS_RPC_SHARED_KEY")
    server.start()
    try:
        key_file = data_dir / "admin-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 40
        link = sign_in_link(server.log())
        assert link.startswith(server.url)
        assert _get(server.url + "/sessions")[0] == 401  # not signed in
        status, headers, _ = _get(link)
        assert status == 303 and headers["Location"] == "/sessions"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert key not in cookie
        status, _, page = _get(server.url + "/sessions", cookie=cookie)
        assert status == 200 and "Sign in" not in page
        # One time only: the same link again is refused with the reason.
        status, headers, page = _get(link)
        assert status == 401 and "Set-Cookie" not in headers and "already used" in page
        assert _get(server.url + "/sessions/login?token=st_guessed")[0] == 401
        # The key works as the admin key of the API; RPC stays open as without a key.
        assert _get(server.url + "/api/sessions", headers={"x-opencode-share-key": key})[0] == 200
        assert _get(server.url + "/api/sessions")[0] == 401
        rpc = urllib.request.Request(server.url + "/rpc/share", data=b"", method="POST")
        try:
            urllib.request.urlopen(rpc, timeout=10)
        except urllib.error.HTTPError as err:
            assert err.code != 401
    finally:
        server.stop()
    log = server.log()
    assert key not in log  # the key itself never reaches the output or the access log
    assert link.split("token=")[1] not in log.split(link)[-1]  # the token is not logged when used
    # A restart keeps the key and prints a new link; the old one is dead.
    server.start()
    try:
        assert (data_dir / "admin-key").read_text().strip() == key
        new_link = sign_in_link(server.log())
        assert new_link != link
        assert _get(link.replace(link.split("/sessions")[0], server.url))[0] == 401
        assert _get(new_link)[0] == 303
    finally:
        server.stop()


def test_a_configured_key_means_no_generated_key_and_no_link(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"SESSIONS_RPC_SHARED_KEY": "chosen-admin-key"}).start()
    server.stop()
    assert not (tmp_path / "data" / "admin-key").exists()
    assert "/sessions/login?token=" not in server.log()


def test_never_a_generated_key_on_s3(tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> None:
    server = ServerProcess(tmp_path / "data", env=s3_env(moto_endpoint, s3_bucket))
    server.env.pop("SESSIONS_RPC_SHARED_KEY", None)
    server.start()
    server.stop()
    assert not (tmp_path / "data" / "admin-key").exists()
    assert "/sessions/login?token=" not in server.log()
    assert boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").head_bucket(Bucket=s3_bucket)


def test_replicas_started_together_on_one_data_dir_share_one_generated_key(tmp_path: Path) -> None:
    servers = [ServerProcess(tmp_path / "data") for _ in range(3)]
    for server in servers:
        server.env.pop("SESSIONS_RPC_SHARED_KEY", None)
    try:
        with ThreadPoolExecutor(3) as pool:  # started at once: the key file is still written exactly once
            list(pool.map(ServerProcess.start, servers))
        key = (tmp_path / "data" / "admin-key").read_text().strip()
        for server in servers:
            assert _get(server.url + "/api/sessions", headers={"x-opencode-share-key": key})[0] == 200
    finally:
        for server in servers:
            server.stop()
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")) == []  # no temporary files left


# --------------------------------------------------------------------------- shutdown


async def test_sigterm_closes_viewers_and_lets_a_sync_still_uploading_finish(tmp_path: Path) -> None:
    """SIGTERM while a sync's body is half sent: the viewer is closed with 1001, the rest of the
    body is still read, the sync is answered 200 and stored, and the process exits 0. (aiohttp's
    own shutdown stops reading every connection first: the sync hung until its 60 s timeout and
    then failed.)"""
    import asyncio
    import json
    import signal

    import aiohttp

    server = ServerProcess(tmp_path / "data").start()
    assert server.proc is not None
    session_id = "ses_sigtermuploading00000001"
    parts = [
        {"type": "part", "data": {"id": f"prt_{n:05d}", "messageID": "msg_1", "sessionID": session_id, "type": "text", "text": "x" * 1000}}
        for n in range(2000)
    ]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/api/share", json={"sessionID": session_id}) as resp:
                share = await resp.json()
            ws = await http.ws_connect(f"{server.url}/ws/{share['id']}?format=events")
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
            raw = json.dumps({"secret": share["secret"], "data": parts}).encode()
            signalled, half_sent = asyncio.Event(), asyncio.Event()

            async def body():  # type: ignore[no-untyped-def]
                yield raw[: len(raw) // 2]
                half_sent.set()
                await signalled.wait()
                yield raw[len(raw) // 2 :]

            headers = {"Content-Type": "application/json", "Content-Length": str(len(raw))}

            async def sync() -> tuple[int, str]:
                async with http.post(f"{server.url}/api/share/{share['id']}/sync", data=body(), headers=headers) as resp:
                    return resp.status, await resp.text()

            in_flight = asyncio.create_task(sync())
            await asyncio.wait_for(half_sent.wait(), 10)
            await asyncio.sleep(0.3)  # the server has the headers and is reading the body
            server.proc.send_signal(signal.SIGTERM)
            closed = await ws.receive(timeout=10)
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            signalled.set()  # only now does the rest of the body go out
            status, text = await asyncio.wait_for(in_flight, 30)
            assert status == 200 and json.loads(text)["syncCount"] == 1
            assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    server.start()  # the sync was stored, not just answered
    try:
        with urllib.request.urlopen(f"{server.url}/api/share/{share['id']}/data", timeout=10) as resp:
            stored = json.loads(resp.read())
        assert sum(1 for item in stored if item["type"] == "part") == len(parts)
    finally:
        server.stop()
