"""The flags of --method craft (CraFT: a run's steps are CMA-ES generations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graytune.client.options import option


def paper_queries(shots: int) -> int:
    """CraFT's budgets: 8,000 queries at 8 or 16 shots (or all images), 4,000 at 2 or 4, 2,000 at 1."""
    return 8000 if shots == 0 or shots >= 8 else 4000 if shots >= 2 else 2000


@dataclass(frozen=True)
class CraftOptions:
    """The paper's defaults: population 40, z of 512 dimensions, no bounds, lambda 0.1."""

    queries: int | None = option(
        None,
        "query budget: candidate prompts scored on the few-shot set, --popsize "
        "per generation (default: the paper's, 8000 at 8-16 shots, 4000 at 2-4, "
        "2000 at 1)",
    )
    popsize: int = option(40, "CMA-ES population: candidates per generation")
    sigma: float = option(1.0, "CMA-ES's initial step size, in units of z")
    bound: float = option(0.0, "bound |z_i| of the search (0: none)")
    intrinsic_dim: int = option(512, "dimension d of the searched vector z")
    kl_weight: float = option(0.1, "lambda of the prediction-consistent KL terms of both modules")
    prompt_template: str = option(
        "a photo of a", "the server's template whose context tokens are searched (`graytune info` lists them)"
    )
    lr: float = option(1e-3, "learning rate of the refinement module's Adam")

    FREE_ON_RESUME: ClassVar[dict[str, str]] = {}  # each option shapes the search

    def __post_init__(self) -> None:
        if self.popsize < 2:
            raise ValueError(f"--popsize {self.popsize}: CMA-ES needs at least 2 candidates per generation")

    def generations(self, shots: int) -> int:
        queries = self.queries or paper_queries(shots)
        if queries < self.popsize:
            raise ValueError(f"--queries {queries}: less than one generation of --popsize {self.popsize}")
        return queries // self.popsize
