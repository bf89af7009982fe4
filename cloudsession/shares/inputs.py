"""Request bodies: the pydantic models every door validates a JSON body against.

Unknown keys are ignored, as the reference's zod schemas strip them; a bad body is a
ValidationFailed (400) that names the fields, raised before anything is read or written.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from cloudsession.errors import ValidationFailed


class _Body(BaseModel):
    # Unknown keys are ignored, as the reference's zod schemas strip them.
    model_config = ConfigDict(extra="ignore")


class ShareOptionsBody(_Body):
    """Options of the durable protocol (shares/owner.py), applied only when the share is new: a
    private share, and an expiry as ``ttl`` seconds or ``expiresAt`` epoch milliseconds."""

    private: StrictBool = False
    ttl: StrictInt | None = None
    expiresAt: StrictInt | None = None
    # Validated by shares/lifecycle.parse_labels (bounded object of strings).
    labels: Any = None


class CreateShareBody(ShareOptionsBody):
    sessionID: StrictStr


class SyncBody(_Body):
    secret: StrictStr
    data: list[Any]


class SecretBody(_Body):
    secret: StrictStr


def parse_body(model: type[BaseModel], raw: Any) -> Any:
    """Validate a JSON body against ``model``; a ValidationFailed that names the bad fields."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        issues = [
            {"path": list(err["loc"]), "message": err["msg"], "code": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{'.'.join(map(str, i['path'])) or 'body'}: {i['message']}" for i in issues)
        raise ValidationFailed(f"Invalid request body: {summary}", issues) from None


# -- the durable protocol's bodies (docs/protocol.md) ---------------------------------------------

MAX_OPS_PER_REQUEST = 1000
MAX_DEPENDENCIES = 16
_UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class OpEnvelope(BaseModel):
    """One operation: a sync item plus what makes its delivery idempotent and ordered."""

    model_config = ConfigDict(extra="ignore")

    op_id: StrictStr
    batch_id: StrictStr
    seq: StrictInt = Field(ge=0)
    depends_on: list[StrictStr] | StrictStr | None = None
    expected_cursor: StrictInt | None = Field(None, ge=0)
    capability_epoch: StrictInt | None = Field(None, ge=0)
    item: Any

    @field_validator("op_id")
    @classmethod
    def _uuid7(cls, value: str) -> str:
        value = value.lower()
        if not _UUID7_RE.match(value):
            raise ValueError("must be a UUIDv7 in canonical form")
        return value

    @field_validator("batch_id")
    @classmethod
    def _batch(cls, value: str) -> str:
        if not _BATCH_ID_RE.match(value):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("depends_on")
    @classmethod
    def _deps(cls, value: list[str] | str | None) -> list[str] | str | None:
        deps = [value] if isinstance(value, str) else value or []
        if len(deps) > MAX_DEPENDENCIES:
            raise ValueError(f"at most {MAX_DEPENDENCIES} dependencies")
        if any(not _UUID7_RE.match(d.lower()) for d in deps):
            raise ValueError("dependencies must be op ids (UUIDv7)")
        return value

    def dependencies(self) -> list[str]:
        deps = [self.depends_on] if isinstance(self.depends_on, str) else self.depends_on or []
        return [d.lower() for d in deps]


class AppendOpsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    secret: StrictStr
    epoch: StrictInt | None = None
    ops: list[OpEnvelope] = Field(max_length=MAX_OPS_PER_REQUEST)


class PrivacyBody(SecretBody):
    private: bool = Field(strict=True)


class ExpiryBody(SecretBody):
    # Neither (or ``expiresAt: null``): the share no longer expires.
    ttl: StrictInt | None = None
    expiresAt: StrictInt | None = None
