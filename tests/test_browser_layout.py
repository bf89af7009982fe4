"""The share page's layout in a real browser (Debian's Chromium through Playwright, against a
real ``cloudsession serve``): no horizontal page scroll at any width from 320 to 2560 px, in
both themes, on a share built to widen the page (very wide code, wide tables, long words); the
navigator beside the reading column on wide screens and in a drawer on narrow ones; the theme
follows the system and the toggle's choice persists. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page
from servers import ServerProcess
from test_browser_share import ARTIFACTS, _start, new_share
from view_data import rich_items, wide_items

WIDTHS = [320, 390, 768, 1440, 2560]
SIDE_COLUMN_FROM = 1100  # app.css: the navigator is a side column from this width on


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("layout") / "data")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def shares(server: ServerProcess) -> dict[str, str]:
    return {"wide": new_share(server, wide_items())["id"], "rich": new_share(server, rich_items())["id"]}


def open_page(browser: Browser, url: str, width: int, scheme: str) -> Page:
    context = browser.new_context(viewport={"width": width, "height": 800}, color_scheme=scheme)  # type: ignore[arg-type]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_selector("#live-status.ok", timeout=10_000)
    return page


def lay_out_whole(page: Page) -> None:
    """Lays the page out as printed: every message, not only those near the viewport (a message
    skipped off screen, content-visibility, neither overflows nor shows in a full-page screenshot)."""
    states = "Array.from(document.querySelectorAll('#messages > article')).map(a => getComputedStyle(a).contentVisibility)"
    if page.locator("#messages > article").count() > 3:
        # Once share.js has let go of its one full lay-out, messages off screen are skipped.
        page.wait_for_function("() => !document.documentElement.classList.contains('laid-out')", timeout=5_000)
        page.wait_for_function(f"() => {states}.includes('auto')", timeout=5_000)
    page.emulate_media(media="print")
    assert set(page.evaluate(states)) == {"visible"}


def overflow(page: Page) -> dict[str, float]:
    return page.evaluate(
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " body: document.body.scrollWidth})"
    )


def open_everything(page: Page) -> None:
    # Collapsed sections hold wide content too: the page must hold with all of them open.
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", WIDTHS)
def test_no_horizontal_page_scroll_at_any_width(browser: Browser, server: ServerProcess, shares: dict[str, str], width: int, scheme: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    columns = {}
    for name in ("wide", "rich"):
        page = open_page(browser, f"{server.url}/share/{shares[name]}", width, scheme)
        try:
            lay_out_whole(page)
            sizes = overflow(page)
            assert sizes["scroll"] <= sizes["inner"], f"{name} share at {width}px ({scheme}): {sizes}"
            open_everything(page)
            sizes = overflow(page)
            assert sizes["scroll"] <= sizes["inner"], f"{name} share at {width}px ({scheme}), all open: {sizes}"
            column = page.locator("main.container").bounding_box()
            assert column is not None and column["width"] <= min(width, 54 * 16)
            columns[name] = column["width"]
            if name == "wide":
                # The wide code is still there, scrolling inside its own box.
                code = page.locator("section.tool-bash pre.output").first
                assert code.evaluate("el => el.scrollWidth > el.clientWidth")
            page.evaluate("document.querySelectorAll('details.menu').forEach(d => d.open = false)")
            shot = f"layout-{name}-{width}-{scheme}.png"
            page.screenshot(path=str(ARTIFACTS / shot), full_page=width < 1000 and name == "rich")
            assert (ARTIFACTS / shot).stat().st_size > 5_000
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            page.context.close()
    # A stable reading column: the same width whatever the share holds.
    assert columns["wide"] == columns["rich"]


@pytest.mark.parametrize("width", [390, 1440])
def test_navigator_is_a_side_column_on_wide_screens_and_a_drawer_on_phones(browser: Browser, server: ServerProcess, shares: dict[str, str], width: int) -> None:
    page = open_page(browser, f"{server.url}/share/{shares['rich']}", width, "light")
    try:
        navigator = page.locator("#navigator")
        main = page.locator("main.container").bounding_box()
        assert main is not None
        if width >= SIDE_COLUMN_FROM:
            assert navigator.is_visible()
            box = navigator.bounding_box()
            assert box is not None and box["x"] >= main["x"] + main["width"] - 1  # beside, not below
            assert not page.locator("#nav-toggle").is_visible()
        else:
            # Not after all the messages: hidden until the reader asks for it from the top bar.
            assert not navigator.is_visible()
            page.click("#nav-toggle")
            assert navigator.is_visible()
            box = navigator.bounding_box()
            assert box is not None and box["y"] < 100 and box["width"] <= width
            assert overflow(page)["scroll"] <= width
            page.locator("#nav-list a").nth(1).click()
            assert not navigator.is_visible()  # following a link closes the drawer
    finally:
        page.context.close()


def test_navigator_drawer_opens_without_javascript(browser: Browser, server: ServerProcess, shares: dict[str, str]) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{server.url}/share/{shares['rich']}")
        assert not page.locator("#navigator").is_visible()
        page.click("#nav-toggle")
        assert page.locator("#navigator").is_visible()
    finally:
        context.close()


def test_theme_follows_the_system_and_the_toggle_persists(browser: Browser, server: ServerProcess, shares: dict[str, str]) -> None:
    page = open_page(browser, f"{server.url}/share/{shares['rich']}", 1440, "dark")
    try:
        background = "getComputedStyle(document.body).backgroundColor"
        dark = page.evaluate(background)
        assert dark == "rgb(10, 10, 10)"
        page.click("#theme-toggle")
        assert page.evaluate("document.documentElement.dataset.theme") == "light"
        assert page.evaluate(background) == "rgb(255, 255, 255)"
        page.reload()
        page.wait_for_selector("#live-status.ok")
        assert page.evaluate(background) == "rgb(255, 255, 255)"  # the choice outlives the page
        page.click("#theme-toggle")
        assert page.evaluate(background) == "rgb(10, 10, 10)"
    finally:
        page.context.close()
    light = open_page(browser, f"{server.url}/share/{shares['rich']}", 1440, "light")
    try:
        assert light.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
        # Prose is set in a proportional face, code in a monospace one.
        prose = light.evaluate("getComputedStyle(document.querySelector('.text-content p')).fontFamily")
        code = light.evaluate("getComputedStyle(document.querySelector('pre')).fontFamily")
        assert "monospace" not in prose and "monospace" in code
    finally:
        light.context.close()


def test_times_are_localised_by_the_page_script(browser: Browser, server: ServerProcess, shares: dict[str, str]) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 800}, timezone_id="Asia/Tokyo", locale="en-GB")
    page = context.new_page()
    try:
        page.goto(f"{server.url}/share/{shares['rich']}")
        first = page.locator("#messages time").first
        page.wait_for_function("() => document.querySelector('#messages time').hasAttribute('data-local')")
        iso = first.get_attribute("datetime")
        assert iso is not None and iso.endswith("Z")
        shown = first.inner_text()
        assert "UTC" not in shown
        expected = page.evaluate(
            "iso => new Intl.DateTimeFormat(undefined, {year: 'numeric', month: 'short', day: 'numeric', hour: 'numeric',"
            " minute: '2-digit', second: '2-digit'}).format(new Date(iso))",
            iso,
        )
        assert shown == expected
        assert first.get_attribute("title") == iso
    finally:
        context.close()
