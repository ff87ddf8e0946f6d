"""Several customers training at once: each gets exactly the gradients it would get alone."""
from __future__ import annotations

import threading

import torch

from graytune.client.oracle_client import OracleClient
from graytune.client.remote import RemoteImageTower, RemoteTextTower

CLIENTS = 4


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
        for a, b in zip(alone[seed], together[seed]):
            assert torch.equal(a, b), f"client {seed}"
    assert not torch.equal(alone[0][0], alone[1][0])  # the clients really differ
