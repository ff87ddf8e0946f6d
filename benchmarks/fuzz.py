"""Hostile input at volume: N cases of tests/hostile (valid requests of every RPC with one or two
mutations) against a fresh local server with three keys, while another caller sends small
Embeds. Prints how many cases got each status, how many got UNKNOWN or INTERNAL (must be 0),
the longest status message, the slowest Embed of the other caller against its bound, each
distinct violation (by what went wrong and the status message) with the RPCs and mutations it
came with and its case with the fewest mutations, and a final health check.

    python benchmarks/fuzz.py --cases 2000      # roughly 0.1 s a case on 2 cores
    python benchmarks/fuzz.py --cases 300 --seed 7

The cases are spread evenly over (RPC, first mutation) pairs, as tests/test_fuzz.py does, plus
unplanned ones per RPC (a pair with few distinct cases, like Describe's, may run fewer).
Writes OUT/fuzz.json and OUT/fuzz.png (statuses; --out, default benchmarks/results). Exits 1
when any case violates the properties.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the hostile package

from evidence.output import RESULTS, plt, save_results  # noqa: E402
from hostile.cases import PAIRS, each_case  # noqa: E402
from hostile.runner import IMPRECISE, harness, report  # noqa: E402

SERVER_ARGS = ("--plaintext", "--threads", "1", "--log-level", "WARNING")


def runs(total: int) -> list:
    """(rpc, first mutation or None, cases): `total` spread over every pair."""
    share, extra = divmod(total, len(PAIRS))
    return [(rpc, first, share + (i < extra)) for i, (rpc, first) in enumerate(PAIRS) if share + (i < extra)]


def masked(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", text)


@dataclass
class Violation:
    """One kind of violation: how often, with which RPCs and mutations, and the case that
    showed it with the fewest mutations (the closest to a minimal reproduction)."""

    count: int = 0
    seen: collections.Counter = field(default_factory=collections.Counter)  # "rpc:mutation" -> cases
    case: object = None
    report: str = ""


class Tally:
    def __init__(self, target):
        self.target = target
        self.codes = collections.Counter()
        self.longest = None  # the result with the longest status message
        self.slowest = 0.0  # the other caller's slowest Embed
        self.violations = collections.defaultdict(Violation)  # by (problem, status message), numbers masked

    def add(self, case, result) -> None:
        self.codes[result.code.name] += 1
        if self.longest is None or len(result.message) > len(self.longest.message):
            self.longest = result
        self.slowest = max(self.slowest, result.bystander_seconds)
        problems = self.target.violations(case, result)
        for problem in problems:
            v = self.violations[masked(problem), masked(result.message)[:60]]
            v.count += 1
            v.seen.update(f"{case.rpc}:{kind}" for kind in case.kinds or ("valid",))
            if v.case is None or (len(case.kinds), len(case.what)) < (len(v.case.kinds), len(v.case.what)):
                v.case, v.report = case, report(result, problems)

    def summary(self, seconds: float, health: str) -> dict:
        return {
            "cases": sum(self.codes.values()),
            "seconds": seconds,
            "statuses": dict(self.codes.most_common()),
            "unknown_or_internal": sum(self.codes[c.name] for c in IMPRECISE),
            "longest_message_chars": len(self.longest.message) if self.longest else 0,
            "bystander_slowest_s": self.slowest,
            "bystander_bound_s": self.target.delay_bound,
            "violations": [
                {"problem": problem, "message": message, "cases": v.count, "example": v.report}
                for (problem, message), v in sorted(self.violations.items())
            ],
            "health": health or "SERVING",
        }

    def print(self, seconds: float) -> None:
        n = sum(self.codes.values())
        print(f"\n{n} cases in {seconds:.0f} s ({seconds / max(n, 1):.2f} s a case)\n")
        print(f"{'status':<20}{'cases':>7}")
        for code, count in self.codes.most_common():
            print(f"{code:<20}{count:>7}")
        print(f"\nUNKNOWN or INTERNAL: {sum(self.codes[c.name] for c in IMPRECISE)}")
        print(
            f"longest status message: {len(self.longest.message)} characters "
            f"({self.longest.code.name}: {self.longest.message[:100]!r})"
        )
        print(
            f"another caller's slowest Embed: {self.slowest:.3f} s (bound {self.target.delay_bound:.2f} s, "
            f"baseline median {self.target.baseline * 1000:.1f} ms)"
        )
        cases = sum(v.count for v in self.violations.values())
        print(f"violations: {cases} cases, {len(self.violations)} distinct")
        for (problem, message), v in sorted(self.violations.items()):
            seen = ", ".join(f"{kind} ×{n}" for kind, n in v.seen.most_common(8))
            more = f" and {len(v.seen) - 8} more" if len(v.seen) > 8 else ""
            print(
                f"\n[{v.count} cases] {problem}: {message!r}\n  seen with: {seen}{more}\n"
                f"  the fewest mutations: {v.report}"
            )


def figure(summary: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    codes = summary["statuses"]
    ax.barh(
        list(codes),
        list(codes.values()),
        color=["tab:red" if c in {i.name for i in IMPRECISE} else "tab:blue" for c in codes],
    )
    ax.set_xscale("log")
    ax.set(
        xlabel="cases",
        title=f"{summary['cases']} hostile cases: {summary['unknown_or_internal']} UNKNOWN or "
        f"INTERNAL, server {summary['health']}",
    )
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="0: the cases tests/test_fuzz.py starts with")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for fuzz.json and fuzz.png")
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, harness(Path(tmp), SERVER_ARGS) as target:
        tally = Tally(target)
        for rpc, first, n in runs(args.cases):

            @each_case(target.spec, rpc, first, n, salt=args.seed)
            def each(case):
                tally.add(case, target.run(case))

            each()
            print(
                f"{sum(tally.codes.values())} cases, {time.perf_counter() - start:.0f} s: "
                f"{rpc} {first.name if first else 'any'}",
                file=sys.stderr,
                flush=True,
            )
        seconds = time.perf_counter() - start
        tally.print(seconds)
        health = target.health()
        print(f"\nfinal health check: {health or 'SERVING, and a valid Embed answers'}")
    summary = tally.summary(seconds, health)
    print(f"written to {save_results(args.out, 'fuzz', summary, lambda: figure(summary))} and its .png")
    sys.exit(1 if tally.violations or health else 0)


if __name__ == "__main__":
    main()
