"""The dispatcher: every replica runs one; it claims due events from the hook box
(``shares/hookbox.py``) with a lease and delivers them to each configured target.

- **Webhooks**: ``POST`` of the JSON payload, signed with HMAC-SHA256 over ``<timestamp>.<body>``
  (``X-Cloudsession-Signature: t=<unix seconds>,v1=<hex>``), with the delivery id in
  ``X-Cloudsession-Delivery`` for de-duplication. A 2xx answer is a delivery; anything else, a
  timeout or a refused connection is retried with doubling delays.
- **Commands**: the program runs without a shell (unless configured), with a deadline, in an
  environment that holds only ``PATH``, ``LANG`` and the share's public context (never the
  server's own environment, which holds its secrets); the payload is also on its stdin. Exit
  status 0 is a delivery. Its output goes to the server log with the triggering request's id.

A slow or hanging target costs only its own deadline: the request that caused the event never
waits for any of this. Each target of an event is tried ``max_attempts`` times, then given up on
(logged). At least once: a record stays in the store until every target has it, whatever
restarts happen meanwhile; a lease keeps two replicas from delivering it at the same moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from cloudsession import __version__
from cloudsession.config import CommandTarget, ConfigError, HookSettings, WebhookTarget, display_url
from cloudsession.errors import ShareError
from cloudsession.jsonio import json_bytes
from cloudsession.shares.hookbox import HookBox

log = logging.getLogger("cloudsession.hooks")

SIGNATURE_HEADER = "X-Cloudsession-Signature"
MAX_OUTPUT_LOGGED = 4096
MAX_RETRY_SECONDS = 3600
MAX_CONCURRENT_DELIVERIES = 8
_LABEL_ENV_RE = re.compile(r"[^A-Z0-9_]")


def resolve_secrets(settings: HookSettings, environ: Mapping[str, str]) -> dict[str, bytes]:
    """Each webhook's signing key, read from the environment variable it names; ConfigError when
    one is missing (a webhook that cannot sign must not start unsigned)."""
    keys: dict[str, bytes] = {}
    for hook in settings.webhooks:
        if hook.secret_env is None:
            continue
        value = environ.get(hook.secret_env)
        if not value:
            raise ConfigError(f"hooks.webhooks ({display_url(hook.url)}): secret_env {hook.secret_env} is not set in the environment")
        keys[hook.url] = value.encode()
    return keys


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def target_names(settings: HookSettings) -> list[str]:
    """Each target's name: its own, else ``webhook-N`` / ``command-N`` (never its URL, which may
    hold a secret). Names key the delivery state in the records, so they must be unique."""
    names = [t.name or f"webhook-{n}" for n, t in enumerate(settings.webhooks, 1)]
    names += [t.name or f"command-{n}" for n, t in enumerate(settings.commands, 1)]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"hooks: target names must be unique (repeated: {', '.join(duplicated)})")
    return names


def command_env(payload: dict[str, Any], delivery_id: str) -> dict[str, str]:
    """What a command hook sees: the share's public context, nothing of the server's own."""
    share = payload.get("share") or {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8")}
    context = dict(
        CLOUDSESSION_EVENT=str(payload.get("event", "")),
        CLOUDSESSION_DELIVERY_ID=delivery_id,
        CLOUDSESSION_SHARE_ID=str(share.get("id", "")),
        CLOUDSESSION_SHARE_URL=str(share.get("url", "")),
        CLOUDSESSION_SYNC_COUNT=str(share.get("syncCount", "")),
        OPENCODE_SESSION_ID=str(share.get("sessionId") or ""),
        OPENCODE_SESSION_TITLE=str(share.get("title") or ""),
    )
    for key, value in (share.get("labels") or {}).items():
        context["CLOUDSESSION_LABEL_" + _LABEL_ENV_RE.sub("_", str(key).upper())] = str(value)
    # A NUL cannot be in an environment variable; a title may hold one.
    env.update({key: value.replace("\0", "") for key, value in context.items()})
    return env


class Dispatcher:
    def __init__(self, box: HookBox, settings: HookSettings, keys: dict[str, bytes]) -> None:
        self.box = box
        self.settings = settings
        self.keys = keys
        self.targets: list[WebhookTarget | CommandTarget] = [*settings.webhooks, *settings.commands]
        self.names = dict(zip(map(id, self.targets), target_names(settings), strict=True))
        # Records being delivered by this replica, and how many deliveries may run at once: a
        # hanging target holds up only its own event.
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        # Long enough for every target of one event to run to its deadline, one after another; a
        # replica that dies holding a lease delays that event by this much at most.
        deadlines = [settings.request_timeout] * len(settings.webhooks) + [c.timeout for c in settings.commands]
        self.lease_ms = (sum(deadlines) + 10) * 1000
        self._http: aiohttp.ClientSession | None = None
        self._next_idle_scan = 0.0

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout))
        try:
            while True:
                try:
                    await self.tick()
                except ShareError as exc:
                    log.warning("hooks: the store failed (%s); retrying", exc.message)
                except Exception:
                    log.exception("hooks: dispatch round failed")
                await asyncio.sleep(self.settings.poll_seconds)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._http.close()

    async def tick(self) -> None:
        if time.monotonic() >= self._next_idle_scan:
            self._next_idle_scan = time.monotonic() + max(5.0, self.settings.idle_after / 10)
            await self.box.record_idle(self.settings.idle_after * 1000)
        for key, record, etag in await self.box.due():
            if key in self._inflight or len(self._inflight) >= MAX_CONCURRENT_DELIVERIES * 4:
                continue
            self._inflight.add(key)
            task = asyncio.get_running_loop().create_task(self._deliver_one(key, record, etag))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_one(self, key: str, record: dict[str, Any], etag: str) -> None:
        try:
            async with self._slots:
                await self._deliver(key, record, etag)
        except asyncio.CancelledError:
            raise
        except ShareError as exc:
            log.warning("hooks: the store failed while delivering %s (%s)", key, exc.message)
        except Exception:
            log.exception("hooks: delivering %s failed", key)
        finally:
            self._inflight.discard(key)

    async def _deliver(self, key: str, record: dict[str, Any], etag: str) -> None:
        now = int(time.time() * 1000)
        record["lease"] = now + self.lease_ms
        claimed = await self.box.save(key, record, etag)
        if claimed is None:
            return  # another replica claimed it first
        try:
            await self._deliver_claimed(key, record, claimed)
        except asyncio.CancelledError:
            # Shutting down mid-delivery: give the event back at once rather than at lease end.
            record["lease"] = 0
            await asyncio.shield(self.box.save(key, record, claimed))
            raise

    async def _deliver_claimed(self, key: str, record: dict[str, Any], claimed: str) -> None:
        payload = {"id": record["id"], "at": record["at"], **await self.box.current_payload(record)}
        done, attempts, failed = set(record.get("done", [])), dict(record.get("attempts", {})), list(record.get("failed", []))
        for target in self.targets:
            name = self.names[id(target)]
            if name in done or record["kind"] not in target.events:
                continue
            try:
                ok = await (self._post(target, payload) if isinstance(target, WebhookTarget) else self._run(target, payload, record))
            except Exception:  # a target's own failure is a failed attempt, never a stuck event
                log.exception("hooks: %s failed on %s %s", name, payload["event"], payload["id"])
                ok = False
            attempts[name] = attempts.get(name, 0) + 1
            if ok:
                done.add(name)
            elif attempts[name] >= self.settings.max_attempts:
                log.error("hooks: giving up on %s for %s of share %s after %d attempts", name, record["kind"], record["share"], attempts[name])
                done.add(name)
                failed.append(name)
        record.update(done=sorted(done), attempts=attempts, failed=failed, lease=0)
        pending = [t for t in self.targets if record["kind"] in t.events and self.names[id(t)] not in done]
        if pending:
            tries = max(attempts.get(self.names[id(t)], 0) for t in pending)
            record["due"] = int(time.time() * 1000) + int(min(self.settings.retry_seconds * 2 ** (tries - 1), MAX_RETRY_SECONDS) * 1000)
        else:
            record["finished"] = int(time.time() * 1000)
        if await self.box.save(key, record, claimed) is None:
            log.warning("hooks: record %s changed while it was being delivered", key)

    async def _post(self, hook: WebhookTarget, payload: dict[str, Any]) -> bool:
        assert self._http is not None
        body = json_bytes(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"cloudsession/{__version__}",
            "X-Cloudsession-Event": str(payload["event"]),
            "X-Cloudsession-Delivery": str(payload["id"]),
        }
        key = self.keys.get(hook.url)
        if key is not None:
            headers[SIGNATURE_HEADER] = sign(key, int(time.time()), body)
        try:
            async with self._http.post(hook.url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True
                log.warning("hooks: %s answered %d to %s %s", display_url(hook.url), resp.status, payload["event"], payload["id"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("hooks: %s unreachable for %s %s: %s", display_url(hook.url), payload["event"], payload["id"], type(exc).__name__)
        return False

    async def _run(self, hook: CommandTarget, payload: dict[str, Any], record: dict[str, Any]) -> bool:
        env = command_env(payload, str(payload["id"]))
        body = json_bytes(payload)
        request_id = record.get("requestId") or "-"
        try:
            if hook.shell or isinstance(hook.command, str):
                command = hook.command if isinstance(hook.command, str) else " ".join(hook.command)
                proc = await asyncio.create_subprocess_shell(
                    command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
                )
            else:
                proc = await asyncio.create_subprocess_exec(
                    *hook.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
                )
        except OSError as exc:
            log.warning("hooks: cannot run %s for %s (request %s): %s", self.names[id(hook)], payload["event"], request_id, exc)
            return False
        name = self.names[id(hook)]
        try:
            output, _ = await asyncio.wait_for(proc.communicate(body), timeout=hook.timeout)
        except TimeoutError:
            log.warning("hooks: %s timed out after %ds for %s (request %s)", name, hook.timeout, payload["event"], request_id)
            return False
        finally:
            if proc.returncode is None:  # timed out, or the server is shutting down
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a shell's children too
                except ProcessLookupError:
                    pass
                await asyncio.shield(proc.wait())
        text = output[:MAX_OUTPUT_LOGGED].decode("utf-8", "replace").strip()
        log.info("hooks: %s exited %d for %s of share %s (request %s)%s", name, proc.returncode, payload["event"],
                 env["CLOUDSESSION_SHARE_ID"], request_id, f": {text}" if text else "")  # fmt: skip
        return proc.returncode == 0
