"""Deep prompts (tier graybox-plus): the server's towers against a reference built on OpenCLIP's
own forward with hooks, and the gradients over the wire against in-process autograd."""

from __future__ import annotations

import contextlib

import grpc
import open_clip
import pytest
import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.methods.graybox.options import LGAOptions
from graytune.client.transport.access import AccessDenied
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower

from helpers import CAPTIONS, REORDERED, SERVER_ARGS, TIGHT, reference_text, relative_error


@contextlib.contextmanager
def prompted(blocks, final_norm, prompts):
    """OpenCLIP's own forward with prompts: inserted after token 0 before block 0, replaced
    before blocks 1..D-1, dropped before the final norm; causal masks grown to fit."""
    k, handles = prompts.shape[1], []

    def before_block(layer):
        def hook(module, args, kwargs):
            x = args[0]  # (B, N, W)
            if layer < prompts.shape[0]:
                rest = x[:, 1 + k :] if layer else x[:, 1:]
                x = torch.cat([x[:, :1], prompts[layer].expand(x.shape[0], k, -1), rest], dim=1)
            if kwargs.get("attn_mask") is not None:
                n = x.shape[1]
                kwargs["attn_mask"] = torch.full((n, n), float("-inf")).triu(1)
            return (x, *args[1:]), kwargs

        return hook

    for layer, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(before_block(layer), with_kwargs=True))
    handles.append(
        final_norm.register_forward_pre_hook(
            lambda module, args: (torch.cat([args[0][:, :1], args[0][:, 1 + k :]], dim=1),)
        )
    )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reference_image(model, pixels, prompts):
    with prompted(model.visual.transformer.resblocks, model.visual.ln_post, prompts):
        return model.encode_image(pixels)


def reference_text_prompted(model, token_ids, prompts, shift=None, extra=None):
    with prompted(model.transformer.resblocks, model.ln_final, prompts):
        return reference_text(model, token_ids, shift, extra)


@pytest.fixture(scope="module")
def plus_server():
    with LocalServer([*SERVER_ARGS, "--tier", "graybox-plus"]) as s:
        yield s


@pytest.fixture
def plus(plus_server):
    with OracleClient(plus_server.endpoint, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def token_ids():
    return open_clip.get_tokenizer("graytune-tiny")(CAPTIONS)  # (3, L)


def image_prompts(backbone, depth, tokens=3):
    return torch.randn(depth, tokens, backbone.image.token_width)


def text_prompts(backbone, depth, tokens=2):
    return torch.randn(depth, tokens, backbone.text.token_width) * 0.1


@pytest.mark.parametrize("depth", [1, 2])
def test_server_towers_match_the_reference(backbone, token_ids, depth):
    pixels = torch.randn(4, 3, 32, 32)
    prompts = image_prompts(backbone, depth)
    torch.testing.assert_close(
        backbone.encode_image(pixels, prompts), reference_image(backbone.model, pixels, prompts), **TIGHT
    )
    prompts, extra = text_prompts(backbone, depth), torch.randn(2, backbone.text.token_width) * 0.1
    assert (
        relative_error(
            backbone.encode_text(token_ids, None, extra, prompts),
            reference_text_prompted(backbone.model, token_ids, prompts, extra=extra),
        )
        < REORDERED
    )


def test_every_row_of_the_prompts_matters(backbone):
    prompts = image_prompts(backbone, backbone.image.prompt_depth).requires_grad_()
    backbone.encode_image(torch.randn(2, 3, 32, 32), prompts).sum().backward()
    assert all(float(row.abs().sum()) > 0 for row in prompts.grad)


def test_image_gradients_over_the_wire_match(plus, backbone):
    pixels, prompts = torch.randn(5, 3, 32, 32), image_prompts(backbone, 2)
    weight = torch.randn(5, backbone.embed_dim)
    remote = [pixels.clone().requires_grad_(), prompts.clone().requires_grad_()]
    (RemoteImageTower(plus)(*remote) * weight).sum().backward()
    local = [pixels.clone().requires_grad_(), prompts.clone().requires_grad_()]
    (reference_image(backbone.model, *local) * weight).sum().backward()
    for r, ours in zip(remote, local):
        assert relative_error(r.grad, ours.grad) < 1e-5


def test_text_gradients_over_the_wire_match(plus, backbone, token_ids):
    width = backbone.text.token_width
    inputs = [torch.randn(width) * 0.1, torch.randn(1, width) * 0.1, text_prompts(backbone, 2)]
    weight = torch.randn(len(CAPTIONS), backbone.embed_dim)
    remote = [t.clone().requires_grad_() for t in inputs]
    (RemoteTextTower(plus)(CAPTIONS, *remote) * weight).sum().backward()
    local = [t.clone().requires_grad_() for t in inputs]
    shift, extra, prompts = local
    (reference_text_prompted(backbone.model, token_ids, prompts, shift, extra) * weight).sum().backward()
    for r, ours in zip(remote, local):
        assert relative_error(r.grad, ours.grad) < 1e-5


def test_describe_tells_the_depth_to_graybox_plus_only(plus, oracle, backbone):
    info = plus.describe()
    assert (info.image.deep_prompt_layers, info.text.deep_prompt_layers) == (2, 2)
    assert info.image.token_width == backbone.image.token_width
    assert {"image.deep_prompts", "text.deep_prompts"} <= set(info.entry_points)
    info = oracle.describe()  # tier graybox
    assert (info.image.deep_prompt_layers, info.text.deep_prompt_layers, info.image.token_width) == (0, 0, 0)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 2, 128), "3 layers; the image tower takes 1 to 2"),
        ((0, 2, 128), "0 layers"),
        ((2, 17, 128), "17 tokens per layer; the limit is 1 to 16"),
        ((2, 0, 128), "0 tokens per layer"),
        ((2, 2, 64), "does not match (*, *, 128)"),
        ((2, 128), "does not match (*, *, 128)"),
    ],
)
def test_bad_deep_prompts_are_refused_precisely(plus, shape, message):
    with pytest.raises(OracleError) as failure:
        plus.embed_images(torch.randn(2, 3, 32, 32), deep_prompts=torch.zeros(shape))
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "deep_prompts" in failure.value.details and message in failure.value.details
    assert plus.embed_images(torch.randn(1, 3, 32, 32)).shape[0] == 1  # still serving


def test_graybox_clip_with_deep_prompts_sends_and_learns_them(plus):
    config = GrayboxConfig.for_oracle(plus, LGAOptions(deep_prompt_depth=2, deep_prompt_tokens=3))
    assert config.method == "graybox-lga"
    model = GrayboxCLIP(config, plus)
    loss = -(model.encode_image(torch.randn(2, 3, 32, 32)) * model.encode_text(["a", "b"])).sum()
    loss.backward()
    for prompts in (model.image_prompts.prompts, model.text_prompts.prompts):
        assert prompts.grad is not None and float(prompts.grad.abs().sum()) > 0


def test_method_lga_takes_every_layer_the_key_is_offered(plus):
    config = GrayboxConfig.for_oracle(plus, LGAOptions())
    offered = plus.describe().image.deep_prompt_layers
    assert offered > 0 and (config.method, config.deep_prompt_depth) == ("graybox-lga", offered)


def test_deep_prompts_beyond_the_offer_are_refused_at_config(oracle, plus):
    with pytest.raises(AccessDenied, match="offers deep prompts at 0 layers .* a key of tier 'graybox-plus'"):
        GrayboxConfig.for_oracle(oracle, LGAOptions(deep_prompt_depth=1))  # tier graybox
    offered = plus.describe().image.deep_prompt_layers
    with pytest.raises(
        ValueError, match=f"--deep-prompt-depth {offered + 1}: .* leave the flag out to use all {offered}"
    ):
        GrayboxConfig.for_oracle(plus, LGAOptions(deep_prompt_depth=offered + 1))


def test_deep_prompt_adapters_round_trip(plus, tmp_path):
    from graytune.client.methods.adapter_dir import save_adapters
    from graytune.client.methods.registry import load_adapters

    model = GrayboxCLIP(GrayboxConfig.for_oracle(plus, LGAOptions(deep_prompt_depth=1, deep_prompt_tokens=2)), plus)
    save_adapters(tmp_path / "adapter", model)
    loaded = load_adapters(tmp_path / "adapter", plus)
    assert loaded.config == model.config and loaded.image_prompts is not None
    torch.testing.assert_close(loaded.image_prompts.prompts, model.image_prompts.prompts)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels))
        torch.testing.assert_close(loaded.encode_text(["a seven."]), model.encode_text(["a seven."]))


def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_trains_deep_prompts_on_graybox_plus_only(plus_server, server, digits, tmp_path):
    import json

    common = [
        "train",
        "--train-data",
        digits["train"],
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--method",
        "lga",
        "--deep-prompt-depth",
        "2",
        "--deep-prompt-tokens",
        "2",
        "--no-progress",
    ]
    done = run_cli(*common, "--endpoint", plus_server.endpoint, "--output-dir", str(tmp_path / "plus"))
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "plus" / "adapter" / "adapter_config.json").read_text())
    assert (config["method"], config["deep_prompt_depth"], config["deep_prompt_tokens"]) == ("graybox-lga", 2, 2)
    refused = run_cli(*common, "--endpoint", server.endpoint, "--output-dir", str(tmp_path / "graybox"))
    assert refused.returncode != 0
    assert "offers deep prompts at 0 layers" in refused.stderr and "Traceback" not in refused.stderr
