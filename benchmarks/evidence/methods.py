"""The table's rows, and how one row is trained and measured on one setting (a task on a domain).

Gray-box rows and CraFT run `graytune train` (training/loop.py's `train`) against the owner
server over gRPC, exactly as a customer runs it, and `graytune eval`'s `evaluate` on the test
split. White-box rows train the owner's weights in-process (whitebox.py) with the same task code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from graytune.client.inference.run import evaluate
from graytune.client.methods import registry
from graytune.client.methods.craft.options import CraftOptions
from graytune.client.methods.gradient import GradientOptions
from graytune.client.tasks import make_task
from graytune.client.training.loop import TrainConfig, train
from graytune.client.training.run_dir import RunDir
from graytune.client.transport.oracle_client import OracleClient

from evidence.whitebox import load_whitebox, train_whitebox, trainable

TASKS = ("classify", "retrieval", "sketch", "video")
HEADLINE = {
    "classify": "top1",
    "retrieval": "image_to_text_R@1",
    "sketch": "sketch_to_photo_mAP@all",
    "video": "video_to_text_R@1",
}


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "zero-shot", "graybox", "craft" or "whitebox"
    method: str = ""  # a `graytune train --method`, or a whitebox.WHITEBOX_METHODS entry
    adapters: str = "both"  # which gray-box adapters learn: both, input or output
    lrs: tuple[float, ...] = ()  # the learning rates tried on the val split
    tasks: tuple[str, ...] = TASKS
    input_lr_ratio: float | None = None  # with both adapters: the input modules' rate / lr

    def input_lr(self, lr: float) -> float | None:
        return None if self.input_lr_ratio is None else lr * self.input_lr_ratio

    def rates(self, lr: float) -> str:
        """'lr0.01', or 'lr0.01-in0.001' with an input modules' rate: names a run."""
        return f"lr{lr:g}" + (f"-in{self.input_lr(lr):g}" if self.input_lr_ratio else "")


# Output adapters chose 1e-2 to 1e-1 on val here, input modules 3e-4 to 3e-3 (3e-3 did best on
# a colour cast, 1e-2 overshot it): rows with both take a tenth of the rate for their input
# modules (`graytune train --input-lr`). Each grid was moved up after its top rate won on val:
# the white-box rows' on the 8x8 digits, then the linear probe's (1e-1) and DGA's (3e-2) on
# inverted emoji, where LGA took 1e-2: rows with both try four rates. The linear probe's top won
# again (3e-1, twice) and moved up once more.
OUTPUT_LRS, INPUT_LRS, BOTH_LRS = (1e-2, 3e-2, 1e-1), (3e-4, 1e-3, 3e-3), (3e-3, 1e-2, 3e-2, 1e-1)
PROBE_LRS = (1e-1, 3e-1, 1.0)
METHODS = (
    Method("zero-shot", "zero-shot"),
    Method("linear probe", "graybox", "linear-probe", lrs=PROBE_LRS, tasks=("classify",)),
    Method("output only", "graybox", "dga", "output", OUTPUT_LRS),
    Method("input only", "graybox", "dga", "input", INPUT_LRS),
    Method("DGA", "graybox", "dga", "both", BOTH_LRS, input_lr_ratio=0.1),
    Method("LGA", "graybox", "lga", "both", BOTH_LRS, input_lr_ratio=0.1),
    Method("CraFT", "craft", "craft", tasks=("classify",)),
    Method("full fine-tuning", "whitebox", "full-finetune", lrs=(1e-4, 3e-4, 1e-3)),
    Method("LoRA", "whitebox", "lora", lrs=(1e-3, 3e-3, 1e-2)),
)


@dataclass(frozen=True)
class Setting:
    """A row set: one task on one domain's files."""

    task: str
    domain: str
    train: str
    val: str
    test: str
    options: dict[str, object] = field(default_factory=dict)  # the task's flags (classify: shots)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.domain}"

    @property
    def headline(self) -> str:
        return HEADLINE[self.task]


@dataclass(frozen=True)
class Budget:
    """What every trained row gets (gray-box and white-box alike): the steps tried and the batch;
    and CraFT's queries."""

    steps: int = 100  # every trained row's learning rate is chosen at this many steps
    more_steps: tuple[int, ...] = (400,)  # then these are tried at that rate; val picks the steps too
    batch_size: int = 32
    craft_queries: tuple[int, ...] = (2000, 8000)  # reported points of one run; the last is its budget
    craft_popsize: int = 40


@dataclass
class Owner:
    """The backbone every row uses: the server's endpoint, and its weights for the white-box rows."""

    oracle: OracleClient
    model_name: str
    weights: str


def _adapter_parameters(adapter_dir: Path) -> int:
    return sum(t.numel() for t in load_file(adapter_dir / "adapters.safetensors").values())


def run_graybox(
    owner: Owner, setting: Setting, method: Method, lr: float, seed: int, budget: Budget, workdir: Path
) -> dict:
    run_dir = workdir / f"{method.name}-{method.rates(lr)}-seed{seed}-{budget.steps}steps".replace(" ", "_")
    optimiser = dict(steps=budget.steps, lr=lr, workers=0)
    options = (
        GradientOptions(**optimiser)
        if method.method == "linear-probe"
        else registry.method(method.method).options(**optimiser, input_lr=method.input_lr(lr), adapters=method.adapters)
    )
    cfg = TrainConfig(
        train_data=setting.train,
        val_data=setting.val,
        output_dir=str(run_dir),
        batch_size=budget.batch_size,
        seed=seed,
        eval_every=budget.steps,
        save_every=budget.steps,
        task=setting.task,
        method=method.method,
        task_options=dict(setting.options),
        options=options,
    )
    started = time.monotonic()
    val = train(owner.oracle, cfg, overwrite=True, progress=False)
    seconds = time.monotonic() - started
    test = evaluate(
        owner.oracle, setting.test, str(run_dir / "adapter"), setting.task, task_options=dict(setting.options)
    )
    return {
        "val": val[setting.headline],
        "test": test[setting.headline],
        "seconds": seconds,
        "trainable": _adapter_parameters(run_dir / "adapter"),
    }


def run_craft(
    owner: Owner, setting: Setting, method: Method, seed: int, budget: Budget, workdir: Path
) -> dict[int, dict]:
    """One search to the largest budget; the test split is scored at each reported budget. CraFT
    takes the paper's settings, nothing is chosen on these scores. -> {str(queries): result}."""
    run_dir = workdir / f"{method.name}-seed{seed}"
    points = budget.craft_queries
    every = points[0] // budget.craft_popsize  # generations between scores
    cfg = TrainConfig(
        train_data=setting.train,
        val_data=setting.test,
        output_dir=str(run_dir),
        batch_size=64,
        seed=seed,
        eval_every=every,
        save_every=points[-1],
        task=setting.task,
        method="craft",
        task_options=dict(setting.options),
        options=CraftOptions(queries=points[-1], popsize=budget.craft_popsize, lr=1e-3),
    )
    started = time.monotonic()
    train(owner.oracle, cfg, overwrite=True, progress=False)
    seconds = time.monotonic() - started
    records = RunDir(run_dir).records()
    scored = {r["queries"]: r for r in records if r["kind"] == "eval"}
    trainable_count = _adapter_parameters(run_dir / "adapter")
    return {
        str(q): {
            "val": None,
            "test": scored[q][setting.headline],
            "seconds": seconds * q / points[-1],
            "trainable": trainable_count,
        }
        for q in points
    }


def run_whitebox(owner: Owner, setting: Setting, method: Method, lr: float, seed: int, budget: Budget) -> dict:
    task = make_task(setting.task, owner.oracle, options=dict(setting.options))
    train_set, val_set = task.load(setting.train, setting.val, seed)
    model = load_whitebox(owner.model_name, owner.weights, method.method)
    seconds = train_whitebox(
        task, model, train_set, budget.steps, lr, budget.batch_size, seed, warmup=GradientOptions.warmup
    )
    _, test_set = task.load(None, setting.test, seed)
    model.eval()
    return {
        "val": task.evaluate(model, val_set, 64)[setting.headline],
        "test": task.evaluate(model, test_set, 64)[setting.headline],
        "seconds": seconds,
        "trainable": trainable(model),
    }


def run_zero_shot(owner: Owner, setting: Setting) -> dict:
    test = evaluate(owner.oracle, setting.test, None, setting.task, task_options=dict(setting.options))
    val = evaluate(owner.oracle, setting.val, None, setting.task, task_options=dict(setting.options))
    return {"val": val[setting.headline], "test": test[setting.headline], "seconds": 0.0, "trainable": 0}


def run_method(
    owner: Owner, setting: Setting, method: Method, lr: float | None, seed: int, budget: Budget, workdir: Path
):
    if method.kind == "graybox":
        return run_graybox(owner, setting, method, lr, seed, budget, workdir)
    if method.kind == "whitebox":
        return run_whitebox(owner, setting, method, lr, seed, budget)
    raise ValueError(f"run_method trains graybox and whitebox rows, not {method.kind}")
