"""What every method shares: the saved identity of its model (AdapterConfig), and what a method
plugs into the one run loop (Method, Trainer).

A method folder (graybox/, linear_probe/, craft/) holds its options (the flags it takes), its
saved config (an AdapterConfig with its module sizes), its model and its trainer: the step and
the state the run loop checkpoints. The loop owns everything else (cadence, evaluation,
checkpoints, stop and resume, the saved adapters).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from torch import nn

from graytune.client.methods.distributed import Ranks
from graytune.client.transport.access import Need
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.contract import PROTOCOL_VERSION

# A method's model (GrayboxCLIP, CrossDomainCLIP, LinearProbe, CraftClassifier) or the backbone alone
# (ZeroShotCLIP): an nn.Module used for what it has (config, encode_image, encode_text, classify,
# logit_scale), which no one class declares; nn.Module's __getattr__ would type each Tensor | Module.
Model = Any


class BackboneMismatch(RuntimeError):
    """Adapters trained against one backbone were pointed at another."""


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """Everything needed to rebuild a method's model, written as adapter_config.json; each
    method's config adds its module sizes."""

    embed_dim: int
    token_width: int
    image_token_width: int  # width of the image tower's tokens, for its deep prompts
    backbone_name: str
    backbone_sha256: str
    method: str  # the saved name: graybox-dga, graybox-lga, linear-probe, craft
    classes: int = 0  # outputs of a method with a classifier of its own
    domains: tuple[str, ...] = ()  # image domains with adapters of their own (sketch, photo); (): image and text
    temporal_pooling: str = "mean"  # how a video's frame embeddings become one: mean or attention
    task: dict[str, Any] = field(default_factory=dict)  # what the task needs at inference (class names, ...)
    protocol_version: str = PROTOCOL_VERSION

    # Whether the model scores classes itself (`classify`) rather than with CLIP's cosine logits.
    classifies: ClassVar[bool] = False

    @abc.abstractmethod
    def need(self, training: bool) -> Need:
        """The oracle access this model uses: the inputs it sends, and whether gradients."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        """What a run's first metrics record says of its model."""
        return {"method": self.method}

    def check_backbone(self, oracle: OracleClient) -> None:
        backbone = oracle.info().backbone
        if (backbone.name, backbone.sha256) != (self.backbone_name, self.backbone_sha256):
            raise BackboneMismatch(
                f"these adapters were trained against {self.backbone_name} "
                f"(sha256 {self.backbone_sha256[:16]}…), but {oracle.endpoint} serves "
                f"{backbone.name} (sha256 {backbone.sha256[:16]}…)"
            )


def backbone_identity(oracle: OracleClient) -> dict:
    """The AdapterConfig fields that Describe gives: sizes and the backbone's identity."""
    info = oracle.info()
    return {
        "embed_dim": info.embed_dim,
        "token_width": info.text.token_width,
        "image_token_width": info.image.token_width,
        "backbone_name": info.backbone.name,
        "backbone_sha256": info.backbone.sha256,
    }


class StopTraining(Exception):
    """Raised by a trainer's step when the run must end early but cleanly (a query budget
    spent): the loop checkpoints what was done and saves the adapters."""


class Trainer(abc.ABC):
    """A method's part of the run loop: its step, and the state a checkpoint keeps of it."""

    unit: ClassVar[str] = "step"  # what the progress bar counts
    shown: ClassVar[tuple[str, ...]] = ("loss",)  # train record fields beside the bar

    @abc.abstractmethod
    def batches(self, first: int, end: int) -> Iterable[Any]:
        """What steps [first, end) each take (the loop zips them with the steps)."""

    @abc.abstractmethod
    def step(self, step: int, batch: Any) -> dict[str, float]:
        """One step: the train record's fields (loss, ...); StopTraining ends the run early."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint's training state holds of this trainer, besides the step."""

    def units(self, steps: int) -> int:
        """Progress-bar units of `steps` steps."""
        return steps

    def counters(self, done: int) -> dict[str, int]:
        """Fields added to the train and eval records after `done` steps (e.g. queries)."""
        return {}

    def label(self, done: int) -> str:
        return f"step {done}"


ConfigT = TypeVar("ConfigT", bound=AdapterConfig)
OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class TrainingContext:
    """What the run loop hands a method's trainer besides its model and options."""

    run: Any  # the TrainConfig: batch size, seed
    task: Any  # the Task: its loss and data
    train_set: Any
    oracle: OracleClient
    state: dict[str, Any]  # a checkpoint's training state ({} for a new run)
    ranks: Ranks | None = None  # this process's part of a run over several (methods/distributed.py)


class Method(abc.ABC, Generic[ConfigT, OptionsT]):
    """One entry of the registry: a method's names, its options and how it builds and trains."""

    name: ClassVar[str]  # on the command line: --method NAME
    saved_as: ClassVar[tuple[str, ...]]  # adapter_config.json's `method` values it reads
    help: ClassVar[str]
    options: ClassVar[type]  # its options dataclass: the flags it takes
    config: ClassVar[type]  # its AdapterConfig subclass

    @abc.abstractmethod
    def adapter_config(self, oracle: OracleClient, options: OptionsT, seed: int) -> ConfigT:
        """The model's saved config from the options, the oracle's Describe and the run's seed
        (before the task completes it)."""

    @abc.abstractmethod
    def build_model(self, config: ConfigT, oracle: OracleClient, cache: EmbeddingCache | None = None) -> nn.Module:
        """A new model of `config` (weights at their initial values)."""

    def skips_unreadable(self, options: OptionsT) -> bool:
        """Whether a run leaves out the training files that cannot be read (--skip-unreadable)."""
        return False

    def resolved(self, options: OptionsT, train_samples: int, batch_size: int) -> OptionsT:
        """The options with what depends on the training data filled in (e.g. steps from epochs)."""
        return options

    @abc.abstractmethod
    def steps(self, options: OptionsT, task_options: Any) -> int | None:
        """The run's number of steps; None while it depends on the training data (see `resolved`)."""

    @abc.abstractmethod
    def trainer(self, model: Model, options: OptionsT, context: TrainingContext) -> Trainer:
        """The method's trainer of `model` over `context.train_set`."""
