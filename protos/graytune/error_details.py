"""Why a limit refused a call, for programs: gRPC's rich error model (google.rpc.Status in the
`grpc-status-details-bin` trailer, read and written by grpcio-status), so no client has to match
the message text, which is for people.

A RESOURCE_EXHAUSTED refusal carries an ErrorInfo (domain "graytune.v1", one of the reasons
below) and, when waiting is all it takes, a RetryInfo with the delay.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "graytune.v1"
BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"  # the key's budget is spent; budgets do not refill
RATE_LIMITED = "RATE_LIMITED"  # the key's calls per second; RetryInfo says when
GRAPH_TOO_LARGE = "GRAPH_TOO_LARGE"  # one batch's graph is over the cap of graphs held
TOO_MANY_CALLS = "TOO_MANY_CALLS"  # the key's (or the server's) calls in flight; RetryInfo says when
WAITED_OUT = (RATE_LIMITED, TOO_MANY_CALLS)  # refusals a client waits out for the RetryInfo's delay


class Refusal(NamedTuple):
    reason: str | None  # None: the status carried no ErrorInfo of ours
    retry_after: float | None  # seconds; None: waiting will not help


def status(code: grpc.StatusCode, message: str, reason: str, retry_after: float | None = None) -> grpc.Status:
    """A status for `context.abort_with_status` with the reason (and delay) attached."""
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))]
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(retry_after * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details))


def refusal(error: grpc.RpcError) -> Refusal:
    """The reason and delay a failed call carries; (None, None) when it carries none, or
    details that do not match its status (a proxy's, or a hostile server's)."""
    try:
        # from_call reads code(), details() and trailing_metadata(): a failed call's RpcError has them.
        found = rpc_status.from_call(cast(grpc.Call, error))
        reason = retry_after = None
        for detail in found.details if found is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason if info.domain == DOMAIN else reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = max(0.0, info.retry_delay.seconds + info.retry_delay.nanos * 1e-9)
    except (ValueError, DecodeError):  # undecodable, or a code or message that contradicts the status
        return Refusal(None, None)
    return Refusal(reason, retry_after)


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
