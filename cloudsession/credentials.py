"""Share ids, secrets, public ids and constant-time checks.

The session ID is the owner's root key: whoever knows it can re-create the share and receive the
secret (the real client re-sends create freely, so create must be idempotent). Everything public
therefore shows a *public ID* derived from the session ID with a keyed hash instead.

- share id: the last 8 characters of the session ID (the reference's rule, kept so existing links
  and clients work). When those characters are not URL-safe, or another session already owns the
  id, a stable alternative is used: ``<last 8>-<6 chars of HMAC>`` (or ``h<12 chars of HMAC>`` when
  the tail is unusable). Both are deterministic, so a repeated create finds the same share.
  A session ID shorter than ``MIN_TAIL_SESSION_ID_LENGTH`` always gets ``h<12 chars of HMAC>``:
  its last 8 characters are all or nearly all of it, and the link must never be the owner key.
  (opencode's ids are 30 characters; shares made before this rule keep their ids.)
- secret: ``uuid5(namespace, sessionID)`` at capability epoch 0, byte-identical to the reference;
  later epochs (after a rotation) derive from the session ID and the epoch number.
- public id: ``ses_`` + 26 base62 characters of HMAC-SHA256(namespace, sessionID).
- read token (private shares): ``rt_`` + 32 base62 characters of HMAC-SHA256 over the session ID
  and the capability epoch, so a rotation revokes it with the secret; it opens reads only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid

SHARE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_SAFE_TAIL_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
# Session IDs shorter than this never lend their tail to the share id (see the module docstring).
MIN_TAIL_SESSION_ID_LENGTH = 12
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The uuid npm library (v13) that the reference uses accepts exactly these namespaces.
_NAMESPACE_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z", re.I)
_SPECIAL_NAMESPACES = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}


def parse_namespace(value: str) -> uuid.UUID:
    """Validate ``SESSIONS_SHARED_SECRET`` with the reference's rule; ValueError if invalid."""
    text = value.strip()
    if not (_NAMESPACE_RE.match(text) or text.lower() in _SPECIAL_NAMESPACES):
        raise ValueError(
            "must be a UUID in 8-4-4-4-12 hex form with version 1-8 and variant 8/9/a/b "
            "(for example one printed by `python3 -c 'import uuid; print(uuid.uuid4())'`)"
        )
    return uuid.UUID(text)


def _hmac(namespace: uuid.UUID, purpose: str, value: str) -> bytes:
    return hmac.new(namespace.bytes, f"{purpose}\x00{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, rem = divmod(number, 62)
        chars.append(_BASE62[rem])
    return "".join(chars)


def _base32(data: bytes, length: int) -> str:
    return base64.b32encode(data).decode("ascii").lower()[:length]


def share_id_candidates(namespace: uuid.UUID, session_id: str) -> list[str]:
    """The ids a session's share may have, in order of preference (see module docstring)."""
    tail = session_id[-8:]
    digest = _hmac(namespace, "share-id", session_id)
    if len(session_id) >= MIN_TAIL_SESSION_ID_LENGTH and _SAFE_TAIL_RE.match(tail):
        return [tail, f"{tail}-{_base32(digest, 6)}"]
    return [f"h{_base32(digest, 12)}"]


def derive_secret(namespace: uuid.UUID, session_id: str, epoch: int = 0) -> str:
    """The write capability. Epoch 0 equals the reference's ``uuid5(namespace, sessionID)``."""
    name = session_id if epoch == 0 else f"{session_id}\x00epoch:{epoch}"
    return str(uuid.uuid5(namespace, name))


def derive_read_token(namespace: uuid.UUID, session_id: str, epoch: int) -> str:
    return "rt_" + _base62(_hmac(namespace, "read", f"{session_id}\x00{epoch}"), 32)


def public_session_id(namespace: uuid.UUID, session_id: str) -> str:
    return "ses_" + _base62(_hmac(namespace, "public-id", session_id), 26)


def secrets_equal(given: object, expected: str) -> bool:
    """Constant-time comparison; a non-string ``given`` never matches."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
