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

from graytune import tensor_codec
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc
from conftest import SERVER_ARGS, relative_error

CLIENTS = 4
ROUNDING_BOUND = 40 * 512 * 2.0 ** -24  # relative L2 error a reordered float32 step can show


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


def test_calls_beyond_the_concurrency_limit_are_refused_while_others_run():
    def held_open(sent, release):  # a Forward whose last chunk waits: it occupies a slot until released
        yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
        *head, last = tensor_codec.tensor_to_chunks("pixels", torch.randn(2, 3, 32, 32), chunk_bytes=4096)
        for chunk in head:
            yield pb.InputMessage(chunk=chunk)
        sent.set()
        release.wait(60)
        yield pb.InputMessage(chunk=last)

    with LocalServer([*SERVER_ARGS, "--max-concurrent-calls", "1"]) as server:
        with grpc.insecure_channel(server.endpoint) as channel:
            stub = pb_grpc.GradientOracleStub(channel)
            for attempt in range(10):
                release, sent = threading.Event(), threading.Event()
                slow = stub.Embed(held_open(sent, release), timeout=60)
                slow.add_done_callback(lambda call: sent.set())  # refused: its chunks are never all sent
                assert sent.wait(60)
                # The probe follows the held call on the same connection, so the server sees the
                # held call first: no wait for "long enough" is needed.
                try:
                    stub.Describe(pb.DescribeRequest(), timeout=60)
                except grpc.RpcError as refused:
                    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    break
                # The probe got the only slot, so the held call did not: on a busy machine the
                # server may still count the start-up readiness check when the held call arrives.
                release.set()
                with pytest.raises(grpc.RpcError) as first:
                    list(slow)
                assert first.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                pytest.fail("the held call never got the server's only slot")
            release.set()
            assert len(list(slow)) > 1  # the held call completes normally
            with OracleClient(server.endpoint) as oracle:
                assert oracle.describe(refresh=True).embed_dim > 0  # and the slot is free again
