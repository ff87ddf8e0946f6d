"""The oracle tells each call's time on the device in the call's own CallContext (compute's type,
not a record of the service), on every path: alone, and in merged image batches."""

from __future__ import annotations

import pytest
import torch

from graytune.server.compute.call_context import CallContext
from graytune.server.compute.limits import Limits
from graytune.server.compute.oracle import GradientOracle


@pytest.mark.parametrize("tower", ["image", "text"])  # image Forward and Backward run as merged batches
def test_embed_forward_and_backward_each_tell_their_device_time(backbone, tower):
    oracle = GradientOracle(backbone, Limits())
    try:
        if tower == "image":
            inputs = {"pixels": torch.randn(2, 3, *backbone.image_size)}
        else:
            inputs = {
                "token_ids": backbone.text.tokenize(["a", "b c"], 0),
                "shift": torch.zeros(backbone.text.token_width),
            }
        request = oracle.prepare(tower, inputs, grad_inputs=())
        embed, forward, backward = CallContext(), CallContext(), CallContext()
        oracle.embed(request, "caller", context=embed)
        handle, embeddings = oracle.forward(request, "caller", context=forward)
        oracle.backward(handle, {"embeddings": torch.ones_like(embeddings)}, "caller", context=backward)
        assert embed.device_seconds > 0 and forward.device_seconds > 0 and backward.device_seconds > 0
    finally:
        oracle.device.close()
