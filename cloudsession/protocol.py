"""Wire constants every layer agrees on: the names of the HTTP headers the protocol uses.

Kept apart from the web package so that the domain (which names the Idempotency-Key in its
errors) and the clients (which send these headers) need not import the server's doors.
"""

from __future__ import annotations

# The admin key (SESSIONS_RPC_SHARED_KEY): /api/sessions, /rpc/share and the /sessions page.
ADMIN_HEADER = "x-opencode-share-key"
# A private share's read token (or ``?token=`` in a browser link).
READ_TOKEN_HEADER = "x-opencode-share-token"
# Makes a retried create, sync or delete return the first answer without applying it twice.
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Labels for a new share, ``key=value,key2=value2`` (docs/lifecycle.md).
LABELS_HEADER = "X-Cloudsession-Labels"
# How long a new share lives when its body names no expiry: ``7d``, ``12h``, ``3600``.
TTL_HEADER = "X-Cloudsession-TTL"
