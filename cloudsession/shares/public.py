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

import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from cloudsession.jsonio import json_bytes, parse_stored

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
class PublicJSON:
    """A public share already serialised, piece by piece: each entity's redacted JSON (bytes),
    in stored order (``messages``, ``parts``) and in id order (``data_messages``,
    ``data_parts``). The service keeps the pieces across versions and redacts and encodes only
    the entities a sync changed; a response is the pieces joined (``PublicShare.object_json``,
    ``data_json``), byte for byte what encoding the whole view would give."""

    session: bytes
    messages: list[bytes]
    parts: list[bytes]
    data_messages: list[bytes]
    data_parts: list[bytes]
    diffs: bytes
    models: bytes
    # Swapped over the joined body (``PublicPieces``): the owner's sessionID for the public one.
    substitution: tuple[bytes, bytes] | None = None

    def finish(self, body: bytes) -> bytes:
        return body.replace(*self.substitution) if self.substitution is not None else body


def _same(value: Any) -> Any:
    return value


class PublicShare:
    """A share as anyone with the link may see it: public ids, no secret, no real session ID.

    ``messages`` and ``parts`` are in stored (first-seen) order. The entity dicts are shared with
    the service's cache and must be treated as read-only. A view the service builds carries its
    entities serialised (``PublicJSON``) and parses them only when something asks for the dicts
    (``load``, the page renderer); ``etag`` then names its version (``object_etag``/``data_etag``).
    """

    __slots__ = (
        "id", "session", "_messages", "_parts", "diffs", "models", "created_at", "last_updated", "sync_count", "private",
        "expires_at", "redactor", "labels", "final", "json", "version", "_load", "__weakref__",
    )

    def __init__(
        self,
        id: str,
        session: dict[str, Any],
        messages: list[dict[str, Any]] | None,
        parts: list[dict[str, Any]] | None,
        diffs: list[dict[str, Any]],
        models: list[dict[str, Any]],
        created_at: int,
        last_updated: int,
        sync_count: int,
        private: bool = False,
        expires_at: int | None = None,
        redactor: Redactor | None = None,
        labels: dict[str, str] | None = None,
        final: bool = False,
        *,
        json: PublicJSON | None = None,
        version: str | None = None,
        load: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None = None,
    ) -> None:
        self.id = id
        self.session = session
        self._messages = messages
        self._parts = parts
        self.diffs = diffs
        self.models = models
        self.created_at = created_at
        self.last_updated = last_updated
        self.sync_count = sync_count
        self.private = private
        self.expires_at = expires_at
        # The owner's (and parent session's) ids, for serialised output (the values are redacted).
        self.redactor = redactor if redactor is not None else Redactor()
        self.labels = labels if labels is not None else {}
        self.final = final
        self.json = json
        self.version = version
        self._load = load

    def __repr__(self) -> str:
        return f"PublicShare(id={self.id!r}, version={self.version!r})"

    def _materialise(self) -> None:
        if self._messages is None or self._parts is None:
            assert self._load is not None
            self._messages, self._parts = self._load()
            self._load = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        self._materialise()
        assert self._messages is not None
        return self._messages

    @property
    def parts(self) -> list[dict[str, Any]]:
        self._materialise()
        assert self._parts is not None
        return self._parts

    @property
    def message_count(self) -> int:
        return len(self.json.messages) if self.json is not None and self._messages is None else len(self.messages)

    @property
    def object_etag(self) -> str | None:
        """A validator of ``GET /api/share/<id>`` for this version (weak: every encoding shares it)."""
        return f'W/"o{self.version}"' if self.version else None

    @property
    def data_etag(self) -> str | None:
        """A validator of ``GET /api/share/<id>/data`` for this version."""
        return f'W/"d{self.version}"' if self.version else None

    def entities(self) -> tuple[list[Any], list[Any], Callable[[Any], dict[str, Any]]]:
        """Messages and parts as handles that ``parse`` turns into dicts one at a time (in stored
        order), without keeping every dict: the page renderer parses only what it shows. The
        handles are the serialised pieces of a service-built view, else the dicts themselves."""
        j = self.json
        if j is None or (self._messages is not None and self._parts is not None):
            return self.messages, self.parts, _same
        sub = j.substitution
        if sub is None:
            return j.messages, j.parts, parse_stored
        old, new = sub
        return j.messages, j.parts, lambda piece: parse_stored(piece.replace(old, new))

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
            "metadata": self._metadata(),
        }

    def _metadata(self) -> dict[str, Any]:
        return {"createdAt": self.created_at, "lastUpdated": self.last_updated, "syncCount": self.sync_count}

    def object_json(self) -> bytes:
        """``agent_session()`` as JSON (what ``json_bytes`` gives), joined from the pieces."""
        j = self.json
        if j is None:
            return json_bytes(self.agent_session())
        return j.finish(b"".join((
            b'{"session":', j.session,
            b',"messages":[', b",".join(j.messages),
            b'],"parts":[', b",".join(j.parts),
            b'],"diffs":', j.diffs,
            b',"models":', j.models,
            b',"metadata":', json_bytes(self._metadata()), b"}",
        )))

    def data_json(self) -> bytes:
        """``data_items()`` as JSON (what ``json_bytes`` gives), joined from the pieces."""
        j = self.json
        if j is None:
            return json_bytes(self.data_items())
        pieces = [b'[{"type":"session","data":', j.session, b"}"]
        if j.data_messages:
            pieces += [b',{"type":"message","data":', b'},{"type":"message","data":'.join(j.data_messages), b"}"]
        if j.data_parts:
            pieces += [b',{"type":"part","data":', b'},{"type":"part","data":'.join(j.data_parts), b"}"]
        pieces += [b',{"type":"session_diff","data":', j.diffs, b'},{"type":"model","data":', j.models, b"}]"]
        return j.finish(b"".join(pieces))

    def redact(self, text: str) -> str:
        """Serialised output of this share with any remaining owner ID replaced."""
        return self.redactor.serialised(text)


class PublicPieces:
    """One kind of entity (messages or parts) of one share, redacted and serialised piece by
    piece, kept across versions: a new version redacts and encodes only the entities that
    changed (``refresh``).

    Most entities differ from their public form only by the owner's id in ``"sessionID"``. For
    those the piece *is* the stored bytes (shared with the state, no copy) and the response
    swaps that one field (``substitution``) over the joined body: ``refresh`` checks for each
    entity that the swap gives exactly its redacted JSON, and keeps the redacted JSON itself
    otherwise. The swapped bytes cannot span two entities (they hold none of ``,{}[]``, which
    every separator does). ``nbytes`` is what the pieces cost beyond the state's bytes."""

    PIECE_OVERHEAD_BYTES = 120

    __slots__ = ("source", "raw", "json", "sorted_ids", "nbytes", "substitution", "_parsed", "_fresh")

    def __init__(self, source: Any, substitution: tuple[bytes, bytes] | None = None) -> None:
        self.source = source  # the EntityMap these pieces follow (by identity)
        self.raw: dict[str, bytes] = {}  # id -> the stored bytes its piece was made from
        self.json: dict[str, bytes] = {}  # id -> piece (the stored bytes, or its public JSON), in stored order
        self.sorted_ids: list[str] = []
        self.nbytes = 0
        self.substitution = substitution
        # id -> (piece, parsed public dict): kept once a page asked for dicts, reused while the
        # piece is the same object.
        self._parsed: dict[str, tuple[bytes, dict[str, Any]]] | None = None
        self._fresh = True  # the first refresh reads everything, whatever was drained before

    def _cost(self, key: str) -> int:
        piece = self.json[key]
        return self.PIECE_OVERHEAD_BYTES + (0 if piece is self.raw[key] else len(piece))

    def _make(self, key: str, data: bytes, redact: Callable[[bytes], bytes]) -> bool:
        """Set the piece of ``key``; False when a redacted piece holds the substituted bytes
        (it cannot: the real id never survives the redaction; but then nothing is swapped)."""
        if key in self.json:
            self.nbytes -= self._cost(key)
        piece = redact(data)
        sub = self.substitution
        if sub is not None and data.replace(sub[0], sub[1]) == piece:
            piece = data
        elif sub is not None and sub[0] in piece:
            return False
        self.raw[key] = data
        self.json[key] = piece
        self.nbytes += self._cost(key)
        return True

    def refresh(self, redact: Callable[[bytes], bytes]) -> bool:
        """Catch up with the source: pieces of changed (or, when it cannot say, all) entities
        are made again with ``redact`` (stored bytes -> public JSON), unless their bytes are
        equal to those the piece was made from. False when the substitution cannot be used
        (the caller drops it and refreshes everything again)."""
        raw_map = self.source.raw_map()
        # A fresh set reads everything and leaves the change list alone: it may be a one-off
        # view of a state whose kept pieces (another set) still follow that list.
        changed = None if self._fresh else self.source.drain_changes()
        self._fresh = False
        added: list[str] = []
        if changed is None:
            old_raw, old_json = self.raw, self.json
            self.raw, self.json, self.nbytes = {}, {}, 0
            for key, data in raw_map.items():
                known = old_raw.get(key)
                if known is not None and (known is data or known == data):
                    self.raw[key], self.json[key] = data, old_json[key]
                    self.nbytes += self._cost(key)
                elif not self._make(key, data, redact):
                    return False
            if self.raw.keys() != old_raw.keys():
                self.sorted_ids = sorted(self.json)
        else:
            for key in changed:
                data = raw_map.get(key)
                if data is None:
                    continue
                known = self.raw.get(key)
                if known is not None and (known is data or known == data):
                    continue
                if known is None:
                    added.append(key)
                if not self._make(key, data, redact):
                    return False
        if len(added) > 64:
            self.sorted_ids = sorted(self.json)
        else:
            for key in added:
                bisect.insort(self.sorted_ids, key)
        return True

    def in_order(self) -> list[bytes]:
        return list(self.json.values())

    def in_id_order(self) -> list[bytes]:
        return list(map(self.json.__getitem__, self.sorted_ids))

    def loader(self) -> Callable[[], list[dict[str, Any]]]:
        """Parses this version's pieces into dicts when called (later, maybe in a thread),
        reusing the dicts of pieces that have not changed since the last time."""
        ids, pieces = list(self.json), list(self.json.values())

        def load() -> list[dict[str, Any]]:
            known = self._parsed or {}
            parsed: dict[str, tuple[bytes, dict[str, Any]]] = {}
            out = []
            sub = self.substitution
            for key, piece in zip(ids, pieces, strict=True):
                hit = known.get(key)
                if hit is not None and hit[0] is piece:
                    value = hit[1]
                else:
                    value = parse_stored(piece.replace(sub[0], sub[1]) if sub is not None else piece)
                parsed[key] = (piece, value)
                out.append(value)
            self._parsed = parsed
            return out

        return load

    @property
    def parsed_bytes(self) -> int:
        """What the dicts parsed for pages cost, about (six times their JSON)."""
        return sum(map(len, self.json.values())) * 6 if self._parsed is not None else 0
