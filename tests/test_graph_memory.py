"""A graph held for Backward is freed once its Backward is done: nothing of it stays behind."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from graytune.server.compute.oracle import GradientOracle
from graytune.server.compute.validation import Limits


@pytest.mark.parametrize("merge_batches", [True, False])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_backward_frees_the_graph(backbone, tower, merge_batches):
    oracle = GradientOracle(backbone, Limits(), merge_batches=merge_batches)
    try:
        if tower == "image":
            inputs = {"pixels": torch.randn(3, 3, *backbone.image_size)}
        else:
            inputs = {"token_ids": backbone.text.tokenize(["a", "b c", "d"], 0),
                      "shift": torch.zeros(backbone.text.token_width)}
        request = oracle.prepare(tower, inputs, grad_inputs=())
        handle, embeddings = oracle.forward(request, "caller")
        held = oracle.store.peek(handle, "caller")
        output = weakref.ref(held.group.output if held.group is not None else held.output)
        leaves = [weakref.ref(t) for t in held.inputs.values()]
        del held, inputs, request  # the leaves may be the very tensors sent
        oracle.backward(handle, {"embeddings": torch.ones_like(embeddings)}, "caller")
        gc.collect()
        assert output() is None, "the graph's output outlived its Backward"
        assert all(leaf() is None for leaf in leaves), "an input leaf outlived its Backward"
    finally:
        oracle.device.close()
