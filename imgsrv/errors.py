"""One error hierarchy for the whole server.

Every failure a client can cause or observe is an :class:`ImgsrvError` subclass that knows its
HTTP status, a stable problem type and whether a retry may succeed. Routes turn them into
``application/problem+json`` bodies (RFC 9457); job workers use ``retryable`` to decide between
backoff and failing at once.
"""

from __future__ import annotations

from typing import ClassVar


class ImgsrvError(Exception):
    """Base class: an error with an HTTP status and a problem+json shape."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def problem_type(self) -> str:
        return f"urn:imgsrv:problem:{self.slug}"

    def problem(self) -> dict[str, object]:
        """The problem+json body for this error."""
        return {
            "type": self.problem_type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class BadRequest(ImgsrvError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


class NamedBadRequest(BadRequest):
    """A bad request whose problem body names the input at fault, under ``culprit_key``."""

    culprit_key = "input"

    def __init__(self, culprit: str, detail: str) -> None:
        super().__init__(detail)
        self.culprit = culprit

    def problem(self) -> dict[str, object]:
        body = super().problem()
        body[self.culprit_key] = self.culprit
        return body


class InvalidOption(NamedBadRequest):
    """A URL option that is unknown or whose arguments are malformed."""

    title = "Invalid option"
    slug = "invalid-option"
    culprit_key = "option"

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(option, f"option {option!r}: {reason}")

    @property
    def option(self) -> str:
        return self.culprit


class InvalidSource(BadRequest):
    title = "Invalid source"
    slug = "invalid-source"


class Unauthorized(ImgsrvError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ImgsrvError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class SignatureError(Forbidden):
    title = "Invalid signature"
    slug = "invalid-signature"


class ForbiddenSource(Forbidden):
    """The source address or host is refused (SSRF guard, host allow-list, path traversal)."""

    title = "Forbidden source"
    slug = "forbidden-source"


class NotFound(ImgsrvError):
    status = 404
    title = "Not found"
    slug = "not-found"


class SourceNotFound(NotFound):
    title = "Source not found"
    slug = "source-not-found"


class Conflict(ImgsrvError):
    """The request does not fit the current state of what it names."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class TooLarge(ImgsrvError):
    status = 413
    title = "Source too large"
    slug = "too-large"


class SourceTooLarge(TooLarge):
    """The source has more bytes than ``max_source_bytes``."""

    slug = "source-too-large"


class ImageTooLarge(TooLarge):
    """The source declares more pixels or frames than the limits allow."""

    title = "Image too large"
    slug = "image-too-large"


class UnsupportedFormat(ImgsrvError):
    status = 415
    title = "Unsupported image format"
    slug = "unsupported-format"


class UndecodableImage(ImgsrvError):
    """The bytes look like an image but are truncated or corrupt."""

    status = 422
    title = "Undecodable image"
    slug = "undecodable-image"


class SourceError(ImgsrvError):
    """The origin answered with an error, or the connection failed."""

    status = 502
    title = "Source failed"
    slug = "source-failed"
    retryable = True


class Unavailable(ImgsrvError):
    """503: the request may succeed later; the answer says when in ``Retry-After``."""

    status = 503
    title = "Service unavailable"
    slug = "unavailable"
    retryable = True

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    """Too many transforms in flight: shed load instead of queueing without bound."""

    title = "Overloaded"
    slug = "overloaded"


class SourceTimeout(ImgsrvError):
    status = 504
    title = "Source timeout"
    slug = "source-timeout"
    retryable = True
