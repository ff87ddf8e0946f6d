"""graytune.error_details: a limit's reason and delay survive the trailer, and whatever a peer
puts in the trailer is read or ignored, never raised (test_credentials and test_hostile_callers
read them from a real server)."""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from graytune import error_details

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Failed(grpc.RpcError):
    """What the client reads off a failed call: its status, message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple):
        self._status = code, details, trailing_metadata

    def code(self):
        return self._status[0]

    def details(self):
        return self._status[1]

    def trailing_metadata(self):
        return self._status[2]


def sent(status) -> Failed:
    return Failed(status.code, status.details, status.trailing_metadata)


@given(st.floats(0, 1e6), st.sampled_from([error_details.RATE_LIMITED, error_details.BUDGET_EXHAUSTED]))
def test_reason_and_delay_round_trip(delay, reason):
    found = error_details.refusal(sent(error_details.status(EXHAUSTED, "limited", reason, delay)))
    assert found.reason == reason
    # Whole nanoseconds on the wire, rounded up, and float64's relative 1e-16 on the way back.
    assert abs(found.retry_after - delay) <= 1e-9 + 1e-15 * delay


def test_no_delay_when_waiting_will_not_help():
    status = error_details.status(EXHAUSTED, "budget", error_details.BUDGET_EXHAUSTED)
    assert error_details.refusal(sent(status)) == (error_details.BUDGET_EXHAUSTED, None)


@given(st.binary(max_size=200), st.text(max_size=20))
def test_any_trailer_is_read_or_ignored(trailer, message):
    found = error_details.refusal(Failed(EXHAUSTED, message, (("grpc-status-details-bin", trailer),)))
    assert found.retry_after is None or found.retry_after >= 0
