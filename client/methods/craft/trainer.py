"""CraFT's collaborative schedule as the run loop's steps: one CMA-ES generation (one
oracle call, P queries), then one epoch of the refinement module on the client, until the
query budget is spent.

A generation's candidates are scored against the few-shot images' embeddings, fetched once for
the whole run. The generation's best candidate becomes the prompt: its class embeddings came
with the generation (no extra query), the refinement epoch learns from its logits, and it is
what evaluation and the saved adapters use. A "step" of the run directory is a generation;
checkpoints hold the CMA-ES state (pickled by `cma`), the refinement module and its optimiser,
so a resumed run asks and learns exactly what the uninterrupted one would have, and the images'
embeddings, so it is not charged for them again.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch

from graytune import error_details
from graytune.client.data.batches import chunks, in_order
from graytune.client.methods.base import StopTraining, Trainer
from graytune.client.methods.craft.losses import prompt_fitness, refinement_loss
from graytune.client.methods.craft.model import CraftClassifier
from graytune.client.methods.craft.options import CraftOptions
from graytune.client.methods.craft.search import PromptSearch
from graytune.client.transport.oracle_client import OracleClient, OracleError

log = logging.getLogger("graytune.client")


@torch.no_grad()
def image_features(
    model: CraftClassifier, dataset, batch_size: int, backbone_sha256: str, saved: dict | None = None
) -> dict:
    """-> {"key": hash of the backbone and the images' pixels, "features": (N, E) unit embeddings
    of the data set's images, fetched in calls of `batch_size`}. `saved` (a checkpoint's) is
    returned as it is when its key matches: a resumed run is not charged for the images again."""

    def new_digest():
        return hashlib.blake2b(backbone_sha256.encode(), digest_size=16)

    def pixels(digest):
        for batch in in_order(dataset, batch_size):
            digest.update(batch[0].contiguous().numpy().tobytes())  # (B, 3, H, W)
            yield batch[0]

    if saved is not None:
        # A hash-only pass first: nothing is sent (or charged) before the key is known. On a
        # mismatch the images are decoded a second time below, which costs CPU but no queries.
        digest = new_digest()
        collections.deque(pixels(digest), maxlen=0)
        if digest.hexdigest() == saved["key"]:
            return saved
    digest = new_digest()
    features = torch.cat([model.encode_image(batch) for batch in pixels(digest)])
    return {"key": digest.hexdigest(), "features": features}


class CraftTrainer(Trainer):
    """A step: one generation (one oracle call, `popsize` queries), then one refinement epoch."""

    unit = "query"
    shown = ("fitness",)

    def __init__(
        self,
        model: CraftClassifier,
        options: CraftOptions,
        batch_size: int,
        seed: int,
        train_set: Any,
        oracle: OracleClient,
        state: dict[str, Any],
    ):
        self.model, self.options, self.batch_size, self.seed, self.oracle = model, options, batch_size, seed, oracle
        self.search = (
            PromptSearch.from_state(state["search"])
            if "search" in state
            else PromptSearch(model.z.numel(), options, seed)
        )
        self.optimizer = torch.optim.Adam(model.refine.parameters(), lr=options.lr)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.labels = train_set.labels  # (N,)
        self.images = image_features(
            model, train_set, batch_size, oracle.info().backbone.sha256, state.get("image_features")
        )  # charged once per run, resumes included

    def batches(self, first: int, end: int) -> Iterable[None]:
        return [None] * (end - first)  # a generation scores the whole few-shot set

    def step(self, step: int, batch: None) -> dict[str, float]:
        model, device_before = self.model, self.oracle.device_seconds
        candidates = self.search.ask()  # (P, d)
        asked = time.perf_counter()
        try:
            classes = model.class_embeddings_of(candidates)  # (P, C, E): one call, P queries
        except OracleError as e:
            if e.reason != error_details.BUDGET_EXHAUSTED:
                raise
            log.warning(
                "the key's budget is spent after %d generations (%s); the last prompt and refinement module are saved",
                step,
                e.details,
            )
            raise StopTraining from e
        called = time.perf_counter()
        logits = model.prompt_logits(self.images["features"], classes)  # (P, N, C)
        with torch.no_grad():
            fitness = prompt_fitness(logits, model.refine(logits), self.labels, self.options.kl_weight)  # (P,)
        self.search.tell(fitness)
        best = int(fitness.argmin())
        model.use(candidates[best], classes[best])
        loss = _refinement_epoch(
            model,
            self.optimizer,
            logits[best],
            self.labels,
            self.batch_size,
            self.seed * 1_000_003 + step,
            self.options.kl_weight,
        )
        return {
            "loss": loss,
            "fitness": float(fitness[best]),
            "fitness_mean": float(fitness.mean()),
            "sigma": self.search.sigma,
            "oracle_time": called - asked,
            "oracle_device_time": self.oracle.device_seconds - device_before,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"search": self.search.state(), "optimizer": self.optimizer.state_dict(), "image_features": self.images}

    def units(self, steps: int) -> int:
        return steps * self.options.popsize

    def counters(self, done: int) -> dict[str, int]:
        return {"queries": done * self.options.popsize}

    def label(self, done: int) -> str:
        return f"generation {done} ({done * self.options.popsize} queries)"


def _refinement_epoch(
    model: CraftClassifier,
    optimizer: torch.optim.Optimizer,
    prompt_logits: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    order_seed: int,
    weight: float,
) -> float:
    """One epoch of the refinement module on the prompt's (N, C) logits in an order seeded by
    `order_seed` (a function of the run's seed and the generation). -> the epoch's mean loss."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(order_seed))
    losses = []
    for rows in chunks(order, batch_size):
        loss = refinement_loss(model.refine(prompt_logits[rows]), prompt_logits[rows], labels[rows], weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)
