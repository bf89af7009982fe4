"""Diffs with hostile hunk headers: line numbers too long for ``int()`` (Python refuses more than
4,300 digits) or written in non-ASCII digits must never turn a share's page into a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from factories import settings_for_tests
from view_data import ROOT, SES, assistant, item, part, session, tool, user

from cloudsession.render import html as render
from cloudsession.web.app import create_app

HUGE = "9" * 5000
HOSTILE_HEADERS = [
    f"@@ -{HUGE} +1 @@",
    f"@@ -1 +{HUGE} @@",
    f"@@ -1,{HUGE} +1,{HUGE} @@",
    "@@ -\u0661\u0662 +\u0663 @@",  # Arabic-Indic digits: \d matches them, int() accepts them
]


@pytest.mark.parametrize("header", HOSTILE_HEADERS)
def test_hunk_header_with_unusable_line_numbers_is_shown_as_text(header: str) -> None:
    rows, truncated = render.parse_unified_diff(f"--- a/f\n+++ b/f\n{header}\n-old\n+new\n@@ -7 +7 @@\n ctx\n")
    assert not truncated
    # The hostile header is shown as a plain row; the next well-formed hunk numbers its lines.
    assert (rows[0].kind, rows[0].text) == ("hunk", header)
    assert [(r.kind, r.text, r.old, r.new) for r in rows[-2:]] == [("hunk", "@@ -7 +7 @@", None, None), ("ctx", "ctx", 7, 7)]
    assert all(r.old is None or r.old < 10**18 for r in rows) and all(r.new is None or r.new < 10**18 for r in rows)


def _items_with_patch(patch: str) -> list[dict[str, Any]]:
    u = user(1000, summary={"diffs": [{"file": "a.py", "patch": patch, "additions": 1, "deletions": 1}]})
    a = assistant(u, 2000)
    edit = tool(a, "edit", "completed", {"filePath": f"{ROOT}/a.py", "oldString": "old", "newString": "new"},
                title="a.py", output="ok", metadata={"diff": patch})
    return [
        item("session", session()),
        item("message", u),
        item("message", a),
        item("part", part(u, "text", text="edit please")),
        item("part", edit),
        item("session_diff", [{"file": "a.py", "patch": patch, "additions": 1, "deletions": 1, "status": "modified"}]),
    ]


async def test_share_page_with_a_5000_digit_hunk_header_renders(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))
    creds = await (await web.post("/api/share", json={"sessionID": SES})).json()
    patch = f"--- a/a.py\n+++ b/a.py\n@@ -{HUGE} +1 @@\n-old line\n+new line\n"
    items = _items_with_patch(patch)
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items})
    assert response.status == 200
    page = await web.get(f"/share/{creds['id']}")
    assert page.status == 200
    text = BeautifulSoup(await page.text(), "html.parser").get_text()
    assert "new line" in text and "old line" in text
    ids = [("id", i["data"]["id"]) for i in items if i["type"] == "message"]
    fragments = await web.get(f"/share/{creds['id']}/fragments", params=ids + [("header", "1"), ("diffs", "1")])
    assert fragments.status == 200
    body = await fragments.json()
    assert len(body["messages"]) == 2 and "new line" in body["diffs"]
