"""What can go wrong with a caller's request; the servicer maps each to a gRPC status."""


class InputError(ValueError):
    """Bad input (INVALID_ARGUMENT). The message names the field and the limit."""


class HandleExpired(LookupError):
    """A handle this server issued but no longer holds (ABORTED: re-run Forward)."""


class OverLimit(RuntimeError):
    """A request within the contract that a configured limit refuses (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(TimeoutError):
    """The call's deadline passed before the device took up its work (DEADLINE_EXCEEDED)."""


class CallerGone(Exception):
    """The caller left (cancelled, disconnected) before its work started (CANCELLED)."""


class ShuttingDown(Exception):
    """The server stopped before the call's work started (UNAVAILABLE: retry elsewhere)."""
