"""Turning share data into safe HTML pieces for the browser views.

Everything a share contains was written by whoever holds its secret, so every value is treated as
hostile: markdown is rendered without raw HTML and then sanitised with an allow-list (nh3), code is
highlighted on the server by Pygments (which escapes what it emits), diffs are parsed into rows the
templates escape, and the small formatting helpers return plain strings. Functions that return
``Markup`` are the only sources of unescaped HTML in the templates, and each says why it is safe.

Rendering cost is bounded: highlighting and markdown stop at size limits and fall back to escaped
plain text, and long outputs are split into a visible head and a collapsed rest.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_by_name, get_lexer_for_filename
from pygments.util import ClassNotFound

# Pygments runs at roughly a megabyte per second; past this size code is shown escaped but plain,
# so one huge file cannot make a page slow.
MAX_HIGHLIGHT_CHARS = 100_000
# markdown-it-py is pure Python; a text part beyond this is shown as escaped preformatted text.
MAX_MARKDOWN_CHARS = 200_000
# Tool output beyond this is cut on the page (the full data stays available at /data).
MAX_OUTPUT_CHARS = 64_000
# Outputs longer than this many lines show a head and a collapsed "show more" rest.
PREVIEW_LINES = 12
# Diffs beyond this many lines are cut; a pathological patch must not produce a huge page.
MAX_DIFF_LINES = 4_000
# Images embedded as data: URLs are shown inline only up to this length.
MAX_INLINE_IMAGE_CHARS = 3_000_000
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

HIGHLIGHT_CSS_CLASS = "hl"
# Pygments styles for the light and the dark theme (static/highlight.css carries both).
HIGHLIGHT_STYLE_LIGHT = "default"
HIGHLIGHT_STYLE = "monokai"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --------------------------------------------------------------------------- value coercion
# Share data is arbitrary JSON; these keep templates from ever meeting an unexpected type.


def as_text(value: Any) -> str:
    """A displayable string for a scalar, or "" for anything else (objects, lists, null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return str(value)
    return ""


def as_number(value: Any) -> float:
    """A finite number, or 0 (booleans and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return value


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through dicts only; None as soon as a step is missing or not a dict."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def pretty_json(value: Any, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Indented JSON for generic display, cut at ``limit`` characters."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "\n…"


# --------------------------------------------------------------------------- formatting


def _utc(ms: Any) -> datetime | None:
    number = as_number(ms)
    if number <= 0:
        return None
    try:
        return datetime.fromtimestamp(number / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def format_time(ms: Any, *, seconds: bool = True) -> str:
    """The reference's en-US UTC format: ``Jan 15, 10:30:05 AM`` (no seconds on the list page)."""
    moment = _utc(ms)
    if moment is None:
        return ""
    hour = moment.hour % 12 or 12
    clock = f"{hour:02d}:{moment.minute:02d}" + (f":{moment.second:02d}" if seconds else "")
    return f"{_MONTHS[moment.month - 1]} {moment.day}, {clock} {'AM' if moment.hour < 12 else 'PM'}"


def iso_time(ms: Any) -> str:
    """Machine-readable time for ``<time datetime>`` and tooltips."""
    moment = _utc(ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def format_time_utc(ms: Any) -> str:
    """The fallback text of a ``<time>`` on the share page, before the page script localises
    it: unambiguous without JavaScript (``Jan 15, 2025, 10:30:05 UTC``)."""
    moment = _utc(ms)
    if moment is None:
        return ""
    return f"{_MONTHS[moment.month - 1]} {moment.day}, {moment.year}, {moment:%H:%M:%S} UTC"


def format_number(value: Any) -> str:
    """en-US thousands separators: ``1,801``."""
    number = as_number(value)
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,.2f}"


def plural(count: Any, word: str, words: str | None = None) -> str:
    """``1 sync``, ``2 syncs``, ``1,801 messages``: the count formatted, the noun agreeing."""
    number = as_number(count)
    return f"{format_number(number)} {word if number == 1 else (words or word + 's')}"


def format_cost(value: Any) -> str:
    """Dollars and cents (``$6.15``), ``<$0.01`` for a positive cost below a cent, "" for zero
    (the reference hides zero costs)."""
    number = as_number(value)
    if number <= 0:
        return ""
    if number < 0.005:
        return "<$0.01"
    return f"${number:,.2f}"


# opencode shows a duration only when it is long enough to matter.
MIN_SHOWN_DURATION_MS = 2000


def format_duration(start: Any, end: Any, *, minimum: float = 0) -> str:
    """A short human duration between two epoch-ms values, or "" when unknown or shorter than
    ``minimum`` milliseconds."""
    begin, finish = as_number(start), as_number(end)
    if begin <= 0 or finish < begin:
        return ""
    ms = finish - begin
    if ms < minimum:
        return ""
    if ms < 1000:
        return f"{int(ms)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, secs = divmod(int(ms // 1000), 60)
    return f"{minutes}m {secs:02d}s"


def format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size:.1f} GB"


def short_hash(value: Any, length: int = 8) -> str:
    return as_text(value)[:length]


def basename(path: Any) -> str:
    text = as_text(path)
    return text.rstrip("/").rsplit("/", 1)[-1] or text


def relative_path(path: Any, root: Any) -> str:
    """``path`` shown relative to the session directory when it lies inside it."""
    text, base = as_text(path), as_text(root).rstrip("/")
    if base and text.startswith(base + "/"):
        return text[len(base) + 1 :]
    return text


def safe_http_url(value: Any) -> str:
    """The URL if it is plain http(s), else "" — templates only link what this returns."""
    text = as_text(value).strip()
    return text if re.match(r"^https?://[^\s\"'<>]+$", text, re.IGNORECASE) else ""


# --------------------------------------------------------------------------- highlighting

_FORMATTER = HtmlFormatter(nowrap=True)


def _plain_token_classes() -> frozenset[str]:
    """Token classes neither theme colours (names, punctuation, whitespace...): their spans are
    dropped from highlighted output, a quarter of a page's elements for no visible change."""
    from pygments.styles import get_style_by_name
    from pygments.token import STANDARD_TYPES, Text

    def plain(style_name: str) -> set[str]:
        style = get_style_by_name(style_name)
        base = (style.style_for_token(Text)["color"] or "").lower()
        found = {"w"}  # whitespace: a colour on spaces shows nothing
        for token, cls in STANDARD_TYPES.items():
            s = style.style_for_token(token)
            decorated = s["bgcolor"] or s["bold"] or s["italic"] or s["underline"] or s["border"]
            if cls and not decorated and (not s["color"] or s["color"].lower() == base):
                found.add(cls)
        return found

    return frozenset(plain(HIGHLIGHT_STYLE_LIGHT) & plain(HIGHLIGHT_STYLE))


_PLAIN_SPAN = re.compile(
    '<span class="(?:' + "|".join(sorted(map(re.escape, _plain_token_classes()))) + ')">([^<]*)</span>'
)
_EXTRA_EXTENSIONS = {".tsx": "tsx", ".jsx": "jsx", ".mjs": "javascript", ".cjs": "javascript"}


@lru_cache(maxsize=512)
def _lexer_for_extension(extension: str) -> Lexer | None:
    # Keyed by extension because Pygments' filename lookup scans every lexer's patterns.
    if extension in _EXTRA_EXTENSIONS:
        try:
            return get_lexer_by_name(_EXTRA_EXTENSIONS[extension], stripnl=False)
        except ClassNotFound:
            pass
    try:
        return get_lexer_for_filename("x" + extension, stripnl=False)
    except ClassNotFound:
        return None


@lru_cache(maxsize=128)
def _lexer_for_name(name: str) -> Lexer | None:
    try:
        return get_lexer_by_name(name, stripnl=False)
    except ClassNotFound:
        return None


def lexer_for(filename: str | None = None, language: str | None = None) -> Lexer | None:
    """The lexer for an explicit language name, else for the file's extension, else None."""
    if language:
        lexer = _lexer_for_name(language.strip().lower()[:40])
        if lexer is not None:
            return lexer
    if filename:
        base = os.path.basename(filename)
        extension = os.path.splitext(base)[1].lower() or base.lower()
        if extension and len(extension) <= 20:
            return _lexer_for_extension(extension)
    return None


def highlight(code: Any, *, filename: str | None = None, language: str | None = None) -> Markup:
    """Highlighted HTML (spans only, no wrapper) for ``code``.

    Safe: Pygments' HtmlFormatter escapes every token it emits and adds only ``<span class>``;
    the plain fallback is escaped by markupsafe.
    """
    text = as_text(code)
    lexer = lexer_for(filename, language) if len(text) <= MAX_HIGHLIGHT_CHARS else None
    if lexer is None or isinstance(lexer, TextLexer):
        return escape(text)
    rendered = _PLAIN_SPAN.sub(r"\1", pygments_highlight(text, lexer, _FORMATTER))
    # Pygments always appends a newline; keep the original ending so line counts stay true.
    if not text.endswith("\n") and rendered.endswith("\n"):
        rendered = rendered[:-1]
    return Markup(rendered)


def _token_rules(style: str, prefixes: list[str]) -> str:
    # Token colours only: the background and the line-number rules come from app.css, which
    # follows the page's theme.
    rules = HtmlFormatter(style=style).get_style_defs(prefixes).splitlines()
    bare = ", ".join(prefixes) + " {"
    return "\n".join(r for r in rules if r.startswith(prefixes[0]) and not r.startswith(bare))


def highlight_css() -> str:
    """The stylesheet for highlighted code (served as static/highlight.css): a light palette,
    and a dark one when the reader chose dark or the system prefers it (theme.js sets
    ``data-theme`` on the root element when the reader picks one)."""
    cls = f".{HIGHLIGHT_CSS_CLASS}"
    header = "/* Generated by cloudsession.render.highlight_css(); do not edit by hand. */\n"
    light = _token_rules(HIGHLIGHT_STYLE_LIGHT, [cls])
    dark_chosen = _token_rules(HIGHLIGHT_STYLE, [f':root[data-theme="dark"] {cls}'])
    dark_system = _token_rules(HIGHLIGHT_STYLE, [f':root:not([data-theme="light"]) {cls}'])
    return f"{header}{light}\n{dark_chosen}\n@media (prefers-color-scheme: dark) {{\n{dark_system}\n}}\n"


# --------------------------------------------------------------------------- markdown

_ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "span": {"class"}, "code": {"class"}, "pre": {"class"}}
_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes=_ALLOWED_ATTRIBUTES,
    url_schemes={"http", "https", "mailto"},
    link_rel="nofollow noopener noreferrer",
)


def _highlight_fence(code: str, language: str, _attrs: str) -> str:
    body = highlight(code, language=language or None) if language else escape(code)
    return f'<pre class="code {HIGHLIGHT_CSS_CLASS}"><code>{body}</code></pre>'


def _make_markdown() -> MarkdownIt:
    # html=False: raw HTML in a part is shown as text, as the agent wrote it; nh3 then enforces
    # the allow-list anyway, so a parser bug cannot let markup through.
    md = MarkdownIt("commonmark", {"breaks": True, "html": False, "highlight": _highlight_fence})
    md.enable(["table", "strikethrough"])

    def image_as_link(_renderer: Any, tokens: Any, idx: int, _options: Any, _env: Any) -> str:
        # External images would load from third-party hosts (and the CSP blocks them): link them.
        token = tokens[idx]
        src = token.attrGet("src") or ""
        alt = escape(md.renderer.renderInlineAsText(token.children or [], _options, _env) or "image")  # type: ignore[attr-defined]
        return f'<a href="{escape(src)}">[image: {alt}]</a>'

    md.add_render_rule("image", image_as_link)
    return md


_MARKDOWN = _make_markdown()


def plain_text(text: Any, limit: int = 600) -> str:
    """The words of a markdown text without its syntax (for one-line previews): ``## Step 0:
    what I **changed**`` reads ``Step 0: what I changed``. Only the first ``limit`` characters
    are parsed."""
    source = as_text(text)[:limit]
    words: list[str] = []
    for token in _MARKDOWN.parse(source):
        if token.type == "inline":
            for child in token.children or []:
                if child.type in ("text", "code_inline"):
                    words.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    words.append(" ")
            words.append(" ")
        elif token.type in ("fence", "code_block"):
            words.append(token.content + " ")
    return " ".join("".join(words).split())


def render_markdown(text: Any) -> Markup:
    """Markdown (CommonMark, tables, strikethrough, hard line breaks) as sanitised HTML.

    Safe: the parser emits no raw HTML from the source, and the result passes nh3's allow-list
    (no scripts, no event-handler attributes, only http/https/mailto links).
    """
    source = as_text(text)
    if len(source) > MAX_MARKDOWN_CHARS:
        return Markup('<pre class="plain">') + escape(source) + Markup("</pre>")
    return Markup(_CLEANER.clean(_MARKDOWN.render(source)))


# --------------------------------------------------------------------------- long outputs


@dataclass(frozen=True)
class Output:
    """A long text split for display: ``head`` always shown, ``rest`` behind "show more".

    Both halves are ``Markup``: escaped text, or Pygments output when a language is known.
    """

    head: Markup
    rest: Markup
    rest_lines: int
    cut_chars: int  # characters dropped entirely (beyond MAX_OUTPUT_CHARS)


def split_output(
    value: Any, preview_lines: int = PREVIEW_LINES, *, filename: str | None = None, language: str | None = None
) -> Output:
    text = as_text(value)
    cut = max(0, len(text) - MAX_OUTPUT_CHARS)
    if cut:
        text = text[:MAX_OUTPUT_CHARS]
    # Highlight first, split after: Pygments closes its spans at every line end, so the
    # highlighted text splits on newlines exactly like the source.
    body = highlight(text, filename=filename, language=language) if (filename or language) else escape(text)
    lines = body.split("\n")
    if len(lines) <= preview_lines + 3:
        return Output(body, Markup(""), 0, cut)
    newline = Markup("\n")
    return Output(newline.join(lines[:preview_lines]), newline.join(lines[preview_lines:]), len(lines) - preview_lines, cut)


# --------------------------------------------------------------------------- diffs


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "ctx", "hunk", "meta", "note"
    text: str
    old: int | None = None
    new: int | None = None


@dataclass
class FileDiff:
    path: str
    status: str
    additions: int
    deletions: int
    lines: list[DiffLine] = field(default_factory=list)
    truncated: bool = False


# ASCII digits only, and few enough for int() (it refuses more than 4,300): a header with line
# numbers no real file has is shown as a row of text, its lines without numbers.
_HUNK = re.compile(r"^@@ -([0-9]{1,15})(?:,[0-9]{1,15})? \+([0-9]{1,15})(?:,[0-9]{1,15})? @@")
_HUNK_LIKE = re.compile(r"^@@ .*@@")


def parse_unified_diff(patch: str, max_lines: int = MAX_DIFF_LINES) -> tuple[list[DiffLine], bool]:
    """Rows of a unified diff with old/new line numbers; the file headers are dropped."""
    rows: list[DiffLine] = []
    old: int | None = 0
    new: int | None = 0
    in_hunk = False

    def step(n: int | None) -> int | None:
        return None if n is None else n + 1

    for raw in patch.split("\n"):
        if len(rows) >= max_lines:
            return rows, True
        match = _HUNK.match(raw)
        if match or _HUNK_LIKE.match(raw):
            old, new = (int(match.group(1)), int(match.group(2))) if match else (None, None)
            in_hunk = True
            rows.append(DiffLine("hunk", raw))
        elif not in_hunk:
            # "Index:", "====", "---", "+++" and "diff --git" headers: the file name is shown already.
            continue
        elif raw.startswith("+"):
            rows.append(DiffLine("add", raw[1:], None, new))
            new = step(new)
        elif raw.startswith("-"):
            rows.append(DiffLine("del", raw[1:], old, None))
            old = step(old)
        elif raw.startswith("\\"):
            rows.append(DiffLine("note", raw))
        elif raw.startswith(" "):
            rows.append(DiffLine("ctx", raw[1:], old, new))
            old, new = step(old), step(new)
        elif raw.startswith("diff ") or raw.startswith("Index:"):
            in_hunk = False
        elif raw:
            rows.append(DiffLine("ctx", raw, old, new))
            old, new = step(old), step(new)
    return rows, False


def unified_from_texts(before: str, after: str, path: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def file_diff(value: Any) -> FileDiff:
    """A displayable diff from any of the three diff shapes (SnapshotFileDiff, FileDiff, legacy v1)."""
    data = as_dict(value)
    path = as_text(data.get("file")) or as_text(data.get("path"))
    patch = as_text(data.get("patch"))
    if not patch and isinstance(data.get("before"), str) and isinstance(data.get("after"), str):
        patch = unified_from_texts(data["before"], data["after"], path)
    rows, truncated = parse_unified_diff(patch) if patch else ([], False)
    additions = as_number(data.get("additions")) or sum(1 for r in rows if r.kind == "add")
    deletions = as_number(data.get("deletions")) or sum(1 for r in rows if r.kind == "del")
    status = as_text(data.get("status"))
    return FileDiff(path or "(unnamed file)", status, int(additions), int(deletions), rows, truncated)


# --------------------------------------------------------------------------- what opencode hides

# Bookkeeping parts opencode does not show: their figures go into the turn's footer.
QUIET_PART_TYPES = frozenset({"step-start", "step-finish", "snapshot", "patch"})


def is_shown_part(part: Any) -> bool:
    """False for the parts opencode hides: step and snapshot bookkeeping, synthetic text (what
    opencode adds to a prompt on its own), and text or reasoning with nothing in it."""
    data = as_dict(part)
    kind = as_text(data.get("type"))
    if kind in QUIET_PART_TYPES:
        return False
    if kind == "text":
        return data.get("synthetic") is not True and bool(as_text(data.get("text")).strip())
    if kind == "reasoning":
        return bool(as_text(data.get("text")).strip())
    return True


@dataclass(frozen=True)
class TurnFooter:
    """The quiet line under an assistant message: what the turn cost."""

    tokens: str  # "1,200 in · 340 out · 80 reasoning · 4,000 cached", or ""
    tokens_detail: str  # the same, spelled out, for a tooltip
    cost: str
    duration: str  # only when over MIN_SHOWN_DURATION_MS
    steps: int

    def __bool__(self) -> bool:
        return bool(self.tokens or self.cost or self.duration)


def turn_footer(message: dict[str, Any], parts: list[dict[str, Any]]) -> TurnFooter:
    """Tokens and cost of an assistant message (its own totals, else the sum of its steps) and
    how long it took."""
    finishes = [p for p in parts if as_text(p.get("type")) == "step-finish"]
    counts = as_dict(message.get("tokens"))
    keys = ("input", "output", "reasoning")
    totals = {k: as_number(counts.get(k)) for k in keys}
    cache = as_dict(counts.get("cache"))
    totals["read"], totals["write"] = as_number(cache.get("read")), as_number(cache.get("write"))
    cost = as_number(message.get("cost"))
    if not any(totals.values()) and finishes:
        for step in finishes:
            step_tokens = as_dict(step.get("tokens"))
            step_cache = as_dict(step_tokens.get("cache"))
            for k in keys:
                totals[k] += as_number(step_tokens.get(k))
            totals["read"] += as_number(step_cache.get("read"))
            totals["write"] += as_number(step_cache.get("write"))
    if not cost and finishes:
        cost = sum(as_number(step.get("cost")) for step in finishes)
    shown = [(totals["input"], "in"), (totals["output"], "out"), (totals["reasoning"], "reasoning"), (totals["read"], "cached")]
    tokens = " · ".join(f"{format_number(n)} {label}" for n, label in shown if n) if any(totals.values()) else ""
    detail = (
        f"input {format_number(totals['input'])}, output {format_number(totals['output'])}, reasoning "
        f"{format_number(totals['reasoning'])}, cache read {format_number(totals['read'])}, cache write {format_number(totals['write'])}"
    )
    time = as_dict(message.get("time"))
    duration = format_duration(time.get("created"), time.get("completed"), minimum=MIN_SHOWN_DURATION_MS)
    return TurnFooter(tokens, detail if tokens else "", format_cost(cost), duration, len(finishes))


# --------------------------------------------------------------------------- diff review


@dataclass(frozen=True)
class DiffRow:
    """A diff line ready for the page: its code highlighted for the file's language, and the
    character ranges that changed within the line (``"3-9 12-15"``, marked by the page script)."""

    kind: str
    old: int | None
    new: int | None
    html: Markup
    marks: str = ""


# Lines longer than this get no within-line comparison (SequenceMatcher is quadratic).
MAX_INTRALINE_CHARS = 2_000


def _highlight_side(lines: list[str], path: str) -> list[Markup] | None:
    if not lines:
        return []
    rendered = highlight("\n".join(lines), filename=path)
    split = rendered.split("\n")
    return split if len(split) == len(lines) else None


def _changed_ranges(before: str, after: str) -> tuple[str, str]:
    if len(before) > MAX_INTRALINE_CHARS or len(after) > MAX_INTRALINE_CHARS:
        return "", ""
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    if matcher.ratio() < 0.4:
        return "", ""  # a different line, not an edited one: marking it all says nothing
    old, new = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if i2 > i1:
            old.append(f"{i1}-{i2}")
        if j2 > j1:
            new.append(f"{j1}-{j2}")
    return " ".join(old), " ".join(new)


def diff_rows(fd: FileDiff) -> list[DiffRow]:
    """The rows of a diff with syntax highlighting by file type (each side highlighted as one
    text, so multi-line constructs colour right) and within-line change ranges for each deleted
    line paired with the added line that replaced it."""
    lines = fd.lines
    old_side = [line.text for line in lines if line.kind in ("ctx", "del")]
    new_side = [line.text for line in lines if line.kind in ("ctx", "add")]
    old_html = _highlight_side(old_side, fd.path)
    new_html = _highlight_side(new_side, fd.path)
    marks: dict[int, str] = {}
    index = 0
    while index < len(lines):
        if lines[index].kind != "del":
            index += 1
            continue
        dels = index
        while index < len(lines) and lines[index].kind == "del":
            index += 1
        adds = index
        while index < len(lines) and lines[index].kind == "add":
            index += 1
        for offset in range(min(adds - dels, index - adds)):
            before, after = _changed_ranges(lines[dels + offset].text, lines[adds + offset].text)
            if before or after:
                marks[dels + offset], marks[adds + offset] = before, after
    rows = []
    o = n = 0
    for position, line in enumerate(lines):
        html: Markup = escape(line.text)
        if line.kind in ("ctx", "del"):
            if old_html is not None:
                html = old_html[o]
            o += 1
        if line.kind in ("ctx", "add"):
            if new_html is not None:
                html = new_html[n]
            n += 1
        rows.append(DiffRow(line.kind, line.old, line.new, html, marks.get(position, "")))
    return rows


# --------------------------------------------------------------------------- tools


@dataclass
class ToolView:
    """A tool part normalised for the templates: every field has a safe type."""

    tool: str
    status: str  # pending | running | completed | error | aborted | unknown
    title: str
    input: dict[str, Any]
    output: str
    error: str
    metadata: dict[str, Any]
    duration: str
    compacted: bool
    attachments: list[dict[str, Any]]


_ABORTED = re.compile(r"\baborted\b", re.IGNORECASE)


def tool_view(part: dict[str, Any]) -> ToolView:
    state = as_dict(part.get("state"))
    status = as_text(state.get("status")) or "unknown"
    error = as_text(state.get("error"))
    if status == "error" and _ABORTED.search(error):
        # opencode records an interrupted tool as an error whose text says it was aborted.
        status = "aborted"
    if status not in {"pending", "running", "completed", "error", "aborted"}:
        status = "unknown"
    time = as_dict(state.get("time"))
    return ToolView(
        tool=as_text(part.get("tool")) or "tool",
        status=status,
        title=as_text(state.get("title")),
        input=as_dict(state.get("input")),
        output=as_text(state.get("output")),
        error=error,
        metadata=as_dict(state.get("metadata")),
        duration=format_duration(time.get("start"), time.get("end"), minimum=MIN_SHOWN_DURATION_MS),
        compacted=bool(as_number(time.get("compacted"))),
        attachments=[a for a in as_list(state.get("attachments")) if isinstance(a, dict)],
    )


def edit_diff(view: ToolView) -> FileDiff:
    """The edit tool's change: its recorded unified diff, or one computed from old/new strings."""
    path = as_text(view.input.get("filePath"))
    patch = as_text(view.metadata.get("diff"))
    if not patch:
        before, after = as_text(view.input.get("oldString")), as_text(view.input.get("newString"))
        patch = unified_from_texts(before, after, path) if (before or after) else ""
    filediff = as_dict(view.metadata.get("filediff"))
    return file_diff(
        {
            "file": path,
            "patch": patch,
            "additions": filediff.get("additions"),
            "deletions": filediff.get("deletions"),
        }
    )


_READ_LINE = re.compile(r"^(\d{1,9})\| ?(.*)$")


@dataclass(frozen=True)
class NumberedCode:
    """File content with its line numbers (the read tool's output, or its preview)."""

    lines: list[tuple[int, Markup]]  # (line number, highlighted line)
    rest: int  # lines not shown beyond the visible head
    note: str  # opencode's trailing remark ("(File has more lines...)"), if any


def read_view(view: ToolView, preview_lines: int = 400) -> NumberedCode | None:
    """The read tool's ``<file>`` output as numbered, highlighted lines (its ``NNNNN| `` prefixes
    parsed out), else ``metadata.preview`` numbered from the read offset; None when neither is
    there."""
    path = as_text(view.input.get("filePath"))
    numbers: list[int] = []
    code: list[str] = []
    note = ""
    for raw in view.output[:MAX_OUTPUT_CHARS].split("\n"):
        match = _READ_LINE.match(raw)
        if match:
            numbers.append(int(match.group(1)))
            code.append(match.group(2))
        elif raw.strip() and raw.strip() not in ("<file>", "</file>"):
            note = raw.strip() if numbers else note
    if not numbers:
        preview = as_text(view.metadata.get("preview"))
        if not preview:
            return None
        code = preview.split("\n")
        start = int(as_number(view.input.get("offset"))) + 1
        numbers = list(range(start, start + len(code)))
    shown = min(len(code), preview_lines)
    rendered = highlight("\n".join(code[:shown]), filename=path).split("\n")
    if len(rendered) != shown:
        rendered = [escape(line) for line in code[:shown]]
    return NumberedCode(list(zip(numbers[:shown], rendered, strict=True)), len(code) - shown, note)


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # error | warning | info | hint
    line: int
    column: int
    message: str


_SEVERITIES = {1: "error", 2: "warning", 3: "info", 4: "hint"}
MAX_DIAGNOSTICS = 20


def diagnostics(view: ToolView) -> list[Diagnostic]:
    """LSP diagnostics opencode attached to an edit or write (``metadata.diagnostics``, keyed by
    file): those of the file the tool changed, errors first, at most MAX_DIAGNOSTICS."""
    by_file = as_dict(view.metadata.get("diagnostics"))
    path = as_text(view.input.get("filePath"))
    found = []
    for entry in as_list(by_file.get(path)):
        data = as_dict(entry)
        start = as_dict(dig(data, "range", "start"))
        severity = _SEVERITIES.get(int(as_number(data.get("severity"))) or 1, "error")
        message = as_text(data.get("message"))
        if message:
            found.append(Diagnostic(severity, int(as_number(start.get("line"))) + 1, int(as_number(start.get("character"))) + 1, message[:2000]))
    order = list(_SEVERITIES.values())
    return sorted(found, key=lambda d: order.index(d.severity))[:MAX_DIAGNOSTICS]


@dataclass(frozen=True)
class Todo:
    content: str
    status: str  # pending | in_progress | completed | cancelled
    priority: str


def todos(view: ToolView) -> list[Todo]:
    """The todo list of a todowrite/todoread call (metadata wins: it is the list after the call)."""
    raw = as_list(view.metadata.get("todos")) or as_list(view.input.get("todos"))
    items = []
    for entry in raw:
        data = as_dict(entry)
        status = as_text(data.get("status"))
        items.append(
            Todo(
                content=as_text(data.get("content")),
                status=status if status in {"pending", "in_progress", "completed", "cancelled"} else "pending",
                priority=as_text(data.get("priority")),
            )
        )
    return items


@dataclass(frozen=True)
class Question:
    question: str
    header: str
    options: list[tuple[str, str]]
    answers: list[str]


def questions(view: ToolView) -> list[Question]:
    """The question tool: each question, its options and the answer(s) given."""
    answers = as_list(view.metadata.get("answers"))
    result = []
    for index, entry in enumerate(as_list(view.input.get("questions"))):
        data = as_dict(entry)
        options = [
            (as_text(dig(o, "label")), as_text(dig(o, "description")))
            for o in as_list(data.get("options"))
            if isinstance(o, dict)
        ]
        answer = answers[index] if index < len(answers) else None
        given = [as_text(a) for a in answer] if isinstance(answer, list) else ([as_text(answer)] if answer else [])
        result.append(Question(as_text(data.get("question")), as_text(data.get("header")), options, given))
    return result


# --------------------------------------------------------------------------- file attachments


@dataclass(frozen=True)
class Attachment:
    filename: str
    mime: str
    image_src: str  # a data: URL safe to put in <img src>, or ""
    link: str  # an http(s) URL, or ""
    text: str  # decoded text content for text/* data URLs, or ""
    size: str
    source_path: str


def attachment(value: Any) -> Attachment:
    """A file part (or tool attachment): inline images and text from data: URLs, links for http."""
    data = as_dict(value)
    url = as_text(data.get("url"))
    mime = as_text(data.get("mime"))
    filename = as_text(data.get("filename"))
    if not filename and not url.startswith("data:"):
        filename = basename(url.split("?", 1)[0])
    image_src = text = size = ""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        media = header[5:].split(";", 1)[0].lower()
        size = format_bytes(len(payload) * 3 // 4 if ";base64" in header else len(payload))
        if media in INLINE_IMAGE_TYPES and ";base64" in header and len(url) <= MAX_INLINE_IMAGE_CHARS:
            if re.fullmatch(r"[A-Za-z0-9+/=\s]*", payload):
                image_src = url
        elif media.startswith("text/") or media in {"application/json", "application/x-ndjson"}:
            text = _decode_data_text(header, payload)
    source = as_dict(data.get("source"))
    return Attachment(
        filename=filename or "(file)",
        mime=mime,
        image_src=image_src,
        link=safe_http_url(url),
        text=text,
        size=size,
        source_path=as_text(source.get("path")) or as_text(source.get("uri")),
    )


def _decode_data_text(header: str, payload: str) -> str:
    # Only the part we can show is decoded: a huge attachment costs no more than a small one.
    chunk = payload[: MAX_OUTPUT_CHARS * 2]
    try:
        if ";base64" in header:
            raw = base64.b64decode(chunk[: len(chunk) - len(chunk) % 4], validate=False)
        else:
            raw = unquote(chunk).encode()
    except ValueError:
        return ""
    return raw.decode("utf-8", errors="replace")[:MAX_OUTPUT_CHARS]
