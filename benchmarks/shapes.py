"""The shape of a long real session, as sync items: no cloudsession import, so any benchmark can
build it and send it over HTTP to any build."""

from __future__ import annotations

from typing import Any

SES = "ses_bench00000000000000000000"
ROOT = "/home/dev/project"


def build_items(messages: int) -> list[dict[str, Any]]:
    """Sync items for ``messages`` messages, alternating user and assistant (~5 KB each)."""
    items: list[dict[str, Any]] = [
        {"type": "session", "data": {"id": SES, "slug": "bench", "projectID": "p", "directory": ROOT,
                                     "title": "A long session", "version": "1.18.33", "time": {"created": 1, "updated": 2}}}
    ]
    seq = 0

    def pid() -> str:
        nonlocal seq
        seq += 1
        return f"prt_{seq:012x}BenchPart0000"

    t = 1_795_000_000_000
    parent = ""
    for n in range(messages):
        mid = f"msg_{n:012x}BenchMsg000000"
        t += 30_000
        if n % 2 == 0:
            items.append({"type": "message", "data": {"id": mid, "sessionID": SES, "role": "user", "time": {"created": t},
                                                      "agent": "build", "model": {"providerID": "p", "modelID": "m"}}})
            items.append({"type": "part", "data": {"id": pid(), "sessionID": SES, "messageID": mid, "type": "text",
                                                   "text": f"Please change module {n} so that it handles edge case {n}. " * 6}})
            parent = mid
            continue
        items.append({"type": "message", "data": {
            "id": mid, "sessionID": SES, "role": "assistant", "time": {"created": t, "completed": t + 9000}, "parentID": parent,
            "modelID": "m", "providerID": "p", "mode": "build", "agent": "build", "path": {"cwd": ROOT, "root": ROOT},
            "cost": 0.01, "tokens": {"input": 1000, "output": 200, "reasoning": 50, "cache": {"read": 0, "write": 0}}}})
        code = "".join(f"def handler_{n}_{k}(value):\n    return value * {k}  # scale\n\n" for k in range(16))
        patch = "@@ -1,6 +1,6 @@\n" + "".join(f" line {k}\n-old {k}\n+new {k}\n" for k in range(6))
        output = "".join(f"tests/test_{n}.py::test_case_{k} PASSED\n" for k in range(110))
        parts: list[dict[str, Any]] = [
            {"type": "step-start", "snapshot": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
            {"type": "reasoning", "text": "I need to look at the module first, then adjust the handler. " * 4, "time": {"start": t, "end": t + 800}},
            {"type": "text", "text": f"## Step {n}\n\nI'll update **module {n}**:\n\n- read it\n- edit it\n\n```python\n{code[:300]}```\n"},
            {"type": "tool", "callID": f"c{n}a", "tool": "bash", "state": {"status": "completed", "input": {"command": f"pytest tests/test_{n}.py", "description": "Run tests"},
                                                                   "output": output, "title": "pytest", "metadata": {}, "time": {"start": t, "end": t + 2000}}},
            {"type": "tool", "callID": f"c{n}b", "tool": "edit", "state": {"status": "completed", "input": {"filePath": f"{ROOT}/mod_{n}.py", "oldString": "a", "newString": "b"},
                                                                   "output": "Edit applied successfully.", "title": f"mod_{n}.py", "metadata": {"diff": patch}, "time": {"start": t, "end": t + 30}}},
            {"type": "tool", "callID": f"c{n}c", "tool": "write", "state": {"status": "completed", "input": {"filePath": f"{ROOT}/gen_{n}.py", "content": code},
                                                                    "output": "Wrote file successfully.", "title": f"gen_{n}.py", "metadata": {}, "time": {"start": t, "end": t + 20}}},
            {"type": "step-finish", "reason": "stop", "cost": 0.01, "tokens": {"input": 1000, "output": 200, "reasoning": 50, "cache": {"read": 0, "write": 0}}},
            {"type": "patch", "hash": "5c36d82d3991e5c71c04aa8cf3c0e5a96055f20a", "files": [f"{ROOT}/mod_{n}.py"]},
        ]
        for p in parts:
            items.append({"type": "part", "data": {"id": pid(), "sessionID": SES, "messageID": mid, **p}})
    items.append({"type": "session_diff", "data": [{"file": "mod_1.py", "patch": "@@ -1 +1 @@\n-a\n+b\n", "additions": 1, "deletions": 1}]})
    items.append({"type": "model", "data": [{"id": "m", "providerID": "p", "name": "Model"}]})
    return items
