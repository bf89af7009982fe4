"""``cloudsession serve --workers N``: real processes on one port (SO_REUSEPORT), real signals.

Which worker answered is read from the ``X-Cloudsession-Worker`` header (or ``/healthz``); a
fresh TCP connection per request lets the kernel pick the worker, so a test that needs a request
on a given worker opens connections until one lands there (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servers import NAMESPACE, ServerProcess, free_port

from cloudsession.config import ConfigError
from cloudsession.live.hub import FORMAT_EVENTS, LiveHub, Viewer
from cloudsession.live.relay import Relay, Siblings, SiblingTransport, inboxes

WORKERS = ["--workers", "2"]
HEADER = "X-Cloudsession-Worker"
# Fresh connections tried before giving up on reaching a given worker (the kernel hashes each
# connection's addresses and ports: the chance of missing one of two workers 100 times is 2^-100).
TRIES = 100


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET on a new connection, without following redirects."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _workers_seen(url: str, want: int) -> set[int]:
    seen: set[int] = set()
    for _ in range(TRIES):
        status, _, body = _get(url + "/healthz")  # urllib: a new connection every time
        if status == 200:
            seen.add(json.loads(body)["worker"])
        if len(seen) == want:
            break
    return seen


async def _on_worker(make: Callable[[], Awaitable[Any]], worker_of: Callable[[Any], str], want: str | None = None, avoid: str | None = None) -> Any:
    """Call ``make`` (each call a new connection) until the result is on worker ``want`` (or on
    any worker but ``avoid``); the results that missed are closed."""
    for _ in range(TRIES):
        result = await make()
        worker = worker_of(result)
        if (want is None or worker == want) and worker != avoid:
            return result
        closing = result[0].close() if isinstance(result, tuple) else result.close()  # a viewer, or a response
        if asyncio.iscoroutine(closing):
            await closing
    raise AssertionError(f"no connection reached worker {want or 'other than ' + str(avoid)}")


class Sessions:
    """aiohttp sessions, each with one connection that is never reused: every request its own worker."""

    def __init__(self) -> None:
        self.last = ""  # the worker of the latest response (viewers are opened one at a time)
        trace = aiohttp.TraceConfig()

        async def on_end(session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
            self.last = params.response.headers.get(HEADER, "")

        trace.on_request_end.append(on_end)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), trace_configs=[trace])

    async def viewer(self, url: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        self.last = ""
        ws = await self.http.ws_connect(url)
        assert self.last, "the handshake names its worker"
        return ws, self.last


@pytest.fixture
async def sessions() -> AsyncIterator[Sessions]:
    made = Sessions()
    yield made
    await made.http.close()


def _sync_body(share: dict[str, Any], session_id: str, title: str) -> dict[str, Any]:
    return {"secret": share["secret"], "data": [{"type": "session", "data": {"id": session_id, "title": title}}]}


# --------------------------------------------------------------------------- serving


async def test_two_workers_answer_on_one_port_and_a_viewer_hears_the_other_workers_syncs(tmp_path: Path, sessions: Sessions) -> None:
    server = ServerProcess(tmp_path / "data", env={"CLOUDSESSION_LOG_LEVEL": "INFO"}, args=WORKERS).start()
    try:
        assert _workers_seen(server.url, 2) == {1, 2}
        assert server.proc is not None and len(_children(server.proc.pid)) == 2
        http, session_id = sessions.http, "ses_workersrelay0000000000001"
        async with http.post(server.url + "/api/share", json={"sessionID": session_id}) as resp:
            share = await resp.json()
        # Viewers in both formats on one worker; the syncs land on the other (no Redis configured).
        events, worker = await _on_worker(lambda: sessions.viewer(f"{server.url}/ws/{share['id']}?format=events"), lambda v: v[1])
        reference, _ = await _on_worker(lambda: sessions.viewer(f"{server.url}/ws/{share['id']}"), lambda v: v[1], want=worker)
        assert json.loads((await events.receive(timeout=5)).data)["type"] == "hello"
        # Every sync reaches both viewers, those handled by the other worker through the relay.
        count = relayed = 0
        while relayed < 2:
            count += 1
            assert count < TRIES, "no sync reached the other worker"
            async with http.post(f"{server.url}/api/share/{share['id']}/sync", json=_sync_body(share, session_id, f"title {count}")) as resp:
                assert resp.status == 200 and (await resp.json())["syncCount"] == count
                relayed += resp.headers[HEADER] != worker
            frame = json.loads((await events.receive(timeout=10)).data)
            assert (frame["type"], frame["syncCount"], frame["session"]) == ("sync", count, True)
            items = json.loads((await reference.receive(timeout=10)).data)
            assert items[0]["data"]["title"] == f"title {count}"
            assert session_id not in json.dumps(items)  # relayed frames are the public ones
        await events.close()
        await reference.close()
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")  # whole: the access lines push the start out of log()
    assert log.count("listening on") == 1 and "2 workers" in log
    assert "Traceback" not in log


async def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path, sessions: Sessions) -> None:
    """SIGTERM to the parent: viewers on both workers get 1001, a sync whose body is still
    arriving is finished and stored, the parent exits 0."""
    server = ServerProcess(tmp_path / "data", args=WORKERS).start()
    assert server.proc is not None
    http, session_id = sessions.http, "ses_workersdrain00000000000001"
    async with http.post(server.url + "/api/share", json={"sessionID": session_id}) as resp:
        share = await resp.json()
    url = f"{server.url}/ws/{share['id']}?format=events"
    first, worker = await _on_worker(lambda: sessions.viewer(url), lambda v: v[1])
    second, _ = await _on_worker(lambda: sessions.viewer(url), lambda v: v[1], avoid=worker)
    raw = json.dumps(_sync_body(share, session_id, "finished after SIGTERM")).encode()
    signalled, half_sent = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield raw[: len(raw) // 2]
        half_sent.set()
        await signalled.wait()
        yield raw[len(raw) // 2 :]

    async def upload() -> tuple[int, str]:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(raw))}
        async with http.post(f"{server.url}/api/share/{share['id']}/sync", data=body(), headers=headers) as resp:
            return resp.status, await resp.text()

    in_flight = asyncio.create_task(upload())
    try:
        await asyncio.wait_for(half_sent.wait(), 10)
        await asyncio.sleep(0.3)  # the worker has the headers and is reading the body
        server.proc.send_signal(signal.SIGTERM)
        for ws in (first, second):
            while (msg := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                pass  # the hello
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        signalled.set()
        status, text = await asyncio.wait_for(in_flight, 30)
        assert status == 200 and json.loads(text)["syncCount"] == 1
        assert await asyncio.to_thread(server.proc.wait, 40) == 0
    finally:
        signalled.set()
        server.stop()
    assert "Traceback" not in server.log_path.read_text(errors="replace")
    server.start()
    try:
        assert "finished after SIGTERM" in _get(f"{server.url}/api/share/{share['id']}/data")[2]
    finally:
        server.stop()


def test_a_killed_worker_is_restarted(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"CLOUDSESSION_LOG_LEVEL": "INFO"}, args=WORKERS).start()
    assert server.proc is not None
    try:
        # /healthz answers once one worker listens; a worker that dies before the parent has
        # seen every one of them listen is a failed start (the parent stops): wait for it.
        deadline = time.monotonic() + 30
        while "listening on" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        before = _children(server.proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _children(server.proc.pid)
            if len(now) == 2 and victim not in now and _workers_seen(server.url, 2) == {1, 2}:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no replacement worker: {_children(server.proc.pid)}\n{server.log()}")
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert server.proc.returncode == 0
    log = server.log()
    assert f"(pid {victim}) exited (killed by SIGKILL)" in log and "restarted" in log
    assert log.count("listening on") == 1


def test_workers_whose_parent_dies_shut_down(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", args=WORKERS).start()
    assert server.proc is not None
    try:
        children = _children(server.proc.pid)
        server.proc.kill()  # SIGKILL: nothing forwarded; the workers see their pipe's end-of-file
        server.proc.wait()
        deadline = time.monotonic() + 20
        while any(_running(pid) for pid in children):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.1)
    finally:
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert "supervising process is gone" in server.log()


def test_first_run_with_workers_creates_the_admin_key_and_namespace_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, args=["--workers", "3"])
    for name in ("SESSIONS_RPC_SHARED_KEY", "SESSIONS_SHARED_SECRET"):
        server.env.pop(name, None)
    server.start()
    try:
        key = (data_dir / "admin-key").read_text().strip()
        assert (data_dir / "admin-key").stat().st_mode & 0o777 == 0o600
        assert _workers_seen(server.url, 3) == {1, 2, 3}
        log = server.log()
        assert log.count("/sessions/login?token=") == 1 and log.count("development namespace") == 1
        link = log.split("    ", 1)[1].split()[0]
        # Every worker knows the key; the sign-in link works once across all of them.
        for _ in range(6):
            assert _get(server.url + "/api/sessions", headers={"x-opencode-share-key": key})[0] == 200
        answers = []  # (status, worker) until every worker has refused it once it was used
        while len({worker for status, worker in answers[1:] if status == 401}) < 3 or not answers:
            assert len(answers) < TRIES, answers
            status, headers, _ = _get(link)
            answers.append((status, headers[HEADER]))
        assert [status for status, _ in answers].count(303) == 1 and answers[0][0] == 303, answers
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert sorted(p.name for p in data_dir.iterdir()) == ["admin-key", "dev-namespace", "store"]  # no temporary or claim files


def test_rate_limits_are_not_multiplied_by_the_workers(tmp_path: Path) -> None:
    """Without Redis each worker counts alone and allows its share: 4 creates a minute in total."""
    server = ServerProcess(tmp_path / "data", env={"CLOUDSESSION_RATE_LIMIT_CREATE": "4/minute"}, args=WORKERS).start()
    try:
        statuses, workers = [], set()
        while len(statuses) < 12 or len(workers) < 2:  # both workers asked, each several times
            assert len(statuses) < TRIES
            body = json.dumps({"sessionID": f"ses_workerslimit{len(statuses):014d}"}).encode()
            request = urllib.request.Request(server.url + "/api/share", data=body, method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    statuses.append(resp.status)
                    workers.add(resp.headers[HEADER])
            except urllib.error.HTTPError as err:
                statuses.append(err.code)
                workers.add(err.headers[HEADER])
        assert set(statuses) == {200, 429} and statuses.count(200) <= 4, statuses  # never more than the limit in total
        assert statuses.count(200) >= 2  # the first worker reached allows its 2
    finally:
        server.stop()


# --------------------------------------------------------------------------- refusals


def test_workers_that_cannot_start_stop_the_parent_with_a_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:  # METRICS_ADDRESS taken: the workers fail while starting
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        env = {**os.environ, "SESSIONS_SHARED_SECRET": NAMESPACE, "CLOUDSESSION_METRICS_ADDRESS": f"127.0.0.1:{taken.getsockname()[1]}"}
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *WORKERS]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "listening" not in proc.stdout
    assert "exited while starting" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_worker_count_is_one_line(tmp_path: Path, value: str) -> None:
    cmd = [sys.executable, "-m", "cloudsession", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--workers", value]
    proc = subprocess.run(cmd, env={**os.environ, "SESSIONS_SHARED_SECRET": NAMESPACE}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "listening" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [f"cloudsession: configuration error: --workers: must be a whole number of at least 1, or auto (got '{value}')"]


def test_several_workers_are_refused_without_linux_reuseport(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsession.cli import workers

    workers.require_reuseport()  # here: Linux
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ConfigError, match="SO_REUSEPORT"):
        workers.require_reuseport()


def test_auto_is_one_worker_per_cpu() -> None:
    from cloudsession.cli import workers

    assert workers.parse_workers("auto") == len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- the sibling relay


class _Socket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_text(self, payload: bytes) -> None:
        self.sent.append(payload)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True

    def abort(self) -> None:
        pass


async def _sibling_relays(count: int) -> list[tuple[LiveHub, Relay]]:
    pairs, made = inboxes(count), []
    for index in range(1, count + 1):
        siblings = Siblings(index, count, pairs[index - 1][0], [write for n, (_, write) in enumerate(pairs, start=1) if n != index])
        hub = LiveHub()
        relay = Relay(hub, SiblingTransport(siblings))
        await relay.start()
        hub.relay = relay
        made.append((hub, relay))
    return made


async def test_a_sync_too_big_for_the_sibling_relay_makes_the_other_workers_viewers_resync() -> None:
    (hub1, relay1), (hub2, relay2) = await _sibling_relays(2)
    try:
        viewer = Viewer(_Socket(), FORMAT_EVENTS)
        hub2.add("share1", viewer)
        big = [{"type": "part", "data": {"id": "prt_1", "messageID": "msg_1", "text": "x" * (relay1.transport.max_bytes + 1)}}]
        await hub1.share_synced("share1", big, 7)
        assert json.loads(await asyncio.wait_for(viewer.queue.get(), 10) or b"") == {"type": "resync", "syncCount": 7}
        small = [{"type": "part", "data": {"id": "prt_1", "messageID": "msg_1", "text": "y"}}]
        await hub1.share_synced("share1", small, 8)
        frame = json.loads(await asyncio.wait_for(viewer.queue.get(), 10) or b"")
        assert (frame["type"], frame["syncCount"], frame["messages"]) == ("sync", 8, ["msg_1"])
        assert relay2.received == 2 and relay1.received == 0
    finally:
        await relay1.stop()
        await relay2.stop()


async def test_an_event_a_full_sibling_inbox_refused_is_announced_as_a_resync() -> None:
    pairs = inboxes(2)
    sender_hub, receiver_hub = LiveHub(), LiveHub()
    sender = Relay(sender_hub, SiblingTransport(Siblings(1, 2, pairs[0][0], [pairs[1][1]])))
    receiver = Relay(receiver_hub, SiblingTransport(Siblings(2, 2, pairs[1][0], [pairs[0][1]])))
    await sender.start()
    sender_hub.relay = sender
    viewer = Viewer(_Socket(), FORMAT_EVENTS, max_queued_bytes=1 << 30)
    receiver_hub.add("share1", viewer)
    try:
        # The receiving worker is not reading (as while it restarts): its inbox fills up.
        items = [{"type": "session", "data": {"title": "t" * 4000}}]
        count = 0
        while sender.publish_failures == 0:
            count += 1
            await sender_hub.share_synced("share1", items, count)
            await asyncio.sleep(0)
            assert count < 100_000
        await receiver.start()  # reads the inbox: the send refused is retried, as a resync
        await sender_hub.share_synced("share1", items, count + 1)
        frames = []
        while not frames or frames[-1].get("syncCount") != count + 1:
            frames.append(json.loads(await asyncio.wait_for(viewer.queue.get(), 20) or b""))
        assert {"type": "resync", "syncCount": count} in frames
        assert frames[-1]["type"] == "sync"
        assert sender.state()["missed_shares"] == 0
    finally:
        await sender.stop()
        await receiver.stop()


async def test_a_full_sibling_inbox_does_not_keep_the_event_from_the_other_siblings() -> None:
    """Worker 2 is not reading (crash-looping, restarting): its inbox is full. Worker 1's sync
    must still reach worker 3's viewers, whichever order the peers are in."""
    pairs = inboxes(3)
    stuck_write = pairs[1][1]
    with contextlib.suppress(BlockingIOError):
        for _ in range(100_000):
            stuck_write.send(b"share0\n" + b"x" * 4000)
    sender_hub, receiver_hub = LiveHub(), LiveHub()
    sender = Relay(sender_hub, SiblingTransport(Siblings(1, 3, pairs[0][0], [stuck_write, pairs[2][1]])))
    receiver = Relay(receiver_hub, SiblingTransport(Siblings(3, 3, pairs[2][0], [pairs[0][1], stuck_write])))
    await sender.start()
    await receiver.start()
    sender_hub.relay = sender
    viewer = Viewer(_Socket(), FORMAT_EVENTS)
    receiver_hub.add("share1", viewer)
    try:
        items = [{"type": "part", "data": {"id": "prt_1", "messageID": "msg_1", "text": "y"}}]
        await sender_hub.share_synced("share1", items, 5)
        frame = json.loads(await asyncio.wait_for(viewer.queue.get(), 10) or b"")
        assert (frame["type"], frame["syncCount"]) == ("sync", 5)
        assert sender.publish_failures >= 1  # worker 2 did miss it, and will be told to resync
    finally:
        await sender.stop()
        await receiver.stop()


# A parent whose os.fork hands the child a slow start (0.5 s before it resets its signal handling)
# and signals the child the instant the fork returns: the SIGTERM lands in the window a real
# shutdown could hit.
_SIGNAL_AT_FORK = r"""
import os, signal, socket, sys, time
from cloudsession.cli import workers
from cloudsession.config import Settings

real_fork = os.fork
def fork():
    pid = real_fork()
    if pid == 0:
        time.sleep(0.5)
    else:
        os.kill(pid, signal.SIGTERM)
    return pid
workers.os.fork = fork

def run_worker(siblings, alive, ready):
    time.sleep(20)  # serving: a signal swallowed in the window leaves the worker here

supervisor = workers.Supervisor(Settings(), 1, socket.socket(), run_worker)
signal.signal(signal.SIGTERM, supervisor._on_signal)  # the parent's handler, as in run()
worker = supervisor.workers[0]
supervisor.spawn(worker)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    pid, status = os.waitpid(worker.pid, os.WNOHANG)
    if pid:
        print("signalled" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else f"status {status}")
        break
    time.sleep(0.05)
else:
    os.kill(worker.pid, signal.SIGKILL)
    print("still running")
"""


def test_a_sigterm_between_fork_and_the_workers_handlers_stops_the_worker() -> None:
    """SIGTERM stays blocked across the fork: one delivered before the worker has its own
    handling ends it instead of running the parent's handler in the child (where it was lost and
    the worker served on until killed after the grace period)."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_AT_FORK], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "signalled", done.stdout + done.stderr
