"""Extraction defences: per-key clipping and noise on what Backward returns."""

from __future__ import annotations

import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.server.access.gradient_guard import protect
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, create_key


def test_clipping_bounds_each_samples_gradient_and_keeps_its_direction():
    g = {"pixels": torch.randn(4, 3, 8, 8) * 10, "shift": torch.randn(16) * 10}
    g["pixels"][0] *= 1e-4  # already inside the bound: unchanged
    out = protect(g, clip_norm=1.0, noise_std=None)
    norms = out["pixels"].reshape(4, -1).norm(dim=1)
    assert torch.allclose(norms[1:], torch.ones(3), rtol=1e-5)
    assert torch.equal(out["pixels"][0], g["pixels"][0])
    cosine = torch.nn.functional.cosine_similarity(out["pixels"].reshape(4, -1), g["pixels"].reshape(4, -1))
    assert torch.allclose(cosine, torch.ones(4), rtol=1e-5)
    assert abs(float(out["shift"].norm()) - 1.0) < 1e-5  # a shared input is one "sample"


def test_noise_has_the_configured_spread_and_differs_per_call():
    zero = {"pixels": torch.zeros(8, 3, 32, 32)}
    a, b = protect(zero, None, 0.5)["pixels"], protect(zero, None, 0.5)["pixels"]
    # 24,576 draws: the sample std of N(0, 0.25) lies within 3% of 0.5 with overwhelming odds
    assert abs(float(a.std()) - 0.5) < 0.015 and not torch.equal(a, b)


def test_no_protection_returns_the_gradients_untouched():
    g = {"pixels": torch.randn(2, 3, 4, 4)}
    assert protect(g, None, None) is g


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    secret = create_key(key_file, "--tier", "graybox", "--gradient-clip", "0.001")
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        yield server, secret


def test_a_guarded_key_gets_clipped_gradients_and_is_told_so(guarded):
    server, secret = guarded
    with OracleClient(server.endpoint, api_key=secret) as oracle:
        info = oracle.describe()
        assert info.gradient_clip_norm == 0.001 and not info.HasField("gradient_noise_std")
        handle, emb = oracle.forward(pb.IMAGE, {"pixels": torch.randn(3, 3, 32, 32)})
        grad = oracle.backward(handle, torch.randn_like(emb) * 100)["pixels"]
    assert float(grad.reshape(3, -1).norm(dim=1).max()) <= 0.001 * (1 + 1e-5)
