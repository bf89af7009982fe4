"""The client's transports turn answers that are not what the protocol promises (a proxy's HTML
page, a truncated body, a line that is not Cap'n Web) into a retryable TransportError, never a
crash, whatever sits between the client and the server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from cloudsession.client.transport import RestTransport, RpcBatchTransport, TransportError


async def refused_by_a_server_answering(aiohttp_server: Any, path: str, body: bytes, transport_cls: type,
                                        call: Callable[[Any], Awaitable[Any]]) -> TransportError:
    """Point a transport at a server that answers every POST to ``path`` with ``body``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_post(path, handler)
    server = await aiohttp_server(app)
    transport = transport_cls(str(server.make_url("")))
    try:
        with pytest.raises(TransportError) as caught:
            await call(transport)
    finally:
        await transport.close()
    return caught.value


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"[1,2]", b'{"cursor": 3}', b""])
async def test_rest_answers_of_the_wrong_shape(aiohttp_server, body):
    error = await refused_by_a_server_answering(aiohttp_server, "/api/share/{id}/ops", body, RestTransport,
                                                lambda t: t.append_ops("abc", "secret", 0, []))
    assert error.status == 502 and error.retryable


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"42", b'["resolve",1,{"cursor":1}]'])
async def test_rpc_answers_of_the_wrong_shape(aiohttp_server, body):
    error = await refused_by_a_server_answering(aiohttp_server, "/rpc/share", body, RpcBatchTransport,
                                                lambda t: t.redeem("abc", "secret"))
    assert error.status == 502 and error.retryable
