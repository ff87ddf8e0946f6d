"""The linear probe in the registry: a classifier on the frozen image embeddings, trained by
AdamW on the client (no gradient asked of the oracle, so any tier)."""

from __future__ import annotations

from torch import nn

from graytune.client.methods.base import backbone_identity
from graytune.client.methods.gradient import GradientMethod, GradientOptions
from graytune.client.methods.linear_probe.model import LinearProbe, LinearProbeConfig
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient


class LinearProbeMethod(GradientMethod[LinearProbeConfig, GradientOptions]):
    name, saved_as, options, config = "linear-probe", ("linear-probe",), GradientOptions, LinearProbeConfig
    help = "a classifier on frozen image embeddings (classify; any tier)"

    def adapter_config(self, oracle: OracleClient, options: GradientOptions, seed: int) -> LinearProbeConfig:
        return LinearProbeConfig(**backbone_identity(oracle), method=self.saved_as[0])

    def build_model(
        self, config: LinearProbeConfig, oracle: OracleClient, cache: EmbeddingCache | None = None
    ) -> nn.Module:
        return LinearProbe(config, oracle, cache)
