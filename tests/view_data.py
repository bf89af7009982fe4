"""Share data for the view tests: the real client's share, a synthetic share with every part type,
tool and tool state, hostile content, and a fold of sync items into a ``PublicShare``.

Every item here passes ``parse_sync_items``, so the same data can be rendered directly or sent
through the real API to a running server (the browser tests do both).
"""

from __future__ import annotations

import base64
import itertools
import struct
import zlib
from typing import Any

from factories import load_fixture

from cloudsession.shares.public import PublicShare

SES = "ses_e0398094effebZevp8D0r58s46"
ROOT = "/home/dev/proj"
T0 = 1_795_236_000_000
_seq = itertools.count(1)


def _id(prefix: str) -> str:
    # Chronological ids like opencode's: 12 hex digits of "time", then a fixed tail.
    return f"{prefix}_{0x1fc600000000 + next(_seq):012x}Vw{next(_seq):012d}"


def item(kind: str, data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def fold(items: list[dict[str, Any]], share_id: str = "D0r58s46", *, sync_count: int = 1) -> PublicShare:
    """The merge of the contract (session replaced, messages/parts/models upserted, diffs replaced)."""
    session: dict[str, Any] = {}
    messages: dict[str, dict[str, Any]] = {}
    parts: dict[str, dict[str, Any]] = {}
    models: dict[tuple[str, str], dict[str, Any]] = {}
    diffs: list[dict[str, Any]] = []
    for entry in items:
        kind, data = entry["type"], entry["data"]
        if kind == "session":
            session = data
        elif kind == "message":
            messages[data["id"]] = data
        elif kind == "part":
            parts[data["id"]] = data
        elif kind == "session_diff":
            diffs = data
        elif kind == "model":
            for m in data:
                models[(m.get("providerID", ""), m["id"])] = m
    created = (session.get("time") or {}).get("created", T0)
    return PublicShare(
        id=share_id,
        session=session,
        messages=list(messages.values()),
        parts=list(parts.values()),
        diffs=diffs,
        models=list(models.values()),
        created_at=created,
        last_updated=created + 60_000,
        sync_count=sync_count,
    )


def load_fixture_items() -> list[dict[str, Any]]:
    """The /data array of the share the real opencode 1.18.33 client produced."""
    return load_fixture("real-share-data.json")


def real_share() -> PublicShare:
    return fold(load_fixture_items(), sync_count=4)


def tiny_png() -> str:
    """A 24x12 PNG with a colour gradient, as a data: URL (built here: no binary fixture needed)."""
    width, height = 24, 12
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 10, 120, y * 20)) for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


# --------------------------------------------------------------------------- entity builders


def session(**over: Any) -> dict[str, Any]:
    data = {
        "id": SES, "slug": "brave-otter", "projectID": "p1", "directory": ROOT, "title": "Add a greeting module",
        "version": "1.18.33", "time": {"created": T0, "updated": T0 + 50_000},
    }
    data.update(over)
    return data


def user(at: int, **over: Any) -> dict[str, Any]:
    data = {
        "id": _id("msg"), "sessionID": SES, "role": "user", "time": {"created": T0 + at}, "agent": "build",
        "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4"},
    }
    data.update(over)
    return data


def assistant(parent: dict[str, Any], at: int, **over: Any) -> dict[str, Any]:
    data = {
        "id": _id("msg"), "sessionID": SES, "role": "assistant", "time": {"created": T0 + at, "completed": T0 + at + 4200},
        "parentID": parent["id"], "modelID": "claude-sonnet-4", "providerID": "anthropic", "mode": "build",
        "agent": "build", "path": {"cwd": ROOT, "root": ROOT}, "cost": 0.0421,
        "tokens": {"input": 1200, "output": 340, "reasoning": 80, "cache": {"read": 4000, "write": 0}},
    }
    data.update(over)
    return data


def part(message: dict[str, Any], kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": _id("prt"), "sessionID": SES, "messageID": message["id"], "type": kind, **fields}


def tool(message: dict[str, Any], name: str, status: str, input: dict[str, Any], **state: Any) -> dict[str, Any]:
    full: dict[str, Any] = {"status": status, "input": input}
    if status == "pending":
        full["raw"] = ""
    else:
        full["time"] = {"start": T0 + 1000, **({} if status == "running" else {"end": T0 + 1850})}
    if status == "completed":
        full.setdefault("title", "")
        full.setdefault("metadata", {})
        full.setdefault("output", "")
    full.update(state)
    return part(message, "tool", callID=f"call_{next(_seq)}", tool=name, state=full)


LONG_OUTPUT = "\n".join(f"line {n}: collected test_{n:03d} PASSED" for n in range(1, 61))
EDIT_PATCH = (
    "Index: /home/dev/proj/greet.py\n===================================================================\n"
    "--- /home/dev/proj/greet.py\n+++ /home/dev/proj/greet.py\n@@ -1,3 +1,4 @@\n"
    " def greet(name):\n-    return 'hi ' + name\n+    \"\"\"Greet someone politely.\"\"\"\n+    return f\"Hello, {name}!\"\n \n"
)
WRITE_CONTENT = (
    'from greet import greet\n\n\ndef test_greet():\n    assert greet("Ada") == "Hello, Ada!"\n\n\n'
    'def test_greet_empty():\n    assert greet("") == "Hello, !"\n'
)
MARKDOWN = (
    "## Plan\n\nI'll add **greet.py** with a `greet()` function, then:\n\n"
    "1. write tests\n2. run `pytest`\n\n"
    "```python\ndef greet(name: str) -> str:\n    return f\"Hello, {name}!\"\n```\n\n"
    "| file | change |\n|---|---|\n| greet.py | new |\n\nSee [the docs](https://docs.python.org/3/) ~~maybe~~."
)


def rich_items() -> list[dict[str, Any]]:
    """A session exercising every part type, every special-cased tool and every tool state."""
    u1 = user(1000, summary={"diffs": [{"file": "greet.py", "patch": EDIT_PATCH, "additions": 2, "deletions": 1, "status": "modified"}]})
    a1 = assistant(u1, 2000)
    u2 = user(20_000)
    a2 = assistant(u2, 21_000, error={"name": "APIError", "data": {"message": "Overloaded", "statusCode": 529, "isRetryable": True}})
    u3 = user(40_000)
    a3 = assistant(u3, 41_000, error={"name": "MessageAbortedError", "data": {"message": "The operation was aborted."}})
    parts = [
        part(u1, "text", text="Add a greeting module with tests, please. Here is a screenshot:"),
        part(u1, "file", mime="image/png", filename="screen.png", url=tiny_png()),
        part(u1, "file", mime="text/plain", filename="notes.txt", url="data:text/plain;base64," + base64.b64encode(b"remember: be polite\n").decode(),
             source={"type": "file", "path": "notes.txt", "text": {"value": "@notes.txt", "start": 0, "end": 10}}),
        part(u1, "agent", name="build", source={"value": "@build", "start": 0, "end": 6}),
        part(a1, "step-start", snapshot="4b825dc642cb6eb9a060e54bf8d69288fbee4904"),
        part(a1, "reasoning", text="The user wants a **greet** function. I should check the layout first.", time={"start": T0 + 2100, "end": T0 + 2900}),
        part(a1, "text", text=MARKDOWN),
        tool(a1, "todowrite", "completed", {"todos": []}, title="3 todos", output="", metadata={"todos": [
            {"content": "Create greet.py", "status": "completed", "priority": "high", "id": "1"},
            {"content": "Write tests", "status": "in_progress", "priority": "medium", "id": "2"},
            {"content": "Update README", "status": "pending", "priority": "low", "id": "3"},
            {"content": "Publish to PyPI", "status": "cancelled", "priority": "low", "id": "4"},
        ]}),
        tool(a1, "read", "completed", {"filePath": f"{ROOT}/greet.py"}, title="greet.py",
             output="<file>\n00001| def greet(name):\n00002|     return 'hi ' + name\n</file>", metadata={"preview": "def greet(name):"}),
        tool(a1, "grep", "completed", {"pattern": "def greet", "path": ROOT, "include": "*.py"}, title="def greet",
             output="Found 1 matches\n/home/dev/proj/greet.py:\n  Line 1: def greet(name):", metadata={"matches": 1, "truncated": False}),
        tool(a1, "glob", "completed", {"pattern": "**/*.py", "path": ROOT}, title="", output="/home/dev/proj/greet.py\n/home/dev/proj/test_greet.py", metadata={"count": 2, "truncated": False}),
        tool(a1, "list", "completed", {"path": ROOT}, title="", output="/home/dev/proj/\n  greet.py\n  README.md\n", metadata={"count": 2, "truncated": False}),
        tool(a1, "edit", "completed", {"filePath": f"{ROOT}/greet.py", "oldString": "    return 'hi ' + name", "newString": "    return f\"Hello, {name}!\""},
             title="greet.py", output="Edit applied successfully.", metadata={"diff": EDIT_PATCH, "filediff": {"file": f"{ROOT}/greet.py", "additions": 2, "deletions": 1}}),
        tool(a1, "write", "completed", {"filePath": f"{ROOT}/test_greet.py", "content": WRITE_CONTENT}, title="test_greet.py", output="Wrote file successfully."),
        tool(a1, "bash", "completed", {"command": "pytest -q test_greet.py", "description": "Run the tests"}, title="pytest -q",
             output=LONG_OUTPUT, metadata={"output": LONG_OUTPUT, "exit": 0, "description": "Run the tests"}),
        tool(a1, "webfetch", "completed", {"url": "https://peps.python.org/pep-0008/", "format": "markdown"}, title="PEP 8",
             output="# PEP 8 – Style Guide for Python Code\n\nIndentation: use 4 spaces per indentation level."),
        tool(a1, "task", "completed", {"description": "Review the change", "prompt": "Review **greet.py** for style issues.", "subagent_type": "general"},
             title="Review the change", output="The change looks good. One nit: add a docstring.",
             metadata={"summary": [{"id": "prt_x", "tool": "read", "state": {"status": "completed", "title": "greet.py"}}]}),
        tool(a1, "question", "completed", {"questions": [{"question": "Which greeting style?", "header": "Style",
             "options": [{"label": "Formal", "description": "Good day, Ada."}, {"label": "Casual", "description": "Hey Ada!"}]}]},
             title="Asked 1 question", output="User answered: Casual", metadata={"answers": [["Casual"]]}),
        tool(a1, "github_create_issue", "completed", {"repo": "dev/proj", "title": "Follow-up: i18n"}, title="Created issue #7", output='{"number": 7}'),
        tool(a1, "bash", "pending", {"command": "ls"}),
        tool(a1, "bash", "running", {"command": "sleep 30 && make release", "description": "Build the release"}, title="make release"),
        tool(a1, "bash", "error", {"command": "cat missing.txt", "description": "Show a missing file"}, error="cat: missing.txt: No such file or directory"),
        tool(a1, "write", "error", {"filePath": f"{ROOT}/slow.txt", "content": "x"}, error="Tool execution aborted"),
        part(a1, "patch", hash="5c36d82d3991e5c71c04aa8cf3c0e5a96055f20a", files=[f"{ROOT}/greet.py", f"{ROOT}/test_greet.py"]),
        part(a1, "snapshot", snapshot="5c36d82d3991e5c71c04aa8cf3c0e5a96055f20a"),
        part(a1, "step-finish", reason="stop", cost=0.0421, tokens={"input": 1200, "output": 340, "reasoning": 80, "cache": {"read": 4000, "write": 0}}),
        part(u2, "text", text="Now also review it with a sub-agent."),
        part(u2, "subtask", prompt="Check **greet.py** for edge cases.", description="Edge-case review", agent="general",
             model={"providerID": "anthropic", "modelID": "claude-haiku"}, command="review"),
        part(a2, "retry", attempt=1, error={"name": "APIError", "data": {"message": "Overloaded", "statusCode": 529, "isRetryable": True}}, time={"created": T0 + 21_500}),
        part(u3, "text", text="Summarise and stop.", synthetic=True),
        part(a3, "compaction", auto=True, overflow=True),
        part(a3, "x-future-part", payload={"note": "a part type this server does not know"}),
    ]
    diffs = [
        {"file": "greet.py", "patch": EDIT_PATCH, "additions": 2, "deletions": 1, "status": "modified"},
        {"file": "test_greet.py", "before": "", "after": WRITE_CONTENT, "additions": 9, "deletions": 0},
    ]
    models = [{"id": "claude-sonnet-4", "providerID": "anthropic", "name": "Claude Sonnet 4"}]
    return [
        item("session", session()),
        *[item("message", m) for m in (u1, a1, u2, a2, u3, a3)],
        *[item("part", p) for p in parts],
        item("session_diff", diffs),
        item("model", models),
    ]


HOSTILE = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">"


def hostile_items() -> list[dict[str, Any]]:
    """Content written to attack the page: scripts, handlers, javascript: links, crafted ids."""
    u = user(1000, id='msg_"><img src=x onerror=window.__xss=3>', agent=HOSTILE)
    a = assistant(u, 2000, modelID=HOSTILE, providerID="</script><script>window.__xss=4</script>")
    parts = [
        part(u, "text", text=HOSTILE + "\n\n[click](javascript:window.__xss=5) <a href=\"javascript:window.__xss=6\">x</a>\n\n![i](javascript:window.__xss=7)"),
        {**part(u, "text", text="crafted part id"), "id": 'prt_" onmouseover="window.__xss=8'},
        tool(a, HOSTILE, "completed", {"command": HOSTILE, "filePath": "/x/" + HOSTILE + ".html", "content": HOSTILE, "url": "javascript:window.__xss=9"},
             title=HOSTILE, output=HOSTILE),
        tool(a, "bash", "completed", {"command": "echo " + HOSTILE, "description": HOSTILE}, title=HOSTILE, output=HOSTILE),
        tool(a, "webfetch", "completed", {"url": "javascript:window.__xss=10", "format": HOSTILE}, title="", output=HOSTILE),
        part(a, "file", mime="image/svg+xml", filename=HOSTILE, url="data:image/svg+xml;base64," + base64.b64encode(b"<svg onload='window.__xss=11'/>").decode()),
        part(a, "file", mime="text/html", filename="x.html", url="javascript:window.__xss=12"),
        part(a, "reasoning", text=HOSTILE, time={"start": T0, "end": T0 + 5}),
        part(a, HOSTILE, text=HOSTILE),
    ]
    return [
        item("session", session(title=HOSTILE + "</title><script>window.__xss=13</script>", directory=HOSTILE)),
        item("message", u),
        item("message", a),
        *[item("part", p) for p in parts],
        item("session_diff", [{"file": HOSTILE, "patch": "@@ -1 +1 @@\n-" + HOSTILE + "\n+" + HOSTILE + "\n", "additions": 1, "deletions": 1, "status": HOSTILE}]),
        item("model", [{"id": HOSTILE, "providerID": HOSTILE, "name": HOSTILE}]),
    ]


LONG_WORD = "Supercalifragilistic" * 20  # 400 characters, no break opportunity
WIDE_LINE = "x = [" + ", ".join(f"value_{n:04d}" for n in range(150)) + "]"  # ~2,000 characters


def wide_items() -> list[dict[str, Any]]:
    """A share that tries to widen the page everywhere: very wide code in every place code is
    shown, wide tables, long unbroken words in titles, paths, names, summaries and prose."""
    u = user(1000, agent="agent-" + LONG_WORD[:60])
    a = assistant(u, 2000, modelID="model-" + LONG_WORD[:80], providerID="provider-" + LONG_WORD[:40])
    table = "| " + " | ".join(f"column {n}" for n in range(30)) + " |\n|" + "---|" * 30 + "\n| " + " | ".join(
        f"cell_{n}_{LONG_WORD[:30]}" for n in range(30)
    ) + " |\n"
    wide_patch = f"@@ -1,2 +1,2 @@\n-{WIDE_LINE}\n+{WIDE_LINE}y\n {WIDE_LINE}\n"
    long_path = f"{ROOT}/{LONG_WORD}/{LONG_WORD[:100]}.py"
    parts = [
        part(u, "text", text=f"A long word: {LONG_WORD}\n\nA long link: https://example.com/{LONG_WORD}\n\n`{LONG_WORD}`"),
        part(a, "text", text=f"Here is a table:\n\n{table}\n```python\n{WIDE_LINE}\n```\n\n> {LONG_WORD}"),
        tool(a, "bash", "completed", {"command": f"echo {WIDE_LINE}", "description": LONG_WORD}, title="echo",
             output="\n".join([WIDE_LINE] * 20), metadata={"exit": 0}),
        tool(a, "write", "completed", {"filePath": long_path, "content": WIDE_LINE + "\n"}, title=LONG_WORD, output="Wrote file successfully."),
        tool(a, "edit", "completed", {"filePath": long_path, "oldString": WIDE_LINE, "newString": WIDE_LINE + "y"}, title=LONG_WORD,
             output="Edit applied successfully.", metadata={"diff": wide_patch}),
        tool(a, "grep", "completed", {"pattern": LONG_WORD, "path": ROOT}, title=LONG_WORD, output=WIDE_LINE, metadata={"matches": 1}),
        tool(a, "webfetch", "completed", {"url": f"https://example.com/{LONG_WORD}", "format": "markdown"}, title="", output=WIDE_LINE),
        tool(a, LONG_WORD[:120], "completed", {"key": WIDE_LINE}, title=LONG_WORD, output=WIDE_LINE),
        tool(a, "bash", "error", {"command": WIDE_LINE}, error=LONG_WORD),
        part(a, "file", mime="text/plain", filename=LONG_WORD + ".txt",
             url="data:text/plain;base64," + base64.b64encode(WIDE_LINE.encode()).decode()),
        part(a, "step-finish", reason="stop", cost=6.15, tokens={"input": 1200, "output": 340, "reasoning": 0, "cache": {"read": 0, "write": 0}}),
    ]
    diffs = [{"file": long_path, "patch": wide_patch, "additions": 1, "deletions": 1, "status": "modified"}]
    return [
        item("session", session(title="Title " + LONG_WORD, directory=f"{ROOT}/{LONG_WORD}")),
        item("message", u),
        item("message", a),
        *[item("part", p) for p in parts],
        item("session_diff", diffs),
        item("model", [{"id": "model-" + LONG_WORD[:80], "providerID": "provider-" + LONG_WORD[:40], "name": LONG_WORD}]),
    ]
