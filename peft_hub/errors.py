"""One error hierarchy shared by the hub, the client and the CLI.

Each error has a stable ``code`` and an HTTP ``status_code``. The hub renders
``{"error": code, "detail": message}``; the client looks the code up in
:data:`ERRORS_BY_CODE` and raises the same class again, so callers catch the
same exception whether the failure happened locally or on the server.
"""

from __future__ import annotations

from typing import ClassVar

ERRORS_BY_CODE: dict[str, type[PeftHubError]] = {}


class PeftHubError(Exception):
    """Base class of every error peft-hub raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    #: On an error the client rebuilt from a response: the status as sent, and
    #: the seconds its Retry-After asked for (what the retry policy decides on).
    http_status: int | None = None
    retry_after_header: float | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The first class to claim a code owns it; subclasses that only add a
        # standard base (e.g. FileNotFoundError) keep their parent's code.
        if "code" in cls.__dict__:
            ERRORS_BY_CODE.setdefault(cls.code, cls)

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        #: Response headers and extra body fields the hub sends with this error
        #: (set with :meth:`annotate`), so routes raise instead of building responses.
        self.headers: dict[str, str] = {}
        self.extra: dict[str, object] = {}

    def __str__(self) -> str:
        return self.message

    def annotate(
        self, *, headers: dict[str, str] | None = None, extra: dict[str, object] | None = None,
    ) -> PeftHubError:
        """Add response headers and body fields (never ``error`` or ``detail``); returns the error, to raise."""
        self.headers.update(headers or {})
        self.extra.update({k: v for k, v in (extra or {}).items() if k not in ("error", "detail")})
        return self

    def to_dict(self) -> dict[str, object]:
        """The JSON body the hub sends for this error."""
        return {**self.extra, "error": self.code, "detail": self.message}


ERRORS_BY_CODE[PeftHubError.code] = PeftHubError


def error_from_code(code: str | None, message: str, status_code: int | None = None) -> PeftHubError:
    """Rebuild the exception the server raised from its error code.

    Args:
        code: the ``error`` field of the response body, if any.
        message: the ``detail`` field.
        status_code: the HTTP status, used when the code is unknown.

    Returns:
        An instance of the matching class, or of the class that best fits the
        status when the code is unknown (a newer server, a proxy's error page).
    """
    cls = ERRORS_BY_CODE.get(code or "")
    if cls is None:
        cls = _BY_STATUS.get(status_code or 500, PeftHubError)
    return cls(message)


# --- input -----------------------------------------------------------------


class InvalidInputError(PeftHubError, ValueError):
    """The request or argument is malformed."""

    code = "invalid_input"
    status_code = 422


class InvalidNameError(InvalidInputError):
    """The name is not a valid ``owner/name``."""

    code = "invalid_name"


class InvalidAdapterError(InvalidInputError):
    """The adapter directory or one of its files is not valid."""

    code = "invalid_adapter"


class UnsafeFormatError(InvalidAdapterError):
    """The file is in an unsafe serialization format (pickle)."""

    code = "unsafe_format"


class ChecksumMismatchError(InvalidInputError):
    """Bytes received do not match the declared sha256 or size."""

    code = "checksum_mismatch"


class PayloadTooLargeError(InvalidInputError):
    """The request body is larger than this route accepts."""

    code = "payload_too_large"
    status_code = 413


class UploadRequiredError(InvalidInputError):
    """A commit named a blob its author has not uploaded (and cannot read)."""

    code = "upload_required"


# --- lookup ----------------------------------------------------------------


class NotFoundError(PeftHubError, LookupError):
    """The thing asked for does not exist (or is not visible to you)."""

    code = "not_found"
    status_code = 404


class AdapterNotFoundError(NotFoundError):
    """No such adapter, or it is private and you have no access."""

    code = "adapter_not_found"


class RevisionNotFoundError(NotFoundError):
    """No such revision or tag."""

    code = "revision_not_found"


class EntryNotFoundError(NotFoundError, FileNotFoundError):
    """No such file in this revision."""

    code = "entry_not_found"


class NamespaceNotFoundError(NotFoundError):
    """No such namespace."""

    code = "namespace_not_found"


# --- auth ------------------------------------------------------------------


class AuthenticationError(PeftHubError):
    """No valid token was given."""

    code = "unauthenticated"
    status_code = 401


class PermissionDeniedError(PeftHubError, PermissionError):
    """The token does not allow this."""

    code = "forbidden"
    status_code = 403


class RateLimitedError(PeftHubError):
    """Too many failed attempts; retry after ``retry_after`` seconds."""

    code = "rate_limited"
    status_code = 429

    def __init__(self, message: str = "", retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConflictError(PeftHubError):
    """The request conflicts with the current state."""

    code = "conflict"
    status_code = 409


# --- infrastructure --------------------------------------------------------


class StorageError(PeftHubError, OSError):
    """The blob store failed."""

    code = "storage_error"
    status_code = 502


class UnavailableError(PeftHubError):
    """A service the hub depends on is down or too busy; retry after ``retry_after`` seconds."""

    code = "unavailable"
    status_code = 503

    def __init__(self, message: str = "", retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageUnavailableError(StorageError, UnavailableError):
    """The blob store did not answer, failed (5xx) or is saturated; retry later."""

    code = "storage_unavailable"
    status_code = 503


class DatabaseUnavailableError(UnavailableError):
    """The database is down, or too busy (locks, timeouts, no free connection); retry later."""

    code = "database_unavailable"


class HubUnreachableError(PeftHubError, ConnectionError):
    """The hub could not be reached."""

    code = "hub_unreachable"
    status_code = 503


class NotImplementedByHubError(PeftHubError):
    """The client asked for a protocol feature this hub does not offer (e.g. Xet storage)."""

    code = "not_implemented"
    status_code = 501


# --- compose ---------------------------------------------------------------


class ComposeError(PeftHubError, ValueError):
    """Adapters cannot be composed as asked."""

    code = "compose_error"
    status_code = 422


class IncompatibleAdaptersError(ComposeError):
    """The adapters do not fit together (base model, shapes)."""

    code = "incompatible_adapters"


class UnsupportedAdapterError(ComposeError):
    """The adapter's method or options cannot be composed linearly."""

    code = "unsupported_adapter"


class RankLimitError(ComposeError):
    """The composed rank is above the allowed maximum."""

    code = "rank_limit"


_BY_STATUS: dict[int, type[PeftHubError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
    422: InvalidInputError,
    400: InvalidInputError,
    502: StorageError,
    503: HubUnreachableError,
}
