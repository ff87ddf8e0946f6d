"""gRPC face of the oracle (grpc.aio): streams in, tensors assembled, statuses out, one log
line per call.

Every call is a coroutine on one event loop: a slow or idle stream holds a few KB and no
thread. What blocks runs elsewhere and is awaited: validation, tokenising and the oracle's
calls on the call threads (which wait for the one device thread), the usage store on its own
threads with a time limit. A call is admitted in this order, each step before anything
costlier: its key (UNAUTHENTICATED), its rate, a slot of its key's calls in flight, its budget
(a spent key is refused before its request is read); then the request is read at a minimum
pace, the charge is reserved for the request's digest, and the work runs.

Requests arrive as raw bytes (see `add_to_server`) and are parsed here, so a message that is
not valid protobuf is the caller's error (INVALID_ARGUMENT) with an audit line. Every call runs
inside `_call`, which turns whatever happens into a precise status: an exception no handler
expected ends as INTERNAL with a generic message, its traceback in the log, and never as
gRPC's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from graytune import error_details, tensor_codec
from graytune.contract import CALL_ID_HEADER, TIER_ENTRY_POINTS
from graytune.pixel_adapter import PixelAdapterSpec
from graytune.server.access.auth import UNAUTHENTICATED_MESSAGE, UNKNOWN_CALLER, Authenticator
from graytune.server.access.gradient_guard import protect
from graytune.server.access.rate_limit import RateLimiter
from graytune.server.access.tiers import input_entry_points, may_differentiate, pixel_gradients_refused
from graytune.server.access.usage import GRADIENTS, SAMPLES, budget_of
from graytune.server.compute import validation
from graytune.server.compute.errors import (
    CallerGone,
    DeadlineExceeded,
    HandleExpired,
    InputError,
    OverLimit,
    ShuttingDown,
    StoreUnavailable,
    UploadStalled,
)
from graytune.server.compute.oracle import GradientOracle
from graytune.server.service.admission import Admission
from graytune.server.service.call_record import CallRecord
from graytune.server.service.describe import describe
from graytune.server.service.metrics import ServerMetrics
from graytune.server.service.request_stream import RequestDigest, UploadPace, parse, read_stream
from graytune.server.service.usage_store import SharedRateLimiter, UsageStore, rate_limiter_for
from graytune.tensor_codec import TensorFormatError, shown
from graytune.v1 import oracle_pb2 as pb

log = logging.getLogger("graytune.server")
TOWERS = {pb.IMAGE: "image", pb.TEXT: "text"}


def pixel_adapter_of(header: pb.InputHeader) -> PixelAdapterSpec | None:
    """The pixel adapter a request's header declares (a frugal image call), if any."""
    if not header.HasField("pixel_adapter"):
        return None
    spec = header.pixel_adapter
    return PixelAdapterSpec(spec.layers, spec.channels, spec.kernel_size)


CALL_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
STATUS_OF = {  # what can go wrong with a call -> its gRPC status
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    TensorFormatError: grpc.StatusCode.INVALID_ARGUMENT,
    HandleExpired: grpc.StatusCode.ABORTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    UploadStalled: grpc.StatusCode.DEADLINE_EXCEEDED,
    OverLimit: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CallerGone: grpc.StatusCode.CANCELLED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


class CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def output_dtype(wire_dtype: pb.DataType) -> torch.dtype:
    if wire_dtype == pb.DATA_TYPE_UNSPECIFIED:
        return torch.float32
    if wire_dtype not in tensor_codec.FLOAT_WIRE_DTYPES:
        raise InputError(
            f"output_dtype: {tensor_codec.dtype_name(wire_dtype)} not allowed; expected FLOAT32, FLOAT16 or BFLOAT16"
        )
    return tensor_codec.TORCH_DTYPES[wire_dtype]


class OracleServicer:
    """The four calls of graytune.v1.GradientOracle."""

    def __init__(
        self,
        oracle: GradientOracle,
        auth: Authenticator,
        admission: Admission,
        store: UsageStore | None = None,
        metrics: ServerMetrics | None = None,
        pace: UploadPace | None = None,
        rate_limiter: RateLimiter | SharedRateLimiter | None = None,
    ):
        self.oracle, self.auth, self.admission, self.store = oracle, auth, admission, store
        self.metrics, self.pace = metrics, pace or UploadPace()
        self.rate_limiter = rate_limiter or rate_limiter_for(store)
        # Each admitted call holds at most one of these threads at a time: hashing its request
        # as it arrives, then while it waits for the device.
        self._threads = ThreadPoolExecutor(admission.max_calls, thread_name_prefix="call")
        self._active = 0  # calls inside `_call`
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no call is inside its handler (each has its status and audit line)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- the four calls ------------------------------------------------------------------
    async def Describe(self, request: bytes, context):
        async with self._call("Describe", context) as call:
            parse(pb.DescribeRequest, request, "request")
            key, remaining = call.caller.key, {}
            if key is not None and self.store is not None:
                remaining = {
                    kind: await self.store.remaining(key, kind)
                    for kind in (SAMPLES, GRADIENTS)
                    if budget_of(key, kind) is not None
                }
            response = describe(
                self.oracle.backbone,
                self.oracle.limits,
                call.caller,
                remaining,
                self.admission.max_calls_per_key,
                self.pace,
                self.rate_limiter.scope,
            )
            call.log("OK")
            return response

    async def Embed(self, requests, context):
        async with self._call("Embed", context, billed=SAMPLES) as call:
            request, header = await self._read_inputs(requests, call)
            dtype = output_dtype(header.output_dtype)
            embeddings = await self._in_thread(self.oracle.embed, request, call.caller.id, dtype, context=call.compute)
            call.samples = embeddings.shape[0]
            for message in self._respond(pb.OutputHeader(), {"embeddings": embeddings}, call):
                yield message

    async def Forward(self, requests, context):
        async with self._call("Forward", context, billed=SAMPLES) as call:
            self._require_gradients(call)
            with contextlib.ExitStack() as receiving:

                def announce(header):  # from its header on, the call can join the device's next merged batch
                    call.compute.arrival = receiving.enter_context(self.oracle.receiving(TOWERS.get(header.tower)))

                request, header = await self._read_inputs(requests, call, grad_inputs=True, on_header=announce)
                dtype = output_dtype(header.output_dtype)
                handle, embeddings = await self._in_thread(
                    self.oracle.forward, request, call.caller.id, dtype, context=call.compute
                )
            call.samples = embeddings.shape[0]
            out_header = pb.OutputHeader(handle=handle, handle_ttl_seconds=self.oracle.limits.handle_ttl_seconds)
            for message in self._respond(out_header, {"embeddings": embeddings}, call):
                yield message

    async def Backward(self, requests, context):
        async with self._call("Backward", context, billed=GRADIENTS) as call:
            self._require_gradients(call)
            header, tensors = await self._read(requests, pb.BackwardMessage, call)
            dtype = output_dtype(header.output_dtype)
            embeddings = tensors.get("embeddings")
            rows = int(embeddings.shape[0]) if embeddings is not None and embeddings.dim() > 0 else 0
            if rows:  # else `backward` says what is wrong
                await self._charge(call, GRADIENTS, rows)
            validation.check_names(tensors, ["embeddings"], "Backward")
            grads = await self._in_thread(
                self.oracle.backward, header.handle, tensors, call.caller.id, dtype, context=call.compute
            )
            key = call.caller.key
            if key is not None:
                grads = protect(grads, key.gradient_clip_norm, key.gradient_noise_std)
            call.samples = rows
            for message in self._respond(pb.OutputHeader(), grads, call):
                yield message

    # -- plumbing ------------------------------------------------------------------------
    def _require_gradients(self, call) -> None:
        if not may_differentiate(call.caller.tier):
            raise CallFailed(
                grpc.StatusCode.PERMISSION_DENIED, f"tier '{call.caller.tier}' receives no gradients; use Embed"
            )

    async def _in_thread(self, fn, *args, **kwargs):
        """fn on a call thread (it blocks: tokenising, waiting for the device), awaited."""
        return await asyncio.wrap_future(self._threads.submit(functools.partial(fn, *args, **kwargs)))

    async def _read(self, requests, message_type, call, on_header=lambda header: None):
        # The digest (~1 ms per MiB, on a call thread) only where a charge will be made of it.
        key = call.caller.key
        charged = self.store is not None and key is not None and call.billed and budget_of(key, call.billed) is not None
        digest = RequestDigest(call.method, self._threads) if charged else None
        header, tensors = await read_stream(
            requests, message_type, self.oracle.limits.max_tensor_bytes, self.pace, call.began, digest, on_header
        )
        call.digest = "" if digest is None else await digest.hexdigest()
        call.bytes_in = sum(t.nbytes for t in tensors.values())
        return header, tensors

    async def _read_inputs(self, requests, call, grad_inputs: bool = False, on_header=lambda header: None):
        """-> (checked oracle Request, header). Tier and budget refuse it before the work;
        validation and tokenising run on a call thread."""
        limits = self.oracle.limits

        def check_then(header):
            validation.check_header(header.texts, header.grad_inputs, limits, header.prompt_template)
            adapter = pixel_adapter_of(header)
            if adapter is not None:
                validation.check_pixel_adapter(TOWERS.get(header.tower, "?"), adapter, limits)
            on_header(header)

        header, tensors = await self._read(requests, pb.InputMessage, call, check_then)
        tower = TOWERS.get(header.tower)
        if tower is None:
            raise InputError("tower: must be IMAGE or TEXT")
        adapter = pixel_adapter_of(header)
        # Unknown inputs are bad input (INVALID_ARGUMENT), to be told apart from known ones the
        # tier does not allow (PERMISSION_DENIED); the oracle checks shapes and values.
        validation.check_names(tensors, validation.inputs(tower, adapter), f"the {tower} tower")
        allowed = TIER_ENTRY_POINTS[call.caller.tier]
        for point in input_entry_points(tower, tensors, bool(header.texts)):
            if point not in allowed:
                raise CallFailed(
                    grpc.StatusCode.PERMISSION_DENIED, f"{point}: not an entry point of tier '{call.caller.tier}'"
                )
        refusal = pixel_gradients_refused(call.caller.key, tower, tensors, header.grad_inputs) if grad_inputs else None
        if refusal:
            raise CallFailed(grpc.StatusCode.PERMISSION_DENIED, refusal)
        samples = validation.batch_size(tensors) or len(header.texts)  # what `prepare` will count
        if samples:  # else `prepare` says what is wrong
            # Refused for its size, not for the budget: a batch too large for any key costs nothing.
            batched = next((n for n in validation.BATCHED_INPUTS if n in tensors), "texts")
            validation.check_batch(batched, samples, limits)
            await self._charge(call, SAMPLES, samples)
        request = await self._in_thread(
            self.oracle.prepare,
            tower,
            tensors,
            header.texts,
            header.grad_inputs if grad_inputs else None,
            header.prompt_template,
            adapter,
        )
        return request, header

    async def _charge(self, call, kind: str, samples: int) -> None:
        if self.store is not None and call.caller.key is not None:
            attempt = await self.store.charge(call.caller.key, samples, call.call_id, call.digest, kind)
            if attempt is not None:
                call.attempts.append(attempt)

    def _respond(self, header, tensors, call) -> Iterator[bytes]:
        """The response stream, serialized: the header, then the tensors' chunk messages, made
        as they are sent. The call is served once its last message is handed to gRPC, whether
        or not the caller stays to read the status."""
        header.device_seconds = call.compute.device_seconds
        call.bytes_out = sum(t.nbytes for t in tensors.values())
        messages = itertools.chain(
            [pb.OutputMessage(header=header).SerializeToString()],
            *(tensor_codec.tensor_to_messages(name, t, self.oracle.limits.chunk_bytes) for name, t in tensors.items()),
        )
        message = next(messages)
        for following in messages:  # one message ahead, to know which is the last
            yield message
            message = following
        call.replied = True
        yield message

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context, billed: str | None = None) -> AsyncIterator[CallRecord]:
        """The call's record, admission, deadline and cancellation; every way it can end -> a
        status, an audit line, and its charges settled (served) or refunded (not served)."""
        limit = self.oracle.limits.max_call_seconds
        client_limit = context.time_remaining()  # None without a client deadline
        seconds = limit if client_limit is None else min(limit, client_limit)
        metadata = dict(context.invocation_metadata())
        caller = self.auth.caller_for(metadata.items())
        call = CallRecord(
            method, caller or UNKNOWN_CALLER, self.metrics, deadline=time.monotonic() + seconds, peer=context.peer()
        )
        call.billed = billed
        task = asyncio.current_task()
        assert task is not None  # this coroutine runs in the call's task
        timer = asyncio.get_running_loop().call_later(seconds, self._expire, call, task)
        self._active += 1
        self._idle.clear()
        try:
            async with contextlib.AsyncExitStack() as admitted:
                if caller is None:
                    raise CallFailed(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
                # A call without an id is its own logical call: a repeat of it is charged again.
                call.call_id = _call_id(metadata.get(CALL_ID_HEADER)) or f"~{uuid.uuid4().hex}"
                if billed:  # the calls that cost the device; Describe is answered whatever the rate
                    if caller.key is not None:
                        await self.rate_limiter.acquire(caller.key)
                    admitted.enter_context(self.admission.slot(caller.id))
                    if self.store is not None and caller.key is not None:
                        await self.store.refuse_if_spent(caller.key, billed, call.call_id)
                yield call
            self._settle(call)
            call.log("OK")  # a no-op where the handler logged already
        except GeneratorExit:  # gRPC closed the reply stream: the caller left while it was sent
            call.compute.scope.cancel()
            self._settle(call)
            if call.replied:
                call.log("OK", "the caller left after the whole reply")
            elif call.expired:
                call.log(
                    "DEADLINE_EXCEEDED",
                    f"call still running after its deadline (the server's limit is "
                    f"{limit:g} s, --max-call-seconds); cancelled",
                )
            else:
                call.log("CANCELLED", "the caller left while the reply was sent")
            raise
        except asyncio.CancelledError:  # the caller left, or the call passed its limit
            call.compute.scope.cancel()
            self._settle(call)
            if not call.expired:
                call.log("CANCELLED", "the caller left")
                raise
            task.uncancel()
            await self._fail(
                call,
                context,
                DeadlineExceeded(
                    f"call still running after its deadline (the server's limit is {limit:g} s, "
                    f"--max-call-seconds); cancelled"
                ),
            )
        except Exception as e:
            await self._fail(call, context, e)
        finally:
            timer.cancel()
            self._active -= 1
            if not self._active:
                self._idle.set()

    def _settle(self, call: CallRecord) -> None:
        """Served calls keep their charges; the others let go of them (refunds in the background)."""
        for attempt in call.attempts:
            assert self.store is not None  # attempts are the store's charges
            if call.replied:
                self.store.settle(attempt)
            else:
                self.store.refund_later(attempt)
        if not call.replied:
            call.attempts = []  # the audit line shows no charge for an attempt that was not served

    async def _fail(self, call: CallRecord, context, e: Exception) -> None:
        code, message = self._status_of(e, call)
        for attempt in call.attempts:  # failed calls cost nothing; awaited, so Describe sees it at once
            assert self.store is not None  # attempts are the store's charges
            await self.store.refund(attempt)
        call.attempts = []
        call.log(code.name, message, e.reason if isinstance(e, OverLimit) else "")
        if isinstance(e, OverLimit):  # which limit, for programs, and when to retry
            await context.abort_with_status(error_details.status(code, message, e.reason, e.retry_after))
        await context.abort(code, message)

    @staticmethod
    def _status_of(e: Exception, call: CallRecord) -> tuple[grpc.StatusCode, str]:
        if isinstance(e, CallFailed):
            return e.code, str(e)
        for kind, code in STATUS_OF.items():
            if isinstance(e, kind):
                return code, str(e)
        # A bug of ours: the caller gets no detail, the log gets all of it.
        if isinstance(e, grpc.RpcError):  # the request stream broke: the client left
            return grpc.StatusCode.CANCELLED, "the request stream ended early"
        log.error("call method=%s caller=%s: unexpected error", call.method, call.caller.id, exc_info=e)
        return grpc.StatusCode.INTERNAL, "internal error; the server's log has the details"

    @staticmethod
    def _expire(call: CallRecord, task: asyncio.Task) -> None:
        """The call passed its limit: its queued device work is dropped and its coroutine cancelled."""
        call.expired = True
        call.compute.scope.cancel()
        task.cancel()


def _call_id(value: str | None) -> str:
    if value is None:
        return ""
    if not CALL_ID.fullmatch(value):
        raise InputError(f"{CALL_ID_HEADER}: {shown(value)} is not 1 to 64 letters, digits, '-' or '_'")
    return value


def add_to_server(servicer: OracleServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer with requests left as bytes (parsed by the servicer itself), and
    streamed responses sent as the servicer serialized them (`_respond`)."""
    service = pb.DESCRIPTOR.services_by_name["GradientOracle"]
    handlers = {}
    for method in service.methods:
        if method.client_streaming:  # the contract has only these two kinds
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(getattr(servicer, method.name))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                response_serializer=getattr(pb, method.output_type.name).SerializeToString,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
