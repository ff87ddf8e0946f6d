"""Remote towers: the oracle's backbone used like a local module inside the customer's graph.

`loss.backward()` reaches the customer's input modules through the server: the autograd
function's forward calls Forward (the server keeps the graph), its backward sends dL/dE and
returns the gradients w.r.t. the inputs. When the server no longer holds the graph (expired,
evicted, restarted: status ABORTED), the inputs are sent again and the gradient recomputed.

Images behind a PixelAdapter go "frugal" where they can: the uint8 pixels (a quarter of the
float32 bytes) and the adapter's parameters (a few KB) are sent, the server runs the adapter,
and Backward returns the parameters' gradients (a few KB) instead of a per-pixel gradient the
size of the images. The parameters still live and learn here; the result is the same function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import torch

from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.contract import IMAGE_PIXEL_ADAPTER
from graytune.pixel_adapter import DeclaredAdapter, PixelAdapterSpec, quantised
from graytune.v1 import oracle_pb2 as pb

log = logging.getLogger("graytune.client")


class _RemoteEncode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        oracle: OracleClient,
        tower: pb.Tower,
        texts: tuple[str, ...],
        adapter: PixelAdapterSpec | None,
        names: tuple[str, ...],
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        tensors = dict(zip(names, inputs))
        grad_inputs = [n for n, needs in zip(names, ctx.needs_input_grad[5:]) if needs]
        handle, embeddings = oracle.forward(tower, tensors, texts, grad_inputs, adapter)
        ctx.call = (oracle, tower, texts, adapter, names, grad_inputs, handle)
        ctx.save_for_backward(*inputs)  # to run Forward again if the server lost the graph
        return embeddings.to(inputs[0].device if inputs else "cpu")  # (B, E)

    @staticmethod
    def backward(ctx, grad_embeddings: torch.Tensor):
        oracle, tower, texts, adapter, names, grad_inputs, handle = ctx.call
        try:
            grads = oracle.backward(handle, grad_embeddings)
        except OracleError as e:
            if e.code != grpc.StatusCode.ABORTED:
                raise
            handle, _ = oracle.forward(tower, dict(zip(names, ctx.saved_tensors)), texts, grad_inputs, adapter)
            grads = oracle.backward(handle, grad_embeddings)
        device = grad_embeddings.device
        return (None, None, None, None, None, *[grads[n].to(device) if n in grads else None for n in names])


def remote_encode(
    oracle: OracleClient,
    tower: pb.Tower,
    texts: Sequence[str] = (),
    adapter: PixelAdapterSpec | None = None,
    **inputs: torch.Tensor | None,
) -> torch.Tensor:
    """Embeddings of the inputs; differentiable w.r.t. every input that requires grad.
    `adapter`: the pixel adapter the server runs (inputs: uint8 pixels and its parameters)."""
    given = {n: t for n, t in inputs.items() if t is not None}
    if torch.is_grad_enabled() and any(t.requires_grad for t in given.values()):
        return _RemoteEncode.apply(oracle, tower, tuple(texts), adapter, tuple(given), *given.values())
    if tower == pb.IMAGE:
        pixels = given.pop("pixels")
        return oracle.embed_images(pixels, adapter, **given)
    return oracle.embed_texts(texts, **given)


def frugal_pixels(oracle: OracleClient, adapter: torch.nn.Module | None, pixels: torch.Tensor) -> torch.Tensor | None:
    """The uint8 pixels to send with `adapter`'s parameters in a frugal image call, or None
    for a pixel-mode call: where `oracle.image_wire` is "pixels", the module is no declared
    adapter (graytune's PixelAdapter), the server does not run one this size for this key, or
    the pixels are not 8-bit images normalised as the server normalises them. `image_wire`
    "frugal" refuses the last two."""
    if oracle.image_wire == "pixels" or not isinstance(adapter, DeclaredAdapter):
        return None
    info = oracle.info()
    spec, most = adapter.spec, info.image.pixel_adapter
    why = None
    if IMAGE_PIXEL_ADAPTER not in info.entry_points or most is None:
        why = f"{oracle.endpoint} runs no pixel adapters for this key"
    elif spec.layers > most[0] or spec.channels > most[1] or spec.kernel_size > most[2]:
        why = (
            f"{oracle.endpoint} runs pixel adapters of up to {most[0]} layers, {most[1]} channels and kernel "
            f"size {most[2]}; this one has {spec.layers}, {spec.channels} and {spec.kernel_size}"
        )
    eight_bit = None if why else quantised(pixels, info.image.mean, info.image.std)
    if why is None and eight_bit is None:
        why = "the pixels are not 8-bit images normalised as the server normalises them"
    if why is not None and oracle.image_wire == "frugal":
        raise ValueError(f"--wire frugal: {why}")
    chosen = "frugal: uint8 pixels and the adapter's parameters" if why is None else f"pixels ({why})"
    if oracle.image_wire_chosen != chosen:  # said when it changes, not per call
        oracle.image_wire_chosen = chosen
        log.info("image calls: %s", chosen)
    return eight_bit


class RemoteImageTower(torch.nn.Module):
    """(B, 3, H, W) normalised pixels [+ (depth, K, W) deep prompts] -> (B, E) embeddings,
    computed by the oracle. With a `cache`, pixels sent alone are embedded once per content."""

    def __init__(self, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.oracle, self.cache = oracle, cache

    def forward(
        self, pixels: torch.Tensor, deep_prompts: torch.Tensor | None = None, adapter: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """`adapter`: the caller's module before the tower, run on the server where it can be
        (see `frugal_pixels`), else here."""
        eight_bit = frugal_pixels(self.oracle, adapter, pixels)
        if eight_bit is not None:
            assert isinstance(adapter, DeclaredAdapter)
            return self.frugal(eight_bit, adapter, deep_prompts)
        if adapter is not None:
            pixels = adapter(pixels)
        if self.cache is not None and deep_prompts is None and not pixels.requires_grad:
            return self.cache.images(pixels)
        return remote_encode(self.oracle, pb.IMAGE, pixels=pixels, deep_prompts=deep_prompts)

    def frugal(
        self, eight_bit: torch.Tensor, adapter: DeclaredAdapter, deep_prompts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W) pixels through `adapter` on the server -> (B, E); differentiable
        w.r.t. the adapter's parameters (and the deep prompts)."""
        parameters = adapter.wire_parameters()
        return remote_encode(
            self.oracle, pb.IMAGE, (), adapter.spec, pixels=eight_bit, deep_prompts=deep_prompts, **parameters
        )


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
