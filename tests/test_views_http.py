"""The HTML doors through HTTP: share page, fragment endpoint, session list with its sign-in,
404 page, security headers, and the absence of secrets and real session ids in every response."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from factories import settings_for_tests
from view_data import SES, hostile_items, item, part, rich_items, session, user

from cloudsession.config import Settings
from cloudsession.web.app import create_app

ADMIN_KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
def view_settings(tmp_path: Path) -> Settings:
    return settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN_KEY)


@pytest.fixture
async def web(aiohttp_client, view_settings):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(view_settings))


async def create(web, session_id: str = SES) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": session_id})
    assert response.status == 200
    return await response.json()


async def sync(web, creds: dict[str, str], items: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items})
    assert response.status == 200, await response.text()


def soup_of(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


# --------------------------------------------------------------------------- share page


async def test_share_page_renders_synced_data_with_security_headers(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    await sync(web, creds, rich_items())
    response = await web.get(f"/share/{creds['id']}")
    assert response.status == 200
    assert response.content_type == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = soup_of(await response.text())
    assert len(page.select("#messages article")) == 6
    assert page.select_one("body")["data-share-id"] == creds["id"]
    # No inline script or style anywhere: the CSP would block them, and none is needed.
    assert all(s.get("src", "").startswith("/static/") for s in page.select("script"))
    assert page.select("style") == [] and page.select("[style]") == []


async def test_static_assets_are_served_by_the_app(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    page = soup_of(await (await web.get(f"/share/{creds['id']}")).text())
    urls = [link["href"] for link in page.select("link[href]")] + [s["src"] for s in page.select("script[src]")]
    assert len(urls) == 5  # app.css, highlight.css, the icon, theme.js and share.js
    for url in urls:
        assert url.startswith("/static/")
        response = await web.get(url)
        assert response.status == 200 and len(await response.read()) > 100


async def test_new_share_waits_for_its_first_sync(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    response = await web.get(f"/share/{creds['id']}")
    assert response.status == 200
    assert "Waiting for the first sync" in soup_of(await response.text()).select_one("#waiting").get_text()


@pytest.mark.parametrize("share_id", ["Nope1234", "a..b", "x" * 300, "%3Cscript%3E"])
async def test_unknown_share_gets_the_404_page(web, share_id: str) -> None:  # type: ignore[no-untyped-def]
    response = await web.get(f"/share/{share_id}")
    assert response.status == 404
    assert response.content_type == "text/html"
    page = soup_of(await response.text())
    assert page.select_one("title").get_text() == "Not Found"
    assert page.select_one("h1").get_text() == "404 - Not Found"
    # A public page never links to the admin pages.
    assert page.select('a[href^="/sessions"]') == [] and page.select("form") == []
    assert "<script>" not in await response.text()


async def test_deleted_share_gets_the_404_page(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    await sync(web, creds, rich_items())
    assert (await web.delete(f"/api/share/{creds['id']}", json={"secret": creds["secret"]})).status == 200
    assert (await web.get(f"/share/{creds['id']}")).status == 404


async def test_page_parameter_selects_and_clamps_pages(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = [item("session", session())]
    for n in range(130):
        message = user(n * 1000)
        items += [item("message", message), item("part", part(message, "text", text=f"number {n + 1}"))]
    await sync(web, creds, items)
    for query, page, count in [("", "1", 100), ("?page=2", "2", 30), ("?page=last", "2", 30), ("?page=999", "2", 30), ("?page=-3", "1", 100), ("?page=abc", "1", 100)]:
        body = soup_of(await (await web.get(f"/share/{creds['id']}{query}")).text())
        assert body.select_one("body")["data-page"] == page
        assert len(body.select("#messages article")) == count


# --------------------------------------------------------------------------- fragments


async def test_fragments_return_requested_messages_header_diffs_and_digest(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = rich_items()
    await sync(web, creds, items)
    messages = [i["data"]["id"] for i in items if i["type"] == "message"]
    response = await web.get(
        f"/share/{creds['id']}/fragments",
        params=[("id", messages[1]), ("id", "msg_unknown"), ("header", "1"), ("diffs", "1"), ("digest", "1"), ("page", "1"), ("nav", "1")],
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["syncCount"] == 1 and body["pages"] == 1 and body["messageCount"] == 6
    [fragment] = body["messages"]
    assert fragment["id"] == messages[1] and fragment["page"] == 1 and fragment["number"] == 2
    assert fragment["before"] == messages[2]
    html = soup_of(fragment["html"])
    assert html.select_one("article")["id"] == f"msg-{messages[1]}"
    assert html.select_one("article")["data-hash"] == fragment["hash"]
    assert fragment["nav"] == ""  # an assistant message has no navigator entry
    prompt = (await (await web.get(f"/share/{creds['id']}/fragments", params={"id": messages[0]})).json())["messages"][0]
    assert soup_of(prompt["nav"]).select_one("li")["data-id"] == messages[0]
    assert body["missing"] == ["msg_unknown"]
    assert soup_of(body["header"]).select_one("#share-header h1").get_text() == "Add a greeting module"
    assert len(soup_of(body["diffs"]).select("details.file-diff")) == 2
    assert [d["id"] for d in body["digest"]] == messages
    assert [li["data-id"] for li in soup_of(body["nav"]).select("li")] == messages[::2]  # the page's prompts
    assert body["pageCount"] == 6


async def test_fragment_hash_changes_only_for_the_touched_message(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = rich_items()
    await sync(web, creds, items)
    before = {d["id"]: d["hash"] for d in (await (await web.get(f"/share/{creds['id']}/fragments?digest=1")).json())["digest"]}
    text_part = copy.deepcopy(next(i for i in items if i["type"] == "part" and i["data"]["type"] == "text"))
    text_part["data"]["text"] = "changed"
    await sync(web, creds, [text_part])
    after = {d["id"]: d["hash"] for d in (await (await web.get(f"/share/{creds['id']}/fragments?digest=1")).json())["digest"]}
    assert {k for k in after if after[k] != before[k]} == {text_part["data"]["messageID"]}


async def test_fragments_reject_too_many_ids_and_unknown_shares(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    too_many = [("id", f"msg_{n}") for n in range(201)]
    assert (await web.get(f"/share/{creds['id']}/fragments", params=too_many)).status == 400
    assert (await web.get(f"/share/{creds['id']}/fragments", params=[("id", "m" * 300)])).status == 400
    assert (await web.get("/share/Nope1234/fragments")).status == 404


async def test_no_secret_or_real_session_id_in_any_view_response(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = rich_items()
    await sync(web, creds, items)
    ids = [("id", i["data"]["id"]) for i in items if i["type"] == "message"]
    bodies = [
        await (await web.get(f"/share/{creds['id']}")).text(),
        await (await web.get(f"/share/{creds['id']}/fragments", params=ids + [("header", "1"), ("diffs", "1"), ("digest", "1"), ("nav_from", "1")])).text(),
        await (await web.get("/sessions", headers={"x-opencode-share-key": ADMIN_KEY})).text(),
    ]
    for body in bodies:
        assert creds["secret"] not in body
        assert SES not in body


# --------------------------------------------------------------------------- hostile content


async def test_hostile_content_is_inert_in_page_and_fragments(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = hostile_items()
    await sync(web, creds, items)
    page = await (await web.get(f"/share/{creds['id']}")).text()
    ids = [("id", i["data"]["id"]) for i in items if i["type"] == "message"]
    fragments = await (await web.get(f"/share/{creds['id']}/fragments", params=ids + [("header", "1"), ("diffs", "1")])).json()
    assert len(fragments["messages"]) == 2  # crafted ids are looked up, not rejected
    documents = [page, fragments["header"], fragments["diffs"]] + [m["html"] + m["nav"] for m in fragments["messages"]]
    for document in documents:
        soup = soup_of(document)
        scripts = soup.select("script")
        assert all(s.get("src", "").startswith(("/static/share.js", "/static/theme.js")) for s in scripts), scripts
        for element in soup.find_all(True):
            handlers = [a for a in element.attrs if a.lower().startswith("on")]
            assert handlers == [], (element.name, handlers)
            for attribute in ("href", "src", "action"):
                value = str(element.get(attribute, "")).strip().lower()
                assert not value.startswith(("javascript:", "vbscript:", "data:text", "data:image/svg")), value
    title = soup_of(page).select_one("title").get_text()
    assert title.startswith("<script>window.__xss=1</script>")  # shown as text, not markup


def test_every_safe_filter_in_the_templates_is_explained() -> None:
    templates = Path(__file__).resolve().parents[1] / "templates"
    unexplained = []
    for path in sorted(templates.rglob("*.html")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if re.search(r"\|\s*safe\b", line):
                context = " ".join(lines[max(0, number - 2) : number + 1])
                if "{# safe:" not in context:
                    unexplained.append(f"{path.name}:{number + 1}")
    assert unexplained == []
    assert any("| safe" in p.read_text() for p in templates.glob("*.html"))  # the check has work to do


# --------------------------------------------------------------------------- session list


async def _shares(web, count: int) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    made = []
    for n in range(count):
        creds = await create(web, f"ses_list{n:04d}aaaaaaaaaaaaaaaaaaaa")
        title = "Alpha project" if n % 2 else f"Session {n}"
        await sync(web, creds, [item("session", session(id=f"ses_list{n:04d}aaaaaaaaaaaaaaaaaaaa", title=title, directory=f"/w/dir{n}"))])
        made.append(creds)
    return made


async def test_session_list_requires_the_admin_key(web) -> None:  # type: ignore[no-untyped-def]
    await _shares(web, 1)
    for headers in ({}, {"x-opencode-share-key": "wrong"}):
        response = await web.get("/sessions", headers=headers)
        assert response.status == 401
        page = soup_of(await response.text())
        assert page.select_one("form.login input[type=password]") is not None
        assert page.select(".session-card") == []
    response = await web.get("/sessions", headers={"x-opencode-share-key": ADMIN_KEY})
    assert response.status == 200
    assert len(soup_of(await response.text()).select(".session-card")) == 1


async def test_login_form_sets_a_cookie_that_is_not_the_key(web) -> None:  # type: ignore[no-untyped-def]
    made = await _shares(web, 1)
    wrong = await web.post("/sessions/login", data={"key": "nope"})
    assert wrong.status == 401
    assert "not right" in await wrong.text()
    assert "cloudsession_admin" not in wrong.cookies
    right = await web.post("/sessions/login", data={"key": ADMIN_KEY}, allow_redirects=False)
    assert right.status == 303 and right.headers["Location"] == "/sessions"
    cookie = right.cookies["cloudsession_admin"]
    assert ADMIN_KEY not in cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/sessions"
    listed = await web.get("/sessions")  # the test client keeps the cookie
    assert listed.status == 200
    assert soup_of(await listed.text()).select_one(".session-card")["href"] == f"/share/{made[0]['id']}"
    await web.post("/sessions/logout", allow_redirects=False)
    web.session.cookie_jar.clear()
    assert (await web.get("/sessions")).status == 401
    # A failed sign-in changed nothing stored.
    assert (await web.get(f"/api/share/{made[0]['id']}/metadata")).status == 200


async def test_session_list_sorts_searches_and_paginates(web) -> None:  # type: ignore[no-untyped-def]
    made = await _shares(web, 55)
    key = {"x-opencode-share-key": ADMIN_KEY}
    first = soup_of(await (await web.get("/sessions", headers=key)).text())
    cards = first.select(".session-card")
    assert len(cards) == 50
    assert cards[0]["href"] == f"/share/{made[-1]['id']}"  # newest first
    assert "shares 1–50, newest first" in first.select_one("p.meta").get_text()
    meta = " ".join(cards[0].select_one(".meta").get_text().split())
    assert re.fullmatch(r"/w/dir54 · 0 messages · 0 parts · 1 sync · \w{3} \d+, \d\d:\d\d [AP]M", meta)
    # The next page continues from a cursor; it links back to the newest.
    older = first.select_one('nav.pager a[rel="next"]')["href"]
    assert "cursor=" in older and "page=2" in older
    second = soup_of(await (await web.get("/sessions" + older, headers=key)).text())
    assert [c["href"] for c in second.select(".session-card")] == [f"/share/{m['id']}" for m in reversed(made[:5])]
    assert "shares 51–55, newest first · page 2" in second.select_one("p.meta").get_text()
    assert second.select('nav.pager a[rel="next"]') == [] and second.select('nav.pager a[rel="first"]')
    # A numbered link from before cursors still lands on the same page.
    legacy = soup_of(await (await web.get("/sessions?page=2", headers=key)).text())
    assert [c["href"] for c in legacy.select(".session-card")] == [c["href"] for c in second.select(".session-card")]
    # The whole list on one page says how many there are.
    few = soup_of(await (await web.get("/sessions", params={"q": "/w/dir5"}, headers=key)).text())
    assert "6 shares matching" in few.select_one("p.meta").get_text()
    found = soup_of(await (await web.get("/sessions", params={"q": "ALPHA"}, headers=key)).text())
    assert len(found.select(".session-card")) == 27
    assert all(c.select_one(".session-title").get_text() == "Alpha project" for c in found.select(".session-card"))
    by_dir = soup_of(await (await web.get("/sessions", params={"q": "/w/dir7"}, headers=key)).text())
    assert [c["href"] for c in by_dir.select(".session-card")] == [f"/share/{made[7]['id']}"]
    none = soup_of(await (await web.get("/sessions", params={"q": "<script>"}, headers=key)).text())
    assert "No session matches" in none.get_text()


async def test_public_listing_setting_opens_the_list(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d", public_listing=True)))
    await _shares(web, 2)
    response = await web.get("/sessions")
    assert response.status == 200
    assert len(soup_of(await response.text()).select(".session-card")) == 2


async def test_login_refuses_a_body_without_a_length(web) -> None:  # type: ignore[no-untyped-def]
    # A chunked body would pass the size check and be read up to the app-wide body limit.
    async def chunked():  # type: ignore[no-untyped-def]
        yield b"key=" + b"x" * 8192

    resp = await web.post("/sessions/login", data=chunked(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 411
    assert "cloudsession_admin" not in resp.cookies


async def test_login_page_says_when_no_key_is_configured(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d")))
    response = await web.get("/sessions")
    assert response.status == 401
    assert "No admin key is configured" in await response.text()
    assert (await web.post("/sessions/login", data={"key": ""})).status == 401


async def test_private_share_links_keep_the_read_token(web) -> None:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": SES, "private": True})
    creds = await response.json()
    token = creds["readToken"]
    items = [item("session", session())]
    for n in range(130):
        message = user(n * 1000)
        items += [item("message", message), item("part", part(message, "text", text=f"number {n + 1}"))]
    await sync(web, creds, items)
    assert (await web.get(f"/share/{creds['id']}")).status == 404  # no token, no page
    page = soup_of(await (await web.get(f"/share/{creds['id']}", params={"token": token})).text())
    pager_links = [a["href"] for a in page.select("nav.pager a")]
    assert pager_links and all(h.endswith(f"&token={token}") for h in pager_links)
    far = page.select("#nav-list li")[120].select_one("a")["href"]
    assert far.startswith(f"?page=2&token={token}#msg-")
    assert (await web.get(f"/share/{creds['id']}{pager_links[-1]}")).status == 200
    fragments = await (await web.get(f"/share/{creds['id']}/fragments", params={"token": token, "nav": "1"})).json()
    assert f"token={token}" in fragments["nav"]
    nav = await web.get(f"/share/{creds['id']}/nav", params={"token": token, "from": "2", "to": "2", "page": "1"})
    assert nav.status == 200 and f"?page=2&amp;token={token}#msg-" in (await nav.json())["html"]
    located = await web.get(f"/share/{creds['id']}/locate", params={"token": token, "anchor": f"msg-{items[-2]['data']['id']}"})
    assert (await located.json())["page"] == 2
    # Without the token these answer 404, and tell nothing.
    for path, params in (("nav", {"from": "2"}), ("locate", {"anchor": f"msg-{items[-2]['data']['id']}"}), ("card.png", {})):
        response = await web.get(f"/share/{creds['id']}/{path}", params=params)
        assert response.status == 404 and items[-1]["data"]["text"] not in await response.text()


async def test_browser_error_page_is_html_and_passes_the_errors_headers_on(aiohttp_client, view_settings) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web as aioweb

    from cloudsession.errors import StoreUnavailable

    class Outage(StoreUnavailable):
        def headers(self) -> dict[str, str]:
            return {"Retry-After": "7"}

    async def outage(request: aioweb.Request) -> aioweb.Response:
        raise Outage()

    app = create_app(view_settings)
    app.router.add_get("/share/outage/test", outage)
    app.router.add_get("/api/outage/test", outage)
    web = await aiohttp_client(app)
    response = await web.get("/share/outage/test")
    assert response.status == 503 and response.content_type == "text/html"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["Cache-Control"] == "no-store"
    page = soup_of(await response.text())
    assert page.select_one("h1").get_text() == "503 - Service Unavailable"
    assert "try again in 7 seconds" in page.get_text()
    assert page.select('a[href^="/sessions"]') == []
    api = await web.get("/api/outage/test")
    assert api.status == 503 and api.headers["Retry-After"] == "7" and (await api.json()) == {"error": "Storage unavailable"}


# --------------------------------------------------------------------------- compression and caching


async def test_html_and_json_are_gzipped_when_the_client_accepts_it(web) -> None:  # type: ignore[no-untyped-def]
    import gzip

    creds = await create(web)
    await sync(web, creds, rich_items())
    for path in (f"/share/{creds['id']}", f"/api/share/{creds['id']}/data"):
        plain = await web.get(path, headers={"Accept-Encoding": "identity"}, auto_decompress=False)
        raw = await plain.read()
        assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
        packed = await web.get(path, headers={"Accept-Encoding": "br;q=0.5, gzip;q=0.8"}, auto_decompress=False)
        assert packed.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in packed.headers["Vary"]
        body = await packed.read()
        assert gzip.decompress(body) == raw and len(body) < len(raw) / 3
        # Refused by q-value: sent as it is.
        refused = await web.get(path, headers={"Accept-Encoding": "gzip;q=0, deflate"}, auto_decompress=False)
        assert "Content-Encoding" not in refused.headers and await refused.read() == raw
        starred = await web.get(path, headers={"Accept-Encoding": "*;q=0.5, br;q=0"}, auto_decompress=False)
        assert starred.headers["Content-Encoding"] == "gzip"
    # A tiny body is not worth it.
    tiny = await web.get(f"/api/share/{creds['id']}/metadata", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert tiny.status == 200 and len(await tiny.read()) < 1024 and "Content-Encoding" not in tiny.headers


async def test_hashed_static_urls_are_immutable_and_others_revalidate(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    page = soup_of(await (await web.get(f"/share/{creds['id']}")).text())
    css = page.select_one('link[rel="stylesheet"]')["href"]
    assert re.fullmatch(r"/static/app\.css\?v=[0-9a-f]{12}", css)
    hashed = await web.get(css, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert hashed.status == 200 and hashed.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert hashed.headers["Content-Encoding"] == "gzip" and hashed.content_type == "text/css"
    assert hashed.headers["X-Content-Type-Options"] == "nosniff"
    etag = hashed.headers["ETag"]
    stale = await web.get("/static/app.css?v=000000000000")
    assert stale.headers["Cache-Control"] == "no-cache" and stale.headers["ETag"] == etag
    again = await web.get("/static/app.css", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["Vary"] == hashed.headers["Vary"] == "Accept-Encoding"  # a 304 repeats its 200's Vary
    script = await web.get(page.select("script[src]")[-1]["src"])
    assert script.content_type == "text/javascript"
    for bad in ("/static/nope.css", "/static/..%2Fpages.py", "/static/%2e%2e%2fapp.py", "/static/"):
        assert (await web.get(bad)).status == 404, bad


async def test_public_share_pages_are_briefly_cacheable_with_an_etag(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    await sync(web, creds, rich_items())
    first = await web.get(f"/share/{creds['id']}")
    assert first.headers["Cache-Control"] == "public, max-age=30, stale-while-revalidate=300"
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    same = await web.get(f"/share/{creds['id']}", headers={"If-None-Match": etag})
    assert same.status == 304 and same.headers["ETag"] == etag and await same.read() == b""
    assert same.headers["Vary"] == "Accept-Encoding"
    assert "Content-Security-Policy" in same.headers
    assert (await web.get(f"/share/{creds['id']}", headers={"If-None-Match": '"other", ' + etag})).status == 304
    assert (await web.get(f"/share/{creds['id']}?page=2", headers={"If-None-Match": etag})).status in (200, 304)
    message = user(99_000)
    await sync(web, creds, [item("message", message), item("part", part(message, "text", text="a new one"))])
    changed = await web.get(f"/share/{creds['id']}", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    # The live fragments are never cached.
    fragments = await web.get(f"/share/{creds['id']}/fragments", params={"header": "1"})
    assert fragments.headers["Cache-Control"] == "no-store"


async def test_private_share_pages_are_never_stored(web) -> None:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": SES, "private": True})
    creds = await response.json()
    await sync(web, creds, rich_items())
    token = creds["readToken"]
    page = await web.get(f"/share/{creds['id']}", params={"token": token})
    assert page.status == 200
    assert page.headers["Cache-Control"] == "private, no-store" and "ETag" not in page.headers


async def test_search_counts_matches_on_every_page(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = [item("session", session())]
    for n in range(130):
        message = user(n * 1000)
        word = "needle" if n in (3, 120, 125) else "hay"
        items += [item("message", message), item("part", part(message, "text", text=f"number {n + 1}: {word} and NEEDLE" if word == "needle" else f"number {n + 1}"))]
    await sync(web, creds, items)
    response = await web.get(f"/share/{creds['id']}/search", params={"q": "Needle"})
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    found = await response.json()
    assert found["total"] == 6 and found["pages"] == [{"page": 1, "count": 2}, {"page": 2, "count": 4}]
    assert [h["number"] for h in found["hits"]] == [4, 121, 126]
    assert found["hits"][1]["href"] == f"?page=2#msg-{found['hits'][1]['id']}"
    assert found["hits"][0]["snippet"] == "number 4: needle and NEEDLE"
    for bad in ({"q": "x"}, {"q": "x" * 201}, {}):
        assert (await web.get(f"/share/{creds['id']}/search", params=bad)).status == 400
    assert (await web.get("/share/Nope1234/search", params={"q": "abc"})).status == 404


# --------------------------------------------------------------------------- social card


async def test_social_card_is_named_by_the_page_and_drawn_once_per_version(web) -> None:  # type: ignore[no-untyped-def]
    from io import BytesIO

    from PIL import Image

    from cloudsession.web.keys import RENDERER

    creds = await create(web)
    await sync(web, creds, rich_items())
    page_response = await web.get(f"/share/{creds['id']}")
    page_cache = page_response.headers["Cache-Control"]
    page = soup_of(await page_response.text())
    image_url = page.select_one('meta[property="og:image"]')["content"]
    # Absolute, from PUBLIC_URL, and versioned by what the card shows.
    assert re.fullmatch(rf"http://share\.test/share/{creds['id']}/card\.png\?v=[0-9a-f]{{16}}", image_url)
    assert page.select_one('meta[name="twitter:image"]')["content"] == image_url
    assert page.select_one('meta[name="twitter:card"]')["content"] == "summary_large_image"
    cards = web.server.app[RENDERER].pages.cards
    drawn = cards.drawn
    path = image_url.removeprefix("http://share.test")
    response = await web.get(path)
    assert response.status == 200 and response.content_type == "image/png"
    assert response.headers["Cache-Control"] == page_cache  # cached like the page
    etag = response.headers["ETag"]
    with Image.open(BytesIO(await response.read())) as image:
        assert image.size == (1200, 630) and image.format == "PNG"
    again = await web.get(path, headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    assert "Vary" not in again.headers and "Vary" not in response.headers  # an image does not vary
    assert (await web.get(path)).headers["ETag"] == etag
    assert cards.drawn == drawn + 1  # three requests, one drawing
    # A new title is a new version: a new URL on the page and a new card.
    await sync(web, creds, [item("session", session(title="Renamed"))])
    page = soup_of(await (await web.get(f"/share/{creds['id']}")).text())
    assert page.select_one('meta[property="og:image"]')["content"] != image_url
    assert (await web.get(path, headers={"If-None-Match": etag})).status == 200
    assert cards.drawn == drawn + 2


async def test_private_share_card_needs_the_read_token_and_is_never_named(web) -> None:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": SES, "private": True})
    creds = await response.json()
    await sync(web, creds, rich_items())
    assert (await web.get(f"/share/{creds['id']}/card.png")).status == 404
    assert (await web.get(f"/share/{creds['id']}/card.png", params={"token": "rt_wrong"})).status == 404
    card = await web.get(f"/share/{creds['id']}/card.png", params={"token": creds["readToken"]})
    assert card.status == 200 and card.headers["Cache-Control"] == "private, no-store" and "ETag" not in card.headers
    page = soup_of(await (await web.get(f"/share/{creds['id']}", params={"token": creds["readToken"]})).text())
    assert page.select('meta[property="og:image"], meta[name="twitter:image"]') == []
    assert page.select_one('meta[name="twitter:card"]')["content"] == "summary"


# --------------------------------------------------------------------------- navigator and anchors


async def test_locate_names_the_page_of_a_message_or_a_part(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    items = [item("session", session())]
    for n in range(230):
        message = user(n * 1000)
        items += [item("message", message), item("part", part(message, "text", text=f"number {n + 1}"))]
    await sync(web, creds, items)
    parts = [i["data"] for i in items if i["type"] == "part"]
    for index, page in ((0, 1), (150, 2), (229, 3)):
        for anchor in (f"msg-{parts[index]['messageID']}", f"part-{parts[index]['id']}"):
            response = await web.get(f"/share/{creds['id']}/locate", params={"anchor": anchor})
            assert response.status == 200
            assert await response.json() == {"page": page, "message": parts[index]["messageID"]}
    for anchor, status in (("part-prt_unknown", 404), (f"part-{parts[0]['messageID']}", 404), ("msg-", 400), ("diff-1", 400), ("x" * 300, 400)):
        assert (await web.get(f"/share/{creds['id']}/locate", params={"anchor": anchor})).status == status, anchor
    nav = await (await web.get(f"/share/{creds['id']}/nav", params={"from": "3", "to": "3", "page": "1"})).json()
    assert nav["pages"] == 3
    entries = soup_of(nav["html"]).select("li[data-id]")
    assert len(entries) == 30 and entries[0].select_one("a")["href"] == f"?page=3#msg-{parts[200]['messageID']}"
