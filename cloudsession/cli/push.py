"""``cloudsession push <file>``: send a session exported by opencode to a share server through the
durable outbox (``cloudsession.client``), with progress, resumable after a kill."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cloudsession.client.outbox import ACKED, FAILED, NewOp, Outbox
from cloudsession.client.push import ops_from_export
from cloudsession.client.sync import DeliveryFailed, DurableClient
from cloudsession.client.transport import open_transport
from cloudsession.config import default_data_dir
from cloudsession.protocol import ADMIN_HEADER


def add_subcommands(sub: Any) -> None:
    push = sub.add_parser("push", help="send an exported opencode session to a share server, durably (resumable)")
    push.add_argument("file", type=Path, help="a session in opencode's export format (opencode export <sessionID>)")
    push.add_argument("--server", required=True, help="the share server's URL, e.g. https://share.example.com")
    push.add_argument("--transport", choices=("rest", "rpc"), default="rest", help="REST (default) or Cap'n Web RPC over HTTP batch")
    push.add_argument("--outbox", type=Path, help="the outbox database (default: <data dir>/outbox.sqlite)")
    push.add_argument("--batch-size", type=int, default=100, help="ops per request (default 100)")
    push.add_argument("--max-attempts", type=int, default=10, help="give up after this many failed attempts in a row (default 10)")
    push.add_argument("--private", action="store_true", help="create the share private (readable with its read token only)")
    push.add_argument("--ttl", type=int, help="create the share expiring after this many seconds")
    push.add_argument("--restart", action="store_true", help="forget what the outbox knows about this share and send everything again")
    push.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(args.file.read_bytes())
        session_id, ops = ops_from_export(doc)
    except (OSError, ValueError) as exc:
        print(f"cloudsession push: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.batch_size <= 1000:
        print("cloudsession push: --batch-size must be between 1 and 1000", file=sys.stderr)
        return 2
    mark = "file:" + hashlib.sha256(args.file.read_bytes()).hexdigest()
    outbox = Outbox(args.outbox or default_data_dir() / "outbox.sqlite")
    try:
        return asyncio.run(_push(args, outbox, session_id, ops, mark))
    finally:
        outbox.close()


async def _push(args: argparse.Namespace, outbox: Outbox, session_id: str, ops: list[NewOp], mark: str) -> int:
    share = outbox.share(args.server, session_id)
    if args.restart:
        outbox.forget(share)
        share = outbox.share(args.server, session_id)
    if outbox.enqueue(share, ops, mark=mark):
        print(f"push: {len(ops)} ops queued from {args.file}", flush=True)
    else:
        print(f"push: {args.file} was queued before; resuming", flush=True)
    options: dict[str, Any] = {"private": True} if args.private else {}
    if args.ttl is not None:
        options["ttl"] = args.ttl
    # SESSIONS_RPC_SHARED_KEY guards /rpc/share when set; read from the environment, never a flag.
    key = os.environ.get("SESSIONS_RPC_SHARED_KEY")
    transport = open_transport(args.transport, args.server, headers={ADMIN_HEADER: key} if key else None)

    def progress(counts: dict[str, int], cursor: int) -> None:
        total = sum(counts.values())
        print(f"push: {counts[ACKED]}/{total} ops acknowledged, {counts[FAILED]} failed, cursor {cursor}", flush=True)

    client = DurableClient(
        outbox, transport, share, create_options=options, batch_size=args.batch_size, max_attempts=args.max_attempts, on_progress=progress
    )
    try:
        counts = await client.deliver()
    except DeliveryFailed as exc:
        print(f"cloudsession push: {exc}", file=sys.stderr)
        return 1
    finally:
        await transport.close()
    for op_id, error in outbox.failures(share):
        print(f"push: op {op_id} failed: {error}", file=sys.stderr)
    print(f"push: done: {counts[ACKED]} ops delivered, {counts[FAILED]} failed, share {share.url}", flush=True)
    if client.read_token:
        print(f"push: private share; read link {share.url}?token={client.read_token}", flush=True)
    return 0 if counts[FAILED] == 0 else 1
