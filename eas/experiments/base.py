"""What every experiment kind shares, in the order a job uses it.

1. ``load``: the benchmark (read once), the seeded train/val/test split, the model, the
   prompter and the letter head; ``base_key``: what decides every result besides the cell;
2. ``unsteered``: the unsteered letter probabilities of every split, one store record per
   split that every kind reuses;
3. ``vectors``: one steering vector per layer from the method (extracted from train
   activations, or read from files or the store) and ``activations``: capture at the site;
4. ``score_cells``: (layer, strength) cells scored by the fast engine, each a
   content-addressed store record written as soon as it is done;
5. ``finish``: ``summary.json``, ``manifest.json`` and the headline printed at the end.

Each step runs in a ``phase`` (``load``, ``unsteered``, ``capture``, ``sweep_<split>``) whose wall
seconds ``finish`` writes as ``phases`` into ``manifest.json`` and ``summary.json``.

A job that dies keeps every record it wrote; a re-run (or another job of the same sweep)
recomputes nothing that is done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from tqdm.auto import tqdm

from eas import config, extensions, models, store
from eas.config import as_number_list
from eas.core import capture as capture_mod
from eas.core import engine, tokens
from eas.core import score as score_mod
from eas.core import vectors as vectors_mod
from eas.core.select import best_cell, reference_cell
from eas.data import load_benchmark, split_items
from eas.data.schema import DataError, MCItem
from eas.methods import base as methods
from eas.prompts import Prompter
from eas.resources import auto_batch_size, retry_on_oom

log = logging.getLogger("eas")
SPLITS = ("train", "val", "test")


@dataclass
class Config:
    """The fields every kind's ``experiment.*`` has; a kind's ``Config`` subclasses this."""

    name: str = MISSING
    module: str | None = None  # a dotted import path for a kind outside eas; None = eas.experiments.<name>


@dataclass
class Scored:
    """Predictions of one cell (or of the unsteered model) on one split.

    Attributes:
        probs: ``[item, n_letters]`` letter probabilities; kept for the unsteered record only.
    """

    item_ids: list[str]
    labels: list[int]
    preds: list[int]
    probs: list[list[float]] | None = None

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.preds) == np.asarray(self.labels)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.preds else float("nan")

    @property
    def confidence(self) -> np.ndarray:
        """``[item]`` the largest letter probability (the model's own confidence)."""
        return np.asarray([max(p) for p in self.probs])

    def as_dict(self) -> dict:
        d = {"item_ids": self.item_ids, "labels": self.labels, "preds": self.preds}
        return d if self.probs is None else {**d, "probs": self.probs}

    @staticmethod
    def fits(items: list[MCItem], probs: bool = False):
        """A store-record check: the record scores exactly these items, one prediction each
        (and one probability per option when ``probs``)."""
        ids, labels = [it.id for it in items], [it.label for it in items]

        def check(rec: dict) -> bool:
            ok = (rec["item_ids"] == ids and rec["labels"] == labels and len(rec["preds"]) == len(ids)
                  and all(isinstance(p, int) and 0 <= p < len(it.options) for p, it in zip(rec["preds"], items)))
            if ok and probs:
                ok = len(rec.get("probs") or []) == len(ids) and all(len(p) >= len(it.options)
                                                                     for p, it in zip(rec["probs"], items))
            return ok
        return check


class NonFiniteScores(RuntimeError):
    """A forward pass produced NaN or infinite letter scores; nothing of it is stored."""


def cell_name(layer: int, strength: float) -> str:
    return f"L{layer}_s{float(strength):g}"


def prepare(cfg: DictConfig) -> ModuleType:
    """Check the whole config before anything loads and return the experiment kind's module.

    ``eas.config.validate`` checks the schema's own fields; then ``cfg.experiment`` is typed
    (in place) by its kind's ``Config``, the method's module is resolved, and the method's and
    the kind's ``validate(cfg)`` run, if they define one.

    Raises:
        ConfigError: the first problem, naming the field, the value and what is allowed.
    """
    config.validate(cfg)
    x = cfg.experiment
    field_name = "experiment.module" if x.get("module") else "experiment.name"
    try:
        kind = extensions.load("experiment", x.get("module") or x.get("name"), field_name, needs=("Config", "run"))
        method = methods.module(cfg.method)
    except extensions.ExtensionError as e:
        raise config.ConfigError(str(e)) from None
    try:
        typed = OmegaConf.merge(OmegaConf.structured(kind.Config), x)
        OmegaConf.to_container(typed, throw_on_missing=True)
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in dataclasses.fields(kind.Config))
        raise config.ConfigError(f"unknown config key 'experiment.{e.full_key}': it is not a field of "
                                 f"experiment={x.get('name')} ({kind.__name__}.Config); known here: {known}") from None
    except OmegaConfBaseException as e:
        where = f"experiment.{e.full_key}" if getattr(e, "full_key", None) else f"experiment={x.get('name')}"
        raise config.ConfigError(f"{where}: {str(e).splitlines()[0]} (the fields of {kind.__name__}.Config, "
                                 f"values in conf/experiment/{x.get('name')}.yaml)") from None
    with open_dict(cfg):
        cfg.experiment = typed
    for part in (method, kind):
        if hasattr(part, "validate"):
            part.validate(cfg)
    return kind


def read_site(cfg: DictConfig) -> str:
    """The site a vector for ``steer_target.site`` is read at (``method.read``): the same one,
    or under the PAS reference's rule the residual stream before the block (``residual_pre``)."""
    site = cfg.steer_target.site
    return "residual_pre" if cfg.method.get("read", "same") == "pas_reference" and site == "residual" else site


class Experiment:
    """Holds what one job loads once; a kind subclasses it and writes ``run``."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.cfg = cfg
        self.x = cfg.experiment
        self.out = Path(out_dir)
        self.store = store.Store(cfg.store.root)
        self.layers = as_number_list("layer", cfg.layer, int)
        self.strengths = as_number_list("strength", cfg.strength, float)
        self.method = cfg.method.name
        self.site = cfg.steer_target.site
        self.read_site = read_site(cfg)
        self.position = cfg.method.position
        self.seed = int(cfg.seed)
        self.progress = bool(cfg.progress)
        self.vector_id: str | None = None  # set when vectors come from files or the store
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}  # phase name -> wall seconds (``phase``)
        self._in_phase = False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the block to ``self.phases[name]``. Phases never overlap: a phase
        opened inside another is counted in the outer one, so the phases sum to at most the job's
        seconds."""
        if self._in_phase:
            yield
            return
        self._in_phase, t0 = True, time.perf_counter()
        try:
            yield
        finally:
            self._in_phase = False
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    # -- step 1 -----------------------------------------------------------
    def load(self) -> None:
        with self.phase("load"):
            self._load()

    def _load(self) -> None:
        cfg = self.cfg
        self.bench = load_benchmark(cfg.benchmark, seed=cfg.seed)
        self.splits: dict[str, list[MCItem]] = split_items(
            list(self.bench.items), cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion,
            seed=cfg.seed, max_sample_size=cfg.max_sample_size, rule=cfg.split_rule,
        )
        log.info("benchmark %s: %d items -> %s", self.bench.name, len(self.bench),
                 {k: len(v) for k, v in self.splits.items()})
        self.load_model()
        self.scoring_setup()

    def scoring_setup(self) -> None:
        """The loaded model's letter head and ``base_key`` (what decides every result of this job
        besides the cell itself); a kind that loads several models calls it after each."""
        cfg, p = self.cfg, self.cfg.prompt
        n_letters = max(len(it.options) for it in self.bench.items)
        self.letter_ids = score_mod.letter_token_ids(self.lm.tokenizer, n_letters, p.letters == "bare")
        self.head = score_mod.LetterHead(self.lm.model, self.letter_ids)
        self.base_key = [
            self.lm.fingerprint, self.bench.fingerprint(),
            [cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion, cfg.max_sample_size, cfg.seed],
            OmegaConf.to_container(cfg.prompt, resolve=True),
        ]
        if cfg.split_rule != "eas":  # keys of eas-rule splits stay as they were
            self.base_key.append(["split_rule", cfg.split_rule])

    def load_model(self, steered: bool = True) -> None:
        """The model, its prompter, the padding id and the batch size (and, for a kind that
        steers, its layers and site checked against the model)."""
        with self.phase("load"):
            self._load_model(steered)

    def _load_model(self, steered: bool) -> None:
        cfg = self.cfg
        self.lm = models.load(cfg.model, seed=cfg.seed)
        if steered:
            for layer in self.layers:
                self.lm.sites.check_layer(layer)
            self.lm.sites.module(self.layers[0], self.site)  # unknown site for this family: fail now
        log.info("model %s (%s, %d blocks) loaded in %.1fs on %s", self.lm.name, self.lm.sites.family,
                 self.lm.sites.n_layers, self.lm.load_seconds, self.lm.device)
        p = cfg.prompt
        self.prompter = Prompter(self.lm.tokenizer, p.format, p.system, p.instruction)
        if p.format == "chat" and not self.prompter.uses_chat:
            log.warning("prompt.format=chat, but model %s has no chat template: its prompts are plain text",
                        self.lm.name)
        self.pad = tokens.pad_id(self.lm.tokenizer)
        self.batch_size = cfg.batch_size or auto_batch_size(self.lm.model)

    def data_identity(self) -> dict[str, str]:
        """What the manifest says of the data a job read (a kind reading other data says so)."""
        return {"data_fingerprint": self.bench.fingerprint(), "data_source": self.bench.source}

    def rows(self, texts: list[str], ids: list[str] | None = None) -> list[list[int]]:
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

    def mc_rows(self, items: list[MCItem]) -> list[list[int]]:
        return self.rows([self.prompter.mc(it) for it in items], [it.id for it in items])

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    def oom_safe(self, fn, batch_size: int | None = None):
        """``fn(batch_size)`` (``self.batch_size`` by default), halving the batch size on out-of-memory."""
        return retry_on_oom(fn, batch_size or self.batch_size, log.warning)

    # -- step 2 -----------------------------------------------------------
    def unsteered_scores(self, items: list[MCItem], split: str) -> torch.Tensor:
        """Unsteered letter scores ``[item, n_letters]`` of the scoring prompts."""
        rows = self.mc_rows(items)
        n_opts = [len(it.options) for it in items]
        with self.bar(len(rows), f"unsteered {split}") as bar:
            scores = self.oom_safe(lambda bs: score_mod.score_mc(
                self.lm.model, rows, n_opts, self.head, bs, self.pad, bar.update))
        bad = score_mod.nonfinite_items(scores, n_opts)
        if bad.any():
            first = items[int(bad.nonzero()[0, 0])].id
            raise NonFiniteScores(
                f"unsteered {split} scores are NaN or infinite for {int(bad.sum())} of {len(items)} items "
                f"(first: {first!r}) in model.dtype={self.cfg.model.dtype}: the forward pass overflows; "
                f"try model.dtype=float32")
        return scores

    def unsteered(self, splits: list[str] | None = None) -> dict[str, Scored]:
        """Per split (every split by default): the unsteered predictions and letter probabilities
        (one store record each)."""
        with self.phase("unsteered"):
            return self._unsteered(splits)

    def _unsteered(self, splits: list[str] | None) -> dict[str, Scored]:
        out = {}
        before = self.store.tally("cells")
        for split in splits or list(self.splits):
            items = self.splits[split]
            k = store.key("unsteered", self.base_key, split)
            rec = self.store.get_json("cells", k, Scored.fits(items, probs=True))
            if rec is None:
                scores = self.unsteered_scores(items, split)
                rec = Scored([it.id for it in items], [it.label for it in items], scores.argmax(-1).tolist(),
                             torch.softmax(scores, -1).tolist()).as_dict()
                self.store.put_json("cells", k, rec)
            out[split] = Scored(**rec)
            log.info("unsteered %s accuracy %.3f (n=%d)", split, out[split].accuracy, len(items))
        hit, done = (a - b for a, b in zip(self.store.tally("cells"), before))
        log.info("unsteered scores: %d splits from the store, %d computed", hit, done)
        return out

    # -- step 3 -----------------------------------------------------------
    def contrast(self, train: Scored) -> methods.Contrast:
        """The method's train contrast, given the unsteered train predictions."""
        m = methods.module(self.cfg.method)
        c = m.contrast(self.splits["train"], train.preds, self.prompter, seed=self.seed)
        return methods.check_size(c, self.method, self.splits["train"], train.preds,
                                  int(self.cfg.method.min_per_class))

    def vectors(self, train: Scored) -> dict[int, torch.Tensor]:
        """``{layer: [d_model]}``: from ``method.vector_path``, from the store for a method whose
        vectors another experiment made, else extracted from train activations (store-cached)."""
        cfg, m = self.cfg, methods.module(self.cfg.method)
        want = methods.Expected(self.method, self.site, self.position, self.layers, self.lm.name,
                                int(self.lm.model.config.hidden_size))
        if cfg.method.get("vector_path") or not methods.is_extracted(m):
            vecs = self.given_vectors(m, want)
            self.vector_id = methods.vector_id(vecs)
            return vecs
        vkeys = {L: store.key("vector", self.base_key, self.method, self.position, self.site, L,
                              cfg.method.normalize, cfg.method.min_per_class, *self.read_key, *self.module_key)
                 for L in self.layers}
        cached = {L: self.store.get_tensors("vectors", k) for L, k in vkeys.items()}
        if all(v is not None for v in cached.values()):
            log.info("vectors: %d from the store, 0 computed", len(cached))
            return {L: v["vector"] for L, v in cached.items()}
        contrast = self.contrast(train)
        log.info("%s contrast: %d positives, %d negatives", self.method,
                 len(contrast.positives), len(contrast.negatives))
        acts = self.activations(contrast.texts, self.read_site)  # one pass over both sides: fuller batches
        n_pos = len(contrast.positives)
        out = {}
        for L in self.layers:
            v = m.aggregate(acts[L][:n_pos], acts[L][n_pos:], seed=self.seed)
            if cfg.method.normalize:
                v = vectors_mod.normalize(v)
            self.store.put_tensors("vectors", vkeys[L], {"vector": v})
            out[L] = v
        log.info("vectors: 0 from the store, %d computed", len(out))
        return out

    def given_vectors(self, m, want: methods.Expected) -> dict[int, torch.Tensor]:
        """Vectors not extracted here: ``method.vector_path``, else the store (``m.stored_key``)."""
        path = self.cfg.method.get("vector_path")
        if path:
            return methods.read_vectors(path, want)
        out = {}
        for L in self.layers:
            key = m.stored_key([*self.base_key, *self.read_key], self.cfg.method.source, self.site, L)
            rec = self.store.get_tensors("vectors", key)
            if rec is not None:
                methods.check_width(rec["vector"], want.d_model, f"the store's {self.method} vector at layer {L}")
                out[L] = rec["vector"].float()
        missing = [L for L in self.layers if L not in out]
        if missing:
            hint = getattr(m, "MISSING", "").format(source=self.cfg.method.get("source"), layer=missing[0])
            raise methods.VectorError(f"method={self.method}: no vector for layer={missing} in the store "
                                      f"({self.store.root}; has layers {sorted(out)}). {hint}")
        return out

    @property
    def module_key(self) -> list[str]:
        """What a vector's and a cell's store keys add for a method module outside eas: two such
        modules may share a ``method.name``, and their vectors must not share records."""
        module = self.cfg.method.get("module")
        return ["module", str(module)] if module else []

    @property
    def read_key(self) -> list[str]:
        """What a vector's and a cell's store keys add when vectors are read at another site."""
        return [] if self.read_site == self.site else ["read", self.read_site]

    def activations(self, texts: list[str], site: str | None = None) -> dict[int, torch.Tensor]:
        """``{layer: [text, d_model]}`` at ``site`` (default: the steered site) and the position.

        Every layer of the model is captured on a miss, so other jobs of the sweep (other
        layers) find them cached. Texts are captured in shards of ``capture_shard_size``, each
        its own content-addressed record written when done: a large capture streams to disk,
        and a killed one resumes at the first missing shard.
        """
        with self.phase("capture"):
            return self._activations(texts, site)

    def _activations(self, texts: list[str], site: str | None) -> dict[int, torch.Tensor]:
        size = max(1, int(self.cfg.get("capture_shard_size", 2048)))
        shards = []
        todo = [texts[i:i + size] for i in range(0, len(texts), size)]
        site = site or self.site
        before = self.store.tally("activations")
        with self.bar(len(texts), "capture") as bar:
            for part in todo:
                k = store.key("acts", self.lm.fingerprint, part, self.prompter.add_special_tokens, site,
                              self.position)
                acts = self.store.get_tensors("activations", k)
                if acts is None:
                    rows = self.rows(part)
                    got = self.oom_safe(lambda bs, rows=rows: capture_mod.capture(
                        self.lm.model, self.lm.sites, rows, list(range(self.lm.sites.n_layers)), site,
                        (self.position,), bs, self.pad, bar.update))
                    acts = {"acts": got[self.position]}
                    self.store.put_tensors("activations", k, acts)
                else:
                    bar.update(len(part))
                shards.append(acts["acts"][self.layers])
        hit, done = (a - b for a, b in zip(self.store.tally("activations"), before))
        log.info("activations: %d shards from the store, %d computed", hit, done)
        stacked = torch.cat(shards, dim=1)  # [requested layer, text, d_model]
        return {L: stacked[j] for j, L in enumerate(self.layers)}

    # -- step 4 -----------------------------------------------------------
    def cell_key(self, layer: int, strength: float, split: str) -> str:
        c = self.cfg.method
        vector_id = [self.vector_id] if self.vector_id else []  # vectors from files or the store: which ones
        return store.key("cell", self.base_key, self.method, self.position, self.site, c.normalize,
                         c.min_per_class, layer, float(strength), split, *vector_id, *self.read_key,
                         *self.module_key)

    def score_cells(self, cells: list[tuple[int, float]], split: str, vecs: dict[int, torch.Tensor],
                    failed: dict[str, str]) -> dict[tuple[int, float], Scored]:
        """Score cells on a split; finished cells come from the store, new ones are written to it
        chunk by chunk. A chunk that raises marks its cells failed and the rest go on."""
        with self.phase(f"sweep_{split}"):
            return self._score_cells(cells, split, vecs, failed)

    def _score_cells(self, cells: list[tuple[int, float]], split: str, vecs: dict[int, torch.Tensor],
                     failed: dict[str, str]) -> dict[tuple[int, float], Scored]:
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
        rows = self.mc_rows(items)
        n_opts = [len(it.options) for it in items]
        chunk = max(1, int(self.cfg.get("cells_per_chunk", 256)))
        with self.bar(len(todo) * len(items), f"sweep {split} ({len(todo)} cells)") as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                try:
                    scores = self.steered_scores(rows, n_opts, [engine.Cell(L, s, vecs[L]) for L, s in part],
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

    def steered_scores(self, rows, n_opts, cells, progress) -> torch.Tensor:
        """Letter scores ``[cell, item, n_letters]`` of steered cells from the fast engine."""
        return self.oom_safe(lambda bs: engine.sweep_mc(
            self.lm.model, self.lm.sites, rows, n_opts, self.head, self.site, cells, batch_size=bs,
            cells_per_pass=int(self.cfg.cells_per_pass), pad=self.pad, progress=progress))

    def select(self, val: dict[tuple[int, float], Scored]) -> tuple[int, float] | None:
        """The cell reported on test by ``selection_rule`` (``eas.core.select``); None when
        nothing was scored."""
        acc = {c: sc.accuracy for c, sc in val.items()}
        if self.cfg.selection_rule == "pas_reference":
            return reference_cell(acc, self.strengths)
        return best_cell(acc)

    # -- step 5 -----------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The columns every output row of this job carries."""
        return {"experiment": self.x.name, "model": self.lm.name, "benchmark": self.bench.name,
                "steer_target": self.site, "read_site": self.read_site, "position": self.position,
                "seed": self.seed, "selection_rule": self.cfg.selection_rule}

    def write_vectors(self, vecs: dict[int, torch.Tensor], prefix: str | None = None,
                      extra: dict[int, dict[str, torch.Tensor]] | None = None, **meta: str) -> None:
        """``vectors/<prefix>_<site>_L<layer>.safetensors``, with the metadata ``read_vectors`` checks."""
        prefix = prefix or self.method
        for L, v in vecs.items():
            store.write_tensors(self.out / "vectors" / f"{prefix}_{self.site}_L{L}.safetensors",
                                {"vector": v, **(extra or {}).get(L, {})},
                                {"method": prefix, "site": self.site, "read_site": self.read_site, "layer": str(L),
                                 "position": self.position,
                                 "model": self.lm.name, "model_fingerprint": self.lm.fingerprint, **meta})

    @staticmethod
    def write_predictions(path: Path, by_split: dict[str, Scored]) -> None:
        frames = [pd.DataFrame({"item_id": sc.item_ids, "split": split, "label": sc.labels, "pred": sc.preds,
                                "correct": sc.correct}) for split, sc in by_split.items()]
        store.write_csv(path, pd.concat(frames, ignore_index=True))

    def finish(self, summary: dict[str, Any], headline: list[str]) -> dict[str, Any]:
        """Write ``summary.json`` and ``manifest.json`` (each with ``seconds`` and ``phases``, the
        wall seconds of each ``phase``) and print the headline; returns ``summary``."""
        seconds = time.perf_counter() - self.t0
        phases = dict(self.phases)
        summary = {**summary, "seconds": seconds, "phases": phases}
        store.write_json(self.out / "summary.json", summary)
        store.write_json(self.out / "manifest.json", {
            "experiment": self.x.name,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "git_commit": store.git_commit(), "versions": store.versions(),
            "model_fingerprint": self.lm.fingerprint, **self.data_identity(),
            "device": str(self.lm.device), "seconds": seconds, "phases": phases,
        })
        print("\n".join([*headline, f"  results: {self.out}"]), flush=True)
        return summary

    @staticmethod
    def results_table(runs: list[Path], file: str = "results.parquet") -> pd.DataFrame | None:
        """``file`` of every run that has it, one frame with a ``run`` column (None: no run has it)."""
        frames = [pd.read_parquet(Path(r) / file).assign(run=str(r)) for r in runs if (Path(r) / file).exists()]
        return pd.concat(frames, ignore_index=True) if frames else None

    def figures(self, write, *args) -> None:
        """``write(*args)``; a figure that fails is a warning, never a lost result."""
        try:
            write(*args)
        except Exception as e:  # noqa: BLE001 - figures never cost the results
            log.warning("figures not written: %s", e)
