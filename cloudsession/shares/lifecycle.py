"""A share's life and context: labels, retention policies, and finalising a share.

- **Labels** are small key/value strings attached at create (the create body's ``labels``, or the
  ``X-Cloudsession-Labels: k=v,k2=v2`` header a CI script or a proxy sets): a job URL, a commit,
  a runner. They are kept in the share's metadata, shown on its page and in the list, and
  filterable (``?label=k=v``). Bounded in count and size, validated like every input.
- **Retention** chooses the expiry of a new share the client did not give one to (the stock
  opencode client can only send ``{sessionID}``): the ``X-Cloudsession-TTL`` header, then the first
  configured rule matching the ``User-Agent`` or the labels, then the server's default; every
  expiry, explicit ones included, is capped by the maximum (``config.RetentionSettings``).
- **Finalising** freezes a share: every later write (sync, ops, privacy, expiry) answers 409,
  until its owner or the admin unfreezes it. A final share's page may be cached for long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cloudsession.config import RetentionSettings, parse_duration
from cloudsession.errors import ValidationFailed
from cloudsession.shares import audit
from cloudsession.shares.service import ShareService, now_ms
from cloudsession.shares.state import ShareState

MAX_LABELS = 16
# Filters one list request may combine (?label=k=v, repeated).
MAX_LABEL_FILTERS = 8
# The longest expiry anyone may ask for, whatever the retention policy.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Printable text without control characters; commas and equals signs are allowed in values sent
# in a JSON body, not in the header form (where they separate pairs).
_VALUE_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")


def _label_problem(message: str) -> ValidationFailed:
    return ValidationFailed(f"Invalid labels: {message}", [{"path": ["labels"], "message": message}])


def parse_labels(raw: Any) -> dict[str, str]:
    """An object of strings, bounded; ValidationFailed (400) otherwise."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _label_problem("must be an object of strings")
    if len(raw) > MAX_LABELS:
        raise _label_problem(f"at most {MAX_LABELS} labels")
    labels: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            raise _label_problem(f"keys are 1-{MAX_LABEL_KEY} characters of A-Z a-z 0-9 _ . - (got {str(key)[:80]!r})")
        if not isinstance(value, str) or not _VALUE_RE.match(value):
            raise _label_problem(f"{key}: values are strings of at most {MAX_LABEL_VALUE} printable characters")
        labels[key] = value
    return labels


def labels_from_header(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` (spaces around items ignored) -> labels; ValidationFailed when malformed."""
    if not text:
        return {}
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise _label_problem(f"header items are key=value (got {item.strip()[:80]!r})")
        pairs[key.strip()] = value.strip()
    return parse_labels(pairs)


def parse_label_filter(text: str) -> tuple[str, str]:
    """``?label=k=v`` -> (k, v); ValidationFailed when malformed."""
    key, sep, value = text.partition("=")
    if not sep or not LABEL_KEY_RE.match(key):
        raise ValidationFailed("label filters are key=value", [{"path": ["label"], "message": "expected key=value"}])
    return key, value


def matches_labels(entry: dict[str, Any], wanted: list[tuple[str, str]]) -> bool:
    labels = entry.get("labels")
    return all(isinstance(labels, dict) and labels.get(k) == v for k, v in wanted)


@dataclass(frozen=True, slots=True)
class CreateContext:
    """What the request says about a new share beyond its body: the TTL a header asked for, and
    the client's User-Agent (for retention rules)."""

    header_ttl: str | None = None
    user_agent: str = ""


def retention_ttl(policy: RetentionSettings, labels: dict[str, str], context: CreateContext) -> int | None:
    """The TTL (seconds) retention gives a new share that did not ask for one; None: none."""
    if context.header_ttl:
        try:
            ttl = parse_duration(context.header_ttl)
        except ValueError as exc:
            raise ValidationFailed(f"X-Cloudsession-TTL: {exc}", [{"path": ["X-Cloudsession-TTL"], "message": str(exc)}]) from None
        if ttl > MAX_TTL_SECONDS:
            raise ValidationFailed(f"X-Cloudsession-TTL: at most {MAX_TTL_SECONDS} seconds (10 years)", [{"path": ["X-Cloudsession-TTL"], "message": "too long"}])
        return ttl
    for rule in policy.rules:
        if rule.matches(context.user_agent, labels):
            return rule.ttl_seconds
    return policy.default_ttl_seconds


def cap_expiry(policy: RetentionSettings, expires_at: int | None, now: int) -> int | None:
    """Every expiry, explicit ones included, within the maximum TTL (None: never, unless capped)."""
    if policy.max_ttl_seconds is None:
        return expires_at
    latest = now + policy.max_ttl_seconds * 1000
    return latest if expires_at is None else min(expires_at, latest)


# -- finalise -------------------------------------------------------------------------------------


async def set_final(service: ShareService, share_id: str, secret: str | None, final: bool, *, admin: bool = False) -> dict[str, Any]:
    """Finalise (or unfreeze) a share: by its owner's secret, or by the admin (``admin=True``)."""

    note = audit.record("finalize" if final else "unfinalize", admin=admin)

    def build(state: ShareState) -> dict[str, Any] | None:
        if not admin:
            service.check_secret(state, secret)
        if bool(state.meta.extra.get("final")) == final:
            return None  # already so: nothing to write
        extra = {"final": True if final else None, "finalizedAt": now_ms() if final else None}
        return {"meta": {"extra": extra}, "audit": [note]}

    changed: list[bool] = []

    def build_and_note(state: ShareState) -> dict[str, Any] | None:
        entry = build(state)
        changed[:] = [entry is not None]
        return entry

    result = await service.commit(share_id, build_and_note, allow_final=True)
    if final and changed and changed[0]:
        service.emit("share.finalized", share_id)
    return {"id": share_id, "final": final, "finalizedAt": result.state.meta.extra.get("finalizedAt")}
