"""Delivery: drain a share's outbox through a transport until everything is acknowledged.

The loop is the client half of docs/protocol.md:

1. ``connect``: create the share if the outbox has no credentials yet (idempotent per session
   ID), then redeem it to learn the server's cursor and capability epoch; rewind if the server
   is behind what it acknowledged (it lost data: everything after its cursor is sent again).
2. Send the next batch. The answer acknowledges ops (applied or duplicate) or rejects them; both
   are final and written to the outbox.
3. No answer, or a 5xx/408/429: the batch stays as it is and is sent again after a backoff, after
   redeeming again (a reconnect). The server's ledger turns a batch it already applied into
   duplicate acknowledgements, so nothing is applied twice.
4. 403: the capability was rotated. The session ID is the owner's root key, so create (which is
   idempotent and answers with the current secret) and carry on. 404: the share was deleted;
   create it again and the rewind replays everything. 410: the share expired and its data is
   gone: undelivered ops fail and delivery stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from cloudsession.client.outbox import Outbox, ShareRow
from cloudsession.client.transport import Transport, TransportError


class DeliveryFailed(Exception):
    """Delivery stopped and cannot go on by itself (see the message for what to do)."""


Progress = Callable[[dict[str, int], int], None]


class DurableClient:
    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        share: ShareRow,
        *,
        create_options: dict[str, Any] | None = None,
        batch_size: int = 100,
        max_attempts: int = 10,
        on_progress: Progress | None = None,
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.share = share
        self.create_options = create_options or {}
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.on_progress = on_progress
        # Handed out by create for a private share (the owner's terminal may show it).
        self.read_token: str | None = None

    async def create(self) -> dict[str, Any]:
        answer = await self.transport.create(self.share.session_id, self.create_options)
        self.read_token = answer.get("readToken")
        # The create answer does not name the epoch; redeem (next) does.
        self.outbox.save_credentials(self.share, share_id=answer["id"], secret=answer["secret"], url=answer["url"], epoch=self.share.epoch)
        return answer

    async def connect(self) -> dict[str, Any]:
        """Make sure the share exists and we hold its current capability; learn its cursor."""
        if self.share.secret is None:
            await self.create()
        for _ in range(3):
            assert self.share.share_id is not None and self.share.secret is not None
            try:
                redeemed = await self.transport.redeem(self.share.share_id, self.share.secret)
            except TransportError as exc:
                if exc.status in (403, 404):
                    await self.create()  # rotated or deleted: the session ID gets the current capability
                    continue
                if exc.status == 410:
                    raise self._gone() from None
                raise
            if redeemed["capabilityEpoch"] != self.share.epoch:
                self.outbox.save_credentials(
                    self.share, share_id=redeemed["id"], secret=self.share.secret, url=redeemed["url"], epoch=redeemed["capabilityEpoch"]
                )
            self.outbox.rewind(self.share, redeemed["cursor"])
            return redeemed
        raise DeliveryFailed("the share refuses our capability even after re-creating it")

    def _gone(self) -> DeliveryFailed:
        failed = self.outbox.fail_undelivered(self.share, "share expired (410)")
        return DeliveryFailed(
            f"the share expired (410 Gone) and its data is deleted; {failed} undelivered ops were given up. "
            "Push again with --restart to create a new share and send everything again."
        )

    async def deliver(self) -> dict[str, int]:
        """Send until the outbox is drained; returns the final counts per state."""
        await self._connect_retrying()
        failures = refreshes = 0
        while (batch := self.outbox.next_batch(self.share, self.batch_size)) is not None:
            wait = batch.next_retry_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            assert self.share.share_id is not None and self.share.secret is not None
            try:
                answer = await self.transport.append_ops(self.share.share_id, self.share.secret, self.share.epoch, batch.envelopes)
            except TransportError as exc:
                if exc.retryable:
                    failures += 1
                    if failures >= self.max_attempts:
                        raise DeliveryFailed(f"no answer after {failures} attempts ({exc}); run again to resume") from None
                    self.outbox.retry_later(batch, str(exc))
                    await self._reconnect()
                    continue
                if exc.status in (403, 404) and refreshes < 3:
                    refreshes += 1
                    await self.connect()  # get the current capability (or a new share), then resend
                    continue
                if exc.status == 410:
                    raise self._gone() from None
                # 400/413: this batch can never be accepted; sending it again would not help.
                self.outbox.fail_batch(batch, str(exc))
                raise DeliveryFailed(f"the server refused a batch: {exc}") from None
            failures = refreshes = 0
            self.outbox.record_answer(self.share, batch, answer)
            if self.on_progress is not None:
                self.on_progress(self.outbox.counts(self.share), self.share.cursor)
        return self.outbox.counts(self.share)

    async def _connect_retrying(self) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self.connect()
                return
            except TransportError as exc:
                if not exc.retryable or attempt == self.max_attempts:
                    raise DeliveryFailed(f"cannot reach the share ({exc}); run again to resume") from None
            await asyncio.sleep(self.outbox.backoff.delay(attempt))

    async def _reconnect(self) -> None:
        try:
            await self.connect()
        except TransportError as exc:
            if not exc.retryable:
                raise DeliveryFailed(f"reconnecting failed: {exc}") from None
            # Still unreachable: the backoff before the next attempt covers it.
