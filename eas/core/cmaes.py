"""CMA-ES refinement of a steering vector in a principal subspace.

The search space is the span of the top ``k`` principal components of activations
captured at the steered layer (plus, optionally, a log-strength). A point
``x = [z_1 .. z_k (, t)]`` is the steering delta

    strength(x) * vector(x),   vector(x) = unit * sum_i z_i * pc_i,   strength(x) = strength0 * exp(t)

with ``unit = ||c0|| / sqrt(k)`` (``c0``: the start vector's coefficients), so the start
point has coordinates of size ~1 and ``sigma0`` is the relative size of a first step
(a step of ``sigma0`` in every coordinate has norm ~``sigma0 * ||c0||``).

A fitness is a plain callable: ``[n, d_model]`` steering deltas -> ``[n]`` scores, higher
is better. ``mc_fitness`` scores a whole generation with one call of the fast engine
(candidates stacked as query tokens over a cached prefix). ``Refiner`` is a thin ask/tell
loop over ``cma.CMAEvolutionStrategy`` whose state (the strategy and its private random
generator) pickles, so a run resumed from any generation continues exactly.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eas.core.engine import Cell, PrefixCache, sweep_mc
from eas.core.score import LetterHead
from eas.core.sites import SiteMap

Fitness = Callable[[Tensor], Tensor]  # [n, d_model] deltas -> [n] scores (higher is better)


# -- the search space ------------------------------------------------------------------
def pca_basis(acts: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top principal directions of ``acts`` ``[n, d_model]``.

    Returns:
        ``(basis [k', d_model], explained [k'])``: orthonormal rows, largest variance first,
        each signed so its largest-magnitude entry is positive (deterministic across
        platforms); ``explained`` is each direction's share of the total variance.
        ``k' = min(k, n - 1, d_model)``: centred data has rank at most ``n - 1``.

    Raises:
        ValueError: fewer than 2 activations, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k={k}: need at least one principal component")
    if acts.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 activations, got {acts.shape[0]}")
    x = acts.double()
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, acts.shape[0] - 1, acts.shape[1])
    basis = vh[:k]
    top = basis.abs().argmax(-1)
    signs = torch.sign(basis[torch.arange(k), top])
    basis = basis * signs[:, None]
    var = s**2
    return basis.float(), (var[:k] / var.sum()).float()


@dataclass(frozen=True)
class Space:
    """Points ``[dim]`` <-> steering deltas ``[d_model]`` (module docstring for the map).

    Attributes:
        basis: ``[k, d_model]`` orthonormal rows.
        explained: ``[k]`` variance share of each direction.
        unit: activation units per coordinate.
        strength0: the strength at ``t = 0``.
        optimize_strength: whether the last coordinate is a log-strength.
    """

    basis: Tensor
    explained: Tensor
    unit: float
    strength0: float
    optimize_strength: bool = False

    @classmethod
    def from_activations(cls, acts: Tensor, vector: Tensor, k: int, strength0: float,
                         optimize_strength: bool = False) -> Space:
        """The span of the top-``k`` PCs of ``acts`` ``[n, d_model]``, scaled to ``vector``."""
        basis, explained = pca_basis(acts, k)
        c0 = basis @ vector.float()
        norm = float(c0.norm())
        unit = norm / basis.shape[0] ** 0.5 if norm > 0 else 1.0
        return cls(basis, explained, unit, float(strength0), optimize_strength)

    @property
    def k(self) -> int:
        return self.basis.shape[0]

    @property
    def dim(self) -> int:
        return self.k + int(self.optimize_strength)

    def coefficients(self, vector: Tensor) -> Tensor:
        """``[d_model] -> [k]``: coordinates of the vector's projection on the basis."""
        return self.basis @ vector.float()

    def project(self, vector: Tensor) -> Tensor:
        """The vector's projection on the span, ``[d_model]``."""
        return self.coefficients(vector) @ self.basis

    def point(self, vector: Tensor, strength: float | None = None) -> np.ndarray:
        """The point ``[dim]`` whose delta is ``strength x projection(vector)`` (strength0 by default)."""
        z = (self.coefficients(vector) / self.unit).double().numpy()
        if not self.optimize_strength:
            return z
        s = self.strength0 if strength is None else strength
        return np.r_[z, np.log(s / self.strength0)]

    def decode(self, points: np.ndarray) -> tuple[Tensor, Tensor]:
        """``[n, dim]`` points -> ``(vectors [n, d_model], strengths [n])`` (float32)."""
        x = torch.as_tensor(np.atleast_2d(points), dtype=torch.float64)
        vectors = ((x[:, : self.k] * self.unit) @ self.basis.double()).float()
        if self.optimize_strength:
            strengths = (self.strength0 * torch.exp(x[:, self.k])).float()
        else:
            strengths = torch.full((x.shape[0],), self.strength0)
        return vectors, strengths

    def deltas(self, points: np.ndarray) -> Tensor:
        """``[n, dim]`` points -> ``[n, d_model]`` steering deltas ``strength x vector``."""
        vectors, strengths = self.decode(points)
        return strengths[:, None] * vectors


# -- fitness ----------------------------------------------------------------------------
def label_logprob(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean log-probability of each item's labelled letter: ``[c, n, L], [n] -> [c]``.

    Probabilities are a softmax over the item's option letters (others are -inf). On an A/B
    set the label is the behaviour-matching answer.
    """
    logp = torch.log_softmax(scores.float(), dim=-1)
    return logp.gather(-1, labels.view(1, -1, 1).expand(scores.shape[0], -1, 1)).squeeze(-1).mean(-1)


def accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Share of items whose top letter is the label: ``[c, n, L], [n] -> [c]``."""
    return (scores.argmax(-1) == labels[None]).float().mean(-1)


def accuracy_fitness(scores: Tensor, labels: Tensor, tiebreak: bool = True) -> Tensor:
    """Accuracy, plus (``tiebreak``) ``mean p(label) / (2n)``: ``[c, n, L], [n] -> [c]``.

    Accuracies differ in steps of ``1/n`` and the tie-breaker is below ``1/(2n)``, so the
    order by accuracy is kept exactly; among equal accuracies the candidate that puts more
    probability on the right letters wins, which gives CMA-ES a slope on accuracy's plateaus.
    """
    acc = accuracy(scores, labels)
    if not tiebreak:
        return acc
    p = torch.softmax(scores.float(), dim=-1)
    p_label = p.gather(-1, labels.view(1, -1, 1).expand(scores.shape[0], -1, 1)).squeeze(-1).mean(-1)
    return acc + p_label / (2 * labels.shape[0])


def mc_fitness(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    n_options: Sequence[int],
    labels: Tensor,
    head: LetterHead,
    site: str,
    layer: int,
    metric: Callable[[Tensor, Tensor], Tensor],
    prefix: PrefixCache | None = None,
    batch_size: int = 16,
    cells_per_pass: int = 64,
    pad: int = 0,
) -> Fitness:
    """A fitness that scores all deltas of a call with one ``sweep_mc`` call at ``layer``.

    ``metric(scores [c, n, L], labels [n]) -> [c]`` turns letter scores into fitness
    (``accuracy_fitness``, ``label_logprob``). Pass ``prefix`` (``engine.prefix_cache`` of
    ``token_rows``) to compute the items' prefixes once for every generation.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)

    def fitness(deltas: Tensor) -> Tensor:
        cells = [Cell(layer, 1.0, d) for d in deltas]
        scores = sweep_mc(model, sites, token_rows, n_options, head, site, cells, batch_size=batch_size,
                          cells_per_pass=cells_per_pass, pad=pad, prefix=prefix)
        return metric(scores, labels)

    return fitness


def in_space(space: Space, fitness: Fitness) -> Callable[[np.ndarray], np.ndarray]:
    """``fitness`` over points ``[n, dim]`` of ``space`` (float64 numpy, for CMA-ES)."""
    return lambda points: fitness(space.deltas(points)).double().numpy()


# -- the optimiser ----------------------------------------------------------------------
@dataclass
class Generation:
    """One generation's record (fitness is higher-is-better)."""

    generation: int
    fitness: np.ndarray  # [popsize]
    centre_fitness: float  # the fitness of the distribution mean that sampled this generation
    best_so_far: float
    sigma: float  # step size after the update
    seconds: float

    def row(self) -> dict:
        f = self.fitness
        return {"generation": self.generation, "best": float(f.max()), "mean": float(f.mean()),
                "median": float(np.median(f)), "worst": float(f.min()), "centre": self.centre_fitness,
                "best_so_far": self.best_so_far, "sigma": self.sigma, "n_evaluations": len(f) + 1,
                "seconds": self.seconds}


class Refiner:
    """Ask/tell CMA-ES that maximises a fitness over points, one generation per ``step``.

    The strategy samples from a private ``numpy.random.RandomState(seed)`` (never the
    global one), which pickles with it: ``Refiner.loads(r.dumps())`` continues exactly as
    ``r`` would have. The best point seen (population or distribution mean) is kept.
    """

    def __init__(self, x0: np.ndarray, sigma0: float, popsize: int, seed: int):
        try:
            import cma
        except ImportError as e:
            raise ImportError("experiment=cmaes needs pycma: pip install -e '.[cmaes]' (or pip install cma)") from e

        rng = np.random.RandomState(seed)
        opts = {"popsize": popsize, "seed": np.nan, "randn": rng.randn, "verbose": -9, "verb_disp": 0,
                "verb_log": 0}
        self.es = cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, opts)
        self.generation = 0
        self.best_x = np.asarray(x0, dtype=float).copy()
        self.best_f = -np.inf

    def observe(self, x: np.ndarray, f: float) -> None:
        """Count an evaluated point towards the best seen (e.g. the start)."""
        if f > self.best_f:
            self.best_x, self.best_f = np.asarray(x, dtype=float).copy(), float(f)

    def step(self, fitness: Callable[[np.ndarray], np.ndarray]) -> Generation:
        """Ask ``popsize`` points, score them and the distribution mean in one ``fitness`` call, tell."""
        t0 = time.perf_counter()
        xs = self.es.ask()
        centre = self.es.mean.copy()
        points = np.vstack([*xs, centre])
        f_all = np.asarray(fitness(points), dtype=float)
        if f_all.shape != (len(points),):
            raise ValueError(f"fitness returned shape {f_all.shape}, expected ({len(points)},)")
        f = f_all[:-1]
        self.es.tell(xs, list(-f))  # cma minimises
        for x, fx in zip(points, f_all):
            self.observe(x, fx)
        self.generation += 1
        return Generation(self.generation, f, float(f_all[-1]), self.best_f, float(self.es.sigma),
                          time.perf_counter() - t0)

    def stop(self) -> dict:
        """pycma's termination criteria that hold now (empty while it should go on)."""
        return dict(self.es.stop())

    @property
    def mean(self) -> np.ndarray:
        return self.es.mean.copy()

    def dumps(self) -> bytes:
        return pickle.dumps(self)

    @staticmethod
    def loads(blob: bytes) -> Refiner:
        r = pickle.loads(blob)
        if not isinstance(r, Refiner):
            raise TypeError(f"not a Refiner checkpoint: {type(r).__name__}")
        return r
