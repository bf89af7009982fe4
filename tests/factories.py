"""Test data factories: opencode entities and sync items with overridable fields, and the
real-client fixtures shipped beside the project in ../shared/fixtures/opencode/."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opencode"
NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def settings_for_tests(data_dir: Path, **overrides: Any) -> Any:
    """Settings on the embedded store in ``data_dir`` with a fixed namespace and public URL."""
    from cloudsession.config import Settings

    return Settings.model_validate({"data_dir": data_dir, "shared_secret": NAMESPACE, "public_url": "http://share.test", **overrides})
_counter = itertools.count(1)


def load_fixture(name: str) -> Any:
    path = FIXTURES / name
    if not path.is_file():
        # A clone away from the ``shared/`` folder CI puts beside it: say so, not just ENOENT.
        raise FileNotFoundError(f"{path}: the real-client fixtures live in shared/fixtures/opencode/ beside the project checkout; clone the project next to shared/")
    return json.loads(path.read_text())


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_counter):012x}{'A' * 14}"


def session(session_id: str = "ses_e0398094effebZevp8D0r58s46", **over: Any) -> dict[str, Any]:
    data = {
        "id": session_id, "slug": "proud-eagle", "projectID": "p1", "directory": "/home/dev/proj",
        "title": "A session", "version": "1.18.33", "time": {"created": 1_700_000_000_000, "updated": 1_700_000_000_500},
    }
    data.update(over)
    return data


def user_message(session_id: str, **over: Any) -> dict[str, Any]:
    data = {
        "id": _id("msg"), "sessionID": session_id, "role": "user", "time": {"created": 1_700_000_001_000},
        "agent": "build", "model": {"providerID": "stub", "modelID": "stub-model"},
    }
    data.update(over)
    return data


def assistant_message(session_id: str, parent_id: str, **over: Any) -> dict[str, Any]:
    data = {
        "id": _id("msg"), "sessionID": session_id, "role": "assistant", "time": {"created": 1_700_000_002_000},
        "parentID": parent_id, "modelID": "stub-model", "providerID": "stub", "mode": "build", "agent": "build",
        "path": {"cwd": "/home/dev/proj", "root": "/home/dev/proj"}, "cost": 0.0123,
        "tokens": {"input": 100, "output": 20, "reasoning": 0, "cache": {"read": 0, "write": 0}},
    }
    data.update(over)
    return data


def text_part(session_id: str, message_id: str, text: str = "hello", **over: Any) -> dict[str, Any]:
    data = {"id": _id("prt"), "sessionID": session_id, "messageID": message_id, "type": "text", "text": text}
    data.update(over)
    return data


def model(model_id: str = "stub-model", provider: str = "stub", **over: Any) -> dict[str, Any]:
    data = {"id": model_id, "providerID": provider, "name": model_id}
    data.update(over)
    return data


def item(kind: str, data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}
