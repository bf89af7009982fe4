"""Configuration: a wrangler-like TOML file plus the environment, validated into one Settings.

Precedence, lowest first: built-in defaults, the config file's top level, its ``[env.<name>]``
section (chosen with ``--env``), environment variables, command-line flags. Secrets
(``SESSIONS_SHARED_SECRET``, ``SESSIONS_RPC_SHARED_KEY``, AWS credentials) are read only from the
environment; a config file may list them as required but never hold their values.

The config file is shaped like Cloudflare's ``wrangler.toml`` so that operators moving off the
Worker recognise it::

    name = "cloudsession"
    [vars]
    PUBLIC_URL = "https://share.example.com"
    [[r2_buckets]]
    binding = "SESSIONS_STORE"
    backend = "s3"                  # or "fs"
    bucket_name = "opencode-sessions"
    endpoint = "https://<account>.r2.cloudflarestorage.com"
    region = "auto"
    prefix = ""
    [secrets]
    required = ["SESSIONS_SHARED_SECRET"]
    [env.production.vars]
    PUBLIC_LISTING = false
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
import sys
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, PrivateAttr, SecretStr, ValidationError, field_validator

from cloudsession.credentials import parse_namespace

MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration problem, phrased for the operator in one line that names the setting: the
    environment variable, the flag or the config file key it came from."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean X?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_endpoint(value: str | None) -> str | None:
    """An S3 endpoint URL: ``http(s)://host[:port][/path]``."""
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("must be an http:// or https:// URL with a numeric port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL, e.g. https://<account>.r2.cloudflarestorage.com")
    return value


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["fs", "s3"] = Field("fs", description="`fs` (the embedded filesystem store) or `s3` (S3, R2, MinIO). "
        "`CLOUDSESSION_STORE=s3://bucket/prefix` or `file:///path` sets backend, bucket, prefix and path at once.")
    bucket: str | None = Field(None, description="Bucket of the s3 store.")
    endpoint: str | None = Field(None, description="S3 endpoint URL for R2 or MinIO; unset: AWS S3.")
    region: str | None = Field(None, description="S3 region (`auto` for R2).")
    prefix: str = Field("", description="Key prefix inside the bucket or directory (several deployments can share one bucket).")
    path: Path | None = Field(None, description="Root of the filesystem store.", json_schema_extra={"default_text": "`<data dir>/store`"})

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not value.endswith("/"):
            value += "/"
        return value


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(64 * MiB, ge=1024, description="Largest request body accepted (413 above).")
    max_items_per_sync: int = Field(20_000, ge=1, description="Most items in one sync request (413 above).")
    max_share_bytes: int = Field(512 * MiB, ge=MiB, description="Largest total size of one share (413 above).")
    max_session_id_length: int = Field(256, ge=8, description="Longest session ID accepted on create (400 above).")
    # Live viewers (/ws/<id>): how many one share, and one client address, may hold at once.
    max_viewers_per_share: int = Field(500, ge=1, description="Most live viewers of one share (503 above).")
    max_viewers_per_address: int = Field(20, ge=1, description="Most live viewers from one client address (503 above).")
    # Bytes a viewer may have waiting to be sent beyond the frame in flight: past it, an events
    # viewer is told to resync and a reference viewer is disconnected (docs/hardening.md).
    viewer_buffer_bytes: int = Field(1 * MiB, ge=4096, description="Unsent bytes one live viewer may hold.")


_DURATION_RE = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | int) -> int:
    """``"7d"``, ``"12h"``, ``"90m"``, ``"3600"`` or 3600 -> seconds; ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise ValueError("a duration must be positive")
        return text
    match = _DURATION_RE.match(str(text).strip().lower())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"{text!r} is not a duration (like 3600, 90m, 12h, 7d or 2w)")
    return int(match[1]) * _UNITS[match[2]]


class RetentionRule(BaseModel):
    """One ``[[retention.rules]]`` entry: shares whose User-Agent matches ``user_agent`` (a regular
    expression, searched) and that carry ``label`` (``key=value``) live ``ttl``."""

    model_config = ConfigDict(extra="forbid")

    user_agent: str | None = None
    label: str | None = None
    ttl: str | int

    @field_validator("user_agent")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and "=" not in value:
            raise ValueError("a label rule is key=value")
        return value

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | int) -> int:
        return parse_duration(value)

    @property
    def ttl_seconds(self) -> int:
        return int(self.ttl)

    def matches(self, user_agent: str, labels: dict[str, str]) -> bool:
        if self.user_agent is None and self.label is None:
            return False  # a rule without a condition would be the default: say so instead
        if self.user_agent is not None and not re.search(self.user_agent, user_agent):
            return False
        if self.label is not None:
            key, _, value = self.label.partition("=")
            if labels.get(key) != value:
                return False
        return True


class RetentionSettings(BaseModel):
    """Server-wide retention (docs/lifecycle.md): the TTL of new shares that did not ask for one,
    and the longest any share may live."""

    model_config = ConfigDict(extra="forbid")

    default_ttl: str | int | None = Field(None, description="TTL of new shares that did not ask for one (a duration such as `30d`); unset: they never expire (docs/lifecycle.md).")
    max_ttl: str | int | None = Field(None, description="The longest any share may live (a duration); unset: no bound (docs/lifecycle.md).")
    rules: list[RetentionRule] = Field(default_factory=list, description="Retention rules, `[[retention.rules]]` (docs/lifecycle.md).")

    @field_validator("default_ttl", "max_ttl")
    @classmethod
    def _duration(cls, value: str | int | None) -> int | None:
        return None if value in (None, "", 0, "0") else parse_duration(value)

    @property
    def default_ttl_seconds(self) -> int | None:
        return None if self.default_ttl is None else int(self.default_ttl)

    @property
    def max_ttl_seconds(self) -> int | None:
        return None if self.max_ttl is None else int(self.max_ttl)


HOOK_EVENTS = (
    "share.created",
    "share.synced",
    "share.idle",
    "share.finalized",
    "share.rotated",
    "share.privacy_changed",
    "share.expired",
    "share.deleted",
)


class _HookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    # The events this target hears; all of them by default.
    events: list[str] = Field(default_factory=lambda: list(HOOK_EVENTS))

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HOOK_EVENTS))
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)} (known: {', '.join(HOOK_EVENTS)})")
        return value


class WebhookTarget(_HookTarget):
    """``[[hooks.webhooks]]``: POST a signed JSON payload to ``url``. The signing key is read from
    the environment variable named by ``secret_env`` (never from the file)."""

    url: str
    secret_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value


class CommandTarget(_HookTarget):
    """``[[hooks.commands]]``: run ``command`` (a list: program and arguments; a string only with
    ``shell = true``) with the share's context in its environment."""

    command: list[str] | str
    shell: bool = False
    timeout: int = 30

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: str | int) -> int:
        return parse_duration(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | str) -> list[str] | str:
        if not value:
            raise ValueError("must name a program")
        return value


class HookSettings(BaseModel):
    """The ``[hooks]`` section (docs/hooks.md)."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[WebhookTarget] = Field(default_factory=list, description="Webhook targets, `[[hooks.webhooks]]` (docs/hooks.md).")
    commands: list[CommandTarget] = Field(default_factory=list, description="Command targets, `[[hooks.commands]]` (docs/hooks.md).")
    # share.synced fires at most once per share per this interval (at its end, with the count then).
    synced_interval: int = Field(60, description="`share.synced` fires at most once per share per this interval (seconds or a duration).")
    # share.idle fires once a share has had no sync for this long.
    idle_after: int = Field(600, description="`share.idle` fires once a share has had no sync for this long.")
    # Delivery: attempts per target before giving up, the first retry delay (doubling, capped at
    # an hour), and the deadline of one webhook request.
    max_attempts: int = Field(12, ge=1, le=100, description="Delivery attempts per target before giving up.")
    retry_seconds: float = Field(2.0, gt=0, description="The first retry delay (doubling, capped at an hour).")
    request_timeout: int = Field(10, description="The deadline of one webhook request.")
    # How often a replica looks for events to deliver.
    poll_seconds: float = Field(1.0, gt=0, description="How often a replica looks for events to deliver.")

    @field_validator("synced_interval", "idle_after", "request_timeout", mode="before")
    @classmethod
    def _durations(cls, value: str | int) -> int:
        return parse_duration(value)

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks or self.commands)


# -- operations: rate limits, metrics and logs (docs/operations.md) ------------------------------
# Kept in one block: the rate limiter (web/ratelimit.py), /metrics (web/observability.py) and the
# log format (logs.py) read these.


def _limit_string(value: str) -> str:
    """A rate limit in the ``limits`` notation ("60/minute", "10/second;600/minute") or "off"."""
    text = value.strip()
    if text.lower() in ("off", "none", "0", ""):
        return "off"
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit like '60/minute' or '10/second;600/minute' (or 'off')") from None
    return text


class RateLimitSettings(BaseModel):
    """Per client address; the client address is the peer's, or the ``X-Forwarded-For`` hop
    a trusted proxy reports (``trusted_proxies``). Counted in Redis when ``REDIS_URL`` is set
    (shared by replicas), else in memory."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false turns every rate limit off.")
    create: str = Field("60/minute", description="Creates per address: POST /api/share and RPC createShare.")
    sync: str = Field(
        "600/minute",
        description="Writes that carry a share secret per address (sync, ops, delete, redeem, rotate, privacy, expiry, read-token; "
        "REST and RPC). A sync a second is 60 a minute; the rest is room for bursts.",
    )
    rpc: str = Field("600/minute", description="Requests to /rpc/share per address (an HTTP batch or a WebSocket session each).")
    admin_failures: str = Field(
        "10/minute",
        description="Wrong admin keys per address (header, sign-in form, sign-in cookie, /metrics); beyond it every admin-key "
        "check from that address answers 429, whatever the key.",
    )
    share_misses: str = Field("120/minute", description="404s per address on routes that name a share (id guessing); beyond it those routes answer 429.")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list, description='Proxies whose X-Forwarded-For is believed, as CIDRs ("10.0.0.0/8,127.0.0.1").'
    )

    @field_validator("create", "sync", "rpc", "admin_failures", "share_misses")
    @classmethod
    def _limit(cls, value: str) -> str:
        return _limit_string(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("enabled", mode="before")
    @classmethod
    def _enabled(cls, value: Any) -> Any:
        return _truthy(value) if isinstance(value, str) else value


def _apply_operations_environment(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """The operations block's secret: ``METRICS_TOKEN`` (environment only)."""
    token = environ.get("CLOUDSESSION_METRICS_TOKEN") or environ.get("METRICS_TOKEN")
    if token:
        values["metrics_token"] = token


class Settings(BaseModel):
    """Everything the service needs, validated once at startup."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("cloudsession", description="Name of the deployment (the config file's top-level `name`); scopes the Redis channel.")
    host: str = Field("127.0.0.1", description="Address `serve` binds; `0.0.0.0` for every interface.")
    port: int = Field(8787, ge=0, le=65535, description="Port `serve` binds (0: any free port, printed at startup).")
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Local state: the embedded store (`<dir>/store`), the development namespace and the generated admin key.",
        json_schema_extra={"default_text": "`$XDG_DATA_HOME/cloudsession`, else `~/.local/share/cloudsession`"},
    )
    public_url: str | None = Field(
        None,
        description="Origin of returned share URLs, e.g. `https://share.example.com`. Unset: derived per request "
        "(`X-Forwarded-Proto`/`X-Forwarded-Host`, else `Host`). `API_DOMAIN=host` means `https://host`.",
    )
    shared_secret: SecretStr | None = Field(
        None,
        description="UUID namespace share secrets derive from (`uuid5(namespace, sessionID)`, as the Worker). Unset on the "
        "filesystem store: a development namespace is generated once in the data dir. Required on S3.",
    )
    rpc_shared_key: SecretStr | None = Field(
        None,
        description="Admin key: `GET /api/sessions` (`x-opencode-share-key`), `/rpc/share` and the `/sessions` page. Unset on "
        "the filesystem store: an admin key for `/sessions` and `/api/sessions` (not `/rpc/share`, which stays open) is generated "
        "into `<data dir>/admin-key` and `serve` prints a one-time sign-in link. Required for a listing on S3.",
    )
    public_listing: bool = Field(False, description="Anyone may see the `/sessions` list (private shares stay hidden).")
    store: StoreSettings = Field(default_factory=StoreSettings)
    limits: Limits = Field(default_factory=Limits)
    # Journal compaction: fold the tail into the snapshot once it holds this many entries, or
    # once its bytes exceed max(compact_min_bytes, snapshot size * compact_ratio).
    compact_max_entries: int = Field(1024, ge=2, description="Fold a share's journal into its snapshot once it holds this many entries.")
    compact_min_bytes: int = Field(1 * MiB, ge=1, description="Fold the journal also once its bytes exceed the larger of this and the snapshot's size times `compact_ratio`.")
    compact_ratio: float = Field(0.5, gt=0, description="See `compact_min_bytes`.")
    # Folded journal entries are deleted only after this long, so that a writer which checked
    # the share just before a compaction can never write into a freed slot (see shares/storage.py).
    journal_grace_seconds: float = Field(300.0, ge=1, description="Folded journal entries are deleted only after this long (a slow writer never writes into a freed slot).")
    # What the share cache may hold in memory: folded shares and their public views, measured as
    # what they cost (docs/performance.md "Memory"). Least recently used shares are evicted.
    cache_budget_bytes: int = Field(
        256 * MiB, ge=0,
        description="Memory the share cache may use: folded shares and their public views, counted as what they cost in memory; least recently used shares are dropped past it (0 caches nothing between requests). Compressed responses have their own 32 MiB (docs/reads.md).",
    )
    # A writer re-checks the share when more than this passed since it last did.
    write_deadline_seconds: float = Field(30.0, ge=0.1, description="A writer re-checks the share when more than this passed since it last did.")
    # A sync into a share this process read or wrote moments ago is one conditional write: no
    # HEAD, no read (docs/storage-layout.md). The price: a delete by another process or replica
    # is noticed this late by this one's syncs (their entries are left under the dead incarnation).
    writer_trust_seconds: float = Field(
        1.0, ge=0, le=30, description="A writer appends to a share it checked less than this long ago without asking the store "
        "again (one request per sync); a delete by another replica is noticed this late by its syncs (capped by `write_deadline_seconds`)."
    )
    # Deadline of one store call (a GET, PUT, LIST page...): past it the request answers 503
    # with Retry-After instead of waiting on a store that does not answer (docs/reliability.md).
    store_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Deadline of one store call: past it the request answers 503 with Retry-After (docs/reliability.md)."
    )
    # /readyz answers 503 when the store has not answered its one-key listing within this.
    ready_timeout_seconds: float = Field(2.0, gt=0, le=60, description="`/readyz` answers 503 when the store has not answered its one-key listing within this.")
    # How often the server deletes expired shares and prunes folded journal entries
    # (shares/sweep.py; `cloudsession gc` does the same once). 0 turns the periodic sweep off.
    sweep_interval_seconds: float = Field(
        300.0, ge=0, description="How often the server deletes expired shares and prunes folded journal entries (what `cloudsession gc` does once); 0: never."
    )
    # The listing (shares/listing.py): index entries are written after the sync answered, one write
    # per share for every burst of changes within this delay; pages are read newest first.
    index_write_delay_seconds: float = Field(
        0.5, ge=0, le=60, description="A share's index entry is written this long after a change, off the request path: "
        "a burst of syncs within it costs one index write, and a share that keeps changing waits up to 4 times as long between writes "
        "(`docs/storage-layout.md`). Other replicas' lists lag by about this much (a busy share's by up to 4 times)."
    )
    listing_cache_mib: int = Field(
        32, ge=0, description="Memory (MiB) for the index entries the `/sessions` list and `/api/sessions` have read, so a warm page "
        "costs one store listing call and no reads (about 0.85 KiB per share: 96 keeps 100,000 shares warm for the sweep)."
    )
    # redis://[user:password@]host:port/db: live updates reach viewers on every replica
    # (live/relay.py). Unset: each replica tells only its own viewers. Holds a password, so secret.
    redis_url: SecretStr | None = Field(
        None,
        description="`redis://[:password@]host:port/db`: live updates reach viewers on every replica through Redis pub/sub. "
        "Unset: each replica tells its own viewers only. Shown redacted; a password only from the environment.",
    )
    log_level: str = Field("INFO", description="`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`.")
    # Deadlines on the HTTP connection (docs/hardening.md). A connection is closed when no
    # complete request head arrives within keepalive_timeout_seconds of it opening or of the
    # previous answer (idle keep-alive and slow headers alike). A request body may take
    # body_timeout_seconds plus one second per body_min_bytes_per_second bytes received so far
    # (408 and close otherwise): trickled bodies end quickly, large honest uploads never do.
    keepalive_timeout_seconds: float = Field(
        15.0, gt=0, description="An idle connection, or a request head that does not complete, is closed after this long (docs/hardening.md)."
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="A request body may take this long plus one second per `body_min_bytes_per_second` bytes received (408 otherwise)."
    )
    body_min_bytes_per_second: int = Field(32 * 1024, ge=1, description="See `body_timeout_seconds`: the slowest upload rate that never times out.")
    # A live viewer's socket must accept each piece of a frame within this long, or it is closed.
    viewer_send_timeout_seconds: float = Field(30.0, gt=0, description="A live viewer's socket must accept each piece of a frame within this long, or it is closed.")
    # Retention policies: the [retention] section of the config file (docs/lifecycle.md).
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    # Event hooks: the [hooks] section of the config file (docs/hooks.md).
    hooks: HookSettings = Field(default_factory=HookSettings)
    # -- operations: rate limits, metrics, log format (docs/operations.md) --------------------
    rate_limits: RateLimitSettings = Field(default_factory=lambda: RateLimitSettings(), description="Rate limits per client address (docs/operations.md).")
    log_format: Literal["text", "json"] = Field("text", description="text (readable lines, for a terminal) or json (JSON lines, for a log collector).")
    metrics_token: SecretStr | None = Field(None, description="/metrics also accepts Authorization: Bearer <token>. Secret: environment only.")
    metrics_address: str | None = Field(None, description="host:port: serve /metrics only on this separate address (open unless METRICS_TOKEN is set).")

    # Where each value came from ("CLOUDSESSION_PORT", "--data-dir", "c.toml: vars.PORT"), for messages.
    _origins: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if not value:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
        return value

    @field_validator("public_url")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be an origin like https://share.example.com (no path, query or fragment)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("shared_secret")
    @classmethod
    def _namespace(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_namespace(value.get_secret_value())
        return value

    @property
    def namespace(self) -> uuid.UUID:
        if self.shared_secret is None:
            raise ConfigError("SESSIONS_SHARED_SECRET is not set")
        return parse_namespace(self.shared_secret.get_secret_value())

    def origin(self, *path: str) -> str:
        """The name an operator set ``path`` by: an environment variable, a flag, a config file
        key, or (for a default) the variable that would change it."""
        if path in self._origins:
            return self._origins[path]
        for var, target in VARS.items():
            if target == path:
                flag = FLAGS.get(path[-1])
                return f"{var} (the default; set {flag + ' or ' if flag else ''}CLOUDSESSION_{var})"
        return ".".join(path)

    @property
    def store_path(self) -> Path:
        return self.store.path or (self.data_dir / "store")

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for display: secrets show only whether they are set."""
        data = self.model_dump(mode="json")
        for key in ("shared_secret", "rpc_shared_key"):
            data[key] = "<set>" if getattr(self, key) is not None else None
        data["redis_url"] = redact_url(self.redis_url.get_secret_value()) if self.redis_url else None
        for hook in data["hooks"]["webhooks"]:
            hook["url"] = display_url(hook["url"])
        data["metrics_token"] = "<set>" if self.metrics_token is not None else None
        return data


def display_url(url: str) -> str:
    """A webhook URL for logs and check-config: scheme and host only (Slack-style URLs carry their
    secret in the path)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}/…"


def redact_url(url: str) -> str:
    """A URL for display: scheme, host, port and path kept; credentials and query replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    userinfo = "<redacted>@" if parts.username is not None or parts.password is not None else ""
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{userinfo}{host}{parts.path}{query}"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cloudsession"


# -- the wrangler-like file ---------------------------------------------------------------------

SECRET_NAMES: tuple[str, ...] = ("SESSIONS_SHARED_SECRET", "SESSIONS_RPC_SHARED_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class BucketBinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    binding: Literal["SESSIONS_STORE"]
    backend: Literal["fs", "s3"] = "s3"
    bucket_name: str | None = None
    endpoint: str | None = None
    region: str | None = None
    prefix: str = ""
    path: Path | None = None


class SecretsSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    required: list[str] = Field(default_factory=list)


class EnvSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vars: dict[str, Any] = Field(default_factory=dict)
    retention: dict[str, Any] | None = None
    hooks: dict[str, Any] | None = None
    r2_buckets: list[BucketBinding] | None = None
    secrets: SecretsSection | None = None


class WranglerFile(EnvSection):
    name: str = "cloudsession"
    env: dict[str, EnvSection] = Field(default_factory=dict)


# vars (and environment variables) understood by cloudsession, mapped to Settings paths.
VARS: dict[str, tuple[str, ...]] = {
    "PUBLIC_URL": ("public_url",),
    "PUBLIC_LISTING": ("public_listing",),
    "HOST": ("host",),
    "PORT": ("port",),
    "DATA_DIR": ("data_dir",),
    "LOG_LEVEL": ("log_level",),
    "MAX_BODY_BYTES": ("limits", "max_body_bytes"),
    "MAX_ITEMS_PER_SYNC": ("limits", "max_items_per_sync"),
    "MAX_SHARE_BYTES": ("limits", "max_share_bytes"),
    "MAX_SESSION_ID_LENGTH": ("limits", "max_session_id_length"),
    "MAX_VIEWERS_PER_SHARE": ("limits", "max_viewers_per_share"),
    "MAX_VIEWERS_PER_ADDRESS": ("limits", "max_viewers_per_address"),
    "VIEWER_BUFFER_BYTES": ("limits", "viewer_buffer_bytes"),
    "KEEPALIVE_TIMEOUT_SECONDS": ("keepalive_timeout_seconds",),
    "BODY_TIMEOUT_SECONDS": ("body_timeout_seconds",),
    "BODY_MIN_BYTES_PER_SECOND": ("body_min_bytes_per_second",),
    "VIEWER_SEND_TIMEOUT_SECONDS": ("viewer_send_timeout_seconds",),
    "COMPACT_MAX_ENTRIES": ("compact_max_entries",),
    "COMPACT_MIN_BYTES": ("compact_min_bytes",),
    "COMPACT_RATIO": ("compact_ratio",),
    "CACHE_BUDGET_BYTES": ("cache_budget_bytes",),
    "WRITE_DEADLINE_SECONDS": ("write_deadline_seconds",),
    "WRITER_TRUST_SECONDS": ("writer_trust_seconds",),
    "JOURNAL_GRACE_SECONDS": ("journal_grace_seconds",),
    "SWEEP_INTERVAL_SECONDS": ("sweep_interval_seconds",),
    "INDEX_WRITE_DELAY_SECONDS": ("index_write_delay_seconds",),
    "LISTING_CACHE_MIB": ("listing_cache_mib",),
    "STORE_TIMEOUT_SECONDS": ("store_timeout_seconds",),
    "READY_TIMEOUT_SECONDS": ("ready_timeout_seconds",),
    "REDIS_URL": ("redis_url",),
    "RETENTION_DEFAULT_TTL": ("retention", "default_ttl"),
    "RETENTION_MAX_TTL": ("retention", "max_ttl"),
}

# The operations block (rate limits, metrics, log format): docs/operations.md.
VARS.update(
    {
        "LOG_FORMAT": ("log_format",),
        "METRICS_ADDRESS": ("metrics_address",),
        "RATE_LIMITS": ("rate_limits", "enabled"),
        "RATE_LIMIT_CREATE": ("rate_limits", "create"),
        "RATE_LIMIT_SYNC": ("rate_limits", "sync"),
        "RATE_LIMIT_RPC": ("rate_limits", "rpc"),
        "RATE_LIMIT_ADMIN_FAILURES": ("rate_limits", "admin_failures"),
        "RATE_LIMIT_SHARE_MISSES": ("rate_limits", "share_misses"),
        "TRUSTED_PROXIES": ("rate_limits", "trusted_proxies"),
    }
)
SECRET_NAMES = (*SECRET_NAMES, "METRICS_TOKEN")


def _set(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


# Command-line flags that set a Settings field (``serve --host/--port``, every command's ``--data-dir``).
FLAGS = {"host": "--host", "port": "--port", "data_dir": "--data-dir"}
# Never echoed in an error message.
SECRET_FIELDS = ("shared_secret", "rpc_shared_key", "redis_url")


def _message(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg[:1].lower() + msg[1:]


def _pydantic_problem(exc: ValidationError, source: str, origins: Mapping[tuple[str, ...], str] | None = None, known: Any = None) -> ConfigError:
    """One line naming every invalid setting by where it was set (``CLOUDSESSION_PORT: ...``)."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        name = None
        for cut in range(len(loc), 0, -1):
            if origins and loc[:cut] in origins:
                name = origins[loc[:cut]]
                break
        if name is None:
            name = f"{source}: {'.'.join(loc)}" if source else ".".join(loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], known(loc) if known else [])
            problems.append(f"{name}: unknown key{hint}")
            continue
        text = f"{name}: {_message(err)}"
        value = err.get("input")
        shown = isinstance(value, str | int | float) and not isinstance(value, bool) and len(str(value)) <= 80 and repr(value) not in text
        if shown and not any(part in SECRET_FIELDS for part in loc):
            text += f" (got {value!r})"
        problems.append(text)
    return ConfigError("; ".join(problems))


def _file_keys(loc: tuple[str, ...]) -> list[str]:
    """Known keys at ``loc``'s level of the wrangler-like file, for did-you-mean."""
    model: Any = WranglerFile
    for part in loc[:-1]:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        found = None
        for candidate in (BucketBinding, SecretsSection, EnvSection):
            if candidate is annotation or candidate.__name__ in str(annotation):
                found = candidate
        if part == "env" and model is WranglerFile:
            found = EnvSection
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _bucket_to_store(binding: BucketBinding) -> dict[str, Any]:
    store: dict[str, Any] = {"backend": binding.backend, "prefix": binding.prefix}
    for key, value in (("bucket", binding.bucket_name), ("endpoint", binding.endpoint), ("region", binding.region), ("path", binding.path)):
        if value is not None:
            store[key] = value
    return store


BUCKET_KEYS = {"bucket": "bucket_name", "endpoint": "endpoint", "region": "region", "prefix": "prefix", "path": "path", "backend": "backend"}


def _apply_section(
    values: dict[str, Any], section: EnvSection, source: str, required: set[str], origins: dict[tuple[str, ...], str] | None = None
) -> None:
    origins = {} if origins is None else origins
    for name, value in section.vars.items():
        if name in SECRET_NAMES:
            raise ConfigError(f"{source}: vars.{name} is a secret; set it in the environment, not in the config file")
        if name == "API_DOMAIN":
            _set(values, ("public_url",), f"https://{value}")
            origins[("public_url",)] = f"{source}: vars.API_DOMAIN"
            continue
        if name == "REDIS_URL" and isinstance(value, str) and urlsplit(value).password:
            raise ConfigError(f"{source}: vars.REDIS_URL holds a password; set REDIS_URL in the environment instead")
        if name not in VARS:
            raise ConfigError(f"{source}: unknown variable vars.{name}{did_you_mean(name, [*VARS, 'API_DOMAIN'])}")
        _set(values, VARS[name], value)
        origins[VARS[name]] = f"{source}: vars.{name}"
    if section.r2_buckets is not None:
        if len(section.r2_buckets) != 1:
            raise ConfigError(f"{source}: r2_buckets must hold exactly one SESSIONS_STORE binding")
        values["store"] = _bucket_to_store(section.r2_buckets[0])
        for key, file_key in BUCKET_KEYS.items():
            origins[("store", key)] = f"{source}: r2_buckets.{file_key}"
    if section.secrets is not None:
        required.update(section.secrets.required)
    if section.retention is not None:
        values["retention"] = {**values.get("retention", {}), **section.retention}
    if section.hooks is not None:
        values["hooks"] = {**values.get("hooks", {}), **section.hooks}


def load_file(
    path: Path, env_name: str | None, values: dict[str, Any], required: set[str], origins: dict[tuple[str, ...], str] | None = None
) -> None:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        parsed = WranglerFile.model_validate(raw)
    except ValidationError as exc:
        raise _pydantic_problem(exc, str(path), known=_file_keys) from None
    values["name"] = parsed.name
    _apply_section(values, parsed, str(path), required, origins)
    if env_name is not None:
        if env_name not in parsed.env:
            known = ", ".join(sorted(parsed.env)) or "none"
            raise ConfigError(f"--env {env_name}: {path} has no [env.{env_name}] section (defined: {known})")
        _apply_section(values, parsed.env[env_name], f"{path} [env.{env_name}]", required, origins)


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


# Variables also read without the CLOUDSESSION_ prefix (the Worker's names).
BARE_ENV_NAMES = ("PUBLIC_URL", "REDIS_URL")
BOOLEAN_TEXT = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def env_names(var: str) -> list[str]:
    """The environment variables that set ``[vars]`` key ``var``, highest precedence last."""
    return [f"CLOUDSESSION_{var}", *([var] if var in BARE_ENV_NAMES else [])]


def apply_environment(values: dict[str, Any], environ: Mapping[str, str], origins: dict[tuple[str, ...], str] | None = None) -> None:
    origins = {} if origins is None else origins
    for name, path in VARS.items():
        for env_name in env_names(name):
            if environ.get(env_name):
                _set(values, path, environ[env_name])
                origins[path] = env_name
    if environ.get("API_DOMAIN") and not environ.get("PUBLIC_URL"):
        values["public_url"] = f"https://{environ['API_DOMAIN']}"
        origins[("public_url",)] = "API_DOMAIN"
    if "public_listing" in values and isinstance(values["public_listing"], str):
        text = values["public_listing"].strip().lower()
        if text not in BOOLEAN_TEXT:
            raise ConfigError(f"{origins.get(('public_listing',), 'PUBLIC_LISTING')}: must be true or false (got {values['public_listing']!r})")
        values["public_listing"] = BOOLEAN_TEXT[text]
    for env_name, key in (("SESSIONS_SHARED_SECRET", "shared_secret"), ("SESSIONS_RPC_SHARED_KEY", "rpc_shared_key")):
        if environ.get(env_name):
            values[key] = environ[env_name]
            origins[(key,)] = env_name
    store_url = environ.get("CLOUDSESSION_STORE")
    if store_url:
        values["store"] = parse_store_url(store_url)
        for key in ("backend", "bucket", "prefix", "path"):
            origins[("store", key)] = "CLOUDSESSION_STORE"
    if isinstance(values.get("store"), dict):
        _aws_defaults(values["store"], environ, origins)
    _apply_operations_environment(values, environ)


def _aws_defaults(spec: dict[str, Any], environ: Mapping[str, str], origins: dict[tuple[str, ...], str] | None = None) -> None:
    """An S3 store without an endpoint or region takes AWS's standard variables (R2, MinIO)."""
    origins = {} if origins is None else origins
    if spec.get("backend") != "s3":
        return
    if environ.get("AWS_ENDPOINT_URL") and not spec.get("endpoint"):
        spec["endpoint"] = environ["AWS_ENDPOINT_URL"]
        origins[("store", "endpoint")] = "AWS_ENDPOINT_URL"
    region_var = "AWS_REGION" if environ.get("AWS_REGION") else "AWS_DEFAULT_REGION"
    if environ.get(region_var) and not spec.get("region"):
        spec["region"] = environ[region_var]
        origins[("store", "region")] = region_var


def store_settings_from_url(url: str, environ: Mapping[str, str] | None = None, name: str = "--store") -> StoreSettings:
    """The store tools' ``--store``/``--from``/``--to``: ``s3://bucket[/prefix][?endpoint=URL&region=R]``,
    ``file:///path`` or a path. Query parameters win over ``AWS_ENDPOINT_URL``/``AWS_REGION``, so
    one command can read R2 and write another provider; credentials come from the AWS environment."""
    environ = os.environ if environ is None else environ
    spec = parse_store_url(url, name)
    origins: dict[tuple[str, ...], str] = {}
    if spec["backend"] == "s3":
        query = parse_qs(urlsplit(url).query)
        unknown = sorted(set(query) - {"endpoint", "region"})
        if unknown:
            raise ConfigError(f"{name} {url.split('?')[0]}: unknown parameter(s) {', '.join(unknown)} (known: endpoint, region)")
        for key in ("endpoint", "region"):
            if query.get(key):
                spec[key] = query[key][0]
                origins[("store", key)] = f"{name} ?{key}="
        _aws_defaults(spec, environ, origins)
    try:
        return StoreSettings(**spec)
    except ValidationError as exc:
        raise _pydantic_problem(exc, name, {(k[1],): v for k, v in origins.items()}) from None


def parse_store_url(url: str, name: str = "CLOUDSESSION_STORE") -> dict[str, Any]:
    """``s3://bucket/prefix`` or ``file:///path`` (or a plain path) -> store settings."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"{name}={url!r}: expected s3://bucket[/prefix]")
        return {"backend": "s3", "bucket": parts.netloc, "prefix": parts.path.lstrip("/")}
    if parts.scheme in ("file", ""):
        return {"backend": "fs", "path": parts.path or url}
    raise ConfigError(f"{name}={url!r}: unsupported scheme {parts.scheme!r} (use s3:// or file://)")


def load_settings(
    *,
    config_file: Path | None = None,
    env_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from file, environment and flags; ConfigError with an operator-facing message."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    required: set[str] = set()
    origins: dict[tuple[str, ...], str] = {}
    if config_file is not None:
        load_file(config_file, env_name, values, required, origins)
    elif env_name is not None:
        raise ConfigError("--env needs --config FILE")
    apply_environment(values, environ, origins)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            origins[(key,)] = FLAGS.get(key, f"--{key.replace('_', '-')}")
    missing = sorted(name for name in required if not environ.get(name))
    if missing:
        raise ConfigError(f"required secrets missing from the environment: {', '.join(missing)}")
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise _pydantic_problem(exc, "", origins) from None
    settings._origins.update(origins)
    if settings.store.backend == "s3" and not settings.store.bucket:
        raise ConfigError("the s3 store needs a bucket (r2_buckets.bucket_name or CLOUDSESSION_STORE=s3://bucket)")
    return settings


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir (and the filesystem store's root) and prove it writable; a ConfigError
    naming the setting otherwise (a missing parent on a read-only disk, a file in the way, no
    permission)."""
    dirs = [("data_dir",), ("store", "path")] if settings.store.backend == "fs" else [("data_dir",)]
    for path in dirs:
        directory = settings.data_dir if path == ("data_dir",) else settings.store_path
        name = settings.origin(*path) if path in settings._origins or path == ("data_dir",) else settings.origin("data_dir")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if isinstance(exc, FileExistsError | NotADirectoryError):
                reason = "a file is in the way (not a directory)"
            raise ConfigError(f"{name}: {directory} is not a usable directory: {reason}") from None


def _create_once(path: Path, content: str) -> str:
    """Write ``content`` to ``path`` (mode 0600) unless it exists; return what the file holds.

    Written to a temporary name and linked into place, so a concurrent process (replicas on one
    data dir) never reads a half-written file: one link wins, the others read the winner's."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(content + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


ADMIN_KEY_FILE = "admin-key"


def ensure_local_admin_key(settings: Settings) -> tuple[str, Path] | None:
    """On the embedded default (filesystem store, no ``SESSIONS_RPC_SHARED_KEY``): the admin key
    for ``/sessions``, generated once into ``<data dir>/admin-key`` (mode 0600). None otherwise:
    replicas on S3 must share a configured key, never a per-machine one."""
    if settings.rpc_shared_key is not None or settings.store.backend != "fs":
        return None
    path = settings.data_dir / ADMIN_KEY_FILE
    try:
        key = _create_once(path, "ak_" + secrets.token_urlsafe(32))
    except OSError as exc:
        raise ConfigError(f"{settings.origin('data_dir')}: cannot write {path}: {exc.strerror or exc}") from None
    if not key:
        raise ConfigError(f"{path} is empty; delete it and restart to generate a new admin key")
    return key, path


def ensure_namespace(settings: Settings) -> Settings:
    """With no SESSIONS_SHARED_SECRET, create a development namespace once in the data dir.

    Secrets derive from it, so it must survive restarts; it is written with mode 0600 and a
    warning is printed because a per-machine namespace is not what a production deployment wants.
    """
    if settings.shared_secret is not None:
        return settings
    if settings.store.backend == "s3":
        # Replicas on a bucket each have their own data dir: a generated namespace would give
        # every replica different secrets for the same share.
        raise ConfigError("SESSIONS_SHARED_SECRET is required with the s3 store (every replica must derive the same secrets)")
    path = settings.data_dir / "dev-namespace"
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        value = _create_once(path, str(uuid.uuid4()))
    except OSError as exc:
        raise ConfigError(f"{settings.origin('data_dir')}: {settings.data_dir} is not a usable directory: {exc.strerror or exc}") from None
    try:
        parse_namespace(value)
    except ValueError:
        raise ConfigError(f"{path} does not hold a valid namespace; set SESSIONS_SHARED_SECRET or restore the file") from None
    print(
        f"warning: SESSIONS_SHARED_SECRET is not set; using the development namespace stored in {path}. "
        "Set SESSIONS_SHARED_SECRET to a UUID for production.",
        file=sys.stderr,
    )
    return settings.model_copy(update={"shared_secret": SecretStr(value)})
