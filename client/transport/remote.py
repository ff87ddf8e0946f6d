"""Remote towers: the oracle's backbone used like a local module inside the customer's graph.

`loss.backward()` reaches the customer's input modules through the server: the autograd
function's forward calls Forward (the server keeps the graph), its backward sends dL/dE and
returns the gradients w.r.t. the inputs. When the server no longer holds the graph (expired,
evicted, restarted: status ABORTED), the inputs are sent again and the gradient recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import torch

from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb


class _RemoteEncode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        oracle: OracleClient,
        tower: pb.Tower,
        texts: tuple[str, ...],
        names: tuple[str, ...],
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        tensors = dict(zip(names, inputs))
        grad_inputs = [n for n, needs in zip(names, ctx.needs_input_grad[4:]) if needs]
        handle, embeddings = oracle.forward(tower, tensors, texts, grad_inputs)
        ctx.call = (oracle, tower, texts, names, grad_inputs, handle)
        ctx.save_for_backward(*inputs)  # to run Forward again if the server lost the graph
        return embeddings.to(inputs[0].device if inputs else "cpu")  # (B, E)

    @staticmethod
    def backward(ctx, grad_embeddings: torch.Tensor):
        oracle, tower, texts, names, grad_inputs, handle = ctx.call
        try:
            grads = oracle.backward(handle, grad_embeddings)
        except OracleError as e:
            if e.code != grpc.StatusCode.ABORTED:
                raise
            handle, _ = oracle.forward(tower, dict(zip(names, ctx.saved_tensors)), texts, grad_inputs)
            grads = oracle.backward(handle, grad_embeddings)
        device = grad_embeddings.device
        return (None, None, None, None, *[grads[n].to(device) if n in grads else None for n in names])


def remote_encode(
    oracle: OracleClient, tower: pb.Tower, texts: Sequence[str] = (), **inputs: torch.Tensor | None
) -> torch.Tensor:
    """Embeddings of the inputs; differentiable w.r.t. every input that requires grad."""
    given = {n: t for n, t in inputs.items() if t is not None}
    if torch.is_grad_enabled() and any(t.requires_grad for t in given.values()):
        return _RemoteEncode.apply(oracle, tower, tuple(texts), tuple(given), *given.values())
    if tower == pb.IMAGE:
        return oracle.embed_images(**given)
    return oracle.embed_texts(texts, **given)


class RemoteImageTower(torch.nn.Module):
    """(B, 3, H, W) normalised pixels [+ (depth, K, W) deep prompts] -> (B, E) embeddings,
    computed by the oracle. With a `cache`, pixels sent alone are embedded once per content."""

    def __init__(self, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.oracle, self.cache = oracle, cache

    def forward(self, pixels: torch.Tensor, deep_prompts: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache is not None and deep_prompts is None and not pixels.requires_grad:
            return self.cache.images(pixels)
        return remote_encode(self.oracle, pb.IMAGE, pixels=pixels, deep_prompts=deep_prompts)


class RemoteTextTower(torch.nn.Module):
    """Captions [+ (D,) shift, (K, D) extra tokens, (depth, K', D) deep prompts] -> (B, E)
    embeddings, computed by the oracle. With a `cache`, captions sent alone are embedded once."""

    def __init__(self, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.oracle, self.cache = oracle, cache

    def forward(
        self,
        texts: Sequence[str],
        shift: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        deep_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cache is not None and shift is None and extra_tokens is None and deep_prompts is None:
            return self.cache.texts(texts)
        return remote_encode(
            self.oracle, pb.TEXT, texts, shift=shift, extra_tokens=extra_tokens, deep_prompts=deep_prompts
        )
