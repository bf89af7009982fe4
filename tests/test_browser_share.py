"""Real-browser tests: Chromium (the Debian package) driven by Playwright against a real
``cloudsession serve`` process. Shares are created and synced through the HTTP API exactly as
opencode does, and the page is watched for in-place updates, hostile content and navigation.
Screenshots of the session list and a rich share page are saved under test-artifacts/.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page
from servers import ServerProcess
from view_data import hostile_items, item, load_fixture_items, part, rich_items, session, user

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN_KEY = "browser-admin-key-0123456789"
_sessions = iter(range(1, 10_000))


# --------------------------------------------------------------------------- fixtures


def _start(data_dir: Path, port: int | None = None) -> ServerProcess:
    return ServerProcess(data_dir, {"SESSIONS_RPC_SHARED_KEY": ADMIN_KEY}, port=port).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("browser") / "data")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.errors = errors  # type: ignore[attr-defined]
    try:
        yield tab
    finally:
        context.close()


# --------------------------------------------------------------------------- API helpers


def call(server: ServerProcess, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def new_share(server: ServerProcess, items: list[dict[str, Any]] | None = None) -> dict[str, str]:
    session_id = f"ses_browser{next(_sessions):05d}zzzzzzzzzzzzzzz"
    creds = call(server, "POST", "/api/share", {"sessionID": session_id})
    creds["session_id"] = session_id
    if items:
        sync(server, creds, items)
    return creds


def sync(server: ServerProcess, creds: dict[str, str], items: list[dict[str, Any]]) -> int:
    return call(server, "POST", f"/api/share/{creds['id']}/sync", {"secret": creds["secret"], "data": items})["syncCount"]


def open_live(page: Page, server: ServerProcess, share_id: str, query: str = "") -> None:
    page.goto(f"{server.url}/share/{share_id}{query}")
    page.wait_for_selector("#live-status.ok", timeout=10_000)
    page.evaluate("window.__sameDocument = true")


def conversation(count: int, words: int = 30) -> list[dict[str, Any]]:
    items = [item("session", session(title=f"A conversation of {count} messages"))]
    for n in range(count):
        message = user(n * 1000)
        text = f"**Message {n + 1}.** " + " ".join(f"word{w}" for w in range(words))
        items += [item("message", message), item("part", part(message, "text", text=text))]
    return items


# --------------------------------------------------------------------------- tests


def test_a_synced_message_appears_without_a_reload(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, load_fixture_items())
    open_live(page, server, creds["id"])
    assert page.locator("#messages article").count() == 5
    message = user(10 * 60_000, id="msg_1fc690000001LiveUpdateAAAA")
    sent = time.monotonic()
    sync(server, creds, [item("message", message), item("part", part(message, "text", text="Hello from **the live test**"))])
    page.wait_for_selector(f"#msg-{message['id']} strong", timeout=5_000)
    latency = time.monotonic() - sent
    print(f"sync to visible: {latency * 1000:.0f} ms")
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.locator("#messages article").count() == 6
    assert page.locator("#nav-count").inner_text() == "6"
    assert "6 messages" in page.locator("#share-header").inner_text()
    assert page.locator("#messages article").last.get_attribute("id") == f"msg-{message['id']}"
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_changed_part_is_replaced_in_place_keeping_scroll_and_open_sections(page: Page, server: ServerProcess) -> None:
    items = conversation(40)
    creds = new_share(server, items)
    open_live(page, server, creds["id"])
    messages = [i["data"] for i in items if i["type"] == "message"]
    parts = [i["data"] for i in items if i["type"] == "part"]
    reading = page.locator(f"#msg-{messages[30]['id']}")
    reading.scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, -100)")
    # The reader reads what is on screen: the messages scrolled into view are laid out in the
    # next frame (until then they have their 320 px estimate).
    page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    top_before = reading.bounding_box()["y"]
    old_hash = page.locator(f"#msg-{messages[5]['id']}").get_attribute("data-hash")
    # Message 6, far above the viewport, grows by many lines and gains a reasoning block.
    grown = {**parts[5], "text": parts[5]["text"] + "\n\n" + "\n\n".join(f"new paragraph {n}" for n in range(30))}
    reasoning = part(messages[5], "reasoning", text="thinking", time={"start": 1, "end": 2})
    sync(server, creds, [item("part", grown), item("part", reasoning)])
    page.wait_for_function(
        "([id, old]) => document.getElementById(id).getAttribute('data-hash') !== old",
        arg=[f"msg-{messages[5]['id']}", old_hash],
        timeout=5_000,
    )
    assert page.evaluate("window.__sameDocument") is True
    assert abs(reading.bounding_box()["y"] - top_before) <= 2
    # textContent: the message is off screen, so skipped, and innerText reads only what is rendered.
    assert page.locator(f"#msg-{messages[5]['id']}").text_content().count("new paragraph") == 30
    # An opened section stays open when its message is re-rendered.
    details = page.locator(f"#part-{reasoning['id']} details")
    details.evaluate("d => d.open = true")
    sync(server, creds, [item("part", {**reasoning, "text": "thinking harder"})])
    page.wait_for_function(
        "id => document.getElementById(id).textContent.includes('thinking harder')",
        arg=f"part-{reasoning['id']}",
        timeout=5_000,
    )
    assert page.locator(f"#part-{reasoning['id']} details").get_attribute("open") is not None


def test_reconnect_catches_up_on_syncs_missed_while_disconnected(page: Page, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start(data)
    other = _start(data)  # a second process on the same store: it takes the sync while the first is down
    try:
        creds = new_share(first, load_fixture_items())
        open_live(page, first, creds["id"])
        port = first.port
        first.stop()
        page.wait_for_selector("#live-status.down", timeout=10_000)
        message = user(10 * 60_000, id="msg_1fc690000002MissedWhileDown")
        sync(other, creds, [item("message", message), item("part", part(message, "text", text="sent while you were away"))])
        first = _start(data, port=port)
        page.wait_for_selector(f"#msg-{message['id']}", timeout=40_000)
        page.wait_for_selector("#live-status.ok", timeout=10_000)
        assert page.evaluate("window.__sameDocument") is True
        assert "6 messages" in page.locator("#share-header").inner_text()
    finally:
        first.stop()
        other.stop()


def test_a_deleted_share_tells_its_viewers(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, load_fixture_items())
    open_live(page, server, creds["id"])
    call(server, "DELETE", f"/api/share/{creds['id']}", {"secret": creds["secret"]})
    page.wait_for_selector("#live-banner.gone", timeout=5_000)
    assert "deleted" in page.locator("#live-banner").inner_text()
    assert page.locator("#messages article").count() == 5  # the last version stays readable


def test_xss_payloads_do_not_run(page: Page, server: ServerProcess) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    creds = new_share(server, hostile_items())
    open_live(page, server, creds["id"])
    # The same payloads again through the live path (fragments inserted into the open page).
    second = hostile_items()
    sync(server, creds, second)
    last = next(i["data"]["id"] for i in reversed(second) if i["type"] == "message")
    page.wait_for_function("id => !!document.getElementById('msg-' + id)", arg=last, timeout=5_000)
    page.mouse.move(10, 10)
    for element in page.locator("section.part").all()[:20]:
        element.hover()
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.title().startswith("<script>")  # rendered as text
    sources = page.locator("script").evaluate_all("els => els.map(e => e.getAttribute('src') || '')")
    assert len(sources) == 2 and all(s.startswith(("/static/theme.js", "/static/share.js")) for s in sources)


def test_anchor_to_a_message_on_another_page_follows_the_navigator(page: Page, server: ServerProcess) -> None:
    items = conversation(250, words=5)
    creds = new_share(server, items)
    target = [i["data"]["id"] for i in items if i["type"] == "message"][230]
    page.goto(f"{server.url}/share/{creds['id']}#msg-{target}")
    page.wait_for_url(f"**/share/{creds['id']}?page=3#msg-{target}", timeout=5_000)
    assert page.locator(f"#msg-{target}").is_visible()
    assert page.locator(f"#msg-{target}").bounding_box()["y"] < 300


def test_screenshots_of_the_session_list_and_a_rich_share(page: Page, server: ServerProcess) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    rich = new_share(server, rich_items())
    new_share(server, load_fixture_items())
    new_share(server, [item("session", session(id="ses_x", title="Refactor the storage layer", directory="/home/dev/store"))])
    page.goto(f"{server.url}/sessions")
    assert page.locator("form.login").is_visible()
    page.fill("#key", ADMIN_KEY)
    page.click("form.login button")
    page.wait_for_selector(".session-card")
    assert page.locator(".session-card").count() >= 3
    page.screenshot(path=str(ARTIFACTS / "sessions-list.png"), full_page=True)
    page.errors.clear()  # type: ignore[attr-defined]  # the sign-in form is served with a 401

    page.goto(f"{server.url}/share/{rich['id']}")
    page.wait_for_selector("#live-status.ok")
    for selector in ("section.tool-bash details.more", "section.part-reasoning details", "section.tool-read details"):
        page.locator(selector).first.evaluate("d => d.open = true")
    page.emulate_media(media="print")  # every message laid out, as printed (app.css, "Long pages")
    page.screenshot(path=str(ARTIFACTS / "share-rich.png"), full_page=True)
    page.emulate_media(media="screen")
    page.set_viewport_size({"width": 420, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "share-rich-narrow.png"))
    for name in ("sessions-list.png", "share-rich.png", "share-rich-narrow.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_revert_hides_messages_live_and_undoing_it_brings_them_back(page: Page, server: ServerProcess) -> None:
    items = conversation(6, words=4)
    creds = new_share(server, items)
    open_live(page, server, creds["id"])
    messages = [i["data"] for i in items if i["type"] == "message"]
    base = next(i["data"] for i in items if i["type"] == "session")
    assert page.locator("#messages article").count() == 6
    sync(server, creds, [item("session", {**base, "revert": {"messageID": messages[4]["id"]}})])
    page.wait_for_selector("#reverted-note", timeout=5_000)
    page.wait_for_function("() => document.querySelectorAll('#messages article').length === 4", timeout=5_000)
    assert "2 messages after a revert are hidden" in page.locator("#reverted-note").inner_text()
    assert page.locator("#nav-list li").count() == 4 and page.locator("#nav-count").inner_text() == "4"
    sync(server, creds, [item("session", base)])
    page.wait_for_function("() => document.querySelectorAll('#messages article').length === 6", timeout=5_000)
    assert page.locator("#reverted-note").count() == 0
    assert page.locator("#nav-list li").count() == 6
    ids = page.locator("#messages article").evaluate_all("els => els.map(e => e.id)")
    assert ids == [f"msg-{m['id']}" for m in messages]
    assert page.evaluate("window.__sameDocument") is True
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_navigator_follows_scrolling(page: Page, server: ServerProcess) -> None:
    items = conversation(40)
    creds = new_share(server, items)
    open_live(page, server, creds["id"])
    ids = [i["data"]["id"] for i in items if i["type"] == "message"]
    assert page.locator("#nav-list li.current").get_attribute("data-id") == ids[0]
    page.evaluate("id => document.getElementById('msg-' + id).scrollIntoView()", ids[30])
    page.wait_for_function("id => document.querySelector('#nav-list li.current').getAttribute('data-id') === id", arg=ids[30], timeout=5_000)
    assert page.locator("#nav-list li.current").count() == 1
    current = page.locator("#nav-list li.current").bounding_box()
    assert current is not None and 0 <= current["y"] <= 900  # kept in view inside the navigator
    # Prompts are plain text: no markdown syntax in the navigator.
    label = page.locator("#nav-list li.current").inner_text()
    assert label.startswith("Message 31. word0 word1") and "*" not in label


def test_search_counts_matches_and_opens_collapsed_sections(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, rich_items())
    open_live(page, server, creds["id"])
    page.fill("#find-input", "collected test_")
    page.wait_for_function("() => document.getElementById('find-count').textContent === '60 matches'", timeout=5_000)
    assert page.evaluate("CSS.highlights.get('find').size") == 60
    # The 13th match is in the collapsed rest of the bash output: showing it opens that section.
    for _ in range(13):
        page.click("#find-next")
    assert page.locator("#find-count").inner_text() == "13 of 60 matches"
    assert page.locator("section.tool-bash details.more").first.evaluate("d => d.open") is True
    page.fill("#find-input", "no such text anywhere")
    page.wait_for_function("() => document.getElementById('find-count').textContent === 'no matches'", timeout=5_000)
    assert page.errors == []  # type: ignore[attr-defined]


def test_copy_buttons_copy_code_and_deep_links(browser: Browser, server: ServerProcess) -> None:
    creds = new_share(server, rich_items())
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    tab = context.new_page()
    try:
        open_live(tab, server, creds["id"])
        command = tab.locator("section.tool-bash.status-completed pre.command").first
        command.hover()
        tab.click("#copy-button")
        assert tab.evaluate("navigator.clipboard.readText()") == "pytest -q test_greet.py"
        output = tab.locator("section.tool-bash.status-completed pre.output").first
        output.hover()
        tab.click("#copy-button")
        copied = tab.evaluate("navigator.clipboard.readText()")
        assert copied.startswith("line 1:") and copied.rstrip().endswith("line 60: collected test_060 PASSED")  # head and rest
        todo = tab.locator("section.tool-todowrite").first
        todo.hover()
        assert tab.locator("#copy-button").inner_text() == "Copy link"
        tab.click("#copy-button")
        link = tab.evaluate("navigator.clipboard.readText()")
        part_id = todo.get_attribute("id")
        assert link == f"{server.url}/share/{creds['id']}?page=1#{part_id}"
        tab.goto(link)
        assert tab.locator(f"#{part_id}").bounding_box()["y"] < 200
    finally:
        context.close()


def test_jump_to_latest_while_live(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, conversation(40))
    open_live(page, server, creds["id"])
    jump = page.locator("#jump-latest")
    assert jump.is_visible()
    jump.click()
    page.wait_for_function("() => window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 400", timeout=5_000)
    last = page.locator("#messages article").last.bounding_box()
    assert last is not None and last["y"] + last["height"] <= 900 + 20


def test_download_menu_offers_the_export_and_the_single_file(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, rich_items())
    open_live(page, server, creds["id"])
    page.click("#download-menu summary")
    links = page.locator("#download-menu a")
    assert links.count() == 2
    with page.expect_download() as info:
        links.nth(1).click()
    download = info.value
    assert download.suggested_filename == f"opencode-session-{creds['id']}.html"
    html = Path(download.path()).read_text()
    assert "<script" not in html and "Add a greeting module" in html


def test_split_diff_view_is_remembered_and_marks_changes_within_lines(page: Page, server: ServerProcess) -> None:
    from view_data import ROOT, assistant, tool

    u = user(1000)
    a = assistant(u, 2000)
    patch = "@@ -1,3 +1,3 @@\n def total(price):\n-    return price * 2\n+    return price * 3\n # end\n"
    edit = tool(a, "edit", "completed", {"filePath": f"{ROOT}/calc.py", "oldString": "2", "newString": "3"}, title="calc.py",
                output="Edit applied successfully.", metadata={"diff": patch})
    creds = new_share(server, [item("session", session()), item("message", u), item("message", a), item("part", edit)])
    open_live(page, server, creds["id"])
    # Within-line marks: just the changed character on each side.
    marks = page.evaluate("['diff-del', 'diff-add'].map(n => [...CSS.highlights.get(n)].map(r => r.toString()))")
    assert marks == [["2"], ["3"]]
    button = page.locator("section.tool-edit .diff-mode")
    assert button.inner_text() == "Split view"
    button.click()
    split = page.locator("section.tool-edit table.diff.split")
    assert split.is_visible() and not page.locator("section.tool-edit table.diff.unified-source").is_visible()
    row = split.locator("tr").nth(2)  # the changed line, old on the left and new on the right
    assert [c.inner_text().strip() for c in row.locator("td").all()] == ["2", "return price * 2", "2", "return price * 3"]
    page.reload()
    page.wait_for_selector("#live-status.ok")
    assert page.locator("section.tool-edit table.diff.split").is_visible()  # the choice persists
    page.locator("section.tool-edit .diff-mode").click()
    assert not page.locator("section.tool-edit table.diff.split").is_visible()
    assert page.locator("section.tool-edit table.diff.unified-source").is_visible()
    assert page.errors == []  # type: ignore[attr-defined]


def test_long_output_collapses_from_its_end(page: Page, server: ServerProcess) -> None:
    creds = new_share(server, rich_items())
    open_live(page, server, creds["id"])
    more = page.locator("section.tool-bash details.more").first
    more.locator("summary").click()
    less = more.locator(".collapse-end")
    less.wait_for(state="visible", timeout=5_000)  # added when the section opens (a toggle event)
    height = more.locator("pre").bounding_box()
    assert height is not None and height["height"] <= 900 * 0.7 + 2  # capped, scrolls inside
    less.click()
    page.wait_for_function("() => !document.querySelector('section.tool-bash details.more').open", timeout=5_000)


def test_search_finds_text_on_another_page(page: Page, server: ServerProcess) -> None:
    items = conversation(130, words=3)
    messages = [i["data"] for i in items if i["type"] == "message"]
    target = messages[117]
    items.append(item("part", part(target, "text", text="the zebra crossing is here")))
    creds = new_share(server, items)
    open_live(page, server, creds["id"])
    page.fill("#find-input", "zebra")
    page.wait_for_selector("#find-elsewhere a.find-page", timeout=5_000)
    assert page.locator("#find-count").inner_text() == "no matches"  # not on this page...
    link = page.locator("#find-elsewhere a.find-page")
    assert link.inner_text() == "2 (1)"  # ...but on page 2
    link.click()
    page.wait_for_url(f"**/share/{creds['id']}?page=2&find=zebra#msg-{target['id']}", timeout=5_000)
    page.wait_for_function("() => document.getElementById('find-count').textContent === '1 match'", timeout=5_000)
    assert page.locator("#find-input").input_value() == "zebra"


def test_downloads_of_a_private_share_carry_its_token(page: Page, server: ServerProcess) -> None:
    creds = call(server, "POST", "/api/share", {"sessionID": f"ses_browser{next(_sessions):05d}zzzzzzzzzzzzzzz", "private": True})
    sync(server, creds, rich_items())
    token = creds["readToken"]
    page.goto(f"{server.url}/share/{creds['id']}?token={token}")
    page.wait_for_selector("#live-status.ok")
    page.click("#download-menu summary")
    with page.expect_download() as info:
        page.locator("#download-menu a").first.click()
    exported = json.loads(Path(info.value.path()).read_text())
    assert exported["info"]["title"] == "Add a greeting module" and len(exported["messages"]) == 6


def test_the_navigator_of_a_long_share_fetches_other_pages_when_they_come_into_view(page: Page, server: ServerProcess) -> None:
    items = conversation(650, words=3)
    creds = new_share(server, items)
    ids = [i["data"]["id"] for i in items if i["type"] == "message"]
    open_live(page, server, creds["id"])
    # This page and the next inline; pages 3 to 7 are links until shown.
    assert page.locator("#nav-list li[data-id]").count() == 200
    assert page.locator("#nav-list li.nav-more").evaluate_all("els => els.map(e => e.textContent)") == [
        f"Page {n} · {50 if n == 7 else 100} prompts" for n in range(3, 8)
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "navigator-long-1440.png"))
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "/nav?" in request.url else None)
    page.evaluate("() => { const box = document.getElementById('navigator'); box.scrollTop = box.scrollHeight; }")
    page.wait_for_selector(f'#nav-list li[data-id="{ids[250]}"]', state="attached", timeout=5_000)
    assert fetched and all("/data" not in url for url in fetched)
    # A prompt of another page jumps there.
    page.locator(f'#nav-list li[data-id="{ids[250]}"] a').click()
    page.wait_for_url(f"**/share/{creds['id']}?page=3#msg-{ids[250]}", timeout=5_000)
    assert page.locator(f"#msg-{ids[250]}").is_visible()
    # Page 3's navigator: pages 2 to 4 inline, 1 and 5 to 7 links.
    assert page.locator("#nav-list li.nav-more").evaluate_all("els => els.map(e => e.getAttribute('data-from'))") == ["1", "5", "6", "7"]
    assert page.locator("#nav-list li.current").get_attribute("data-id") == ids[250]
    # On a phone the same navigator is a drawer.
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#nav-toggle")
    page.evaluate("() => { const box = document.getElementById('navigator'); box.scrollTop = 0; }")
    page.screenshot(path=str(ARTIFACTS / "navigator-long-390.png"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_bare_link_to_a_part_on_another_page_lands_on_it(page: Page, server: ServerProcess) -> None:
    items = conversation(250, words=5)
    creds = new_share(server, items)
    target = [i["data"]["id"] for i in items if i["type"] == "part"][230]
    for start in ("", "?page=2"):
        page.goto(f"{server.url}/share/{creds['id']}{start}#part-{target}")
        page.wait_for_url(f"**/share/{creds['id']}?page=3#part-{target}", timeout=5_000)
        assert page.locator(f"#part-{target}").is_visible()
        box = page.locator(f"#part-{target}").bounding_box()
        assert box is not None and box["y"] < 300
    assert page.errors == []  # type: ignore[attr-defined]
    # An anchor that names nothing stays where it is (the one 404 is the server's answer).
    page.goto(f"{server.url}/share/{creds['id']}?page=2#part-prt_nothing")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("?page=2#part-prt_nothing")
    assert [e for e in page.errors if "404" not in e] == []  # type: ignore[attr-defined]


def test_navigator_page_links_work_without_javascript(browser: Browser, server: ServerProcess) -> None:
    items = conversation(450, words=3)
    creds = new_share(server, items)
    context = browser.new_context(viewport={"width": 1400, "height": 900}, java_script_enabled=False)
    try:
        tab = context.new_page()
        tab.goto(f"{server.url}/share/{creds['id']}")
        tab.locator("#nav-list li.nav-more a", has_text="Page 4").click()
        tab.wait_for_url("**?page=4")
        assert tab.locator("#messages article").count() == 100
        assert tab.locator("#nav-list li.nav-more").evaluate_all("els => els.map(e => e.textContent)") == ["Page 1 · 100 prompts", "Page 2 · 100 prompts"]
    finally:
        context.close()


def test_the_changes_list_opens_a_collapsed_diff_and_the_card_is_an_image(page: Page, server: ServerProcess) -> None:
    big = "\n".join(f"line_{n} = {n}" for n in range(300))
    items = [*rich_items(), item("session_diff", [
        {"file": "small.py", "before": "a = 1\n", "after": "a = 2\n", "additions": 1, "deletions": 1},
        {"file": "big.py", "before": "", "after": big, "additions": 300, "deletions": 0},
    ])]
    creds = new_share(server, items)
    open_live(page, server, creds["id"])
    page.click("a.changes-link")
    assert page.locator("#diff-2").evaluate("d => d.open") is False  # over 200 lines: collapsed
    page.locator("#diff-files a", has_text="big.py").click()
    page.wait_for_function("() => document.getElementById('diff-2').open", timeout=5_000)
    assert page.locator("#diff-files li").evaluate_all("els => els.map(e => e.textContent.trim())") == ["small.py +1 −1", "big.py +300 −0"]
    card = page.locator('meta[property="og:image"]').get_attribute("content")
    assert card is not None and card.startswith(server.url + f"/share/{creds['id']}/card.png?v=")
    size = page.evaluate("""url => new Promise(done => {
        const img = new Image();
        img.onload = () => done([img.naturalWidth, img.naturalHeight]);
        img.onerror = () => done(null);
        img.src = url;
    })""", card)
    assert size == [1200, 630]
    ARTIFACTS.mkdir(exist_ok=True)
    with urllib.request.urlopen(card, timeout=10) as response:
        (ARTIFACTS / "social-card.png").write_bytes(response.read())
    assert page.errors == []  # type: ignore[attr-defined]


def test_live_prompts_join_the_navigator_only_near_this_page(page: Page, server: ServerProcess) -> None:
    items = conversation(450, words=3)
    creds = new_share(server, items)
    base = next(i["data"] for i in items if i["type"] == "session")
    # On page 1 a new prompt (it lands on page 5) leaves the link to page 5 as it is.
    open_live(page, server, creds["id"])
    before = page.locator("#nav-list").inner_html()
    first = user(10_000_000)
    sync(server, creds, [item("session", base), item("message", first), item("part", part(first, "text", text="far away prompt"))])
    page.wait_for_function("() => document.getElementById('nav-count').textContent === '451'", timeout=5_000)
    assert page.locator("#nav-list").inner_html() == before
    # On the last page it appears in place, in order.
    open_live(page, server, creds["id"], "?page=5")
    second = user(10_001_000)
    sync(server, creds, [item("message", second), item("part", part(second, "text", text="a prompt right here"))])
    page.wait_for_selector(f'#nav-list li[data-id="{second["id"]}"]', timeout=5_000)
    ids = page.locator("#nav-list li[data-id]").evaluate_all("els => els.map(e => e.getAttribute('data-id'))")
    assert ids[-2:] == [first["id"], second["id"]]
    assert page.locator(f'#nav-list li[data-id="{second["id"]}"]').inner_text().endswith("a prompt right here")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_page_script_waits_for_the_first_frame(page: Page, server: ServerProcess) -> None:
    """share.js sets nothing optional up between parsing and the first paint: a page parsed in
    one go would otherwise run all of it (diff marks, the navigator, find, the socket) before
    anything is on screen. Its work starts right after the first frame; a reader who chose split
    diffs has them before it."""
    creds = new_share(server, rich_items())
    # Runs after the deferred share.js has executed, before the first frame of a short page.
    page.add_init_script("""
        document.addEventListener("DOMContentLoaded", () => {
            window.__atParse = {
                laidOut: document.documentElement.classList.contains("laid-out"),
                findHidden: document.getElementById("find").hidden,
                diffMode: document.documentElement.getAttribute("data-diff"),
            };
        });
    """)
    page.goto(f"{server.url}/share/{creds['id']}")
    assert page.evaluate("window.__atParse") == {"laidOut": False, "findHidden": True, "diffMode": None}
    page.wait_for_selector("#live-status.ok", timeout=10_000)
    assert page.locator("#find").is_visible()
    assert page.evaluate("document.documentElement.getAttribute('data-diff')") == "unified"
    # Split view chosen earlier: the first frame already shows it.
    page.evaluate("localStorage.setItem('cloudsession-diff', 'split')")
    page.goto(f"{server.url}/share/{creds['id']}")
    at_parse = page.evaluate("window.__atParse")
    assert at_parse["diffMode"] == "split" and at_parse["laidOut"] is False, at_parse
    # A malformed #fragment names nothing: the page still goes live.
    page.goto(f"{server.url}/share/{creds['id']}#%E0%A4%A")
    page.wait_for_selector("#live-status.ok", timeout=10_000)
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_page_is_laid_out_whole_only_when_a_scroll_needs_true_sizes(page: Page, server: ServerProcess) -> None:
    """Messages off screen are skipped (content-visibility), with a 320 px estimate until they have
    been laid out. A plain visit never lays the page out whole (a page laid out whole costs the
    browser a full style pass on a theme switch and when leaving it); a scroll to a target (here a
    link to a message) does, once, so that every message remembers its true size; a new width has
    them measured again."""
    creds = new_share(server, conversation(60, words=600))
    page.add_init_script("""
        window.__laidOut = [false];
        new MutationObserver(() => {
            const on = document.documentElement.classList.contains("laid-out");
            if (window.__laidOut[window.__laidOut.length - 1] !== on) window.__laidOut.push(on);
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ["class"] });
    """)
    open_live(page, server, creds["id"])
    page.evaluate("new Promise(done => setTimeout(done, 300))")
    assert page.evaluate("window.__laidOut.join()") == "false"
    far = "document.querySelectorAll('#messages > article')[50]"

    def heights() -> tuple[float, float]:
        """The far message's height as skipped, then laid out."""
        assert page.evaluate(f"getComputedStyle({far}).contentVisibility") == "auto"
        skipped = page.evaluate(f"{far}.getBoundingClientRect().height")
        page.evaluate("document.documentElement.classList.add('laid-out')")
        true_height = page.evaluate(f"{far}.getBoundingClientRect().height")
        page.evaluate("document.documentElement.classList.remove('laid-out')")
        return skipped, true_height

    estimate, wide = heights()
    assert wide > estimate + 300, (estimate, wide)
    page.evaluate("window.__laidOut = [false]")  # heights() toggled the class itself
    target = page.evaluate("document.querySelectorAll('#messages > article')[30].id")
    page.evaluate("id => { location.hash = id; }", target)
    page.wait_for_function("() => window.__laidOut.join() === 'false,true,false'", timeout=5_000)
    margin = page.evaluate("id => parseFloat(getComputedStyle(document.getElementById(id)).scrollMarginTop) || 0", target)
    assert abs(page.locator(f"#{target}").bounding_box()["y"] - margin) <= 2  # type: ignore[index]  # at the top
    skipped, wide = heights()
    assert abs(skipped - wide) < 1, (skipped, wide)
    page.evaluate("window.__laidOut = [false]")
    page.set_viewport_size({"width": 700, "height": 900})
    page.wait_for_function("() => window.__laidOut.join() === 'false,true,false'", timeout=5_000)
    skipped, narrow = heights()
    assert abs(skipped - narrow) < 1 and narrow > wide + 100, (skipped, narrow, wide)
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_reader_at_the_bottom_sees_all_of_a_tall_live_message(page: Page, server: ServerProcess) -> None:
    """A message a live update adds or changes has no remembered size: it is laid out whole until
    a frame has recorded one, so a reader following at the bottom stays at the bottom when a tall
    one arrives or the last one grows."""
    creds = new_share(server, conversation(60))
    open_live(page, server, creds["id"])
    at_bottom = "() => window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 2"
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function(at_bottom, timeout=5_000)
    tall = user(10_000_000)
    paragraphs = "\n\n".join(f"paragraph {n} of a long answer" for n in range(80))
    text = part(tall, "text", text=paragraphs)
    sync(server, creds, [item("message", tall), item("part", text)])
    article = page.locator(f"#msg-{tall['id']}")
    article.wait_for(state="attached", timeout=5_000)
    page.wait_for_function("id => !document.getElementById(id).classList.contains('live')", arg=f"msg-{tall['id']}", timeout=5_000)
    page.wait_for_function(at_bottom, timeout=5_000)
    box = article.bounding_box()
    assert box is not None and box["height"] > 2_000  # its true height, not the 320 px estimate
    assert 0 < box["y"] + box["height"] <= 900 + 20
    # The last message grows while the reader is at the bottom.
    grown = {**text, "text": paragraphs + "\n\n" + "\n\n".join(f"then {n} more" for n in range(40))}
    sync(server, creds, [item("part", grown)])
    page.wait_for_function("id => document.getElementById(id).textContent.includes('then 39 more')", arg=f"msg-{tall['id']}", timeout=5_000)
    page.wait_for_function(at_bottom, timeout=5_000)
    box = article.bounding_box()
    assert box is not None and 0 < box["y"] + box["height"] <= 900 + 20
    assert page.errors == []  # type: ignore[attr-defined]
