"""Check a recording of opencode's plugin events (tests/plugin/event-recorder.js) against the
contract of what the cloudsession-share plugin relies on (tests/plugin/event-contract.json).

``problems(records, contract)`` returns one sentence per difference, each naming the event type
(or client call) and the field that changed, so a failing test says what the new opencode does
differently. The contract's ``rules`` are the checks below, by name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

CONTRACT = Path(__file__).resolve().parent / "plugin" / "event-contract.json"
_MISSING = object()
_TYPES = {"string": str, "number": (int, float), "object": dict, "array": list, "boolean": bool}


def load_contract() -> dict[str, Any]:
    contract: dict[str, Any] = json.loads(CONTRACT.read_text())
    return contract


def load_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def values_at(value: Any, path: str) -> list[Any]:
    """Every value at ``path`` (``a.b[].c``); ``_MISSING`` where a step is absent."""
    found = [value]
    for step in path.split("."):
        walk_all = step.endswith("[]")
        key = step[:-2] if walk_all else step
        following: list[Any] = []
        for current in found:
            inner = current.get(key, _MISSING) if isinstance(current, dict) else _MISSING
            if walk_all and isinstance(inner, list):
                following.extend(inner)
            else:
                following.append(inner)
        found = following
    return found


def _type_name(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if isinstance(value, bool):
        return "boolean"
    for name, kind in _TYPES.items():
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _is(value: Any, expected: str) -> bool:
    return _type_name(value) == expected


def shape_problems(where: str, samples: list[Any], shape: dict[str, str]) -> list[str]:
    """The fields of ``shape`` checked in every sample (an event's ``{"properties": ...}``, or a
    client answer's ``{"data": ...}``)."""
    found: list[str] = []
    for path, declared in shape.items():
        optional = declared.endswith("?")
        expected = declared.rstrip("?")
        values = [(sample, value) for sample in samples for value in values_at(sample, path)]
        present = [(sample, value) for sample, value in values if not (optional and value is _MISSING)]
        wrong = next(((sample, value) for sample, value in present if not _is(value, expected)), None)
        if wrong is not None:
            sample, value = wrong
            found.append(f"{where}: `{path}` is {_type_name(value)}, the plugin relies on {expected} (e.g. {json.dumps(sample)[:300]})")
        elif optional and samples and not present:
            found.append(f"{where}: `{path}` ({expected}) is in none of the {len(samples)} recorded events; renamed or gone?")
    return found


def _carries_session(properties: dict[str, Any]) -> bool:
    return any(
        isinstance(value, dict) and "sessionID" in value for value in (properties, properties.get("info"), properties.get("part"))
    )


def problems(records: list[dict[str, Any]], contract: dict[str, Any]) -> list[str]:
    found: list[str] = []
    version = contract["opencode"]
    handled: dict[str, dict[str, str]] = contract["handled"]
    ignored: dict[str, dict[str, str]] = contract["ignored"]
    events = [r for r in records if "event" in r]
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in events:
        by_type[record["event"].get("type", "")].append(record)

    # Each type the plugin consumes (and each ignored one whose shape is pinned) was seen.
    for kind, shape in [*handled.items(), *ignored.items()]:
        if shape and not by_type.get(kind):
            found.append(f"{kind}: no such event in a whole `opencode run --share` of opencode {version}; renamed or gone?")
        if by_type.get(kind):
            found += shape_problems(kind, [{"properties": r["event"].get("properties")} for r in by_type[kind]], shape)

    # parsed: events.js handles exactly the listed types, and makes an item of each such event.
    for kind, records_of_kind in by_type.items():
        plugin_handles = any(r.get("handled") for r in records_of_kind)
        if plugin_handles != (kind in handled):
            found.append(f"{kind}: the plugin's events.js {'handles' if plugin_handles else 'does not handle'} it but the contract says otherwise")
        if kind in handled:
            for record in records_of_kind:
                if not record.get("item"):
                    found.append(f"{kind}: the plugin's events.js made no sync item of {json.dumps(record['event'])[:300]}")
                    break

    # unknown: a new event type about a session is a decision to make, not something to miss.
    for kind, records_of_kind in sorted(by_type.items()):
        if kind not in handled and kind not in ignored and any(_carries_session(r["event"].get("properties") or {}) for r in records_of_kind):
            found.append(f"{kind}: a new event carrying a session ID (e.g. {json.dumps(records_of_kind[0]['event'])[:300]}); handle it or list it as ignored")

    # deltas, and api-matches-events: one pass in recording order (a client answer is compared
    # with the events recorded before it).
    pieces: dict[str, str] = defaultdict(str)
    last_part: dict[str, dict[str, Any]] = {}
    last_entity: dict[str, dict[str, Any]] = {}
    for record in records:
        if "client" in record:
            for entry in (record["client"].get("messages") or {}).get("data") or []:
                for entity in [entry.get("info") or {}, *(entry.get("parts") or [])]:
                    event_copy = last_entity.get(entity.get("id"))
                    if event_copy != entity:
                        found.append(
                            f"client session.messages: {entity.get('id')} differs from its last event ({json.dumps(entity)[:200]} vs {json.dumps(event_copy)[:200]})"
                        )
            continue
        event = record.get("event") or {}
        properties = event.get("properties") or {}
        if event.get("type") == "message.part.delta" and properties.get("field") == "text":
            pieces[str(properties.get("partID"))] += str(properties.get("delta", ""))
        elif event.get("type") == "message.part.updated" and isinstance(properties.get("part"), dict):
            last_part[properties["part"].get("id")] = properties["part"]
            last_entity[properties["part"].get("id")] = properties["part"]
        elif event.get("type") == "message.updated" and isinstance(properties.get("info"), dict):
            last_entity[properties["info"].get("id")] = properties["info"]
    if not pieces and ignored.get("message.part.delta"):
        found.append("message.part.delta: no text pieces recorded; the deltas rule could not be checked")
    for part_id, text in pieces.items():
        final = last_part.get(part_id, {}).get("text")
        if final != text:
            found.append(f"message.part.delta: part {part_id} streamed {text[:80]!r} but its last message.part.updated has {str(final)[:80]!r}")

    # client: the answers backfill reads.
    answers = [r for r in records if "client" in r]
    if not answers:
        found.append("client: no client answers recorded (the recorder asks at session.idle)")
    for name, shape in contract["client"].items():
        call = name.split(".", 1)[1]
        samples = [r["client"].get(call) or {} for r in answers]
        for sample in samples:
            if sample.get("error"):
                found.append(f"client {name}: answered an error: {json.dumps(sample['error'])[:300]}")
        found += shape_problems(f"client {name}", [{"data": s.get("data")} for s in samples], shape)
    return found
