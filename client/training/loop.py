"""The customer's training loop, driven over the wire (today for text-image retrieval).

Each step: the batch's pixels go through the pixel adapter and the oracle's image tower, its
distinct captions through the text prompt and the oracle's text tower, both through the output
adapters; CLIP's contrastive loss; `loss.backward()` reaches the input adapters through the
server. The data order is a function of (seed, step), so `resume=True` continues exactly where
the last checkpoint left off.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from graytune.client.adapters.graybox import AdapterConfig, GrayboxCLIP
from graytune.client.tasks.retrieval.data import ImageCaptionDataset, collate
from graytune.client.tasks.retrieval.task import checked_dataset, contrastive_step_loss, evaluate, zero_shot
from graytune.client.training import checkpoint
from graytune.client.training.run_dir import CONFIG, MetricsLog, RunDir
from graytune.client.transport import access
from graytune.client.transport.oracle_client import OracleClient
from graytune.v1 import oracle_pb2 as pb

log = logging.getLogger("graytune.client")


@dataclass
class TrainConfig:
    train_data: str
    output_dir: str
    val_data: Optional[str] = None
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 10
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    adapters: Dict[str, int] = field(default_factory=dict)  # AdapterConfig sizes

    # Changing these mid-run would change the data order or the model: resume refuses.
    FIXED_ON_RESUME = ("train_data", "batch_size", "seed", "adapters")

    def csv_format(self) -> dict:
        return {"img_key": self.csv_img_key, "caption_key": self.csv_caption_key,
                "separator": self.csv_separator}


def batch_indices(num_samples: int, batch_size: int, seed: int, step: int) -> List[int]:
    """The sample indices of `step`: epoch e is a permutation seeded by (seed, e)."""
    per_epoch = num_samples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training samples")
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _resume_state(cfg: TrainConfig, run_dir: Path, oracle: OracleClient) -> Tuple[GrayboxCLIP, dict]:
    latest = checkpoint.latest_checkpoint(run_dir)
    state = checkpoint.load_training_state(latest)
    for key in TrainConfig.FIXED_ON_RESUME:
        if state["train_config"][key] != getattr(cfg, key):
            raise ValueError(f"--resume: {key} was {state['train_config'][key]!r} in {latest}, "
                             f"now {getattr(cfg, key)!r}")
    return checkpoint.load_adapters(latest, oracle), state


def resolved_config(cfg: TrainConfig, adapters: AdapterConfig, info: pb.DescribeResponse,
                    endpoint: str) -> dict:
    """What a run was started with, as written to its config.json."""
    return {"train": dataclasses.asdict(cfg), "adapters": adapters.to_dict(),
            "oracle": {"endpoint": endpoint, "server_version": info.server_version,
                       "protocol_version": info.protocol_version, "tier": info.tier,
                       "backbone": info.backbone.name, "backbone_sha256": info.backbone.sha256}}


def train(oracle: OracleClient, cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> Dict[str, float]:
    """Runs (or resumes) training; returns the last evaluation's metrics (or the last loss).

    A new run refuses a directory that holds another unless `overwrite`. Everything that can
    be refused (the key's tier, the data, a changed config on resume) is refused before the
    first call that is billed and before the run directory is touched."""
    run = RunDir(cfg.output_dir)
    if resume and run.is_complete(cfg.steps):
        log.info("%s is complete (step %d of %d): nothing to resume; its final metrics follow",
                 run.path, cfg.steps, cfg.steps)
        return run.final_metrics()
    run.check_start(resume, overwrite)
    info = oracle.describe()
    adapters = AdapterConfig.for_oracle(oracle, **cfg.adapters)
    access.require(info, f"{adapters.method} training", adapters.need(training=True))
    train_set = checked_dataset(cfg.train_data, oracle, seed=cfg.seed, **cfg.csv_format())
    val_set = checked_dataset(cfg.val_data, oracle, seed=cfg.seed, **cfg.csv_format()) if cfg.val_data else None
    if resume:
        model, state = _resume_state(cfg, run.path, oracle)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the extra tokens' random init
            model = GrayboxCLIP(adapters, oracle)
        state = {"step": 0}
    run.claim(overwrite)
    config = resolved_config(cfg, adapters, info, oracle.endpoint)
    run.write_config(config)
    log.info("%s %s at step %d on %s (sha256 %s…), tier %s: %s (written to %s)",
             "resuming" if resume else "starting", adapters.method, state["step"],
             info.backbone.name, info.backbone.sha256[:12], info.tier,
             " ".join(f"{k}={json.dumps(v)}" for k, v in config["train"].items()), run.path / CONFIG)
    metrics_log = MetricsLog(run.path)
    if resume:
        metrics_log.truncate_after(state["step"])
    elif val_set is not None:
        metrics_log.write({"step": 0, "kind": "zero_shot", **zero_shot(oracle, val_set, cfg.batch_size)})
    return _loop(model, state, cfg, train_set, val_set, run, metrics_log, progress)


def _loop(model: GrayboxCLIP, state: dict, cfg: TrainConfig, train_set: ImageCaptionDataset,
          val_set: Optional[ImageCaptionDataset], run: RunDir, metrics_log: MetricsLog,
          progress: bool) -> Dict[str, float]:
    """Steps from state["step"] to cfg.steps: the update, the metrics, evaluations, checkpoints."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup, cfg.steps))
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    result: Dict[str, float] = run.final_metrics()
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps,
               desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        pixels, captions = collate([train_set[i] for i in
                                    batch_indices(len(train_set), cfg.batch_size, cfg.seed, step)])
        loss = contrastive_step_loss(model, pixels, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        done = step + 1
        result = {"train/loss": loss.item()}
        metrics_log.write({"step": done, "kind": "train", "loss": loss.item(),
                           "lr": schedule.get_last_lr()[0], "logit_scale": model.logit_scale().item()})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            result = evaluate(model, val_set, cfg.batch_size)
            metrics_log.write({"step": done, "kind": "eval", **result})
            bar.write(f"step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()
                                                   if k.endswith(("R@1", "R@5"))),
                      file=sys.stderr)  # beside the bar; stdout carries only the result
        if done % cfg.save_every == 0 or done == cfg.steps:
            checkpoint.save_checkpoint(run.path, done, model, {
                "step": done, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "train_config": dataclasses.asdict(cfg)})
    checkpoint.save_adapters(run.path / "adapter", model)
    return result
