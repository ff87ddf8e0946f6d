"""CraFT's collaborative schedule inside graytune's run directory: one CMA-ES generation (one
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
import dataclasses
import hashlib
import logging
import sys
import time
from typing import Dict, Optional

import torch
from tqdm import tqdm

from graytune import error_details
from graytune.client.craft.losses import prompt_fitness, refinement_loss
from graytune.client.craft.model import CraftClassifier
from graytune.client.craft.search import PromptSearch, SearchSettings
from graytune.client.training import checkpoint
from graytune.client.training.batches import in_order
from graytune.client.training.interrupt import StopRequest
from graytune.client.training.loop import oracle_usage, usage_before
from graytune.client.transport.oracle_client import OracleError

log = logging.getLogger("graytune.client")


@dataclasses.dataclass(frozen=True)
class CraftSettings(SearchSettings):
    kl_weight: float = 0.1  # lambda of both prediction-consistent losses


@torch.no_grad()
def image_features(model: CraftClassifier, dataset, batch_size: int, backbone_sha256: str,
                   saved: Optional[dict] = None) -> dict:
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


def craft_loop(model: CraftClassifier, state: dict, cfg, task, train_set, val_set, run, metrics_log,
               progress: bool, oracle) -> Dict[str, float]:
    """Generations from state["step"] to cfg.steps (the training loop's `_loop` for CraFT)."""
    settings = CraftSettings(**cfg.craft)
    search = (PromptSearch.from_state(state["search"]) if "search" in state
              else PromptSearch(model.z.numel(), settings, cfg.seed))
    optimizer = torch.optim.Adam(model.refine.parameters(), lr=cfg.lr)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    labels = train_set.labels  # (N,)
    images = image_features(model, train_set, cfg.batch_size, oracle.describe().backbone.sha256,
                            state.get("image_features"))
    features = images["features"]  # (N, E), charged once per run, resumes included
    before = usage_before(run, state["step"])
    result = run.final_metrics()
    popsize = settings.popsize
    bar = tqdm(total=cfg.steps * popsize, initial=state["step"] * popsize, desc="craft", unit="query",
               disable=not progress, dynamic_ncols=True)
    done = state["step"]

    def save() -> None:
        checkpoint.save_checkpoint(run.path, done, model, {
            "step": done, "search": search.state(), "optimizer": optimizer.state_dict(),
            "image_features": images, "train_config": dataclasses.asdict(cfg)})

    with StopRequest() as stop, bar:
        for generation in range(state["step"], cfg.steps):
            started, device_before = time.perf_counter(), oracle.device_seconds
            candidates = search.ask()  # (P, d)
            asked = time.perf_counter()
            try:
                classes = model.class_embeddings_of(candidates)  # (P, C, E): one call, P queries
            except OracleError as e:
                if e.reason != error_details.BUDGET_EXHAUSTED:
                    raise
                log.warning("the key's budget is spent after %d generations (%s); the last prompt "
                            "and refinement module are saved", done, e.details)
                break
            called = time.perf_counter()
            logits = model.prompt_logits(features, classes)  # (P, N, C)
            with torch.no_grad():
                fitness = prompt_fitness(logits, model.refine(logits), labels, settings.kl_weight)  # (P,)
            search.tell(fitness)
            best = int(fitness.argmin())
            model.use(candidates[best], classes[best])
            loss = _refinement_epoch(model, optimizer, logits[best], labels, cfg, generation, settings.kl_weight)
            done = generation + 1
            record = {"step": done, "kind": "train", "queries": done * popsize, "loss": loss,
                      "fitness": float(fitness[best]), "fitness_mean": float(fitness.mean()),
                      "sigma": search.sigma, "oracle_time": called - asked,
                      "oracle_device_time": oracle.device_seconds - device_before,
                      "batch_time": time.perf_counter() - started}
            metrics_log.write({**record, **oracle_usage(oracle, before)})
            bar.update(popsize)
            bar.set_postfix(fitness=f"{fitness[best]:.4f}", **({"top1": f"{result['top1']:.3f}"} if "top1" in result else {}))
            if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                result = {**task.evaluate(model, val_set, cfg.batch_size), **oracle_usage(oracle, before)}
                metrics_log.write({"step": done, "kind": "eval", "queries": done * popsize, **result})
                bar.write(f"generation {done} ({done * popsize} queries): "
                          + ", ".join(f"{k}={result[k]:.3f}" for k in task.headline), file=sys.stderr)
            if done % cfg.save_every == 0 or done == cfg.steps or stop.requested:
                save()
            if stop.requested and done < cfg.steps:
                raise KeyboardInterrupt
    if done > state["step"] and run.checkpoint_step() != done:
        save()  # the budget ran out between checkpoints
    checkpoint.save_adapters(run.path / "adapter", model)
    return result


def _refinement_epoch(model: CraftClassifier, optimizer, prompt_logits: torch.Tensor, labels: torch.Tensor,
                      cfg, generation: int, weight: float) -> float:
    """One epoch of the refinement module on the prompt's (N, C) logits; its data order is a
    function of (seed, generation). -> the epoch's mean loss."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + generation))
    losses = []
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start:start + cfg.batch_size]
        loss = refinement_loss(model.refine(prompt_logits[rows]), prompt_logits[rows], labels[rows], weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)
