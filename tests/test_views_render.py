"""Unit tests of cloudsession.render: sanitised markdown, highlighting, diffs, formatting, and the
defensive handling of odd values that share data may contain."""

from __future__ import annotations

from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from cloudsession.render import html as render

STATIC = Path(__file__).resolve().parents[1] / "cloudsession" / "static"


@pytest.mark.parametrize(
    "source",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "![i](javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=//evil></iframe>",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        '```"><script>alert(1)</script>\ncode\n```',
    ],
)
def test_markdown_never_emits_active_content(source: str) -> None:
    soup = BeautifulSoup(str(render.render_markdown(source)), "html.parser")
    assert soup.find_all(["script", "img", "iframe", "object", "embed", "style"]) == []
    for element in soup.find_all(True):
        assert not [a for a in element.attrs if a.lower().startswith("on")]
        for attribute in ("href", "src"):
            value = element.get(attribute, "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "vbscript:"))


def test_markdown_keeps_ordinary_formatting() -> None:
    html = str(render.render_markdown("**b** _i_ `c`\nnext line\n\n- a\n- b\n\n> q"))
    for fragment in ("<strong>b</strong>", "<em>i</em>", "<code>c</code>", "<br>", "<li>a</li>", "<blockquote>"):
        assert fragment in html


def test_markdown_images_become_links() -> None:
    html = str(render.render_markdown("![diagram](https://example.com/d.png)"))
    assert '<a href="https://example.com/d.png"' in html and "[image: diagram]" in html


def test_huge_markdown_falls_back_to_escaped_text() -> None:
    html = str(render.render_markdown("<b>" + "x" * render.MAX_MARKDOWN_CHARS))
    assert html.startswith('<pre class="plain">&lt;b&gt;')


def test_highlight_uses_the_file_extension_and_escapes() -> None:
    html = str(render.highlight('x = "<b>"', filename="/a/b/c.py"))
    # Tokens neither theme colours (the name x) carry no span: fewer elements, the same look.
    assert 'x <span class="o">=</span>' in html and "&lt;b&gt;" in html
    assert str(render.highlight("<b>", filename="notes.unknownext")) == "&lt;b&gt;"
    assert "<span" in str(render.highlight("const a = 1", filename="x.tsx"))
    big = "a = 1\n" * (render.MAX_HIGHLIGHT_CHARS // 5)
    assert "<span" not in str(render.highlight(big, filename="x.py"))


def test_split_output_collapses_long_text_and_keeps_highlighting_per_line() -> None:
    code = "\n".join(f's{n} = """<{n}>"""' for n in range(30))
    out = render.split_output(code, filename="x.py")
    assert out.rest_lines == 30 - render.PREVIEW_LINES
    assert str(out.head).count("\n") == render.PREVIEW_LINES - 1
    assert "&lt;29&gt;" in str(out.rest) and "<span" in str(out.rest)
    short = render.split_output("a\nb")
    assert (str(short.head), str(short.rest), short.rest_lines) == ("a\nb", "", 0)


def test_split_output_cuts_beyond_the_limit() -> None:
    out = render.split_output("x" * (render.MAX_OUTPUT_CHARS + 10))
    assert out.cut_chars == 10


def test_unified_diff_rows_and_line_numbers() -> None:
    rows, truncated = render.parse_unified_diff(
        "--- a/f\n+++ b/f\n@@ -10,3 +10,3 @@ def f():\n a\n-b\n+B\n c\n\\ No newline at end of file\n"
    )
    assert not truncated
    assert [(r.kind, r.text, r.old, r.new) for r in rows] == [
        ("hunk", "@@ -10,3 +10,3 @@ def f():", None, None),
        ("ctx", "a", 10, 10),
        ("del", "b", 11, None),
        ("add", "B", None, 11),
        ("ctx", "c", 12, 12),
        ("note", "\\ No newline at end of file", None, None),
    ]


def test_file_diff_accepts_all_three_shapes() -> None:
    snapshot = render.file_diff({"file": "a.py", "patch": "@@ -1 +1 @@\n-x\n+y\n", "additions": 1, "deletions": 1, "status": "modified"})
    assert (snapshot.path, snapshot.status, snapshot.additions, snapshot.deletions) == ("a.py", "modified", 1, 1)
    v2 = render.file_diff({"path": "b.py", "status": "added", "additions": 1, "deletions": 0, "patch": "@@ -0,0 +1 @@\n+z\n"})
    assert v2.path == "b.py" and [r.kind for r in v2.lines] == ["hunk", "add"]
    legacy = render.file_diff({"file": "c.py", "before": "1\n2\n", "after": "1\n3\n"})
    assert (legacy.additions, legacy.deletions) == (1, 1)
    junk = render.file_diff({"file": 5, "patch": ["not", "text"], "additions": "many"})
    assert (junk.path, junk.lines, junk.additions) == ("5", [], 0)


def test_diff_is_cut_at_the_line_limit() -> None:
    patch = "@@ -1 +1 @@\n" + "+x\n" * (render.MAX_DIFF_LINES + 5)
    rows, truncated = render.parse_unified_diff(patch)
    assert truncated and len(rows) == render.MAX_DIFF_LINES


@pytest.mark.parametrize(
    ("ms", "seconds", "expected"),
    [
        (1_736_937_005_000, True, "Jan 15, 10:30:05 AM"),
        (1_763_698_620_000, False, "Nov 21, 04:17 AM"),
        (1_736_899_200_000, True, "Jan 15, 12:00:00 AM"),
        (1_736_942_400_000, True, "Jan 15, 12:00:00 PM"),
        (None, True, ""),
        ("soon", True, ""),
        (10**20, True, ""),
    ],
)
def test_format_time_matches_the_reference(ms: object, seconds: bool, expected: str) -> None:
    assert render.format_time(ms, seconds=seconds) == expected


def test_number_cost_duration_formats() -> None:
    assert render.format_number(1801) == "1,801"
    assert render.format_number("x") == "0"
    assert render.format_cost(0.5) == "$0.50" and render.format_cost(6.15) == "$6.15" and render.format_cost(0.001) == "<$0.01"
    assert render.format_cost(1234.5) == "$1,234.50"
    assert render.plural(1, "sync") == "1 sync" and render.plural(2, "sync") == "2 syncs" and render.plural(0, "file") == "0 files"
    assert render.plural(1801, "message") == "1,801 messages"
    assert render.format_time_utc(1_736_937_005_000) == "Jan 15, 2025, 10:30:05 UTC"
    assert render.format_cost(0) == "" and render.format_cost(True) == ""
    assert render.format_duration(1000, 1850) == "850ms"
    assert render.format_duration(0, 5000) == "" and render.format_duration(5000, 1000) == ""
    assert render.format_duration(0 + 1, 125_001) == "2m 05s"


def test_coercion_helpers_never_pass_structures_through() -> None:
    assert render.as_text({"a": 1}) == "" and render.as_text(float("nan")) == "" and render.as_text(3) == "3"
    assert render.dig({"a": {"b": 2}}, "a", "b") == 2 and render.dig({"a": [1]}, "a", "b") is None
    assert render.safe_http_url("javascript:alert(1)") == "" and render.safe_http_url("https://x.y/z") == "https://x.y/z"
    assert render.safe_http_url('https://x.y/"onmouseover=1') == ""


def test_tool_view_normalises_states() -> None:
    aborted = render.tool_view({"tool": "bash", "state": {"status": "error", "error": "Tool execution aborted", "input": {}}})
    assert aborted.status == "aborted"
    odd = render.tool_view({"tool": ["x"], "state": "broken"})
    assert (odd.tool, odd.status, odd.input, odd.output) == ("tool", "unknown", {}, "")


def test_attachments_inline_only_raster_images() -> None:
    png = render.attachment({"mime": "image/png", "url": "data:image/png;base64,iVBORw0KGgo=", "filename": "a.png"})
    assert png.image_src.startswith("data:image/png")
    svg = render.attachment({"mime": "image/svg+xml", "url": "data:image/svg+xml;base64,PHN2Zy8+"})
    assert svg.image_src == "" and svg.text == ""
    remote = render.attachment({"mime": "text/plain", "url": "https://example.com/x.txt"})
    assert remote.link == "https://example.com/x.txt" and remote.filename == "x.txt"
    local = render.attachment({"mime": "text/plain", "url": "file:///etc/passwd"})
    assert local.link == "" and local.filename == "passwd"


def test_highlight_css_is_the_generated_file() -> None:
    # static/highlight.css is generated; regenerate it with render.highlight_css() if this fails.
    assert (STATIC / "highlight.css").read_text() == render.highlight_css()


def test_compact_drops_only_whitespace_that_renders_as_nothing() -> None:
    from cloudsession.render.pages import compact

    html = (
        '<article class="m">\n  <header>\n    <span>a</span>\n    <span>b</span>\n  </header>\n'
        '  <pre class="x">\n<span>  one</span>\n  <span>two</span>\n</pre>\n'
        '  <table><tr>\n<td class="dc">    <span>indented</span></td>\n<td> </td></tr></table>\n</article>\n'
    )
    assert compact(html) == (
        '<article class="m"><header><span>a</span>\n    <span>b</span></header>'
        '<pre class="x">\n<span>  one</span>\n  <span>two</span>\n</pre>'
        '<table><tr>\n<td class="dc">    <span>indented</span></td>\n<td> </td></tr></table></article>'
    )  # next to a table cell nothing is touched (diff cells keep their whitespace)
