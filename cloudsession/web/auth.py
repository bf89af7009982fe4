"""The three ways a request proves it holds the admin key (``SESSIONS_RPC_SHARED_KEY``).

- the ``x-opencode-share-key`` header (``/api/sessions``, ``/rpc/share``, ``/sessions``);
- the sign-in cookie of ``/sessions``, which holds an HMAC of the key, never the key;
- for ``/rpc/share`` only, no key at all when none is configured (open, as in the reference).

Every comparison is constant-time, and every wrong key or cookie counts against the client
address's ``admin_failures`` limit (``web/ratelimit.py``): guessing is throttled per address,
across parallel requests and, with Redis, across replicas.

On the embedded default (filesystem store, no ``SESSIONS_RPC_SHARED_KEY``) ``serve`` generates a
local admin key for ``/sessions`` and ``/api/sessions`` (``enable_local_admin``) and prints a
one-time sign-in link: ``GET /sessions/login?token=`` sets the cookie once and redirects, so the
key itself never travels in a URL. ``/rpc/share`` stays open then, as without a key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from cloudsession.credentials import secrets_equal
from cloudsession.errors import Unauthorized
from cloudsession.protocol import ADMIN_HEADER
from cloudsession.web.keys import SETTINGS
from cloudsession.web.ratelimit import admin_attempt

ADMIN_COOKIE = "cloudsession_admin"
SIGN_IN_LINK_SECONDS = 3600


@dataclass(slots=True)
class OneTimeSignIn:
    """The token of the sign-in link ``serve`` prints: good once, for an hour. With ``claim`` (the
    workers of ``serve --workers N``, which all accept the same link), once across the processes
    too: ``claim`` is a file the parent created, and the one worker whose unlink succeeds wins."""

    digest: bytes
    expires: float
    used: bool = False
    claim: Path | None = None

    def redeem(self, given: str) -> bool:
        ok = hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(), self.digest)
        if not ok or self.used or time.monotonic() > self.expires:
            return False
        self.used = True
        if self.claim is not None:
            try:
                self.claim.unlink()
            except OSError:  # another worker redeemed it first (or the file is gone)
                return False
        return True


def sign_in_claim(data_dir: Path, token: str) -> Path:
    """The file that makes ``token`` redeemable once across worker processes (``OneTimeSignIn``)."""
    return data_dir / f".sign-in-{hashlib.sha256(token.encode()).hexdigest()[:16]}"


LOCAL_ADMIN_KEY: web.AppKey[str] = web.AppKey("local_admin_key")
SIGN_IN: web.AppKey[OneTimeSignIn] = web.AppKey("sign_in")


def new_sign_in_token() -> str:
    return "st_" + secrets.token_urlsafe(24)


def enable_local_admin(app: web.Application, key: str, token: str | None = None, claim: Path | None = None) -> str:
    """Use ``key`` (generated in the data dir) as the admin key of ``/sessions`` and
    ``/api/sessions``; return the one-time sign-in token for the startup link (fresh unless given,
    as the parent of ``serve --workers N`` gives every worker the same one with its ``claim``)."""
    token = token or new_sign_in_token()
    app[LOCAL_ADMIN_KEY] = key
    app[SIGN_IN] = OneTimeSignIn(hashlib.sha256(token.encode()).digest(), time.monotonic() + SIGN_IN_LINK_SECONDS, claim=claim)
    return token


def configured_key(request: web.Request) -> str | None:
    """``SESSIONS_RPC_SHARED_KEY``, or None when it is not set (or empty)."""
    key = request.app[SETTINGS].rpc_shared_key
    return key.get_secret_value() if key is not None and key.get_secret_value() else None


def admin_key(request: web.Request) -> str | None:
    """The admin key: the configured one, else the generated local one, else None."""
    return configured_key(request) or request.app.get(LOCAL_ADMIN_KEY)


def cookie_token(key: str) -> str:
    # The cookie holds a MAC derived from the key, never the key itself.
    return hmac.new(key.encode(), b"cloudsession sessions login v1", hashlib.sha256).hexdigest()


def has_admin_header(request: web.Request) -> bool:
    key = admin_key(request)
    given = request.headers.get(ADMIN_HEADER)
    return key is not None and given is not None and secrets_equal(given, key)


async def checked_admin_header(request: web.Request) -> bool:
    """``has_admin_header``, throttled: a key that was sent and is wrong counts as a failure
    (RateLimited once the address is over its limit, whatever the key)."""
    if request.headers.get(ADMIN_HEADER) is None:
        return False
    ok = has_admin_header(request)
    await admin_attempt(request, ok)
    return ok


async def is_admin(request: web.Request) -> bool:
    """The admin key in the header, or the sign-in cookie (both throttled)."""
    if await checked_admin_header(request):
        return True
    key, cookie = admin_key(request), request.cookies.get(ADMIN_COOKIE)
    if cookie is None:
        return False
    ok = key is not None and secrets_equal(cookie, cookie_token(key))
    await admin_attempt(request, ok)
    return ok


async def require_admin(request: web.Request) -> None:
    """``x-opencode-share-key`` must equal the admin key; 401 otherwise (and when none is set)."""
    if not await checked_admin_header(request):
        raise Unauthorized()


async def rpc_allowed(request: web.Request) -> bool:
    """``/rpc/share``: open without a configured key, else the header must hold it."""
    return configured_key(request) is None or await checked_admin_header(request)
