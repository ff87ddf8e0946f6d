"""Gradients from the server's device against this process's float32 CPU reference, in both image
wires (the pixel adapter run here and its output sent, or run on the server). The server's
device and precision are GRAYTUNE_TEST_DEVICE (default cpu) and GRAYTUNE_TEST_PRECISION (fp32 or
amp_bf16, default fp32): scripts/gpu_check.sh runs this file on cuda in both precisions."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from graytune.client.modules.layers import PixelAdapter
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower
from graytune.pixel_adapter import normalise

from helpers import REORDERED, SERVER_ARGS, relative_error

DEVICE = os.environ.get("GRAYTUNE_TEST_DEVICE", "cpu")
PRECISION = os.environ.get("GRAYTUNE_TEST_PRECISION", "fp32")
# Relative L2 error against float32 on the CPU, from the arithmetic of each (device, precision):
TOLERANCE = {
    # The same float32 sums in another order (another thread count).
    "fp32": REORDERED,
    # cuDNN's convolutions default to TF32 (a 10-bit mantissa: 2^-11 relative per product),
    # the patch embedding's among them, and every block after it carries that rounding.
    "cuda fp32": 2**-6,
    # bfloat16 autocast: an 8-bit mantissa (2^-9 per rounding) at every matmul of the forward
    # and of the backward; the CPU server ignores autocast (Backbone.autocast), so there it is fp32.
    "cuda amp_bf16": 2**-3,
}["fp32" if DEVICE == "cpu" else f"{DEVICE} {PRECISION}"]


@pytest.fixture(scope="module")
def device_server():
    with LocalServer([*SERVER_ARGS, "--device", DEVICE, "--precision", PRECISION]) as server:
        yield server


@pytest.mark.parametrize("wire", ["pixels", "frugal"])
def test_adapter_gradients_from_the_servers_device_match_the_cpu_reference(device_server, backbone, wire):
    with OracleClient(device_server.endpoint, image_wire=wire) as oracle:
        info = oracle.info()
        generator = torch.Generator().manual_seed(0)
        eight_bit = torch.randint(0, 256, (4, 3, info.image.height, info.image.width), dtype=torch.uint8)
        pixels = normalise(eight_bit, info.image.mean, info.image.std)  # as graytune's preprocessing makes them
        remote = PixelAdapter(2, 8, 3)
        with torch.no_grad():
            for p in remote.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        local = copy.deepcopy(remote)
        weight = torch.randn(4, info.embed_dim, generator=generator)
        embeddings = RemoteImageTower(oracle)(pixels, adapter=remote)
        (embeddings * weight).sum().backward()
        assert (oracle.image_wire_chosen or "pixels").startswith(wire)
    expected = backbone.model.encode_image(local(pixels))
    (expected * weight).sum().backward()
    assert relative_error(embeddings.detach(), expected.detach()) <= TOLERANCE
    for (name, got), want in zip(remote.named_parameters(), local.parameters()):
        assert want.grad.abs().sum() > 0, name
        assert relative_error(got.grad, want.grad) <= TOLERANCE, name
