"""gRPC face of the oracle: streams in, tensors assembled, statuses out, one log line per call."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import grpc
import torch

from graytune import tensor_codec
from graytune.server.auth import CURRENT_CALLER
from graytune.server.call_record import CallRecord
from graytune.server.describe import describe
from graytune.server.errors import DeadlineExceeded, HandleExpired, InputError, OverLimit
from graytune.server.metrics import ServerMetrics
from graytune.server.oracle import GradientOracle
from graytune.server.tiers import ENTRY_POINTS, input_entry_points, may_differentiate
from graytune.server.usage import Budgets, RateLimiter
from graytune.server.validation import TOWER_INPUTS, batch_size, check_names
from graytune.server.watchdog import Watchdog
from graytune.tensor_codec import TensorAssembler, TensorFormatError
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

TOWERS = {pb.IMAGE: "image", pb.TEXT: "text"}


class CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def status_on_error() -> Iterator[None]:
    """Turns what can go wrong into a precise gRPC status; the server keeps serving."""
    try:
        yield
    except (InputError, TensorFormatError) as e:
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    except HandleExpired as e:
        raise CallFailed(grpc.StatusCode.ABORTED, str(e)) from None
    except DeadlineExceeded as e:
        raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
    except OverLimit as e:
        raise CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None


def read_stream(messages: Iterable, max_tensor_bytes: int,
                on_header: Callable[[object], None] = lambda header: None) -> Tuple[object, Dict[str, torch.Tensor]]:
    """A header message, then tensor chunks -> (header, {name: tensor})."""
    header, assembler = None, TensorAssembler(max_tensor_bytes)
    for message in messages:
        kind = message.WhichOneof("kind")
        if kind == "header":
            if header is not None:
                raise InputError("header: sent twice")
            header = message.header
            on_header(header)
        elif kind == "chunk":
            if header is None:
                raise InputError("header: must be the first message of the stream")
            assembler.add(message.chunk)
        else:
            raise InputError("message: neither header nor chunk")
    if header is None:
        raise InputError("header: missing")
    return header, assembler.finish()


def output_dtype(wire_dtype: int) -> torch.dtype:
    if wire_dtype == pb.DATA_TYPE_UNSPECIFIED:
        return torch.float32
    if wire_dtype not in tensor_codec.FLOAT_WIRE_DTYPES:
        raise InputError(f"output_dtype: {tensor_codec.dtype_name(wire_dtype)} not allowed; expected "
                         f"FLOAT32, FLOAT16 or BFLOAT16")
    return tensor_codec.TORCH_DTYPES[wire_dtype]


class OracleServicer(pb_grpc.GradientOracleServicer):
    """The four calls, for the caller the auth interceptor found (`CURRENT_CALLER`)."""

    def __init__(self, oracle: GradientOracle, budgets: Optional[Budgets] = None,
                 rate_limiter: Optional[RateLimiter] = None, metrics: Optional[ServerMetrics] = None):
        self.oracle = oracle
        self.budgets = budgets
        self.metrics = metrics
        self.rate_limiter = rate_limiter or RateLimiter()
        self.watchdog = Watchdog()

    # -- the four calls ------------------------------------------------------------------
    def Describe(self, request, context):
        with self._call("Describe", context) as call:
            response = describe(self.oracle.backbone, self.oracle.limits, call.caller, self.budgets)
        call.log("OK")
        return response

    def Embed(self, request_iterator, context):
        with self._call("Embed", context) as call:
            tower, header, tensors = self._read_inputs(request_iterator, call)
            dtype = output_dtype(header.output_dtype)
            embeddings = self.oracle.embed(tower, tensors, header.texts, call.caller.id, dtype, record=call)
            call.samples = embeddings.shape[0]
        yield from self._respond(pb.OutputHeader(), {"embeddings": embeddings}, call)

    def Forward(self, request_iterator, context):
        with self._call("Forward", context) as call, contextlib.ExitStack() as receiving:
            self._require_gradients(call)
            # From its header on, a call on its way can join the device's next merged batch.
            tower, header, tensors = self._read_inputs(
                request_iterator, call, on_header=lambda header: receiving.enter_context(
                    self.oracle.receiving(TOWERS.get(header.tower))))
            dtype = output_dtype(header.output_dtype)
            handle, embeddings = self.oracle.forward(tower, tensors, header.texts,
                                                     header.grad_inputs, call.caller.id, dtype, record=call)
            call.samples = embeddings.shape[0]
        out_header = pb.OutputHeader(handle=handle, handle_ttl_seconds=self.oracle.limits.handle_ttl_seconds)
        yield from self._respond(out_header, {"embeddings": embeddings}, call)

    def Backward(self, request_iterator, context):
        with self._call("Backward", context) as call:
            self._require_gradients(call)
            header, tensors = self._read(request_iterator, call)
            dtype = output_dtype(header.output_dtype)
            grads = self.oracle.backward(header.handle, tensors, call.caller.id, dtype, record=call)
            call.samples = tensors["embeddings"].shape[0]
        yield from self._respond(pb.OutputHeader(), grads, call)

    # -- plumbing ------------------------------------------------------------------------
    def _require_gradients(self, call) -> None:
        if not may_differentiate(call.caller.tier):
            raise CallFailed(grpc.StatusCode.PERMISSION_DENIED,
                             f"tier '{call.caller.tier}' receives no gradients; use Embed")

    def _read(self, request_iterator, call, **kwargs):
        header, tensors = read_stream(request_iterator, self.oracle.limits.max_tensor_bytes, **kwargs)
        call.bytes_in = sum(t.nbytes for t in tensors.values())
        return header, tensors

    def _read_inputs(self, request_iterator, call, **kwargs):
        header, tensors = self._read(request_iterator, call, **kwargs)
        tower = TOWERS.get(header.tower)
        if tower is None:
            raise InputError("tower: must be IMAGE or TEXT")
        # Unknown inputs are bad input (INVALID_ARGUMENT), to be told apart from known ones the
        # tier does not allow (PERMISSION_DENIED); the oracle checks names again with shapes.
        check_names(tensors, TOWER_INPUTS[tower], f"the {tower} tower")
        allowed = ENTRY_POINTS[call.caller.tier]
        for point in input_entry_points(tower, tensors, bool(header.texts)):
            if point not in allowed:
                raise CallFailed(grpc.StatusCode.PERMISSION_DENIED,
                                 f"{point}: not an entry point of tier '{call.caller.tier}'")
        self._charge(call, len(header.texts) or batch_size(tensors))
        return tower, header, tensors

    def _charge(self, call, samples: int) -> None:
        if self.budgets is not None and call.caller.key is not None:
            self.budgets.charge(call.caller.key, samples)
            call.charged = samples

    def _respond(self, header, tensors, call) -> Iterator[pb.OutputMessage]:
        header.device_seconds = call.device_seconds
        yield pb.OutputMessage(header=header)
        for chunk in tensor_codec.tensors_to_chunks(tensors, self.oracle.limits.chunk_bytes):
            call.bytes_out += len(chunk.data)
            yield pb.OutputMessage(chunk=chunk)
        call.log("OK")

    @contextlib.contextmanager
    def _call(self, method: str, context):
        limit = self.oracle.limits.max_call_seconds
        client_limit = context.time_remaining()  # None without a client deadline
        seconds = limit if client_limit is None else min(limit, client_limit)
        call = CallRecord(method, CURRENT_CALLER.get(), self.metrics, deadline=time.monotonic() + seconds)
        watch = self.watchdog.watch(call.deadline, lambda: self._expire(call, context, limit))
        context.add_callback(lambda: self.watchdog.done(watch))  # when the call ends, any way
        try:
            with status_on_error():
                if call.caller.key is not None:
                    self.rate_limiter.acquire(call.caller.key)
                yield call
        except CallFailed as failure:
            if call.charged:  # refused calls cost nothing
                self.budgets.charge(call.caller.key, -call.charged)
            call.log(failure.code.name, str(failure))
            context.abort(failure.code, str(failure))
        except grpc.RpcError:  # the stream broke: the client left, or the watchdog cancelled
            call.log("CANCELLED", "the request stream ended early")  # no-op after the watchdog's line
            context.abort(grpc.StatusCode.CANCELLED, "call cancelled")

    @staticmethod
    def _expire(call: CallRecord, context, limit: float) -> None:
        """The watchdog's verdict on a call past its deadline: logged, then cancelled."""
        if context.is_active():
            call.log("DEADLINE_EXCEEDED", f"call still running after its deadline (the server's "
                                          f"limit is {limit:g} s, --max-call-seconds); cancelled")
            context.cancel()
