"""The S3 backend of the object store (AWS S3, Cloudflare R2, MinIO; moto in tests), via aioboto3.

One ``S3Store`` holds one long-lived aioboto3 S3 client for the whole process: creating a client
per request is an order of magnitude slower (new endpoint resolution, credentials, connection
pool). Open it once and close it at shutdown, for example in an aiohttp ``cleanup_ctx``::

    async def store_ctx(app):
        store = await S3Store.open(bucket="shares", prefix="prod/", endpoint_url=None, region="eu-west-1")
        async with store:            # closes the client on exit
            app[STORE] = store
            yield

``S3Store.open(*, bucket, prefix="", endpoint_url=None, region=None, create_bucket=False,
access_key_id=None, secret_access_key=None, addressing_style="auto", max_pool_connections=32,
timeout=10.0)``

- ``endpoint_url``: None means AWS, or whatever the standard ``AWS_ENDPOINT_URL`` /
  ``AWS_ENDPOINT_URL_S3`` environment variables name (MinIO, R2, moto): botocore reads them itself.
- ``region``: None means the default chain (``AWS_REGION`` / ``AWS_DEFAULT_REGION``, profile).
  R2 wants ``"auto"``.
- Credentials come from the standard chain (environment, profile, instance role) unless both
  ``access_key_id`` and ``secret_access_key`` are given.
- ``addressing_style``: ``"path"`` for MinIO deployments without wildcard DNS.
- ``create_bucket``: create the bucket when it does not exist (development and tests).

Conditional writes map onto S3 preconditions: ``put_if_absent`` is ``If-None-Match: *``,
``put_if_match`` and ``delete_if_match`` are ``If-Match: <etag>``. A failed precondition (412),
a conflicting concurrent conditional request (409 ``ConditionalRequestConflict``) and, for the
If-Match operations, an absent key (404) all become ``PreconditionFailed``. Every other botocore
failure becomes ``StoreError``; botocore types never leave this module.

The lost-response trap: botocore retries a request whose response was lost (connection reset,
timeout). If the first attempt of a conditional PUT did succeed, the retry fails its own
precondition and comes back 412. So a 412 after a retry is checked by reading the object back:
if it holds exactly the bytes we wrote, the write was ours and counts as a success (callers that
need certainty should make every conditional body unique, e.g. with a write id). The same goes
for a 404 on a retried conditional DELETE. aiohttp would otherwise resend PUT and DELETE once by
itself when a keep-alive connection drops, invisibly to botocore's retry count; that silent
retry is switched off so every retry is one botocore counts.

ETags are returned without quotes. For single-part uploads without SSE-KMS, AWS, MinIO and moto
use the MD5 of the body, so rewriting identical bytes keeps the same ETag (see docs/storage.md).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import BotoCoreError, ClientError

from cloudsession.store.base import ListPage, PreconditionFailed, StoredObject, StoreError, check_delete_batch, full_key

# S3 never returns more than 1000 keys per ListObjectsV2 call.
_MAX_LIST_KEYS = 1000

# Error codes meaning "the key is not there": GetObject/PutObject/DeleteObject say NoSuchKey,
# HeadObject has no body and so only carries the bare status.
_MISSING_CODES = frozenset({"NoSuchKey", "404"})
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_BUCKET_MISSING_CODES = frozenset({"NoSuchBucket", "404"})


# Failures below botocore's own types: aiobotocore maps most aiohttp errors to botocore ones, but a
# body that breaks off mid-read can still surface as aiohttp's ClientPayloadError.
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retried(exc: ClientError) -> bool:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _quote(etag: str) -> str:
    return f'"{_unquote(etag)}"'


def _failure(action: str, key: str, exc: Exception) -> StoreError:
    # Only the error code and class go into the message: request ids, signed URLs and
    # credentials stay out of logs and responses.
    detail = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return StoreError(f"S3 {action} of {key!r} failed: {detail}")


class _CountedRetriesOnly(AIOHTTPSession):  # type: ignore[misc]  # aiobotocore ships no types
    """aiobotocore's HTTP session without aiohttp's own silent retry of idempotent requests.

    aiohttp resends a PUT or DELETE once when a persistent connection drops before the response
    arrives. That retry is invisible to botocore (``RetryAttempts`` stays 0), so a conditional
    write that landed but lost its response would come back as an unexplained 412/404. Without
    it the drop surfaces as ``ConnectionClosedError``, which botocore retries and counts.
    """

    async def _get_session(self, proxy_url: str | None) -> Any:
        session = await super()._get_session(proxy_url)
        # Private since aiohttp 3.9; aiohttp's own test client switches it off the same way.
        # tests/test_store_s3.py fails if this stops taking effect.
        session._retry_connection = False
        return session


class S3Store:
    """``ObjectStore`` on an S3 bucket. Build it with ``await S3Store.open(...)``."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, resources: AsyncExitStack | None = None) -> None:
        # ``client`` is an entered aioboto3 S3 client; ``resources`` (when given) closes it.
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._resources = resources

    @classmethod
    async def open(
        cls,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
        max_pool_connections: int = 32,
        timeout: float = 10.0,
    ) -> S3Store:
        """Create the process-wide client (and the bucket when asked); close with ``close()``.

        ``timeout`` is the deadline of one store call (``store_timeout_seconds``; the share
        service enforces it around every call). botocore's own timeouts are set inside it: a
        connect may take a quarter of it and a silent socket a third, so a hung attempt is
        abandoned and retried (at most 3 retries, standard mode) while the deadline still
        leaves room for the retry, rather than botocore's defaults of 60 s per read."""
        session = aioboto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        config = AioConfig(
            max_pool_connections=max_pool_connections,
            connect_timeout=max(0.1, min(5.0, timeout / 4)),
            read_timeout=max(0.1, timeout / 3),
            # botocore counts max_attempts here as retries: up to 4 attempts in all.
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": addressing_style},
            http_session_cls=_CountedRetriesOnly,
        )
        resources = AsyncExitStack()
        try:
            client = await resources.enter_async_context(
                session.client("s3", endpoint_url=endpoint_url, config=config)
            )
            store = cls(client, bucket, prefix, resources=resources)
            if create_bucket:
                await store._ensure_bucket(region)
        except BaseException as exc:
            await resources.aclose()
            if isinstance(exc, (*_TRANSPORT_ERRORS, ClientError)):
                raise _failure("open", bucket, exc) from exc
            raise
        return store

    async def _ensure_bucket(self, region: str | None) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _BUCKET_MISSING_CODES:
                raise
        params: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region that rejects an explicit location constraint.
        if region and region not in ("us-east-1", "auto"):
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._client.create_bucket(**params)
        except ClientError as exc:
            # Another replica may have created it between our HEAD and CREATE.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def close(self) -> None:
        if self._resources is not None:
            await self._resources.aclose()
            self._resources = None

    async def __aenter__(self) -> S3Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- helpers ---------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return full_key(self.prefix, key)

    async def _read(self, full_key: str) -> StoredObject | None:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=full_key)
            # Reading inside the context manager hands the connection back to the pool.
            async with resp["Body"] as stream:
                body = await stream.read()
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise
        return StoredObject(body, _unquote(resp["ETag"]))

    async def _conditional_put(self, key: str, body: bytes, condition: dict[str, str]) -> str:
        full = self._key(key)
        try:
            resp = await self._client.put_object(Bucket=self.bucket, Key=full, Body=body, **condition)
            return _unquote(resp["ETag"])
        except ClientError as exc:
            code = _error_code(exc)
            if code not in _CONFLICT_CODES:
                if "IfMatch" in condition and code in _MISSING_CODES:
                    raise PreconditionFailed(key) from None
                raise _failure("conditional put", key, exc) from exc
            if not _retried(exc):
                raise PreconditionFailed(key) from None
        except _TRANSPORT_ERRORS as exc:
            raise _failure("conditional put", key, exc) from exc
        # A precondition failure on a retried request: our first attempt may have landed and
        # its response been lost. The write was ours if the object holds exactly our bytes.
        try:
            current = await self._read(full)
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise _failure("conditional put", key, exc) from exc
        if current is not None and current.body == body:
            return current.etag
        raise PreconditionFailed(key)

    # -- ObjectStore -----------------------------------------------------------------------------

    async def get(self, key: str) -> StoredObject | None:
        full = self._key(key)
        try:
            return await self._read(full)
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise _failure("get", key, exc) from exc

    async def head(self, key: str) -> str | None:
        full = self._key(key)
        try:
            resp = await self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise _failure("head", key, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _failure("head", key, exc) from exc
        return _unquote(resp["ETag"])

    async def put(self, key: str, body: bytes) -> str:
        full = self._key(key)
        try:
            resp = await self._client.put_object(Bucket=self.bucket, Key=full, Body=body)
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise _failure("put", key, exc) from exc
        return _unquote(resp["ETag"])

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self._conditional_put(key, body, {"IfNoneMatch": "*"})

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self._conditional_put(key, body, {"IfMatch": _quote(etag)})

    async def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return
            raise _failure("delete", key, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _failure("delete", key, exc) from exc

    async def delete_many(self, keys: list[str]) -> None:
        if not check_delete_batch(keys):
            return
        objects = [{"Key": self._key(key)} for key in keys]
        try:
            answer = await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise _failure("delete_many", keys[0], exc) from exc
        # Quiet: only the keys that failed come back (an absent key is deleted as far as S3 says).
        errors = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING_CODES]
        if errors:
            key = str(errors[0].get("Key", ""))[len(self.prefix) :]
            raise StoreError(f"S3 delete_many: {len(errors)} of {len(keys)} keys not deleted, first {key!r}: {errors[0].get('Code')}")

    async def delete_if_match(self, key: str, etag: str) -> None:
        full = self._key(key)
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=full, IfMatch=_quote(etag))
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING_CODES and _retried(exc):
                # Lost response: our first attempt deleted the object, the retry found it gone.
                return
            if code in _CONFLICT_CODES or code in _MISSING_CODES:
                raise PreconditionFailed(key) from None
            raise _failure("conditional delete", key, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _failure("conditional delete", key, exc) from exc

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return 0  # every write is one PUT: an interrupted one leaves nothing behind

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": min(limit, _MAX_LIST_KEYS),
        }
        if start_after is not None:
            params["StartAfter"] = self.prefix + start_after
        try:
            resp = await self._client.list_objects_v2(**params)
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise _failure("list", prefix, exc) from exc
        keys = [item["Key"][len(self.prefix):] for item in resp.get("Contents", [])]
        more = bool(resp.get("IsTruncated")) and bool(keys)
        return ListPage(keys, keys[-1] if more else None)
