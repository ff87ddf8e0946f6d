"""The customer's models by method name, as adapter_config.json records it."""
from __future__ import annotations

from typing import List, Optional

from torch import nn

from graytune.client.adapters.cross_domain import CrossDomainCLIP
from graytune.client.adapters.graybox import AdapterConfig, GrayboxCLIP
from graytune.client.adapters.linear_probe import LinearProbe
from graytune.client.craft.model import CraftClassifier
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

MODELS = {"graybox-dga": GrayboxCLIP, "graybox-lga": GrayboxCLIP, "linear-probe": LinearProbe,
          "craft": CraftClassifier}


def build_model(config: AdapterConfig, oracle: OracleClient, cache: Optional[EmbeddingCache] = None) -> nn.Module:
    if config.method not in MODELS:
        raise ValueError(f"adapter_config.json: unknown method {config.method!r} "
                         f"(this client knows {', '.join(MODELS)})")
    if config.domains and config.method != "linear-probe":
        return CrossDomainCLIP(config, oracle, cache)
    return MODELS[config.method](config, oracle, cache)


# The modules in front of the backbone, by attribute name, in every model class above.
INPUT_MODULES = ("pixel_adapter", "pixel_adapters", "text_prompt", "image_prompts", "text_prompts")


def parameter_groups(model: nn.Module, lr: float, input_lr: Optional[float] = None) -> List[dict]:
    """AdamW's groups: one at `lr`, or with `input_lr` the input modules at that rate and the
    rest (output adapters, temperature, classifiers) at `lr`."""
    if input_lr is None:
        return [{"params": list(model.parameters()), "lr": lr}]
    named = list(model.named_parameters())
    inputs = [p for name, p in named if name.split(".")[0] in INPUT_MODULES]
    rest = [p for name, p in named if name.split(".")[0] not in INPUT_MODULES]
    return [{"params": inputs, "lr": input_lr}, {"params": rest, "lr": lr}]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
