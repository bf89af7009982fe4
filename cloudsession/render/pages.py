"""Server-side rendering of the share page, its fragments and the session list.

This module knows templates and share data, not HTTP: ``web/pages.py`` calls it, tests call it
directly with ``PublicShare`` objects. Two caches keep rendering cheap while a session streams:

- a ``ShareView`` (messages ordered, parts grouped, pages assigned) per share state, so a burst
  of fragment requests after one sync pays for the grouping once;
- rendered message fragments keyed by a hash of the message and its parts, so a sync re-renders
  only the messages it touched and a page load re-renders only what changed since the last one.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import math
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, TypeVar

import orjson
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, Template
from markupsafe import Markup, escape

from cloudsession.jsonio import stored_bytes
from cloudsession.render import html as render
from cloudsession.render.card import CardCache, CardText, card_text
from cloudsession.shares.public import PublicShare

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# A checkout keeps the templates at the top level of the repository (the project layout).
TEMPLATES_DIR = PACKAGE_DIR.parent / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

# Messages per page of the share view: large enough that most sessions fit on one page, small
# enough that a 2,000-message session renders in a fraction of a second.
PAGE_SIZE = 100
# Bump when templates change the markup of a message, so cached fragments are not reused.
FRAGMENT_VERSION = "3"
# What the rendered fragments kept in memory may cost, in bytes (each counted as the string's
# own size, which is 1 to 4 bytes a character, plus its key and its place in the cache).
FRAGMENT_CACHE_BYTES = 96 * 1024 * 1024
FRAGMENT_ENTRY_BYTES = 200
# Views kept: at most this many, and at most this much of their outlines (ShareView.approx_bytes;
# the newest view is kept whatever it costs).
SHARE_VIEW_CACHE_SIZE = 32
SHARE_VIEW_CACHE_BYTES = 64 * 1024 * 1024
# What a view's outline costs per message and per part (measured with tracemalloc on the long
# session of benchmarks/shapes.py: the entry, its outline and index entries; the part's id,
# message id reference and memo entry).
VIEW_MESSAGE_BYTES = 640
VIEW_PART_BYTES = 280
PREVIEW_CHARS = 90
SEARCH_HITS = 50
SNIPPET_CHARS = 60
# The navigator of a page lists the prompts of that page and of NAV_WINDOW pages either side;
# every other page is a link ("Page 7 · 12 prompts") that the page script expands on demand
# from /share/<id>/nav, so the page's weight does not grow with the share's length. At most
# NAV_LINKS_PER_SIDE links before and after the window (far pages are grouped into ranges),
# and one /nav answer carries at most NAV_FETCH_PAGES pages.
NAV_WINDOW = 1
NAV_LINKS_PER_SIDE = 8
NAV_FETCH_PAGES = 3

T = TypeVar("T")

# Whitespace the templates leave between block-level tags (a line break and indentation) renders
# as nothing but costs the browser a text node each (a tenth of a long page's DOM nodes).
# ``compact`` removes it where a block-level tag is on either side, never inside <pre> and never
# next to a table cell (diff cells keep their whitespace: ``white-space: pre``).
_BLOCK_TAGS = frozenset(
    [
        "article", "section", "header", "footer", "div", "details", "summary", "table", "thead", "tbody", "tr",
        "ul", "ol", "li", "p", "h1", "h2", "h3", "h4", "h5", "h6", "nav", "aside", "main", "blockquote", "hr",
        "figure", "figcaption", "dl", "dt", "dd", "form", "pre",
    ]
)  # fmt: skip
_PRE = re.compile(r"(<pre\b.*?</pre>)", re.S | re.I)
_GAP = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)([^<>]*)>([ \t]*\n\s*)(?=<(/?)([a-zA-Z][a-zA-Z0-9]*))")


def compact(html: str) -> str:
    """``html`` without the whitespace-only text between block-level tags (see _BLOCK_TAGS)."""
    html = html.strip()
    # Where each <pre>...</pre> starts and ends: whitespace there is content.
    starts: list[int] = []
    ends: list[int] = []
    for found in _PRE.finditer(html):
        starts.append(found.start())
        ends.append(found.end())

    def close(match: re.Match[str]) -> str:
        before, after = match.group(2).lower(), match.group(6).lower()
        if before in ("td", "th") or after in ("td", "th") or (before not in _BLOCK_TAGS and after not in _BLOCK_TAGS):
            return match.group(0)
        gap = match.start(4)
        at = bisect.bisect_right(starts, gap) - 1
        if at >= 0 and gap < ends[at]:
            return match.group(0)  # inside a <pre>: whitespace there is content
        return match.group(0)[: -len(match.group(4))]

    return _GAP.sub(close, html)


def _templates_dir() -> Path:
    # Installed wheels carry the templates inside the package (see pyproject); a checkout has
    # them at the top level.
    packaged = PACKAGE_DIR / "templates"
    return packaged if packaged.is_dir() else TEMPLATES_DIR


_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class StaticAsset:
    body: bytes
    content_type: str
    digest: str


@lru_cache(maxsize=64)
def static_asset(name: str) -> StaticAsset | None:
    """A file of ``static/`` with its content hash, or None for anything that is not one
    (the name is only looked up among the files actually there: no path ever reaches open())."""
    if name not in {p.name for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _STATIC_TYPES}:
        return None
    body = (STATIC_DIR / name).read_bytes()
    return StaticAsset(body, _STATIC_TYPES[Path(name).suffix], hashlib.blake2b(body, digest_size=6).hexdigest())


def static_url(name: str) -> str:
    """``/static/<name>?v=<content hash>``: browsers may cache static files forever."""
    asset = static_asset(name)
    if asset is None:
        raise ValueError(f"no static file {name!r}")
    return f"/static/{name}?v={asset.digest}"


def css_token(value: Any, fallback: str = "other") -> str:
    """A value made safe to use as a CSS class name (roles, statuses, part types)."""
    text = render.as_text(value).lower()
    token = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "-" for ch in text)[:40]
    return token or fallback


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_templates_dir())),
        autoescape=True,
        # Share data is arbitrary JSON: a missing key renders as nothing instead of failing the page.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        static_url=static_url,
        css_token=css_token,
        as_text=render.as_text,
        as_number=render.as_number,
        as_dict=render.as_dict,
        as_list=render.as_list,
        dig=render.dig,
        pretty_json=render.pretty_json,
        format_time=render.format_time,
        format_time_utc=render.format_time_utc,
        plural=render.plural,
        iso_time=render.iso_time,
        format_number=render.format_number,
        format_cost=render.format_cost,
        format_duration=render.format_duration,
        short_hash=render.short_hash,
        basename=render.basename,
        relative_path=render.relative_path,
        safe_http_url=render.safe_http_url,
        highlight=render.highlight,
        render_markdown=render.render_markdown,
        split_output=render.split_output,
        file_diff=render.file_diff,
        diff_rows=render.diff_rows,
        tool_view=render.tool_view,
        edit_diff=render.edit_diff,
        todos=render.todos,
        read_view=render.read_view,
        diagnostics=render.diagnostics,
        questions=render.questions,
        attachment=render.attachment,
    )
    return env


# --------------------------------------------------------------------------- share view model


class MessageEntry:
    """One message with its parts, its place in the page order and its content hash.

    The entry keeps only what every page needs of it (id, role, place, what it adds to the
    share's totals); ``message`` and ``parts`` are parsed from the share's pieces when a page
    shows the message, and dropped again after the request (``ShareView.release``), so a cached
    view of a long share costs a small fraction of its dicts."""

    def __init__(self, view: ShareView, index: int, id: str, role: str, number: int, page: int,
                 part_refs: list[int], usage: tuple[Any, ...] | None) -> None:
        self._view = view
        self._index = index  # in the share's stored messages
        self.id = id
        self.role = role
        self.number = number  # 1-based position in display order
        self.page = page  # 1-based page
        self.part_refs = part_refs  # indexes in the share's stored parts
        self.usage = usage  # what an assistant message adds to the share's totals (ShareView.stats)
        self._loaded: tuple[dict[str, Any], list[dict[str, Any]]] | None = None

    def _load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        loaded = self._loaded
        if loaded is None:
            loaded = self._loaded = self._view.load(self._index, self.part_refs)
            self._view.loaded.append(self)
        return loaded

    @property
    def message(self) -> dict[str, Any]:
        return self._load()[0]

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self._load()[1]

    def release(self) -> None:
        """Forget the parsed dicts (and what holds them); parsed again when next needed."""
        self._loaded = None
        self.__dict__.pop("shown_parts", None)

    @cached_property
    def hash(self) -> str:
        # Everything the fragment shows: the message, its parts and its number (a message inserted
        # earlier renumbers the later ones). The hash keys the fragment cache and the page digest.
        content = [FRAGMENT_VERSION, self.number, self.message, self.parts]
        try:
            payload = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            payload = stored_bytes(content)  # lone surrogates from a Worker-written share
        return hashlib.blake2b(payload, digest_size=8).hexdigest()

    @cached_property
    def shown_parts(self) -> list[dict[str, Any]]:
        """The parts displayed; step bookkeeping goes into ``footer`` instead."""
        return [p for p in self.parts if render.is_shown_part(p)]

    @cached_property
    def footer(self) -> render.TurnFooter | None:
        return render.turn_footer(self.message, self.parts) if self.role == "assistant" else None

    @property
    def search_texts(self) -> list[str]:
        """What the page shows of this message, as plain strings, for searching across pages."""
        texts: list[str] = []
        for part in self.shown_parts:
            kind = part.get("type")
            if kind in ("text", "reasoning"):
                texts.append(render.as_text(part.get("text")))
            elif kind == "tool":
                view = render.tool_view(part)
                texts += [view.tool, view.title, view.output[: render.MAX_OUTPUT_CHARS], view.error]
                texts += [render.as_text(view.input.get(k)) for k in ("command", "description", "filePath", "pattern", "url", "prompt")]
            elif kind == "file":
                texts.append(render.as_text(part.get("filename")))
            elif kind == "subtask":
                texts += [render.as_text(part.get("description")), render.as_text(part.get("prompt"))]
        return [t for t in texts if t]

    @cached_property
    def preview(self) -> str:
        """A one-line summary for the navigator: the first text, else the first tool's title."""
        for part in self.parts:
            if part.get("type") == "text" and not part.get("synthetic"):
                text = render.plain_text(part.get("text"))
                if text:
                    return text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else "")
        for part in self.parts:
            if part.get("type") == "tool":
                view = render.tool_view(part)
                return f"{view.tool}: {view.title}"[:PREVIEW_CHARS]
        return ""


@dataclass
class ShareStats:
    message_count: int
    part_count: int
    total_cost: float
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_read: int
    cache_write: int
    models: list[str]

    @property
    def total_tokens(self) -> int:
        # The reference's total: input plus output over assistant messages.
        return self.input_tokens + self.output_tokens


def _created(message: dict[str, Any]) -> float:
    created = render.as_number(render.dig(message, "time", "created"))
    # Messages without a time go last instead of breaking the sort (the reference crashed).
    return created if created > 0 else math.inf


def _intern(text: str) -> str:
    """One string object for the many equal ids, roles and model names of a long share."""
    return sys.intern(text) if type(text) is str else text


def _part_outline(part: Any) -> tuple[str, str | None]:
    """(id, message id) of a part."""
    if not isinstance(part, dict):
        return "", None
    message_id = part.get("messageID")
    # Interned: the parts of one message share one string.
    return render.as_text(part.get("id")), _intern(message_id) if isinstance(message_id, str) else None


def _message_outline(message: Any) -> tuple[float, str, str, tuple[Any, ...] | None] | None:
    """(created, id, role, usage) of a message with an id, else None."""
    if not isinstance(message, dict) or not isinstance(message.get("id"), str):
        return None
    return _created(message), _intern(message["id"]), _intern(render.as_text(message.get("role")) or "unknown"), _usage(message)


def _usage(message: dict[str, Any]) -> tuple[Any, ...] | None:
    """What an assistant message adds to the share's totals (ShareView.stats), else None."""
    if message.get("role") != "assistant":
        return None
    counts = render.as_dict(message.get("tokens"))
    cache = render.as_dict(counts.get("cache"))
    return (
        render.as_number(message.get("cost")),
        int(render.as_number(counts.get("input"))),
        int(render.as_number(counts.get("output"))),
        int(render.as_number(counts.get("reasoning"))),
        int(render.as_number(cache.get("read"))),
        int(render.as_number(cache.get("write"))),
        _intern(render.as_text(message.get("providerID"))),
        _intern(render.as_text(message.get("modelID"))),
    )


class ShareView:
    """A ``PublicShare`` arranged for display. Built once per share state and cached."""

    def __init__(self, share: PublicShare, page_size: int = PAGE_SIZE, previous: ShareView | None = None) -> None:
        self.share = share
        self.page_size = page_size
        # Every entity is parsed here, one at a time, and only an outline of it is kept: a page
        # parses the messages it shows again (MessageEntry.message/parts). The outlines of
        # serialised pieces are remembered by piece (``previous``: the view of the share's
        # last version), so a new version parses only the entities a sync changed.
        self._messages, self._parts, self._parse = share.entities()
        self.loaded: list[MessageEntry] = []  # entries holding parsed dicts (see release)
        known = previous.outlines if previous is not None else {}
        # piece -> its outline. Keyed by the bytes themselves: a piece kept from the last version
        # is the same object (found by identity, its hash cached in it), and one made again
        # with the same bytes has the same outline (the sessionID swap is not part of it).
        self.outlines: dict[bytes, Any] = {}
        by_message: dict[str, list[int]] = {}
        part_ids: list[str] = []
        for index, handle in enumerate(self._parts):
            part_id, message_id = self._outline(handle, known, _part_outline)
            part_ids.append(part_id)
            if message_id is not None:
                by_message.setdefault(message_id, []).append(index)
        # (created, index, id, role, usage) of each message with an id, in stored order
        outlines: list[tuple[float, int, str, str, tuple[Any, ...] | None]] = []
        for index, handle in enumerate(self._messages):
            outline = self._outline(handle, known, _message_outline)
            if outline is not None:
                outlines.append((outline[0], index, *outline[1:]))
        ordered = sorted(outlines, key=lambda o: o[0])  # stable: ties keep stored order, as the reference
        # A reverted session (session.revert.messageID) hides that message and every later one,
        # as opencode does; the page says how many.
        revert = render.as_text(render.dig(share.session, "revert", "messageID"))
        cut = next((i for i, o in enumerate(ordered) if o[2] == revert), None) if revert else None
        self.reverted_ids = [o[2] for o in ordered[cut:]] if cut is not None else []
        if cut is not None:
            ordered = ordered[:cut]
        self.entries = [
            MessageEntry(self, o[1], o[2], o[3], number + 1, number // page_size + 1, by_message.get(o[2], []), o[4])
            for number, o in enumerate(ordered)
        ]
        self.by_id = {entry.id: entry for entry in self.entries}
        self._part_ids = part_ids

    def _outline(self, handle: Any, known: dict[bytes, Any], make: Callable[[Any], T]) -> T:
        if not isinstance(handle, bytes):  # a dict-backed share (tests, tools): nothing to remember
            return make(self._parse(handle))
        outline: T | None = known.get(handle)
        if outline is None:
            outline = make(self._parse(handle))
        self.outlines[handle] = outline
        return outline

    @cached_property
    def approx_bytes(self) -> int:
        """What this view's outlines cost in memory, about (the share's own pieces not counted:
        the service's cache counts them)."""
        return len(self._messages) * VIEW_MESSAGE_BYTES + len(self._parts) * VIEW_PART_BYTES

    def load(self, index: int, part_refs: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The parsed message at ``index`` of the stored messages, and its parts."""
        parse, parts = self._parse, self._parts
        return parse(self._messages[index]), [parse(parts[i]) for i in part_refs]

    def release(self) -> None:
        """Drop the dicts parsed for the request that is ending (the view stays cached)."""
        loaded, self.loaded = self.loaded, []
        for entry in loaded:
            entry.release()

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self.entries) / self.page_size))

    def page_entries(self, page: int) -> list[MessageEntry]:
        start = (page - 1) * self.page_size
        return self.entries[start : start + self.page_size]

    def next_on_page(self, entry: MessageEntry) -> str | None:
        """The id of the message displayed after ``entry`` on the same page (for in-place inserts)."""
        if entry.number < len(self.entries):
            following = self.entries[entry.number]
            if following.page == entry.page:
                return following.id
        return None

    @cached_property
    def prompts_per_page(self) -> list[int]:
        """How many user prompts each page holds (index 0 is page 1)."""
        counts = [0] * self.pages
        for entry in self.entries:
            if entry.role == "user":
                counts[entry.page - 1] += 1
        return counts

    @cached_property
    def part_pages(self) -> dict[str, str]:
        """Part id -> the id of the (displayed) message it belongs to."""
        ids = self._part_ids
        return {ids[i]: e.id for e in self.entries for i in e.part_refs if ids[i]}

    @cached_property
    def stats(self) -> ShareStats:
        cost = 0.0
        tokens = {"input": 0, "output": 0, "reasoning": 0, "read": 0, "write": 0}
        used: dict[tuple[str, str], str] = {}
        for model in self.share.models:
            if isinstance(model, dict):
                provider = render.as_text(model.get("providerID"))
                model_id = render.as_text(model.get("id"))
                name = render.as_text(model.get("name"))
                used[(provider, model_id)] = f"{name} ({provider}/{model_id})" if name else f"{provider}/{model_id}"
        for entry in self.entries:
            if entry.usage is None:
                continue
            spent, t_in, t_out, t_reason, t_read, t_write, provider, model_id = entry.usage
            cost += spent
            tokens["input"] += t_in
            tokens["output"] += t_out
            tokens["reasoning"] += t_reason
            tokens["read"] += t_read
            tokens["write"] += t_write
            if model_id and (provider, model_id) not in used:
                used[(provider, model_id)] = f"{provider}/{model_id}" if provider else model_id
        return ShareStats(
            message_count=len(self.entries),
            part_count=sum(len(entry.part_refs) for entry in self.entries),
            total_cost=cost,
            input_tokens=tokens["input"],
            output_tokens=tokens["output"],
            reasoning_tokens=tokens["reasoning"],
            cache_read=tokens["read"],
            cache_write=tokens["write"],
            models=list(used.values()),
        )

    @cached_property
    def summary(self) -> str:
        """One line for link previews (Open Graph, Twitter cards): counts, model, cost, and the
        first prompt."""
        stats = self.stats
        bits = [render.plural(len([e for e in self.entries if e.role == "user"]), "prompt"), render.plural(stats.message_count, "message")]
        if self.diffs:
            bits.append(render.plural(len(self.diffs), "file") + " changed")
        if stats.models:
            bits.append(stats.models[0] + (f" and {len(stats.models) - 1} more" if len(stats.models) > 1 else ""))
        if render.format_cost(stats.total_cost):
            bits.append(render.format_cost(stats.total_cost))
        first = next((e.preview for e in self.entries if e.role == "user" and e.preview), "")
        return " · ".join(bits) + (f". {first}" if first else "")

    def card_text(self, site: str) -> CardText:
        """The lines of the share's social card (``render/card.py``), redacted."""
        stats = self.stats
        return card_text(site=site, title=render.as_text(render.dig(self.share.session, "title")), models=stats.models,
                         messages=stats.message_count, parts=stats.part_count, updated_ms=self.share.last_updated,
                         redact=self.share.redact)

    @cached_property
    def diffs(self) -> list[render.FileDiff]:
        return [render.file_diff(d) for d in self.share.diffs if isinstance(d, dict)]


def site_name(origin: str) -> str:
    """What a card calls the server: the host of its public origin."""
    return origin.split("://", 1)[-1].rstrip("/") or "cloudsession"


# --------------------------------------------------------------------------- the renderer


class _FragmentCache:
    """LRU of rendered message HTML, bounded by what the strings cost in memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def cost(key: str, html: str) -> int:
        return sys.getsizeof(html) + sys.getsizeof(key) + FRAGMENT_ENTRY_BYTES

    def get(self, key: str) -> str | None:
        html = self._items.get(key)
        if html is not None:
            self._items.move_to_end(key)
        return html

    def put(self, key: str, html: str) -> None:
        cost = self.cost(key, html)
        if key in self._items or cost > self.max_bytes // 4:
            return
        self._items[key] = html
        self.nbytes += cost
        while self.nbytes > self.max_bytes:
            old, evicted = self._items.popitem(last=False)
            self.nbytes -= self.cost(old, evicted)


@dataclass
class Fragment:
    id: str
    hash: str
    page: int
    number: int
    before: str | None
    html: str
    nav: str


@dataclass
class PageRenderer:
    """Renders pages and fragments; one per application (holds the caches)."""

    page_size: int = PAGE_SIZE
    env: Environment = field(default_factory=make_environment)
    fragment_cache_bytes: int = FRAGMENT_CACHE_BYTES
    view_cache_bytes: int = SHARE_VIEW_CACHE_BYTES

    def __post_init__(self) -> None:
        self._fragments = _FragmentCache(self.fragment_cache_bytes)
        self._views: OrderedDict[str, ShareView] = OrderedDict()
        self.cards = CardCache()

    def release(self) -> None:
        """Drop what the last request parsed (the cached views keep their outlines)."""
        for view in self._views.values():
            view.release()

    def template(self, name: str) -> Template:
        return self.env.get_template(name)

    def view(self, share: PublicShare) -> ShareView:
        # Keyed by the object itself: the service hands out one PublicShare per share state, so
        # the same object means the same content; anything else is rebuilt (the grouping is
        # cheap, and message fragments stay cached by content hash either way).
        view = self._views.get(share.id)
        if view is None or view.share is not share:
            view = ShareView(share, self.page_size, previous=view)
            self._views[share.id] = view
        self._views.move_to_end(share.id)
        while len(self._views) > 1 and (len(self._views) > SHARE_VIEW_CACHE_SIZE or self.views_bytes > self.view_cache_bytes):
            self._views.popitem(last=False)
        return view

    @property
    def views_bytes(self) -> int:
        """What the cached views' outlines cost, about (ShareView.approx_bytes)."""
        return sum(view.approx_bytes for view in self._views.values())

    @property
    def fragments_bytes(self) -> int:
        return self._fragments.nbytes

    @cached_property
    def _macros(self) -> Any:
        return self.template("parts.html").module

    def message_html(self, entry: MessageEntry) -> str:
        html = self._fragments.get(entry.hash)
        if html is None:
            html = compact(str(self._macros.message(entry)))
            self._fragments.put(entry.hash, html)
        return html

    def messages_html(self, entries: Iterable[MessageEntry]) -> Markup:
        # Safe: each fragment is the output of the autoescaping parts.html templates.
        return Markup("".join(self.message_html(entry) for entry in entries))

    def header_html(self, view: ShareView) -> str:
        return str(self._macros.share_header(view))

    def diffs_html(self, view: ShareView) -> str:
        return str(self._macros.diff_panel(view))

    @staticmethod
    def nav_html(entry: MessageEntry, current_page: int, link_suffix: str = "") -> str:
        """The navigator entry of a user prompt ("" for any other message: the navigator is the
        list of the user's prompts, one per turn, as opencode shows it). Built in Python rather
        than by a macro: a macro call per entry would cost more than rendering a whole page of
        messages. Every value is escaped."""
        if entry.role != "user":
            return ""
        here = entry.page == current_page
        href = f"#msg-{entry.id}" if here else f"?page={entry.page}{link_suffix}#msg-{entry.id}"
        return (f'<li class="nav-user{" here" if here else ""}" data-id="{escape(entry.id)}" data-p="{entry.page}" data-n="{entry.number}">'
                f'<a href="{escape(href)}" data-n="{entry.number}">{escape(entry.preview) or "(no text)"}</a></li>')

    @staticmethod
    def nav_more_html(view: ShareView, first: int, last: int, link_suffix: str = "") -> str:
        """A link standing for the prompts of pages ``first``..``last`` (expanded by share.js;
        without JavaScript it opens the first of those pages)."""
        prompts = sum(view.prompts_per_page[first - 1 : last])
        label = f"Page {first}" if first == last else f"Pages {first}–{last}"
        return (f'<li class="nav-more" data-from="{first}" data-to="{last}"><a href="?page={first}{escape(link_suffix)}">'
                f'{label} · {render.plural(prompts, "prompt")}</a></li>')

    @staticmethod
    def _page_groups(first: int, last: int, nearest_first: bool) -> list[tuple[int, int]]:
        """Pages ``first``..``last`` as at most NAV_LINKS_PER_SIDE runs: single pages next to the
        window, ranges further away."""
        count = last - first + 1
        if count <= 0:
            return []
        if count <= NAV_LINKS_PER_SIDE:
            return [(n, n) for n in range(first, last + 1)]
        singles = NAV_LINKS_PER_SIDE // 2
        span = math.ceil((count - singles) / (NAV_LINKS_PER_SIDE - singles))
        if nearest_first:  # after the window: singles first, then ranges
            groups = [(n, n) for n in range(first, first + singles)]
            start = first + singles
            while start <= last:
                groups.append((start, min(start + span - 1, last)))
                start += span
            return groups
        groups = [(n, n) for n in range(last - singles + 1, last + 1)]
        end = last - singles
        ranges = []
        while end >= first:
            ranges.append((max(end - span + 1, first), end))
            end -= span
        return ranges[::-1] + groups

    def navigator_html(self, view: ShareView, current_page: int, link_suffix: str = "") -> str:
        """The navigator of one page: every message of the pages within NAV_WINDOW of it (the
        user's prompts shown), and links standing for the other pages. Its size depends on the
        page size and NAV_LINKS_PER_SIDE, not on the share's length."""
        low = max(1, current_page - NAV_WINDOW)
        high = min(view.pages, current_page + NAV_WINDOW)
        parts = [self.nav_more_html(view, a, b, link_suffix) for a, b in self._page_groups(1, low - 1, nearest_first=False)]
        start, stop = (low - 1) * view.page_size, high * view.page_size
        parts += [html for entry in view.entries[start:stop] if (html := self.nav_html(entry, current_page, link_suffix))]
        parts += [self.nav_more_html(view, a, b, link_suffix) for a, b in self._page_groups(high + 1, view.pages, nearest_first=True)]
        return "".join(parts)

    def nav_pages_html(self, view: ShareView, first: int, last: int, current_page: int, link_suffix: str = "") -> str:
        """Navigator entries of pages ``first``..``last`` for share.js to expand a link with: at
        most NAV_FETCH_PAGES pages, and a link standing for the rest of the range."""
        first = min(max(first, 1), view.pages)
        last = min(max(last, first), view.pages)
        upto = min(last, first + NAV_FETCH_PAGES - 1)
        entries = view.entries[(first - 1) * view.page_size : upto * view.page_size]
        parts = [html for entry in entries if (html := self.nav_html(entry, current_page, link_suffix))]
        if upto < last:
            parts.append(self.nav_more_html(view, upto + 1, last, link_suffix))
        return "\n".join(parts)

    def share_page(self, share: PublicShare, page: int, *, link_suffix: str = "", origin: str = "") -> str:
        """The whole page. ``link_suffix`` (for example ``&token=...`` on a private share) is
        appended to links to other pages so they keep working. With ``origin`` (the server's
        public origin) a public share's page names its social card for link previews; a
        private share's never does (the card needs the read token)."""
        view = self.view(share)
        page = min(max(page, 1), view.pages)
        return self.template("share.html").render(
            view=view,
            share=share,
            page=page,
            messages_html=self.messages_html(view.page_entries(page)),
            header_html=Markup(self.header_html(view)),  # safe: rendered by parts.html (autoescape)
            diffs_html=Markup(self.diffs_html(view)),  # safe: rendered by parts.html (autoescape)
            navigator_html=self.navigator_html(view, page, link_suffix),
            link_suffix=link_suffix,
            live_format="events",
            card_url=self.card_url(view, origin) if origin and not share.private else "",
        )

    @staticmethod
    def card_url(view: ShareView, origin: str) -> str:
        """The absolute URL of the share's social card, versioned by what the card shows."""
        digest = view.card_text(site_name(origin)).digest
        return f"{origin}/share/{view.share.id}/card.png?v={digest}"

    def card_png(self, share: PublicShare, origin: str) -> tuple[str, bytes]:
        """The social card of ``share`` (digest, PNG), drawn once per version."""
        text = self.view(share).card_text(site_name(origin))
        return text.digest, self.cards.get(text)

    def search(self, share: PublicShare, query: str, link_suffix: str = "", limit: int = SEARCH_HITS) -> dict[str, Any]:
        """Case-insensitive matches of ``query`` in every message of the share (all pages): the
        count per page and the first ``limit`` messages with a snippet and a link."""
        view = self.view(share)
        needle = query.lower()
        pages: dict[int, int] = {}
        hits: list[dict[str, Any]] = []
        total = 0
        for entry in view.entries:
            count = 0
            snippet = ""
            for text in entry.search_texts:
                lowered = text.lower()
                found = lowered.count(needle)
                if found and not snippet:
                    at = lowered.index(needle)
                    start = max(0, at - SNIPPET_CHARS)
                    snippet = ("…" if start else "") + " ".join(text[start : at + len(needle) + SNIPPET_CHARS].split())
                count += found
            if count:
                total += count
                pages[entry.page] = pages.get(entry.page, 0) + count
                if len(hits) < limit:
                    hits.append({"id": entry.id, "page": entry.page, "number": entry.number, "count": count, "snippet": snippet,
                                 "href": f"?page={entry.page}{link_suffix}#msg-{entry.id}"})
        return {"query": query, "total": total, "pages": [{"page": p, "count": c} for p, c in sorted(pages.items())], "hits": hits}

    def standalone_page(self, share: PublicShare) -> str:
        """The whole share in one self-contained HTML file: every message (all pages), the
        stylesheets inlined, no script; links between messages are in-page anchors."""
        view = self.view(share)
        stylesheet = (STATIC_DIR / "app.css").read_text() + "\n" + (STATIC_DIR / "highlight.css").read_text()
        return self.template("standalone.html").render(
            share=share,
            # Safe: the server's own static files; "</" cannot end the <style> element early.
            stylesheet=Markup(stylesheet.replace("</", "<\\/")),
            exported=render.iso_time(share.last_updated),
            header_html=Markup(self.header_html(view)),  # safe: rendered by parts.html (autoescape)
            messages_html=self.messages_html(view.entries),
            diffs_html=Markup(self.diffs_html(view)),  # safe: rendered by parts.html (autoescape)
            # Every entry on "page 0" links as an in-page anchor.
            navigator_html="\n".join(html for entry in view.entries if (html := self.nav_html(entry, entry.page))),
        )

    def fragments(self, share: PublicShare, ids: Iterable[str], page: int, link_suffix: str = "") -> list[Fragment | str]:
        """Fragments for the requested message ids; an unknown id comes back as the bare id."""
        view = self.view(share)
        result: list[Fragment | str] = []
        for message_id in ids:
            entry = view.by_id.get(message_id)
            if entry is None:
                result.append(message_id)
                continue
            result.append(
                Fragment(
                    id=entry.id,
                    hash=entry.hash,
                    page=entry.page,
                    number=entry.number,
                    before=view.next_on_page(entry),
                    html=self.message_html(entry) if entry.page == page else "",
                    nav=self.nav_html(entry, page, link_suffix),
                )
            )
        return result


class ViewRenderer:
    """The application's ``PageRenderer`` plus the lock that serialises its use across threads."""

    def __init__(self, renderer: PageRenderer | None = None) -> None:
        self.pages = renderer or PageRenderer()
        self._lock = threading.Lock()

    async def run(self, work: Callable[[PageRenderer], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return work(self.pages)
                finally:
                    self.pages.release()

        return await asyncio.to_thread(locked)
