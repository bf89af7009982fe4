"""Domain errors that carry their HTTP status.

Every layer below the doors (service, store, credentials) raises these; one middleware in
``web/middleware.py`` renders them as JSON under ``/api/`` and as HTML pages elsewhere, and the RPC target
turns them into Cap'n Web rejections. Handlers never build error responses by hand.
"""

from __future__ import annotations

from typing import Any


class StoreError(Exception):
    """A store backend failure that is not a precondition failure (network, permissions, disk).
    Raised by ``cloudsession.store``; the share service turns it into ``StoreUnavailable``."""


class ShareError(Exception):
    """Base class: ``status`` is the HTTP status, ``message`` the client-facing text."""

    status: int = 500
    message: str = "Internal Server Error"
    # The JS error class name used when the error travels over Cap'n Web RPC.
    rpc_name: str = "Error"
    # Raised before the request body was (all) read: the answer ends the connection, so that
    # whatever body is still on its way is discarded rather than parsed as the next request.
    close_connection: bool = False

    def __init__(self, message: str | None = None, *, detail: Any = None) -> None:
        if message is not None:
            self.message = message
        self.detail = detail
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON body for this error (the reference's ``{"error": ...}`` shape)."""
        return {"error": self.message}

    def headers(self) -> dict[str, str]:
        """Response headers this error adds (``Retry-After`` on a 429 or a 503), JSON or HTML alike."""
        return {}

    @property
    def rpc_message(self) -> str:
        """The message of the Cap'n Web rejection (no headers there: what they say goes in it)."""
        return self.message


class ValidationFailed(ShareError):
    """Bad input: the request is rejected before anything is read or written."""

    status = 400
    rpc_name = "TypeError"

    def __init__(self, message: str = "Invalid request", issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, detail=issues or [])

    def body(self) -> dict[str, Any]:
        # The reference's schema errors look like {"success": false, "error": {name, message}}.
        # Clients only check the status; we keep the envelope and make the message readable.
        return {
            "success": False,
            "error": {"name": "ValidationError", "message": self.message, "issues": self.detail},
        }


class MalformedJSON(ValidationFailed):
    def __init__(self) -> None:
        super().__init__("Malformed JSON in request body")


class Unauthorized(ShareError):
    status = 401
    message = "Unauthorized"


class InvalidSecret(ShareError):
    status = 403
    message = "Invalid secret"


class ShareNotFound(ShareError):
    """Unknown share on write routes (sync, delete): the reference's wording."""

    status = 404
    message = "Share not found"


class SessionNotFound(ShareError):
    """Unknown share on read routes (GET, metadata): the reference's wording, kept for COMPAT."""

    status = 404
    message = "Session not found"


class ShareConflict(ShareError):
    status = 409
    message = "Conflict"


class ShareGone(ShareError):
    status = 410
    message = "Share expired"


class PayloadTooLarge(ShareError):
    status = 413
    message = "Payload too large"


class BodyTooLarge(PayloadTooLarge):
    """``Content-Length`` above the limit: refused before any of the body is read."""

    close_connection = True


class RequestTimeout(ShareError):
    """The request body did not arrive within ``body_timeout_seconds``."""

    status = 408
    message = "Request body not received in time"
    close_connection = True


class BodyAborted(ShareError):
    """The client went away (or broke the framing) in the middle of its body."""

    status = 400
    message = "Request body incomplete"
    close_connection = True


class UnsupportedEncoding(ShareError):
    """A ``Content-Encoding`` on a request body: compressed bodies are refused (docs/hardening.md)."""

    status = 415
    message = "Compressed request bodies are not accepted; send the body without Content-Encoding"
    close_connection = True


class ShareFinal(ShareError):
    status = 409
    message = "This share is final: it can no longer be changed (its owner or the admin can unfreeze it)"


class StoreUnavailable(ShareError):
    """The store failed, did not answer within its deadline, or the share kept changing. The
    client retries after ``Retry-After`` seconds (a write whose answer was lost may have landed:
    op ids and ``Idempotency-Key`` make the retry safe). Never a 500: a store fault is not a bug."""

    status = 503
    message = "Storage unavailable"
    retry_after_seconds: int = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class RateLimited(ShareError):
    """Too many requests of one kind from one client address (web/ratelimit.py)."""

    status = 429
    message = "Too many requests"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    @property
    def rpc_message(self) -> str:
        return f"{self.message}; retry in {self.retry_after} s"

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "retryAfter": self.retry_after}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

