"""S3-only behaviour of ``S3Store`` that the shared conformance suite cannot reach.

These tests put a small HTTP proxy between the store and moto that can lose one response after
moto applied the request (the lost-response trap of conditional writes) or answer in place of
moto with an error S3 sends but moto never does (409 ConditionalRequestConflict, 403, 500).
The store still talks real HTTP to a real S3 implementation; only the failure is injected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cloudsession.store.base import PreconditionFailed, StoreError
from cloudsession.store.s3 import S3Store

REGION = "us-east-1"  # the region the moto fixtures use

# Headers that describe one hop of the connection, not the request; aiohttp sets its own.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})

Matcher = Callable[[web.Request], bool]


def _s3_error(status: int, code: str) -> web.Response:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")


@dataclass
class FaultyProxy:
    """Forwards every request to moto, except that armed faults fire once on a matching request."""

    upstream: str
    lose_response_of: Matcher | None = None
    answer_instead: tuple[Matcher, int, str] | None = None
    answer_once: bool = False
    forwarded: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.answer_instead is not None and self.answer_instead[0](request):
            _, status, code = self.answer_instead
            if self.answer_once:
                self.answer_instead = None
            self.answered.append(f"{request.method} {status}")
            return _s3_error(status, code)
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._http.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as upstream:
            payload = await upstream.read()
            self.forwarded.append(f"{request.method} {upstream.status}")
            if self.lose_response_of is not None and self.lose_response_of(request):
                self.lose_response_of = None
                # moto applied the request; the client never hears back and must retry.
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)


def conditional_put(request: web.Request) -> bool:
    return request.method == "PUT" and ("If-Match" in request.headers or "If-None-Match" in request.headers)


def conditional_delete(request: web.Request) -> bool:
    return request.method == "DELETE" and "If-Match" in request.headers


def any_request(request: web.Request) -> bool:
    return True


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[tuple[FaultyProxy, str]]:
    faults = FaultyProxy(moto_endpoint)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", faults.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    # auto_decompress off: bodies pass through byte for byte, as the signature expects.
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        faults._http = http
        try:
            yield faults, str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


@pytest.fixture
async def proxied_store(proxy: tuple[FaultyProxy, str], s3_bucket: str) -> AsyncIterator[S3Store]:
    _, url = proxy
    store = await S3Store.open(bucket=s3_bucket, endpoint_url=url, region=REGION, addressing_style="path")
    async with store:
        yield store


@pytest.fixture
def faults(proxy: tuple[FaultyProxy, str]) -> FaultyProxy:
    return proxy[0]


# -- the lost-response trap ----------------------------------------------------------------------


async def test_put_if_absent_whose_response_was_lost_still_succeeds(proxied_store: S3Store, faults: FaultyProxy) -> None:
    faults.lose_response_of = conditional_put
    etag = await proxied_store.put_if_absent("journal/s/0001", b"batch-1")
    # The first attempt created the object; the retry met its own write and got 412.
    assert faults.forwarded == ["PUT 200", "PUT 412", "GET 200"]
    got = await proxied_store.get("journal/s/0001")
    assert got is not None and got.body == b"batch-1" and got.etag == etag


async def test_put_if_match_whose_response_was_lost_still_succeeds(proxied_store: S3Store, faults: FaultyProxy) -> None:
    old = await proxied_store.put("share/s", b"v1")
    faults.lose_response_of = conditional_put
    new = await proxied_store.put_if_match("share/s", b"v2", old)
    assert faults.forwarded[-3:] == ["PUT 200", "PUT 412", "GET 200"]
    got = await proxied_store.get("share/s")
    assert got is not None and got.body == b"v2" and got.etag == new != old


async def test_retried_412_with_someone_elses_bytes_is_still_a_conflict(
    proxied_store: S3Store, faults: FaultyProxy, moto_endpoint: str, s3_bucket: str
) -> None:
    # Another writer created the key; our first attempt is answered 503 without reaching moto,
    # so our retry gets a 412 that is genuinely someone else's: the read-back must tell.
    async with await S3Store.open(bucket=s3_bucket, endpoint_url=moto_endpoint, region=REGION) as other:
        faults.answer_instead, faults.answer_once = (conditional_put, 503, "SlowDown"), True
        await other.put("journal/s/0001", b"their batch")
        with pytest.raises(PreconditionFailed):
            await proxied_store.put_if_absent("journal/s/0001", b"our batch")
    assert faults.answered == ["PUT 503"]
    assert faults.forwarded == ["PUT 412", "GET 200"]
    got = await proxied_store.get("journal/s/0001")
    assert got is not None and got.body == b"their batch"


async def test_delete_if_match_whose_response_was_lost_still_succeeds(proxied_store: S3Store, faults: FaultyProxy) -> None:
    etag = await proxied_store.put("share/d", b"x")
    faults.lose_response_of = conditional_delete
    await proxied_store.delete_if_match("share/d", etag)
    assert faults.forwarded[-2:] == ["DELETE 204", "DELETE 404"]
    assert await proxied_store.get("share/d") is None


# -- errors S3 sends but moto does not -----------------------------------------------------------


@pytest.mark.parametrize("code, status", [("ConditionalRequestConflict", 409), ("PreconditionFailed", 412)])
async def test_conflict_answers_become_precondition_failed(
    proxied_store: S3Store, faults: FaultyProxy, code: str, status: int
) -> None:
    etag = await proxied_store.put("share/s", b"v1")
    faults.answer_instead = (lambda r: r.method in ("PUT", "DELETE"), status, code)
    with pytest.raises(PreconditionFailed):
        await proxied_store.put_if_absent("share/new", b"x")
    with pytest.raises(PreconditionFailed):
        await proxied_store.put_if_match("share/s", b"v2", etag)
    with pytest.raises(PreconditionFailed):
        await proxied_store.delete_if_match("share/s", etag)
    faults.answer_instead = None
    got = await proxied_store.get("share/s")
    assert got is not None and got.body == b"v1"


async def test_access_denied_becomes_store_error_on_every_operation(proxied_store: S3Store, faults: FaultyProxy) -> None:
    faults.answer_instead = (any_request, 403, "AccessDenied")
    calls = [
        lambda: proxied_store.get("k"),
        lambda: proxied_store.head("k"),
        lambda: proxied_store.put("k", b"x"),
        lambda: proxied_store.put_if_absent("k", b"x"),
        lambda: proxied_store.put_if_match("k", b"x", "abc"),
        lambda: proxied_store.delete("k"),
        lambda: proxied_store.delete_if_match("k", "abc"),
        lambda: proxied_store.list_page(""),
    ]
    for call in calls:
        with pytest.raises(StoreError) as caught:
            await call()
        assert type(caught.value) is StoreError
        # HEAD responses have no body, so only the status survives as the error code.
        assert "AccessDenied" in str(caught.value) or "403" in str(caught.value)
    assert faults.forwarded == [] and len(faults.answered) == len(calls)


async def test_server_errors_are_retried_then_reported(proxied_store: S3Store, faults: FaultyProxy) -> None:
    faults.answer_instead = (lambda r: r.method == "GET", 500, "InternalError")
    with pytest.raises(StoreError) as caught:
        await proxied_store.get("k")
    assert type(caught.value) is StoreError and "InternalError" in str(caught.value)
    # retries={"mode": "standard", "max_attempts": 3}: the first attempt and three retries.
    assert faults.answered == ["GET 500"] * 4


# -- opening and configuration -------------------------------------------------------------------


async def test_missing_bucket_is_a_store_error_not_an_absent_key(moto_endpoint: str) -> None:
    async with await S3Store.open(bucket="no-such-bucket-here", endpoint_url=moto_endpoint, region=REGION) as store:
        with pytest.raises(StoreError):
            await store.get("k")
        with pytest.raises(StoreError):
            await store.put_if_absent("k", b"x")
        with pytest.raises(StoreError):
            await store.list_page("")


async def test_open_can_create_the_bucket(moto_endpoint: str) -> None:
    async with await S3Store.open(
        bucket="created-by-open", endpoint_url=moto_endpoint, region="eu-west-1", create_bucket=True
    ) as store:
        await store.put("k", b"x")
    # Opening again finds the bucket and its data.
    async with await S3Store.open(
        bucket="created-by-open", endpoint_url=moto_endpoint, region="eu-west-1", create_bucket=True
    ) as store:
        got = await store.get("k")
        assert got is not None and got.body == b"x"


async def test_unreachable_endpoint_is_a_store_error() -> None:
    async with await S3Store.open(bucket="b-unreachable", endpoint_url="http://127.0.0.1:9", region=REGION) as store:
        with pytest.raises(StoreError) as caught:
            await store.head("k")
        assert type(caught.value) is StoreError
        assert "EndpointConnectionError" in str(caught.value)


async def test_the_endpoint_can_come_from_the_environment(
    moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    async with await S3Store.open(bucket=s3_bucket, region=REGION) as store:
        await store.put("k", b"via env")
        got = await store.get("k")
        assert got is not None and got.body == b"via env"


class _DeleteResultClient:
    """Stands in for the S3 client in one unit test: answers DeleteObjects with the per-key
    errors S3 reports inside a 200 (moto never does), and records what was asked."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        self.asked: list[dict[str, object]] = []

    async def delete_objects(self, **kwargs: object) -> dict[str, object]:
        self.asked.append(kwargs)
        return {"Errors": self.errors} if self.errors else {}


async def test_delete_many_reports_keys_s3_did_not_delete_and_ignores_absent_ones() -> None:
    client = _DeleteResultClient([{"Key": "p/share/b", "Code": "AccessDenied", "Message": "Access Denied"}])
    store = S3Store(client, "bucket", "p/")
    with pytest.raises(StoreError) as failed:
        await store.delete_many(["share/a", "share/b"])
    assert str(failed.value) == "S3 delete_many: 1 of 2 keys not deleted, first 'share/b': AccessDenied"
    assert client.asked == [{"Bucket": "bucket", "Delete": {"Objects": [{"Key": "p/share/a"}, {"Key": "p/share/b"}], "Quiet": True}}]
    # A key S3 calls missing is deleted as far as the caller is concerned.
    await S3Store(_DeleteResultClient([{"Key": "p/share/a", "Code": "NoSuchKey"}]), "bucket", "p/").delete_many(["share/a"])
    empty = _DeleteResultClient([])
    await S3Store(empty, "bucket", "p/").delete_many([])
    assert empty.asked == []  # nothing to delete: no request
