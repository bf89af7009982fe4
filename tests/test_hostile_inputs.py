"""A hostile-input corpus against a real ``cloudsession serve``: broken HTTP framing, bad
encodings, numbers JSON cannot carry, deep nesting, crafted share ids, odd query strings and
content types. Every input gets a clear 4xx within a deadline (never a 5xx, never a hang), and
the store on disk is byte-for-byte what it was before the input.

Requests are written by hand onto raw sockets, so the framing is exactly what the case says
(an HTTP client library would refuse to send most of these). The inputs that carry the real
secret or the real share id get past authentication, so they reach the validation and the
store, not just the first check.

A few query-string cases are reads of a real share with a hostile ``page``: the page may also
ignore a parameter it cannot use, so for those the answer may instead be exactly the answer to
the same read without the parameter.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import factories as f
import pytest
from servers import ServerProcess

MAX_BODY = 1024 * 1024  # the server under test's MAX_BODY_BYTES
ANSWER_DEADLINE = 10.0  # seconds for any answer; a hang fails the case
SID = "ses_hostile0000000000000Corpus1"
PRIVATE_SID = "ses_hostile0000000000000Corpus2"


@dataclass
class Seeded:
    """The shares already in the store: a public one with content and a private one."""

    id: str
    secret: str
    private_id: str
    private_secret: str
    read_token: str


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Seeded], bytes]
    # For reads that may ignore a parameter: the same read without it (see the module docstring).
    or_same_as: Callable[[Seeded], bytes] | None = None


def _request(method: str, path: str | bytes, body: bytes = b"", headers: list[tuple[str, str]] | None = None, *, content_type: str | None = "application/json") -> bytes:
    target = path.encode("latin-1") if isinstance(path, str) else path
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if content_type is not None and (body or method in ("POST", "DELETE")):
        lines.append(b"Content-Type: " + content_type.encode("latin-1"))
    for name, value in headers or []:
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    if body or method in ("POST", "DELETE"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _head(method: str, path: str, *extra: bytes) -> bytes:
    """A request head with extra raw header lines, not yet terminated."""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode() + b"".join(x + b"\r\n" for x in extra)


def _nested(depth: int, leaf: str = "[]") -> str:
    return "[" * depth + leaf + "]" * depth


def _sync(s: Seeded, data_json: str, *, secret: str | None = None) -> bytes:
    """A sync of the public share with the real secret and ``data`` written as raw JSON text."""
    body = '{"secret": ' + json.dumps(secret or s.secret) + ', "data": ' + data_json + "}"
    # U+DC80..U+DCFF stand for raw bytes 80..ff (surrogateescape); other surrogates are written
    # as the three bytes UTF-8 forbids for them.
    raw = body.encode("utf-8", "surrogateescape") if any("\udc80" <= c <= "\udcff" for c in body) else body.encode("utf-8", "surrogatepass")
    return _request("POST", f"/api/share/{s.id}/sync", raw)


def _part_with(value_json: str) -> str:
    return '[{"type": "part", "data": {"id": "prt_hostile", "messageID": "msg_hostile", "type": "text", "text": ' + value_json + "}}]"


def _create(body: bytes, **kw: Any) -> bytes:
    return _request("POST", "/api/share", body, **kw)


def _framing() -> list[Case]:
    ct = b"Content-Type: application/json"
    post = lambda *extra: _head("POST", "/api/share", ct, *extra)  # noqa: E731
    return [
        Case("chunked-bad-size", lambda s: post(b"Transfer-Encoding: chunked") + b"\r\nzz\r\n{}\r\n0\r\n\r\n"),
        Case("chunked-size-overflow", lambda s: post(b"Transfer-Encoding: chunked") + b"\r\n" + b"f" * 40 + b"\r\n{}\r\n0\r\n\r\n"),
        Case("chunked-and-content-length", lambda s: post(b"Content-Length: 2", b"Transfer-Encoding: chunked") + b"\r\n2\r\n{}\r\n0\r\n\r\n"),
        Case("content-length-duplicated-differing", lambda s: post(b"Content-Length: 2", b"Content-Length: 3") + b"\r\n{} "),
        Case("content-length-duplicated-same", lambda s: post(b"Content-Length: 2", b"Content-Length: 2") + b"\r\n{}"),
        Case("content-length-negative", lambda s: post(b"Content-Length: -1") + b"\r\n{}"),
        Case("content-length-plus-sign", lambda s: post(b"Content-Length: +2") + b"\r\n{}"),
        Case("content-length-30-digits", lambda s: post(b"Content-Length: " + b"9" * 30) + b"\r\n{}"),
        Case("transfer-encoding-unknown", lambda s: post(b"Transfer-Encoding: foo") + b"\r\n{}"),
        Case("transfer-encoding-gzip-chunked", lambda s: post(b"Transfer-Encoding: gzip, chunked") + b"\r\n2\r\n{}\r\n0\r\n\r\n"),
        Case("header-line-100kb", lambda s: _head("GET", f"/api/share/{s.id}/data", b"X-Big: " + b"a" * 100_000) + b"\r\n"),
        Case("request-line-100kb", lambda s: _head("GET", "/api/share/" + "a" * 100_000 + "/data") + b"\r\n"),
        Case("headers-500", lambda s: _head("GET", f"/api/share/{s.id}/data", *(b"X-H%d: v" % i for i in range(500))) + b"\r\n"),
        Case("header-with-nul", lambda s: _head("GET", f"/api/share/{s.id}/data", b"X-A: a\x00b") + b"\r\n"),
        Case("header-without-colon", lambda s: _head("GET", f"/api/share/{s.id}/data", b"NoColonHere") + b"\r\n"),
        Case("header-obs-fold", lambda s: _head("GET", f"/api/share/{s.id}/data", b"X-A: a", b" folded") + b"\r\n"),
        Case("header-name-with-space", lambda s: _head("GET", f"/api/share/{s.id}/data", b"X A: b") + b"\r\n"),
        Case("host-duplicated", lambda s: _head("GET", f"/api/share/{s.id}/data", b"Host: other") + b"\r\n"),
        Case("method-with-control-byte", lambda s: b"G\x01T /api/share/x/data HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        Case("http-version-9.9", lambda s: b"GET /api/share/x/data HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n"),
        Case("bare-lf-line-ends", lambda s: f"GET /api/share/{s.id}/data HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n".encode()),
        Case("raw-non-ascii-in-path", lambda s: b"GET /api/share/\xff\xfe/data HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        Case("tls-client-hello", lambda s: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        Case("http2-preface", lambda s: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Case("body-over-the-limit", lambda s: _create(b"{" + b" " * (MAX_BODY + 10) + b"}")),
        Case(
            "chunked-body-over-the-limit",
            lambda s: post(b"Transfer-Encoding: chunked") + b"\r\n" + b"".join(b"%x\r\n%s\r\n" % (65536, b" " * 65536) for _ in range(MAX_BODY // 65536 + 2)) + b"0\r\n\r\n",
        ),
        # Announces a body beyond the limit and sends none: refused from the header alone.
        Case("content-length-over-the-limit-no-body", lambda s: post(b"Content-Length: %d" % (MAX_BODY * 64)) + b"\r\n"),
    ]


def _encodings() -> list[Case]:
    valid = _json({"sessionID": "ses_hostileEncodingXXXXXXXXXX"})
    return [
        Case("create-invalid-utf8", lambda s: _create(b'{"sessionID": "ses_\xff\xfe\xfd"}')),
        Case("create-overlong-utf8", lambda s: _create(b'{"sessionID": "ses_\xc0\xaf"}')),
        Case("create-utf8-bom", lambda s: _create(b"\xef\xbb\xbf" + valid)),
        Case("create-utf16-le-bom", lambda s: _create(valid.decode().encode("utf-16"))),
        Case("create-utf16-be", lambda s: _create(valid.decode().encode("utf-16-be"), content_type="application/json; charset=utf-16be")),
        Case("create-utf32", lambda s: _create(valid.decode().encode("utf-32"))),
        Case("create-latin1", lambda s: _create('{"sessionID": "ses_caf\u00e9XXXXXXXXXXXXXXXXXXX"}'.encode("latin-1"), content_type="application/json; charset=iso-8859-1")),
        Case("sync-invalid-utf8", lambda s: _sync(s, _part_with('"\udcff\udcfe"'))),  # bytes ff fe once written out
        Case("sync-encoded-surrogate-utf8", lambda s: _sync(s, _part_with('"\ud800"'))),  # CESU-8 bytes ed a0 80
        Case("sync-lone-surrogate-escape", lambda s: _sync(s, _part_with('"\\ud800"'))),
        Case("sync-utf8-bom", lambda s: _bom_body(_sync(s, "[]"))),
        Case("sync-utf16", lambda s: _recode(_sync(s, _part_with('"x"')), "utf-16")),
        Case("create-gzip-invalid", lambda s: _create(b"not gzip at all", headers=[("Content-Encoding", "gzip")])),
        Case("create-deflate-invalid", lambda s: _create(b"not deflate at all", headers=[("Content-Encoding", "deflate")])),
        Case("create-gzip-of-garbage-json", lambda s: _create(gzip.compress(b"{not json"), headers=[("Content-Encoding", "gzip")])),
        Case("sync-deflate-of-garbage-json", lambda s: _recompress(_sync(s, "[{]"))),
        Case("create-content-encoding-unknown", lambda s: _create(valid, headers=[("Content-Encoding", "x-unknown")])),
    ]


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, body = raw.split(b"\r\n\r\n", 1)
    return head, body


def _with_body(head: bytes, body: bytes, *extra: str) -> bytes:
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length")]
    lines += [x.encode() for x in extra] + [b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _bom_body(raw: bytes) -> bytes:
    head, body = _split(raw)
    return _with_body(head, b"\xef\xbb\xbf" + body)


def _recode(raw: bytes, encoding: str) -> bytes:
    head, body = _split(raw)
    return _with_body(head, body.decode().encode(encoding))


def _recompress(raw: bytes) -> bytes:
    head, body = _split(raw)
    return _with_body(head, zlib.compress(body), "Content-Encoding: deflate")


def _numbers() -> list[Case]:
    cases = [
        ("sync-1e999", "1e999"),
        ("sync-minus-1e999", "-1e999"),
        ("sync-10000-digit-integer", "1" * 10_000),
        ("sync-NaN", "NaN"),
        ("sync-Infinity", "Infinity"),
        ("sync-minus-Infinity", "-Infinity"),
        ("sync-hex-number", "0x10"),
        ("sync-leading-zero", "007"),
        ("sync-trailing-dot", "1."),
    ]
    out = [Case(name, lambda s, v=value: _sync(s, _part_with(v))) for name, value in cases]
    out += [
        Case("create-ttl-minus-zero", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "ttl": -0}')),
        Case("create-ttl-float", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "ttl": 60.0}')),
        Case("create-ttl-exponent", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "ttl": 1e3}')),
        Case("create-ttl-10000-digits", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "ttl": ' + b"9" * 10_000 + b"}")),
        Case("create-expires-at-int64-max", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "expiresAt": 9223372036854775807}')),
        Case("create-expires-at-int64-min", lambda s: _create(b'{"sessionID": "ses_hostileNumbersXXXXXXXXXXXX", "expiresAt": -9223372036854775808}')),
        Case("expiry-ttl-10-pow-18", lambda s: _request("POST", f"/api/share/{s.id}/expiry", _json({"secret": s.secret, "ttl": 10**18}))),
        Case("privacy-private-as-number", lambda s: _request("POST", f"/api/share/{s.id}/privacy", _json({"secret": s.secret, "private": 1}))),
        Case("ops-seq-negative", lambda s: _request("POST", f"/api/share/{s.id}/ops", _json({"secret": s.secret, "ops": [_op(seq=-1)]}))),
        Case("ops-seq-1e400", lambda s: _request("POST", f"/api/share/{s.id}/ops", _json({"secret": s.secret, "ops": [_op()]}).replace(b'"seq": 0', b'"seq": 1e400'))),
        Case("ops-epoch-huge", lambda s: _request("POST", f"/api/share/{s.id}/ops", _json({"secret": s.secret, "epoch": 10**30, "ops": [_op()]}))),
    ]
    return out


def _op(**over: Any) -> dict[str, Any]:
    envelope = {
        "op_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "batch_id": "hostile",
        "seq": 0,
        "item": {"type": "message", "data": {"id": "msg_hostile_op", "role": "user"}},
    }
    return {**envelope, **over}


def _nesting() -> list[Case]:
    return [
        Case("create-10000-nested-arrays", lambda s: _create(_nested(10_000).encode())),
        Case("create-10000-nested-objects", lambda s: _create(('{"a":' * 10_000 + "1" + "}" * 10_000).encode())),
        Case("sync-10000-nested-arrays", lambda s: _sync(s, _nested(10_000))),
        # Within the parser's limit, but deeper than anything can be stored: refused up front.
        Case("sync-part-nested-300", lambda s: _sync(s, _part_with(_nested(300)))),
        Case("sync-session-nested-250", lambda s: _sync(s, '[{"type": "session", "data": {"id": "' + SID + '", "x": ' + _nested(250) + "}}]")),
        Case("sync-model-nested-260", lambda s: _sync(s, '[{"type": "model", "data": [{"id": "m", "x": ' + _nested(260) + "}]}]")),
        Case(
            "ops-item-nested-300",
            lambda s: _request("POST", f"/api/share/{s.id}/ops", _json({"secret": s.secret, "ops": [_op(item={"type": "message", "data": {"id": "m", "x": 0}})]}).replace(b'"x": 0', _nested(300).encode())),
        ),
    ]


def _ids() -> list[Case]:
    def sync_to(path_id: str) -> Callable[[Seeded], bytes]:
        return lambda s: _request("POST", f"/api/share/{path_id.format(id=s.id)}/sync", _json({"secret": s.secret, "data": [f.item("session", f.session(SID, title="moved"))]}))

    def delete_at(path_id: str) -> Callable[[Seeded], bytes]:
        return lambda s: _request("DELETE", f"/api/share/{path_id.format(id=s.id)}", _json({"secret": s.secret}))

    reads = {
        "dotdot": "..",
        "dotdot-encoded": "%2e%2e",
        "slash-encoded": "a%2Fb",
        "traversal-to-store-lock": "..%2F..%2Fstore.lock",
        "backslash-traversal": "..%5C..%5Cstore.lock",
        "nul": "%00",
        "unicode": "%C3%A9%E2%80%AE",
        "fullwidth-letters": "%EF%BC%A1%EF%BC%A2",
        "10kb": "a" * 7000,  # as long as the request line allows (aiohttp's limit is 8190 bytes)
        "invalid-percent": "%zz",
        "percent-ff": "%ff",
        "json-looking": "%7B%7D",
    }
    out = [Case(f"read-id-{name}", lambda s, v=value: _request("GET", f"/api/share/{v}/data")) for name, value in reads.items()]
    out += [Case(f"page-id-{name}", lambda s, v=value: _request("GET", f"/share/{v}")) for name, value in reads.items() if name != "10kb"]
    out += [
        Case("sync-id-traversal-to-real-share", sync_to("..%2F{id}")),
        Case("sync-id-dot-slash-real-share", sync_to(".%2F{id}")),
        Case("sync-id-real-share-with-nul", sync_to("{id}%00")),
        Case("sync-id-real-share-uppercase", lambda s: sync_to(s.id.upper() if s.id.upper() != s.id else s.id + "X")(s)),
        Case("sync-id-real-share-trailing-space", sync_to("{id}%20")),
        Case("sync-id-real-share-fullwidth-digit", sync_to("{id}%EF%BC%91")),
        Case("delete-id-traversal", delete_at("..%2F{id}")),
        Case("delete-id-encoded-dotdot", delete_at("%2e%2e")),
        Case("create-session-id-nul", lambda s: _create(_json({"sessionID": "ses_\u0000hostile"}))),
        Case("create-session-id-10kb", lambda s: _create(_json({"sessionID": "ses_" + "x" * 10_000}))),
        Case("create-session-id-not-a-string", lambda s: _create(_json({"sessionID": ["ses_hostile"]}))),
        Case("sync-item-id-10kb", lambda s: _sync(s, _json([f.item("message", {"id": "m" * 10_000, "role": "user"})]).decode())),
        Case("sync-item-id-not-a-string", lambda s: _sync(s, _json([f.item("message", {"id": 7, "role": "user"})]).decode())),
    ]
    return out


def _queries() -> list[Case]:
    def private(query: str) -> Callable[[Seeded], bytes]:
        return lambda s: _request("GET", f"/api/share/{s.private_id}/data?{query.format(token=s.read_token)}")

    out = [
        Case("query-token-invalid-percent", private("token=%zz")),
        Case("query-token-percent-ff", private("token=%ff")),
        Case("query-token-6kb", private("token=" + "t" * 6000)),
        Case("query-token-repeated-700", private("&".join(["token=x"] * 700))),
        Case("query-token-real-then-nul", private("token={token}%00")),
        Case("query-token-as-array", private("token[]={token}")),
        Case("query-token-wrong-then-real", private("token=x&token={token}")),
    ]

    def page(path: str, query: str) -> Case:
        name = f"query-{path.strip('/').replace('/', '-') or 'page'}-{query}"
        full = lambda s: path.format(id=s.id)  # noqa: E731
        return Case(
            name.replace("%", "").replace("=", "-"),
            lambda s: _request("GET", f"{full(s)}?{query}"),
            or_same_as=lambda s: _request("GET", full(s)),
        )

    for path in ("/share/{id}", "/share/{id}/fragments", "/sessions"):
        for query in ("page=%C2%B2", "page=%D9%A3%C2%B2", "page=-1", "page=" + "9" * 40, "page=1e3", "page=1&page=2"):
            out.append(page(path, query))
    out.append(Case("query-data-id-list-1000", lambda s: _request("GET", f"/api/share/{s.id}/data?" + "&".join(f"id={n}" for n in range(1000))), or_same_as=lambda s: _request("GET", f"/api/share/{s.id}/data")))
    return out


def _content_types() -> list[Case]:
    create = _json({"sessionID": "ses_hostileContentTypeXXXXXXXX"})
    return [
        Case("create-text-plain", lambda s: _create(create, content_type="text/plain")),
        Case("create-no-content-type", lambda s: _create(create, content_type=None)),
        Case("create-form-urlencoded", lambda s: _create(b"sessionID=ses_hostileContentTypeXXXXXXXX", content_type="application/x-www-form-urlencoded")),
        Case("create-multipart", lambda s: _create(b'--b\r\nContent-Disposition: form-data; name="sessionID"\r\n\r\nx\r\n--b--\r\n', content_type="multipart/form-data; boundary=b")),
        Case("create-json-lookalike", lambda s: _create(create, content_type="application/jsonx")),
        Case("create-json-10kb-parameter", lambda s: _create(b"{}", content_type="application/json; x=" + "a" * 6000)),
        Case("sync-text-html-real-secret", lambda s: _recontent(_sync(s, _json([f.item("session", f.session(SID, title="html"))]).decode()), "text/html")),
        Case("sync-empty-body", lambda s: _request("POST", f"/api/share/{s.id}/sync", b"")),
        Case("sync-json-null", lambda s: _request("POST", f"/api/share/{s.id}/sync", b"null")),
        Case("sync-json-array", lambda s: _request("POST", f"/api/share/{s.id}/sync", b"[]")),
        Case("sync-json-string", lambda s: _request("POST", f"/api/share/{s.id}/sync", b'"secret"')),
        Case("sync-trailing-garbage", lambda s: _with_body(_split(_sync(s, "[]"))[0], _split(_sync(s, "[]"))[1] + b"}{")),
        Case("sync-two-json-documents", lambda s: _with_body(_split(_sync(s, "[]"))[0], _split(_sync(s, "[]"))[1] * 2)),
        Case("sync-wrong-method-put", lambda s: _request("PUT", f"/api/share/{s.id}/sync", _json({"secret": s.secret, "data": []}))),
        Case("create-method-trace", lambda s: _request("TRACE", "/api/share")),
    ]


def _recontent(raw: bytes, content_type: str) -> bytes:
    return raw.replace(b"Content-Type: application/json", b"Content-Type: " + content_type.encode(), 1)


CASES = _framing() + _encodings() + _numbers() + _nesting() + _ids() + _queries() + _content_types()


# -- the server, its seeded shares and the store snapshot -------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "CLOUDSESSION_MAX_BODY_BYTES": str(MAX_BODY),
        "CLOUDSESSION_PUBLIC_LISTING": "true",
        "CLOUDSESSION_SWEEP_INTERVAL_SECONDS": "0",  # nothing may write to the store but the cases
        "CLOUDSESSION_RATE_LIMITS": "false",  # each input must reach the code it aims at, not a 429
    }
    proc = ServerProcess(tmp_path_factory.mktemp("hostile") / "data", env).start()
    try:
        yield proc
    finally:
        proc.stop()


def _call(server: ServerProcess, path: str, body: Any) -> Any:
    request = urllib.request.Request(server.url + path, data=_json(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def seeded(server: ServerProcess) -> Seeded:
    share = _call(server, "/api/share", {"sessionID": SID})
    message = f.user_message(SID)
    items = [f.item("session", f.session(SID, title="hostile corpus")), f.item("message", message), f.item("part", f.text_part(SID, message["id"], "kept as is"))]
    _call(server, f"/api/share/{share['id']}/sync", {"secret": share["secret"], "data": items})
    private = _call(server, "/api/share", {"sessionID": PRIVATE_SID, "private": True})
    _call(server, f"/api/share/{private['id']}/sync", {"secret": private["secret"], "data": items[:1]})
    # The server writes index entries just after answering (INDEX_WRITE_DELAY_SECONDS, 0.5 s):
    # every case compares the store with what it was once they have landed.
    last = snapshot(server.data_dir)
    for _ in range(30):
        time.sleep(1.0)
        now = snapshot(server.data_dir)
        if now == last:
            break
        last = now
    return Seeded(share["id"], share["secret"], private["id"], private["secret"], private["readToken"])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the data dir and the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole answer: its head and the ``Content-Length`` bytes of body.
    (A server may answer early and keep the connection open a while to drain a body it refused.)"""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False  # no length: the answer ends when the server closes


def send(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes and read the answer; (status, body), or a failure after the deadline."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before it has read everything we sent
        data = b""
        while not _complete(data):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no complete answer within {ANSWER_DEADLINE}s (got {data[:200]!r})")
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    assert data, "the server closed the connection without an answer"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2 and status_line[0].startswith(b"HTTP/"), f"not an HTTP answer: {data[:200]!r}"
    return int(status_line[1]), body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gets_a_clear_4xx_and_leaves_the_store_untouched(case: Case, server: ServerProcess, seeded: Seeded) -> None:
    before = snapshot(server.data_dir)
    status, body = send(server.port, case.build(seeded))
    if case.or_same_as is not None and not 400 <= status < 500:
        plain_status, plain_body = send(server.port, case.or_same_as(seeded))
        assert (status, body) == (plain_status, plain_body), f"answered {status}, not a 4xx nor the answer without the parameter"
    else:
        assert 400 <= status < 500, f"answered {status}: {body[:300]!r}"
    assert snapshot(server.data_dir) == before, "the store changed"


def test_the_corpus_is_large_and_its_ids_are_unique() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


def test_an_entity_nested_to_the_limit_is_stored_and_read_back_everywhere(server: ServerProcess, seeded: Seeded) -> None:
    """The nesting limit (shares/items.py MAX_NESTING) leaves room for every stored and public
    document: an entity exactly at the limit syncs, and every read of it answers 200."""
    own = _call(server, "/api/share", {"sessionID": "ses_hostileNestingLimitXXXXXXXXX"})
    deep: Any = "bottom"
    for _ in range(199):  # the part object itself is the 200th level
        deep = [deep]
    part = {**f.text_part(SID, "msg_deep", "deep"), "deep": deep}
    status, body = send(server.port, _request("POST", f"/api/share/{own['id']}/sync", _json({"secret": own["secret"], "data": [f.item("part", part)]})))
    assert status == 200, body
    for path in (f"/api/share/{own['id']}/data", f"/api/share/{own['id']}", f"/api/share/{own['id']}/metadata", f"/share/{own['id']}"):
        status, body = send(server.port, _request("GET", path))
        assert status == 200, (path, body[:300])
    status, body = send(server.port, _request("GET", f"/api/share/{own['id']}/data"))
    assert b'"bottom"' in body
