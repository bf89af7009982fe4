"""What ``cloudsession push <file>`` sends: the ops of a session exported by opencode.

The file is opencode's export format (``opencode export <sessionID>``):
``{"info": Session, "messages": [{"info": Message, "parts": [Part, ...]}, ...]}``. It becomes
one op per entity (each part depending on its message) and is enqueued in one transaction,
marked with the file's hash, so running the command again after it was killed resumes delivery
instead of enqueueing twice; editing the file and pushing again sends the new version.
"""

from __future__ import annotations

from typing import Any

from cloudsession.client.ids import uuid7
from cloudsession.client.outbox import NewOp


class ExportFormatError(ValueError):
    pass


def ops_from_export(doc: Any) -> tuple[str, list[NewOp]]:
    """The session ID and the ops of an opencode export document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("info"), dict) or not isinstance(doc["info"].get("id"), str):
        raise ExportFormatError("expected opencode's export format: {info: Session, messages: [...]}")
    messages = doc.get("messages", [])
    if not isinstance(messages, list):
        raise ExportFormatError("'messages' must be a list")
    ops = [NewOp(uuid7(), {"type": "session", "data": doc["info"]})]
    for n, message in enumerate(messages):
        info = message.get("info") if isinstance(message, dict) else None
        parts = message.get("parts", []) if isinstance(message, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("id"), str) or not isinstance(parts, list):
            raise ExportFormatError(f"messages[{n}] must be {{info: Message with an id, parts: [...]}}")
        message_op = NewOp(uuid7(), {"type": "message", "data": info})
        ops.append(message_op)
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("id"), str):
                raise ExportFormatError(f"messages[{n}].parts holds a part without an id")
            # A part is only applied once its message is: the server enforces the order.
            ops.append(NewOp(uuid7(), {"type": "part", "data": part}, (message_op.op_id,)))
    return doc["info"]["id"], ops
