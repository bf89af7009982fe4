"""What every command shares: the configuration flags, Settings from them, the store a tool works
on, progress bars and summaries, and turning domain errors into one line and an exit status."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from cloudsession.config import Settings, ensure_namespace, load_settings, redact_url, store_settings_from_url
from cloudsession.errors import ShareError, StoreError, StoreUnavailable
from cloudsession.shares import maintenance
from cloudsession.shares.service import ShareService
from cloudsession.shares.service import open_service as open_share_service


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every command that reads the configuration shares."""
    parser.add_argument("--config", type=Path, help="wrangler-like TOML config file")
    parser.add_argument("--env", dest="env_name", help="apply the [env.NAME] section of the config file")
    parser.add_argument("--data-dir", type=Path, help="directory for the embedded store and local state")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    settings = load_settings(config_file=args.config, env_name=args.env_name, overrides=overrides)
    return ensure_namespace(settings)


def add_store_flags(parser: argparse.ArgumentParser, *, store: bool = True, changes: bool = True) -> None:
    """The store tools' flags: the configuration, ``--store``, ``--dry-run`` and ``--progress``."""
    add_config_flags(parser)
    if store:
        parser.add_argument("--store", metavar="URL", help="work on this store instead of the configured one (s3://bucket/prefix, file:///path)")
    if changes:
        parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
        parser.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")


@asynccontextmanager
async def open_service(settings: Settings, store_url: str | None = None) -> AsyncIterator[ShareService]:
    """A share service on the configured store, or on ``store_url``."""
    if store_url:
        settings = settings.model_copy(update={"store": store_settings_from_url(store_url)})
    async with open_share_service(settings) as service:
        yield service


# -- the store check at startup -----------------------------------------------------------------


class StoreCheckFailed(Exception):
    """The store did not answer; the message names the store, where it was configured, and why."""


def describe_store(settings: Settings) -> str:
    """The store for an operator: ``s3://bucket/prefix at <endpoint>`` or ``file:///path``."""
    cfg = settings.store
    if cfg.backend == "fs":
        return f"file://{settings.store_path}"
    where = redact_url(cfg.endpoint) if cfg.endpoint else f"AWS S3 ({cfg.region or 'default region'})"
    return f"s3://{cfg.bucket}/{cfg.prefix} at {where}"


def _store_names(settings: Settings) -> str:
    names = dict.fromkeys(settings.origin("store", key) for key in (("bucket", "endpoint") if settings.store.backend == "s3" else ("path",)))
    return ", ".join(name for name in names if name not in ("store.bucket", "store.endpoint", "store.path"))


async def check_store(settings: Settings, timeout: float) -> None:
    """Open the store and list one key within ``timeout`` seconds (``ShareService.check_store``);
    StoreCheckFailed naming the endpoint, the bucket and the settings that chose them otherwise."""
    if settings.shared_secret is None:
        # Only a listing is done: no secret is derived, any namespace will do.
        settings = settings.model_copy(update={"shared_secret": SecretStr(str(uuid.uuid4()))})
    names = _store_names(settings)
    label = f"store {describe_store(settings)}" + (f" (from {names})" if names else "")
    # The service logs each failed store call; here the failure is reported once, as one line.
    service_log = logging.getLogger("cloudsession.shares.service")
    level, service_log.level = service_log.level, logging.CRITICAL
    try:
        async with asyncio.timeout(timeout):
            async with open_share_service(settings) as service:
                await service.check_store()
    except TimeoutError:
        raise StoreCheckFailed(f"{label}: no answer within {timeout:g}s") from None
    except StoreError as exc:
        raise StoreCheckFailed(f"{label}: {exc}") from None
    except ShareError as exc:  # StoreUnavailable from the service's store wrapper: name the store's own error
        raise StoreCheckFailed(f"{label}: {exc.__cause__ or exc.message}") from None
    except OSError as exc:
        raise StoreCheckFailed(f"{label}: {exc.strerror or exc}") from None
    except ValueError as exc:  # botocore: a malformed endpoint or region
        raise StoreCheckFailed(f"{label}: {exc}") from None
    finally:
        service_log.setLevel(level)


# -- progress and summaries ---------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second, with the rate and
    the time left: ``fsck [#########.....] 1200/2000 310/s ETA 0:03``.

    Our own rather than tqdm's: the same line for every store tool in a few lines, no dependency,
    and a clock that tests can drive."""

    WIDTH = 30

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.clock = clock
        self.total = 0
        self.done = 0
        self._started = 0.0
        self._drawn = 0.0
        self._width = 0

    def start(self, total: int) -> Callable[[int], None]:
        self.total, self.done = total, 0
        self._started = self.clock()
        self._draw(force=True)
        return self.tick

    def tick(self, count: int) -> None:
        self.done += count
        self._draw(force=self.done >= self.total)

    def rate(self) -> float | None:
        """Items per second so far; None before the first second's worth of evidence."""
        elapsed = self.clock() - self._started
        return self.done / elapsed if self.done and elapsed > 0 else None

    def line(self) -> str:
        filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total}"
        rate = self.rate()
        if rate is None:
            return text + " ?/s ETA ?"
        left = max(self.total - self.done, 0) / rate
        shown = f"{rate:.0f}/s" if rate >= 10 else f"{rate:.1f}/s"
        if self.done >= self.total:
            return f"{text} {shown} in {_duration(self.clock() - self._started)}"
        return f"{text} {shown} ETA {_duration(left)}"

    def _draw(self, *, force: bool = False) -> None:
        now = self.clock()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        line = self.line()
        # Padded over the previous line: the ETA may get shorter, and no escape codes are needed.
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    """``0:07``, ``12:30``, ``2:05:00``."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_for(args: argparse.Namespace, label: str) -> Progress:
    return Progress(label, enabled=args.progress or sys.stderr.isatty())


def print_report(title: str, report: maintenance.Report, *, dry_run: bool) -> None:
    for finding in report.findings:
        print(finding.line())
    counts = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items())) or "nothing to do"
    print(f"{title}{' (dry run: nothing was changed)' if dry_run else ''}: {counts}")


def run(coro: Any) -> int:
    """Run a command coroutine; a share or store problem is one line on stderr and exit 1."""
    try:
        status: int = asyncio.run(coro)
        return status
    except ShareError as exc:
        cause = exc.__cause__
        if isinstance(exc, StoreUnavailable) and isinstance(cause, StoreError):
            print(f"cloudsession: the store failed: {cause}", file=sys.stderr)
        elif isinstance(exc, StoreUnavailable) and isinstance(cause, TimeoutError):
            print("cloudsession: the store failed: no answer within its deadline (STORE_TIMEOUT_SECONDS)", file=sys.stderr)
        else:
            print(f"cloudsession: {exc.message}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"cloudsession: the store failed: {exc}", file=sys.stderr)
        return 1
