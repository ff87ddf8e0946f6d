"""Does gray-box tuning through an oracle come close to having the weights? One table, one run:
zero-shot, linear probe, output adapters only, input adapters only, DGA, LGA, CraFT at 2,000 and
8,000 queries, and the white-box references with the weights in-process (full fine-tuning; LoRA
from `peft`), on the same backbone and target domains, over several seeds.

    python benchmarks/accuracy_table.py                  # the CPU table (see benchmarks/README.md)
    python benchmarks/accuracy_table.py --smoke          # toy size, one seed (the smoke test)
    python benchmarks/accuracy_table.py --model ViT-B-32 --weights vit-b-32.safetensors \\
        --setting classify/mydata:train.csv,val.csv,test.csv      # your weights, your data

By default the owner is the evidence suite's model (owner_model.py; built once, cached) and the
settings are the target domains of evidence/domains.py, written under --workdir. Every gray-box
row and CraFT trains through a real `graytune-server` over gRPC; learning rates are chosen on
each setting's val split with the first seed, and the test split is reported. Writes
OUT/accuracy_table.json, .md and .png, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from pathlib import Path

from graytune.openmp import wait_passively

wait_passively()  # client and server share the cores
os.environ["HF_HUB_OFFLINE"] = "1"

from graytune.client.data.files import write_text_atomically  # noqa: E402
from graytune.client.transport.local_server import LocalServer  # noqa: E402
from graytune.client.transport.oracle_client import IMAGE_WIRES, OracleClient  # noqa: E402

from evidence import domains as target  # noqa: E402
from evidence.methods import METHODS, TASKS, Budget, Owner, Setting  # noqa: E402
from evidence.output import RESULTS, save_results  # noqa: E402
from evidence.owner import ARCH, OwnerData, Recipe, build_owner_model  # noqa: E402
from evidence.plot import table_figure  # noqa: E402
from evidence.table import craft_row, markdown, run_setting, summary  # noqa: E402

# (task, domain): the default row sets, in the order they run. Every task of the CLI has at least
# one, and both kinds of shift: pixels (greyscale, sketches as edge maps, colour cast, inverted)
# and concepts (the 8x8 digits). Each is a setting where zero-shot is weak and output adapters
# alone stay short of the ceiling (seed-0 probes on 636e30fa: retrieval on emoji-new went 16 ->
# 99.6 with output adapters only, and on emoji-new-motion 14 -> 95, so neither can tell the
# methods apart; run them with --domains).
DEFAULT_SETTINGS = (
    ("retrieval", "emoji-greyscale"),
    ("sketch", "emoji-sketch"),
    ("video", "emoji-greyscale-motion"),
    ("classify", "digits-8x8"),
    ("classify", "emoji-colour-cast"),
    ("classify", "emoji-inverted"),
)
SMOKE_RECIPE = Recipe(steps=2, batch_size=32, digits_per_batch=6)  # = owner_model.py --steps 2 --batch-size 32
SMOKE_SETTINGS = (
    ("classify", "emoji-inverted"),
    ("retrieval", "emoji-new"),
    ("sketch", "emoji-sketch"),
    ("video", "emoji-new-motion"),
)


def domain_settings(pairs, workdir: Path, shots: int, size: int, smoke: bool = False) -> list:
    data = functools.cache(lambda: OwnerData.build(size))  # only if a domain is not yet written
    settings = []
    for task, name in pairs:
        domain = target.DOMAINS[name]
        if smoke:  # 8 classes, a few views each, in a folder of their own
            domain = dataclasses.replace(domain, classes=8, views=(4, 2, 4))
        root = target.write_domain(domain, workdir / ("data-smoke" if smoke else "data"), data, size)
        suffix = {"sketch": "_sketch.csv", "video": "_video.csv"}.get(task, ".csv")
        paths = {s: str(root / f"{s}{suffix}") for s in target.SPLITS}
        options = {"shots": shots} if task == "classify" else {}
        settings.append(Setting(task, name, paths["train"], paths["val"], paths["test"], options))
    return settings


def suite_settings(text: str) -> list:
    """'classify/digits-8x8,sketch/emoji-sketch' -> [(task, domain), ...], each checked."""
    pairs = [tuple(item.split("/", 1)) for item in text.split(",")]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in TASKS or pair[1] not in target.DOMAINS:
            raise SystemExit(
                f"--domains: {'/'.join(pair)!r} is not TASK/DOMAIN with a task of {TASKS} "
                f"and a domain of {list(target.DOMAINS)}"
            )
    return pairs


def given_setting(text: str, shots: int) -> Setting:
    """'task/name:train,val,test' -> a Setting on the user's files."""
    head, _, files = text.partition(":")
    task, _, name = head.partition("/")
    paths = files.split(",")
    if not name or len(paths) != 3:
        raise SystemExit(f"--setting {text!r}: expected task/name:train.csv,val.csv,test.csv")
    return Setting(task, name, *paths, options={"shots": shots} if task == "classify" else {})


def pixel_settings(settings) -> list:
    return [s.name for s in settings if s.domain in target.DOMAINS and target.DOMAINS[s.domain].shift]


def write_report(report: dict, rows, out: Path) -> str:
    """OUT/accuracy_table.json, .md and .png -> the Markdown table."""
    text = markdown(report, rows)
    save_results(out, "accuracy_table", report, lambda: table_figure(report, rows))
    write_text_atomically(out / "accuracy_table.md", text + "\n")
    return text


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, default=Budget.steps, help="steps at which every trained row's learning rate is chosen"
    )
    parser.add_argument(
        "--more-steps",
        default=",".join(map(str, Budget.more_steps)),
        help="longer runs tried at the chosen rate, comma-separated ('' for none)",
    )
    parser.add_argument("--batch-size", type=int, default=Budget.batch_size)
    parser.add_argument("--queries", default="2000,8000", help="CraFT's reported budgets (one run to the last)")
    parser.add_argument(
        "--craft-on",
        help="settings CraFT runs on, comma-separated (its cost grows with the "
        "classes; default: classify/digits-8x8, or every --setting)",
    )
    parser.add_argument("--shots", type=int, default=16, help="classify: training images per class")
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS), help="rows to run (comma-separated)")
    parser.add_argument(
        "--domains",
        default=",".join(f"{t}/{d}" for t, d in DEFAULT_SETTINGS),
        help="the evidence suite's row sets to run, in this order (TASK/DOMAIN, comma-separated; "
        f"domains: {', '.join(target.DOMAINS)})",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="TASK/NAME:TRAIN,VAL,TEST",
        help="a row set on your own files (repeat); instead of --domains",
    )
    parser.add_argument("--model", help="OpenCLIP architecture of --weights (default: the suite's owner model)")
    parser.add_argument("--weights", help="the owner's .safetensors weights (default: built by owner_model.py)")
    parser.add_argument("--pretrained", help="an OpenCLIP pretrained tag instead of --weights (needs a network)")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra graytune-server flag (repeat)")
    parser.add_argument(
        "--wire",
        choices=IMAGE_WIRES,
        default="pixels",
        help="how the gray-box rows' images travel (graytune's --wire): the committed table's runs were "
        "made in pixel mode, before the frugal image call existed (default: %(default)s)",
    )
    parser.add_argument("--workdir", default="graytune-bench-work", help="data and runs (reused where complete)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--smoke", action="store_true", help="toy size: one seed, 4 settings of 8 classes, a few steps and queries"
    )
    return parser.parse_args(argv)


def owner_source(args) -> tuple:
    """-> (model name, weights path, graytune-server flags)."""
    if args.pretrained:
        import open_clip  # the white-box rows need the same weights in-process

        path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(args.model, args.pretrained))
        return args.model, path, ["--model", args.model, "--pretrained", args.pretrained]
    if args.weights:
        return args.model, args.weights, ["--model", args.model, "--weights", args.weights]
    recipe = SMOKE_RECIPE if args.smoke else Recipe()
    path, report = build_owner_model(recipe)
    logging.getLogger("evidence").info("owner model %s: zero-shot %s", path.name, report["zero_shot"])
    return ARCH.stem, str(path), ["--model-config", str(ARCH), "--weights", str(path)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("evidence").setLevel(logging.INFO)  # one line per row; OpenCLIP's INFO lines stay quiet
    if args.smoke:
        args.seeds, args.steps, args.more_steps, args.queries, args.shots, args.batch_size = 1, 4, "8", "16,32", 2, 8
    queries = tuple(int(q) for q in args.queries.split(","))
    budget = Budget(
        steps=args.steps,
        more_steps=tuple(int(n) for n in args.more_steps.split(",") if n),
        batch_size=args.batch_size,
        craft_queries=queries,
        craft_popsize=8 if args.smoke else Budget.craft_popsize,
    )
    methods = [m for m in METHODS if m.name in args.methods.split(",")]
    if args.smoke:
        methods = [dataclasses.replace(m, lrs=m.lrs[:1]) for m in methods]
    workdir = Path(args.workdir)
    domains = suite_settings(args.domains)  # refused before the owner model is built
    model_name, weights, server_flags = owner_source(args)
    with (
        LocalServer(["--dev", "--plaintext", "--tier", "graybox-plus", *server_flags, *args.server_arg]) as server,
        OracleClient(server.endpoint, image_wire=args.wire) as oracle,
    ):
        described = oracle.describe()
        size, sha256 = described.image.height, described.backbone.sha256
        settings = [given_setting(s, args.shots) for s in args.setting] or domain_settings(
            SMOKE_SETTINGS if args.smoke else domains, workdir, args.shots, size, args.smoke
        )
        owner = Owner(oracle, model_name, weights)
        started = time.monotonic()
        craft_on = (
            args.craft_on.split(",")
            if args.craft_on
            else [s.name for s in settings]
            if args.smoke or args.setting
            else ["classify/digits-8x8"]
        )
        rows = [name for m in methods for name in ([craft_row(q) for q in queries] if m.kind == "craft" else [m.name])]
        results = {}
        for setting in settings:  # the report so far is written after each setting
            results[setting.name] = run_setting(
                owner, setting, range(args.seeds), budget, workdir / "runs", methods, craft_on
            )
            report = {
                "seeds": args.seeds,
                "budget": dataclasses.asdict(budget),
                "minutes": round((time.monotonic() - started) / 60, 1),
                "owner": {"model": model_name, "weights": Path(weights).name, "sha256": sha256},
                "settings": [dataclasses.asdict(s) for s in settings if s.name in results],
                "results": results,
                **summary(results, pixel_settings(settings)),
            }
            text = write_report(report, rows, Path(args.out))
    print(text)
    print(
        f"\n{len(settings)} settings, {args.seeds} seeds in {report['minutes']} min; "
        f"written to {args.out}/accuracy_table.{{json,md,png}}"
    )
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
