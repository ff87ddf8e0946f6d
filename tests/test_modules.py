"""The customer's modules: identity at initialisation, the loss, and zero-shot at step 0."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.modules.layers import OutputAdapter, PixelAdapter, TextPrompt
from graytune.client.tasks.retrieval.loss import contrastive_loss

from helpers import REORDERED, relative_error


@pytest.mark.parametrize("layers,channels,kernel", [(1, 3, 3), (2, 8, 3), (3, 16, 5)])
def test_pixel_adapter_starts_as_identity(layers, channels, kernel):
    pixels = torch.randn(2, 3, 17, 23)
    torch.testing.assert_close(PixelAdapter(layers, channels, kernel)(pixels), pixels)


def test_pixel_adapter_learns_something_an_identity_cannot():
    adapter = PixelAdapter()
    target = -torch.randn(4, 3, 8, 8)
    pixels = -target
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.mse_loss(adapter(pixels), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pixel_adapter_refuses_even_kernels():
    with pytest.raises(ValueError, match="odd kernel"):
        PixelAdapter(kernel_size=4)


def test_output_adapter_starts_as_identity():
    x = torch.randn(5, 64)
    torch.testing.assert_close(OutputAdapter(64)(x), x)


def test_text_prompt_sends_shift_and_only_nonempty_extra_tokens():
    assert set(TextPrompt(16, extra_tokens=2)()) == {"shift", "extra_tokens"}
    assert set(TextPrompt(16, extra_tokens=0)()) == {"shift"}
    assert torch.count_nonzero(TextPrompt(16)()["shift"]) == 0


def test_loss_is_clip_loss_when_captions_are_distinct():
    image, text = F.normalize(torch.randn(6, 32), dim=-1), F.normalize(torch.randn(6, 32), dim=-1)
    scale = torch.tensor(10.0)
    expected = open_clip.ClipLoss()(image, text, scale)
    torch.testing.assert_close(contrastive_loss(image, text, torch.arange(6), scale), expected)


def test_loss_spreads_text_to_image_targets_over_repeated_captions():
    image = F.normalize(torch.randn(4, 8), dim=-1)
    text = F.normalize(torch.randn(2, 8), dim=-1)
    index = torch.tensor([0, 1, 0, 1])
    logits = image @ text.T
    i2t = F.cross_entropy(logits, index)
    t2i = (
        -(torch.log_softmax(logits.T, dim=1)[0, [0, 2]].mean() + torch.log_softmax(logits.T, dim=1)[1, [1, 3]].mean())
        / 2
    )
    torch.testing.assert_close(contrastive_loss(image, text, index, torch.tensor(1.0)), (i2t + t2i) / 2)


def test_adapters_without_extra_tokens_reproduce_zero_shot(oracle, backbone):
    """Step 0 equals zero-shot: every module is the identity."""
    model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle, DGAOptions(extra_tokens=0)), oracle)
    pixels = torch.randn(3, 3, 32, 32)
    captions = ["a photo of the digit one.", "a handwritten two."]
    ids = open_clip.get_tokenizer("graytune-tiny")(captions)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(pixels), backbone.model.encode_image(pixels, normalize=True), rtol=1e-5, atol=1e-6
        )
        assert relative_error(model.encode_text(captions), backbone.model.encode_text(ids, normalize=True)) < REORDERED


def test_adapters_are_a_small_fraction_of_the_backbone(oracle, backbone):
    model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
    adapters = sum(p.numel() for p in model.parameters())
    backbone_params = sum(p.numel() for p in backbone.model.parameters())
    assert 0 < adapters < 0.02 * backbone_params
