"""What can go wrong with a caller's request; the servicer maps each to a gRPC status."""


class InputError(ValueError):
    """Bad input (INVALID_ARGUMENT). The message names the field and the limit."""


class HandleExpired(LookupError):
    """A handle this server issued but no longer holds (ABORTED: re-run Forward)."""


class OverLimit(RuntimeError):
    """A request within the contract that a configured limit refuses (RESOURCE_EXHAUSTED).
    `reason` names the limit for programs and `retry_after` (seconds) says when waiting is
    enough (graytune.error_details)."""

    def __init__(self, message: str, reason: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason, self.retry_after = reason, retry_after


class DeadlineExceeded(TimeoutError):
    """The call's deadline passed before the device took up its work (DEADLINE_EXCEEDED)."""


class CallerGone(Exception):
    """The caller left (cancelled, disconnected) before its work started (CANCELLED)."""


class ShuttingDown(Exception):
    """The server stopped before the call's work started (UNAVAILABLE: retry elsewhere)."""


class StoreUnavailable(Exception):
    """The usage store did not answer in time (UNAVAILABLE: the client retries, same call id)."""


class UploadStalled(TimeoutError):
    """The request stream fell below the server's minimum upload rate (DEADLINE_EXCEEDED)."""
