"""Shared pytest fixtures."""

# --- Object-store fixtures: moto in server mode, fresh buckets, and a `store` over every backend.
# Self-contained (own imports) so that other fixture sections can live above or below it.

import functools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import boto3
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer
from playwright.sync_api import Browser, sync_playwright

import cloudsession
from cloudsession.store.base import ObjectStore
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store

MOTO_REGION = "us-east-1"
_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": MOTO_REGION,
    "AWS_REGION": MOTO_REGION,
}
# Anything that could point a test client at real credentials or a real endpoint.
_FOREIGN_AWS_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

_MOTO_WRITE_LOCK = threading.RLock()


def _install_moto_write_lock() -> None:
    """Serialise moto's S3 write handlers.

    moto 5.2 evaluates If-Match / If-None-Match and then writes without a lock, while werkzeug
    serves every connection on its own thread: two conditional writers can both pass the check.
    Real S3 makes check-and-write atomic, so the race tests need moto to do the same. This
    wraps private moto methods, which is why pyproject pins moto to 5.2.x.
    """
    for name in ("put_object", "delete_object", "_key_response_post"):
        method = getattr(S3Response, name)
        if getattr(method, "_cloudsession_serialised", False):
            continue

        def serialised(self, *args, _method=method, **kwargs):
            with _MOTO_WRITE_LOCK:
                return _method(self, *args, **kwargs)

        functools.update_wrapper(serialised, method)
        serialised._cloudsession_serialised = True  # type: ignore[attr-defined]
        setattr(S3Response, name, serialised)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of an S3 endpoint served by moto on a thread (works with every test's event loop)."""
    with pytest.MonkeyPatch.context() as env:
        # Dummy credentials only: nothing a test does may be signed with a real key.
        for name, value in _DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        for name in _FOREIGN_AWS_ENV:
            env.delenv(name, raising=False)
        # werkzeug logs every request to stderr even with verbose=False.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _install_moto_write_lock()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh, uniquely named bucket on the moto endpoint (created with sync boto3, no loop)."""
    name = f"test-{uuid.uuid4().hex[:24]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name=MOTO_REGION).create_bucket(Bucket=name)
    return name


StoreOpener = Callable[[str], Awaitable[ObjectStore]]


@pytest.fixture(params=["fs", "s3"])
async def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreOpener]:
    """Opens stores of one backend kind (the param) on one shared location, by key prefix.

    Every store opened for a test shares the same directory or bucket, so tests can check
    that prefixes isolate stores. All of them are closed at teardown.
    """
    opened: list[ObjectStore] = []
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = request.getfixturevalue("s3_bucket")

        async def open_store(prefix: str = "") -> ObjectStore:
            store = await S3Store.open(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region=MOTO_REGION)
            opened.append(store)
            return store

    else:

        async def open_store(prefix: str = "") -> ObjectStore:
            store = FilesystemStore(tmp_path / "store", prefix=prefix)
            opened.append(store)
            return store

    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
async def store(store_opener: StoreOpener) -> ObjectStore:
    """An opened store without a key prefix, once per backend ("fs" on tmp_path, "s3" on moto)."""
    return await store_opener("")


# --- Share service fixtures: an app built through the real factory on a real filesystem store.

from factories import settings_for_tests as _settings_for_tests  # noqa: E402

from cloudsession.config import Settings as _Settings  # noqa: E402
from cloudsession.web.app import create_app as _create_app  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> _Settings:
    """Settings for an app on a fresh filesystem store, with the reference tests' namespace."""
    return _settings_for_tests(tmp_path / "data")


@pytest.fixture
async def client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    """An aiohttp test client talking HTTP to the app built by ``create_app``."""
    return await aiohttp_client(_create_app(settings))


@pytest.fixture(params=["fs", "s3"])
def replica_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """Three real ``cloudsession serve`` processes on one store: a shared data directory, or one
    bucket on the moto server (whose write lock makes its conditional checks atomic)."""
    from servers import running_servers

    env = None
    if request.param == "s3":
        endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket")
        env = {"CLOUDSESSION_STORE": f"s3://{bucket}/shares", "AWS_ENDPOINT_URL": endpoint}
    with running_servers(3, tmp_path / "data", env) as servers:
        yield [s.url for s in servers]


# --- The package under test must be this checkout's code: scripts/test installs it as a wheel
# (what users get), so an edit made since would otherwise be tested stale, silently.


def _stale_modules() -> list[str]:
    installed = Path(cloudsession.__file__).resolve().parent
    checkout = Path(__file__).resolve().parents[1] / "cloudsession"
    if installed == checkout:
        return []  # an editable install or the source tree itself
    return [
        str(path.relative_to(checkout))
        for path in checkout.rglob("*.py")
        if not (installed / path.relative_to(checkout)).is_file() or (installed / path.relative_to(checkout)).read_bytes() != path.read_bytes()
    ]


def pytest_configure(config: pytest.Config) -> None:
    stale = _stale_modules()
    if stale:
        raise pytest.UsageError(
            f"the installed cloudsession differs from this checkout ({', '.join(stale[:5])}...): "
            "run ./scripts/test (it reinstalls), or `.venv/bin/pip install -e .` while developing"
        )


# --- One Chromium per test module that asks for ``browser`` (the browser tests).


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
