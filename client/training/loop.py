"""The customer's run loop, driven over the wire, one for every task and method.

The loop owns what every run shares: the run directory, refusals before the first billed call,
the zero-shot evaluation at step 0, the progress bar, the metrics log, the evaluation and
checkpoint cadence, Ctrl-C, resume and the saved adapters. A method (methods/<name>/) plugs in
its model and its trainer: the step and the state a checkpoint keeps. A task (tasks/<name>/)
gives the data, the loss and the metrics. Where no input module learns, the oracle's embeddings
are fetched once per distinct input for the whole run (EmbeddingCache): the samples charged are
the data set's size, not steps × batch size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from graytune.client.data.tables import CsvFormat, DataError
from graytune.client.methods import distributed
from graytune.client.methods.adapter_dir import save_adapters
from graytune.client.methods.base import AdapterConfig, StopTraining, Trainer, TrainingContext
from graytune.client.methods.registry import load_adapters, method
from graytune.client.modules.backbone import ZeroShotCLIP
from graytune.client.options import option
from graytune.client.tasks import TASKS, make_task
from graytune.client.tasks.base import Task
from graytune.client.training import checkpoint
from graytune.client.training.interrupt import StopRequest
from graytune.client.training.reporters import REPORTERS, reporters
from graytune.client.training.run_dir import CONFIG, MetricsLog, RunDir
from graytune.client.transport import access
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

log = logging.getLogger("graytune.client")


@dataclass(frozen=True)
class TrainConfig:
    """A run: its data and directory, its cadence, and its method's and task's options
    (`options`: the method's options dataclass, None for its defaults; `task_options`: the
    task's Options fields)."""

    train_data: str = option(
        dataclasses.MISSING,
        "retrieval: CSV/TSV/JSONL of image path + caption; classify: a "
        "folder of class folders, or CSV/TSV/JSONL of image path + label",
    )
    output_dir: str = option(dataclasses.MISSING, "run directory: metrics.jsonl, config.json, checkpoints/, adapter/")
    val_data: str | None = option(
        None,
        "evaluated at step 0 (zero-shot) and every --eval-every steps "
        "(default: none, no evaluation; classify: the images not drawn as shots)",
    )
    batch_size: int = option(32, "samples per step (CraFT: per call of its image embeddings and refinement)")
    eval_every: int = option(50, "steps between evaluations on --val-data")
    save_every: int = option(50, "steps between checkpoints")
    seed: int = option(0, "seeds the data order and the modules' init")
    report_to: tuple[str, ...] = option(
        (),
        "also write the metrics to TensorBoard (OUTPUT_DIR/tensorboard; needs graytune[tensorboard]) "
        "or Weights & Biases (project $WANDB_PROJECT or graytune; WANDB_MODE=offline keeps it in "
        "OUTPUT_DIR/wandb; needs graytune[wandb]); repeatable (default: metrics.jsonl only)",
        choices=tuple(REPORTERS),
        action="append",
    )
    task: str = "retrieval"
    method: str = "dga"
    csv: CsvFormat = field(default_factory=CsvFormat)
    task_options: dict[str, Any] = field(default_factory=dict)
    options: Any = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.options is None:
            object.__setattr__(self, "options", method(self.method).options())
        elif not isinstance(self.options, method(self.method).options):
            raise ValueError(
                f"--method {self.method} takes {method(self.method).options.__name__}, "
                f"not {type(self.options).__name__}"
            )

    # What a resume may change, and why it may: cadence, reporting, the folder's name.
    FREE_ON_RESUME: ClassVar[dict[str, str]] = dict.fromkeys(
        ("output_dir", "eval_every", "save_every", "report_to"), "it does not change the result"
    )

    def free_on_resume(self) -> dict[str, str]:
        """Flattened setting name ("options.workers") -> why a resume may change it."""
        return {**self.FREE_ON_RESUME, **{f"options.{k}": why for k, why in self.options.FREE_ON_RESUME.items()}}


def _check_resume(cfg: TrainConfig, latest: Path, saved: dict[str, Any]) -> None:
    """A resume continues the run it finds. A changed setting that shapes the result (the data,
    the model, the optimiser and its schedule: --steps too) is refused, naming it with its old and
    new value; a changed one that cannot (cadence, reporting, loader processes) is taken, in a line."""
    if "train_config" not in saved:
        raise ValueError(f"--resume: {latest} was written by another version of graytune; start again with --overwrite")
    before, now = _flat(saved["train_config"]), _flat(_jsonable(dataclasses.asdict(cfg)))
    free = cfg.free_on_resume()
    for key in sorted(now):
        if key not in before and now[key] is None:
            continue  # a setting added since that run, unset
        if key not in before:
            raise ValueError(
                f"--resume: {latest} was written by another version of graytune (it has no "
                f"{_flag(key)}); start the run again with --overwrite"
            )
        if before[key] == now[key]:
            continue
        if key in free:
            log.info("--resume: %s was %r, now %r (taken: %s)", _flag(key), before[key], now[key], free[key])
        else:
            raise ValueError(
                f"--resume: {_flag(key)} was {before[key]!r} in {latest}, now {now[key]!r}; a resumed run keeps "
                "what shapes its result (start another run to change it: --overwrite, or a new --output-dir)"
            )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"options": {"lr": 0.1}} -> {"options.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _flag(key: str) -> str:
    """ "options.lr" -> "--lr", "csv.csv_separator" -> "--csv-separator": the flag that sets it."""
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resolved(cfg: TrainConfig, train_samples: int) -> TrainConfig:
    """`cfg` with what depends on the training data filled in: --epochs becomes --steps."""
    return dataclasses.replace(cfg, options=method(cfg.method).resolved(cfg.options, train_samples, cfg.batch_size))


def resolved_config(cfg: TrainConfig, adapters: AdapterConfig, oracle: OracleClient) -> dict:
    """What a run was started with, as written to its config.json."""
    info = oracle.info()
    return {
        "train": dataclasses.asdict(cfg),
        "adapters": adapters.to_dict(),
        "oracle": {
            "endpoint": oracle.endpoint,
            "server_version": info.server_version,
            "protocol_version": info.protocol_version,
            "tier": info.tier,
            "backbone": info.backbone.name,
            "backbone_sha256": info.backbone.sha256,
        },
    }


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(
    oracle: OracleClient, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, float]:
    """Runs (or resumes) training; returns the last evaluation's metrics (or the last loss).

    A new run refuses a directory that holds another unless `overwrite`. Everything that can
    be refused (the key's tier, the data, a changed config on resume) is refused before the
    first call that is billed and before the run directory is touched."""
    ranks = distributed.from_environment()  # one of several processes (torchrun), or None
    chosen = method(cfg.method)
    task = make_task(cfg.task, oracle, cfg.csv, cfg.task_options)
    task.check_method(cfg.method)
    if ranks is not None:
        check_data_parallel(cfg, ranks.world)
    run = RunDir(cfg.output_dir)
    known = chosen.steps(cfg.options, task.options)  # None with --epochs, until the data is read
    if resume and known is not None and run.is_complete(known):
        return _complete(run, known)  # without a call
    run.check_start(resume, overwrite)
    info = oracle.info()
    adapters = chosen.adapter_config(oracle, cfg.options, cfg.seed)
    access.require(info, f"training with --method {cfg.method}", adapters.need(training=True))
    train_set, val_set = task.load(cfg.train_data, cfg.val_data, cfg.seed, chosen.skips_unreadable(cfg.options))
    cfg = resolved(cfg, len(train_set))
    steps = chosen.steps(cfg.options, task.options)
    assert steps is not None
    if resume and known is None and run.is_complete(steps):  # --epochs: only now known
        return _complete(run, steps)
    adapters = task.adapter_config(adapters)
    cache = EmbeddingCache(oracle)
    state: dict[str, Any] = {"step": 0}
    if resume:
        latest = checkpoint.latest_checkpoint(run.path)
        assert latest is not None  # check_start refused a resume without a checkpoint
        state = checkpoint.load_training_state(latest)
        _check_resume(cfg, latest, state)
        model = load_adapters(latest, oracle, cache)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the modules' random init (extra tokens, deep prompts)
            model = task.build_model(adapters, cache)
    if ranks is not None:
        ranks.barrier()  # every process has checked the directory before rank 0 claims it
    main = ranks is None or ranks.main
    trainer = chosen.trainer(model, cfg.options, TrainingContext(cfg, task, train_set, oracle, state, ranks))
    if not main:  # rank 0 evaluates and writes the run directory
        loop = Loop(cfg, steps, task, model, trainer, None, run, MetricsLog.discarding(), oracle, ranks)
        return _steps(loop, state, progress=False)
    open_reporters = reporters(cfg.report_to, run.path, state["step"])
    run.claim(overwrite)
    config = resolved_config(cfg, adapters, oracle)
    run.write_config(config)
    log.info(
        "%s %s %s at step %d on %s (sha256 %s…), tier %s, %s trainable parameters: %s (written to %s)",
        "resuming" if resume else "starting",
        cfg.task,
        adapters.method,
        state["step"],
        info.backbone.name,
        info.backbone.sha256[:12],
        info.tier,
        f"{trainable_parameters(model):,}",
        " ".join(f"{k}={json.dumps(v)}" for k, v in config["train"].items()),
        run.path / CONFIG,
    )
    metrics_log = MetricsLog(run.path, open_reporters(config))
    try:
        if resume:
            metrics_log.truncate_after(state["step"])
        else:
            metrics_log.write(
                {
                    "step": 0,
                    "kind": "run",
                    "task": cfg.task,
                    **adapters.summary(),
                    "train_samples": len(train_set),
                    "trainable_parameters": trainable_parameters(model),
                }
            )
            if val_set is not None:
                zero_shot = task.evaluate(ZeroShotCLIP(oracle, cache), val_set, cfg.batch_size)
                metrics_log.write({"step": 0, "kind": "zero_shot", **zero_shot, **oracle_usage(oracle, {})})
                print(f"zero-shot: {headline(task, zero_shot)}", file=sys.stderr)  # the first evaluation line
        return _steps(Loop(cfg, steps, task, model, trainer, val_set, run, metrics_log, oracle, ranks), state, progress)
    finally:
        metrics_log.close()


def _complete(run: RunDir, steps: int) -> dict[str, float]:
    log.info("%s is complete (step %d of %d): nothing to resume; its final metrics follow", run.path, steps, steps)
    return run.final_metrics()


def headline(task: Task, metrics: dict[str, Any]) -> str:
    """An evaluation's line: "top1=0.412, top5=0.806"."""
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in task.headline)


def check_data_parallel(cfg: TrainConfig, processes: int) -> None:
    """Refuses what a run over several processes cannot do, before anything is billed."""
    if cfg.method not in DATA_PARALLEL_METHODS or cfg.task not in DATA_PARALLEL_TASKS:
        raise ValueError(
            f"a run over {processes} processes trains --method {' or '.join(DATA_PARALLEL_METHODS)} on --task "
            f"{', '.join(DATA_PARALLEL_TASKS)}, not --method {cfg.method} --task {cfg.task}; run it in one process"
        )
    if cfg.batch_size < processes:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {processes} processes it is split over")


# What a run over several processes shards: the gradient methods' encoder calls (methods/distributed.py).
DATA_PARALLEL_METHODS = ("dga", "lga")
DATA_PARALLEL_TASKS = ("retrieval", "video", "classify")


def usage_before(run: RunDir, step: int) -> dict:
    """A resumed run's last record at or before its checkpoint: its counts go on from there."""
    return next((r for r in reversed(run.records()) if r["step"] <= step), {}) if step else {}


def oracle_usage(oracle: OracleClient, before: dict) -> dict[str, int]:
    """The oracle calls and samples of the whole run: this process's, plus those logged
    before a resume (`before`: see usage_before)."""
    now = {f"oracle/{k}": v for k, v in oracle.usage().items()}
    keys = set(now) | {k for k in before if k.startswith("oracle/")}
    return {k: now.get(k, 0) + before.get(k, 0) for k in sorted(keys)}


@dataclass
class Loop:
    cfg: TrainConfig
    steps: int
    task: Task
    model: nn.Module
    trainer: Trainer
    val_set: Any
    run: RunDir
    metrics_log: MetricsLog
    oracle: OracleClient
    ranks: distributed.Ranks | None = None

    @property
    def main(self) -> bool:
        """Whether this process evaluates and writes the run directory."""
        return self.ranks is None or self.ranks.main

    def usage(self, before: dict) -> dict[str, int]:
        """The run's oracle calls and samples, of every process (a collective: all call it)."""
        counts = oracle_usage(self.oracle, before)
        return counts if self.ranks is None else self.ranks.sum_counts(counts)

    def save(self, done: int) -> None:
        checkpoint.save_checkpoint(
            self.run.path,
            done,
            self.model,
            {
                "step": done,
                **self.trainer.state_dict(),
                "train_config": _jsonable(dataclasses.asdict(self.cfg)),
            },
        )


def _steps(loop: Loop, state: dict[str, Any], progress: bool) -> dict[str, float]:
    """Steps from state["step"] to loop.steps: the trainer's step, the metrics, evaluations,
    checkpoints; a StopTraining from the trainer ends the run early with a checkpoint."""
    cfg, trainer, first = loop.cfg, loop.trainer, state["step"]
    result: dict[str, float] = loop.run.final_metrics()
    before = usage_before(loop.run, first)
    done = first
    bar = tqdm(
        total=trainer.units(loop.steps),
        initial=trainer.units(first),
        desc=loop.cfg.method,
        unit=trainer.unit,
        disable=None if progress else True,  # None: tqdm draws only on a terminal, never into a log file
        dynamic_ncols=True,
    )
    try:
        with StopRequest() as stop, bar:
            waited = time.perf_counter()
            for step, batch in zip(range(first, loop.steps), trainer.batches(first, loop.steps)):
                started = time.perf_counter()
                try:
                    record = trainer.step(step, batch)
                except StopTraining:
                    break
                done = step + 1
                counters = trainer.counters(done)
                usage = loop.usage(before)
                # OpenCLIP's names: data_time waits for the batch, batch_time is the whole step.
                loop.metrics_log.write(
                    {
                        "step": done,
                        "kind": "train",
                        **counters,
                        **record,
                        "data_time": started - waited,
                        "batch_time": time.perf_counter() - waited,
                        **usage,
                    }
                )
                result = {"train/loss": record["loss"]}
                bar.update(trainer.units(1))
                bar.set_postfix({k: f"{record[k]:.4f}" for k in trainer.shown})
                if loop.val_set is not None and (done % cfg.eval_every == 0 or done == loop.steps):
                    result = {**loop.task.evaluate(loop.model, loop.val_set, cfg.batch_size), **loop.usage(before)}
                    loop.metrics_log.write({"step": done, "kind": "eval", **counters, **result})
                    bar.write(
                        f"{trainer.label(done)}: {headline(loop.task, result)}",
                        file=sys.stderr,
                    )  # beside the bar; stdout carries only the result
                # Every process stops after the same step: Ctrl-C reaches them at once, but a
                # process may see it a step before another.
                stopping = stop.requested if loop.ranks is None else loop.ranks.any(stop.requested)
                if loop.main and (done % cfg.save_every == 0 or done == loop.steps or stopping):
                    loop.save(done)
                if stopping and done < loop.steps:
                    raise KeyboardInterrupt
                waited = time.perf_counter()
    except DataError:  # an image that cannot be read: the steps done so far are kept
        if loop.main and done > first and loop.run.checkpoint_step() != done:
            loop.save(done)
        raise
    if not loop.main:
        return result
    if done > first and loop.run.checkpoint_step() != done:
        loop.save(done)  # stopped early (StopTraining) between checkpoints
    save_adapters(loop.run.path / "adapter", loop.model)
    return {**result, **loop.run.skipped_unreadable()}
