"""CraFT in the registry: a black-box prompt searched by CMA-ES, and a refinement module."""

from __future__ import annotations

from typing import Any

from torch import nn

from graytune.client.methods.base import Method, Trainer, TrainingContext, backbone_identity
from graytune.client.methods.craft.model import CraftClassifier, CraftConfig
from graytune.client.methods.craft.options import CraftOptions
from graytune.client.methods.craft.trainer import CraftTrainer
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient


class Craft(Method[CraftConfig, CraftOptions]):
    name, saved_as, options, config = "craft", ("craft",), CraftOptions, CraftConfig
    help = "black-box prompt search + a refinement module (classify; any tier, no gradient)"

    def adapter_config(self, oracle: OracleClient, options: CraftOptions, seed: int) -> CraftConfig:
        """The template's context tokens from Describe; the projection's std 1/sqrt(d), so a z of
        norm sqrt(d)·sigma moves each element by about sigma. A's seed: the run's."""
        offered = oracle.info().text.prompt_templates
        if options.prompt_template not in offered:
            raise ValueError(
                f"prompt template {options.prompt_template!r}: the server offers {sorted(offered) or 'none'}"
            )
        return CraftConfig(
            **backbone_identity(oracle),
            method=self.saved_as[0],
            template=options.prompt_template,
            context_tokens=offered[options.prompt_template],
            intrinsic_dim=options.intrinsic_dim,
            projection_seed=seed,
            projection_std=options.intrinsic_dim**-0.5,
        )

    def build_model(self, config: CraftConfig, oracle: OracleClient, cache: EmbeddingCache | None = None) -> nn.Module:
        return CraftClassifier(config, oracle, cache)

    def steps(self, options: CraftOptions, task_options: Any) -> int:
        return options.generations(task_options.shots)

    def trainer(self, model: CraftClassifier, options: CraftOptions, context: TrainingContext) -> Trainer:
        run = context.run
        return CraftTrainer(model, options, run.batch_size, run.seed, context.train_set, context.oracle, context.state)
