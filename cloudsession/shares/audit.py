"""The audit trail: who created, rotated, made private, changed the expiry of, finalised or
deleted a share, when, from where, and with what outcome.

Records are kept with the share (a bounded list in its metadata, written in the same journal
entry as the change itself, so a change and its record can never be separated) and removed with
it; the owner (with the secret) and the admin can read them. A delete removes the share and so its
trail: deletes, and refused attempts, go to the server log instead, as one line each.

Who is acting comes from ``current_actor``, a context variable the doors set for each request
(``web/middleware.py``) and the CLI for its commands, so the domain's functions need no extra
argument to know it. Records never hold a secret, a token or the real session ID.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cloudsession.audit")

# Newest records kept per share: enough for any real history, bounded against a noisy client.
AUDIT_WINDOW = 200


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a change comes from: the client's address and User-Agent, the request id, and the door
    (``http``, ``rpc``, ``cli``, ``sweep``)."""

    address: str = ""
    user_agent: str = ""
    request_id: str = ""
    via: str = "internal"


# Actor is frozen (immutable), so one shared default is safe.
current_actor: ContextVar[Actor] = ContextVar("cloudsession_actor", default=Actor())  # noqa: B039


def record(action: str, outcome: str = "ok", **detail: Any) -> dict[str, Any]:
    """One audit record for ``action`` by the current actor."""
    actor = current_actor.get()
    return {
        "at": int(time.time() * 1000),
        "action": action,
        "outcome": outcome,
        "address": actor.address[:64],
        "userAgent": actor.user_agent[:256],
        "requestId": actor.request_id[:128],
        "via": actor.via,
        **detail,
    }


def log_event(share_id: str, action: str, outcome: str = "ok") -> None:
    """What cannot be kept with the share (deletes, refusals) goes to the log, one line each."""
    actor = current_actor.get()
    log.info(
        "audit share=%s action=%s outcome=%s via=%s address=%s request_id=%s",
        share_id, action, outcome, actor.via, actor.address, actor.request_id,
    )  # fmt: skip
