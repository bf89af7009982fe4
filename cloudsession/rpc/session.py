"""One Cap'n Web RPC session: the export/import tables and the message state machine.

A session serves one "main" object to one peer. The transport feeds it incoming messages with
``receive()`` (synchronously, in arrival order) and gives it a ``send`` callback for outgoing
ones; the session never touches sockets or HTTP. It knows nothing about shares.

Semantics kept from the JavaScript reference (protocol spec sections 2, 3, 5, 6 and 8):

* every ``push`` takes the next positive export id and starts evaluating at once, so calls reach
  their target in message order (E-order); a call whose arguments are pipelined waits for them,
  and a rejected dependency rejects the call with the same error;
* ``pull`` sends exactly one ``resolve``/``reject`` when the value is final; unpulled calls run;
* values go by copy, ``RpcTarget`` objects and functions by reference (``["export", -n]``);
* ``release`` drops references, ``abort`` and protocol errors end the session.

Stubs and promises the peer passes in become imports. A stub is valid while the call that
received it runs and is released when that call finishes. Calls back into the peer and promises
from the peer only work when the transport can carry the peer's answer (WebSocket); in batch mode
they are rejected instead of hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from .codec import (
    UNDEFINED,
    LimitExceeded,
    PeerExportRef,
    PipelineRef,
    ProtocolError,
    Reference,
    RemapRef,
    RpcError,
    RpcLimits,
    RpcTarget,
    decode,
    encode,
    error_expression,
    parse_message,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = RpcError("Error", "Internal error")

# Tasks of calls that may outlive the request that started them (an unpulled push keeps running
# after its batch response was sent); holding them here keeps them from being garbage-collected.
_RUNNING: set[asyncio.Task[Any]] = set()


class PeerAborted(ProtocolError):
    """The peer sent ``["abort", ...]``: it is gone, nothing more is sent."""


@dataclass(eq=False)
class _Export:
    outcome: asyncio.Future[Any]
    refcount: int = 1
    pulled: bool = False


@dataclass(eq=False)
class _Import:
    refcount: int = 0
    # Set for peer promises and for the results of our own calls into the peer.
    outcome: asyncio.Future[Any] | None = None


class PeerStub(RpcTarget):
    """A stub for a callback or target the peer passed in (one of our imports).

    ``await stub.call(*args)`` calls it; ``stub.get("a", "b")`` points at a property path on it.
    """

    def __init__(self, session: RpcSession, import_id: int, path: Sequence[str | int] = ()) -> None:
        self._session = session
        self._import_id = import_id
        self._path = list(path)

    def get(self, *path: str | int) -> PeerStub:
        return PeerStub(self._session, self._import_id, [*self._path, *path])

    async def call(self, *args: Any) -> Any:
        return await self._session.call_peer(self._import_id, self._path, args)

    def wire_reference(self) -> list[Any]:
        """How the peer refers to its own export when we send this stub back."""
        if self._path:
            return ["pipeline", self._import_id, list(self._path)]
        return ["import", self._import_id]


class RpcSession:
    """Serves ``main`` (export 0) to one peer. ``batch`` means the peer cannot answer us."""

    def __init__(
        self,
        main: Any,
        send: Callable[[list[Any]], None],
        *,
        limits: RpcLimits,
        batch: bool,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._send_raw = send
        self._limits = limits
        self._batch = batch
        self._exports: dict[int, _Export] = {0: _Export(self._settled(main))}
        # Identity of each object exported by reference -> its id, so re-sending reuses the id.
        self._export_ids: dict[int, int] = {id(main): 0}
        self._next_push_id = 1
        self._next_export_id = -1
        self._imports: dict[int, _Import] = {}
        self._next_peer_call_id = 1
        self._answers: set[asyncio.Task[None]] = set()
        self._running_calls = 0
        self._input_ended = False
        self.closed = False

    # --- transport interface ------------------------------------------------------------------

    def receive(self, text: str) -> None:
        """Handle one incoming message. Raises ProtocolError (the session must then end)."""
        if self.closed:
            return
        msg = parse_message(text, self._limits)
        tag, n = msg[0], len(msg)
        if tag in ("push", "stream") and n == 2:
            self._push(msg[1], auto_pull=tag == "stream")
        elif tag == "pull" and n == 2 and _is_int(msg[1]):
            self._pull(msg[1])
        elif tag == "release" and n == 3 and _is_int(msg[1]) and _is_int(msg[2]) and msg[2] > 0:
            self._release(msg[1], msg[2])
        elif tag in ("resolve", "reject") and n == 3 and _is_int(msg[1]):
            self._settle_import(msg[1], msg[2], rejected=tag == "reject")
        elif tag == "abort" and n == 2:
            raise PeerAborted(f"RPC session aborted by the peer: {_describe_error(msg[1])}")
        elif tag == "pipe" and n == 1:
            # A client-side ReadableStream argument; nothing we serve takes streams.
            self._add_push_export(self._failed(RpcError("TypeError", "Streams are not supported by this server.")))
        else:
            shown = text if len(text) <= 100 else text[:100] + "..."
            raise ProtocolError(f"bad RPC message: {shown}")

    def end_of_input(self) -> None:
        """Batch mode: the peer will send nothing more, so its promises can never resolve."""
        self._input_ended = True
        self._fail_pending_imports(RpcError("Error", "Batch RPC request ended before the client resolved a promise."))

    async def drain(self) -> None:
        """Wait until every pulled id has been answered (including pulls made meanwhile)."""
        while self._answers:
            await asyncio.wait(set(self._answers))

    def abort(self, error: ProtocolError) -> None:
        """End the session because of ``error``, telling the peer if it is still listening."""
        if not isinstance(error, PeerAborted):
            self._send(["abort", ["error", "Error", error.message]])
        self.close(error.message)

    def close(self, reason: str = "RPC session ended") -> None:
        """Stop sending; calls still running finish, but their results are dropped."""
        if self.closed:
            return
        self.closed = True
        self._fail_pending_imports(RpcError("Error", reason))

    # --- incoming messages ----------------------------------------------------------------------

    def _push(self, expr: Any, *, auto_pull: bool) -> None:
        export_id = self._next_push_id
        if self._batch and export_id > self._limits.max_pushes_per_batch:
            raise LimitExceeded(f"too many calls in one batch (limit {self._limits.max_pushes_per_batch})")
        if len(self._exports) >= self._limits.max_exports:
            raise LimitExceeded(f"too many unreleased results in this session (limit {self._limits.max_exports})")
        decoded = decode(expr, self._limits)
        bound = [self._bind(ref) for ref in decoded.refs]  # validates every id before starting

        # A batch arrives all at once and is bounded by its push count; this guards WebSockets.
        if not self._batch and self._running_calls >= self._limits.max_concurrent_calls:
            limit = self._limits.max_concurrent_calls
            outcome = self._failed(RpcError("Error", f"Too many concurrent calls on this connection (limit {limit})."))
            for ref in decoded.refs:
                if isinstance(ref, PeerExportRef):
                    self._send_release(ref.import_id, 1)
        else:
            # Imports received in this push, released together when it settles.
            received: Counter[int] = Counter()
            for ref, entry in zip(decoded.refs, bound, strict=True):
                self._start(ref, entry, received)
            value = decoded.value
            if isinstance(value, PipelineRef):
                outcome = value.outcome
            elif not decoded.refs:
                outcome = self._settled(value)
            else:
                outcome = self._spawn(self._substitute(value))
            if received:
                # Give the peer's stubs back before the answer goes out (the reference's order).
                outcome = self._spawn(self._releasing_imports(outcome, received))
            self._running_calls += 1
            outcome.add_done_callback(self._push_settled)
        self._add_push_export(outcome)
        if auto_pull:
            self._pull(export_id, release_after=True)

    def _bind(self, ref: Reference) -> _Export | None:
        if isinstance(ref, PeerExportRef):
            # Exporters number their own exports -1, -2, ...; positive ids are our calls' results.
            if ref.import_id >= 0:
                raise ProtocolError(f"bad export ID from the peer: {ref.import_id} (must be negative)")
            return None
        entry = self._exports.get(ref.export_id)
        if entry is None:
            raise ProtocolError(f"no such entry on exports table: {ref.export_id}")
        return entry

    def _start(self, ref: Reference, entry: _Export | None, received: Counter[int]) -> None:
        """Begin evaluating one reference; references arrive innermost first (E-order)."""
        if isinstance(ref, PipelineRef):
            assert entry is not None
            ref.outcome = self._spawn(self._evaluate(ref, entry))
        elif isinstance(ref, RemapRef):
            ref.outcome = self._failed(RpcError("TypeError", "map() is not supported by this server."))
        else:
            received[ref.import_id] += 1
            entry_in = self._imports.setdefault(ref.import_id, _Import())
            entry_in.refcount += 1
            if ref.kind == "export":
                ref.outcome = self._settled(PeerStub(self, ref.import_id))
            else:
                if entry_in.outcome is None:
                    entry_in.outcome = self._loop.create_future()
                    entry_in.outcome.add_done_callback(_retrieve)
                    if self._input_ended or self.closed:
                        entry_in.outcome.set_exception(RpcError("Error", "The client's promise can never resolve here."))
                ref.outcome = entry_in.outcome

    def _pull(self, export_id: int, *, release_after: bool = False) -> None:
        entry = self._exports.get(export_id)
        if entry is None:
            raise ProtocolError(f"no such export ID: {export_id}")
        if entry.pulled:
            return
        entry.pulled = True
        task = self._spawn(self._answer(export_id, entry, release_after))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def _release(self, export_id: int, count: int) -> None:
        entry = self._exports.get(export_id)
        if entry is None:
            raise ProtocolError(f"no such export ID: {export_id}")
        entry.refcount -= count
        if entry.refcount <= 0:
            self._drop_export(export_id, entry)

    def _settle_import(self, import_id: int, expr: Any, *, rejected: bool) -> None:
        decoded = decode(expr, self._limits)
        entry = self._imports.get(import_id)
        for ref in decoded.refs:
            # We never keep stubs handed to us inside a resolution: give them straight back.
            if isinstance(ref, PeerExportRef):
                self._send_release(ref.import_id, 1)
        if entry is None or entry.outcome is None or entry.outcome.done():
            return  # unknown or already settled ids are ignored, as the reference does
        if decoded.refs:
            entry.outcome.set_exception(RpcError("TypeError", "Stubs inside resolutions are not supported."))
        elif rejected:
            error = decoded.value
            entry.outcome.set_exception(error if isinstance(error, RpcError) else RpcError("Error", str(error)))
        else:
            entry.outcome.set_result(decoded.value)
        if import_id > 0:
            # The result of one of our own calls into the peer: we are done with it.
            del self._imports[import_id]
            self._send_release(import_id, 1)

    # --- evaluation -------------------------------------------------------------------------------

    async def _evaluate(self, ref: PipelineRef, entry: _Export) -> Any:
        base = await entry.outcome  # a rejected dependency rejects this call with the same error
        path = ref.path or []
        if isinstance(base, PeerStub):
            stub = base.get(*path)
            if ref.args is None:
                return stub
            args = await self._substitute(ref.args) if ref.nested_refs else ref.args
            return await stub.call(*args)
        target = _follow(base, path)
        if ref.args is None:
            return target
        args = await self._substitute(ref.args) if ref.nested_refs else ref.args
        if not callable(target):
            shown = ".".join(str(p) for p in path)
            raise RpcError("TypeError", f"'{shown}' is not a function.")
        result = target(*_fit_arguments(target, args))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _substitute(self, value: Any) -> Any:
        """Replace every reference inside ``value`` by what it resolves to."""
        if isinstance(value, PipelineRef | PeerExportRef | RemapRef):
            return await value.outcome
        if isinstance(value, dict):
            return {key: await self._substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [await self._substitute(item) for item in value]
        return value

    async def _answer(self, export_id: int, entry: _Export, release_after: bool) -> None:
        try:
            value = await entry.outcome
            message = ["resolve", export_id, encode(value, self._limits, self._export_by_reference)]
        except RpcError as error:
            message = ["reject", export_id, error_expression(error)]
        except Exception:  # logged where the call failed (_push_settled); never leak details
            message = ["reject", export_id, error_expression(INTERNAL_ERROR)]
        self._send(message)
        if release_after and export_id in self._exports:
            self._release(export_id, 1)

    async def _releasing_imports(self, outcome: asyncio.Future[Any], received: Counter[int]) -> Any:
        try:
            return await outcome
        finally:
            for import_id, count in received.items():
                entry = self._imports.get(import_id)
                if entry is None:
                    continue
                entry.refcount -= count
                if entry.refcount <= 0:
                    del self._imports[import_id]
                self._send_release(import_id, count)

    def _push_settled(self, outcome: asyncio.Future[Any]) -> None:
        self._running_calls -= 1
        if not outcome.cancelled():
            error = outcome.exception()
            # A failure shared through pipelining settles several pushes: log it once.
            if error is not None and not isinstance(error, RpcError) and not hasattr(error, "_rpc_logged"):
                error._rpc_logged = True  # type: ignore[attr-defined]
                log.error("RPC call failed", exc_info=error)

    # --- calls into the peer ------------------------------------------------------------------------

    async def call_peer(self, import_id: int, path: list[str | int], args: Sequence[Any]) -> Any:
        """Call a stub the peer gave us and wait for its answer (WebSocket sessions only)."""
        if self._batch:
            raise RpcError("Error", "The server cannot call back into the client over an HTTP batch; use a WebSocket.")
        if self.closed:
            raise RpcError("Error", "RPC session ended")
        if import_id not in self._imports:
            raise RpcError("Error", "This stub was already released.")
        encoded = [encode(arg, self._limits, self._export_by_reference) for arg in args]
        call_id = self._next_peer_call_id
        self._next_peer_call_id += 1
        outcome: asyncio.Future[Any] = self._loop.create_future()
        self._imports[call_id] = _Import(refcount=1, outcome=outcome)
        self._send(["push", ["pipeline", import_id, path, encoded]])
        self._send(["pull", call_id])
        return await outcome

    # --- tables -------------------------------------------------------------------------------------

    def _add_push_export(self, outcome: asyncio.Future[Any]) -> None:
        """Register a push's result under the next positive id (ids are implicit on the wire)."""
        self._exports[self._next_push_id] = _Export(outcome)
        self._next_push_id += 1

    def _export_by_reference(self, value: Any) -> list[Any]:
        if isinstance(value, PeerStub):
            return value.wire_reference()
        export_id = self._export_ids.get(id(value))
        if export_id is not None and export_id in self._exports:
            self._exports[export_id].refcount += 1
            return ["export", export_id]
        if len(self._exports) >= self._limits.max_exports:
            raise RpcError("Error", f"Too many objects exported in this session (limit {self._limits.max_exports}).")
        export_id = self._next_export_id
        self._next_export_id -= 1
        self._exports[export_id] = _Export(self._settled(value))
        self._export_ids[id(value)] = export_id
        return ["export", export_id]

    def _drop_export(self, export_id: int, entry: _Export) -> None:
        del self._exports[export_id]
        if entry.outcome.done() and not entry.outcome.cancelled() and entry.outcome.exception() is None:
            key = id(entry.outcome.result())
            if self._export_ids.get(key) == export_id:
                del self._export_ids[key]

    def _fail_pending_imports(self, error: RpcError) -> None:
        for entry in self._imports.values():
            if entry.outcome is not None and not entry.outcome.done():
                entry.outcome.set_exception(error)

    # --- helpers --------------------------------------------------------------------------------

    def _send(self, message: list[Any]) -> None:
        if not self.closed:
            self._send_raw(message)

    def _send_release(self, import_id: int, count: int) -> None:
        self._send(["release", import_id, count])

    def _settled(self, value: Any) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        future.set_result(value)
        return future

    def _failed(self, error: BaseException) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        future.set_exception(error)
        future.add_done_callback(_retrieve)
        return future

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        _RUNNING.add(task)
        task.add_done_callback(_forget)
        return task


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Failures are delivered through pulls or logged per call; mark them as seen for asyncio.
    if not future.cancelled():
        future.exception()


def _forget(task: asyncio.Task[Any]) -> None:
    _RUNNING.discard(task)
    _retrieve(task)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe_error(expr: Any) -> str:
    if isinstance(expr, list) and len(expr) >= 3 and expr[0] == "error" and isinstance(expr[2], str):
        return expr[2][:200]
    return "(no reason given)"


def _follow(base: Any, path: Sequence[str | int]) -> Any:
    """Property access with the reference's rules: class members of targets, own keys of data."""
    value = base
    for key in path:
        if value is UNDEFINED or value is None:
            shown = "undefined" if value is UNDEFINED else "null"
            raise RpcError("TypeError", f"Cannot read properties of {shown} (reading '{key}')")
        value = _member(value, key)
    return value


def _member(value: Any, key: str | int) -> Any:
    if isinstance(value, RpcTarget):
        return _target_member(value, key)
    if isinstance(value, dict):
        return value.get(str(key), UNDEFINED)
    if isinstance(value, list | tuple):
        index = _array_index(key)
        return value[index] if index is not None and index < len(value) else UNDEFINED
    return UNDEFINED


def _target_member(target: RpcTarget, key: str | int) -> Any:
    # Only methods and properties defined on the class are reachable, never instance state or
    # private names; anything else reads as undefined, so calling it gives "is not a function".
    if not isinstance(key, str) or key.startswith("_"):
        return UNDEFINED
    member = inspect.getattr_static(type(target), key, None)
    if isinstance(member, property | staticmethod | classmethod) or inspect.isfunction(member):
        return getattr(target, key)
    return UNDEFINED


def _array_index(key: str | int) -> int | None:
    if isinstance(key, int):
        return key if key >= 0 else None
    if key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0")):
        return int(key)
    return None


def _fit_arguments(fn: Callable[..., Any], args: list[Any]) -> list[Any]:
    """JavaScript calling convention: extra arguments are dropped, missing ones are undefined."""
    shape = _positional_shape(fn)
    if shape is None:
        return args
    required, accepted = shape
    if accepted is not None:
        args = args[:accepted]
    if len(args) < required:
        args = [*args, *([UNDEFINED] * (required - len(args)))]
    return args


def _positional_shape(fn: Callable[..., Any]) -> tuple[int, int | None] | None:
    """(required positional count, accepted count or None for *args); None if unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required = 0
    accepted: int | None = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            accepted = None
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            if accepted is not None:
                accepted += 1
            if parameter.default is parameter.empty:
                required += 1
    return required, accepted
