"""The configuration reference, generated from the settings model (``config.Settings``, ``VARS``
and the environment rules of ``config.apply_environment``): ``docs/configuration.md`` is this
module's output, and ``tests/test_config_reference.py`` fails when they differ.

Regenerate with ``python scripts/gen_config_docs.py`` (or ``cloudsession check-config
--reference > docs/configuration.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cloudsession.config import FLAGS, MiB, Settings, env_names

# Settings set only from the environment or the config file's own sections, not through [vars].
ENVIRONMENT_ONLY: dict[tuple[str, ...], list[str]] = {
    ("shared_secret",): ["SESSIONS_SHARED_SECRET"],
    ("rpc_shared_key",): ["SESSIONS_RPC_SHARED_KEY"],
    ("store", "backend"): ["CLOUDSESSION_STORE"],
    ("store", "bucket"): ["CLOUDSESSION_STORE"],
    ("store", "prefix"): ["CLOUDSESSION_STORE"],
    ("store", "path"): ["CLOUDSESSION_STORE"],
    ("store", "endpoint"): ["AWS_ENDPOINT_URL"],
    ("store", "region"): ["AWS_REGION", "AWS_DEFAULT_REGION"],
}
FILE_KEYS: dict[tuple[str, ...], str] = {
    ("name",): "`name` (top level)",
    ("store", "backend"): "`r2_buckets.backend`",
    ("store", "bucket"): "`r2_buckets.bucket_name`",
    ("store", "endpoint"): "`r2_buckets.endpoint`",
    ("store", "region"): "`r2_buckets.region`",
    ("store", "prefix"): "`r2_buckets.prefix`",
    ("store", "path"): "`r2_buckets.path`",
}
# Other variables the commands read, listed for completeness.
OTHER_ENVIRONMENT = [
    ("API_DOMAIN", "`PUBLIC_URL` as `https://<API_DOMAIN>` when `PUBLIC_URL` is not set (the Worker's name); also a `[vars]` key."),
    ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE", "S3 credentials, read by the AWS SDK; never from the config file."),
    ("XDG_DATA_HOME", "Where the default data dir lives (`$XDG_DATA_HOME/cloudsession`)."),
    ("CLOUDSESSION_SHARE_TOKEN", "`cloudsession import`: the read token of a private share."),
]


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    out: list[tuple[tuple[str, ...], FieldInfo]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, (*prefix, name))
        else:
            out.append(((*prefix, name), info))
    return out


def settings_fields() -> list[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf setting of ``Settings`` with its field (nested models flattened)."""
    return _leaves(Settings)


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    value: Any = info.default
    if value is PydanticUndefined:
        return "—"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                words.append(f"{word} {bound}")
    return f" Must be {' and '.join(words)}." if words else ""


def rows() -> list[list[str]]:
    from cloudsession.config import VARS

    var_of = {path: var for var, path in VARS.items()}
    table = []
    for path, info in settings_fields():
        var = var_of.get(path)
        env = env_names(var) if var else ENVIRONMENT_ONLY.get(path, [])
        flag = FLAGS.get(path[-1]) if len(path) == 1 else None
        where = [f"`{var}`" if var else FILE_KEYS.get(path, "—")]
        table.append([
            f"`{'.'.join(path)}`",
            where[0],
            ", ".join(f"`{name}`" for name in env) or "—",
            f"`{flag}`" if flag else "—",
            _default(info),
            (info.description or "").replace("|", "\\|") + _bounds(info),
        ])
    return table


HEADER = """# Configuration reference

<!-- Generated from the settings model (cloudsession/config.py) by cloudsession/cli/reference.py.
     Do not edit by hand: change the Field(description=...) in config.py, then regenerate with
         python scripts/gen_config_docs.py
     (or: cloudsession check-config --reference > docs/configuration.md).
     tests/test_config_reference.py fails when this file and the generator disagree. -->

Precedence, lowest first: built-in defaults, the config file's top level (`--config FILE`), its
`[env.NAME]` section (`--env NAME`), environment variables, command-line flags. A `[vars]` key
`NAME` is also read from the environment as `CLOUDSESSION_NAME` (`PUBLIC_URL` and `REDIS_URL`
also under their own names). Secrets (`SESSIONS_SHARED_SECRET`, `SESSIONS_RPC_SHARED_KEY`, AWS
credentials, a Redis password) are read only from the environment. `cloudsession check-config`
prints the effective configuration with secrets redacted; `--check-store` also tries the store.

A mistake stops `serve` with one line that names the setting where it was set (the environment
variable, the flag, or the config file and key), for example
`cloudsession: configuration error: CLOUDSESSION_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')`.

"""


def reference_markdown() -> str:
    lines = [HEADER.rstrip("\n"), "", "## Settings", ""]
    lines.append("| setting | `[vars]` key / file key | environment | flag | default | meaning |")
    lines.append("|---|---|---|---|---|---|")
    for row in rows():
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Other environment variables", "", "| variable | meaning |", "|---|---|"]
    for name, meaning in OTHER_ENVIRONMENT:
        lines.append(f"| `{name}` | {meaning} |")
    return "\n".join(lines) + "\n"


def write_reference(path: Path) -> bool:
    """Write the reference to ``path``; True when the file changed."""
    text = reference_markdown()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
