"""experiment=similarity: how alike are two models' (or one model's) representations of the same texts?

1. the text set: the benchmark's items in a seeded order, the first ``experiment.max_texts``, as
   plain text (``experiment.texts=mc``: the scoring prompt without a chat template, ending in
   ``Answer:``; ``question``: the context and question only), duplicates dropped. Every model reads
   the same strings: texts are aligned, never tokens, so widths, tokenisers and layer counts may
   all differ;
2. per model of ``experiment.models`` (``conf/model`` preset names, or inline model configs): load
   it, capture every layer (or ``experiment.layers``) at ``steer_target.site``, pooled at the last
   token or over the text (``experiment.pooling``), through the store (``Experiment.activations``:
   the same records as every kind's capture), then free it;
3. per model pair (each earlier model against each later one; one model against itself):
   - linear CKA of every layer of a against every layer of b (``experiment.debiased``: the
     unbiased HSIC estimator), ``eas.core.similarity.cka_matrix``;
   - for the layer pairs of ``experiment.projection`` (``best_per_layer``: each layer of a with
     the layer of b of highest CKA; ``all``; ``none``), the projection correlation: a ridge map
     a -> b fitted on a seeded train split of the texts (``experiment.train_fraction``) and
     scored on the held-out texts (the mean over b's dimensions of the per-dimension Pearson
     correlation), its bootstrap interval over the held-out texts (the map fixed), and the
     permutation null of shuffled pairing (b's texts re-paired at random, the map refitted);
     PASS when the interval lies at or above ``experiment.threshold`` (0.3, the seed plan's) and
     the permutation p-value is at most ``experiment.alpha``, FAIL when it lies below, else
     INCONCLUSIVE; with ``experiment.premortem=1`` (``premortem1``) the mean over model pairs of
     the best layer pair's correlation is the seed plan's PM1, judged by the interval alone
     (``eas.experiments.verdicts``) and written as ``pm1.json`` and ``pm1_summary.md``;
   - optionally (``experiment.vector_path``: vectors of the first model, a file or a run dir) each
     vector carried through the fitted map of its layer's best pair into every later model
     (``LinearMap.apply_direction``), written as ``vectors/transfer_*.safetensors`` that
     ``method.vector_path`` of a job on that model reads;
   - with ``experiment.transfer=true``, each such vector is also used on the target. The source
     vectors are ``experiment.vector_path``'s, else the job's ``method`` on the job's benchmark at
     the job's ``layer`` list, made on the first model exactly as ``Experiment.vectors`` makes them
     (extracted from the train split, ``method.vector_path``, or the store). The mapped vector is
     rescaled (the rule): ``v_b = m / |m| * |v| * mean|h_b| / mean|h_a|``, with ``m`` the mapped
     direction and ``mean|h|`` the mean norm of the captured activations of the source and target
     layer over the text set: the vector keeps its size relative to its layer's activations. On the
     target the benchmark's val split is scored unsteered and steered with ``v_b`` at every
     ``strength`` (the fast engine, ``eas.core.engine.sweep_mc``), the strength of best val accuracy
     (``eas.core.select.best_cell``) is scored on test, and the gain over unsteered test gets the
     exact McNemar test and a paired bootstrap interval. Verdict against ``experiment.min_gain``
     (0.02): PASS when the gain is >= min_gain and McNemar's p <= ``experiment.alpha``, FAIL when the
     interval's high end is below min_gain, else INCONCLUSIVE. The control is the same protocol with
     a seeded Gaussian direction of ``v_b``'s norm (its own strength picked on val), and the mapped
     vector is tested against it on test (McNemar, ``vs_control_p``).

Each CKA matrix, each scored layer pair and each transfer cell (keyed by the target's fingerprint and
``base_key``, the split's items, the site, layer, strength and the vector's digest) is a
content-addressed store record. Writes
``results.parquet`` (CKA per model pair and layer pair), ``projection.parquet``,
``transfer.parquet`` (with ``experiment.vector_path`` or ``experiment.transfer``; with the latter,
also ``transfer_cells.parquet``: every scored cell of the target), ``figures/``, ``summary.json`` and
``manifest.json``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from eas import config, models, store
from eas.config import MODEL_SOURCES, POSITIONS, ConfigError, choice
from eas.core import engine, stats, tokens
from eas.core import score as score_mod
from eas.core import similarity as S
from eas.core.select import best_cell
from eas.core.sites import ModelError
from eas.data.schema import DataError
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment, Scored
from eas.experiments.verdicts import write_premortem
from eas.methods.base import VectorError, check_width, vector_id
from eas.prompts import Prompter
from eas.resources import auto_batch_size

log = logging.getLogger("eas")
TEXTS = ("mc", "question")
PROJECTION = ("best_per_layer", "all", "none")
RUNTIME = ("device", "dtype")  # taken from the job's model config by every model of the list


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/similarity.yaml``."""

    models: list[Any] = MISSING  # conf/model preset names, or inline model configs
    texts: str = MISSING  # mc (plain scoring prompts) | question (context and question)
    max_texts: int | None = None  # the first N texts of the seeded order (null: all)
    pooling: str = MISSING  # last | mean | mid
    layers: list[int] | None = None  # null: every block of every model; else these of each model
    debiased: bool = MISSING  # the unbiased HSIC estimator in CKA
    projection: str = MISSING  # best_per_layer | all | none
    train_fraction: float = MISSING  # texts the linear map is fitted on; the rest score it
    ridge: float = MISSING
    n_bootstrap: int = MISSING
    n_permutations: int = MISSING
    threshold: float = MISSING  # the projection correlation the verdict tests
    alpha: float = MISSING
    vector_path: str | None = None  # vectors of the first model carried into the others
    transfer: bool = False  # score the carried vectors on each later model's benchmark (and a random control)
    min_gain: float = 0.02  # the test-accuracy gain the transfer verdict tests
    premortem: int | None = None  # 1 (conf/experiment/premortem1.yaml): write pm1.json and pm1_summary.md


def model_configs(cfg: DictConfig) -> list[DictConfig]:
    """The ``ModelConfig`` of each entry of ``experiment.models``: the job's own ``model`` when the
    name is its name (command-line overrides included), else the ``conf/model`` preset (or an
    inline config) with the job's device and dtype.

    Raises:
        ConfigError: an empty list, a name with no preset, an inline config without a name or with a
            bad value, naming ``experiment.models[i]``.
        ModelError: an embedded model whose wheel is not installed.
    """
    entries = cfg.experiment.models
    if not isinstance(entries, (ListConfig, list)) or not entries:
        raise ConfigError(f"experiment.models={entries!r}: a list of conf/model preset names, e.g. "
                          f"experiment.models=[smollm2_135m,gemma3_270m]")
    out = []
    for i, entry in enumerate(entries):
        field = f"experiment.models[{i}]"
        runtime = {k: cfg.model[k] for k in RUNTIME}
        if isinstance(entry, str):
            if entry == cfg.model.name:
                m = cfg.model
            else:
                if not (config.CONF_DIR / "model" / f"{entry}.yaml").exists():
                    names = sorted(p.stem for p in (config.CONF_DIR / "model").glob("*.yaml"))
                    raise ConfigError(f"{field}={entry!r}: no conf/model preset of that name; one of: "
                                      f"{', '.join(names)}")
                m = OmegaConf.merge(config.model_preset(entry, field), runtime)
        elif OmegaConf.is_dict(entry) or isinstance(entry, dict):
            if not entry.get("name"):
                raise ConfigError(f"{field}: an inline model config needs a name")
            try:
                m = OmegaConf.merge(OmegaConf.structured(config.ModelConfig), runtime, entry)
            except Exception as e:  # noqa: BLE001 - a bad key or type is the user's to fix
                raise ConfigError(f"{field}: {str(e).splitlines()[0]} (the fields of eas.config.ModelConfig)") from None
        else:
            raise ConfigError(f"{field}={entry!r}: a conf/model preset name or a model config")
        choice(f"{field}.source", m.source, MODEL_SOURCES)
        if m.source != "random" and not m.id:
            raise ConfigError(f"{field} ({m.name}): model.id is empty for source={m.source}")
        if m.source == "random" and not m.architecture:
            raise ConfigError(f"{field} ({m.name}): source=random needs an architecture")
        if m.source == "embedded":
            try:
                models.embedded_cache(str(m.id))
            except ModelError as e:
                raise ModelError(f"{field}={m.name}: {e}") from None
        out.append(m)
    return out


def known_depth(m: DictConfig) -> int | None:
    """A model's block count where it is known before loading: a random model's config, an embedded
    model's converted checkpoint (``config.json`` in the model cache); else None."""
    import json

    if m.source == "random":
        return (m.random_config or {}).get("num_hidden_layers")
    if m.source == "embedded":
        path = models.embedded_cache(str(m.id)) / "config.json"
        if path.exists():
            hf = json.loads(path.read_text())
            n = hf.get("num_hidden_layers", (hf.get("text_config") or {}).get("num_hidden_layers"))
            return int(n) if n is not None else None
    return None


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    choice("experiment.texts", x.texts, TEXTS)
    choice("experiment.pooling", x.pooling, POSITIONS)
    choice("experiment.projection", x.projection, PROJECTION)
    if x.max_texts is not None and x.max_texts < 8:
        raise ConfigError(f"experiment.max_texts={x.max_texts}: at least 8 texts (a train and a held-out "
                          f"split), or null for all")
    if not 0 < x.train_fraction < 1:
        raise ConfigError(f"experiment.train_fraction={x.train_fraction}: a fraction in (0, 1)")
    if not x.ridge >= 0:
        raise ConfigError(f"experiment.ridge={x.ridge}: must be >= 0")
    for name, low in (("n_bootstrap", 50), ("n_permutations", 10)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not -1 < x.threshold < 1:
        raise ConfigError(f"experiment.threshold={x.threshold}: a correlation in (-1, 1)")
    if not 0 < x.alpha < 1:
        raise ConfigError(f"experiment.alpha={x.alpha}: must be in (0, 1)")
    if x.layers is not None and (not len(x.layers) or any(v < 0 for v in x.layers)):
        raise ConfigError(f"experiment.layers={list(x.layers)}: 0-based block indices, or null for every block")
    if x.vector_path and not Path(str(x.vector_path)).exists():
        raise ConfigError(f"experiment.vector_path={str(x.vector_path)!r}: no such file or folder")
    if x.transfer:
        if not 0 < x.min_gain < 1:
            raise ConfigError(f"experiment.min_gain={x.min_gain}: an accuracy gain in (0, 1)")
        if len(x.models) < 2:
            raise ConfigError("experiment.transfer=true: needs two or more experiment.models (a source and a target)")
        job_layers = config.as_number_list("layer", cfg.layer, int)
        if not x.vector_path and x.layers is not None and not set(job_layers) <= {int(v) for v in x.layers}:
            raise ConfigError(f"experiment.transfer=true: layer={job_layers} (the source vectors' layers) must be "
                              f"among experiment.layers={list(x.layers)}")
    for i, m in enumerate(model_configs(cfg)):
        n = known_depth(m)
        if n is not None and x.layers is not None and max(x.layers) >= n:
            raise ModelError(f"experiment.layers={list(x.layers)}: experiment.models[{i}]={m.name} has {n} "
                             f"blocks (0..{n - 1})")


def undefined_to_none(a: np.ndarray) -> list:
    """A float array as nested lists with None where it is NaN (no non-finite number is stored)."""
    return [undefined_to_none(r) for r in a] if a.ndim > 1 else [float(v) if np.isfinite(v) else None for v in a]


def none_to_nan(rows: list) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in rows], float)


def mean_column_correlation(pred: np.ndarray, true: np.ndarray) -> float:
    """The projection criterion (``eas.core.similarity.projection_correlation``): the mean over
    columns of the Pearson correlation of ``pred`` with ``true``, constant columns left out."""
    pc, tc = pred - pred.mean(0), true - true.mean(0)
    den = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    ok = den > 0
    return float(((pc * tc).sum(0)[ok] / den[ok]).mean()) if ok.any() else float("nan")


def verdict(low: float, high: float, p: float, threshold: float, alpha: float) -> str:
    """PASS when the interval lies at or above ``threshold`` and the null is rejected, FAIL when the
    interval lies below it, else INCONCLUSIVE."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "INCONCLUSIVE"
    if low >= threshold and p <= alpha:
        return "PASS"
    if high < threshold:
        return "FAIL"
    return "INCONCLUSIVE"


@dataclass
class Captured:
    """One model's activations over the text set."""

    label: str
    name: str
    fingerprint: str
    n_layers: int
    d_model: int
    layers: list[int]
    acts: np.ndarray  # [layer, text, d_model] float64


class Similarity(Experiment):
    def run(self) -> dict[str, Any]:
        from eas.data import load_benchmark

        cfg, x = self.cfg, self.x
        self.model_cfgs = model_configs(cfg)
        self.bench = load_benchmark(cfg.benchmark, seed=cfg.seed)
        self.position = str(x.pooling)
        self.texts = self.text_set()
        n = len(self.texts)
        n_train = round(float(x.train_fraction) * n)
        if n_train < 2 or n - n_train < 3:
            raise DataError(f"{n} distinct texts of benchmark {self.bench.name} at experiment.train_fraction="
                            f"{x.train_fraction}: {n_train} to fit the map and {n - n_train} to score it; need >= 2 "
                            f"and >= 3 (raise experiment.max_texts or use a larger benchmark)")
        order = np.random.default_rng(self.seed).permutation(n)
        self.train, self.test = np.sort(order[:n_train]), np.sort(order[n_train:])
        labels = self.labels()
        self.vectors_a: list[tuple[str, int, torch.Tensor]] | None = None
        self.job_layers = list(self.layers)  # the job's `layer` list: the source vectors' layers
        self.transfer_cells: list[dict[str, Any]] = []
        if x.transfer:
            from eas.data import split_items

            self.splits = split_items(list(self.bench.items), cfg.n_train_proportion, cfg.n_val_proportion,
                                      cfg.n_test_proportion, seed=cfg.seed, max_sample_size=cfg.max_sample_size,
                                      rule=cfg.split_rule)
            for split in ("val", "test"):
                if len(self.splits[split]) < 2:
                    raise DataError(f"experiment.transfer=true: the {split} split of benchmark {self.bench.name} has "
                                    f"{len(self.splits[split])} items; need >= 2 (a larger benchmark or proportion)")
        caps = []
        for i, (m, label) in enumerate(zip(self.model_cfgs, labels)):
            caps.append(self.capture_model(m, label, first=i == 0))
            self.loaded = i
        pairs = [(i, j) for i in range(len(caps)) for j in range(i + 1, len(caps))] or [(0, 0)]
        results, projections, transfers, fig_pairs = [], [], [], []
        for i, j in pairs:
            a, b = caps[i], caps[j]
            cka = self.cka(a, b)
            results += [{"model_a": a.label, "model_b": b.label, "layer_a": la, "layer_b": lb, "cka": float(cka[p, q])}
                        for p, la in enumerate(a.layers) for q, lb in enumerate(b.layers)]
            proj = self.projections(a, b, cka)
            projections.append(proj)
            if i == 0 and self.vectors_a is not None and i != j:
                transfers += self.transfer(a, b, cka, j)
            fig_pairs.append({"a": a.label, "b": b.label, "layers_a": a.layers, "layers_b": b.layers, "cka": cka,
                              "projection": proj, "debiased": bool(x.debiased)})
        return self.write(caps, pd.DataFrame(results), projections, transfers, fig_pairs)

    # -- the texts and the models -------------------------------------------
    def text_set(self) -> list[str]:
        x = self.x
        items = list(self.bench.items)
        random.Random(self.seed).shuffle(items)
        plain = Prompter(None, "plain", None, self.cfg.prompt.instruction)
        if x.texts == "mc":
            texts = [plain.mc(it) for it in items]
        else:
            texts = [f"{it.context}\n{it.question}" if it.context else it.question for it in items]
        texts = list(dict.fromkeys(t for t in texts if t.strip()))
        return texts[:int(x.max_texts)] if x.max_texts else texts

    def labels(self) -> list[str]:
        names = [str(m.name) for m in self.model_cfgs]
        return [n if names.count(n) == 1 else f"{n}#{names[:k + 1].count(n)}" for k, n in enumerate(names)]

    def capture_model(self, mcfg: DictConfig, label: str, first: bool) -> Captured:
        """Load one model, check the layers (and, for the first, the vectors to transfer), capture, free it."""
        x = self.x
        self.lm = None  # the previous model's weights go before the next one's load
        self.lm = models.load(mcfg, seed=self.seed)
        sites = self.lm.sites
        n = sites.n_layers
        layers = list(range(n)) if x.layers is None else [int(v) for v in x.layers]
        bad = [v for v in layers if v >= n]
        if bad:
            raise ModelError(f"experiment.layers={layers}: model {label} has {n} blocks (0..{n - 1}); {bad} are beyond it")
        sites.module(layers[0], self.site)  # an unknown site for this family fails now
        d = int(self.lm.model.config.hidden_size)
        if first:
            self.vectors_a = self.read_transfer_vectors(label, d, layers) if x.vector_path else None
            if x.transfer and not x.vector_path:
                for L in self.job_layers:
                    sites.check_layer(L)
        log.info("model %s (%s, %d blocks, width %d) loaded in %.1fs", label, sites.family, n, d, self.lm.load_seconds)
        self.prompter = Prompter(self.lm.tokenizer, "plain", None, self.cfg.prompt.instruction)
        self.pad = tokens.pad_id(self.lm.tokenizer)
        self.batch_size = self.cfg.batch_size or auto_batch_size(self.lm.model)
        self.layers = layers
        acts = self.activations(self.texts, self.site)
        stacked = torch.stack([acts[L] for L in layers]).double().numpy()
        if not np.isfinite(stacked).all():
            raise ModelError(f"model {label}: its activations hold NaN or infinite values in model.dtype="
                             f"{mcfg.dtype}; try dtype float32")
        if first and x.transfer and not x.vector_path:
            self.vectors_a = self.source_vectors(label)
        return Captured(label, str(mcfg.name), self.lm.fingerprint, n, d, layers, stacked)

    # -- transfer: scoring on a model's benchmark ------------------------------
    def scoring_setup(self) -> None:
        """The loaded model's scoring prompter, then ``Experiment.scoring_setup`` (letter head and
        ``base_key``), as ``Experiment.load`` makes them: its unsteered records are a steer job's."""
        p = self.cfg.prompt
        self.prompter = Prompter(self.lm.tokenizer, p.format, p.system, p.instruction)
        super().scoring_setup()

    def source_vectors(self, label: str) -> list[tuple[str, int, torch.Tensor]]:
        """The job's method's vectors at the job's layers on the loaded (first) model, as a steer job
        on it makes them (``Experiment.vectors``: extracted from train, a file, or the store)."""
        self.scoring_setup()
        saved = self.position, self.layers
        self.position, self.layers = str(self.cfg.method.position), list(self.job_layers)
        try:
            vecs = self.vectors(self.unsteered(["train"])["train"])
        finally:
            self.position, self.layers = saved
        return [(f"{self.method}@{label}", L, v.float()) for L, v in sorted(vecs.items())]

    def ensure_model(self, j: int) -> None:
        if getattr(self, "loaded", None) != j:
            self.lm = None
            self.lm = models.load(self.model_cfgs[j], seed=self.seed)
            self.pad = tokens.pad_id(self.lm.tokenizer)
            self.batch_size = self.cfg.batch_size or auto_batch_size(self.lm.model)
            self.loaded = j

    def transfer_cell_key(self, layer: int, strength: float, split: str, digest: str) -> str:
        ids = [it.id for it in self.splits[split]]
        return store.key("transfer_cell", self.base_key, self.site, layer, float(strength), split, ids, digest)

    def score_steered(self, todo: list[tuple[str, int, float, torch.Tensor]], split: str) -> dict[tuple[str, float], Scored]:
        """``{(kind, strength): Scored}`` of steered cells on a split of the loaded model, through the
        store; a cell with non-finite scores is left out (never stored)."""
        items = self.splits[split]
        fits, out, missing = Scored.fits(items), {}, []
        for kind, L, s, v in todo:
            rec = self.store.get_json("cells", self.transfer_cell_key(L, s, split, vector_id({0: v})), fits)
            if rec is not None:
                out[(kind, s)] = Scored(**rec)
            else:
                missing.append((kind, L, s, v))
        if missing:
            rows = self.mc_rows(items)
            n_opts = [len(it.options) for it in items]
            with self.bar(len(missing) * len(items), f"transfer {split} ({len(missing)} cells)") as bar:
                scores = self.steered_scores(rows, n_opts, [engine.Cell(L, s, v) for _, L, s, v in missing],
                                             lambda n: bar.update(n * len(missing)))
            bad = score_mod.nonfinite_items(scores, n_opts)
            for j, (kind, L, s, v) in enumerate(missing):
                if bad[j].any():
                    log.error("transfer cell %s L%d s%g on %s: non-finite scores; not stored", kind, L, s, split)
                    continue
                sc = Scored([it.id for it in items], [it.label for it in items], scores[j].argmax(-1).tolist())
                self.store.put_json("cells", self.transfer_cell_key(L, s, split, vector_id({0: v})), sc.as_dict())
                out[(kind, s)] = sc
        return out

    def gain(self, base: Scored, steered: Scored) -> dict[str, Any]:
        """Test accuracy with and without, the gain, its paired bootstrap interval, exact McNemar, verdict."""
        x = self.x
        u, a = base.correct, steered.correct
        ci = stats.bootstrap_ci(a.astype(float), paired_with=u.astype(float), n_resamples=int(x.n_bootstrap),
                                ci=1 - float(x.alpha), seed=self.seed)
        p = stats.mcnemar(u, a, exact=True).p_value
        g = steered.accuracy - base.accuracy
        low, high = (float(v) if np.isfinite(v) else None for v in (ci.low, ci.high))
        return {"test_accuracy": steered.accuracy, "gain": g, "gain_low": low, "gain_high": high,
                "mcnemar_p": float(p), "wrong_to_right": int((~u & a).sum()), "right_to_wrong": int((u & ~a).sum()),
                "verdict": transfer_verdict(g, high, float(p), float(x.min_gain), float(x.alpha))}

    def score_transfer(self, j: int, layer_b: int, vec: torch.Tensor, seed_parts: list[int]) -> dict[str, Any]:
        """Unsteered, mapped-vector and random-control accuracy of target model ``j`` at ``layer_b``."""
        self.ensure_model(j)
        self.scoring_setup()
        self.lm.sites.check_layer(layer_b)
        control = random_control(vec, [self.seed, *seed_parts])
        kinds = {"mapped": vec, "control": control}
        base = self.unsteered(["val", "test"])
        val = self.score_steered([(k, layer_b, s, v) for k, v in kinds.items() for s in self.strengths], "val")
        out: dict[str, Any] = {"unsteered_val_accuracy": base["val"].accuracy,
                               "unsteered_test_accuracy": base["test"].accuracy, "n_val": len(self.splits["val"]),
                               "n_test": len(self.splits["test"]), "control_norm": float(control.norm())}
        picked = {}
        for k in kinds:
            got = {(layer_b, s): val[(k, s)].accuracy for s in self.strengths if (k, s) in val}
            for (_, s), acc in got.items():
                self.transfer_cells.append({"vector": k, "layer_b": layer_b, "strength": s, "split": "val",
                                            "accuracy": acc})
            best = best_cell(got)
            picked[k] = None if best is None else best[1]
        test = self.score_steered([(k, layer_b, s, kinds[k]) for k, s in picked.items() if s is not None], "test")
        for k, s in picked.items():
            pre = "" if k == "mapped" else "control_"
            block: dict[str, Any] = {"strength": s, "val_accuracy": None, "test_accuracy": None, "gain": None,
                                     "gain_low": None, "gain_high": None, "mcnemar_p": None, "wrong_to_right": None,
                                     "right_to_wrong": None, "verdict": "INCONCLUSIVE"}
            if s is not None and (k, s) in test:
                block.update(val_accuracy=val[(k, s)].accuracy, **self.gain(base["test"], test[(k, s)]))
                self.transfer_cells.append({"vector": k, "layer_b": layer_b, "strength": s, "split": "test",
                                            "accuracy": test[(k, s)].accuracy})
            out.update({pre + m: v for m, v in block.items()})
        pair = [test.get(("control", picked["control"])), test.get(("mapped", picked["mapped"]))]
        out["vs_control_p"] = (float(stats.mcnemar(pair[0].correct, pair[1].correct, exact=True).p_value)
                               if None not in pair else None)
        return out

    def read_transfer_vectors(self, label: str, d_model: int, layers: list[int]) -> list[tuple[str, int, torch.Tensor]]:
        """``[(file, layer, [d_model])]`` of ``experiment.vector_path``, checked against the first model."""
        from safetensors import safe_open

        path, field = Path(str(self.x.vector_path)), "experiment.vector_path"
        files = [path] if path.is_file() else sorted([*path.glob("vectors/*.safetensors"), *path.glob("probes/*.safetensors")])
        if not files:
            raise VectorError(f"{field}={str(path)!r}: no vectors/*.safetensors or probes/*.safetensors there")
        out = []
        for f in files:
            with safe_open(str(f), "pt") as fh:
                meta = dict(fh.metadata() or {})
                if "vector" not in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    raise VectorError(f"{field}: {f} holds no 'vector' tensor")
                v = fh.get_tensor("vector").float()
            check_width(v, d_model, f"{field}: {f} (for experiment.models[0]={label})")
            if not str(meta.get("layer", "")).isdigit():
                raise VectorError(f"{field}: {f} has no 'layer' in its metadata: not a vector file of eas")
            layer = int(meta["layer"])
            if layer not in layers:
                raise VectorError(f"{field}: {f} is a layer-{layer} vector; {label}'s captured layers are {layers}")
            if meta.get("model", label) not in (label, str(self.model_cfgs[0].name)):
                raise VectorError(f"{field}: {f} was made on model {meta['model']!r}, experiment.models[0] is {label!r}")
            out.append((str(f), layer, v))
        return out

    # -- step 3: CKA, projections, transfer ----------------------------------
    def pair_key(self, a: Captured, b: Captured) -> list[Any]:
        return [a.fingerprint, b.fingerprint, self.texts, "plain", self.site, self.position, a.layers, b.layers]

    def cka(self, a: Captured, b: Captured) -> np.ndarray:
        k = store.key("cka", *self.pair_key(a, b), bool(self.x.debiased))
        shape = (len(a.layers), len(b.layers))
        rec = self.store.get_json("similarity", k, lambda r: none_to_nan(r["cka"]).shape == shape)
        if rec is not None:
            return none_to_nan(rec["cka"])
        m = S.cka_matrix(list(a.acts), list(b.acts), debiased=bool(self.x.debiased))
        self.store.put_json("similarity", k, {"cka": undefined_to_none(m)})
        return m

    def scored_pairs(self, cka: np.ndarray) -> list[tuple[int, int]]:
        how = self.x.projection
        if how == "none":
            return []
        if how == "all":
            return [(p, q) for p in range(cka.shape[0]) for q in range(cka.shape[1])]
        out = []
        for p in range(cka.shape[0]):
            row = cka[p]
            if np.isfinite(row).any():
                out.append((p, int(np.nanargmax(row))))
        return out

    def fitted(self, X: np.ndarray, Y: np.ndarray) -> S.Projection:
        tr, te = self.train, self.test
        return S.projection_correlation(X[tr], Y[tr], X[te], Y[te], ridge=float(self.x.ridge))

    def projection(self, X: np.ndarray, Y: np.ndarray) -> dict[str, float | None]:
        """The held-out projection correlation, its bootstrap over held-out texts and the shuffled-pairing null."""
        x = self.x
        proj = self.fitted(X, Y)
        if not np.isfinite(proj.correlation):
            return {"correlation": None, "low": None, "high": None, "null_mean": None, "null_q95": None,
                    "p_value": None}
        pred, true = proj.map.apply(X[self.test]), Y[self.test]
        ci = S.bootstrap_texts(lambda ix, iy: mean_column_correlation(pred[ix], true[iy]), len(self.test),
                               int(x.n_bootstrap), self.seed, float(x.alpha))

        def shuffled(ix: np.ndarray, iy: np.ndarray) -> float:
            c = self.fitted(X[ix], Y[iy]).correlation
            return c if np.isfinite(c) else 0.0

        null = S.permutation_null(shuffled, len(X), int(x.n_permutations), self.seed)
        low, high = (float(v) if np.isfinite(v) else None for v in (ci.low, ci.high))
        return {"correlation": float(proj.correlation), "low": low, "high": high,
                "null_mean": float(null.null.mean()), "null_q95": float(np.quantile(null.null, 0.95)),
                "p_value": float(null.p_value)}

    def projections(self, a: Captured, b: Captured, cka: np.ndarray) -> pd.DataFrame:
        x = self.x
        rows = []
        todo = self.scored_pairs(cka)
        with self.bar(len(todo), f"projection {a.label} -> {b.label}") as bar:
            for p, q in todo:
                k = store.key("projection", *self.pair_key(a, b), a.layers[p], b.layers[q], self.train.tolist(),
                              float(x.ridge), int(x.n_bootstrap), int(x.n_permutations), float(x.alpha), self.seed)
                rec = self.store.get_json("similarity", k, lambda r: "correlation" in r and "p_value" in r)
                if rec is None:
                    rec = self.projection(a.acts[p], b.acts[q])
                    self.store.put_json("similarity", k, rec)
                bar.update(1)
                rec = {m: (np.nan if v is None else v) for m, v in rec.items()}
                rows.append({"model_a": a.label, "model_b": b.label, "layer_a": a.layers[p], "layer_b": b.layers[q],
                             "ia": p, "ib": q, "cka": float(cka[p, q]), **rec,
                             "verdict": verdict(rec["low"], rec["high"], rec["p_value"], float(x.threshold),
                                                float(x.alpha))})
        cols = ["model_a", "model_b", "layer_a", "layer_b", "ia", "ib", "cka", "correlation", "low", "high",
                "null_mean", "null_q95", "p_value", "verdict"]
        return pd.DataFrame(rows, columns=cols)

    def transfer(self, a: Captured, b: Captured, cka: np.ndarray, j: int) -> list[dict[str, Any]]:
        """Each vector of the first model through the map from its layer to b's layer of highest CKA
        (with ``experiment.transfer``: rescaled by ``rescale`` and scored on b)."""
        rows = []
        for f, layer, v in self.vectors_a:
            p = a.layers.index(layer)
            if not np.isfinite(cka[p]).any():
                continue
            q = int(np.nanargmax(cka[p]))
            proj = self.fitted(a.acts[p], b.acts[q])
            mapped = torch.as_tensor(proj.map.apply_direction(v.double().numpy()), dtype=torch.float32)
            row = {"source_file": f, "model_a": a.label, "layer_a": layer, "model_b": b.label,
                   "layer_b": b.layers[q], "cka": float(cka[p, q]), "projection_correlation": proj.correlation,
                   "norm_a": float(v.norm()), "norm_b": float(mapped.norm())}
            meta = {}
            if self.x.transfer:
                scaled, factor = rescale(mapped, v, a.acts[p], b.acts[q])
                row.update(norm_mapped=float(mapped.norm()), norm_b=float(scaled.norm()), scale=factor,
                           act_norm_a=mean_norm(a.acts[p]), act_norm_b=mean_norm(b.acts[q]))
                meta = {"rescale": "source norm relative to mean activation norm", "unscaled_norm": f"{mapped.norm():g}"}
                mapped = scaled
            target = self.out / "vectors" / f"transfer_{b.label}_{self.site}_L{b.layers[q]}_from_L{layer}.safetensors"
            store.write_tensors(target, {"vector": mapped}, {
                "method": "transfer", "site": self.site, "read_site": self.site, "layer": str(b.layers[q]),
                "position": self.position, "model": b.name, "model_fingerprint": b.fingerprint,
                "source_model": a.name, "source_layer": str(layer), "source_file": f, **meta})
            row["file"] = str(target)
            if self.x.transfer:
                start = len(self.transfer_cells)
                if float(mapped.norm()) > 0:
                    row.update(self.score_transfer(j, b.layers[q], mapped, [j, layer, b.layers[q]]))
                else:
                    log.warning("transfer L%d -> %s L%d: the map sends the vector to 0; not scored", layer, b.label,
                                b.layers[q])
                for c in self.transfer_cells[start:]:
                    c.update(model_a=a.label, layer_a=layer, model_b=b.label)
            rows.append(row)
        return rows

    # -- writing ------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"experiment": self.x.name, "benchmark": self.bench.name, "site": self.site, "pooling": self.position,
                "texts": self.x.texts, "debiased": bool(self.x.debiased), "seed": self.seed}

    def write(self, caps: list[Captured], results: pd.DataFrame, projections: list[pd.DataFrame],
              transfers: list[dict], fig_pairs: list[dict]) -> dict[str, Any]:
        x = self.x
        meta = self.meta()
        store.write_parquet(self.out / "results.parquet", results.assign(**meta))
        proj = pd.concat(projections, ignore_index=True) if projections else pd.DataFrame()
        store.write_parquet(self.out / "projection.parquet", proj.drop(columns=["ia", "ib"], errors="ignore").assign(**meta))
        if transfers:
            store.write_parquet(self.out / "transfer.parquet", pd.DataFrame(transfers).assign(**meta))
        if self.transfer_cells:
            store.write_parquet(self.out / "transfer_cells.parquet", pd.DataFrame(self.transfer_cells).assign(**meta))
        pair_blocks = []
        for fp in fig_pairs:
            cka, pj = np.asarray(fp["cka"], float), fp["projection"]
            block: dict[str, Any] = {"model_a": fp["a"], "model_b": fp["b"],
                                     "cka_max": float(np.nanmax(cka)) if np.isfinite(cka).any() else None,
                                     "cka_diagonal_mean": (float(np.nanmean(np.diag(cka)))
                                                           if cka.shape[0] == cka.shape[1] else None),
                                     "best": None, "scored_pairs": len(pj),
                                     "pass_pairs": int((pj.verdict == "PASS").sum()) if len(pj) else 0}
            ok = pj[np.isfinite(pj.correlation)] if len(pj) else pj
            if len(ok):
                best = ok.loc[ok.correlation.idxmax()]
                block["best"] = {"layer_a": int(best.layer_a), "layer_b": int(best.layer_b), "cka": float(best.cka),
                                 "correlation": float(best.correlation), "low": _f(best.low), "high": _f(best.high),
                                 "null_mean": float(best.null_mean), "p_value": float(best.p_value),
                                 "verdict": str(best.verdict)}
            pair_blocks.append(block)
        summary = {**meta, "models": [{"label": c.label, "name": c.name, "fingerprint": c.fingerprint,
                                       "n_layers": c.n_layers, "d_model": c.d_model, "layers": c.layers} for c in caps],
                   "n_texts": len(self.texts), "n_train": len(self.train), "n_test": len(self.test),
                   "threshold": float(x.threshold), "pairs": pair_blocks, "transferred": len(transfers)}
        if x.transfer:
            keep = ["model_a", "layer_a", "model_b", "layer_b", "scale", "norm_b", "control_norm",
                    "unsteered_val_accuracy", "unsteered_test_accuracy", "n_test", "vs_control_p"]
            keep += [f"{pre}{m}" for pre in ("", "control_") for m in (
                "strength", "val_accuracy", "test_accuracy", "gain", "gain_low", "gain_high", "mcnemar_p",
                "wrong_to_right", "right_to_wrong", "verdict")]
            summary["transfer"] = {"min_gain": float(x.min_gain), "alpha": float(x.alpha),
                                   "rows": [{k: _finite(t.get(k)) for k in keep} for t in transfers],
                                   "pass": sum(t.get("verdict") == "PASS" for t in transfers)}
        summary = self.finish(summary, headline(summary))
        manifest = store.read_json(self.out / "manifest.json")
        manifest["model_fingerprints"] = {c.label: c.fingerprint for c in caps}
        store.write_json(self.out / "manifest.json", manifest)
        if x.premortem:
            self.write_premortem(summary)
        from eas.report.representations import write_similarity_figures

        self.figures(write_similarity_figures, self.out / "figures", fig_pairs, float(x.threshold))
        return summary


    def write_premortem(self, summary: dict[str, Any]) -> None:
        """PM1: the projection correlation of the best layer pair of each model pair; over several model
        pairs their mean, with the mean of their interval bounds (wider than the interval of the mean)."""
        best = [p["best"] for p in summary["pairs"] if p["best"] is not None]
        ok = [b for b in best if b["low"] is not None]

        def mean(k: str, rows: list[dict]) -> float:
            return float(np.mean([b[k] for b in rows])) if rows else float("nan")

        pairs = ", ".join(f"{p['model_a']} vs {p['model_b']}" for p in summary["pairs"])
        write_premortem(self.out, int(self.x.premortem),
                        f"projection correlation, best layer pair, mean over {len(best)} model pair(s) ({pairs})",
                        mean("correlation", best), mean("low", ok) if len(ok) == len(best) else float("nan"),
                        mean("high", ok) if len(ok) == len(best) else float("nan"), float(self.x.threshold),
                        summary["seconds"], "+".join(m["label"] for m in summary["models"]), self.bench.name,
                        n_texts=summary["n_texts"], n_held_out=summary["n_test"],
                        permutation_p=[b["p_value"] for b in best])


def _f(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _finite(v: Any) -> Any:
    """None for a NaN or infinite float (no non-finite number is stored); anything else as it is."""
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def mean_norm(acts: np.ndarray) -> float:
    """The mean L2 norm of a layer's captured activations ``[text, d]``."""
    return float(np.linalg.norm(acts, axis=-1).mean())


def rescale(mapped: torch.Tensor, v: torch.Tensor, acts_a: np.ndarray, acts_b: np.ndarray) -> tuple[torch.Tensor, float]:
    """The mapped vector at the norm the target's activations imply: ``|v| / mean|h_a| * mean|h_b|``
    (the source vector's norm relative to its layer's mean activation norm, kept on the target
    layer); returns the rescaled vector and the factor applied to ``mapped``."""
    n = float(mapped.norm())
    if n == 0 or mean_norm(acts_a) == 0:
        return mapped, 1.0
    factor = float(v.norm()) / mean_norm(acts_a) * mean_norm(acts_b) / n
    return (mapped.double() * factor).float(), factor


def random_control(vec: torch.Tensor, seed: list[int]) -> torch.Tensor:
    """A seeded Gaussian direction of ``vec``'s width and norm (the transfer's control)."""
    r = torch.as_tensor(np.random.default_rng(seed).standard_normal(vec.shape[-1]), dtype=torch.float64)
    return (r * (float(vec.norm()) / float(r.norm()))).float()


def transfer_verdict(gain: float, high: float | None, p: float, min_gain: float, alpha: float) -> str:
    """PASS when the test gain is >= ``min_gain`` and the exact McNemar p <= ``alpha``; FAIL when
    the gain's interval lies below ``min_gain``; else INCONCLUSIVE."""
    if gain >= min_gain and p <= alpha:
        return "PASS"
    if high is not None and high < min_gain:
        return "FAIL"
    return "INCONCLUSIVE"


def headline(s: dict) -> list[str]:
    names = ", ".join(f"{m['label']} ({m['n_layers']} blocks, width {m['d_model']})" for m in s["models"])
    lines = [(f"eas similarity: {names} on {s['n_texts']} {s['benchmark']} texts ({s['texts']}, {s['pooling']} "
              f"pooled @ {s['site']}; map fitted on {s['n_train']}, scored on {s['n_test']})")]
    for p in s["pairs"]:
        diag = "" if p["cka_diagonal_mean"] is None else f", diagonal mean {p['cka_diagonal_mean']:.3f}"
        cka_max = "n/a" if p["cka_max"] is None else f"{p['cka_max']:.3f}"
        lines.append(f"  {p['model_a']} vs {p['model_b']}: CKA max {cka_max}{diag}")
        b = p["best"]
        if b is not None:
            ci = "n/a" if b["low"] is None else f"[{b['low']:.3f}, {b['high']:.3f}]"
            lines.append(f"    best projection L{b['layer_a']} -> L{b['layer_b']}: correlation {b['correlation']:.3f} "
                         f"{ci} vs shuffled {b['null_mean']:.3f} (p {b['p_value']:.3g}); verdict (>= "
                         f"{s['threshold']:g}): {b['verdict']}; {p['pass_pairs']} of {p['scored_pairs']} pairs PASS")
    if s["transferred"]:
        lines.append(f"  {s['transferred']} vectors carried through the fitted maps (vectors/transfer_*)")
    t = s.get("transfer")
    for r in (t or {}).get("rows", []):
        if r.get("gain") is None:
            lines.append(f"    transfer {r['model_a']} L{r['layer_a']} -> {r['model_b']} L{r['layer_b']}: not scored")
            continue

        def gain(pre: str, r=r) -> str:
            ci = "n/a" if r[pre + "gain_low"] is None else f"[{r[pre + 'gain_low']:+.3f}, {r[pre + 'gain_high']:+.3f}]"
            return (f"test {r[pre + 'test_accuracy']:.3f} (strength {r[pre + 'strength']:g}; gain "
                    f"{r[pre + 'gain']:+.3f} {ci}, McNemar p {r[pre + 'mcnemar_p']:.3g}) {r[pre + 'verdict']}")

        lines.append(f"    transfer {r['model_a']} L{r['layer_a']} -> {r['model_b']} L{r['layer_b']} (norm "
                     f"{r['norm_b']:.3g}): unsteered test {r['unsteered_test_accuracy']:.3f} (n={r['n_test']}); "
                     f"mapped {gain('')}")
        if r.get("control_gain") is not None:
            vs = "n/a" if r["vs_control_p"] is None else f"{r['vs_control_p']:.3g}"
            lines.append(f"      random control (same norm): {gain('control_')}; mapped vs control p {vs}")
    if t:
        lines.append(f"  transfer verdict (gain >= {t['min_gain']:g}, McNemar p <= {t['alpha']:g}): "
                     f"{t['pass']} of {len(t['rows'])} PASS")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Similarity(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s tables of similarity runs: one row per model pair (its CKA and best projection),
    the scored layer pairs and the carried vectors (``transfer``: with their scores on the target under
    ``experiment.transfer``); the full CKA grids stay in each run's ``results.parquet``."""
    out, rows = {}, []
    for r in runs:
        path = Path(r) / "summary.json"
        if not path.exists():
            continue
        s = store.read_json(path)
        for p in s.get("pairs", []):
            best = p.get("best") or {}
            rows.append({"model_a": p["model_a"], "model_b": p["model_b"], "n_texts": s["n_texts"],
                         "pooling": s["pooling"], "texts": s["texts"], "cka_max": p["cka_max"],
                         **{f"best_{k}": v for k, v in best.items()}, "pass_pairs": p["pass_pairs"],
                         "scored_pairs": p["scored_pairs"], "run": str(r)})
    if rows:
        out["pairs"] = pd.DataFrame(rows)
    frames = [pd.read_parquet(Path(r) / "projection.parquet").assign(run=str(r)) for r in runs
              if (Path(r) / "projection.parquet").exists()]
    if frames:
        out["projection"] = pd.concat(frames, ignore_index=True)
    frames = [pd.read_parquet(Path(r) / "transfer.parquet").assign(run=str(r)) for r in runs
              if (Path(r) / "transfer.parquet").exists()]
    if frames:
        out["transfer"] = pd.concat(frames, ignore_index=True)
    return out
