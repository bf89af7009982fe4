"""Transports of the durable client: the protocol's calls over REST or over Cap'n Web HTTP batch.

Both raise ``TransportError`` with the HTTP status the server meant (over RPC it is recovered
from the error message, since Cap'n Web rejections carry no status), or ``None`` when no answer
arrived at all. What the client does with each status is in ``sync.py``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import aiohttp

from cloudsession import errors
from cloudsession.rpc.codec import RpcLimits, decode, dumps, encode

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)
# Over RPC a domain error arrives as its message only; these are the fixed ones.
_STATUS_BY_MESSAGE = {
    cls.message: cls.status
    for cls in (errors.InvalidSecret, errors.ShareNotFound, errors.SessionNotFound, errors.ShareGone, errors.StoreUnavailable)
}


class TransportError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth sending again unchanged: no answer, a server-side failure, or throttling."""
        return self.status is None or self.status >= 500 or self.status in (408, 429)


# What each answer must hold; anything else (a proxy's HTML page, a truncated body) is reported
# as a bad gateway, which is retryable, instead of surfacing later as a KeyError.
_ANSWER_KEYS = {
    "create": ("id", "secret", "url"),
    "redeem": ("cursor", "capabilityEpoch"),
    "append_ops": ("cursor", "applied", "duplicates", "rejected"),
    "finalize": ("id", "final"),
}


def _checked(kind: str, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict) or any(key not in answer for key in _ANSWER_KEYS[kind]):
        raise TransportError(502, f"unexpected answer to {kind}: {str(answer)[:200]}")
    return answer


class Transport(Protocol):
    async def create(self, session_id: str, options: dict[str, Any]) -> dict[str, Any]: ...

    async def redeem(self, share_id: str, secret: str) -> dict[str, Any]: ...

    async def append_ops(self, share_id: str, secret: str, epoch: int, ops: list[dict[str, Any]]) -> dict[str, Any]: ...

    async def finalize(self, share_id: str, secret: str) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class _Http:
    def __init__(self, base_url: str, headers: dict[str, str] | None, timeout: aiohttp.ClientTimeout) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = aiohttp.ClientSession(headers=headers, timeout=timeout)

    async def close(self) -> None:
        await self._http.close()

    async def _post(self, path: str, **kwargs: Any) -> tuple[int, bytes]:
        try:
            async with self._http.post(self.base_url + path, **kwargs) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The request may or may not have been applied: exactly the case the ops ledger is for.
            raise TransportError(None, f"{type(exc).__name__}: {exc}") from None


class RestTransport(_Http):
    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT) -> None:
        super().__init__(base_url, headers, timeout)

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = await self._post(path, json=body)
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            raise TransportError(status, str(message or raw[:200].decode("utf-8", "replace")))
        return payload

    async def create(self, session_id: str, options: dict[str, Any]) -> dict[str, Any]:
        return _checked("create", await self._call("/api/share", {"sessionID": session_id, **options}))

    async def redeem(self, share_id: str, secret: str) -> dict[str, Any]:
        return _checked("redeem", await self._call(f"/api/share/{share_id}/redeem", {"secret": secret}))

    async def append_ops(self, share_id: str, secret: str, epoch: int, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return _checked("append_ops", await self._call(f"/api/share/{share_id}/ops", {"secret": secret, "epoch": epoch, "ops": ops}))

    async def finalize(self, share_id: str, secret: str) -> dict[str, Any]:
        return _checked("finalize", await self._call(f"/api/share/{share_id}/finalize", {"secret": secret}))


class RpcBatchTransport(_Http):
    """One Cap'n Web HTTP batch per call: ``push`` of the method call on the main object, then
    ``pull`` of its result (the wire format of capnweb's ``newHttpBatchRpcSession``)."""

    _LIMITS = RpcLimits()

    def __init__(
        self, base_url: str, *, path: str = "/rpc/share", headers: dict[str, str] | None = None, timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(base_url, headers, timeout)
        self.path = path

    async def call(self, method: str, *args: Any) -> Any:
        push = ["push", ["pipeline", 0, [method], [encode(arg, self._LIMITS) for arg in args]]]
        body = dumps(push) + "\n" + dumps(["pull", 1])
        status, raw = await self._post(self.path, data=body.encode("utf-8"), headers={"Content-Type": "text/plain;charset=UTF-8"})
        if status != 200:
            raise TransportError(status, raw[:200].decode("utf-8", "replace"))
        for line in raw.decode("utf-8", "replace").split("\n"):
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                raise TransportError(502, f"not a Cap'n Web message: {line[:200]}") from None
            if not isinstance(message, list) or not message:
                raise TransportError(502, f"not a Cap'n Web message: {line[:200]}")
            if message[:2] == ["resolve", 1]:
                return decode(message[2], self._LIMITS).value
            if message[:2] == ["reject", 1] or message[0] == "abort":
                error = message[-1]
                text = error[2] if isinstance(error, list) and len(error) > 2 else str(error)
                status = 400 if isinstance(error, list) and error[1] == "TypeError" else _STATUS_BY_MESSAGE.get(text, 500)
                raise TransportError(status, text)
        raise TransportError(None, "the RPC batch ended without an answer")

    async def create(self, session_id: str, options: dict[str, Any]) -> dict[str, Any]:
        return _checked("create", await self.call("createShare", session_id, None, options))

    async def redeem(self, share_id: str, secret: str) -> dict[str, Any]:
        return _checked("redeem", await self.call("redeemShare", share_id, secret))

    async def append_ops(self, share_id: str, secret: str, epoch: int, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return _checked("append_ops", await self.call("appendOps", share_id, secret, epoch, ops))

    async def finalize(self, share_id: str, secret: str) -> dict[str, Any]:
        return _checked("finalize", await self.call("finalizeShare", share_id, secret))


def open_transport(kind: str, base_url: str, *, headers: dict[str, str] | None = None) -> RestTransport | RpcBatchTransport:
    if kind == "rest":
        return RestTransport(base_url, headers=headers)
    if kind == "rpc":
        return RpcBatchTransport(base_url, headers=headers)
    raise ValueError(f"unknown transport {kind!r} (rest or rpc)")
