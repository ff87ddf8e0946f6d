"""DGA and LGA in the registry: adapters before and after the backbone, trained through the
oracle's input-gradients (LGA adds deep prompts at the first blocks of both towers)."""

from __future__ import annotations

from torch import nn

from graytune.client.methods.gradient import GradientMethod
from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.cross_domain import CrossDomainCLIP
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.methods.graybox.options import DGAOptions, LGAOptions
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient


class DGA(GradientMethod[GrayboxConfig, DGAOptions]):
    name, saved_as, options, config = "dga", ("graybox-dga",), DGAOptions, GrayboxConfig
    help = "input and output adapters (tier graybox)"

    def adapter_config(self, oracle: OracleClient, options: DGAOptions, seed: int) -> GrayboxConfig:
        return GrayboxConfig.for_oracle(oracle, options)

    def build_model(
        self, config: GrayboxConfig, oracle: OracleClient, cache: EmbeddingCache | None = None
    ) -> nn.Module:
        """Sketch retrieval's adapters (config.domains) are one pair per image domain."""
        return (CrossDomainCLIP if config.domains else GrayboxCLIP)(config, oracle, cache)


class LGA(DGA):
    name = "lga"
    saved_as = ("graybox-lga",)
    help = "input and output adapters and deep prompts (tier graybox-plus)"
    options = LGAOptions
