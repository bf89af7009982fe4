"""The sink the share service tells about accepted changes (the live hub implements it).

Defined in the domain so that the service depends on an interface, never on the doors or the
hub that listen.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    """A sink may also define ``listening(share_id) -> bool``: when it says False, the service
    does not prepare (redact) the items of a sync nobody would receive, nor call ``share_synced``."""

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        """An accepted sync. ``items`` are the public (id-rewritten, stripped) sync items."""

    async def share_deleted(self, share_id: str) -> None:
        """The share was deleted (or expired); viewers should be told and closed."""

    async def share_access_changed(self, share_id: str) -> None:
        """Who may read the share changed (rotation, private); viewers must re-authenticate."""


class NullSink:
    """Used when nobody listens (CLI tools, tests of the service alone)."""

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        return None

    async def share_deleted(self, share_id: str) -> None:
        return None

    async def share_access_changed(self, share_id: str) -> None:
        return None
