"""The ``import``, ``export``, ``admin`` and ``gc`` commands.

``import`` is a client of any share server (``client/importer.py``); ``export``, ``admin ...``
and ``gc`` work on the configured store directly, through the share domain
(``shares/maintenance.py``, ``shares/sweep.py``), so they need no running server. Every store
command takes ``--store URL`` to work on another store than the configured one, ``--dry-run`` to
change nothing, shows a progress bar on a terminal (``--progress`` forces it) and ends with a
summary. Exit status: 0 when everything is in order, 1 when something needs attention, 2 for a
usage or configuration problem. Documented in docs/import-export.md and docs/admin.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudsession.cli.common import Progress, add_store_flags, open_service, print_report, progress_for, run, settings_from_args
from cloudsession.client import importer
from cloudsession.errors import SessionNotFound
from cloudsession.render.pages import PageRenderer
from cloudsession.shares import maintenance, owner
from cloudsession.shares.sweep import SweepReport, sweep

TOKEN_ENV = "CLOUDSESSION_SHARE_TOKEN"


# -- import / export ----------------------------------------------------------------------------


def _write(data: bytes, output: Path | None) -> int:
    try:
        importer.write_output(data, output)
    except OSError as exc:
        print(f"cloudsession: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        conversion = asyncio.run(importer.import_share(args.url, token=token, timeout=args.timeout, max_bytes=args.max_bytes))
    except importer.ImportFailed as exc:
        print(f"cloudsession import: {exc.message}", file=sys.stderr)
        return exc.exit_code
    for warning in conversion.warnings:
        print(f"cloudsession import: warning: {warning}", file=sys.stderr)
    status = _write(importer.export_json(conversion.document), args.output)
    if status == 0 and args.output is not None:
        doc = conversion.document
        print(f"Wrote session {doc['info']['id']} ({len(doc['messages'])} messages) to {args.output}", file=sys.stderr)
    return status


async def _export(args: argparse.Namespace) -> int:
    async with open_service(settings_from_args(args), args.store) as service:
        try:
            state = await service.load(args.share_id)
        except SessionNotFound:
            print(f"cloudsession export: no readable share {args.share_id!r} in the store", file=sys.stderr)
            return 1
        if args.html:
            view = service.public_view(state)
            html = PageRenderer().standalone_page(view)
            return _write(view.redact(html).encode("utf-8"), args.output)
        if args.original_ids:
            items = [{"type": "session", "data": state.session}]
            items += [{"type": "message", "data": m} for m in state.messages.values()]
            items += [{"type": "part", "data": p} for p in state.parts.values()]
            redact: Callable[[str], str] = lambda text: text  # noqa: E731
        else:
            view = service.public_view(state)
            items, redact = view.data_items(), view.redact
    try:
        conversion = importer.to_export(items)
    except importer.ImportFailed as exc:
        print(f"cloudsession export: {args.share_id}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    data = redact(importer.export_json(conversion.document).decode("utf-8")).encode("utf-8")
    return _write(data, args.output)


def cmd_export(args: argparse.Namespace) -> int:
    return run(_export(args))


# -- admin --------------------------------------------------------------------------------------


async def _backfill(args: argparse.Namespace) -> int:
    async with open_service(settings_from_args(args), args.store) as service:
        progress = progress_for(args, "backfill-index")
        report = await maintenance.backfill_index(service, dry_run=args.dry_run, start=progress.start)
    print_report("backfill-index", report, dry_run=args.dry_run)
    return 1 if report.counts["failed"] or report.counts["unreadable"] or report.counts["unservable-id"] else 0


async def _fsck(args: argparse.Namespace) -> int:
    options = maintenance.FsckOptions(repair=args.repair, delete_unrepairable=args.delete_unrepairable, dry_run=args.dry_run)
    async with open_service(settings_from_args(args), args.store) as service:
        progress = progress_for(args, "fsck")
        report = await maintenance.fsck(service, options, start=progress.start)
    print_report("fsck", report, dry_run=args.dry_run)
    unresolved = report.unresolved
    if unresolved:
        print(f"{len(unresolved)} problem(s) left" + ("" if args.repair else "; --repair fixes the repairable ones"))
    return 1 if unresolved else 0


async def _migrate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    async with open_service(settings, args.source) as source, open_service(settings, args.target) as target:
        progress = progress_for(args, "migrate")
        report = await maintenance.migrate(source, target, dry_run=args.dry_run, start=progress.start)
    print_report("migrate", report, dry_run=args.dry_run)
    return 1 if report.counts["failed"] else 0


async def _audit(args: argparse.Namespace) -> int:
    async with open_service(settings_from_args(args), args.store) as service:
        trail = await owner.audit_trail(service, args.share_id, None, admin=True)
    for event in trail["events"]:
        print(json.dumps(event, sort_keys=True))
    return 0


async def _delete(args: argparse.Namespace) -> int:
    missing = 0
    async with open_service(settings_from_args(args), args.store) as service:
        progress = progress_for(args, "delete")
        tick = progress.start(len(args.share_ids))
        outcomes = []
        for share_id in args.share_ids:
            outcome = await maintenance.delete_share(service, share_id, dry_run=args.dry_run)
            outcomes.append((share_id, outcome))
            missing += outcome == "not found"
            tick(1)
    for share_id, outcome in outcomes:
        print(f"{share_id}: {outcome}")
    print(f"delete{' (dry run: nothing was changed)' if args.dry_run else ''}: {len(outcomes) - missing} of {len(outcomes)} found")
    return 1 if missing else 0


# -- registration -------------------------------------------------------------------------------


def add_subcommands(sub: Any) -> None:
    """Register ``import``, ``export``, ``admin`` and ``gc`` on the CLI's subparsers."""
    imp = sub.add_parser("import", help="download a share into an opencode export file (for `opencode import FILE`)")
    imp.add_argument("url", help="the share link, e.g. https://share.example.com/share/abc123")
    imp.add_argument("-o", "--output", type=Path, help="write here instead of to stdout")
    imp.add_argument("--token", help=f"read token of a private share (or set {TOKEN_ENV}; a ?token= in the link also works)")
    imp.add_argument("--timeout", type=float, default=importer.DEFAULT_TIMEOUT, help="seconds before giving up (default %(default)s)")
    imp.add_argument("--max-bytes", type=int, default=importer.DEFAULT_MAX_BYTES, help="largest answer accepted (default %(default)s)")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="write a share from the store as an opencode export file (operators)")
    add_store_flags(exp, changes=False)
    exp.add_argument("share_id")
    exp.add_argument("-o", "--output", type=Path, help="write here instead of to stdout")
    exp.add_argument("--original-ids", action="store_true", help="keep the owner's real session ID instead of the public one")
    exp.add_argument("--html", action="store_true", help="write the whole share as one self-contained HTML page instead (public view)")
    exp.set_defaults(func=cmd_export)

    admin = sub.add_parser("admin", help="store maintenance: backfill-index, fsck, migrate, audit, delete")
    tools = admin.add_subparsers(dest="admin_command", required=True, metavar="TOOL")

    backfill = tools.add_parser("backfill-index", help="rebuild missing or stale index entries")
    add_store_flags(backfill)
    backfill.set_defaults(func=lambda args: run(_backfill(args)))

    check = tools.add_parser("fsck", help="find damaged shares and index drift; --repair fixes what it can")
    add_store_flags(check)
    check.add_argument("--repair", action="store_true", help="repair malformed shares, index drift and orphaned keys")
    check.add_argument("--delete-unrepairable", action="store_true", help="delete shares that cannot be repaired (empty or invalid blobs)")
    check.set_defaults(func=lambda args: run(_fsck(args)))

    move = tools.add_parser("migrate", help="copy a reference Worker bucket (or another store) into cloudsession's layout")
    add_store_flags(move, store=False)
    move.add_argument("--from", dest="source", required=True, metavar="STORE", help="source store URL (s3://bucket[/prefix][?endpoint=URL], file:///path)")
    move.add_argument("--to", dest="target", metavar="STORE", help="target store URL (default: the configured store)")
    move.set_defaults(func=lambda args: run(_migrate(args)))

    trail = tools.add_parser("audit", help="print a share's audit trail (creates, rotations, privacy and expiry changes, finalising)")
    add_store_flags(trail, changes=False)
    trail.add_argument("share_id")
    trail.set_defaults(func=lambda args: run(_audit(args)))

    kill = tools.add_parser("delete", help="delete shares without their secret (the operator's kill switch)")
    add_store_flags(kill)
    kill.add_argument("share_ids", nargs="+", metavar="SHARE_ID")
    kill.set_defaults(func=lambda args: run(_delete(args)))

    gc = sub.add_parser("gc", help="delete expired shares and prune folded journal entries (what the server's periodic sweep does)")
    add_store_flags(gc)
    gc.add_argument("--json", action="store_true", help="print the report as one JSON object instead of lines and a summary")
    gc.set_defaults(func=lambda args: run(_gc(args)))


async def _gc(args: argparse.Namespace) -> int:
    bars: list[Progress] = []

    def start(phase: str, total: int) -> Callable[[int], None]:
        bars.append(progress_for(args, f"gc {phase}"))
        return bars[-1].start(total)

    async with open_service(settings_from_args(args), args.store) as service:
        report: SweepReport = await sweep(service, dry_run=args.dry_run, start=start)
    if args.json:
        print(json.dumps(report.as_json()))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for share_id in report.expired:
        print(f"{share_id}: expired, {verb}")
    for share_id in report.stale_index_entries:
        print(f"{share_id}: index entry without a share, {'would remove' if args.dry_run else 'removed'}")
    print(
        f"gc{' (dry run: nothing was changed)' if args.dry_run else ''}: expired shares {len(report.expired)}, "
        f"journal entries {report.journal_entries_deleted}, delete records {report.records_deleted}, "
        f"stale index entries {len(report.stale_index_entries)}"
    )
    return 0
