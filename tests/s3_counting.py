"""A counting HTTP proxy in front of an S3 endpoint (moto), for tests and measurements.

Point a store's ``endpoint`` at ``proxy.url``; every request is forwarded as it is and recorded
as an :class:`S3Request` (method, key relative to the bucket, whether it was a LIST, the
conditional headers, the status). ``proxy.requests`` holds them in arrival order;
``with proxy.window() as seen:`` collects those made while the block runs (what one sync
cost, for instance).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from s3_faults import FaultyS3Proxy, is_list


@dataclass(frozen=True, slots=True)
class S3Request:
    method: str
    # The object key after the bucket (prefix included); "" for a bucket-level request.
    key: str
    is_list: bool
    if_none_match: str | None
    if_match: str | None
    status: int

    @property
    def kind(self) -> str:
        """LIST, HEAD, GET, PUT, DELETE or POST."""
        return "LIST" if self.is_list else self.method


class CountingS3Proxy(FaultyS3Proxy):
    """The fault proxy (no faults unless ``faults`` is set) recording every request that reached
    the store."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.requests: list[S3Request] = []

    @contextmanager
    def window(self) -> Iterator[list[S3Request]]:
        """The requests that arrive while the block runs (filled in when it ends)."""
        start = len(self.requests)
        seen: list[S3Request] = []
        try:
            yield seen
        finally:
            seen.extend(self.requests[start:])

    def _forwarded(self, request: web.Request, status: int) -> None:
        # Path-style addressing: /<bucket>/<key>.
        _, _, key = unquote(request.path).lstrip("/").partition("/")
        self.requests.append(S3Request(
            request.method, key, is_list(request), request.headers.get("If-None-Match"), request.headers.get("If-Match"), status,
        ))
