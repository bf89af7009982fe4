"""``/metrics`` (web/observability.py, cloudsession/metrics.py): scraped after real traffic on an
app built by ``create_app``, parsed with prometheus_client's own parser, every promised series
present with the values the traffic implies; the three ways to protect it (admin key, metrics
token, a separate address); and the Redis relay's state on real processes."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import factories as f
from factories import settings_for_tests
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port
from test_ratelimit import inside_one_window

from cloudsession.web.app import create_app

ADMIN_KEY = "metrics-admin-key"
SID = "ses_metrics_test_0000000001"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


async def scrape(client, headers=None) -> dict:
    resp = await client.get("/metrics", headers=headers if headers is not None else {"x-opencode-share-key": ADMIN_KEY})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(await resp.text())


async def test_series_after_traffic(aiohttp_client, tmp_path):
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN_KEY, compact_max_entries=4, rate_limits={"create": "3/hour"})
    client = await aiohttp_client(create_app(settings))
    await inside_one_window(3600, needed=30)
    share = await (await client.post("/api/share", json={"sessionID": SID})).json()
    message = f.user_message(SID)
    items = [f.item("session", f.session(SID)), f.item("message", message), f.item("part", f.text_part(SID, message["id"]))]
    for _ in range(6):
        resp = await client.post(f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": items})
        assert resp.status == 200
    assert (await client.get(f"/api/share/{share['id']}/data")).status == 200
    assert (await client.get("/api/share/doesnotexist")).status == 404
    assert (await client.get(f"/share/{share['id']}")).status == 200
    for i in range(3):  # the 4th create of the hour is refused
        await client.post("/api/share", json={"sessionID": f"ses_metrics_more_{i:010d}"})
    viewer = await client.ws_connect(f"/ws/{share['id']}")
    # Compactions run in the background after the sync that makes the journal long enough.
    for _ in range(100):
        scraped = await scrape(client)
        if scraped.get(("cloudsession_compactions_total", (("outcome", "written"),)), 0) >= 1:
            break
        await asyncio.sleep(0.05)

    assert value(scraped, "cloudsession_http_requests_total", route="api.sync", method="POST", status="200") == 6
    assert value(scraped, "cloudsession_http_requests_total", route="api.get", method="GET", status="404") == 1
    assert value(scraped, "cloudsession_http_requests_total", route="views.share", method="GET", status="200") == 1
    assert value(scraped, "cloudsession_http_requests_total", route="api.create", method="POST", status="429") == 1
    assert value(scraped, "cloudsession_http_request_duration_seconds_count", route="api.sync", method="POST") == 6
    assert value(scraped, "cloudsession_http_request_duration_seconds_sum", route="api.sync", method="POST") > 0
    assert value(scraped, "cloudsession_http_request_duration_seconds_bucket", route="api.sync", method="POST", le="+Inf") == 6
    # Every sync appended one journal entry (put_if_absent) after reading the snapshot's ETag.
    assert value(scraped, "cloudsession_store_operations_total", op="put_if_absent", outcome="ok") >= 6 + 3
    assert value(scraped, "cloudsession_store_operations_total", op="head", outcome="ok") >= 6
    assert value(scraped, "cloudsession_store_operation_duration_seconds_count", op="put_if_absent") >= 9
    assert value(scraped, "cloudsession_syncs_total") == 6
    assert value(scraped, "cloudsession_sync_items_total") == 18
    assert value(scraped, "cloudsession_journal_entries_total") == 6
    assert value(scraped, "cloudsession_journal_bytes_total") > 6 * 100
    assert value(scraped, "cloudsession_compactions_total", outcome="written") >= 1
    assert value(scraped, "cloudsession_compaction_journal_entries_count") >= 1
    assert ("cloudsession_journal_tail_entries", (("stat", "max"),)) in scraped
    assert value(scraped, "cloudsession_live_viewers") == 1
    assert value(scraped, "cloudsession_rate_limited_total", limit="create") == 1
    assert value(scraped, "cloudsession_rate_limit_storage_errors_total") == 0
    assert value(scraped, "cloudsession_redis_relay_configured") == 0
    assert value(scraped, "process_resident_memory_bytes") > 0
    await viewer.close()
    await asyncio.sleep(0.05)
    assert value(await scrape(client), "cloudsession_live_viewers") == 0


async def test_metrics_need_the_admin_key_or_the_token(aiohttp_client, tmp_path):
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN_KEY, metrics_token="scrape-token-1")
    client = await aiohttp_client(create_app(settings))
    await inside_one_window(needed=15)
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"x-opencode-share-key": "wrong"})).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    await scrape(client, {"Authorization": "Bearer scrape-token-1"})
    await scrape(client)
    # Wrong keys are guesses like any other: they count against the address's admin failures.
    scraped = await scrape(client)
    assert ("cloudsession_rate_limited_total", (("limit", "admin_failures"),)) not in scraped
    for _ in range(10):
        await client.get("/metrics", headers={"x-opencode-share-key": "wrong"})
    assert (await client.get("/metrics", headers={"x-opencode-share-key": ADMIN_KEY})).status == 429


async def test_without_a_key_or_token_the_main_address_refuses(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"x-opencode-share-key": ""})).status == 401


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_separate_metrics_address(aiohttp_client, tmp_path):
    port = free_port()
    settings = settings_for_tests(tmp_path / "a", rpc_shared_key=ADMIN_KEY, metrics_address=f"127.0.0.1:{port}")
    client = await aiohttp_client(create_app(settings))
    # Moved: the main address does not serve it, even to the admin.
    assert (await client.get("/metrics", headers={"x-opencode-share-key": ADMIN_KEY})).status == 404
    await client.post("/api/share", json={"sessionID": SID})
    status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert value(samples(text), "cloudsession_http_requests_total", route="api.create", method="POST", status="200") == 1
    assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/"))[0] == 404
    await client.close()

    # With a token the separate address wants it too.
    port = free_port()
    settings = settings_for_tests(tmp_path / "b", metrics_address=f"127.0.0.1:{port}", metrics_token="side-token")
    client = await aiohttp_client(create_app(settings))
    assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics"))[0] == 401
    assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics", {"Authorization": "Bearer side-token"}))[0] == 200


def test_relay_state_on_real_processes(tmp_path: Path, redis_server):  # noqa: F811
    from servers import running_servers

    env = {"REDIS_URL": redis_server.url, "SESSIONS_RPC_SHARED_KEY": ADMIN_KEY}
    with running_servers(1, tmp_path / "data", env) as (server,):
        status, text = _get(server.url + "/metrics", {"x-opencode-share-key": ADMIN_KEY})
    assert status == 200
    scraped = samples(text)
    assert value(scraped, "cloudsession_redis_relay_configured") == 1
    assert value(scraped, "cloudsession_redis_relay_subscribed") == 1
    assert value(scraped, "cloudsession_redis_relay_publish_failures_total") == 0
    assert redis_server.password is None or redis_server.password not in text


from test_live_redis import redis_server  # noqa: E402, F401 (the session-scoped redis-server fixture)
