"""Several customers training at once: each gets the gradients it would get alone.

Image calls pending at once are merged into one batch on the server, which changes the shapes
of the matrix products and so the order of float32 sums: results agree to rounding, not bit for
bit. Rounding and cross-talk are told apart by the relative L2 error of each gradient tensor:

- rounding: each product of the step (forward and backward through both towers, about 40 in
  sequence) sums at most K = 4 x width = 512 terms, so a reordered sum moves a result by at
  most ~K·u relative (u = 2^-24), i.e. 40 · 512 · 6e-8 ≈ 1.2e-3 for the whole step at worst.
  Typical errors are far smaller (seen: ~1e-6), but the bound is what float32 guarantees.
- cross-talk: another caller's rows in this caller's gradient differ from its own at O(1),
  which the test measures directly on two deliberately different callers.
"""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from graytune import error_details
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import SERVER_ARGS, relative_error

CLIENTS = 4
ROUNDING_BOUND = 40 * 512 * 2.0**-24  # relative L2 error a reordered float32 step can show


def one_step(endpoint: str, seed: int):
    """A small gray-box step's gradients w.r.t. pixels, shift and extra tokens."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, 32, 32, generator=g).requires_grad_()
    shift = (torch.randn(128, generator=g) * 0.1).requires_grad_()
    extra = (torch.randn(2, 128, generator=g) * 0.1).requires_grad_()
    captions = [f"a photo of the digit {n}." for n in ("one", "two", "three")][: 1 + seed % 3]
    with OracleClient(endpoint) as oracle:
        for _ in range(3):  # several calls each, so the callers' calls interleave
            images = RemoteImageTower(oracle)(pixels)
            texts = RemoteTextTower(oracle)(captions, shift, extra)
            (images @ texts.T).logsumexp(dim=1).sum().backward()
    return pixels.grad, shift.grad, extra.grad


def test_concurrent_clients_get_the_gradients_they_get_alone(server):
    alone = [one_step(server.endpoint, seed) for seed in range(CLIENTS)]
    together = [None] * CLIENTS
    start = threading.Barrier(CLIENTS)

    def run(seed):
        start.wait()
        together[seed] = one_step(server.endpoint, seed)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for seed in range(CLIENTS):
        assert together[seed] is not None, f"client {seed} did not finish"
        for name, a, b in zip(("pixels", "shift", "extra_tokens"), alone[seed], together[seed]):
            error = relative_error(b, a)
            assert error <= ROUNDING_BOUND, f"client {seed}, {name}: relative error {error:.2e}"
    # What a leak would look like: another caller's gradient is O(1) away, far above rounding.
    for name, a, b in zip(("pixels", "shift", "extra_tokens"), alone[0], alone[1]):
        assert relative_error(b, a) > 100 * ROUNDING_BOUND, name


def test_calls_beyond_the_concurrency_limit_are_refused_while_describe_and_health_answer():
    releases = []

    def held_open(release):  # an Embed whose request never ends: it holds the server's only slot
        yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
        release.wait(60)

    def hold(stub):
        releases.append(threading.Event())
        return stub.Embed(held_open(releases[-1]), timeout=60)

    with LocalServer([*SERVER_ARGS, "--max-concurrent-calls", "1", "--upload-grace", "60"]) as server:
        with grpc.insecure_channel(server.endpoint) as channel:
            stub = pb_grpc.GradientOracleStub(channel)
            held = hold(stub)
            try:
                with OracleClient(server.endpoint, retries=0) as oracle:
                    # A probe that comes first takes the slot, and the held call is refused: hold
                    # again. Once a probe is refused, the held call is known to have the slot.
                    for _ in range(200):
                        try:
                            oracle.embed_images(torch.randn(1, 3, 32, 32))
                        except OracleError as refused:
                            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                            assert refused.reason == error_details.TOO_MANY_CALLS
                            assert "--max-concurrent-calls" in refused.details
                            break
                        if held.done():
                            assert held.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                            held = hold(stub)
                    else:
                        pytest.fail("the held call never took the server's only slot")
                    assert oracle.describe(refresh=True).embed_dim > 0  # never counted, never refused
                    oracle.wait_ready(10)  # the health check neither
            finally:
                for release in releases:
                    release.set()
            with pytest.raises(grpc.RpcError) as ended:
                list(held)
            assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # a header and no pixels
            with OracleClient(server.endpoint, retries=0) as oracle:
                assert oracle.embed_images(torch.randn(1, 3, 32, 32)).shape[0] == 1  # the slot is free again
