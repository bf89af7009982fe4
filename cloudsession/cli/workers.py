"""``cloudsession serve --workers N``: N worker processes on one port, under a supervising parent.

Each worker is a whole server (the app of ``serve``) with its own listening socket on the same
host and port (``SO_REUSEPORT``: the kernel spreads new connections over the workers), all on the
same store (the filesystem store's writes are conditional under ``flock``, S3's conditional PUTs:
both are safe across processes, as with replicas). What is per process is made correct across
workers: live updates go between siblings (``live/relay.py``, ``SiblingTransport``, unless Redis
relays them), rate limits are divided among workers counting in memory (``web/ratelimit.py``), the
admin key and the development namespace are created once by the parent before any worker starts,
and the one-time sign-in link works once across all of them (``web/auth.py``).

The parent (docs/running.md):

- does everything that can fail with a clear message before a worker exists: settings, data dir,
  the store, the port (bound without listening, with ``SO_REUSEPORT``, and kept: it reserves the
  port, so that a restarted worker can bind it again);
- forks the workers, each in its own process group (a Ctrl-C in a terminal reaches the parent only,
  which forwards it once), and announces "listening" once all of them listen; exits 1 if one
  cannot start;
- restarts a worker that dies, after a backoff that doubles while it keeps dying (logged);
- on SIGTERM or SIGINT sends SIGTERM to every worker, each drains gracefully (``serve``: requests
  in flight finish, viewers get 1001), and exits 0 once all of them exited 0;
- if the parent itself dies, the workers notice (a pipe reaches end-of-file) and drain.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from cloudsession.config import ConfigError, Settings
from cloudsession.live.relay import Siblings, inboxes
from cloudsession.web.app import create_app
from cloudsession.web.auth import enable_local_admin, new_sign_in_token, sign_in_claim
from cloudsession.web.keys import WORKER

log = logging.getLogger("cloudsession.serve")

# On every response of a worker: which one answered (1..N), for operators and tests; nothing
# about the machine (no pid).
WORKER_HEADER = "X-Cloudsession-Worker"

# How long all workers get to start listening (each builds the app and opens the store).
START_SECONDS = 60.0
# Restart delays for a worker that keeps dying: doubling from the first to the cap; a worker that
# stayed up RESET_AFTER_SECONDS starts the doubling over.
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
RESET_AFTER_SECONDS = 30.0
# How often the parent looks at its workers when nothing else wakes it.
TICK_SECONDS = 0.2
# What stops a worker (or, in the parent, every worker).
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def parse_workers(value: str) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (the CPUs this process may run on)."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--workers: must be a whole number of at least 1, or auto (got {value!r})") from None
    if count < 1:
        raise ConfigError(f"--workers: must be a whole number of at least 1, or auto (got {value!r})")
    return count


def require_reuseport() -> None:
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(
            "--workers: several workers need SO_REUSEPORT as Linux implements it; on this system run one process per port behind a proxy"
        )


def reuseport_socket(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(settings: Settings, probe: socket.socket) -> socket.socket:
    """The parent's socket on the address ``probe`` (``serve.bind``'s ordinary listening socket,
    which proved the port free: a socket of another group with SO_REUSEPORT would have let a
    SO_REUSEPORT bind share it) was bound to: bound with ``SO_REUSEPORT``, never listening, so it
    takes no connections and keeps the port for the workers."""
    family, address = probe.family, probe.getsockname()
    probe.close()
    try:
        return reuseport_socket(family, address)
    except OSError as exc:
        raise ConfigError(f"{settings.origin('port')}: cannot listen on {settings.host}:{address[1]}: {exc.strerror or exc}") from None


@dataclass
class Worker:
    index: int
    pid: int = 0  # 0 while not running
    last_pid: int = 0
    started: float = 0.0
    ready: bool = False
    restart_at: float | None = None
    delay: float = RESTART_FIRST_SECONDS
    status: int | None = None


@dataclass
class Supervisor:
    """The parent of the workers (see the module doc)."""

    settings: Settings
    count: int
    reserved: socket.socket
    # Serves in the forked child until it should stop: (its siblings, the parent's end-of-file
    # descriptor, the call that reports it listening).
    run_worker: Callable[[Siblings, int, Callable[[], None]], None]
    # How long workers get to drain after SIGTERM before they are killed.
    grace: float = 30.0
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pairs = inboxes(self.count) if self.count > 1 else []
        self.ready_r, self.ready_w = os.pipe()
        self.alive_r, self.alive_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        self.workers = [Worker(index) for index in range(1, self.count + 1)]
        self._signalled: list[int] = []

    # -- starting

    def spawn(self, worker: Worker) -> None:
        self._drain_inbox(worker.index)  # messages for the worker that died are stale
        # SIGTERM and SIGINT wait (blocked) across the fork until the child has its own handling:
        # delivered in between, they would run the parent's handler in the child and be lost
        # there (the worker would serve on until killed after the grace period).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                self._in_child(worker.index, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.pid, worker.last_pid, worker.started = pid, pid, time.monotonic()
        worker.ready, worker.restart_at, worker.status = False, None, None

    def _in_child(self, index: int, mask: set[int | signal.Signals]) -> NoReturn:
        code = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            # One that arrived since the fork now ends the worker, before it serves anything.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent, which forwards it once
            os.close(self.alive_w)  # only the parent holds it: its death is our end-of-file
            os.close(self.ready_r)
            self.reserved.close()
            siblings = Siblings(index, self.count)
            for number, (read, write) in enumerate(self.pairs, start=1):
                if number == index:
                    siblings.inbox = read
                    write.close()
                else:
                    siblings.peers.append(write)
                    read.close()
            ready_w = self.ready_w
            self.run_worker(siblings, self.alive_r, lambda: _report_ready(ready_w))
            code = 0
        except ConfigError as exc:
            print(f"cloudsession: configuration error: {exc}", file=sys.stderr)
            code = 2
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _drain_inbox(self, index: int) -> None:
        if not self.pairs:
            return
        read = self.pairs[index - 1][0]
        while True:
            try:
                read.recv(1)
            except OSError:  # BlockingIOError: empty
                return

    # -- the loop

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signalled.append(signum)

    def run(self, announce: Callable[[], None]) -> int:
        """Start the workers, announce once all listen, supervise until told to stop; the exit
        status (0: every worker stopped cleanly)."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOP_SIGNALS}
        try:
            for worker in self.workers:
                self.spawn(worker)
            if not self._wait_ready():
                return self._stop() if self._signalled else 1  # told to stop while starting: not a failure
            announce()
            self._supervise()
            return self._stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close()

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_SECONDS
        while not all(worker.ready for worker in self.workers):
            if self._signalled:
                return False
            if time.monotonic() > deadline:
                print(f"cloudsession: the workers did not all start within {START_SECONDS:g}s", file=sys.stderr)
                self._stop()
                return False
            self._wait(TICK_SECONDS)
            for worker in self._reap():
                print(f"cloudsession: worker {worker.index} exited while starting ({_describe(worker.status)}); stopping", file=sys.stderr)
                self._stop()
                return False
        return True

    def _supervise(self) -> None:
        while not self._signalled:
            self._wait(self._next_timeout())
            now = time.monotonic()
            for worker in self._reap():
                lived = now - worker.started
                worker.delay = RESTART_FIRST_SECONDS if lived >= RESET_AFTER_SECONDS else worker.delay
                worker.restart_at = now + worker.delay
                log.warning("worker %d (pid %d) exited (%s) after %.1fs; restarting it in %.1fs", worker.index, worker.last_pid, _describe(worker.status), lived, worker.delay)
                worker.delay = min(worker.delay * 2, RESTART_MAX_SECONDS)
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now and not self._signalled:
                    self.spawn(worker)
                    log.warning("worker %d restarted (pid %d)", worker.index, worker.pid)

    def _next_timeout(self) -> float:
        pending = [worker.restart_at - time.monotonic() for worker in self.workers if worker.restart_at is not None]
        return max(0.0, min([TICK_SECONDS, *pending]))

    def _wait(self, timeout: float) -> None:
        """Sleep until a worker reports ready, a signal arrives, or ``timeout`` passes."""
        try:
            readable, _, _ = select.select([self.ready_r], [], [], timeout)
        except InterruptedError:
            return
        if readable:
            try:
                data = os.read(self.ready_r, 4096)
            except BlockingIOError:
                return
            for line in data.decode().split():
                pid = int(line)
                for worker in self.workers:
                    if worker.pid == pid:
                        worker.ready = True

    def _reap(self) -> list[Worker]:
        """Workers that exited since last time (their status recorded, their pid cleared)."""
        gone = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for worker in self.workers:
                if worker.pid == pid:
                    worker.status, worker.pid, worker.ready = status, 0, False
                    gone.append(worker)
        return gone

    def _stop(self) -> int:
        """SIGTERM to every worker, wait for them to drain, SIGKILL what is left after the grace
        period; 0 when every worker exited 0."""
        alive = [worker for worker in self.workers if worker.pid > 0]
        if self._signalled:
            log.info("stopping %d worker(s)", len(alive))
        for worker in alive:
            worker.restart_at = None
            _kill(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            worker.restart_at = None
        deadline = time.monotonic() + self.grace
        clean = True
        while any(worker.pid > 0 for worker in self.workers):
            if time.monotonic() > deadline:
                for worker in self.workers:
                    if worker.pid > 0:
                        log.warning("worker %d (pid %d) did not stop in time; killed", worker.index, worker.pid)
                        _kill(worker.pid, signal.SIGKILL)
                deadline = float("inf")
            self._wait(TICK_SECONDS)
            for worker in self._reap():
                if worker.status != 0:
                    clean = False
                    log.warning("worker %d exited (%s) while stopping", worker.index, _describe(worker.status))
        return 0 if clean else 1

    def _close(self) -> None:
        for fd in (self.ready_r, self.ready_w, self.alive_r, self.alive_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for read, write in self.pairs:
            read.close()
            write.close()
        self.reserved.close()


def _report_ready(fd: int) -> None:
    os.write(fd, f"{os.getpid()}\n".encode())


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(status: int | None) -> str:
    if status is None:
        return "unknown status"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def worker_main(settings: Settings, local_admin: tuple[str, str] | None, serve: Callable[..., Coroutine[Any, Any, None]]) -> Callable[[Siblings, int, Callable[[], None]], None]:
    """What each forked worker runs: its own SO_REUSEPORT listening socket on the reserved port,
    the app with its place among the workers, served until SIGTERM (or the parent's death)."""

    def run(siblings: Siblings, parent_alive: int, ready: Callable[[], None]) -> None:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        try:
            sock = reuseport_socket(family, address)
            sock.listen(128)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{settings.origin('port')}: cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
            raise
        sock.setblocking(False)
        app = create_app(worker_settings(settings, siblings.index))
        app[WORKER] = siblings

        async def name_worker(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[WORKER_HEADER] = str(siblings.index)

        app.on_response_prepare.append(name_worker)
        if local_admin is not None:
            key, token = local_admin
            enable_local_admin(app, key, token, sign_in_claim(settings.data_dir, token))
        asyncio.run(serve(app, sock, ready, parent_alive=parent_alive))

    return run


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: ``METRICS_ADDRESS`` host:port becomes host:port+index-1, so
    that every worker has its own metrics to scrape (port 0 stays 0: any free port)."""
    if not settings.metrics_address:
        return settings
    host, _, port = settings.metrics_address.rpartition(":")
    if int(port) == 0:
        return settings
    return settings.model_copy(update={"metrics_address": f"{host}:{int(port) + index - 1}"})


def sign_in_for_workers(settings: Settings) -> tuple[str, Path]:
    """A sign-in token for every worker, and the file whose removal marks it used (removed by
    the parent when it stops, if still there)."""
    token = new_sign_in_token()
    claim = sign_in_claim(settings.data_dir, token)
    fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return token, claim
