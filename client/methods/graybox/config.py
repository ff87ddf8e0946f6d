"""The saved config of DGA and LGA adapters (adapter_config.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graytune.client.methods.base import AdapterConfig, backbone_identity
from graytune.client.methods.graybox.options import SIDES, DGAOptions, LGAOptions
from graytune.client.transport.access import BACKBONE_INPUTS, LGA, AccessDenied, Need, tiers_for
from graytune.client.transport.oracle_client import OracleClient
from graytune.contract import IMAGE_DEEP_PROMPTS, IMAGE_PIXELS, TEXT_DEEP_PROMPTS, TEXT_EXTRA_TOKENS, TEXT_SHIFT


@dataclass(frozen=True, kw_only=True)
class GrayboxConfig(AdapterConfig):
    """`adapters`: which side learns (SIDES); deep prompts at `deep_prompt_depth` blocks (0: DGA)."""

    adapters: str
    pixel_layers: int
    pixel_channels: int
    pixel_kernel_size: int = 3
    extra_tokens: int
    deep_prompt_depth: int = 0
    deep_prompt_tokens: int = 4

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "adapters": self.adapters}

    def __post_init__(self) -> None:
        if self.adapters not in SIDES:
            raise ValueError(f"adapters must be one of {', '.join(SIDES)}, not {self.adapters!r}")
        if self.deep_prompt_depth and self.adapters == "output":
            raise ValueError("deep prompts are input modules: they need adapters 'input' or 'both'")

    @classmethod
    def for_oracle(cls, oracle: OracleClient, options: DGAOptions | None = None) -> GrayboxConfig:
        """New adapters' config: sizes from the oracle's Describe, modules from `options`
        (DGAOptions, the default; LGAOptions: with deep prompts, LGA)."""
        options = options or DGAOptions()
        deep = _deep_prompts(oracle, options) if isinstance(options, LGAOptions) else {}
        return cls(
            **backbone_identity(oracle),
            method="graybox-lga" if deep else "graybox-dga",
            adapters=options.adapters,
            pixel_layers=options.pixel_layers,
            pixel_channels=options.pixel_channels,
            extra_tokens=options.extra_tokens,
            **deep,
        )

    @property
    def learns_inputs(self) -> bool:
        return self.adapters in ("both", "input")

    @property
    def learns_outputs(self) -> bool:
        return self.adapters in ("both", "output")

    def need(self, training: bool) -> Need:
        """The inputs these adapters send, and gradients when an input module is trained
        (output modules train on the client alone)."""
        backbone = {IMAGE_PIXELS} if self.domains else set(BACKBONE_INPUTS)
        if not self.learns_inputs:
            return Need(frozenset(backbone), gradients=False)
        points = backbone | ({IMAGE_DEEP_PROMPTS} if self.deep_prompt_depth else set())
        if not self.domains:
            points |= {TEXT_SHIFT} | ({TEXT_EXTRA_TOKENS} if self.extra_tokens else set())
            points |= {TEXT_DEEP_PROMPTS} if self.deep_prompt_depth else set()
        return Need(frozenset(points), training)


def _deep_prompts(oracle: OracleClient, options: LGAOptions) -> dict[str, Any]:
    """The depth, by default every block the key is offered deep prompts at."""
    info = oracle.info()
    offered = min(info.image.deep_prompt_layers, info.text.deep_prompt_layers)
    if offered == 0:
        tiers = " or ".join(f"'{t}'" for t in tiers_for(LGA))
        raise AccessDenied(
            f"--method lga learns deep prompts, and {oracle.endpoint} offers deep prompts at 0 layers to this "
            f"key (tier '{info.tier}'): use a key of tier {tiers}, or --method dga"
        )
    depth = options.deep_prompt_depth or offered
    if depth > offered:
        raise ValueError(
            f"--deep-prompt-depth {depth}: {oracle.endpoint} offers deep prompts at {offered} layers to this "
            f"key (tier '{info.tier}'); leave the flag out to use all {offered}"
        )
    return {"deep_prompt_depth": depth, "deep_prompt_tokens": options.deep_prompt_tokens}
