"""One table, one run: each method on each setting, the learning rate chosen on val with seed 0
at the budget's steps, then its longer step counts tried at that rate and the best on val kept,
then every seed at that rate and length; mean ± std of the test score and paired differences with 95%
confidence intervals (Student's t over seeds: the seeds pair the rows, each seed drawing the same
few shots and batches for every row)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from graytune.client.data.files import write_text_atomically

from evidence.methods import METHODS, Budget, Method, Owner, Setting, run_craft, run_method, run_zero_shot

log = logging.getLogger("evidence.table")

# (row, reference): the papers' claims, as differences in points of the headline score.
PAIRS = (
    ("DGA", "full fine-tuning"),
    ("DGA", "LoRA"),
    ("DGA", "input only"),
    ("DGA", "output only"),
    ("LGA", "DGA"),
    ("CraFT 2k", "zero-shot"),
    ("CraFT 8k", "zero-shot"),
    ("CraFT 8k", "full fine-tuning"),
)


def craft_row(queries: int) -> str:
    return f"CraFT {queries // 1000}k" if queries % 1000 == 0 else f"CraFT {queries}"


def run_setting(
    owner: Owner,
    setting: Setting,
    seeds: Sequence[int],
    budget: Budget,
    workdir: Path,
    methods: Sequence[Method] = METHODS,
    craft_on: Sequence[str] = (),
) -> dict[str, dict]:
    """-> {row: {"lr": chosen, "tried": {lr: val score}, "runs": [one result per seed]}}.
    CraFT runs on the settings named in `craft_on` only: a query embeds every class prompt, so
    its cost grows with the classes (8,000 queries of 40 classes are 320,000 prompts)."""
    rows: dict[str, dict] = {}
    for method in methods:
        if setting.task not in method.tasks or (method.kind == "craft" and setting.name not in craft_on):
            continue
        # One folder per backbone and setting; a finished run's result is kept beside its run.
        where = workdir / owner.oracle.describe().backbone.sha256[:12] / setting.name.replace("/", "-")
        if method.kind == "zero-shot":
            result = remembered(where / "zero-shot.json", lambda: run_zero_shot(owner, setting))
            rows[method.name] = {"lr": None, "tried": {}, "runs": [result] * len(seeds)}  # no seed changes it
        elif method.kind == "craft":
            queries = "-".join(map(str, budget.craft_queries))
            per_seed = [
                remembered(
                    where / f"CraFT-{queries}-pop{budget.craft_popsize}-seed{seed}.json",
                    lambda: run_craft(owner, setting, method, seed, budget, where),
                )
                for seed in seeds
            ]
            for q in budget.craft_queries:
                rows[craft_row(q)] = {"lr": None, "tried": {}, "runs": [r[str(q)] for r in per_seed]}
        else:

            def run(lr: float, seed: int, steps: int) -> dict:
                size = f"{steps}x{budget.batch_size}"
                return remembered(
                    where / f"{method.name}-{method.rates(lr)}-seed{seed}-{size}.json".replace(" ", "_"),
                    lambda: run_method(
                        owner, setting, method, lr, seed, dataclasses.replace(budget, steps=steps), where
                    ),
                )

            first = {lr: run(lr, seeds[0], budget.steps) for lr in method.lrs}
            lr = max(first, key=lambda k: first[k]["val"])  # chosen on val, never on test
            lengths = {budget.steps: first[lr], **{n: run(lr, seeds[0], n) for n in budget.more_steps}}
            steps = max(lengths, key=lambda n: lengths[n]["val"])  # the first of equals: the shortest
            runs = [lengths[steps]] + [run(lr, s, steps) for s in seeds[1:]]
            rows[method.name] = {
                "lr": lr,
                "steps": steps,
                "tried": {str(k): v["val"] for k, v in first.items()},
                "tried_steps": {str(n): v["val"] for n, v in lengths.items()},
                "runs": runs,
            }
        row = rows.get(method.name) or rows[craft_row(budget.craft_queries[-1])]
        log.info("%-24s %-18s test %s", setting.name, method.name, describe(tests(row)))
    return rows


def remembered(path: Path, compute: Callable[[], dict]) -> dict:
    """compute()'s result, kept in `path`: a table run again (or after a crash) skips the runs
    it has finished."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(result))
    return result


def tests(row: dict) -> list[float]:
    return [100 * r["test"] for r in row["runs"]]  # points


def describe(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {stdev(values):.1f}"


def stdev(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def interval(differences: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean of paired differences and its 95% confidence interval (None with one seed)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None, None
    from scipy.stats import t

    half = t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half


def paired(
    results: dict[str, dict[str, dict]],
    row: str,
    reference: str,
    settings: Sequence[str] | None = None,
    over: str = "all",
) -> dict | None:
    """row - reference in points, per seed averaged over `settings` (default: every setting
    that has both rows), with its 95% CI."""
    names = [s for s in (settings or results) if row in results.get(s, {}) and reference in results[s]]
    if not names:
        return None
    per_setting = [[a - b for a, b in zip(tests(results[s][row]), tests(results[s][reference]))] for s in names]
    per_seed = [statistics.fmean(values) for values in zip(*per_setting)]
    mean, low, high = interval(per_seed)
    return {"row": row, "reference": reference, "over": over, "settings": names, "mean": mean, "ci95": [low, high]}


def summary(results: dict[str, dict[str, dict]], pixel_settings: Sequence[str]) -> dict:
    """Every row's mean ± std per setting, and the claims' paired differences."""
    table = {
        s: {
            row: {
                "mean": statistics.fmean(tests(r)),
                "std": stdev(tests(r)),
                "lr": r["lr"],
                "steps": r.get("steps"),
                "trainable": r["runs"][0]["trainable"],
                "seconds": statistics.fmean(x["seconds"] for x in r["runs"]),
            }
            for row, r in rows.items()
        }
        for s, rows in results.items()
    }
    claims = [paired(results, a, b) for a, b in PAIRS]
    claims += [paired(results, "DGA", ref, pixel_settings, "pixel shifts") for ref in ("input only", "output only")]
    return {"table": table, "claims": [c for c in claims if c]}


def chosen_on_val(result: dict) -> str:
    """A row's learning rate and steps, chosen on val with the first seed: '3e-3, 400'."""
    return f"{result['lr']:.0e}".replace("e-0", "e-") + f", {result['steps']}"


def markdown(summary_: dict, rows: Sequence[str]) -> str:
    """The table (rows × settings, mean ± std in points) and the claims, as Markdown."""
    table = summary_["table"]
    settings = list(table)
    lines = ["| method | " + " | ".join(settings) + " | trainable | s / run |", "|---|" + "---|" * (len(settings) + 2)]
    for row in rows:
        cells = [
            f"{table[s][row]['mean']:.1f} ± {table[s][row]['std']:.1f}" if row in table[s] else "–" for s in settings
        ]
        present = [table[s][row] for s in settings if row in table[s]]
        if present:
            seconds = statistics.fmean(p["seconds"] for p in present)
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {present[0]['trainable']:,} | {seconds:.0f} |")
    lines += [
        "",
        "| learning rate, steps chosen on val | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    lines += [
        f"| {row} | " + " | ".join(chosen_on_val(table[s][row]) if row in table[s] else "–" for s in settings) + " |"
        for row in rows
        if any(row in table[s] and table[s][row]["lr"] is not None for s in settings)
    ]
    lines += ["", "| claim | over | difference (points) | 95% CI |", "|---|---|---|---|"]
    for c in summary_["claims"]:
        low, high = c["ci95"]
        ci = f"[{low:+.1f}, {high:+.1f}]" if low is not None else "(one seed)"
        lines.append(
            f"| {c['row']} − {c['reference']} | {c['over']} ({len(c['settings'])}) | {c['mean']:+.1f} | {ci} |"
        )
    return "\n".join(lines)
