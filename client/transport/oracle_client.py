"""OracleClient: the customer's connection to a gradient oracle.

    with OracleClient("127.0.0.1:50051") as oracle:
        info = oracle.describe()
        emb = oracle.embed_images(pixels)                        # (B, E)
        handle, emb = oracle.forward(pb.IMAGE, {"pixels": pixels}, grad_inputs=["pixels"])  # graph kept
        grads = oracle.backward(handle, d_loss_d_emb)            # {"pixels": (B, 3, H, W)}

Every call has a deadline and fails with `OracleError` (one type for every transport or server
error). While the server is UNAVAILABLE (or cancels the call: see RETRIED) the call waits for it,
up to `reconnect_timeout` (a restart, a replica taking over), and is sent again with the same
call id (CALL_ID_HEADER). A server this client never reached is waited for `connect_timeout` only, and
a TLS handshake that fails is an error at once that says which check failed (tls_probe). A call
refused for the key's rate or its calls in flight waits as long as the server says, within the
same time. Any other refusal is final: `OracleError.reason` says which limit it was.
Tensors travel as chunk streams, in float32 or, per client, in bfloat16/float16 to halve the
bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graytune import error_details, tensor_codec
from graytune.client.transport import tls_probe
from graytune.client.transport.oracle_info import OracleInfo
from graytune.contract import AFFINITY_HEADER, AUTHORIZATION_HEADER, CALL_ID_HEADER, PROTOCOL_VERSION
from graytune.pixel_adapter import PREFIX, PixelAdapterSpec
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

Tensors = dict[str, torch.Tensor]
MESSAGE_LIMIT = 64 << 20  # far above the chunk size; set on purpose, not gRPC's 4 MB default
# This client never cancels its own calls, so CANCELLED comes from the server's side: a server
# shutting down cancels calls it had accepted but not started (seen on SIGTERM). Like
# UNAVAILABLE, that is worth a retry: the next attempt finds a restarted server or a replica.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# gRPC reconnects a lost channel by itself, with backoff; by default that backoff grows to
# 120 s, so a server back from a restart could wait minutes to be noticed. Capped at 5 s here.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 5000)]
FIRST_BACKOFF, MAX_BACKOFF = 0.2, 5.0  # between attempts on a connected channel (a proxy's 503)
# gRPC's words for a call that found no connection to the server (resolving its name, or
# connecting, failed); an UNAVAILABLE without them came over a connection, from a server reached.
NOT_CONNECTED = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")

log = logging.getLogger("graytune.client")
# What tls_channel_credentials made each credentials object from (gRPC's are opaque): a failed
# handshake is explained by repeating it with Python's ssl and the same files.
_TLS_FILES: weakref.WeakKeyDictionary[grpc.ChannelCredentials, tls_probe.TlsFiles] = weakref.WeakKeyDictionary()


def tls_channel_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials:
    """TLS to the oracle: `ca` verifies the server (default: $GRAYTUNE_TLS_CA, else the
    system's roots); `cert` and `key` are this client's certificate for mutual TLS."""
    ca = ca or os.environ.get("GRAYTUNE_TLS_CA") or None
    read = lambda path: Path(path).read_bytes() if path else None
    if bool(cert) != bool(key):
        raise ValueError("mutual TLS needs both a client certificate and its key")
    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    _TLS_FILES[credentials] = tls_probe.TlsFiles(ca, cert, key)
    return credentials


class OracleError(Exception):
    """A call to the oracle failed; `code` is the gRPC status (None: not a gRPC failure) and
    `reason`, for a limit's refusal, which limit (graytune.error_details: BUDGET_EXHAUSTED, ...)."""

    def __init__(self, method: str, code: grpc.StatusCode | None, message: str | None, reason: str | None = None):
        super().__init__(f"{method}: {code.name if code else 'ERROR'}: {message}")
        self.method, self.code, self.details, self.reason = method, code, message, reason


IMAGE_WIRES = ("auto", "frugal", "pixels")


class OracleClient:
    def __init__(
        self,
        endpoint: str,
        timeout: float = 120.0,
        reconnect_timeout: float = 300.0,
        retries: int | None = None,
        wire_dtype: torch.dtype = torch.float32,
        chunk_bytes: int = tensor_codec.DEFAULT_CHUNK_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        affinity: str | None = None,
        tls_server_name: str | None = None,
        connect_timeout: float = 15.0,
        image_wire: str = "auto",
    ):
        """`timeout`: seconds per attempt of a call. `reconnect_timeout`: seconds one call waits
        for an unavailable server to come back; `connect_timeout` (at most `reconnect_timeout`): for
        a server this client never reached (not up yet, or a wrong host or port); `retries` caps a
        call's attempts after the first (None: as many as those waits allow; 0: fail on the first error).
        `api_key` defaults to $GRAYTUNE_API_KEY; `credentials` (TLS) to a plaintext channel.
        `affinity` (default: random per client) is sent with every call, so a load balancer that
        hashes it sends a Forward and its Backward to the same replica. `tls_server_name`: the
        name the server certificate is verified against, when `endpoint` (an IP address, a
        tunnel) is not a name the certificate holds. `image_wire`: how images go to the oracle
        behind a pixel adapter (transport/remote.py): "frugal" (uint8 pixels and the adapter's
        parameters, the adapter run on the server), "pixels" (the adapter's float output), or
        "auto" (frugal where the server, the key and the pixels allow it)."""
        if image_wire not in IMAGE_WIRES:
            raise ValueError(f"image_wire must be one of {', '.join(IMAGE_WIRES)}, not {image_wire!r}")
        self.image_wire = image_wire
        self.image_wire_chosen: str | None = None  # what remote.frugal_pixels last chose, and why
        if wire_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"wire_dtype must be float32, bfloat16 or float16, not {wire_dtype}")
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            *RECONNECT_OPTIONS,
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        self.endpoint = endpoint
        self.channel = (
            grpc.secure_channel(endpoint, credentials, options)
            if credentials
            else grpc.insecure_channel(endpoint, options)
        )
        self.stub = _stub(self.channel)
        self.timeout, self.reconnect_timeout, self.retries = timeout, reconnect_timeout, retries
        self.connection = _Connection(endpoint, credentials, tls_server_name, min(connect_timeout, reconnect_timeout))
        self.wire_dtype, self.chunk_bytes = wire_dtype, chunk_bytes
        self._info: pb.DescribeResponse | None = None
        self._typed_info: OracleInfo | None = None  # self._info's, typed
        api_key = api_key or os.environ.get("GRAYTUNE_API_KEY")
        self._has_key = bool(api_key)
        self.affinity = affinity or uuid.uuid4().hex
        self._metadata = ((AFFINITY_HEADER, self.affinity),) + (
            ((AUTHORIZATION_HEADER, f"Bearer {api_key}"),) if api_key else ()
        )
        # For the caller's accounting: tensor payload bytes each way, seconds spent in calls,
        # and the part of those the server reports for its device (the rest is transport).
        self.bytes_sent = self.bytes_received = 0
        self.call_seconds = self.device_seconds = 0.0
        self.rate_limited_seconds = 0.0  # waited because the key's rate limit asked for it
        self._rate_limit_logged = False
        # Calls answered and samples in them, per method ("Embed", "Forward", "Backward"): what
        # the key's budgets were charged for (a retried call counts once, as the server charges).
        self.calls: collections.Counter = collections.Counter()
        self.samples: collections.Counter = collections.Counter()
        self._counting = threading.Lock()  # a step's tower calls run on threads of their own

    def __enter__(self) -> OracleClient:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # An interrupt that landed inside gRPC's code may have left a channel lock held, and
        # close() would then wait forever; the interrupted process is ending anyway.
        if kind is not KeyboardInterrupt:
            self.close()

    def close(self) -> None:
        self.channel.close()

    # -- calls ---------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 60.0) -> None:
        """Blocks until the standard gRPC health check says SERVING."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2.0, wait_for_ready=True)
                self.connection.reached = True
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                if not self.connection.reached:
                    self.connection.check_handshake("Health.Check")
                if time.monotonic() > deadline:
                    raise OracleError("Health.Check", e.code(), e.details()) from None
            if time.monotonic() > deadline:
                raise OracleError("Health.Check", None, f"{self.endpoint} not serving after {timeout} s")
            time.sleep(0.1)

    def describe(self, refresh: bool = False) -> pb.DescribeResponse:
        if self._info is None or refresh:
            info = self._with_retries(
                "Describe",
                lambda metadata: self.stub.Describe(pb.DescribeRequest(), timeout=self.timeout, metadata=metadata),
            )
            major = PROTOCOL_VERSION.split(".")[0]
            if info.protocol_version.split(".")[0] != major:
                raise OracleError(
                    "Describe", None, f"server speaks protocol {info.protocol_version}, this client {PROTOCOL_VERSION}"
                )
            self._info, self._typed_info = info, OracleInfo.from_message(info)
        return self._info

    def info(self) -> OracleInfo:
        """Describe's answer (fetched once) as the typed OracleInfo the client's code reads."""
        self.describe()
        assert self._typed_info is not None
        return self._typed_info

    def embed_images(
        self, pixels: torch.Tensor, pixel_adapter: PixelAdapterSpec | None = None, **tensors: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels [+ deep_prompts=(depth, K, W)] -> (B, E) embeddings.
        With `pixel_adapter`: uint8 pixels and the adapter's parameters (by their wire names)."""
        return self._inputs_call("Embed", pb.IMAGE, {"pixels": pixels, **tensors}, pixel_adapter=pixel_adapter)[1]

    def embed_texts(self, texts: Sequence[str] = (), **tensors: torch.Tensor) -> torch.Tensor:
        """Captions (or token_ids=(B, L)) [+ shift=(D,), extra_tokens=(K, D),
        deep_prompts=(depth, K', D)] -> (B, E)."""
        return self._inputs_call("Embed", pb.TEXT, tensors, texts)[1]

    def embed_contexts(self, template: str, classnames: Sequence[str], context_delta: torch.Tensor) -> torch.Tensor:
        """Class names under P candidate contexts: (P, N, D) deltas added to the N context
        tokens of the server's `template` -> (P, C, E), in one call charged P samples (see
        Describe's prompt_templates and charges)."""
        return self._inputs_call(
            "Embed", pb.TEXT, {"context_delta": context_delta}, classnames, prompt_template=template
        )[1]

    def forward(
        self,
        tower: pb.Tower,
        tensors: Tensors,
        texts: Sequence[str] = (),
        grad_inputs: Sequence[str] = (),
        pixel_adapter: PixelAdapterSpec | None = None,
    ) -> tuple[str, torch.Tensor]:
        """-> (handle, (B, E) embeddings); the server holds the graph for one `backward`."""
        return self._inputs_call("Forward", tower, tensors, texts, grad_inputs, pixel_adapter=pixel_adapter)

    def backward(self, handle: str, grad_embeddings: torch.Tensor) -> Tensors:
        """dL/dE (B, E) -> {input name: dL/d input} (float32)."""
        header = pb.BackwardHeader(handle=handle, output_dtype=self._wire)
        messages = lambda: _stream(pb.BackwardMessage, header, self._chunks({"embeddings": grad_embeddings}))
        grads = self._stream_call("Backward", self.stub.Backward, messages)[1]
        self._count("Backward", grad_embeddings.shape[0])
        return grads

    def usage(self) -> dict[str, int]:
        """{"Embed_calls": n, "Embed_samples": n, ...} for the methods called so far."""
        return {
            f"{method}_{what}": counter[method]
            for method in sorted(self.calls)
            for what, counter in (("calls", self.calls), ("samples", self.samples))
        }

    # -- plumbing ------------------------------------------------------------------------
    @property
    def _wire(self) -> pb.DataType:
        return tensor_codec.wire_dtype_of(self.wire_dtype)

    def _chunks(self, tensors: Tensors) -> Iterator[bytes]:
        """The tensors as serialized chunk messages, floats at the wire dtype (a pixel adapter's
        parameters at their own: a few KB, and the server's forward then is the client's)."""
        for name, t in tensors.items():
            dtype = self.wire_dtype if t.is_floating_point() and not name.startswith(PREFIX) else t.dtype
            with self._counting:
                self.bytes_sent += t.numel() * dtype.itemsize
            yield from tensor_codec.tensor_to_messages(name, t, self.chunk_bytes, dtype)

    def _inputs_call(
        self,
        method: str,
        tower: pb.Tower,
        tensors: Tensors,
        texts: Sequence[str] = (),
        grad_inputs: Sequence[str] = (),
        prompt_template: str = "",
        pixel_adapter: PixelAdapterSpec | None = None,
    ) -> tuple[str, torch.Tensor]:
        header = pb.InputHeader(
            tower=tower,
            texts=list(texts),
            output_dtype=self._wire,
            grad_inputs=list(grad_inputs),
            prompt_template=prompt_template,
        )
        if pixel_adapter is not None:
            header.pixel_adapter.CopyFrom(pb.PixelAdapterSpec(**dataclasses.asdict(pixel_adapter)))
        messages = lambda: _stream(pb.InputMessage, header, self._chunks(tensors))
        out_header, out = self._stream_call(method, getattr(self.stub, method), messages)
        self._count(method, out["embeddings"].shape[0])
        return out_header.handle, out["embeddings"]

    def _count(self, method: str, samples: int) -> None:
        with self._counting:
            self.calls[method] += 1
            self.samples[method] += samples

    def _stream_call(self, method: str, rpc, messages) -> tuple[pb.OutputHeader, Tensors]:
        def call(metadata):
            start = time.perf_counter()
            replies = rpc(messages(), timeout=self.timeout, metadata=metadata)  # serialized OutputMessages
            header = pb.OutputMessage.FromString(next(replies)).header
            tensors = tensor_codec.chunks_to_tensors(map(tensor_codec.chunk_of, replies))
            with self._counting:
                self.bytes_received += sum(t.nbytes for t in tensors.values())
                self.device_seconds += header.device_seconds
                self.call_seconds += time.perf_counter() - start
            return header, {n: t.float() for n, t in tensors.items()}

        return self._with_retries(method, call)

    def _with_retries(self, method: str, call):
        """call(metadata) until the server answers it; after a RETRIED status, waits for the
        server, and after the rate limit's refusal for the time it names, then sends the call
        again, with the same call id."""
        metadata = self._metadata + ((CALL_ID_HEADER, uuid.uuid4().hex),)
        with _ServerWait(method, self.connection, self.channel, self.reconnect_timeout) as wait:
            for attempt in itertools.count():
                try:
                    result = call(metadata)
                    self.connection.reached = True
                    return result
                except grpc.RpcError as e:
                    self.connection.failed(method, e)
                    refused = error_details.refusal(e)
                    # the wait a refusal asks for (the rate limit, or calls in flight); None: not one
                    delay = refused.retry_after if refused.reason in error_details.WAITED_OUT else None
                    if (e.code() not in RETRIED and delay is None) or attempt == self.retries:
                        raise OracleError(method, e.code(), self._explained(e), refused.reason) from None
                    if delay is not None:
                        with self._counting:  # the first refusal is logged once, whichever thread gets it
                            first, self._rate_limit_logged = not self._rate_limit_logged, True
                        if first:
                            what = (
                                "the key's rate limit refused a call"
                                if refused.reason == error_details.RATE_LIMITED
                                else "the key has too many calls in flight"
                            )
                            log.warning(
                                "%s: %s (%s); calls wait as the server asks from now on "
                                "(OracleClient.rate_limited_seconds adds up the waits)",
                                method,
                                what,
                                e.details(),
                            )
                        wait.for_rate_limit(e.details(), delay, refused.reason)
                        with self._counting:
                            self.rate_limited_seconds += delay
                    else:
                        wait.for_server(e.details())
                except tensor_codec.TensorFormatError as e:
                    raise OracleError(method, None, f"malformed reply: {e}") from None

    def _explained(self, error: grpc.RpcError) -> str | None:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED and not self._has_key:
            return f"{error.details()}; no key was sent: $GRAYTUNE_API_KEY is not set"
        return error.details()


class _Connection:
    """Whether this client's server ever answered it and, until it has, why not: a call that
    fails UNAVAILABLE before then is looked into with tls_probe, and a handshake that cannot
    succeed is an OracleError at once, where waiting would only repeat it."""

    def __init__(
        self,
        endpoint: str,
        credentials: grpc.ChannelCredentials | None,
        server_name: str | None,
        connect_timeout: float,
    ):
        self.endpoint, self.server_name, self.connect_timeout = endpoint, server_name, connect_timeout
        # Plaintext, or TLS from known files; TLS credentials made elsewhere cannot be repeated.
        self.probed = credentials is None or credentials in _TLS_FILES
        self.tls_files = _TLS_FILES.get(credentials) if credentials is not None else None
        self.reached = False
        self.unreachable: str | None = None  # why the endpoint refused a connection, last we looked
        # When the server stopped answering, while some call waits for it: the calls of both
        # towers wait at once, and the user is told of one outage, not of each call's.
        self._outage: float | None = None
        self._outage_lock = threading.Lock()

    def outage_began(self) -> bool:
        """Notes that a call waits for the server; True for the first call of an outage."""
        with self._outage_lock:
            first, self._outage = self._outage is None, self._outage or time.monotonic()
            return first

    def outage_ended(self) -> float | None:
        """The outage's start, for the first call through (or given up) after it; else None."""
        with self._outage_lock:
            began, self._outage = self._outage, None
            return began

    def failed(self, method: str, error: grpc.RpcError) -> None:
        """After a call failed: an answer over a connection to the server, or a failure to make one."""
        if error.code() == grpc.StatusCode.UNAVAILABLE and any(
            words in (error.details() or "") for words in NOT_CONNECTED
        ):
            if not self.reached:
                self.check_handshake(method)
        elif error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # this client's own deadline: no answer
            self.reached = True

    def check_handshake(self, method: str) -> None:
        """Raises OracleError when the endpoint accepts connections but this client's TLS (or
        plaintext) cannot work with it; otherwise notes whether it accepts connections at all."""
        self.unreachable = tls_probe.unreachable(self.endpoint)
        if self.unreachable is None and self.probed:
            try:
                tls_probe.handshake_check(self.endpoint, self.tls_files, self.server_name)
            except tls_probe.HandshakeFailure as e:
                raise OracleError(method, grpc.StatusCode.UNAVAILABLE, str(e)) from None


class _ServerWait:
    """One call's wait for a server that stopped answering: a backoff sleep, then gRPC's own
    reconnection until a health check gets through, again after each failed attempt, `timeout`
    seconds in all. A server never reached is waited for the connection's `connect_timeout`,
    with the backoff sleeps alone (each attempt looks into why it is not reached).
    Logs one line when the wait begins and one when the server answers, once per outage
    however many calls wait through it.
    Waits the server asks for (the key's rate limit, its calls in flight) are counted apart,
    `timeout` seconds of them too."""

    def __init__(self, method: str, connection: _Connection, channel: grpc.Channel, timeout: float):
        self.method, self.connection, self.channel, self.timeout = method, connection, channel, timeout
        self.endpoint = connection.endpoint
        self.began: float | None = None
        self.backoff = FIRST_BACKOFF
        self.rate_waited = 0.0

    def __enter__(self) -> _ServerWait:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.began is None:
            return
        answered = error is None or (isinstance(error, OracleError) and error.code not in RETRIED)
        outage = self.connection.outage_ended()
        if outage is not None and answered:
            log.warning("%s: server %s is back after %.1f s", self.method, self.endpoint, time.monotonic() - outage)

    def for_rate_limit(self, details: str | None, delay: float, reason: str | None) -> None:
        """Sleeps the `delay` the server asked for; OracleError(RESOURCE_EXHAUSTED) instead when
        this call's waits would pass `timeout` seconds."""
        if self.rate_waited + delay > self.timeout:
            raise OracleError(
                self.method,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{details} (this call waited {self.rate_waited:.1f} s of {self.timeout:g} s already)",
                reason,
            )
        time.sleep(delay)
        self.rate_waited += delay

    def for_server(self, details: str | None) -> None:
        """Returns when the next attempt may go; OracleError(UNAVAILABLE) once time is up."""
        connection = self.connection
        if self.began is None:
            self.began = time.monotonic()
            first = connection.outage_began()  # of the calls in flight, the first says it waits
            if first and connection.reached:
                log.warning(
                    "%s: server %s unavailable (%s); waiting up to %g s for it to come back",
                    self.method,
                    self.endpoint,
                    details,
                    self.timeout,
                )
            elif first:
                log.warning(
                    "%s: server %s not reached (%s); waiting up to %g s for it to accept connections",
                    self.method,
                    self.endpoint,
                    connection.unreachable or details,
                    connection.connect_timeout,
                )
        deadline = self.began + (self.timeout if connection.reached else connection.connect_timeout)
        time.sleep(max(0.0, min(self.backoff, deadline - time.monotonic())))
        self.backoff = min(2 * self.backoff, MAX_BACKOFF)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._gave_up(details)
        if not connection.reached:
            return
        # A health check that waits for the connection, not grpc.channel_ready_future: that one's
        # polling thread outlives it by up to 0.2 s and raises "Channel closed!" from the
        # background if the client closes in the meantime (seen at the end of a failover test).
        try:
            health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=remaining, wait_for_ready=True
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._gave_up(details) from None
            # Any other answer came over a connection: the next attempt may go.

    def _gave_up(self, details: str | None) -> OracleError:
        if not self.connection.reached:
            return OracleError(
                self.method,
                grpc.StatusCode.UNAVAILABLE,
                f"could not connect to {self.endpoint} within {self.connection.connect_timeout:g} s "
                f"({self.connection.unreachable or details}): is the server running, and are the "
                f"endpoint's host and port (--endpoint) right?",
            )
        return OracleError(
            self.method,
            grpc.StatusCode.UNAVAILABLE,
            f"server {self.endpoint} did not come back within {self.timeout:g} s (last error: {details})",
        )


def _stream(message_type, header, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A request stream, serialized: the header, then the chunk messages as they are."""
    yield message_type(header=header).SerializeToString()
    yield from chunks


def _stub(channel: grpc.Channel) -> pb_grpc.GradientOracleStub:
    """The generated stub, with its streaming methods sending and receiving serialized messages:
    `tensor_codec.tensor_to_messages` copies a tensor's bytes once on the way out, where protobuf
    would copy them three times, and `read_chunk` reads them without the two copies of a parse."""
    stub = pb_grpc.GradientOracleStub(channel)
    service = pb.DESCRIPTOR.services_by_name["GradientOracle"]
    for method in service.methods:
        if method.client_streaming:
            # No (de)serializers: the messages go and come as the bytes they are.
            setattr(stub, method.name, channel.stream_stream(f"/{service.full_name}/{method.name}", None, None))
    return stub
