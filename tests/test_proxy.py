"""Three replicas behind a real nginx: the deployment the docs promise a team, end to end.

A real ``nginx`` (the Debian package; its own prefix under tmp, no root needed) running the
shipped proxy config (``deploy/nginx/compose.conf``) balances round-robin over three real ``cloudsession serve`` processes on one S3 endpoint (the
moto server) with one real ``redis-server``. Through the proxy: the real opencode client's
captured syncs are replayed and give the real server's data, a ``/ws/<id>`` viewer connected
through the proxy hears syncs that landed on the other replicas, concurrent syncs lose nothing,
and the page renders with URLs built from the forwarded headers. nginx's access log records which
replica answered each request (``$upstream_addr``), so the tests can tell the requests really
were spread over all three.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import factories as f
import pytest
from servers import ServerProcess, free_port, running_servers, wait_healthy
from test_live_redis import RedisServer
from test_replay import RECORDED_ID, merge_key

REPLICAS = 3
# The shipped proxy config for deploy/compose.yaml, used as it is: only the replicas' addresses
# and the listening address are rewritten, and it is wrapped in a minimal nginx.conf whose
# access log records which replica answered.
SITE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "compose.conf"
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format upstreams '$request_method $uri $status upstream=$upstream_addr';
    access_log {prefix}/access.log upstreams;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/site.conf;
}}
"""


def site_config(upstreams: list[str], port: int) -> str:
    """deploy/nginx/compose.conf with our replicas and a local port in place of compose's names."""
    text = SITE.read_text(encoding="utf-8")
    names = re.findall(r"server (cloudsession-\d+:8787)", text)
    assert len(names) == len(upstreams), names
    for name, upstream in zip(names, upstreams, strict=True):
        text = text.replace(f"server {name}", f"server {upstream}")
    assert "listen 80;" in text
    return text.replace("listen 80;", f"listen 127.0.0.1:{port};")


class Nginx:
    """A throwaway nginx in the foreground with everything (pid, logs, temp files) under ``prefix``."""

    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstreams = upstreams
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        assert binary, "nginx is not installed (scripts/test installs the Debian package)"
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (self.prefix / "site.conf").write_text(site_config(self.upstreams, self.port))
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix))
        cmd = [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")]
        with open(self.prefix / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = wait_healthy(self.url, self.proc, 15)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.log('stderr.log')}{self.log('error.log')}") from None
        if not ready:
            self.stop()
            raise RuntimeError(f"nginx did not answer in time: {self.log('error.log')}")
        return self

    def log(self, name: str) -> str:
        try:
            return (self.prefix / name).read_text(errors="replace")
        except OSError:
            return ""

    def upstreams_of(self, method: str, path_part: str) -> list[str]:
        """The replica (``host:port``) that answered each logged request matching."""
        out = []
        for line in self.log("access.log").splitlines():
            if line.startswith(method + " ") and path_part in line:
                out.append(line.rsplit("upstream=", 1)[1])
        return out

    def await_logged(self, method: str, path_part: str, count: int, timeout: float = 10.0) -> list[str]:
        """``upstreams_of`` once ``count`` such requests are logged (nginx logs a WebSocket
        request only when it ends, a moment after the client closed it)."""
        deadline = time.monotonic() + timeout
        while len(found := self.upstreams_of(method, path_part)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx: fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Deployment:
    def __init__(self, nginx: Nginx, servers: list[ServerProcess]) -> None:
        self.nginx, self.servers = nginx, servers
        self.url = nginx.url


@pytest.fixture(scope="module")
def deployment(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("proxy")
    bucket = f"proxy-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    redis_server = RedisServer(base / "redis").start()
    env = {
        "CLOUDSESSION_STORE": f"s3://{bucket}/team",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "REDIS_URL": redis_server.url,
        "SESSIONS_RPC_SHARED_KEY": "proxy-admin-key",
        # No PUBLIC_URL: share URLs must come from the proxy's X-Forwarded-* headers.
        "PUBLIC_URL": "",
        # nginx is the trusted proxy; clients other than 127.0.0.1 are told apart by the address
        # it appends, and the creates they may make are counted in Redis across the replicas.
        "CLOUDSESSION_TRUSTED_PROXIES": "127.0.0.1/32",
        "CLOUDSESSION_RATE_LIMIT_CREATE": "10/hour",
    }
    try:
        with running_servers(REPLICAS, base / "data", env) as servers:
            nginx = Nginx(base / "nginx", [f"127.0.0.1:{s.port}" for s in servers]).start()
            try:
                yield Deployment(nginx, servers)
            finally:
                nginx.stop()
    finally:
        redis_server.stop()


async def post(http: aiohttp.ClientSession, url: str, body: Any, status: int = 200) -> Any:
    async with http.post(url, json=body) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return json.loads(text)


def spread(upstreams: list[str]) -> set[str]:
    assert all(u and u != "-" for u in upstreams), upstreams
    return set(upstreams)


# --------------------------------------------------------------------------- the tests


async def test_the_real_clients_syncs_through_the_proxy(deployment: Deployment) -> None:
    """The captured opencode traffic, replayed through nginx, lands round-robin on all three
    replicas and gives exactly the data the real share server returned; the page renders."""
    records = f.load_fixture("real-client-sync-requests.json")
    expected = f.load_fixture("real-share-data.json")
    async with aiohttp.ClientSession() as http:
        create = records[0]
        share = await post(http, deployment.url + create["path"], create["body"])
        assert share["id"] == RECORDED_ID
        # The URL is built from the proxy's forwarded headers, not a replica's own address.
        assert share["url"] == f"{deployment.url}/share/{RECORDED_ID}"
        for record in records[1:5]:
            assert record["method"] == "POST"
            await post(http, deployment.url + record["path"], dict(record["body"], secret=share["secret"]))
        async with http.get(f"{deployment.url}/api/share/{share['id']}/data") as resp:
            got = await resp.json()
        real_id = records[0]["body"]["sessionID"]
        public_id = got[0]["data"]["id"]

        def normalise(item: dict[str, Any]) -> dict[str, Any]:
            return json.loads(json.dumps(item, sort_keys=True).replace(real_id, public_id))

        assert {merge_key(i): i for i in got} == {merge_key(i): normalise(i) for i in expected}
        # Every replica reads the same share.
        for server in deployment.servers:
            async with http.get(f"{server.url}/api/share/{share['id']}/data") as resp:
                assert await resp.json() == got
        async with http.get(f"{deployment.url}/share/{share['id']}") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        title = next(i["data"]["title"] for i in got if i["type"] == "session")
        assert title in page and share["secret"] not in page and real_id not in page
        # The client's rename and unshare, through the proxy too: every replica sees the delete.
        rename, unshare = records[6], records[7]
        await post(http, deployment.url + rename["path"], dict(rename["body"], secret=share["secret"]))
        async with http.get(f"{deployment.url}/api/share/{share['id']}") as resp:
            assert (await resp.json())["session"]["title"] == "Renamed"
        async with http.delete(deployment.url + unshare["path"], json={"secret": share["secret"]}) as resp:
            assert resp.status == 200, await resp.text()
        for server in deployment.servers:
            async with http.get(f"{server.url}/api/share/{share['id']}/data") as resp:
                assert resp.status == 404
    syncs = deployment.nginx.upstreams_of("POST", f"/api/share/{RECORDED_ID}/sync")
    assert len(syncs) == 5 and len(spread(syncs + deployment.nginx.upstreams_of("POST", "/api/share "))) == REPLICAS


async def test_a_viewer_through_the_proxy_hears_syncs_that_landed_on_other_replicas(deployment: Deployment) -> None:
    session_id = "ses_" + uuid.uuid4().hex[:26]
    async with aiohttp.ClientSession() as http:
        share = await post(http, deployment.url + "/api/share", {"sessionID": session_id})
        ws = await http.ws_connect(f"{deployment.url}/ws/{share['id']}?format=events")
        hello = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert hello == {"type": "hello", "syncCount": 0}
        heard = []
        for n in range(1, 7):  # six syncs, round-robin: each replica takes two
            message = {"id": f"msg_{n:03d}", "sessionID": session_id, "role": "user", "time": {"created": n}}
            count = (await post(http, f"{deployment.url}/api/share/{share['id']}/sync", {"secret": share["secret"], "data": [{"type": "message", "data": message}]}))["syncCount"]
            event = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            assert event["type"] == "sync" and event["syncCount"] == count == n, event
            heard.append(event["messages"])
        assert heard == [[f"msg_{n:03d}"] for n in range(1, 7)]
        await ws.close()
    syncs = deployment.nginx.upstreams_of("POST", f"/api/share/{share['id']}/sync")
    viewer = await asyncio.to_thread(deployment.nginx.await_logged, "GET", f"/ws/{share['id']}", 1)
    assert len(viewer) == 1 and len(spread(syncs)) == REPLICAS
    assert [u for u in syncs if u != viewer[0]], "no sync landed on another replica than the viewer's"


async def test_concurrent_syncs_through_the_proxy_lose_nothing(deployment: Deployment) -> None:
    session_id = "ses_" + uuid.uuid4().hex[:26]
    writers = 24
    async with aiohttp.ClientSession() as http:
        share = await post(http, deployment.url + "/api/share", {"sessionID": session_id})

        async def sync(n: int) -> int:
            message = {"id": f"msg_{n:03d}", "sessionID": session_id, "role": "user", "time": {"created": n}}
            body = {"secret": share["secret"], "data": [{"type": "message", "data": message}]}
            return int((await post(http, f"{deployment.url}/api/share/{share['id']}/sync", body))["syncCount"])

        counts = await asyncio.gather(*(sync(n) for n in range(writers)))
        assert sorted(counts) == list(range(1, writers + 1))  # distinct: no two syncs saw the same state
        async with http.get(f"{deployment.url}/api/share/{share['id']}/data") as resp:
            data = await resp.json()
    messages = sorted(i["data"]["id"] for i in data if i["type"] == "message")
    assert messages == [f"msg_{n:03d}" for n in range(writers)]  # 0 lost
    assert len(spread(deployment.nginx.upstreams_of("POST", f"/api/share/{share['id']}/sync"))) == REPLICAS


async def test_rate_limits_through_the_proxy_count_each_client_across_replicas(deployment: Deployment) -> None:
    """Clients on their own loopback addresses: nginx appends each one's address, the replicas
    believe it (nginx is a trusted proxy) and share one count through Redis; a forged
    X-Forwarded-For changes nothing."""

    async def creates(address: str, count: int, headers: dict[str, str] | None = None) -> list[aiohttp.ClientResponse]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
        answers = []
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(count):
                body = {"sessionID": "ses_" + uuid.uuid4().hex[:26]}
                async with http.post(deployment.url + "/api/share", json=body, headers=headers or {}) as resp:
                    await resp.read()
                    answers.append(resp)
        return answers

    answers = await creates("127.0.0.2", 12)
    assert [r.status for r in answers] == [200] * 10 + [429] * 2
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["Access-Control-Allow-Origin"] == "*"
    # The ten were answered by every replica, yet counted as one client.
    assert len(spread(deployment.nginx.upstreams_of("POST", "/api/share"))) == REPLICAS
    # Another client has its own count, whatever it claims to be.
    other = await creates("127.0.0.3", 1, {"X-Forwarded-For": "127.0.0.2"})
    assert other[0].status == 200
