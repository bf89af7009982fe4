"""``cloudsession push <file>`` / ``cloudsession push --from-opencode SESSION_ID``: send a session
exported by opencode to a share server through the durable outbox (``cloudsession.client``), with
progress, resumable after a kill; optionally labelled, expiring and finalised (a CI artifact:
docs/ci.md)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cloudsession.client.outbox import ACKED, FAILED, NewOp, Outbox
from cloudsession.client.push import ops_from_export
from cloudsession.client.sync import DeliveryFailed, DurableClient
from cloudsession.client.transport import TransportError, open_transport
from cloudsession.config import default_data_dir, parse_duration
from cloudsession.errors import ValidationFailed
from cloudsession.protocol import ADMIN_HEADER
from cloudsession.shares.lifecycle import parse_labels


def add_subcommands(sub: Any) -> None:
    push = sub.add_parser("push", help="send an exported opencode session to a share server, durably (resumable)")
    source = push.add_mutually_exclusive_group(required=True)
    source.add_argument("file", type=Path, nargs="?", help="a session in opencode's export format (opencode export <sessionID>)")
    source.add_argument("--from-opencode", metavar="SESSION_ID", help="run `opencode export SESSION_ID` and push what it prints")
    push.add_argument("--opencode", default="opencode", metavar="PATH", help="the opencode executable for --from-opencode (default: opencode on PATH)")
    push.add_argument("--server", required=True, help="the share server's URL, e.g. https://share.example.com")
    push.add_argument("--transport", choices=("rest", "rpc"), default="rest", help="REST (default) or Cap'n Web RPC over HTTP batch")
    push.add_argument("--outbox", type=Path, help="the outbox database (default: <data dir>/outbox.sqlite)")
    push.add_argument("--batch-size", type=int, default=100, help="ops per request (default 100)")
    push.add_argument("--max-attempts", type=int, default=10, help="give up after this many failed attempts in a row (default 10)")
    push.add_argument("--private", action="store_true", help="create the share private (readable with its read token only)")
    push.add_argument("--ttl", type=_duration, help="create the share expiring after this long: seconds, or 90m, 12h, 7d, 2w")
    push.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label for a new share (repeatable), e.g. --label job=$CI_JOB_URL")
    push.add_argument("--finalize", action="store_true", help="once everything is delivered, finalise the share: later writes are refused")
    push.add_argument("--json", action="store_true", help="end with one machine-readable JSON line: {url, id, delivered, failed, final}")
    push.add_argument("--restart", action="store_true", help="forget what the outbox knows about this share and send everything again")
    push.set_defaults(func=cmd_push)


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _export_from_opencode(args: argparse.Namespace) -> bytes:
    """What ``opencode export SESSION_ID`` prints (JSON on stdout; progress on stderr)."""
    try:
        done = subprocess.run([args.opencode, "export", args.from_opencode], capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportUnavailable(f"cannot run {args.opencode} export: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise ExportUnavailable(f"{args.opencode} export {args.from_opencode} failed ({done.returncode}): {reason[0][:300]}")
    return done.stdout


class ExportUnavailable(Exception):
    pass


def cmd_push(args: argparse.Namespace) -> int:
    source = f"opencode session {args.from_opencode}" if args.from_opencode else str(args.file)
    try:
        raw = _export_from_opencode(args) if args.from_opencode else args.file.read_bytes()
        session_id, ops = ops_from_export(json.loads(raw))
        labels = parse_labels(dict(_label_pair(text) for text in args.label))
    except (OSError, ValueError, ExportUnavailable) as exc:
        print(f"cloudsession push: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(f"cloudsession push: {exc.message}", file=sys.stderr)
        return 2
    if not 1 <= args.batch_size <= 1000:
        print("cloudsession push: --batch-size must be between 1 and 1000", file=sys.stderr)
        return 2
    args.source, args.labels = source, labels
    mark = "file:" + hashlib.sha256(raw).hexdigest()
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
        say(args, f"push: {len(ops)} ops queued from {args.source}")
    else:
        say(args, f"push: {args.source} was queued before; resuming")
    options: dict[str, Any] = {"private": True} if args.private else {}
    if args.ttl is not None:
        options["ttl"] = args.ttl
    if args.labels:
        options["labels"] = args.labels
    # SESSIONS_RPC_SHARED_KEY guards /rpc/share when set; read from the environment, never a flag.
    key = os.environ.get("SESSIONS_RPC_SHARED_KEY")
    transport = open_transport(args.transport, args.server, headers={ADMIN_HEADER: key} if key else None)

    def progress(counts: dict[str, int], cursor: int) -> None:
        total = sum(counts.values())
        say(args, f"push: {counts[ACKED]}/{total} ops acknowledged, {counts[FAILED]} failed, cursor {cursor}")

    client = DurableClient(
        outbox, transport, share, create_options=options, batch_size=args.batch_size, max_attempts=args.max_attempts, on_progress=progress
    )
    final = False
    try:
        counts = await client.deliver()
        if args.finalize and counts[FAILED] == 0 and share.share_id and share.secret:
            try:
                final = bool((await transport.finalize(share.share_id, share.secret)).get("final"))
            except TransportError as exc:
                print(f"cloudsession push: everything was delivered, but finalising failed: {exc}", file=sys.stderr)
                return 1
    except (DeliveryFailed, TransportError) as exc:
        print(f"cloudsession push: {exc}", file=sys.stderr)
        return 1
    finally:
        await transport.close()
    for op_id, error in outbox.failures(share):
        print(f"push: op {op_id} failed: {error}", file=sys.stderr)
    say(args, f"push: done: {counts[ACKED]} ops delivered, {counts[FAILED]} failed, share {share.url}" + (" (final)" if final else ""))
    if client.read_token:
        say(args, f"push: private share; read link {share.url}?token={client.read_token}")
    if args.json:
        # One line a CI script can parse; the secret stays in the outbox, never on stdout.
        print(json.dumps({"url": share.url, "id": share.share_id, "delivered": counts[ACKED], "failed": counts[FAILED], "final": final}), flush=True)
    else:
        print(share.url, flush=True)
    return 0 if counts[FAILED] == 0 else 1


def say(args: argparse.Namespace, line: str) -> None:
    """Progress: on stdout for people, on stderr with --json (stdout is then the JSON line)."""
    print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def _label_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValidationFailed(f"--label takes KEY=VALUE (got {text!r})")
    return key, value
