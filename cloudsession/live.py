"""Live-update fan-out to share viewers (placeholder until the browser views land).

The share service calls an ``EventSink`` after every accepted change; this module's ``LiveHub``
is the implementation that pushes those events to WebSocket viewers of ``/ws/<id>``.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        """An accepted sync. ``items`` are the public (id-rewritten, stripped) sync items."""

    async def share_deleted(self, share_id: str) -> None:
        """The share was deleted (or expired); viewers should be told and closed."""


class NullSink:
    """Used when nobody listens (CLI tools, tests of the service alone)."""

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        return None

    async def share_deleted(self, share_id: str) -> None:
        return None
