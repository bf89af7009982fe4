"""The sync's hot-path shortcuts give the answers of the slow paths they stand for: one
serialisation of the whole ``data`` array for the per-item storability check, a well-formed body
taken without building its pydantic model, a body that has fully arrived read without a deadline,
and the client address worked out once per request."""

from __future__ import annotations

from typing import Any

import factories as f
import pytest

from cloudsession.errors import ValidationFailed
from cloudsession.shares import items as items_module
from cloudsession.shares.items import MAX_NESTING, parse_sync_items

SID = "ses_fastPathsXXXXXXXXXXXXXXXXXX"


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels - 1):
        value = [value]
    return value


def _batches() -> list[list[dict[str, Any]]]:
    """Batches with entities at, just under and just over the nesting limit, in different
    places, and items whose ignored extra keys nest far deeper than any entity may."""
    out: list[list[dict[str, Any]]] = []
    for depth in (MAX_NESTING - 2, MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, MAX_NESTING + 5):
        for where in (0, 2):
            batch = [f.item("part", {**f.text_part(SID, "msg_a", f"p{n}"), "deep": "flat"}) for n in range(3)]
            batch[where]["data"]["deep"] = _nested(depth - 1)  # the part object is one level
            out.append(batch)
    junk = [f.item("message", f.user_message(SID, id="msg_a")), {**f.item("part", f.text_part(SID, "msg_a", "p")), "junk": _nested(600)}]
    out.append(junk)
    bad_then_deep = [{"type": "nope", "data": {}}, f.item("part", {**f.text_part(SID, "msg_a", "p"), "deep": _nested(MAX_NESTING + 3)})]
    out.append(bad_then_deep)
    deep_then_bad = list(reversed(bad_then_deep))
    out.append(deep_then_bad)
    return out


def _outcome(batch: list[dict[str, Any]]) -> Any:
    try:
        return ("ok", parse_sync_items(batch, max_items=100))
    except ValidationFailed as exc:
        return ("refused", exc.message, exc.detail)


@pytest.mark.parametrize("batch", _batches())
def test_one_serialisation_of_the_array_refuses_and_accepts_what_the_per_item_check_does(batch: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _outcome(batch)
    monkeypatch.setattr(items_module, "_storable", lambda data, padding: False)  # every item checked on its own
    assert _outcome(batch) == fast


def test_the_limit_is_where_it_was() -> None:
    at_limit = [f.item("part", {**f.text_part(SID, "msg_a", "p"), "deep": _nested(MAX_NESTING)})]  # the part object is the 200th level
    assert parse_sync_items(at_limit, max_items=10)[0]["data"]["deep"] == at_limit[0]["data"]["deep"]
    over = [f.item("part", {**f.text_part(SID, "msg_a", "p"), "deep": _nested(MAX_NESTING + 1)})]
    with pytest.raises(ValidationFailed, match=f"nested deeper than {MAX_NESTING} levels"):
        parse_sync_items(over, max_items=10)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"secret": 7, "data": []}, "secret"),
        ({"secret": "s", "data": {"type": "part"}}, "data"),
        ({"data": []}, "secret"),
        ({"secret": "s"}, "data"),
        ([], "body"),
    ],
)
async def test_a_malformed_sync_body_still_gets_the_models_400(client, body: Any, field: str) -> None:  # type: ignore[no-untyped-def]
    share = await (await client.post("/api/share", json={"sessionID": SID})).json()
    resp = await client.post(f"/api/share/{share['id']}/sync", json=body)
    answer = await resp.json()
    assert resp.status == 400, answer
    message = answer["error"]["message"]
    assert message.startswith("Invalid request body: ") and field in message


async def test_a_well_formed_sync_answers_as_before_and_keeps_extra_keys_out(client) -> None:  # type: ignore[no-untyped-def]
    share = await (await client.post("/api/share", json={"sessionID": SID})).json()
    data = [f.item("message", f.user_message(SID, id="msg_a"))]
    resp = await client.post(f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": data, "extra": {"ignored": True}})
    assert resp.status == 200 and await resp.json() == {"success": True, "syncCount": 1}
    resp = await client.post(f"/api/share/{share['id']}/sync", json={"secret": "wrong", "data": data})
    assert resp.status == 403


async def test_a_body_sent_in_pieces_is_read_whole(client) -> None:  # type: ignore[no-untyped-def]
    """A body that has not all arrived when the handler starts takes the path with a deadline."""
    import orjson

    share = await (await client.post("/api/share", json={"sessionID": SID})).json()
    payload = orjson.dumps({"secret": share["secret"], "data": [f.item("message", f.user_message(SID, id="msg_a"))]})

    async def pieces():  # type: ignore[no-untyped-def]
        import asyncio

        for start in range(0, len(payload), 40):
            yield payload[start : start + 40]
            await asyncio.sleep(0.01)

    resp = await client.post(f"/api/share/{share['id']}/sync", data=pieces(), headers={"Content-Type": "application/json"})
    assert resp.status == 200 and await resp.json() == {"success": True, "syncCount": 1}
