"""What anyone with a share's link may see: ``PublicShare``, and the redaction of owner keys (real
session IDs) from every public output.

**The rule.** The real session ID is the owner's key: whoever knows it can re-create the share and
receive its secret. No public output may contain it, in any letter case, whatever the content
says. ``Redactor`` is the one place that knows how to remove it, and it is applied at two levels:

1. *Values* (``Redactor.value``): the domain builds every public view of a share (``PublicShare``,
   live items, index entries) by passing the data through the share's redactor, which replaces
   every case variant of the owner's ID (and of its parent session's ID) with the public ID
   inside every string value, and inside object keys for IDs of ``MIN_REDACT_LENGTH`` or more.
   Done before rendering, so markdown, highlighting and escaping cannot split or disguise it.
2. *Serialised output* (``Redactor.serialised``/``serialised_bytes``): the last line of defence,
   on the bytes that leave the process. Each request runs in a ``redaction_scope``; every share
   the domain loads (and every entry a listing reads) registers its owner there, and the web
   layer passes every response body and every live frame through the scope's redactor. A new
   output therefore cannot forget it: loading the share is enough to be covered. Only IDs of
   ``MIN_REDACT_LENGTH`` or more are replaced at this level: a shorter one could match markup or
   JSON keys. Short IDs are covered by level 1, and they never appear in a link (see
   ``credentials.share_id_candidates``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson

# Serialised output (markup, JSON) is redacted only for IDs at least this long; values always.
MIN_REDACT_LENGTH = 12
_FALLBACK_PUBLIC = "ses_redacted"
_ANCHOR = 4  # bytes; MIN_REDACT_LENGTH is larger
# Up to this many long IDs, serialised output is searched for each with bytes.find; beyond (a
# listing's thousands of owners), with one anchor pattern.
_FIND_LIMIT = 16


def _variants(real: str) -> set[str]:
    return {v.casefold() for v in (real, real.lower(), real.upper(), real.casefold(), real.swapcase()) if v}


def _trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching any of ``words``, longest first, shaped as a trie so that
    thousands of IDs cost about as much to search for as one."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        group = "(?:" + "|".join(branches) + ")"
        return group + "?" if "" in node else group

    return build(trie)


class Redactor:
    """Replaces owner keys (real session IDs) with their public IDs; see the module docstring."""

    __slots__ = ("_public", "_long", "_long_lengths", "_all_re", "_long_re", "_probe")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._public: dict[str, str] = {}  # casefolded variant -> public id
        # ASCII-lowercased UTF-8 of long ids -> public id (serialised output is lowercased the
        # same way, byte for byte, and searched case-sensitively: much faster than IGNORECASE).
        self._long: dict[bytes, str] = {}
        self._all_re: re.Pattern[str] | None = None
        self._long_re: re.Pattern[bytes] | None = None
        self._long_lengths: dict[bytes, list[int]] = {}
        # A quick test on an object's JSON before walking it (None: not built; False: unusable).
        self._probe: re.Pattern[bytes] | bool | None = None
        for real, public in pairs:
            self.add(real, public)

    def add(self, real: str, public: str) -> None:
        if not isinstance(real, str) or not real or real == public:
            return
        variants = _variants(real)
        if variants <= self._public.keys():
            return
        for variant in variants:
            self._public.setdefault(variant, public)
        self._all_re, self._probe = None, None
        if len(real) >= MIN_REDACT_LENGTH:
            for variant in (real, real.lower(), real.upper(), real.casefold()):
                self._long.setdefault(variant.encode("utf-8", "surrogatepass").lower(), public)
            self._long_re = None

    def include(self, other: Redactor) -> None:
        """Redact ``other``'s owners too."""
        if not other._public.keys() <= self._public.keys() or not other._long.keys() <= self._long.keys():
            for variant, public in other._public.items():
                self._public.setdefault(variant, public)
            for key, public in other._long.items():
                self._long.setdefault(key, public)
            self._all_re, self._long_re, self._probe = None, None, None

    def __bool__(self) -> bool:
        return bool(self._public)

    def _lookup(self, found: str) -> str:
        return self._public.get(found.casefold(), _FALLBACK_PUBLIC)

    def _all(self) -> re.Pattern[str]:
        if self._all_re is None:
            self._all_re = re.compile(_trie_pattern(self._public), re.IGNORECASE)
        return self._all_re

    def _long_pattern(self) -> re.Pattern[bytes]:
        """Where a long ID may start: any of their first four bytes (a small pattern, however
        many IDs; the candidates are then looked up whole)."""
        if self._long_re is None:
            anchors = sorted({key[:_ANCHOR].decode("latin-1") for key in self._long})
            self._long_re = re.compile(b"(?=(" + _trie_pattern(anchors).encode("latin-1") + b"))")
            self._long_lengths = {}
            for key in self._long:
                lengths = self._long_lengths.setdefault(key[:_ANCHOR], [])
                if len(key) not in lengths:
                    lengths.append(len(key))
                    lengths.sort(reverse=True)
        return self._long_re

    def _may_contain(self, data: Any) -> bool:
        """False only when ``data``'s JSON certainly holds no owner ID: one C-speed search, so
        the usual object (no mention) is not walked. Only for IDs whose JSON form is themselves
        and whose case variants are ASCII (bytes patterns fold ASCII letters only)."""
        if self._probe is None:
            usable = all(v.isascii() and v.isprintable() and '"' not in v and "\\" not in v for v in self._public)
            words = [v.encode("ascii").decode("latin-1") for v in self._public] if usable else []
            self._probe = re.compile(_trie_pattern(words).encode("latin-1"), re.IGNORECASE) if usable else False
        if self._probe is False:
            return True
        assert isinstance(self._probe, re.Pattern)
        try:
            blob = orjson.dumps(data)
        except TypeError:  # not JSON data (cannot come from a store): walk it
            return True
        return self._probe.search(blob) is not None

    def text(self, value: str) -> str:
        """A string value with every owner ID, of any length and case, replaced."""
        if not self._public:
            return value
        return self._all().sub(lambda m: self._lookup(m.group(0)), value)

    def value(self, data: Any) -> Any:
        """``data`` (JSON-like) with ``text`` applied to every string value, and to object keys
        for long IDs. Unchanged parts are returned as they are (no copy)."""
        if not self._public or not self._may_contain(data):
            return data
        pattern = self._all()

        def sub(text: str) -> str:
            return pattern.sub(lambda m: self._lookup(m.group(0)), text) if pattern.search(text) else text

        def key(k: Any) -> Any:
            return self.serialised(k) if self._long and isinstance(k, str) else k

        def walk(v: Any) -> Any:
            if isinstance(v, str):
                return sub(v)
            if isinstance(v, dict):
                out = {key(k): walk(x) for k, x in v.items()}
                same = len(out) == len(v) and all(a is b and out[a] is x for (a, x), b in zip(v.items(), out, strict=True))
                return v if same else out
            if isinstance(v, list):
                items = [walk(x) for x in v]
                return v if all(a is b for a, b in zip(items, v, strict=True)) else items
            return v

        return walk(data)

    def serialised(self, text: str) -> str:
        """Serialised output (HTML, JSON, a live frame) with every long owner ID replaced."""
        if not self._long:
            return text
        encoded = text.encode("utf-8", "surrogatepass")
        redacted = self.serialised_bytes(encoded)
        return text if redacted is encoded else redacted.decode("utf-8", "surrogatepass")

    def serialised_bytes(self, body: bytes) -> bytes:
        if not self._long:
            return body
        lowered = body.lower()  # ASCII only: same length, same offsets
        if len(self._long) <= _FIND_LIMIT:
            return self._replace_found(body, lowered)
        pattern = self._long_pattern()
        pieces: list[bytes] = []
        at = 0
        for match in pattern.finditer(lowered):
            start = match.start()
            if start < at:
                continue
            for length in self._long_lengths[match.group(1)]:
                public = self._long.get(lowered[start : start + length])
                if public is not None:
                    pieces += [body[at:start], public.encode()]
                    at = start + length
                    break
        if not pieces:
            return body
        pieces.append(body[at:])
        return b"".join(pieces)

    def _replace_found(self, body: bytes, lowered: bytes) -> bytes:
        """``serialised_bytes`` for a few IDs (one share's owners): each searched for with
        ``bytes.find`` (C speed, tens of times faster than the anchor pattern on a body full of
        public ``ses_`` ids). Same result: leftmost match first, the longest at one place."""
        upcoming: dict[bytes, int] = {key: lowered.find(key) for key in self._long}
        pieces: list[bytes] = []
        at = 0
        while True:
            best: tuple[int, int, bytes] | None = None
            for key, start in upcoming.items():
                if 0 <= start < at:
                    start = upcoming[key] = lowered.find(key, at)
                if start >= 0 and (best is None or (start, -len(key)) < (best[0], -best[1])):
                    best = (start, len(key), key)
            if best is None:
                break
            start, length, key = best
            pieces += [body[at:start], self._long[key].encode()]
            at = start + length
        if not pieces:
            return body
        pieces.append(body[at:])
        return b"".join(pieces)


_scope: ContextVar[Redactor | None] = ContextVar("cloudsession_redaction_scope", default=None)


@contextmanager
def redaction_scope() -> Iterator[Redactor]:
    """A fresh scope (one per request): owners noted inside it are redacted from its output."""
    redactor = Redactor()
    token = _scope.set(redactor)
    try:
        yield redactor
    finally:
        _scope.reset(token)


def current_redactor() -> Redactor | None:
    return _scope.get()


def note_owner(real: str, public: str) -> None:
    """Register an owner whose data this scope has read (no-op outside a scope)."""
    redactor = _scope.get()
    if redactor is not None:
        redactor.add(real, public)


@dataclass(slots=True)
class PublicShare:
    """A share as anyone with the link may see it: public ids, no secret, no real session ID.

    ``messages`` and ``parts`` are in stored (first-seen) order. The entity dicts are shared with
    the service's cache and must be treated as read-only.
    """

    id: str
    session: dict[str, Any]
    messages: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    diffs: list[dict[str, Any]]
    models: list[dict[str, Any]]
    created_at: int
    last_updated: int
    sync_count: int
    private: bool = False
    expires_at: int | None = None
    # The owner's (and parent session's) ids, for serialised output (the values are redacted).
    redactor: Redactor = field(default_factory=Redactor, repr=False)
    labels: dict[str, str] = field(default_factory=dict)
    final: bool = False

    def data_items(self) -> list[dict[str, Any]]:
        """The flat array ``opencode import`` reads: session, messages and parts in id order,
        then the diff list and the model list."""
        items: list[dict[str, Any]] = [{"type": "session", "data": self.session}]
        items += [{"type": "message", "data": m} for m in sorted(self.messages, key=lambda m: m["id"])]
        items += [{"type": "part", "data": p} for p in sorted(self.parts, key=lambda p: p["id"])]
        items.append({"type": "session_diff", "data": self.diffs})
        items.append({"type": "model", "data": self.models})
        return items

    def agent_session(self) -> dict[str, Any]:
        """The reference's ``AgentSession`` object shape, without the secret."""
        return {
            "session": self.session,
            "messages": self.messages,
            "parts": self.parts,
            "diffs": self.diffs,
            "models": self.models,
            "metadata": {"createdAt": self.created_at, "lastUpdated": self.last_updated, "syncCount": self.sync_count},
        }

    def redact(self, text: str) -> str:
        """Serialised output of this share with any remaining owner ID replaced."""
        return self.redactor.serialised(text)
