"""The gradient oracle: the backbone behind its two questions, with no transport in sight.

  embed(inputs)             -> embeddings                        (no graph kept)
  forward(inputs)           -> embeddings, handle                (graph kept for one backward)
  backward(handle, dL/dE)   -> dL/d(every continuous input sent)

Inputs are validated before they reach the backbone; parameters never require grad, so the
only gradients autograd can produce are the ones w.r.t. the caller's own inputs.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Sequence, Tuple

import torch

from graytune.server import validation
from graytune.server.backbone import Backbone
from graytune.server.device import DeviceQueue
from graytune.server.errors import InputError
from graytune.server.graph_store import GraphStore, HeldGraph, saved_bytes_counter
from graytune.server.validation import Limits

Tensors = Dict[str, torch.Tensor]


class GradientOracle:
    def __init__(self, backbone: Backbone, limits: Limits):
        self.backbone = backbone
        self.limits = limits
        self.store = GraphStore(limits.max_graph_bytes, limits.handle_ttl_seconds)
        self.device = DeviceQueue()

    def check_inputs(self, tower: str, tensors: Tensors, texts: Sequence[str]) -> None:
        b, limits = self.backbone, self.limits
        if tower == "image":
            if texts:
                raise InputError("texts: the image tower takes no texts")
            validation.check_image(tensors, b.image_size, limits)
        elif tower == "text":
            validation.check_text(tensors, texts, b.text.context_length, b.text.token_width,
                                  b.text.vocab_size, limits)
        else:
            raise InputError(f"tower: must be IMAGE or TEXT, got {tower!r}")

    def _encoder(self, tower: str, tensors: Tensors, texts: Sequence[str]) -> Callable[[Tensors], torch.Tensor]:
        """The tower's forward as a function of the float inputs, with discrete inputs bound."""
        b = self.backbone
        if tower == "image":
            return lambda x: b.encode_image(x["pixels"])
        extra = tensors.get("extra_tokens")
        num_extra = 0 if extra is None else extra.shape[0]
        if texts:
            ids = b.text.tokenize(list(texts), num_extra)
        else:
            ids = tensors["token_ids"]
            b.text.check_room(ids, num_extra)
        return lambda x: b.encode_text(ids, x.get("shift"), x.get("extra_tokens"))

    # `stats`, when given, receives `device_seconds`: the call's time on the device thread.
    def embed(self, tower: str, tensors: Tensors, texts: Sequence[str] = (), owner: str = "",
              out_dtype: torch.dtype = torch.float32, stats=None) -> torch.Tensor:
        """-> (B, E) embeddings."""
        return self._on_device(owner, stats, self._embed, tower, tensors, texts, out_dtype)

    def forward(self, tower: str, tensors: Tensors, texts: Sequence[str], grad_inputs: Sequence[str],
                owner: str, out_dtype: torch.dtype = torch.float32, stats=None) -> Tuple[str, torch.Tensor]:
        """-> (handle, (B, E) embeddings); the graph stays for one `backward`."""
        return self._on_device(owner, stats, self._forward, tower, tensors, texts, grad_inputs, owner,
                               out_dtype)

    def backward(self, handle: str, tensors: Tensors, owner: str,
                 out_dtype: torch.dtype = torch.float32, stats=None) -> Tensors:
        """dL/dE (B, E) -> {input name: dL/d input}, for the inputs chosen at forward."""
        return self._on_device(owner, stats, self._backward, handle, tensors, owner, out_dtype)

    def _on_device(self, owner: str, stats, fn, *args):
        """Runs fn on the device thread in the caller's turn (see DeviceQueue)."""
        def timed():
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                if stats is not None:
                    stats.device_seconds = time.perf_counter() - start
        return self.device.run(owner, timed)

    def _embed(self, tower, tensors, texts, out_dtype):
        self.check_inputs(tower, tensors, texts)
        encode = self._encoder(tower, tensors, texts)
        floats = {n: t.float() for n, t in tensors.items() if t.is_floating_point()}
        with torch.inference_mode():
            return encode(floats).to("cpu", out_dtype)

    def _forward(self, tower, tensors, texts, grad_inputs, owner, out_dtype):
        self.check_inputs(tower, tensors, texts)
        wanted = validation.check_grad_inputs(grad_inputs, tensors)
        encode = self._encoder(tower, tensors, texts)
        floats = {n: t.float().requires_grad_(n in wanted)
                  for n, t in tensors.items() if t.is_floating_point()}
        with torch.enable_grad(), saved_bytes_counter(self.backbone.parameter_storages) as saved:
            output = encode(floats)  # (B, E)
        leaves = {n: floats[n] for n in wanted}
        handle = self.store.put(HeldGraph(leaves, output, saved[0], owner))
        return handle, output.detach().to("cpu", out_dtype)

    def _backward(self, handle, tensors, owner, out_dtype):
        validation.check_names(tensors, ["embeddings"], "Backward")
        if "embeddings" not in tensors:
            raise InputError("embeddings: missing; Backward needs dLoss/dEmbeddings (B, E)")
        grad = tensors["embeddings"]
        graph = self.store.take(
            handle, owner,
            check=lambda g: validation.check_float("embeddings", grad, tuple(g.output.shape)))
        grads = torch.autograd.grad(graph.output, list(graph.inputs.values()),
                                    grad.to(graph.output), allow_unused=True)
        return {name: (torch.zeros_like(leaf) if g is None else g).to(out_dtype)
                for (name, leaf), g in zip(graph.inputs.items(), grads)}
