"""The customer's training loop, driven over the wire, one for every task and method.

Each step: the task's batch goes through the customer's model (its input modules, the oracle's
towers, its output modules), the task's loss, and `loss.backward()` reaches the input modules
through the server. What only a task knows (data, loss, metrics) is in tasks/<name>/. The data
order is a function of (seed, step), so `resume=True` continues exactly where the last
checkpoint left off. Where no input module learns, the oracle's embeddings are fetched once per
distinct input for the whole run (EmbeddingCache): the samples charged are the data set's size,
not steps × batch size.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from tqdm import tqdm

from torch import nn

from graytune.client.adapters.graybox import AdapterConfig, ZeroShotCLIP
from graytune.client.adapters.models import parameter_groups, trainable_parameters
from graytune.client.tasks import make_task
from graytune.client.tasks.base import Task
from graytune.client.training import checkpoint
from graytune.client.training.batches import step_batches
from graytune.client.training.interrupt import StopRequest
from graytune.client.training.run_dir import CONFIG, MetricsLog, RunDir
from graytune.client.training.tensorboard import reporters
from graytune.client.transport import access
from graytune.client.transport.embedding_cache import EmbeddingCache
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
    input_lr: Optional[float] = None  # the input modules' own rate (default: lr)
    weight_decay: float = 0.0
    warmup: int = 10
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0
    workers: int = 2  # DataLoader processes building batches ahead (0: on the training thread)
    report_to: Tuple[str, ...] = ()  # besides metrics.jsonl: "tensorboard"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_label_key: str = "label"
    csv_separator: str = "\t"
    task: str = "retrieval"
    method: str = "graybox-dga"  # an AdapterConfig method
    task_options: Dict[str, object] = field(default_factory=dict)  # the task's own flags
    adapters: Dict[str, object] = field(default_factory=dict)  # AdapterConfig sizes and sides
    craft: Dict[str, object] = field(default_factory=dict)  # method craft: CraftSettings (the search)

    # Changing these mid-run would change the data order or the model: resume refuses.
    FIXED_ON_RESUME = ("train_data", "batch_size", "seed", "adapters", "task", "method", "task_options", "craft",
                       "input_lr")  # input_lr: one optimiser group or two

    def csv_format(self) -> dict:
        return {"img_key": self.csv_img_key, "caption_key": self.csv_caption_key,
                "label_key": self.csv_label_key, "separator": self.csv_separator}


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _resume_state(cfg: TrainConfig, run_dir: Path, oracle: OracleClient,
                  cache: EmbeddingCache) -> Tuple[nn.Module, dict]:
    latest = checkpoint.latest_checkpoint(run_dir)
    state = checkpoint.load_training_state(latest)
    defaults = TrainConfig(train_data="", output_dir="")  # for checkpoints older than a field
    for key in TrainConfig.FIXED_ON_RESUME:
        was = state["train_config"].get(key, getattr(defaults, key))
        if was != getattr(cfg, key):
            raise ValueError(f"--resume: {key} was {was!r} in {latest}, now {getattr(cfg, key)!r}")
    return checkpoint.load_adapters(latest, oracle, cache), state


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
    task = make_task(cfg.task, oracle, cfg.csv_format(), cfg.task_options)
    adapters = AdapterConfig.for_oracle(oracle, method=cfg.method, **cfg.adapters)
    access.require(info, f"{adapters.method} training", adapters.need(training=True))
    train_set, val_set = task.load(cfg.train_data, cfg.val_data, cfg.seed)
    adapters = task.adapter_config(adapters)
    cache = EmbeddingCache(oracle)
    if resume:
        model, state = _resume_state(cfg, run.path, oracle, cache)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the extra tokens' random init
            model = task.build_model(adapters, cache)
        state = {"step": 0}
    open_reporters = reporters(cfg.report_to, run.path, state["step"])
    run.claim(overwrite)
    config = resolved_config(cfg, adapters, info, oracle.endpoint)
    run.write_config(config)
    log.info("%s %s %s at step %d on %s (sha256 %s…), tier %s, %s trainable parameters: %s (written to %s)",
             "resuming" if resume else "starting", cfg.task, adapters.method, state["step"],
             info.backbone.name, info.backbone.sha256[:12], info.tier,
             f"{trainable_parameters(model):,}",
             " ".join(f"{k}={json.dumps(v)}" for k, v in config["train"].items()), run.path / CONFIG)
    metrics_log = MetricsLog(run.path, open_reporters())
    if resume:
        metrics_log.truncate_after(state["step"])
    else:
        metrics_log.write({"step": 0, "kind": "run", "task": cfg.task, "method": adapters.method,
                           "adapters": adapters.adapters, "train_samples": len(train_set),
                           "trainable_parameters": trainable_parameters(model)})
        if val_set is not None:
            zero_shot = task.evaluate(ZeroShotCLIP(oracle, cache), val_set, cfg.batch_size)
            metrics_log.write({"step": 0, "kind": "zero_shot", **zero_shot, **oracle_usage(oracle, {})})
    if cfg.method == "craft":
        from graytune.client.craft.loop import craft_loop  # it builds on this module
        loop = craft_loop
    else:
        loop = _loop
    try:
        return loop(model, state, cfg, task, train_set, val_set, run, metrics_log, progress, oracle)
    finally:
        metrics_log.close()


def usage_before(run: RunDir, step: int) -> dict:
    """A resumed run's last record at or before its checkpoint: its counts go on from there."""
    return next((r for r in reversed(run.records()) if r["step"] <= step), {}) if step else {}


def oracle_usage(oracle: OracleClient, before: dict) -> Dict[str, int]:
    """The oracle calls and samples of the whole run: this process's, plus those logged
    before a resume (`before`: see usage_before)."""
    now = {f"oracle/{k}": v for k, v in oracle.usage().items()}
    keys = set(now) | {k for k in before if k.startswith("oracle/")}
    return {k: now.get(k, 0) + before.get(k, 0) for k in sorted(keys)}


def train_step(task: Task, model: nn.Module, batch, optimizer: torch.optim.Optimizer, schedule) -> torch.Tensor:
    """One update: the task's loss, backward (through the oracle to the input modules), AdamW."""
    loss = task.loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss


def _loop(model: nn.Module, state: dict, cfg: TrainConfig, task: Task, train_set, val_set,
          run: RunDir, metrics_log: MetricsLog, progress: bool, oracle: OracleClient) -> Dict[str, float]:
    """Steps from state["step"] to cfg.steps: the update, the metrics, evaluations, checkpoints."""
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.lr, cfg.input_lr), weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup, cfg.steps))
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    result: Dict[str, float] = run.final_metrics()
    before = usage_before(run, state["step"])
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps,
               desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    batches = step_batches(train_set, cfg.batch_size, cfg.seed, state["step"], cfg.steps, cfg.workers)
    with StopRequest() as stop:
        waited = time.perf_counter()
        for step, batch in zip(bar, batches):
            started = time.perf_counter()
            loss = train_step(task, model, batch, optimizer, schedule)
            done = step + 1
            result = {"train/loss": loss.item()}
            # OpenCLIP's names: data_time waits for the batch, batch_time is the whole step.
            record = {"step": done, "kind": "train", "loss": loss.item(), "lr": schedule.get_last_lr()[0],
                      "data_time": started - waited, "batch_time": time.perf_counter() - waited}
            if hasattr(model, "logit_scale"):
                record["logit_scale"] = model.logit_scale().item()
            metrics_log.write({**record, **oracle_usage(oracle, before)})
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                result = {**task.evaluate(model, val_set, cfg.batch_size), **oracle_usage(oracle, before)}
                metrics_log.write({"step": done, "kind": "eval", **result})
                bar.write(f"step {done}: " + ", ".join(f"{k}={result[k]:.3f}" for k in task.headline),
                          file=sys.stderr)  # beside the bar; stdout carries only the result
            if done % cfg.save_every == 0 or done == cfg.steps or stop.requested:
                checkpoint.save_checkpoint(run.path, done, model, {
                    "step": done, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "train_config": dataclasses.asdict(cfg)})
            if stop.requested and done < cfg.steps:
                raise KeyboardInterrupt
            waited = time.perf_counter()
    checkpoint.save_adapters(run.path / "adapter", model)
    return result
