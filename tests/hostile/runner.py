"""Sends hostile cases to a real server and judges the answers.

The server has three keys: "caller" (graybox-plus: every entry point, the hostile caller),
"other" (graybox: owns handles the caller must not use, and is the bystander) and "blackbox".
While a case runs, the bystander sends small valid Embeds on a channel of its own; a case
passes when its status is precise and allowed, its message short, the bystander was not held
up and the server still answers a health check and a valid call.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graytune import tensor_codec
from graytune.client.transport.local_server import LocalServer
from graytune.server.access.credentials import KeyFile
from graytune.v1 import oracle_pb2 as pb

from hostile.requests import Spec
from hostile.wire import NEVER_ISSUED, Case, encode, messages

KEY_TIERS = {"caller": "graybox-plus", "other": "graybox", "blackbox": "blackbox"}
CALL_SECONDS = 60.0  # the client's deadline for every call
MAX_MESSAGE = 1000  # characters of a status message: a caller's strings must be cut short
IMPRECISE = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
OK = grpc.StatusCode.OK
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class Reply(NamedTuple):
    code: grpc.StatusCode
    message: str
    seconds: float
    replies: list  # raw reply messages


class Result(NamedTuple):
    what: str
    code: grpc.StatusCode
    message: str
    seconds: float
    bystander_seconds: float = 0.0  # the slowest of another caller's Embeds meanwhile (inf: failed)
    health: str = ""  # what was wrong with the server afterwards; "" when healthy


@contextlib.contextmanager
def harness(directory: Path, server_args: Sequence[str]) -> Iterator[Harness]:
    """A server with KEY_TIERS' keys (key file in `directory`), and a Harness on it."""
    key_file = KeyFile(Path(directory) / "keys.json")  # in-process: `graytune-server keys` takes 5 s a key
    secrets = {name: key_file.create(tier) for name, tier in KEY_TIERS.items()}
    with LocalServer([*server_args, "--keys", str(key_file.path)]) as server:
        with Harness(server.endpoint, secrets) as h:
            yield h


class Harness:
    def __init__(self, endpoint: str, secrets: dict):
        self.secrets = secrets
        self.channel = grpc.insecure_channel(endpoint, CHANNEL_OPTIONS)
        self.bystander_channel = grpc.insecure_channel(endpoint, CHANNEL_OPTIONS)  # another client's
        described = self.call("Describe", [b""], "caller")
        assert described.code == OK, described
        self.info = pb.DescribeResponse.FromString(described.replies[0])
        self.spec = Spec.of(self.info)
        for _ in range(3):  # warm-up
            self.embed("other", self.bystander_channel)
        self.baseline = statistics.median(self.embed("other", self.bystander_channel).seconds for _ in range(20))
        # A stall worth finding keeps the device thread busy for seconds (a long caption's
        # tokenising held others up 10-60 s). Noise is far below: on 2 cores shared with other
        # test runs the slowest of 2,000 cases' Embeds took 0.55 s against a median of 7-12 ms.
        # Hence a floor of 2 s, and 20 times the median for slower backbones.
        self.delay_bound = max(2.0, 20 * self.baseline)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()
        self.bystander_channel.close()

    # -- calls ---------------------------------------------------------------------------------
    def call(
        self, rpc: str, items: list[bytes], key: str, metadata: Sequence[tuple[str, str]] = (), channel=None
    ) -> Reply:
        """Raw bytes in, raw bytes out. `key` names a key of this server, or is the secret sent."""
        secret = self.secrets.get(key, key)
        metadata = tuple(metadata) + ((("authorization", f"Bearer {secret}"),) if secret else ())
        path, identity = f"/graytune.v1.GradientOracle/{rpc}", lambda b: b
        channel = channel or self.channel
        start = time.perf_counter()
        try:
            if rpc == "Describe":
                (request,) = items
                replies = [
                    channel.unary_unary(path, identity, identity)(request, timeout=CALL_SECONDS, metadata=metadata)
                ]
            else:
                replies = list(
                    channel.stream_stream(path, identity, identity)(
                        iter(items), timeout=CALL_SECONDS, metadata=metadata
                    )
                )
        except grpc.RpcError as e:
            return Reply(e.code(), e.details() or "", time.perf_counter() - start, [])
        return Reply(OK, "", time.perf_counter() - start, replies)

    def one_image(self) -> list[bytes]:
        """A valid Embed or Forward stream: one image."""
        pixels = torch.zeros(1, 3, self.spec.height, self.spec.width)
        return encode(
            [pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))]
            + [pb.InputMessage(chunk=c) for c in tensor_codec.tensor_to_chunks("pixels", pixels)]
        )

    def embed(self, key: str, channel=None) -> Reply:
        return self.call("Embed", self.one_image(), key, channel=channel)

    def forward(self, key: str) -> tuple[Reply, str]:
        """-> (reply, handle)."""
        reply = self.call("Forward", self.one_image(), key)
        return reply, handle_of(reply)

    def backward(self, handle: str, shape: tuple, key: str) -> Reply:
        """A valid Backward: gradients of the Forward's embeddings, of their `shape`."""
        grad = torch.ones(shape)
        items = [pb.BackwardMessage(header=pb.BackwardHeader(handle=handle))] + [
            pb.BackwardMessage(chunk=c) for c in tensor_codec.tensor_to_chunks("embeddings", grad)
        ]
        return self.call("Backward", encode(items), key)

    # -- cases ---------------------------------------------------------------------------------
    def run(self, case: Case) -> Result:
        """Sends `case` (after its Forward, for a Backward) while the bystander watches."""
        handle, failed = self._handle(case) if case.forward is not None else ("", None)
        if failed is not None:  # the case's status is its Forward's
            return Result(
                f"{case.what} [answered before it]", failed.code, failed.message, failed.seconds, 0.0, self.health()
            )
        with self.watching() as latencies:
            reply = self.call(case.rpc, encode(messages(case, handle)), case.key, case.metadata)
        return Result(case.what, reply.code, reply.message, reply.seconds, max(latencies), self.health())

    def _handle(self, case: Case):
        """The handle a Backward case sends, from its Forward -> (handle, None), or the failed
        reply of that Forward (or of the Backward that consumes the handle first)."""
        forward = self.call("Forward", encode(messages(case.forward)), case.forward.key)
        if forward.code != OK:
            return "", forward
        handle = handle_of(forward)
        if case.handle == "consumed":
            consumed = self.backward(handle, embeddings_shape(forward), case.forward.key)
            if consumed.code != OK:
                return "", consumed
        if case.handle in NEVER_ISSUED:
            handle = NEVER_ISSUED[case.handle](*handle.split("."))
        return handle, None

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[float]]:
        """The bystander's Embeds, one after another until the block ends (at least one):
        yields their latencies (inf for a failed call), complete once the block has ended."""
        latencies: list[float] = []
        stop = threading.Event()

        def loop():
            while True:
                reply = self.embed("other", self.bystander_channel)
                latencies.append(reply.seconds if reply.code == OK else math.inf)
                if stop.is_set():
                    return

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield latencies
        finally:
            stop.set()
            thread.join()

    def health(self) -> str:
        """ "" when the health check says SERVING and a valid Embed succeeds, else what failed."""
        try:
            status = (
                health_pb2_grpc.HealthStub(self.channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=CALL_SECONDS)
                .status
            )
        except grpc.RpcError as e:
            return f"health check: {e.code().name}"
        if status != health_pb2.HealthCheckResponse.SERVING:
            return f"health check: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
        reply = self.embed("caller")
        return "" if reply.code == OK else f"a valid Embed: {reply.code.name}: {reply.message[:200]}"

    def violations(self, case: Case, result: Result) -> list[str]:
        """What is wrong with how the server answered `case`; empty when nothing is."""
        found = []
        if result.code in IMPRECISE:
            found.append(f"imprecise status {result.code.name}")
        elif result.code not in case.allowed():
            found.append(f"status {result.code.name}, expected {sorted(c.name for c in case.allowed())}")
        if len(result.message) >= MAX_MESSAGE:
            found.append(f"status message of {len(result.message)} characters")
        if result.bystander_seconds > self.delay_bound:
            found.append(
                f"another caller's Embed took {result.bystander_seconds:.2f} s meanwhile "
                f"(bound {self.delay_bound:.2f} s)"
            )
        if result.health:
            found.append(f"server unhealthy afterwards: {result.health}")
        return found


def handle_of(reply: Reply) -> str:
    return pb.OutputMessage.FromString(reply.replies[0]).header.handle if reply.code == OK else ""


def embeddings_shape(reply: Reply) -> tuple:
    """Shape of the embeddings in a Forward's reply."""
    chunks = (pb.OutputMessage.FromString(r).chunk for r in reply.replies[1:])
    return tuple(tensor_codec.chunks_to_tensors(chunks)["embeddings"].shape)


def report(result: Result, problems: list[str]) -> str:
    return f"{result.what}\n  -> {result.code.name} in {result.seconds:.2f} s: {result.message[:300]!r}" + "".join(
        f"\n  !! {p}" for p in problems
    )
