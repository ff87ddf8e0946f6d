"""Builds (once; cached) the evidence suite's owner model and prints its zero-shot accuracy on
held-out pairs: graytune-bench (evidence/graytune-bench.json) pretrained on emoji and MNIST.

    python benchmarks/owner_model.py                 # the suite's model, about 10 min on 2 cores
    python benchmarks/owner_model.py --steps 2 --batch-size 32   # a toy build (the smoke test)

Needs `apt-get install fonts-noto-color-emoji` and `pip install 'graytune[bench]'`. Prints the
weights file, its sha256 (the same on every build of one recipe on one kind of CPU) and the
command that serves it. The file lives under $GRAYTUNE_CACHE (default ~/.cache/graytune).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from tqdm import tqdm  # noqa: E402

from evidence.owner import ARCH, Recipe, build_owner_model  # noqa: E402


def main(argv=None) -> dict:
    defaults = Recipe()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch threads; part of the cache key, since it changes the rounding",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = Recipe(
        seed=args.seed,
        steps=args.steps,
        threads=args.threads,
        batch_size=args.batch_size,
        digits_per_batch=args.batch_size * defaults.digits_per_batch // defaults.batch_size,
    )
    with tqdm(total=recipe.steps, desc="pretraining graytune-bench", disable=None) as bar:

        def progress(step: int, loss: float) -> None:
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if bar.disable and (step + 1) % max(1, recipe.steps // 10) == 0:  # no terminal: a log line
                logging.info("pretraining: step %d/%d, loss %.3f", step + 1, recipe.steps, loss)

        path, report = build_owner_model(recipe, progress)
    print(json.dumps(report, indent=2, sort_keys=True))
    print(f"weights: {path}\nserve:   graytune-server --model-config {ARCH} --weights {path}")
    return {"weights": str(path), **report}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
