"""CMA-ES over the prompt's intrinsic vector z, from the `cma` package, resumable bit for bit.

`cma` draws its samples from the `randn` option; a seeded generator of our own there (instead of
numpy's global one) makes the search a function of the seed alone, and pickling the strategy
carries the generator's state, so a resumed search asks what the uninterrupted one would have.
"""

from __future__ import annotations

import pickle

import numpy as np
import torch

from graytune.client.methods.craft.options import CraftOptions


class SeededNormal:
    """cma's `randn(*shape)`, from a numpy Generator of our own (picklable)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class PromptSearch:
    """ask() -> (P, d) candidates; tell(candidates, fitness) with (P,) losses, lower is better."""

    def __init__(self, dim: int, settings: CraftOptions, seed: int):
        try:
            import cma
        except ModuleNotFoundError:
            raise ModuleNotFoundError("--method craft needs the cma package: pip install 'graytune[craft]'") from None
        options = {
            "popsize": settings.popsize,
            "randn": SeededNormal(seed),
            "verbose": -9,
            "seed": np.nan,
        }  # nan: cma leaves numpy's global generator alone
        if settings.bound > 0:
            options["bounds"] = [-settings.bound, settings.bound]
        self.es = cma.CMAEvolutionStrategy(dim * [0.0], settings.sigma, inopts=options)

    def ask(self) -> torch.Tensor:
        self._asked = self.es.ask()
        return torch.tensor(np.array(self._asked), dtype=torch.float32)  # (P, d)

    def tell(self, fitness: torch.Tensor) -> None:
        """(P,) fitness of the candidates of the last ask, in their order."""
        self.es.tell(self._asked, fitness.double().tolist())

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    def state(self) -> bytes:
        """The whole strategy (mean, covariance, step size, generator), for a checkpoint."""
        return self.es.pickle_dumps()

    @classmethod
    def from_state(cls, state: bytes) -> PromptSearch:
        search = cls.__new__(cls)
        search.es = pickle.loads(state)  # the run's own checkpoint, written by `state`
        return search
