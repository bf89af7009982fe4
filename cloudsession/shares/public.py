"""What anyone with a share's link may see: ``PublicShare``, and the redaction of the owner's
real session ID from every public output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PublicShare:
    """A share as anyone with the link may see it: public ids, no secret, no real session ID.

    ``messages`` and ``parts`` are in stored (first-seen) order. The entity dicts are shared with
    the service's cache and must be treated as read-only.
    """

    id: str
    session: dict[str, Any]
    messages: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    diffs: list[dict[str, Any]]
    models: list[dict[str, Any]]
    created_at: int
    last_updated: int
    sync_count: int
    private: bool = False
    expires_at: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    final: bool = False
    # (real, public) pairs replaced in serialised output as a last line of defence.
    _redactions: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def data_items(self) -> list[dict[str, Any]]:
        """The flat array ``opencode import`` reads: session, messages and parts in id order,
        then the diff list and the model list."""
        items: list[dict[str, Any]] = [{"type": "session", "data": self.session}]
        items += [{"type": "message", "data": m} for m in sorted(self.messages, key=lambda m: m["id"])]
        items += [{"type": "part", "data": p} for p in sorted(self.parts, key=lambda p: p["id"])]
        items.append({"type": "session_diff", "data": self.diffs})
        items.append({"type": "model", "data": self.models})
        return items

    def agent_session(self) -> dict[str, Any]:
        """The reference's ``AgentSession`` object shape, without the secret."""
        return {
            "session": self.session,
            "messages": self.messages,
            "parts": self.parts,
            "diffs": self.diffs,
            "models": self.models,
            "metadata": {"createdAt": self.created_at, "lastUpdated": self.last_updated, "syncCount": self.sync_count},
        }

    def redact(self, text: str) -> str:
        """Replace any remaining occurrence of the real session ID in serialised output."""
        for real, public in self._redactions:
            text = text.replace(real, public)
        return text
