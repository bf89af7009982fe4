"""The client's transports turn answers that are not what the protocol promises (a proxy's HTML
page, a truncated body, a line that is not Cap'n Web) into a retryable TransportError, never a
crash, whatever sits between the client and the server."""

from __future__ import annotations

import pytest
from aiohttp import web

from cloudsession.client.transport import RestTransport, RpcBatchTransport, TransportError


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"[1,2]", b'{"cursor": 3}', b""])
async def test_rest_answers_of_the_wrong_shape(aiohttp_server, body):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_post("/api/share/{id}/ops", handler)
    server = await aiohttp_server(app)
    transport = RestTransport(str(server.make_url("")))
    try:
        with pytest.raises(TransportError) as caught:
            await transport.append_ops("abc", "secret", 0, [])
    finally:
        await transport.close()
    assert caught.value.status == 502 and caught.value.retryable


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"42", b'["resolve",1,{"cursor":1}]'])
async def test_rpc_answers_of_the_wrong_shape(aiohttp_server, body):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_post("/rpc/share", handler)
    server = await aiohttp_server(app)
    transport = RpcBatchTransport(str(server.make_url("")))
    try:
        with pytest.raises(TransportError) as caught:
            await transport.redeem("abc", "secret")
    finally:
        await transport.close()
    assert caught.value.status == 502 and caught.value.retryable
