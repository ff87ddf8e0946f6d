"""The frugal image call (InputHeader.pixel_adapter): uint8 pixels and a pixel adapter's
parameters go up, the server runs the adapter, and Backward returns the parameters' gradients
instead of the images'. Across processes it gives the gradients of the client-side chain rule
through pixel gradients; a key whose owner never returns per-pixel gradients trains through it;
hostile adapter headers are refused with the field and the limit. Real server processes."""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest
import torch

from graytune import tensor_codec
from graytune.client.modules.layers import PixelAdapter
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.client.transport.remote import RemoteImageTower
from graytune.pixel_adapter import normalise
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, REORDERED, create_key, records, relative_error, train_command

# The pixel adapters the CLI builds (--pixel-layers, --pixel-channels; the config's kernel size).
SIZES = [(1, 8, 3), (2, 8, 3), (3, 16, 3), (2, 4, 5)]
# bfloat16 on the wire rounds dL/dE going up and the gradients coming back, each to 8 significant
# bits (a relative error of at most 2^-9 per element); summed over the batch and both roundings,
# the relative L2 error stays within a few times 2^-9. Measured here: up to 4.3e-3 (5 seeds).
BFLOAT16_WIRE = 2**-6
CLIP = 0.01  # the protected key's clip norm: far below the adapter gradients' norms here (~1 to 20)


def images(oracle: OracleClient, count: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, H, W) pixels as the client's preprocessing makes them: 8-bit, normalised."""
    info = oracle.info().image
    generator = torch.Generator().manual_seed(seed)
    eight_bit = torch.randint(0, 256, (count, 3, info.height, info.width), dtype=torch.uint8, generator=generator)
    return normalise(eight_bit, info.mean, info.std)


def adapter(layers: int, channels: int, kernel: int) -> PixelAdapter:
    """A PixelAdapter moved off its identity start, the same for a given size."""
    module = PixelAdapter(layers, channels, kernel)
    generator = torch.Generator().manual_seed(layers * 100 + channels * 10 + kernel)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def adapter_gradients(oracle: OracleClient, module: PixelAdapter, pixels, weight) -> dict:
    (RemoteImageTower(oracle)(pixels, adapter=module) * weight).sum().backward()
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("layers,channels,kernel", SIZES)
def test_a_frugal_step_gives_the_chain_rules_gradients(server, layers, channels, kernel):
    grads, sent = {}, {}
    for wire in ("pixels", "frugal"):
        with OracleClient(server.endpoint, image_wire=wire) as oracle:
            pixels = images(oracle, 6)
            weight = torch.randn(6, oracle.info().embed_dim, generator=torch.Generator().manual_seed(1))
            grads[wire] = adapter_gradients(oracle, adapter(layers, channels, kernel), pixels, weight)
            sent[wire] = oracle.bytes_sent + oracle.bytes_received
    for name, expected in grads["pixels"].items():
        assert expected.abs().sum() > 0, name
        # The same float32 sums on both sides, the adapter's convolutions run in another process
        # (another thread count: another summation order).
        assert relative_error(grads["frugal"][name], expected) <= REORDERED, name
    assert sent["frugal"] < sent["pixels"] / 3  # uint8 pixels up, a few KB of gradients down


def test_a_frugal_step_over_a_bfloat16_wire_stays_within_its_rounding(server):
    with OracleClient(server.endpoint, image_wire="pixels") as oracle:
        pixels = images(oracle, 8)
        weight = torch.randn(8, oracle.info().embed_dim, generator=torch.Generator().manual_seed(2))
        expected = adapter_gradients(oracle, adapter(2, 8, 3), pixels, weight)
    with OracleClient(server.endpoint, image_wire="frugal", wire_dtype=torch.bfloat16) as oracle:
        got = adapter_gradients(oracle, adapter(2, 8, 3), pixels, weight)
    for name in expected:
        assert relative_error(got[name], expected[name]) <= BFLOAT16_WIRE, name


def test_pixels_not_made_from_8_bit_images_go_as_floats_unless_frugal_is_required(server):
    with OracleClient(server.endpoint) as oracle:  # auto
        pixels = images(oracle, 2) + 1e-3  # no uint8 image normalises to these
        RemoteImageTower(oracle)(pixels, adapter=adapter(2, 8, 3)).sum().backward()
        assert oracle.image_wire_chosen.startswith("pixels (the pixels are not 8-bit images")
    with OracleClient(server.endpoint, image_wire="frugal") as oracle:
        with pytest.raises(ValueError, match="--wire frugal: the pixels are not 8-bit images"):
            RemoteImageTower(oracle)(pixels, adapter=adapter(2, 8, 3))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with graybox keys: one may receive per-pixel gradients, one never, and one
    whose gradients are clipped and budgeted."""
    key_file = tmp_path_factory.mktemp("frugal") / "keys.json"
    secrets = {
        "allowed": create_key(key_file, "--tier", "graybox"),
        "never": create_key(key_file, "--tier", "graybox", "--pixel-gradients", "never"),
        "protected": create_key(
            key_file, "--tier", "graybox", "--gradient-clip", str(CLIP), "--gradient-budget", "100"
        ),
    }
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        yield server, secrets


def recording_backward(oracle: OracleClient) -> list:
    """The shape of every gradient Backward brought back to `oracle`, as received."""
    shapes: list = []
    receive = oracle.backward

    def backward(handle, grad_embeddings):
        grads = receive(handle, grad_embeddings)
        shapes.extend((name, tuple(g.shape)) for name, g in grads.items())
        return grads

    oracle.backward = backward  # type: ignore[method-assign]
    return shapes


def test_a_key_that_never_gets_pixel_gradients_trains_its_pixel_adapter_frugally(keyed, digits, tmp_path):
    server, secrets = keyed
    with OracleClient(server.endpoint, api_key=secrets["never"], image_wire="pixels") as oracle:
        assert not oracle.info().pixel_gradients
        pixels = images(oracle, 4)
        with pytest.raises(OracleError) as refused:
            RemoteImageTower(oracle)(pixels, adapter=adapter(2, 8, 3)).sum().backward()
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "receives no gradient w.r.t. pixels (its pixel_gradients is never)" in str(refused.value)
    with OracleClient(server.endpoint, api_key=secrets["never"]) as oracle:  # auto: frugal
        received = recording_backward(oracle)
        grads = adapter_gradients(oracle, adapter(2, 8, 3), pixels, torch.ones(4, oracle.info().embed_dim))
        assert all(g.abs().sum() > 0 for g in grads.values())
        assert received and all(name.startswith("pixel_adapter.") and len(shape) in (1, 4) for name, shape in received)
        assert all(shape[-2:] != tuple(pixels.shape[-2:]) for _, shape in received)  # nothing pixel-shaped
    with OracleClient(server.endpoint, api_key=secrets["allowed"], image_wire="pixels") as oracle:
        assert oracle.info().pixel_gradients  # the other key still may
        grads = adapter_gradients(oracle, adapter(2, 8, 3), pixels, torch.ones(4, oracle.info().embed_dim))

    # The whole run, as a customer starts it: the default wire picks frugal for this key.
    command = train_command(
        server.endpoint, digits["train"], tmp_path, "--steps", "3", "--batch-size", "8", "--workers", "0"
    )
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "GRAYTUNE_API_KEY": secrets["never"]}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image calls: frugal" in done.stderr


def test_a_run_takes_the_same_steps_in_either_wire(server, digits, tmp_path):
    """Three DGA steps, frugal and pixel mode: the same losses to float rounding. (Not the same
    adapters to rounding: AdamW's first steps move a parameter by about the rate whatever the
    size of its gradient, so a gradient that rounding tips across zero moves it the other way.)"""
    losses = {}
    for wire in ("pixels", "frugal"):
        command = train_command(
            server.endpoint, digits["train"], tmp_path / wire, "--steps", "3", "--batch-size", "8", "--workers", "0"
        )
        done = subprocess.run([*command, "--wire", wire], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        losses[wire] = torch.tensor([r["loss"] for r in records(tmp_path / wire, "train")])
    assert len(losses["frugal"]) == 3
    assert relative_error(losses["frugal"], losses["pixels"]) <= REORDERED


def test_clipping_and_the_gradient_budget_apply_to_the_adapters_gradients(keyed):
    """What Backward returns in a frugal call is protected as any input the batch shares: each
    parameter's gradient (summed over the batch) rescaled to at most the key's clip norm; and
    the call is charged its rows of dL/dE, as in pixel mode."""
    server, secrets = keyed
    with OracleClient(server.endpoint, api_key=secrets["protected"]) as oracle:
        received = recording_backward(oracle)
        grads = adapter_gradients(oracle, adapter(2, 8, 3), images(oracle, 4), torch.ones(4, oracle.info().embed_dim))
        assert oracle.image_wire_chosen.startswith("frugal") and len(received) == len(grads)
        # float32 rescaling: the norm lands on the clip norm to a few units of rounding
        assert all(0 < g.norm() <= CLIP * (1 + 1e-5) for g in grads.values())
        assert oracle.describe(refresh=True).gradient_budget_remaining == 100 - 4


def raw_forward(channel, adapter_spec: dict, tensors: dict):
    header = pb.InputHeader(tower=pb.IMAGE)
    header.pixel_adapter.CopyFrom(pb.PixelAdapterSpec(**adapter_spec))
    messages = [pb.InputMessage(header=header)] + [
        pb.InputMessage(chunk=c) for c in tensor_codec.tensors_to_chunks(tensors)
    ]
    call = channel.stream_stream("/graytune.v1.GradientOracle/Forward", request_serializer=None)
    return list(call(iter(m.SerializeToString() for m in messages), timeout=60))


def valid(spec=(2, 8, 3)) -> dict:
    module = PixelAdapter(*spec)
    return {"pixels": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), **module.wire_parameters()}


@pytest.mark.parametrize(
    "spec,change,said",
    [
        ((0, 8, 3), {}, "pixel_adapter.layers: 0; the limit is 1 to 4"),
        ((99, 8, 3), {}, "pixel_adapter.layers: 99; the limit is 1 to 4"),
        ((2, 10**6, 3), {}, "pixel_adapter.channels: 1000000; the limit is 1 to 16"),
        ((2, 8, 4), {}, "pixel_adapter.kernel_size: 4; must be odd, 1 to 5"),
        ((2, 8, 99), {}, "pixel_adapter.kernel_size: 99; must be odd, 1 to 5"),
        ((2, 8, 3), {"pixel_adapter.0.weight": torch.full((8, 3, 3, 3), float("nan"))}, "contains NaN or Inf"),
        ((2, 8, 3), {"pixel_adapter.1.bias": torch.zeros(5)}, "pixel_adapter.1.bias: shape (5,) does not match (3,)"),
        ((2, 8, 3), {"pixel_adapter.1.weight": None}, "pixel_adapter.1.weight: missing"),
        ((2, 8, 3), {"pixel_adapter.2.weight": torch.zeros(3, 8, 3, 3)}, "not an input of the image tower"),
        ((2, 8, 3), {"pixels": torch.zeros(2, 3, 32, 32)}, "pixels: dtype float32 not allowed with a pixel_adapter"),
    ],
    ids=["no-layers", "layers", "channels", "even-kernel", "kernel", "nan", "shape", "missing", "extra", "floats"],
)
def test_hostile_adapter_headers_are_invalid_naming_the_field_and_the_limit(server, spec, change, said):
    tensors = {**valid((spec[0] or 1, min(spec[1], 8), 3)), **change}
    tensors = {name: t for name, t in tensors.items() if t is not None}
    layers, channels, kernel = spec
    with grpc.insecure_channel(server.endpoint) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            raw_forward(channel, dict(layers=layers, channels=channels, kernel_size=kernel), tensors)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert said in refused.value.details()
        replies = raw_forward(channel, dict(layers=2, channels=8, kernel_size=3), valid())  # still serving
        assert pb.OutputMessage.FromString(replies[0]).header.handle
