"""A fake model for the real opencode CLI: a small OpenAI-compatible chat-completions server.

opencode 1.18.33 bundles ``@ai-sdk/openai-compatible`` (nothing to install), so a custom provider
in the test's opencode config (``provider_config``) points ``opencode run`` at this server and the
CLI runs offline, end to end: prompt, streamed answer, tool calls, title.

What it answers (streamed as server-sent events, the way OpenAI's API streams):

- a request whose last message is a tool result: a short text that quotes the result;
- a request offering the ``bash`` tool whose last user message contains ``run: `<command>```: one
  ``bash`` tool call running ``<command>`` (opencode runs it, then asks again with the result);
- anything else (the prompt, the title request): a short text in a few pieces.

One server per test module (``FakeModel`` runs in its own thread with its own event loop).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

from aiohttp import web

PROVIDER = "fakemodel"
MODEL = "fake-1"


def provider_config(base_url: str) -> dict[str, Any]:
    """The ``provider`` section of an opencode config that uses this server as ``fakemodel/fake-1``."""
    return {
        PROVIDER: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Fake model",
            "options": {"baseURL": f"{base_url}/v1", "apiKey": "not-a-real-key"},
            "models": {MODEL: {"name": "Fake model 1", "tool_call": True, "limit": {"context": 100000, "output": 4096}}},
        }
    }


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return ""


def reply_for(body: dict[str, Any]) -> dict[str, Any]:
    """What to answer: {"text": str} or {"tool": name, "arguments": dict}."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        first_line = (_text_of(last).strip().splitlines() or [""])[0][:80]
        return {"text": f"The command printed: {first_line}. Done."}
    tools = {t.get("function", {}).get("name") for t in body.get("tools") or []}
    user = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    command = re.search(r"run: `([^`]+)`", user)
    if "bash" in tools and command:
        return {"tool": "bash", "arguments": {"command": command.group(1), "description": "Runs the command the user asked for"}}
    if not tools:
        return {"text": "A fake session"}  # the title request offers no tools
    return {"text": f"Hello from the fake model. You said: {user.strip()[:60]}"}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    payload: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def stream_of(reply: dict[str, Any]) -> list[bytes]:
    usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    chunks = [_chunk({"role": "assistant", "content": ""})]
    if "tool" in reply:
        arguments = json.dumps(reply["arguments"])
        half = len(arguments) // 2
        call = {"index": 0, "id": "call_fake_1", "type": "function", "function": {"name": reply["tool"], "arguments": arguments[:half]}}
        chunks.append(_chunk({"tool_calls": [call]}))
        chunks.append(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}))
        chunks.append(_chunk({}, finish="tool_calls", usage=usage))
    else:
        words = reply["text"].split(" ")
        for i in range(0, len(words), 3):
            chunks.append(_chunk({"content": " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")}))
        chunks.append(_chunk({}, finish="stop", usage=usage))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


class FakeModel:
    """The server, on a free loopback port, in a background thread; ``requests`` records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        reply = reply_for(body)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.get("text", "")}
            return web.json_response({"id": "chatcmpl-fake", "object": "chat.completion", "model": MODEL,
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}})
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        for chunk in stream_of(reply):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    def start(self) -> FakeModel:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
