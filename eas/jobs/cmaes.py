"""experiment=cmaes: how far is an extracted steering vector from the best one nearby?

1. the steer job's steps 1-4 (``SteerJob``: load, unsteered scores, extracted vectors, the
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
5. write ``cmaes_history.parquet``, ``components.csv``, ``vectors/``, the fitness curve,
   ``summary.json`` and ``manifest.json``; the refined vector also goes to the store,
   where ``method=cmaes`` (``refined_vectors``) finds it.

Fan-out (``experiment.fanout.workers=N``, ``eas.jobs.fanout``): step 3's fitness calls go to
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
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from eas import contrasts, models, store
from eas.config import ConfigError, EasConfig, ModelConfig
from eas.core import cmaes, tokens
from eas.core import judge as judge_mod
from eas.core import sweep as sweep_mod
from eas.data.schema import MCItem
from eas.jobs import fanout
from eas.jobs.steer import SteerJob

log = logging.getLogger("eas")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


# -- fitness plugins (experiment.fitness): (job, layer, split) -> fitness over deltas ------
def val_accuracy(job: CmaesJob, layer: int, split: str) -> cmaes.Fitness:
    """Steered MC accuracy, ties broken by mean p(correct letter) (``cmaes.accuracy_fitness``)."""
    return job.mc_fitness(layer, split, partial(cmaes.accuracy_fitness, tiebreak=bool(job.x.tiebreak)))


def behaviour_logprob(job: CmaesJob, layer: int, split: str) -> cmaes.Fitness:
    """Mean log-probability of the behaviour-matching letter (the label of an A/B set)."""
    return job.mc_fitness(layer, split, cmaes.label_logprob)


def judge(job: CmaesJob, layer: int, split: str) -> cmaes.Fitness:
    """A local judge model's mean ``log P(yes)`` for the rubric on steered continuations."""
    return job.judge_fitness(layer, split, job.local_judge())


def api_judge(job: CmaesJob, layer: int, split: str) -> cmaes.Fitness:
    """As ``judge``, asked of an OpenAI-compatible endpoint (responses cached on disk)."""
    return job.judge_fitness(layer, split, job.api_judge())


FITNESSES: dict[str, Callable[[Any, int, str], cmaes.Fitness]] = {
    "val_accuracy": val_accuracy,
    "behaviour_logprob": behaviour_logprob,
    "judge": judge,
    "api_judge": api_judge,
}


class CmaesJob:
    """One refinement: the steer job's loaded state, plus the search and its checkpoints."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.cfg = cfg
        self.x = cfg.experiment
        self.out = Path(out_dir)
        self.steer = SteerJob(cfg, out_dir)
        self.store = self.steer.store
        self._judges: dict[str, Any] = {}
        self._prefixes: dict[str, tuple[list[list[int]], sweep_mod.PrefixCache]] = {}
        self.fanout_start_seconds: float | None = None

    # -- data and fitness ---------------------------------------------------
    def rows(self, texts: list[str]) -> list[list[int]]:
        s = self.steer
        return tokens.encode(s.lm.tokenizer, texts, s.prompter.add_special_tokens)

    def mc_fitness(self, layer: int, split: str, metric) -> cmaes.Fitness:
        s = self.steer
        items = s.splits[split]
        if split not in self._prefixes:  # the items' prefill, once per split for every call
            rows = self.rows([s.prompter.mc(it) for it in items])
            prefix = sweep_mod.retry_on_oom(lambda bs: sweep_mod.prefix_cache(s.lm.model, rows, bs, s.pad),
                                            s.batch_size, log.warning)
            self._prefixes[split] = (rows, prefix)
        rows, prefix = self._prefixes[split]
        return cmaes.mc_fitness(s.lm.model, s.lm.sites, rows, [len(it.options) for it in items],
                                torch.tensor([it.label for it in items]), s.head, s.site, layer, metric,
                                prefix=prefix, batch_size=s.batch_size,
                                cells_per_pass=int(self.cfg.cells_per_pass), pad=s.pad)

    def judge_fitness(self, layer: int, split: str, judge_fn) -> cmaes.Fitness:
        s, j = self.steer, self.x.judge
        items = s.splits[split][: int(j.n_prompts)]
        rows = self.rows([s.prompter.mc(it) for it in items])
        tok = s.lm.tokenizer

        def generate(deltas: torch.Tensor) -> list[list[str]]:
            got = judge_mod.generate_steered(s.lm.model, s.lm.sites, rows, layer, s.site, deltas,
                                             int(j.max_new_tokens), s.batch_size, s.pad)
            return [[tok.decode(ids, skip_special_tokens=True).strip() for ids in row] for row in got]

        return judge_mod.judge_fitness(generate, judge_fn, [_question(it) for it in items])

    def local_judge(self):
        from eas.judges import LocalJudge

        if "local" not in self._judges:
            j, s = self.x.judge, self.steer
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
        if name == "same":
            return None
        preset = CONF_DIR / "model" / f"{name}.yaml"
        if not preset.exists():
            names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
            raise ConfigError(f"experiment.judge.model={name!r}: no conf/model preset of that name; "
                              f"use 'same' or one of: {', '.join(names)}")
        return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(preset))

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
        x, s, c = self.x, self.steer, self.cfg
        fit: list[Any] = [x.fitness]
        if x.fitness == "val_accuracy":
            fit.append(bool(x.tiebreak))
        if x.fitness in ("judge", "api_judge"):
            fit.append(OmegaConf.to_container(x.judge, resolve=True))
        return store.key("cmaes", s.base_key, s.method, s.position, s.site, c.method.normalize,
                         c.method.min_per_class, layer, float(strength0), int(x.k), int(x.popsize),
                         float(x.sigma0), bool(x.optimize_strength), int(c.seed), fit)

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
        t0 = time.perf_counter()
        cfg, x, job = self.cfg, self.x, self.steer
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
        contrast = contrasts.build(job.method, job.splits["train"], base["train"].preds, job.prompter,
                                   seed=cfg.seed, min_per_class=cfg.method.min_per_class)
        train_acts = job.activations(contrast.texts)[layer]
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
        return self.write(base, failed, layer, strength0, space, cells, scored, history, stop, resumed_from,
                          time.perf_counter() - t0)

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
                        store.key(self.steer.base_key))
        with fanout.Fanout(folder, int(f.workers), build, f.cluster, OmegaConf.to_container(self.cfg.resources),
                           float(f.poll_s), float(f.start_timeout_s),
                           OmegaConf.to_container(f.slurm_parameters, resolve=True)) as fan:
            self.fanout_start_seconds = fan.start_seconds
            yield cmaes.in_space(space, fan)

    def evaluate(self, layer: int, split: str, cells: dict[str, tuple[torch.Tensor, float]]) -> dict[str, dict]:
        """Accuracy and fitness of each named (vector, strength) on a split."""
        s = self.steer
        items = s.splits[split]
        deltas = torch.stack([st * v for v, st in cells.values()])
        fit = FITNESSES[self.x.fitness](self, layer, split)(deltas)
        acc = self.mc_fitness(layer, split, cmaes.accuracy)(deltas)
        return {name: {"accuracy": float(acc[i]), "fitness": float(fit[i]), "n": len(items)}
                for i, name in enumerate(cells)}

    # -- outputs -------------------------------------------------------------------
    def write(self, base, failed, layer, strength0, space, cells, scored, history, stop, resumed_from,
              seconds) -> dict[str, Any]:
        cfg, x, s = self.cfg, self.x, self.steer
        hist = pd.DataFrame(history)
        store.write_parquet(self.out / "cmaes_history.parquet", hist)

        v0, refined = cells["extracted"][0], cells["refined"][0]
        c0, c1 = space.coefficients(v0), space.coefficients(refined)
        comp = pd.DataFrame({"pc": range(space.k), "explained": space.explained.numpy(), "start": c0.numpy(),
                             "refined": c1.numpy(), "delta": (c1 - c0).numpy()})
        comp = comp.reindex(comp["delta"].abs().sort_values(ascending=False).index)
        store.write_csv(self.out / "components.csv", comp)

        meta = {"experiment": "cmaes", "model": s.lm.name, "benchmark": s.bench.name, "steer_target": s.site,
                "position": s.position, "seed": int(cfg.seed), "method": s.method, "fitness": x.fitness}
        vec_meta = {"method": "cmaes", "source_method": s.method, "site": s.site, "layer": str(layer),
                    "position": s.position, "strength": repr(cells["refined"][1]), "model": s.lm.name,
                    "fitness": x.fitness}
        store.write_tensors(self.out / "vectors" / f"cmaes_{s.site}_L{layer}.safetensors",
                            {"vector": refined, "extracted": v0, "start": cells["start"][0],
                             "basis": space.basis}, vec_meta)
        self.store.put_tensors("vectors", refined_key(s, s.method, layer),
                               {"vector": refined, "strength": torch.tensor([cells["refined"][1]])})

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
            "seconds": seconds,
        }
        store.write_json(self.out / "summary.json", summary)
        s.write_manifest(seconds)
        try:
            from eas.report.cmaes import fitness_curve

            fitness_curve(hist, self.out / "figures" / "fitness_curve.png", ext["val"]["fitness"],
                          f"{s.lm.name} / {s.bench.name}: {s.method} L{layer}, fitness={x.fitness}")
        except Exception as e:  # noqa: BLE001 - figures never cost the results
            log.warning("fitness curve not written: %s", e)
        log.info("cmaes %s L%d: val fitness %.4f -> %.4f; val accuracy %.3f -> %.3f; test accuracy %.3f -> %.3f "
                 "(extracted -> refined, cosine %.3f); results: %s", s.method, layer, ext["val"]["fitness"],
                 ref["val"]["fitness"], ext["val"]["accuracy"], ref["val"]["accuracy"], ext["test"]["accuracy"],
                 ref["test"]["accuracy"], summary["cosine"]["refined_vs_extracted"], self.out)
        return summary


def worker_fitness(cfg_path: str, cwd: str, layer: int, base_key: str) -> cmaes.Fitness:
    """A fan-out worker's fitness: the coordinator's, rebuilt from its resolved config.

    Loads the benchmark and the model as the coordinator did and builds the same fitness
    plugin at ``layer`` on val (for the MC fitnesses the prefix cache is computed here, once,
    for every generation the worker serves). Torch uses ``resources.cpus_per_task`` threads.

    Args:
        cfg_path: the coordinator's resolved config (YAML).
        cwd: the coordinator's working directory: relative paths in the config mean the same.
        layer: the search's layer.
        base_key: ``store.key`` of the coordinator's ``SteerJob.base_key`` (model and data).

    Raises:
        RuntimeError: this worker loaded another model or other data than the coordinator.
    """
    os.chdir(cwd)
    cfg = OmegaConf.merge(OmegaConf.structured(EasConfig), OmegaConf.load(cfg_path))
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_task)))
    job = CmaesJob(cfg, Path(cfg_path).parent)
    job.steer.load()
    if store.key(job.steer.base_key) != base_key:
        raise RuntimeError(f"fan-out worker: model {job.steer.lm.name} or benchmark {job.steer.bench.name} "
                           f"differs from the coordinator's (fingerprint {store.key(job.steer.base_key)} != "
                           f"{base_key}); the workers must see the same model files and data as the job")
    return FITNESSES[cfg.experiment.fitness](job, layer, "val")


def _question(item: MCItem) -> str:
    """The item as the judge sees the question: context, question and lettered options."""
    stem = f"{item.context}\n{item.question}" if item.context else item.question
    return stem + "\n" + "\n".join(f"{ltr}. {o}" for ltr, o in zip(item.letters, item.options))


def refined_key(steer: SteerJob, source: str, layer: int) -> str:
    return store.key("cmaes_vector", steer.base_key, source, steer.site, layer)


def refined_vectors(steer: SteerJob) -> dict[int, torch.Tensor]:
    """``method=cmaes`` for the steer job: the refined vector per layer of ``steer.layers``.

    From ``method.vector_path`` (a ``cmaes_*.safetensors`` file or a cmaes run dir), else the
    latest refinement in the store of ``method.source`` at this setup and layer. Sets
    ``steer.vector_id`` so the scored cells are keyed by the vectors' content.

    Raises:
        ConfigError: no refined vector for a requested layer, or a bad ``vector_path``.
    """
    m = steer.cfg.method
    out: dict[int, torch.Tensor] = {}
    if m.vector_path:
        path = Path(m.vector_path)
        files = sorted(path.glob("vectors/cmaes_*.safetensors")) if path.is_dir() else [path]
        if not files or not files[0].exists():
            raise ConfigError(f"method.vector_path={m.vector_path!r}: no cmaes_*.safetensors there")
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), "pt") as fh:
                meta = fh.metadata() or {}
                if "layer" not in meta:
                    raise ConfigError(f"method.vector_path: {f} has no 'layer' in its metadata")
                if meta.get("site", steer.site) != steer.site:
                    raise ConfigError(f"method.vector_path: {f} was refined at site {meta['site']!r}, this job "
                                      f"steers steer_target={steer.site}; use steer_target={meta['site']}")
                out[int(meta["layer"])] = fh.get_tensor("vector")
    else:
        for L in steer.layers:
            rec = steer.store.get_tensors("vectors", refined_key(steer, m.source, L))
            if rec is not None:
                out[L] = rec["vector"]
    missing = [L for L in steer.layers if L not in out]
    if missing:
        where = m.vector_path or f"the store ({steer.store.root})"
        raise ConfigError(
            f"method=cmaes: no refined vector for layer={missing} in {where} (refined layers: {sorted(out)}). "
            f"Run `eas experiment=cmaes method={m.source} layer={missing[0]}` with the same model, benchmark "
            f"and splits first, or set method.vector_path=<cmaes run dir>")
    vecs = {L: out[L].float() for L in steer.layers}
    digest = hashlib.sha256(b"".join(vecs[L].numpy().tobytes() for L in steer.layers)).hexdigest()[:20]
    steer.vector_id = digest
    return vecs


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return CmaesJob(cfg, out_dir).run()
