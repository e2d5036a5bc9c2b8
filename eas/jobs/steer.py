"""experiment=steer: the PAS protocol as one job.

1. load model and benchmark; split train/val/test by proportions and seed;
2. score the unsteered model on every split;
3. build one vector per (method, layer) from train activations at the site;
4. score every (layer, strength) cell on val with the fast engine;
5. pick the best cell by val accuracy, score it on test, report the change and flips.

Every scored cell, vector and activation set is a content-addressed record in
the store, written as soon as it is done: a job that dies keeps them, and a
re-run (or another job of the same sweep) recomputes nothing that is done.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from eas import contrasts, models, store
from eas.config import as_number_list
from eas.core import capture as capture_mod
from eas.core import score as score_mod
from eas.core import sweep as sweep_mod
from eas.core import tokens
from eas.core import vectors as vectors_mod
from eas.data import load_benchmark, split_items
from eas.data.schema import DataError, MCItem
from eas.prompts import Prompter

log = logging.getLogger("eas")
SPLITS = ("train", "val", "test")


@dataclass
class Scored:
    """Predictions of one cell on one split."""

    item_ids: list[str]
    labels: list[int]
    preds: list[int]

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.preds) == np.asarray(self.labels)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.preds else float("nan")

    def as_dict(self) -> dict:
        return {"item_ids": self.item_ids, "labels": self.labels, "preds": self.preds}

    @staticmethod
    def fits(items: list[MCItem]):
        """A store-record check: the record scores exactly these items, one prediction each."""
        ids, labels = [it.id for it in items], [it.label for it in items]

        def check(rec: dict) -> bool:
            return (rec["item_ids"] == ids and rec["labels"] == labels and len(rec["preds"]) == len(ids)
                    and all(isinstance(p, int) and 0 <= p < len(it.options) for p, it in zip(rec["preds"], items)))
        return check


class NonFiniteScores(RuntimeError):
    """A forward pass produced NaN or infinite letter scores; nothing of it is stored."""


def cell_name(layer: int, strength: float) -> str:
    return f"L{layer}_s{float(strength):g}"


class SteerJob:
    """Holds what one job loads once; the protocol's steps are its methods, run in order by ``run``."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.store = store.Store(cfg.store.root)
        self.layers = as_number_list("layer", cfg.layer, int)
        self.strengths = as_number_list("strength", cfg.strength, float)
        self.method = cfg.method.name
        self.site = cfg.steer_target.site
        self.position = cfg.method.position
        self.progress = bool(cfg.progress)

    # -- step 1 -----------------------------------------------------------
    def load(self) -> None:
        cfg = self.cfg
        self.bench = load_benchmark(cfg.benchmark, seed=cfg.seed)
        self.splits: dict[str, list[MCItem]] = split_items(
            list(self.bench.items), cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion,
            seed=cfg.seed, max_sample_size=cfg.max_sample_size,
        )
        log.info("benchmark %s: %d items -> %s", self.bench.name, len(self.bench),
                 {k: len(v) for k, v in self.splits.items()})
        self.lm = models.load(cfg.model, seed=cfg.seed)
        for layer in self.layers:
            self.lm.sites.check_layer(layer)
        self.lm.sites.module(self.layers[0], self.site)  # unknown site for this family: fail now
        log.info("model %s (%s, %d blocks) loaded in %.1fs on %s", self.lm.name, self.lm.sites.family,
                 self.lm.sites.n_layers, self.lm.load_seconds, self.lm.device)
        p = cfg.prompt
        self.prompter = Prompter(self.lm.tokenizer, p.format, p.system, p.instruction)
        n_letters = max(len(it.options) for it in self.bench.items)
        self.letter_ids = score_mod.letter_token_ids(self.lm.tokenizer, n_letters)
        self.head = score_mod.LetterHead(self.lm.model, self.letter_ids)
        self.pad = tokens.pad_id(self.lm.tokenizer)
        self.batch_size = cfg.batch_size or sweep_mod.auto_batch_size(self.lm.model)
        # what decides every result of this job, besides the cell itself
        self.base_key = [
            self.lm.fingerprint, self.bench.fingerprint(),
            [cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion, cfg.max_sample_size, cfg.seed],
            OmegaConf.to_container(cfg.prompt, resolve=True),
        ]

    def _rows(self, texts: list[str], ids: list[str] | None = None) -> list[list[int]]:
        """Token ids of ``texts``; a text longer than the model's context is a DataError naming it,
        raised before any forward pass (positions past the context are not a result)."""
        rows = tokens.encode(self.lm.tokenizer, texts, self.prompter.add_special_tokens)
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        if limit:
            for i, row in enumerate(rows):
                if len(row) > limit:
                    name = f"item {ids[i]!r}" if ids else f"text {i} ({texts[i][:40]!r}...)"
                    raise DataError(f"{name} of benchmark {self.bench.name} is {len(row)} tokens; "
                                    f"the model's context is {limit} (max_position_embeddings): "
                                    f"shorten or drop it")
        return rows

    def _mc_rows(self, items: list[MCItem]) -> list[list[int]]:
        return self._rows([self.prompter.mc(it) for it in items], [it.id for it in items])

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    # -- step 2 -----------------------------------------------------------
    def unsteered_scores(self, items: list[MCItem], split: str) -> torch.Tensor:
        """Unsteered letter scores ``[item, n_letters]`` of the scoring prompts (OOM-safe)."""
        rows = self._mc_rows(items)
        n_opts = [len(it.options) for it in items]
        with self._bar(len(rows), f"unsteered {split}") as bar:
            scores = sweep_mod.retry_on_oom(lambda bs: score_mod.score_mc(
                self.lm.model, rows, n_opts, self.head, bs, self.pad, bar.update), self.batch_size, log.warning)
        bad = score_mod.nonfinite_items(scores, n_opts)
        if bad.any():
            first = items[int(bad.nonzero()[0, 0])].id
            raise NonFiniteScores(
                f"unsteered {split} scores are NaN or infinite for {int(bad.sum())} of {len(items)} items "
                f"(first: {first!r}) in model.dtype={self.cfg.model.dtype}: the forward pass overflows; "
                f"try model.dtype=float32")
        return scores

    def unsteered(self) -> dict[str, Scored]:
        out = {}
        before = self.store.tally("cells")
        for split, items in self.splits.items():
            k = store.key("unsteered", self.base_key, split)
            rec = self.store.get_json("cells", k, Scored.fits(items))
            if rec is None:
                scores = self.unsteered_scores(items, split)
                rec = Scored([it.id for it in items], [it.label for it in items],
                             scores.argmax(-1).tolist()).as_dict()
                self.store.put_json("cells", k, rec)
            out[split] = Scored(**rec)
            log.info("unsteered %s accuracy %.3f (n=%d)", split, out[split].accuracy, len(items))
        hit, done = (a - b for a, b in zip(self.store.tally("cells"), before))
        log.info("unsteered scores: %d splits from the store, %d computed", hit, done)
        return out

    # -- step 3 -----------------------------------------------------------
    def vectors(self, train: Scored) -> dict[int, torch.Tensor]:
        cfg = self.cfg
        if self.method == "cmaes":  # refined by experiment=cmaes, not extracted here
            from eas.jobs.cmaes import refined_vectors

            return refined_vectors(self)
        if self.method == "probe" and cfg.method.get("vector_path"):  # a trained probe (experiment=probe)
            from eas.jobs.probe import probe_vectors

            return probe_vectors(self)
        vkeys = {L: store.key("vector", self.base_key, self.method, self.position, self.site, L,
                              cfg.method.normalize, cfg.method.min_per_class) for L in self.layers}
        cached = {L: self.store.get_tensors("vectors", k) for L, k in vkeys.items()}
        if all(v is not None for v in cached.values()):
            log.info("vectors: %d from the store, 0 computed", len(cached))
            return {L: v["vector"] for L, v in cached.items()}
        contrast = contrasts.build(self.method, self.splits["train"], train.preds, self.prompter,
                                   seed=cfg.seed, min_per_class=cfg.method.min_per_class)
        log.info("%s contrast: %d positives, %d negatives", self.method,
                 len(contrast.positives), len(contrast.negatives))
        acts = self.activations(contrast.texts)  # one pass over both sides: fewer, fuller batches
        n_pos = len(contrast.positives)
        out = {}
        for L in self.layers:
            v = vectors_mod.build_vector(self.method, acts[L][:n_pos], acts[L][n_pos:], seed=cfg.seed)
            if cfg.method.normalize:
                v = vectors_mod.normalize(v)
            self.store.put_tensors("vectors", vkeys[L], {"vector": v})
            out[L] = v
        log.info("vectors: 0 from the store, %d computed", len(out))
        return out

    def activations(self, texts: list[str]) -> dict[int, torch.Tensor]:
        """``{layer: [text, d_model]}`` at the site and position.

        Every layer of the model is captured on a miss, so other jobs of the sweep (other
        layers) find them cached. Texts are captured in shards of ``capture_shard_size``, each
        its own content-addressed record written when done: a large capture streams to disk,
        and a killed one resumes at the first missing shard.
        """
        size = max(1, int(self.cfg.get("capture_shard_size", 2048)))
        shards = []
        todo = [texts[i:i + size] for i in range(0, len(texts), size)]
        before = self.store.tally("activations")
        with self._bar(len(texts), "capture") as bar:
            for part in todo:
                k = store.key("acts", self.lm.fingerprint, part, self.prompter.add_special_tokens, self.site,
                              self.position)
                acts = self.store.get_tensors("activations", k)
                if acts is None:
                    rows = self._rows(part)
                    got = sweep_mod.retry_on_oom(lambda bs, rows=rows: capture_mod.capture(
                        self.lm.model, self.lm.sites, rows, list(range(self.lm.sites.n_layers)), self.site,
                        (self.position,), bs, self.pad, bar.update), self.batch_size, log.warning)
                    acts = {"acts": got[self.position]}
                    self.store.put_tensors("activations", k, acts)
                else:
                    bar.update(len(part))
                shards.append(acts["acts"][self.layers])
        hit, done = (a - b for a, b in zip(self.store.tally("activations"), before))
        log.info("activations: %d shards from the store, %d computed", hit, done)
        stacked = torch.cat(shards, dim=1)  # [requested layer, text, d_model]
        return {L: stacked[j] for j, L in enumerate(self.layers)}

    # -- step 4 and 5 -----------------------------------------------------
    def cell_key(self, layer: int, strength: float, split: str) -> str:
        c = self.cfg.method
        vector_id = [self.vector_id] if getattr(self, "vector_id", None) else []  # method=cmaes: which vector
        return store.key("cell", self.base_key, self.method, self.position, self.site, c.normalize,
                         c.min_per_class, layer, float(strength), split, *vector_id)

    def score_cells(self, cells: list[tuple[int, float]], split: str, vecs: dict[int, torch.Tensor],
                    failed: dict[str, str]) -> dict[tuple[int, float], Scored]:
        """Score cells on a split; finished cells come from the store, new ones are written to it
        chunk by chunk. A chunk that raises marks its cells failed and the rest go on."""
        items = self.splits[split]
        out: dict[tuple[int, float], Scored] = {}
        todo = []
        fits = Scored.fits(items)
        for layer, s in cells:
            rec = self.store.get_json("cells", self.cell_key(layer, s, split), fits)
            if rec is not None:
                out[(layer, s)] = Scored(**rec)
            else:
                todo.append((layer, s))
        log.info("%s cells: %d from the store, %d to compute", split, len(out), len(todo))
        if not todo:
            return out
        rows = self._mc_rows(items)
        n_opts = [len(it.options) for it in items]
        chunk = max(1, int(self.cfg.get("cells_per_chunk", 256)))
        with self._bar(len(todo) * len(items), f"sweep {split} ({len(todo)} cells)") as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                try:
                    scores = self._sweep(rows, n_opts, [sweep_mod.Cell(L, s, vecs[L]) for L, s in part],
                                         lambda n, k=len(part): bar.update(n * k))  # noqa: B008 - binds this chunk's size
                except Exception as e:
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    tb = traceback.format_exc()
                    for L, s in part:
                        failed[f"{self.method}/{cell_name(L, s)}"] = tb
                    log.error("cells %s failed: %s", [cell_name(L, s) for L, s in part], e)
                    continue
                bad = score_mod.nonfinite_items(scores, n_opts)  # [cell, item]
                for j, (L, s) in enumerate(part):
                    if bad[j].any():  # an overflowing cell is a failed cell, never a stored score
                        failed[f"{self.method}/{cell_name(L, s)}"] = (
                            f"non-finite scores on {int(bad[j].sum())} of {len(items)} {split} items: the "
                            f"steered forward pass overflows at layer {L}, strength {s:g}")
                        log.error("cell %s: non-finite scores on %s; not stored", cell_name(L, s), split)
                        continue
                    sc = Scored([it.id for it in items], [it.label for it in items],
                                scores[j].argmax(-1).tolist())
                    self.store.put_json("cells", self.cell_key(L, s, split), sc.as_dict())
                    out[(L, s)] = sc
        return out

    def _sweep(self, rows, n_opts, cells, progress) -> torch.Tensor:
        return sweep_mod.retry_on_oom(lambda bs: sweep_mod.sweep_mc(
            self.lm.model, self.lm.sites, rows, n_opts, self.head, self.site, cells, batch_size=bs,
            cells_per_pass=int(self.cfg.cells_per_pass), pad=self.pad, progress=progress),
            self.batch_size, log.warning)

    @staticmethod
    def select(val: dict[tuple[int, float], Scored]) -> tuple[int, float] | None:
        """Best val accuracy; ties go to the smaller |strength|, then the lower layer."""
        if not val:
            return None
        return max(val, key=lambda c: (val[c].accuracy, -abs(c[1]), -c[0]))

    # -- the job ----------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.load()
        base = self.unsteered()
        vecs = self.vectors(base["train"])
        failed: dict[str, str] = {}
        grid = [(L, s) for L in self.layers for s in self.strengths]
        val = self.score_cells(grid, "val", vecs, failed)
        best = self.select(val)
        test = self.score_cells([best], "test", vecs, failed) if best else {}
        summary = self.write(base, vecs, val, best, test.get(best) if best else None, failed,
                             time.perf_counter() - t0)
        return summary

    def write(self, base, vecs, val, best, best_test, failed, seconds) -> dict[str, Any]:
        cfg = self.cfg
        meta = {"experiment": "steer", "model": self.lm.name, "benchmark": self.bench.name,
                "steer_target": self.site, "position": self.position, "seed": int(cfg.seed)}
        rows = []
        for split, sc in base.items():
            rows.append({**meta, "method": "unsteered", "layer": -1, "strength": 0.0, "split": split,
                         "accuracy": sc.accuracy, "n": len(sc.preds), "n_correct": int(sc.correct.sum()),
                         "vector_norm": float("nan"), "cell": "unsteered", "selected": False})
        scored = [("val", c, sc) for c, sc in val.items()]
        if best_test is not None:
            scored.append(("test", best, best_test))
        for split, (L, s), sc in scored:
            rows.append({**meta, "method": self.method, "layer": L, "strength": s, "split": split,
                         "accuracy": sc.accuracy, "n": len(sc.preds), "n_correct": int(sc.correct.sum()),
                         "vector_norm": float(vecs[L].norm()), "cell": f"{self.method}/{cell_name(L, s)}",
                         "selected": (L, s) == best})
        df = pd.DataFrame(rows)
        store.write_parquet(self.out / "results.parquet", df)

        pred_dir = self.out / "predictions" / self.method
        self._write_predictions(self.out / "predictions" / "unsteered.csv", base)
        for (L, s), sc in val.items():
            both = {"val": sc}
            if best_test is not None and (L, s) == best:
                both["test"] = best_test
            self._write_predictions(pred_dir / f"{cell_name(L, s)}.csv", both)
        for L, v in vecs.items():
            store.write_tensors(self.out / "vectors" / f"{self.method}_{self.site}_L{L}.safetensors",
                                {"vector": v}, {"method": self.method, "site": self.site, "layer": str(L),
                                                "position": self.position, "model": self.lm.name})

        test_block = None
        if best_test is not None:
            u = base["test"].correct
            a = best_test.correct
            test_block = {"accuracy": best_test.accuracy, "unsteered_accuracy": base["test"].accuracy,
                          "delta": best_test.accuracy - base["test"].accuracy, "n": len(a),
                          "wrong_to_right": int((~u & a).sum()), "right_to_wrong": int((u & ~a).sum())}
        summary = {
            **meta, "method": self.method,
            "unsteered": {k: v.accuracy for k, v in base.items()},
            "best": None if best is None else {"cell": f"{self.method}/{cell_name(*best)}", "layer": best[0],
                                               "strength": best[1], "val_accuracy": val[best].accuracy},
            "test": test_block,
            "failed_cells": [{"cell": c, "error": tb} for c, tb in failed.items()],
            "seconds": seconds,
        }
        store.write_json(self.out / "summary.json", summary)
        self.write_manifest(seconds)
        try:
            from eas.report.figures import write_run_figures

            write_run_figures(self.out)
        except Exception as e:  # noqa: BLE001 - figures never cost the results
            log.warning("figures not written: %s", e)
        return summary

    def write_manifest(self, seconds: float) -> None:
        """``manifest.json``: config, git commit, versions, model and data fingerprints, device, seconds."""
        store.write_json(self.out / "manifest.json", {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "git_commit": store.git_commit(), "versions": store.versions(),
            "model_fingerprint": self.lm.fingerprint, "data_fingerprint": self.bench.fingerprint(),
            "data_source": self.bench.source, "device": str(self.lm.device), "seconds": seconds,
        })

    @staticmethod
    def _write_predictions(path: Path, by_split: dict[str, Scored]) -> None:
        frames = [pd.DataFrame({"item_id": sc.item_ids, "split": split, "label": sc.labels, "pred": sc.preds,
                                "correct": sc.correct}) for split, sc in by_split.items()]
        store.write_csv(path, pd.concat(frames, ignore_index=True))


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return SteerJob(cfg, out_dir).run()
