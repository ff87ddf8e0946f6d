"""gRPC face of the oracle: streams in, tensors assembled, statuses out, one log line per call.

Requests arrive as raw bytes (see `add_to_server`) and are parsed here, so a message that is
not valid protobuf is the caller's error (INVALID_ARGUMENT) with an audit line, not gRPC's
INTERNAL. Every call runs inside `_call`, which turns whatever happens into a precise status:
an exception no handler expected ends as INTERNAL with a generic message, its traceback in the
log and an audit line, and never as gRPC's UNKNOWN.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import grpc
import torch
from google.protobuf.message import DecodeError

from graytune import error_details, tensor_codec
from graytune.server.access.auth import CURRENT_CALLER
from graytune.server.service.call_record import CallRecord
from graytune.server.service.describe import describe
from graytune.server.compute.errors import (CallerGone, DeadlineExceeded, HandleExpired, InputError, OverLimit,
                                    ShuttingDown)
from graytune.server.access.gradient_guard import protect
from graytune.server.service.metrics import ServerMetrics
from graytune.server.compute.oracle import GradientOracle
from graytune.server.access.tiers import ENTRY_POINTS, input_entry_points, may_differentiate
from graytune.server.access.usage import GRADIENTS, SAMPLES, Budgets, RateLimiter
from graytune.server.compute.validation import TOWER_INPUTS, check_header, check_names
from graytune.server.service.watchdog import Watchdog
from graytune.tensor_codec import TensorAssembler, TensorFormatError, shown
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

log = logging.getLogger("graytune.server")
TOWERS = {pb.IMAGE: "image", pb.TEXT: "text"}
CALL_ID_HEADER = "x-graytune-call-id"  # the client's id of a logical call, the same on retries
CALL_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
STATUS_OF = {  # what can go wrong with a call -> its gRPC status
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    TensorFormatError: grpc.StatusCode.INVALID_ARGUMENT,
    HandleExpired: grpc.StatusCode.ABORTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    OverLimit: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CallerGone: grpc.StatusCode.CANCELLED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


class CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def parse(message_type, data: bytes, what: str):
    try:
        return message_type.FromString(data)
    except DecodeError as e:
        raise InputError(f"{what}: not a valid {message_type.DESCRIPTOR.name} ({e})") from None


def read_stream(messages: Iterable[bytes], message_type, max_tensor_bytes: int,
                on_header: Callable[[object], None] = lambda header: None) -> Tuple[object, Dict[str, torch.Tensor]]:
    """Serialized messages: a header, then tensor chunks -> (header, {name: tensor})."""
    header, assembler = None, TensorAssembler(max_tensor_bytes)
    for i, data in enumerate(messages):
        chunk = tensor_codec.read_chunk(data)  # the usual message, its bytes not copied
        message = parse(message_type, data, f"message {i}") if chunk is None else None
        kind = "chunk" if chunk else message.WhichOneof("kind")
        if kind == "header":
            if header is not None:
                raise InputError("header: sent twice")
            header = message.header
            on_header(header)
        elif kind == "chunk":
            if header is None:
                raise InputError("header: must be the first message of the stream")
            assembler.add(chunk or message.chunk)
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
        self._active = 0  # calls inside `_call`
        self._idle = threading.Condition()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no call is inside its handler (each has its status and audit line)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    # -- the four calls ------------------------------------------------------------------
    def Describe(self, request: bytes, context):
        with self._call("Describe", context) as call:
            parse(pb.DescribeRequest, request, "request")
            response = describe(self.oracle.backbone, self.oracle.limits, call.caller, self.budgets)
            call.log("OK")
            return response

    def Embed(self, request_iterator, context):
        with self._call("Embed", context) as call:
            request, header = self._read_inputs(request_iterator, call)
            dtype = output_dtype(header.output_dtype)
            self._charge(call, SAMPLES, request.samples)
            embeddings = self.oracle.embed(request, call.caller.id, dtype, record=call)
            call.samples = embeddings.shape[0]
            yield from self._respond(pb.OutputHeader(), {"embeddings": embeddings}, call)

    def Forward(self, request_iterator, context):
        with self._call("Forward", context) as call, contextlib.ExitStack() as receiving:
            self._require_gradients(call)
            # From its header on, a call on its way can join the device's next merged batch.
            request, header = self._read_inputs(
                request_iterator, call, grad_inputs=True, on_header=lambda header: receiving.enter_context(
                    self.oracle.receiving(TOWERS.get(header.tower))))
            dtype = output_dtype(header.output_dtype)
            self._charge(call, SAMPLES, request.samples)
            handle, embeddings = self.oracle.forward(request, call.caller.id, dtype, record=call)
            call.samples = embeddings.shape[0]
            out_header = pb.OutputHeader(handle=handle, handle_ttl_seconds=self.oracle.limits.handle_ttl_seconds)
            yield from self._respond(out_header, {"embeddings": embeddings}, call)

    def Backward(self, request_iterator, context):
        with self._call("Backward", context) as call:
            self._require_gradients(call)
            header, tensors = self._read(request_iterator, pb.BackwardMessage, call)
            dtype = output_dtype(header.output_dtype)
            embeddings = tensors.get("embeddings")
            if embeddings is not None and embeddings.dim() > 0:  # else `backward` says what is wrong
                self._charge(call, GRADIENTS, int(embeddings.shape[0]))
            grads = self.oracle.backward(header.handle, tensors, call.caller.id, dtype, record=call)
            key = call.caller.key
            if key is not None:
                grads = protect(grads, key.gradient_clip_norm, key.gradient_noise_std)
            call.samples = int(embeddings.shape[0])
            yield from self._respond(pb.OutputHeader(), grads, call)

    # -- plumbing ------------------------------------------------------------------------
    def _require_gradients(self, call) -> None:
        if not may_differentiate(call.caller.tier):
            raise CallFailed(grpc.StatusCode.PERMISSION_DENIED,
                             f"tier '{call.caller.tier}' receives no gradients; use Embed")

    def _read(self, request_iterator, message_type, call, on_header=lambda header: None):
        header, tensors = read_stream(request_iterator, message_type, self.oracle.limits.max_tensor_bytes,
                                      on_header)
        call.bytes_in = sum(t.nbytes for t in tensors.values())
        return header, tensors

    def _read_inputs(self, request_iterator, call, grad_inputs: bool = False, on_header=lambda header: None):
        """-> (checked oracle Request, header), refused before any device work or charge."""
        def check_then(header):
            check_header(header.texts, header.grad_inputs, self.oracle.limits, header.prompt_template)
            on_header(header)

        header, tensors = self._read(request_iterator, pb.InputMessage, call, check_then)
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
        request = self.oracle.prepare(tower, tensors, header.texts,
                                      header.grad_inputs if grad_inputs else None, header.prompt_template)
        return request, header

    def _charge(self, call, kind: str, samples: int) -> None:
        if self.budgets is not None and call.caller.key is not None:
            call.charged[kind] = self.budgets.charge(call.caller.key, samples, call.call_id, kind)

    def _refund(self, call) -> None:
        for kind, samples in call.charged.items():  # empty unless budgets charged it
            if samples:
                self.budgets.refund(call.caller.key, samples, call.call_id, kind)
        call.charged = {}

    def _respond(self, header, tensors, call) -> Iterator[bytes]:
        """The response stream, serialized: the header, then the tensors' chunk messages."""
        header.device_seconds = call.device_seconds
        yield pb.OutputMessage(header=header).SerializeToString()
        for name, tensor in tensors.items():
            call.bytes_out += tensor.nbytes
            yield from tensor_codec.tensor_to_messages(name, tensor, self.oracle.limits.chunk_bytes)
        call.log("OK")

    @contextlib.contextmanager
    def _call(self, method: str, context):
        """The call's record, its deadline and cancellation; every way it can end -> a status,
        an audit line and, unless it ended OK, a refund of what it was charged."""
        limit = self.oracle.limits.max_call_seconds
        client_limit = context.time_remaining()  # None without a client deadline
        seconds = limit if client_limit is None else min(limit, client_limit)
        metadata = dict(context.invocation_metadata())
        call = CallRecord(method, CURRENT_CALLER.get(), self.metrics, deadline=time.monotonic() + seconds)
        watch = self.watchdog.watch(call.deadline, lambda: self._expire(call, context, limit))
        # When the call ends, any way: a caller gone drops its queued work (a no-op once done).
        context.add_callback(lambda: (self.watchdog.done(watch), call.scope.cancel()))
        with self._idle:
            self._active += 1
        try:
            call.call_id = _call_id(metadata.get(CALL_ID_HEADER))
            if call.caller.key is not None:
                self.rate_limiter.acquire(call.caller.key)
            yield call
        except GeneratorExit:  # gRPC closed the reply stream: the caller left while it was sent
            self._refund(call)
            call.log("CANCELLED", "the caller left while the reply was sent")
            raise
        except Exception as e:
            code, message = self._status_of(e, call)
            self._refund(call)  # failed calls cost nothing
            call.log(code.name, message)  # a no-op after the watchdog's line
            if isinstance(e, OverLimit):  # which limit, for programs, and when to retry
                context.abort_with_status(error_details.status(code, message, e.reason, e.retry_after))
            else:
                context.abort(code, message)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    @staticmethod
    def _status_of(e: Exception, call: CallRecord) -> Tuple[grpc.StatusCode, str]:
        if isinstance(e, CallFailed):
            return e.code, str(e)
        for kind, code in STATUS_OF.items():
            if isinstance(e, kind):
                return code, str(e)
        if isinstance(e, grpc.RpcError):  # the stream broke: the client left, or the watchdog cancelled
            return grpc.StatusCode.CANCELLED, "the request stream ended early"
        # A bug of ours: the caller gets no detail, the log gets all of it.
        log.error("call method=%s caller=%s: unexpected error", call.method, call.caller.id, exc_info=e)
        return grpc.StatusCode.INTERNAL, "internal error; the server's log has the details"

    @staticmethod
    def _expire(call: CallRecord, context, limit: float) -> None:
        """The watchdog's verdict on a call past its deadline: logged, then cancelled."""
        if context.is_active():
            call.log("DEADLINE_EXCEEDED", f"call still running after its deadline (the server's "
                                          f"limit is {limit:g} s, --max-call-seconds); cancelled")
            context.cancel()


def _call_id(value: Optional[str]) -> str:
    if value is None:
        return ""
    if not CALL_ID.fullmatch(value):
        raise InputError(f"{CALL_ID_HEADER}: {shown(value)} is not 1 to 64 letters, digits, '-' or '_'")
    return value


def add_to_server(servicer: OracleServicer, server: grpc.Server) -> None:
    """Registers the servicer with requests left as bytes (parsed by the servicer itself), and
    streamed responses sent as the servicer serialized them (`_respond`)."""
    service = pb.DESCRIPTOR.services_by_name["GradientOracle"]
    handlers = {}
    for method in service.methods:
        if method.client_streaming:  # the contract has only these two kinds
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(getattr(servicer, method.name))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name), response_serializer=getattr(pb, method.output_type.name).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
