"""The flags of --method dga and --method lga."""

from __future__ import annotations

from dataclasses import dataclass

from graytune.client.methods.gradient import GradientOptions
from graytune.client.options import option

SIDES = ("both", "input", "output")  # which adapters learn


@dataclass(frozen=True)
class DGAOptions(GradientOptions):
    input_lr: float | None = option(
        None,
        "peak learning rate of the input modules (pixel adapters, text prompt, deep prompts), which "
        "often want a smaller one than the output adapters (default: --lr)",
    )
    adapters: str = option("both", "which adapters learn; output only needs no gradients (any tier)", choices=SIDES)
    pixel_layers: int = option(2, "convolutions of the pixel adapter")
    pixel_channels: int = option(8, "channels between the pixel adapter's convolutions")
    extra_tokens: int = option(1, "learnable prompt tokens after start-of-text (0: none)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.input_lr is not None and self.adapters == "output":
            raise ValueError("--input-lr: --adapters output trains no input modules")


@dataclass(frozen=True)
class LGAOptions(DGAOptions):
    deep_prompt_depth: int = option(
        0, "deep prompts at the first N blocks of each tower (0: every block the key is offered them at)"
    )
    deep_prompt_tokens: int = option(4, "deep prompt tokens per block")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapters == "output":
            raise ValueError("--method lga: deep prompts are input modules; --adapters output has none")
