"""experiment=cmaes: how far is an extracted steering vector from the best one nearby?

1. the base's steps 1-4 (``Experiment``: load, unsteered scores, extracted vectors, the
   layer x strength grid on val); the best extracted cell on val is the start;
2. the search space: the top ``k`` principal components, at that layer, of the train
   activations the vector was extracted from (the contrast's positives and negatives), plus
   optionally a log-strength; the start point is the extracted vector's projection (the
   whole vector for mean-difference methods once ``k`` reaches the activations' rank);
3. generations: ask ``popsize`` candidates, score all of them and the distribution mean
   with one fitness call (for the MC fitnesses: one call of the fast engine over a prefix
   cache computed once), tell; after every generation the optimiser state and the history
   go to the store in one atomic record, so a killed run resumes where it stopped and ends
   exactly as an uninterrupted one;
4. the refined vector is the best point seen on val; the extracted vector, its projection
   and the refined vector are scored on val and on test;
5. write ``cmaes_history.parquet``, ``components.csv``, ``vectors/refined_<site>_L<layer>.safetensors``, the fitness curve,
   ``summary.json`` and ``manifest.json``; the refined vector also goes to the store,
   where ``method=refined`` (``eas.methods.refined``) finds it.

Fan-out (``experiment.fanout.workers=N``, ``eas.fanout``): step 3's fitness calls go to
one submitit array of ``N`` long-lived workers (``cluster=local`` or ``slurm``, each with the
``resources`` group's cpus, GPUs, memory and time). Each worker rebuilds this job's state from
its resolved config (``<run dir>/fanout/config.yaml``), loads the model once and builds the same
fitness at the same layer on val (for the MC fitnesses: one prefix cache for every generation);
a generation's deltas are split into ``N`` chunks, scored by the workers and concatenated in
order, so the optimiser, its checkpoints and the final scores (step 4, here) do not change:
the same seed gives the same search as ``workers=0`` (up to float noise in the letter scores).
A worker that dies fails the run with its job id and log; every finished generation is
checkpointed, so re-running resumes.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from eas import fanout, models, store
from eas.config import ConfigError, EasConfig, choice, model_preset
from eas.core import cmaes, engine
from eas.core import judge as judge_mod
from eas.data.schema import DataError, MCItem
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment
from eas.methods import base as methods
from eas.methods import refined as refined_method

log = logging.getLogger("eas")
FITNESS_NAMES = ("val_accuracy", "behaviour_logprob", "judge", "api_judge")
FANOUT_CLUSTERS = ("local", "slurm")
JUDGE_PROMPTS = ("benchmark", "prompt_set")  # experiment.judge.prompts  # submitit executors for experiment.fanout


@dataclass
class JudgeConfig:
    # fitness=judge (local model) or api_judge (OpenAI-compatible endpoint)
    model: str = MISSING  # "same" = the steered model, unsteered; else a conf/model preset name
    rubric: str = MISSING
    n_prompts: int = MISSING  # val items (or prompt-set prompts) whose prompts are continued and judged
    # benchmark: the split's multiple-choice prompts; prompt_set: free-form prompts of `prompts`
    # (its first n_prompts for the search, the next n_prompts for the final test score)
    prompts: str = "benchmark"
    max_new_tokens: int = MISSING
    api_model: str = MISSING
    api_base: str = MISSING
    api_key_env: str = MISSING


@dataclass
class FanoutConfig:
    # evaluate each generation on a submitit array of long-lived workers
    workers: int = MISSING  # 0 = in-process; N = one array of N tasks, each keeping the model loaded
    cluster: str = MISSING  # local (subprocesses on this machine) | slurm
    poll_s: float = MISSING  # seconds between two looks at the file queue (coordinator and workers)
    start_timeout_s: float = MISSING  # every worker must be serving within this (queue wait + model load)
    slurm_parameters: dict[str, Any] = MISSING  # extra submitit slurm_* (account, qos, setup)


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/cmaes.yaml``."""

    k: int = MISSING  # principal components of the layer's train (contrast) activations spanning the search
    popsize: int = MISSING
    sigma0: float = MISSING  # first step, relative to the start vector's norm
    generations: int = MISSING
    fitness: str = MISSING  # val_accuracy | behaviour_logprob | judge | api_judge
    tiebreak: bool = MISSING  # val_accuracy: break accuracy ties by mean p(correct letter)
    optimize_strength: bool = MISSING  # add log-strength as a search coordinate
    judge: JudgeConfig = MISSING
    fanout: FanoutConfig = MISSING  # workers: resources group


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    if not methods.is_extracted(methods.module(cfg.method)):
        raise ConfigError(f"method={cfg.method.name} with experiment=cmaes: the experiment refines an extracted "
                          f"vector; pick how it is extracted, e.g. method=pasf or method=mean_diff")
    choice("experiment.fitness", x.fitness, FITNESS_NAMES)
    for name, low in (("k", 1), ("popsize", 2), ("generations", 1)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not x.sigma0 > 0:
        raise ConfigError(f"experiment.sigma0={x.sigma0}: must be > 0 (relative to the start vector's norm)")
    if x.fitness in ("judge", "api_judge"):
        for name in ("n_prompts", "max_new_tokens"):
            if x.judge[name] < 1:
                raise ConfigError(f"experiment.judge.{name}={x.judge[name]}: must be >= 1")
        choice("experiment.judge.prompts", x.judge.prompts, JUDGE_PROMPTS)
    f = x.fanout
    if f.workers < 0:
        raise ConfigError(f"experiment.fanout.workers={f.workers}: must be >= 0 (0 evaluates in-process)")
    choice("experiment.fanout.cluster", f.cluster, FANOUT_CLUSTERS)
    for name in ("poll_s", "start_timeout_s"):
        if not f[name] > 0:
            raise ConfigError(f"experiment.fanout.{name}={f[name]}: must be > 0 (seconds)")


# -- fitness plugins (experiment.fitness): (job, layer, split) -> fitness over deltas ------
def val_accuracy(job: Cmaes, layer: int, split: str) -> cmaes.Fitness:
    """Steered MC accuracy, ties broken by mean p(correct letter) (``cmaes.accuracy_fitness``)."""
    return job.mc_fitness(layer, split, partial(cmaes.accuracy_fitness, tiebreak=bool(job.x.tiebreak)))


def behaviour_logprob(job: Cmaes, layer: int, split: str) -> cmaes.Fitness:
    """Mean log-probability of the behaviour-matching letter (the label of an A/B set)."""
    return job.mc_fitness(layer, split, cmaes.label_logprob)


def judge(job: Cmaes, layer: int, split: str) -> cmaes.Fitness:
    """A local judge model's mean ``log P(yes)`` for the rubric on steered continuations."""
    return job.judge_fitness(layer, split, job.local_judge())


def api_judge(job: Cmaes, layer: int, split: str) -> cmaes.Fitness:
    """As ``judge``, asked of an OpenAI-compatible endpoint (responses cached on disk)."""
    return job.judge_fitness(layer, split, job.api_judge())


FITNESSES: dict[str, Callable[[Any, int, str], cmaes.Fitness]] = {
    "val_accuracy": val_accuracy,
    "behaviour_logprob": behaviour_logprob,
    "judge": judge,
    "api_judge": api_judge,
}


class Cmaes(Experiment):
    """One refinement: the base's loaded state, plus the search and its checkpoints."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(cfg, out_dir)
        self._judges: dict[str, Any] = {}
        self._prefixes: dict[str, tuple[list[list[int]], engine.PrefixCache]] = {}
        self.fanout_start_seconds: float | None = None

    # -- data and fitness ---------------------------------------------------
    def mc_fitness(self, layer: int, split: str, metric) -> cmaes.Fitness:
        s = self
        items = s.splits[split]
        if split not in self._prefixes:  # the items' prefill, once per split for every call
            rows = self.mc_rows(items)
            prefix = self.oom_safe(lambda bs: engine.prefix_cache(s.lm.model, rows, bs, s.pad))
            self._prefixes[split] = (rows, prefix)
        rows, prefix = self._prefixes[split]
        return cmaes.mc_fitness(s.lm.model, s.lm.sites, rows, [len(it.options) for it in items],
                                torch.tensor([it.label for it in items]), s.head, s.site, layer, metric,
                                prefix=prefix, batch_size=s.batch_size,
                                cells_per_pass=int(self.cfg.cells_per_pass), pad=s.pad)

    def judge_fitness(self, layer: int, split: str, judge_fn) -> cmaes.Fitness:
        s, j = self, self.x.judge
        n = int(j.n_prompts)
        if j.prompts == "prompt_set":
            questions, rows = self.free_form(split, n)
        else:
            items = s.splits[split][:n]
            questions, rows = [_question(it) for it in items], self.mc_rows(items)
        tok = s.lm.tokenizer

        def generate(deltas: torch.Tensor) -> list[list[str]]:
            got = judge_mod.generate_steered(s.lm.model, s.lm.sites, rows, layer, s.site, deltas,
                                             int(j.max_new_tokens), s.batch_size, s.pad)
            return [[tok.decode(ids, skip_special_tokens=True).strip() for ids in row] for row in got]

        return judge_mod.judge_fitness(generate, judge_fn, questions)

    def free_form(self, split: str, n: int) -> tuple[list[str], list[list[int]]]:
        """The prompt set's prompts for ``split`` (the first ``n`` for val, the next ``n`` for
        test) as judge questions and generation rows."""
        from eas.data import load_prompts

        prompts = list(load_prompts(self.cfg.prompts).prompts)
        if len(prompts) < 2 * n:
            raise DataError(f"experiment.judge.prompts=prompt_set needs 2 x experiment.judge.n_prompts={n} prompts "
                            f"(search, then test); prompt set {self.cfg.prompts.name} has {len(prompts)}")
        part = prompts[:n] if split != "test" else prompts[n:2 * n]
        texts = [self.prompter.generation(p.text, p.system or None) for p in part]
        return [p.text for p in part], self.rows(texts, [p.id for p in part])

    def local_judge(self):
        from eas.judges import LocalJudge

        if "local" not in self._judges:
            j, s = self.x.judge, self
            spec = self.judge_model_spec()
            if spec is None:
                model, tok = s.lm.model, s.lm.tokenizer
            else:
                lm = models.load(spec, seed=self.cfg.seed)
                model, tok = lm.model, lm.tokenizer
            self._judges["local"] = LocalJudge(model, tok, j.rubric, self.cfg.prompt.format, s.batch_size)
        return self._judges["local"]

    def judge_model_spec(self) -> DictConfig | None:
        """The local judge's ModelConfig from its conf/model preset; None for ``same``."""
        name = self.x.judge.model
        return None if name == "same" else model_preset(name, "experiment.judge.model")

    def api_judge(self):
        from eas.judges import ApiJudge

        if "api" not in self._judges:
            j = self.x.judge
            self._judges["api"] = ApiJudge(j.api_model, j.api_base, j.api_key_env, self.store.root, j.rubric)
        return self._judges["api"]

    # -- checkpoints ----------------------------------------------------------
    def run_key(self, layer: int, strength0: float) -> str:
        """What decides the search: the steer job's setup, the start cell, the optimiser, the fitness
        (not ``generations``: a longer run continues a shorter one)."""
        x, s, c = self.x, self, self.cfg
        fit: list[Any] = [x.fitness]
        if x.fitness == "val_accuracy":
            fit.append(bool(x.tiebreak))
        if x.fitness in ("judge", "api_judge"):
            fit.append(OmegaConf.to_container(x.judge, resolve=True))
        return store.key("cmaes", s.base_key, s.method, s.position, s.site, c.method.normalize,
                         c.method.min_per_class, layer, float(strength0), int(x.k), int(x.popsize),
                         float(x.sigma0), bool(x.optimize_strength), int(c.seed), fit, *s.read_key,
                         *s.module_key)

    def checkpoint(self, key: str, refiner: cmaes.Refiner, history: list[dict]) -> None:
        self.store.put_json("cmaes", store.key(key, refiner.generation), {
            "generation": refiner.generation, "history": history,
            "refiner": base64.b64encode(refiner.dumps()).decode()})

    def resume(self, key: str) -> tuple[cmaes.Refiner | None, list[dict]]:
        """The latest checkpoint with at most ``generations`` generations, if any."""
        for g in range(int(self.x.generations), 0, -1):
            rec = self.store.get_json("cmaes", store.key(key, g))
            if rec is not None:
                return cmaes.Refiner.loads(base64.b64decode(rec["refiner"])), rec["history"]
        return None, []

    # -- the job ---------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, x, job = self.cfg, self.x, self
        if x.fitness == "api_judge":  # no key, or nothing answers at api_base: fail before loading the model
            from eas.judges import probe_endpoint

            self.api_judge()
            probe_endpoint(x.judge.api_base)
        if x.fitness == "judge":
            self.judge_model_spec()
        job.load()
        base = job.unsteered()
        vecs = job.vectors(base["train"])
        failed: dict[str, str] = {}
        val_grid = job.score_cells([(L, s) for L in job.layers for s in job.strengths], "val", vecs, failed)
        start = job.select(val_grid)
        if start is None:
            raise RuntimeError(f"no extracted cell could be scored on val: {list(failed)}")
        layer, strength0 = start
        if strength0 == 0:
            raise ConfigError(f"the best extracted cell has strength 0 (layer {layer}): nothing to refine; "
                              f"drop 0 from strength={list(job.strengths)}")
        log.info("start: %s vector at layer %d, strength %g (val accuracy %.3f)", job.method, layer, strength0,
                 val_grid[start].accuracy)

        # the activations the vector was extracted from (store hits: vectors() captured them)
        contrast = self.contrast(base["train"])
        train_acts = job.activations(contrast.texts, job.read_site)[layer]
        space = cmaes.Space.from_activations(train_acts, vecs[layer], int(x.k), strength0,
                                             bool(x.optimize_strength))
        if space.k < x.k:
            log.warning("k=%d capped at %d: %d train activations span at most %d directions", x.k, space.k,
                        len(train_acts), len(train_acts) - 1)
        x0 = space.point(vecs[layer])

        key = self.run_key(layer, strength0)
        refiner, history = self.resume(key)
        resumed_from = refiner.generation if refiner is not None else 0
        stop = {}
        if refiner is not None:
            log.info("resuming from generation %d (checkpoint in the store)", resumed_from)
            stop = refiner.stop()
        searching = refiner is None or (refiner.generation < x.generations and not stop)
        with self.search_fitness(layer, space, searching) as fitness:
            if refiner is None:
                t1 = time.perf_counter()
                f0 = float(fitness(x0[None])[0])
                refiner = cmaes.Refiner(x0, float(x.sigma0), int(x.popsize), int(cfg.seed))
                refiner.observe(x0, f0)
                history = [{"generation": 0, "best": f0, "mean": f0, "median": f0, "worst": f0, "centre": f0,
                            "best_so_far": f0, "sigma": float(x.sigma0), "n_evaluations": 1,
                            "seconds": time.perf_counter() - t1}]
                stop = refiner.stop()
            while refiner.generation < x.generations and not stop:
                gen = refiner.step(fitness)
                history.append(gen.row())
                self.checkpoint(key, refiner, history)
                r = history[-1]
                log.info("generation %d/%d: best %.4f mean %.4f (best so far %.4f, sigma %.3f, %.2fs)",
                         gen.generation, x.generations, r["best"], r["mean"], r["best_so_far"], r["sigma"],
                         r["seconds"])
                stop = refiner.stop()
        if stop:
            log.info("CMA-ES stopped at generation %d: %s", refiner.generation, stop)

        vectors, strengths = space.decode(refiner.best_x[None])
        refined, strength = vectors[0], float(strengths[0])
        cells = {"extracted": (vecs[layer], strength0), "start": (space.project(vecs[layer]), strength0),
                 "refined": (refined, strength)}
        scored = {split: self.evaluate(layer, split, cells) for split in ("val", "test")}
        return self.write(base, failed, layer, strength0, space, cells, scored, history, stop, resumed_from)

    @contextmanager
    def search_fitness(self, layer: int, space: cmaes.Space, searching: bool
                       ) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """The search's fitness over points of ``space``: the plugin's on val at ``layer``, scored
        in-process, or by ``experiment.fanout.workers`` workers while ``searching`` (a finished
        search starts none); leaving the block stops them.

        Raises:
            fanout.WorkerError: a worker did not start, or its job ended during the search.
        """
        f = self.x.fanout
        if not searching or int(f.workers) == 0:
            yield cmaes.in_space(space, FITNESSES[self.x.fitness](self, layer, "val"))
            return
        folder = self.out / "fanout"
        cfg_path = store.write_text(folder / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        build = partial(worker_fitness, str(cfg_path.resolve()), os.getcwd(), layer,
                        store.key(self.base_key))
        with fanout.Fanout(folder, int(f.workers), build, f.cluster, OmegaConf.to_container(self.cfg.resources),
                           float(f.poll_s), float(f.start_timeout_s),
                           OmegaConf.to_container(f.slurm_parameters, resolve=True)) as fan:
            self.fanout_start_seconds = fan.start_seconds
            yield cmaes.in_space(space, fan)

    def evaluate(self, layer: int, split: str, cells: dict[str, tuple[torch.Tensor, float]]) -> dict[str, dict]:
        """Accuracy and fitness of each named (vector, strength) on a split."""
        s = self
        items = s.splits[split]
        deltas = torch.stack([st * v for v, st in cells.values()])
        fit = FITNESSES[self.x.fitness](self, layer, split)(deltas)
        acc = self.mc_fitness(layer, split, cmaes.accuracy)(deltas)
        return {name: {"accuracy": float(acc[i]), "fitness": float(fit[i]), "n": len(items)}
                for i, name in enumerate(cells)}

    # -- outputs -------------------------------------------------------------------
    def write(self, base, failed, layer, strength0, space, cells, scored, history, stop, resumed_from
              ) -> dict[str, Any]:
        x, s = self.x, self
        hist = pd.DataFrame(history)
        store.write_parquet(self.out / "cmaes_history.parquet", hist)

        v0, refined = cells["extracted"][0], cells["refined"][0]
        c0, c1 = space.coefficients(v0), space.coefficients(refined)
        comp = pd.DataFrame({"pc": range(space.k), "explained": space.explained.numpy(), "start": c0.numpy(),
                             "refined": c1.numpy(), "delta": (c1 - c0).numpy()})
        comp = comp.reindex(comp["delta"].abs().sort_values(ascending=False).index)
        store.write_csv(self.out / "components.csv", comp)

        meta = {**self.meta(), "method": s.method, "fitness": x.fitness}
        self.write_vectors({layer: refined}, "refined", {layer: {"extracted": v0, "start": cells["start"][0],
                                                               "basis": space.basis}},
                           source_method=s.method, strength=repr(cells["refined"][1]), fitness=x.fitness)
        key = refined_method.stored_key([*s.base_key, *s.read_key], s.method, s.site, layer)
        self.store.put_tensors("vectors", key, {"vector": refined, "strength": torch.tensor([cells["refined"][1]])})

        def cos(a, b):
            return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))

        block = {name: {"strength": st, "norm": float(v.norm()), "val": scored["val"][name],
                        "test": scored["test"][name]} for name, (v, st) in cells.items()}
        ext, ref = block["extracted"], block["refined"]
        run_gens = [h for h in history if h["generation"] > 0]
        summary = {
            **meta, "layer": int(layer), "strength0": float(strength0), "k": space.k, "k_requested": int(x.k),
            "popsize": int(x.popsize), "sigma0": float(x.sigma0), "optimize_strength": bool(x.optimize_strength),
            "generations": int(history[-1]["generation"]), "generations_requested": int(x.generations),
            "stop": {k: str(v) for k, v in stop.items()}, "resumed_from": int(resumed_from),
            "start_norm_retained": float(cells["start"][0].norm() / v0.norm()) if v0.norm() > 0 else float("nan"),
            "n": {split: len(s.splits[split]) for split in ("train", "val", "test")},
            "unsteered": {k: v.accuracy for k, v in base.items()},
            **block,
            "gap": {f"{split}_{m}": ref[split][m] - ext[split][m] for split in ("val", "test")
                    for m in ("accuracy", "fitness")},
            "cosine": {"refined_vs_extracted": cos(refined, v0), "refined_vs_start": cos(refined, cells["start"][0]),
                       "start_vs_extracted": cos(cells["start"][0], v0)},
            "fitness_curve": {"start": history[0]["best"], "end": history[-1]["best_so_far"]},
            "components_moved": comp.head(5).to_dict("records"),
            "seconds_per_generation": float(np.mean([h["seconds"] for h in run_gens])) if run_gens else None,
            "fanout_workers": int(x.fanout.workers),
            "fanout_cluster": x.fanout.cluster if x.fanout.workers else None,
            "fanout_start_seconds": self.fanout_start_seconds,  # None: no workers started (in-process, or resumed done)
            "failed_cells": [{"cell": c, "error": tb} for c, tb in failed.items()],
        }
        summary = self.finish(summary, headline(summary))
        from eas.report.cmaes import fitness_curve

        self.figures(fitness_curve, hist, self.out / "figures" / "fitness_curve.png", ext["val"]["fitness"],
                     f"{s.lm.name} / {s.bench.name}: {s.method} L{layer}, fitness={x.fitness}")
        return summary


def headline(s: dict) -> list[str]:
    ext, ref = s["extracted"], s["refined"]
    first = (f"eas: {s['model']} on {s['benchmark']} (cmaes from {s['method']} @ {s['steer_target']} "
             f"L{s['layer']}, fitness={s['fitness']}, {s['generations']} generations)")
    second = (f"  val fitness {ext['val']['fitness']:.4f} -> {ref['val']['fitness']:.4f}; val accuracy "
              f"{ext['val']['accuracy']:.3f} -> {ref['val']['accuracy']:.3f}; test accuracy "
              f"{ext['test']['accuracy']:.3f} -> {ref['test']['accuracy']:.3f} (extracted -> refined, "
              f"cosine {s['cosine']['refined_vs_extracted']:.3f})")
    return [first, second]


def worker_fitness(cfg_path: str, cwd: str, layer: int, base_key: str) -> cmaes.Fitness:
    """A fan-out worker's fitness: the coordinator's, rebuilt from its resolved config.

    Loads the benchmark and the model as the coordinator did and builds the same fitness
    plugin at ``layer`` on val (for the MC fitnesses the prefix cache is computed here, once,
    for every generation the worker serves). Torch uses ``resources.cpus_per_task`` threads.

    Args:
        cfg_path: the coordinator's resolved config (YAML).
        cwd: the coordinator's working directory: relative paths in the config mean the same.
        layer: the search's layer.
        base_key: ``store.key`` of the coordinator's ``Experiment.base_key`` (model and data).

    Raises:
        RuntimeError: this worker loaded another model or other data than the coordinator.
    """
    os.chdir(cwd)
    cfg = OmegaConf.merge(OmegaConf.structured(EasConfig), OmegaConf.load(cfg_path))
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_task)))
    job = Cmaes(cfg, Path(cfg_path).parent)
    job.load()
    if store.key(job.base_key) != base_key:
        raise RuntimeError(f"fan-out worker: model {job.lm.name} or benchmark {job.bench.name} "
                           f"differs from the coordinator's (fingerprint {store.key(job.base_key)} != "
                           f"{base_key}); the workers must see the same model files and data as the job")
    return FITNESSES[cfg.experiment.fitness](job, layer, "val")


def _question(item: MCItem) -> str:
    """The item as the judge sees the question: context, question and lettered options."""
    stem = f"{item.context}\n{item.question}" if item.context else item.question
    return stem + "\n" + "\n".join(f"{ltr}. {o}" for ltr, o in zip(item.letters, item.options))


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Cmaes(cfg, out_dir).run()
