"""The owner's frozen OpenCLIP backbone: loading, identity, and the inputs each tower accepts.

A backbone comes from an OpenCLIP model name with a pretrained tag (owners with a network), a
name plus a local `.safetensors`/`.pt` weights file (air-gapped owners), or an architecture
JSON file; with none of those, the built-in `graytune-tiny` architecture with seeded random
weights, so the tests run offline in seconds. `graytune-tiny` with the tag `mnist` is built on
this machine (see graytune.server.pretraining): the demo's owner model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from graytune.pixel_adapter import PixelAdapterSpec, apply, normalise
from graytune.server import pretraining
from graytune.server.compute import OpenClipModel
from graytune.server.compute.context_prompts import DEFAULT_TEMPLATES
from graytune.server.compute.image_tower import ImageTower
from graytune.server.compute.text_tower import TextTower

log = logging.getLogger(__name__)

BUILTIN_CONFIGS = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "graytune-tiny"
open_clip.add_model_config(BUILTIN_CONFIGS)


@dataclass(frozen=True)
class BackboneSource:
    model: str = DEFAULT_MODEL  # OpenCLIP architecture name
    pretrained: str | None = None  # a pretrained tag, fetched from the hub
    weights: Path | None = None  # a local .safetensors / .pt file
    model_config: Path | None = None  # an architecture JSON file; its stem names the model
    seed: int = 0  # random init, when no weights are given


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor in the state dict: a stable identifier that reveals nothing."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone:
    """A frozen OpenCLIP model. Only this class touches the weights."""

    def __init__(
        self,
        model: OpenClipModel,
        name: str,
        tokenizer,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        prompt_templates: Sequence[str] = DEFAULT_TEMPLATES,
    ):
        """`prompt_templates`: the templates callers may shift with "context_delta"."""
        model.eval().requires_grad_(False).to(device)
        self.model = model
        self.name = name
        self.device = device
        self.autocast_dtype = autocast_dtype  # None: full precision
        self.image = ImageTower(model)
        self.text = TextTower(model, tokenizer, prompt_templates)
        self.sha256 = weights_sha256(model)
        with torch.inference_mode():
            self.embed_dim = int(self.encode_text(self.text.tokenize(["a"], 0)).shape[-1])
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
        self.image_mean = tuple(float(m) for m in pp["mean"])
        self.image_std = tuple(float(s) for s in pp["std"])
        self.interpolation = pp.get("interpolation", "bicubic")
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def autocast(self):
        """Mixed precision on the GPU when asked for; a no-op on the CPU."""
        if self.autocast_dtype is None or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encode_adapted_image(
        self,
        pixels: torch.Tensor,
        spec: PixelAdapterSpec,
        parameters: dict[str, torch.Tensor],
        deep_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W) pixels, normalised here, through a caller's pixel adapter (in
        float32: its parameters and their gradients are the caller's), then the image tower."""
        normalised = normalise(self.to_device(pixels), self.image_mean, self.image_std)
        adapted = apply(spec, {n: self.to_device(p) for n, p in parameters.items()}, normalised)
        return self.encode_image(adapted, deep_prompts)

    def encode_image(self, pixels: torch.Tensor, deep_prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels [+ (depth, K, W) deep prompts] -> (B, E) embeddings,
        not normalised."""
        with self.autocast():
            return self.image(self.to_device(pixels), self._to_device(deep_prompts)).float()

    def encode_text(
        self,
        token_ids: torch.Tensor,
        shift: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        deep_prompts: torch.Tensor | None = None,
        context_delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) token ids [+ (D,) shift, (K, D) extra tokens, (depth, K', D) deep prompts]
        -> (B, E) embeddings; (C, L) template prompts + (P, N, D) context deltas -> (P, C, E)."""
        extras = (shift, extra_tokens, deep_prompts, context_delta)
        with self.autocast():
            return self.text(self.to_device(token_ids), *map(self._to_device, extras)).float()

    def staged(self, t: torch.Tensor) -> torch.Tensor:
        """A request's tensor made ready for the device, on the caller's thread: in page-locked
        memory for a GPU, so the device thread's copy is asynchronous (`to_device`)."""
        return t.pin_memory() if self.device.type == "cuda" and not t.is_pinned() else t

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """On the device; from page-locked memory without waiting for the copy (the stream
        orders it before the kernels that read it). Differentiable: a gradient flows back."""
        return t.to(self.device, non_blocking=t.is_pinned())

    def _to_device(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else self.to_device(t)


def load_backbone(
    source: BackboneSource,
    device: str | None = None,
    precision: str = "fp32",
    prompt_templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> Backbone:
    """Builds the frozen backbone on `device` (the GPU when there is one)."""
    name = source.model
    if source.model_config is not None:
        open_clip.add_model_config(source.model_config)
        name = Path(source.model_config).stem
    pretrained = source.pretrained
    if source.weights is not None:
        if pretrained:
            raise ValueError("give either a pretrained tag or a weights file, not both")
        if not Path(source.weights).is_file():
            raise FileNotFoundError(f"weights file not found: {source.weights}")
        pretrained = str(source.weights)
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model '{name}'; known: {', '.join(open_clip.list_models())}")
    tokenizer = open_clip.get_tokenizer(name)
    if pretrained and pretraining.is_builtin(name, pretrained):
        pretrained = str(pretraining.builtin_weights(name, pretrained))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        model = open_clip.create_model(name, pretrained=pretrained)
    if pretrained:
        log.info("loaded %s (%s)", name, pretrained)
    else:  # fine for tests and benchmarks, never for customers: say so where an owner looks
        log.warning(
            "%s has RANDOM weights (seed %d): its embeddings and gradients mean nothing; give --pretrained "
            "TAG or --weights FILE (GRAYTUNE_PRETRAINED, GRAYTUNE_WEIGHTS) to serve a trained model",
            name,
            source.seed,
        )
    autocast_dtype = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}[precision]
    return Backbone(model, name, tokenizer, pick_device(device), autocast_dtype, prompt_templates)
