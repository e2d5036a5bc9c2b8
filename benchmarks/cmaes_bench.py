"""Time per CMA-ES generation: candidates batched on the engine vs evaluated one by one.

One process, one model, the val items of a small split, one generation of ``popsize``
candidates (+ the distribution mean, as the job scores it). Four ways to score it:

- batched + prefix cache: one ``sweep_mc`` call over the prefix cache computed once (the job);
- batched: one ``sweep_mc`` call that recomputes the items' prefix;
- one by one (engine): one ``sweep_mc`` call per candidate;
- one by one (naive): one full steered forward pass of the items per candidate.

All four give the same fitness (checked). Prints seconds per generation and the ratios.

    .venv/bin/python benchmarks/cmaes_bench.py                   # embedded SmolLM2-135M
    .venv/bin/python benchmarks/cmaes_bench.py model=tiny_random # seconds, for a smoke test
"""

from __future__ import annotations

import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.core import cmaes, engine, intervene, score, tokens
from eas.experiments.steer import Steer

DEFAULTS = ["max_sample_size=60", "layer=14", "strength=4", "progress=false", "batch_size=16",
            "experiment.popsize=8"]


def main(overrides: list[str]) -> None:
    config_mod.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"store.root={tempfile.mkdtemp()}", *DEFAULTS, *overrides])
    popsize = int(cfg.experiment.popsize)
    job = Steer(cfg, tempfile.mkdtemp())
    job.load()
    m, sites, head, site, layer, pad, bs = (job.lm.model, job.lm.sites, job.head, job.site, job.layers[0],
                                            job.pad, job.batch_size)
    items = job.splits["val"]
    rows = tokens.encode(job.lm.tokenizer, [job.prompter.mc(it) for it in items], job.prompter.add_special_tokens)
    n_opts, labels = [len(it.options) for it in items], torch.tensor([it.label for it in items])
    d = m.config.hidden_size
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(64, d, generator=g)
    space = cmaes.Space.from_activations(acts, acts[0] - acts[1], 16, 4.0)
    refiner = cmaes.Refiner(space.point(acts[0] - acts[1]), 0.5, popsize, seed=0)
    points = np.vstack([*refiner.es.ask(), refiner.es.mean])  # one generation as the job scores it
    deltas = space.deltas(points)
    metric = partial(cmaes.accuracy_fitness, tiebreak=True)

    def timed(fn, repeats=1):
        out = fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        return (time.perf_counter() - t0) / repeats, out

    t_prefix0 = time.perf_counter()
    pc = engine.prefix_cache(m, rows, bs, pad)
    t_prefix = time.perf_counter() - t_prefix0
    fit_cached = cmaes.mc_fitness(m, sites, rows, n_opts, labels, head, site, layer, metric, pc, bs, 64, pad)
    fit_plain = cmaes.mc_fitness(m, sites, rows, n_opts, labels, head, site, layer, metric, None, bs, 64, pad)

    def one_by_one_naive():
        out = []
        for delta in deltas:
            with intervene.add(sites, layer, site, delta, position="last"):
                out.append(score.score_mc(m, rows, n_opts, head, bs, pad))
        return metric(torch.stack(out), labels)

    t_cached, f_cached = timed(lambda: fit_cached(deltas), repeats=3)
    t_plain, f_plain = timed(lambda: fit_plain(deltas))
    t_engine1, f_engine1 = timed(lambda: torch.cat([fit_plain(x[None]) for x in deltas]))
    t_naive, f_naive = timed(one_by_one_naive)
    for name, f in (("batched", f_plain), ("one by one (engine)", f_engine1), ("one by one (naive)", f_naive)):
        agree = torch.allclose(f, f_cached, atol=1e-4)
        print(f"check: {name} fitness == batched+prefix: {agree} (max |diff| {float((f - f_cached).abs().max()):.2e})")
    print(f"model {job.lm.name} on {job.lm.device}, {torch.get_num_threads()} threads; {len(rows)} val items "
          f"(mean {np.mean([len(r) for r in rows]):.0f} tokens); popsize {popsize} (+1 mean) = {len(deltas)} "
          f"candidates per generation; layer {layer}")
    print(f"prefix cache (once per run): {t_prefix:.2f}s")
    print(f"seconds per generation: batched+prefix {t_cached:.3f} | batched {t_plain:.3f} | "
          f"one by one (engine) {t_engine1:.3f} | one by one (naive) {t_naive:.3f}")
    print(f"ratio one-by-one(naive) / batched+prefix: {t_naive / t_cached:.1f}x")
    print(f"ratio one-by-one(engine) / batched+prefix: {t_engine1 / t_cached:.1f}x")
    print(f"ratio batched / batched+prefix: {t_plain / t_cached:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
