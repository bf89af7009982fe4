"""Cap'n Web value encoding: JSON text <-> Python values, with references left as placeholders.

This module is the pure half of the protocol: it parses one message, turns wire expressions into
Python values (and back), and enforces the size, depth and bigint limits. It knows nothing about
sessions or shares. Expressions that point into an export or import table (``pipeline``,
``import``, ``export``, ``promise``, ``remap``) are decoded into placeholder objects that the
session resolves; on the way out, objects that travel by reference are handed to an export hook.

Wire forms handled (see the protocol spec, section 4):

* ``[[e0, e1, ...]]`` escaped arrays, ``["undefined"]``, ``["inf"]``/``["-inf"]``/``["nan"]``,
  ``["bigint", "123"]``, ``["date", ms]`` (and ``["date", null]``), ``["bytes", b64]`` padded or
  not, ``["error", name, message, ...]``.
* Only the subset every client version understands is ever emitted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

# The JavaScript error classes a client can rebuild; any other name arrives as a plain Error.
JS_ERROR_NAMES: Final = frozenset(
    {"Error", "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError", "URIError", "AggregateError"}
)
# Integers beyond this lose precision as JavaScript numbers, so they travel as ["bigint", ...].
MAX_SAFE_INTEGER: Final = 2**53 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True)
class RpcLimits:
    """Receive limits. The defaults follow the JavaScript client's own (32 MiB, depth 256)."""

    max_message_bytes: int = 32 * 1024 * 1024
    max_batch_bytes: int = 32 * 1024 * 1024
    max_depth: int = 256
    # Python refuses int(str) beyond 4300 digits by default (a guard against quadratic parsing);
    # the JS client allows 16384, but nothing we serve needs integers that long.
    max_bigint_digits: int = 4300
    max_pushes_per_batch: int = 1000
    max_concurrent_calls: int = 64
    # An HTTP batch's body may take max_batch_seconds plus one second per min_batch_bytes_per_second
    # bytes received so far (408 otherwise): a trickled body ends, a large honest one does not.
    # None: no deadline.
    max_batch_seconds: float | None = None
    min_batch_bytes_per_second: int = 32 * 1024
    # Live entries in a WebSocket session's export table (calls not yet released by the client).
    max_exports: int = 10_000


class ProtocolError(Exception):
    """The peer broke the protocol; the session is aborted. ``status`` is the HTTP answer in batch mode."""

    status: int = 400

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class LimitExceeded(ProtocolError):
    """A configured limit was exceeded (message size, push count)."""

    status = 413


class BodyTimeout(ProtocolError):
    """An HTTP batch's body did not arrive in time (``RpcLimits.max_batch_seconds``)."""

    status = 408


class UnsupportedEncoding(ProtocolError):
    """A ``Content-Encoding`` on an HTTP batch: compressed bodies are never inflated."""

    status = 415


class RpcError(Exception):
    """An error that crosses the wire as ``["error", name, message]``.

    Targets raise it to reject a call with a client-visible message; received error values decode
    to it. ``name`` is one of the JavaScript error class names (anything else becomes ``Error``).
    """

    def __init__(self, name: str, message: str, *, stack: str | None = None) -> None:
        self.name = name if name in JS_ERROR_NAMES else "Error"
        self.message = message
        self.stack = stack
        super().__init__(message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RpcError) and (self.name, self.message) == (other.name, other.message)

    def __hash__(self) -> int:
        return hash((self.name, self.message))

    def __repr__(self) -> str:
        return f"RpcError({self.name!r}, {self.message!r})"


class _Undefined:
    """JavaScript ``undefined``: distinct from ``None`` (``null``)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNDEFINED"


class _InvalidDate:
    """JavaScript ``new Date(NaN)`` (``["date", null]``), which has no ``datetime`` equivalent."""

    _instance: _InvalidDate | None = None

    def __new__(cls) -> _InvalidDate:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INVALID_DATE"


UNDEFINED: Final = _Undefined()
INVALID_DATE: Final = _InvalidDate()


class BigInt(int):
    """An integer that arrived as ``["bigint", ...]`` and is sent back the same way."""


class RpcTarget:
    """Base class for objects passed by reference: the peer gets a stub and calls its methods.

    Only public methods (and properties) defined on the class are reachable remotely; instance
    attributes and names starting with ``_`` are not.
    """


# --- placeholders for table references -------------------------------------------------------


@dataclass(eq=False)
class PipelineRef:
    """``["pipeline"|"import", id, path?, args?]``: a property read or call on the receiver's export ``id``."""

    kind: str
    export_id: int
    path: list[str | int] | None
    args: list[Any] | None
    # Whether ``args`` hold references themselves (if not, they are final values as decoded).
    nested_refs: bool = False
    # Set by the session when it starts evaluating this reference.
    outcome: Any = field(default=None, repr=False)


@dataclass(eq=False)
class PeerExportRef:
    """``["export"|"promise", id]``: a stub or promise the sender exports (our import ``id``)."""

    kind: str
    import_id: int
    # Set by the session when it starts evaluating this reference.
    outcome: Any = field(default=None, repr=False)


@dataclass(eq=False)
class RemapRef:
    """``["remap", id, path, captures, instructions]`` (``promise.map()``), kept only to reject it."""

    export_id: int
    # Set by the session to the rejection it answers with.
    outcome: Any = field(default=None, repr=False)


Reference = PipelineRef | PeerExportRef | RemapRef


@dataclass
class Decoded:
    """A decoded expression and the references inside it, innermost first (evaluation order)."""

    value: Any
    refs: list[Reference]


# --- parsing -----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"invalid JSON constant {name}")


def parse_message(text: str, limits: RpcLimits) -> list[Any]:
    """Parse one message line/frame into its JSON array, or raise ProtocolError."""
    # A character takes at most 4 UTF-8 bytes, so most messages need no byte count at all.
    if len(text) * 4 > limits.max_message_bytes and len(text.encode("utf-8", "surrogatepass")) > limits.max_message_bytes:
        raise LimitExceeded(f"RPC message exceeds the maximum size of {limits.max_message_bytes} bytes")
    try:
        msg = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"RPC message exceeds the maximum depth of {limits.max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and int() beyond the digit limit
        raise ProtocolError(f"malformed JSON in RPC message: {str(exc)[:120]}") from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise ProtocolError(f"bad RPC message: {_preview(text)}")
    return msg


def _preview(text: str) -> str:
    return text if len(text) <= 100 else text[:100] + "..."


def dumps(message: Any) -> str:
    """Serialise one outgoing message compactly, never with bare NaN/Infinity.

    Strings decoded from ``\\ud800``-style escapes may hold lone surrogates, which cannot be
    written as UTF-8; such messages fall back to ASCII escapes (what JavaScript emits too).
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


# --- decoding (wire -> Python) -------------------------------------------------------------------


class _Decoder:
    def __init__(self, limits: RpcLimits) -> None:
        self.limits = limits
        self.refs: list[Reference] = []

    def value(self, expr: Any, depth: int) -> Any:
        if depth >= self.limits.max_depth:
            raise ProtocolError(f"RPC message exceeds the maximum depth of {self.limits.max_depth}")
        if isinstance(expr, list):
            if len(expr) == 1 and isinstance(expr[0], list):
                return [self.value(item, depth + 1) for item in expr[0]]
            return self.special(expr, depth)
        if isinstance(expr, dict):
            return {key: self.value(item, depth + 1) for key, item in expr.items()}
        if isinstance(expr, int) and not isinstance(expr, bool) and abs(expr) > MAX_SAFE_INTEGER:
            # JSON numbers are doubles to every JavaScript peer; keep that meaning.
            try:
                return float(expr)
            except OverflowError:
                return math.inf if expr > 0 else -math.inf
        return expr

    def special(self, expr: list[Any], depth: int) -> Any:
        tag = expr[0] if expr else None
        n = len(expr)
        match tag:
            case "undefined" if n == 1:
                return UNDEFINED
            case "inf" if n == 1:
                return math.inf
            case "-inf" if n == 1:
                return -math.inf
            case "nan" if n == 1:
                return math.nan
            case "bigint" if n == 2 and isinstance(expr[1], str):
                return self.bigint(expr[1])
            case "date" if n == 2:
                return _decode_date(expr[1])
            case "bytes" if n in (2, 3) and isinstance(expr[1], str) and (n == 2 or isinstance(expr[2], str)):
                # The 3-element typed-array form carries little-endian raw bytes; we keep the bytes.
                return _decode_bytes(expr[1])
            case "error" if 3 <= n <= 5 and isinstance(expr[1], str) and isinstance(expr[2], str):
                stack = expr[3] if n >= 4 and isinstance(expr[3], str) else None
                return RpcError(expr[1], expr[2], stack=stack)
            case "pipeline" | "import" if 2 <= n <= 4 and _is_id(expr[1]):
                return self.pipeline(expr, depth)
            case "export" | "promise" if n == 2 and _is_id(expr[1]):
                peer = PeerExportRef(tag, expr[1])
                self.refs.append(peer)
                return peer
            case "remap" if n == 5 and _is_id(expr[1]) and all(isinstance(x, list) for x in expr[2:]):
                remap = RemapRef(expr[1])
                self.refs.append(remap)
                return remap
        shown = _preview(json.dumps(tag)) if isinstance(tag, str) else "(not a type name)"
        raise ProtocolError(f"unknown special value: {shown}")

    def bigint(self, digits: str) -> BigInt:
        body = digits[1:] if digits[:1] == "-" else digits
        if len(body) > self.limits.max_bigint_digits:
            raise LimitExceeded(f"bigint exceeds the maximum length of {self.limits.max_bigint_digits} digits")
        if not body.isascii() or not body.isdigit():
            raise ProtocolError("invalid bigint")
        return BigInt(int(digits))

    def pipeline(self, expr: list[Any], depth: int) -> PipelineRef:
        path = expr[2] if len(expr) >= 3 else None
        if path is not None and not (
            isinstance(path, list) and all(isinstance(p, str) or _is_id(p) for p in path)
        ):
            raise ProtocolError("invalid property path in RPC expression")
        args = None
        before = len(self.refs)
        if len(expr) == 4:
            if not isinstance(expr[3], list):
                raise ProtocolError("invalid argument list in RPC expression")
            # The argument list is a plain array of expressions, one level deeper (as in JS).
            args = [self.value(a, depth + 1) for a in expr[3]]
        ref = PipelineRef(expr[0], expr[1], path, args, nested_refs=len(self.refs) > before)
        self.refs.append(ref)  # after its arguments' references: inner calls start first
        return ref


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_date(ms: Any) -> datetime | _InvalidDate:
    if ms is None:
        return INVALID_DATE
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
        raise ProtocolError("invalid date")
    try:
        # JavaScript Dates hold whole milliseconds (TimeClip truncates toward zero).
        return _EPOCH + int(ms) * _ONE_MS
    except OverflowError:
        raise ProtocolError("date out of the supported range (years 1-9999)") from None


def _decode_bytes(text: str) -> bytes:
    # 0.12 clients send unpadded base64 and 0.4.0 padded: pad, then decode strictly.
    stripped = text.rstrip("=")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid base64 in bytes value") from None


def decode(expr: Any, limits: RpcLimits, depth: int = 0) -> Decoded:
    """Turn a wire expression into Python values; table references become placeholders."""
    decoder = _Decoder(limits)
    value = decoder.value(expr, depth)
    return Decoded(value, decoder.refs)


# --- encoding (Python -> wire) ------------------------------------------------------------------

ExportHook = Callable[[Any], list[Any]]


class _Encoder:
    def __init__(self, limits: RpcLimits, export: ExportHook | None) -> None:
        self.limits = limits
        self.export = export

    def value(self, value: Any, depth: int) -> Any:
        if depth >= self.limits.max_depth:
            raise RpcError("TypeError", "Serialization exceeded maximum allowed depth.")
        if value is None or isinstance(value, str | bool):
            return value
        if isinstance(value, int):
            if isinstance(value, BigInt) or abs(value) > MAX_SAFE_INTEGER:
                return ["bigint", str(value)]
            return value
        if isinstance(value, float):
            if math.isnan(value):
                return ["nan"]
            if math.isinf(value):
                return ["inf"] if value > 0 else ["-inf"]
            return value
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise RpcError("TypeError", "Cannot serialize value: object keys must be strings")
            return {key: self.value(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [[self.value(item, depth + 1) for item in value]]
        if value is UNDEFINED:
            return ["undefined"]
        if isinstance(value, bytes | bytearray | memoryview):
            return ["bytes", base64.b64encode(bytes(value)).decode("ascii").rstrip("=")]
        if isinstance(value, datetime):
            when = value if value.tzinfo else value.replace(tzinfo=UTC)
            return ["date", (when - _EPOCH) // _ONE_MS]
        if value is INVALID_DATE:
            return ["date", None]
        if isinstance(value, RpcError):
            return ["error", value.name, value.message]
        if isinstance(value, BaseException):
            # Python exceptions are not part of any API: show the class of error, not internals.
            return ["error", "Error", "Internal error"]
        if isinstance(value, RpcTarget) or callable(value):
            if self.export is None:
                raise RpcError("TypeError", "Cannot serialize value: stubs cannot be sent here")
            return self.export(value)
        raise RpcError("TypeError", f"Cannot serialize value: [object {type(value).__name__}]")


def encode(value: Any, limits: RpcLimits, export: ExportHook | None = None) -> Any:
    """Turn a Python value into a wire expression. Targets and functions go through ``export``.

    Raises RpcError (TypeError) for values that cannot be sent, like JavaScript does.
    """
    return _Encoder(limits, export).value(value, 0)


def error_expression(error: RpcError) -> list[Any]:
    """The wire form of a rejection (no stack: it would leak server internals)."""
    return ["error", error.name, error.message]
