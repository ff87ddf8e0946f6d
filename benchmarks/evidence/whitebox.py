"""The white-box reference rows: the owner's weights in-process, trained directly.

`WhiteboxCLIP` gives the OpenCLIP model the surface the client's tasks train and evaluate
(`encode_image`, `encode_text`, `encode_video`, `logit_scale`), so its loss, data order,
schedule and metrics are the very code the gray-box rows run (training/loop.py's `train_step`
and `step_batches`); only where the gradient goes differs:
- full fine-tuning: every weight of the backbone;
- LoRA (the `peft` library): rank-r updates of the attention (nn.MultiheadAttention) and MLP
  projections of both towers, everything else frozen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.data.batches import step_batches
from graytune.client.methods.gradient import cosine_with_warmup, train_step
from graytune.client.modules.backbone import encode_video
from graytune.client.modules.layers import LogitScale, MeanPooling

LORA_TARGETS = ("attn", "c_fc", "c_proj")  # OpenCLIP's ResidualAttentionBlock: attention and MLP
WHITEBOX_METHODS = ("full-finetune", "lora")


class WhiteboxCLIP(nn.Module):
    def __init__(self, clip: nn.Module, tokenizer):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer
        self.logit_scale = LogitScale()  # the gray-box rows' temperature, learnt the same way
        self.temporal_pool = MeanPooling()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E) unit vectors."""
        return F.normalize(self.clip.encode_image(pixels), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, E): the frames' mean, as the gray-box rows' default pooling."""
        return encode_video(self.encode_image, self.temporal_pool, frames)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors."""
        return F.normalize(self.clip.encode_text(self.tokenizer(list(captions))), dim=-1)

    def encode_domains(self, pixels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sketch task's call: {domain: (B, 3, H, W)} -> {domain: (B, E)}, one shared backbone."""
        return {domain: self.encode_image(p) for domain, p in pixels.items()}


def load_whitebox(model_name: str, weights: str, method: str, lora_rank: int = 8) -> WhiteboxCLIP:
    """The owner's model from its weights file, with `method`'s parameters trainable."""
    clip = open_clip.create_model(model_name, pretrained=weights)  # as the server loads them: strict
    clip.eval()  # no dropout here; the gray-box backbone is in eval mode too
    if method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        clip.requires_grad_(False)
        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=list(LORA_TARGETS))
        clip = inject_adapter_in_model(config, clip)
        for name, param in clip.named_parameters():
            param.requires_grad_("lora_" in name)
    elif method != "full-finetune":
        raise ValueError(f"white-box methods are {WHITEBOX_METHODS}, not {method!r}")
    return WhiteboxCLIP(clip, open_clip.get_tokenizer(model_name))


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_whitebox(
    task,
    model: WhiteboxCLIP,
    train_set,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    warmup: int,
    weight_decay: float = 0.0,
) -> float:
    """`steps` updates of the task's loss, batches and schedule as `graytune train` makes them
    -> seconds taken."""
    started = time.monotonic()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, steps))
    for batch in step_batches(train_set, batch_size, seed, 0, steps, workers=0):
        train_step(task.loss, model, batch, optimizer, schedule)
    return time.monotonic() - started
