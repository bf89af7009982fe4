"""HTML doors: the share page, its fragment endpoint, the session list with its sign-in, and the
HTML not-found page.

Handlers parse the request, ask the share service for public data, and hand it to
``cloudsession.render.pages`` for rendering. Rendering runs in a worker thread (one at a time, under the
renderer's lock) so that a large share never stalls the event loop that acknowledges syncs.
Every HTML response carries a strict Content-Security-Policy: scripts and styles only from this
server, no inline code, no third-party requests.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn
from urllib.parse import urlencode

from aiohttp import web

from cloudsession.client import importer
from cloudsession.credentials import secrets_equal
from cloudsession.errors import SessionNotFound
from cloudsession.jsonio import json_bytes
from cloudsession.render.pages import Fragment, PageRenderer, site_name, static_asset
from cloudsession.shares import lifecycle
from cloudsession.shares.items import MAX_ID_LENGTH
from cloudsession.shares.listing import Filters
from cloudsession.shares.public import PublicShare
from cloudsession.web.auth import ADMIN_COOKIE, SIGN_IN, admin_key, cookie_token, is_admin
from cloudsession.web.http import (
    COMPRESSIBLE_TYPES,
    IMMUTABLE_CACHE,
    PRIVATE_PAGE_CACHE,
    PUBLIC_PAGE_CACHE,
    SECURITY_HEADERS,
    VARY_ENCODING,
    body_deadline,
    html_response,
    is_https,
    not_modified,
    not_modified_response,
    public_origin,
    request_read_token,
    utf8,
    weak_etag,
)
from cloudsession.web.keys import RENDERER, SERVICE, SETTINGS
from cloudsession.web.ratelimit import admin_attempt

ADMIN_COOKIE_MAX_AGE = 30 * 24 * 3600
SESSIONS_PER_PAGE = 50
# ``/sessions?page=N`` without a cursor (links from before cursors) walks at most this far.
MAX_SESSIONS_PAGE = 20
MAX_QUERY_CHARS = 200
FINAL_CACHE_CONTROL = "public, max-age=86400, stale-while-revalidate=604800"
MAX_FRAGMENT_IDS = 200
MAX_PAGE = 1_000_000
MAX_LOGIN_BYTES = 4096
# A wrong admin key costs this long (on top of the per-address limit on failures).
LOGIN_FAILURE_DELAY = 0.5


def _json_response(data: Any) -> web.Response:
    response = web.Response(body=json_bytes(data), content_type="application/json")
    response.headers.update(SECURITY_HEADERS)
    return response


def _int_param(request: web.Request, name: str, default: int, maximum: int = MAX_PAGE) -> int:
    raw = request.query.get(name, "")
    # isascii: str.isdigit accepts digits int() refuses ("²"), and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        return default
    return min(max(int(raw), 1), maximum)


async def not_found_page(request: web.Request, message: str | None = None) -> web.Response:
    text = await request.app[RENDERER].run(lambda pages: pages.template("404.html").render(message=message))
    return html_response(text, status=404)


async def _public_share(request: web.Request) -> PublicShare | None:
    try:
        return await request.app[SERVICE].public_share(request.match_info["id"], request_read_token(request))
    except SessionNotFound:
        return None


# --------------------------------------------------------------------------- share page


async def share_page(request: web.Request) -> web.Response:
    """``GET /share/{id}``: the rendered share, one page of messages (``?page=N`` or ``last``)."""
    share = await _public_share(request)
    if share is None:
        return await not_found_page(request)
    renderer = request.app[RENDERER]
    if request.query.get("page") == "last":
        page = MAX_PAGE  # clamped to the last page by the renderer
    else:
        page = _int_param(request, "page", 1)
    suffix = _link_suffix(request, share)
    origin = public_origin(request)
    text = await renderer.run(lambda pages: pages.share_page(share, page, link_suffix=suffix, origin=origin))
    if share.private:
        return html_response(text, headers={"Cache-Control": PRIVATE_PAGE_CACHE})
    # Public pages may be cached briefly and revalidated (the ETag is the rendered page's); a
    # final share no longer changes, so caches may keep it longer.
    cache = FINAL_CACHE_CONTROL if share.final else PUBLIC_PAGE_CACHE
    etag = weak_etag(utf8(text))
    if not_modified(request, etag):
        return not_modified_response(etag, cache)
    return html_response(text, headers={"Cache-Control": cache, "ETag": etag})


async def share_search(request: web.Request) -> web.Response:
    """``GET /share/{id}/search?q=``: matches in every page of the share (the page's search box
    shows the other pages' counts from here). Public data only, at most MAX_QUERY_CHARS."""
    share = await _public_share(request)
    if share is None:
        raise web.HTTPNotFound(text="Session not found")
    query = request.query.get("q", "").strip()
    if len(query) < 2 or len(query) > MAX_QUERY_CHARS:
        raise web.HTTPBadRequest(text=f"q: 2 to {MAX_QUERY_CHARS} characters")
    suffix = _link_suffix(request, share)
    return _json_response(await request.app[RENDERER].run(lambda pages: pages.search(share, query, suffix)))


async def share_card(request: web.Request) -> web.Response:
    """``GET /share/{id}/card.png``: the share's social card (1200×630 PNG) for link previews,
    drawn from the public view with every line redacted (render/card.py), once per version (the
    ETag is the digest of what it shows). A private share's card needs its read token."""
    share = await _public_share(request)
    if share is None:
        raise web.HTTPNotFound(text="Session not found")
    site = site_name(public_origin(request))
    text = await request.app[RENDERER].run(lambda pages: pages.view(share).card_text(site))
    if share.private:
        cache = PRIVATE_PAGE_CACHE
    else:
        cache = FINAL_CACHE_CONTROL if share.final else PUBLIC_PAGE_CACHE
    etag = f'W/"card-{text.digest}"'
    if not share.private and not_modified(request, etag):
        return not_modified_response(etag, cache, compressible=False)  # a PNG
    cards = request.app[RENDERER].pages.cards
    # Drawn outside the renderer's lock (pages keep rendering); the card cache draws one at a time.
    png = await asyncio.to_thread(cards.get, text)
    # An image runs nothing: no page CSP (opened on its own, the browser's image view would
    # report its own inline styles as violations).
    response = web.Response(body=png, content_type="image/png")
    response.headers.update({"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": cache})
    if not share.private:
        response.headers["ETag"] = etag
    return response


def _download(body: bytes, content_type: str, filename: str, share: PublicShare) -> web.Response:
    response = web.Response(body=body, content_type=content_type, charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = PRIVATE_PAGE_CACHE if share.private else "no-cache"
    return response


async def share_export_json(request: web.Request) -> web.Response:
    """``GET /share/{id}/export.json``: the share as an opencode export file (what ``opencode
    import FILE`` reads), the same document as ``cloudsession export``; public data only."""
    share = await _public_share(request)
    if share is None:
        return await not_found_page(request)

    def build() -> bytes:
        document = importer.to_export(share.data_items()).document
        return share.redact(importer.export_json(document).decode("utf-8")).encode("utf-8")

    try:
        body = await asyncio.to_thread(build)
    except importer.ImportFailed as exc:
        return await not_found_page(request, f"Nothing to download: {exc}")
    return _download(body, "application/json", f"opencode-session-{share.id}.json", share)


async def share_export_html(request: web.Request) -> web.Response:
    """``GET /share/{id}/export.html``: the whole share (every page) as one self-contained HTML
    file: styles inlined, no script, readable offline."""
    share = await _public_share(request)
    if share is None:
        return await not_found_page(request)
    text = await request.app[RENDERER].run(lambda pages: pages.standalone_page(share))
    return _download(utf8(share.redact(text)), "text/html", f"opencode-session-{share.id}.html", share)


def _link_suffix(request: web.Request, share: PublicShare) -> str:
    """Query text that links to other pages of a private share carry: its read token, which
    the reader already has in this page's address."""
    token = request.query.get("token")
    return "&" + urlencode({"token": token}) if share.private and token else ""


async def share_fragments(request: web.Request) -> web.Response:
    """``GET /share/{id}/fragments``: what a live page needs to update itself in place.

    Query: ``id`` (a message id, repeated, at most 200), ``page`` (the viewer's page),
    ``header=1``, ``diffs=1``, ``digest=1`` (id and content hash of every message on ``page``),
    ``nav=1`` (the navigator of ``page``, as the page itself has it). Only public data is returned.
    """
    share = await _public_share(request)
    if share is None:
        raise web.HTTPNotFound(text="Session not found")
    # Ids are free-form strings in share data (only their length is bounded), so any value is
    # accepted here; it is only ever used as a dictionary key.
    ids = list(dict.fromkeys(request.query.getall("id", [])))
    if len(ids) > MAX_FRAGMENT_IDS or any(len(i) > MAX_ID_LENGTH for i in ids):
        raise web.HTTPBadRequest(text=f"at most {MAX_FRAGMENT_IDS} ids of at most {MAX_ID_LENGTH} characters")
    page = _int_param(request, "page", 1)
    flags = {name: request.query.get(name) == "1" for name in ("header", "diffs", "digest", "nav")}
    suffix = _link_suffix(request, share)

    def build(pages: PageRenderer) -> dict[str, Any]:
        view = pages.view(share)
        body: dict[str, Any] = {
            "syncCount": share.sync_count,
            "lastUpdated": share.last_updated,
            "pages": view.pages,
            "messageCount": len(view.entries),
            # How many messages the viewer's page holds: a page script that counts otherwise
            # has missed one that no sync event named (a revert undone) and catches up.
            "pageCount": len(view.page_entries(min(page, view.pages))),
        }
        if flags["header"]:
            body["header"] = pages.header_html(view)
            body["hidden"] = view.reverted_ids  # after a revert: messages the page must drop
        if flags["diffs"]:
            body["diffs"] = pages.diffs_html(view)
        if flags["digest"]:
            body["digest"] = [{"id": e.id, "hash": e.hash} for e in view.page_entries(min(page, view.pages))]
        if flags["nav"]:
            body["nav"] = pages.navigator_html(view, min(page, view.pages), suffix)
        messages, missing = [], []
        for fragment in pages.fragments(share, ids, page, suffix):
            if isinstance(fragment, Fragment):
                messages.append(fragment.__dict__)
            else:
                missing.append(fragment)
        body["messages"] = messages
        body["missing"] = missing
        return body

    return _json_response(await request.app[RENDERER].run(build))


async def share_nav(request: web.Request) -> web.Response:
    """``GET /share/{id}/nav?from=A&to=B&page=P``: navigator entries of pages A..B (at most
    NAV_FETCH_PAGES of them, then a link standing for the rest), for the page script to expand
    the page links of a navigator with; links are built as seen from page P."""
    share = await _public_share(request)
    if share is None:
        raise web.HTTPNotFound(text="Session not found")
    first = _int_param(request, "from", 1)
    last = _int_param(request, "to", first)
    page = _int_param(request, "page", 1)
    suffix = _link_suffix(request, share)

    def build(pages: PageRenderer) -> dict[str, Any]:
        view = pages.view(share)
        return {"pages": view.pages, "html": pages.nav_pages_html(view, first, last, page, suffix)}

    return _json_response(await request.app[RENDERER].run(build))


async def share_locate(request: web.Request) -> web.Response:
    """``GET /share/{id}/locate?anchor=msg-X`` (or ``part-X``): the page that shows a message or
    a part, so a link to ``/share/<id>#part-X`` lands on the right page without the page script
    downloading the share. Public data only: a private share needs its read token (else 404),
    and a hidden (reverted) or unknown message is a 404 like any unknown id."""
    share = await _public_share(request)
    if share is None:
        raise web.HTTPNotFound(text="Session not found")
    anchor = request.query.get("anchor", "")
    kind, _, anchor_id = anchor.partition("-")
    if kind not in ("msg", "part") or not anchor_id or len(anchor_id) > MAX_ID_LENGTH:
        raise web.HTTPBadRequest(text=f"anchor: msg-<id> or part-<id>, ids of at most {MAX_ID_LENGTH} characters")

    def find(pages: PageRenderer) -> dict[str, Any] | None:
        view = pages.view(share)
        entry = view.by_id.get(anchor_id if kind == "msg" else view.part_pages.get(anchor_id, ""))
        return None if entry is None else {"page": entry.page, "message": entry.id}

    found = await request.app[RENDERER].run(find)
    if found is None:
        # Counted as a miss by the rate limiter like any 404 on a share route.
        raise web.HTTPNotFound(text="No such message or part")
    return _json_response(found)


# --------------------------------------------------------------------------- static files


async def static_file(request: web.Request) -> web.Response:
    """``GET /static/{name}``: the page's CSS, scripts and icon. A hashed URL (``?v=<hash>`` as
    ``static_url`` builds them) is cacheable forever; anything else revalidates by ETag."""
    asset = static_asset(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    etag = f'"{asset.digest}"'
    cache = IMMUTABLE_CACHE if request.query.get("v") == asset.digest else "no-cache"
    headers = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if not_modified(request, etag):
        vary = VARY_ENCODING if asset.content_type in COMPRESSIBLE_TYPES else {}
        return web.Response(status=304, headers={**headers, **vary})
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


# --------------------------------------------------------------------------- session list


async def sessions_page(request: web.Request) -> web.Response:
    """``GET /sessions``: shares newest first, searchable, a page at a time; admin only unless
    ``public_listing`` is on (then private shares stay hidden). ``?cursor=`` continues from the
    previous page (``?page=`` is only its number, shown); a bare ``?page=N`` (old links) walks
    there from the start."""
    admin = await is_admin(request)
    public = request.app[SETTINGS].public_listing
    renderer = request.app[RENDERER]
    if not (admin or public):
        login_page = await _login_page(request, failed=False)
        if ADMIN_COOKIE in request.cookies:
            # A stale cookie (the key changed) counts as one failed sign-in, not one per view.
            login_page.del_cookie(ADMIN_COOKIE, path="/sessions")
        return login_page
    service = request.app[SERVICE]
    query = request.query.get("q", "").strip()[:MAX_QUERY_CHARS]
    label_filters = [lifecycle.parse_label_filter(text) for text in request.query.getall("label", [])[: lifecycle.MAX_LABEL_FILTERS]]
    filters = Filters(query=query, labels=label_filters, include_private=admin)
    cursor = request.query.get("cursor") or None
    number = _int_param(request, "page", 1, MAX_SESSIONS_PAGE)
    if cursor is None and number > 1:
        # An old numbered link: walk there (a few pages at most), or stop at the last one.
        walked = 1
        while walked < number:
            step = await service.list_page(cursor, SESSIONS_PER_PAGE, filters)
            if step.cursor is None:
                break
            cursor, walked = step.cursor, walked + 1
        number = walked
    page = await service.list_page(cursor, SESSIONS_PER_PAGE, filters)
    shown = [entry.doc() for entry in page.entries]
    first = (number - 1) * SESSIONS_PER_PAGE + 1

    def page_query(after: str | None, n: int) -> str:
        params = ([("q", query)] if query else []) + [("label", f"{k}={v}") for k, v in label_filters]
        if after is not None:
            params += [("cursor", after), ("page", str(n))]
        return urlencode(params)

    text = await renderer.run(
        lambda p: p.template("sessions.html").render(
            sessions=shown,
            # The whole list is known only when it fits on the first page.
            total=len(shown) if number == 1 and page.cursor is None else None,
            first=first,
            last=first + len(shown) - 1,
            query=query,
            page=number,
            newest_query=page_query(None, 1) if cursor is not None else None,
            next_query=page_query(page.cursor, number + 1) if page.cursor is not None else None,
            partial=page.partial,
            building=page.building,
            scanned=page.scanned,
            can_logout=ADMIN_COOKIE in request.cookies,
            label_filters=label_filters,
        )
    )
    return html_response(text)


async def _login_page(request: web.Request, *, failed: bool | str) -> web.Response:
    configured = admin_key(request) is not None
    text = await request.app[RENDERER].run(
        lambda p: p.template("login.html").render(failed=failed, configured=configured)
    )
    return html_response(text, status=401)


async def login(request: web.Request) -> web.Response:
    """``POST /sessions/login``: the sign-in form; a right key sets the cookie and redirects."""
    key = admin_key(request)
    # A form from a browser always has a length; a chunked body would slip past the bound and
    # be read up to the app-wide body limit before the key is even looked at.
    if request.content_length is None:
        raise web.HTTPLengthRequired()
    if request.content_length > MAX_LOGIN_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_LOGIN_BYTES, actual_size=request.content_length)
    async with body_deadline(request):
        form = await request.post()
    given = form.get("key")
    ok = key is not None and isinstance(given, str) and secrets_equal(given, key)
    # Counted before the delay, so parallel guesses from one address are throttled as they are
    # made (web/ratelimit.py): over the limit, a 429 whatever the key.
    await admin_attempt(request, ok)
    if key is None or not ok:
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        return await _login_page(request, failed=True)
    _signed_in(request, key)


async def login_link(request: web.Request) -> web.Response:
    """``GET /sessions/login?token=``: the one-time link ``serve`` prints on the embedded default
    sets the sign-in cookie and redirects; used, expired or wrong, it shows the sign-in form."""
    key, sign_in = admin_key(request), request.app.get(SIGN_IN)
    given = request.query.get("token", "")
    if key is None or sign_in is None or not given or len(given) > 200 or not sign_in.redeem(given):
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        return await _login_page(request, failed="link")
    _signed_in(request, key)


def _signed_in(request: web.Request, key: str) -> NoReturn:
    """Set the sign-in cookie and redirect to the list (raises the redirect)."""
    response = web.HTTPSeeOther("/sessions")
    response.set_cookie(
        ADMIN_COOKIE,
        cookie_token(key),
        max_age=ADMIN_COOKIE_MAX_AGE,
        path="/sessions",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/sessions")
    response.del_cookie(ADMIN_COOKIE, path="/sessions")
    raise response
