"""A small RPC target that exercises the generic Cap'n Web machinery without any share logic.

Used by the session and transport unit tests and, through ``python rpc_toy.py PORT``, as a
real server the node interop scripts can talk to.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cloudsession.rpc.codec import RpcError, RpcLimits, RpcTarget
from cloudsession.rpc.session import PeerStub
from cloudsession.rpc.transport import serve_rpc


def rpc_handler(main_factory: Callable[[web.Request], Any], limits: RpcLimits | None = None) -> Callable[
    [web.Request], Awaitable[web.StreamResponse]
]:
    """An aiohttp handler serving ``main_factory(request)`` with no authentication of its own."""
    chosen = limits or RpcLimits()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_rpc(request, lambda: main_factory(request), chosen)

    return handler


class Handle(RpcTarget):
    """A target returned by reference (the client gets a stub)."""

    def __init__(self, name: str) -> None:
        self.name = name  # instance state: not reachable remotely

    def info(self) -> dict[str, Any]:
        return {"name": self.name}


class Toy(RpcTarget):
    def __init__(self) -> None:
        self.calls: list[Any] = []  # what was called, in delivery order
        self.hidden = "instance attribute"
        self.shared = Handle("shared")

    def record(self, value: Any) -> int:
        self.calls.append(value)
        return len(self.calls)

    async def slow(self, ms: float, label: str) -> str:
        await asyncio.sleep(ms / 1000)
        self.calls.append(label)
        return label

    def make(self, name: str) -> dict[str, Any]:
        return {"id": f"id-{name}", "secret": f"secret-{name}", "list": [1, [2, 3]]}

    def join(self, *parts: Any) -> str:
        return "/".join(str(p) for p in parts)

    def pair(self, a: Any, b: Any = "default") -> list[Any]:
        return [a, b]

    def echo(self, value: Any) -> Any:
        return value

    def handle(self, name: str) -> Handle:
        return Handle(name)

    def same_handle(self) -> Handle:
        return self.shared

    def fail(self, message: str) -> None:
        raise RpcError("RangeError", message)

    def crash(self) -> None:
        raise KeyError("internal detail that must not leak")

    def unserializable(self) -> Any:
        return {1, 2}

    def nothing(self) -> None:
        return None

    async def callback(self, stub: PeerStub, value: Any) -> Any:
        return await stub.call(value)

    def _private(self) -> str:
        return "private"


def main(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/rpc", rpc_handler(lambda request: Toy()))
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
