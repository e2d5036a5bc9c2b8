"""experiment=lens: one model's activation space read in vocabulary space, layer by layer.

1. load the benchmark (split as every kind), the model, the prompter and the letter head; the
   text set is the benchmark's scoring prompts (train, val, test in that order, the first
   ``experiment.max_items``);
2. logit lens (``eas.core.lens``): every block's residual output at the last position of every
   prompt, decoded through the final norm and the LM head; per layer, the rank and probability of
   the item's answer letter (its best-ranked spelling, "A" or " A", and the summed probability of
   its spellings: ``self.letter_ids[label]``), their means with bootstrap intervals over items, the
   top-1/top-10 rates and the lens' own letter accuracy (the highest-scoring option letter under
   the lens); the top tokens per layer of the first ``experiment.sample_prompts`` prompts. The
   lens of the last block is the model's own logits. One store record per text set;
3. vector lens: the method's steering vectors (extracted from train, or ``method.vector_path``)
   and those of ``experiment.vector_paths``, the top tokens of ``+v`` and ``-v`` with and without
   the final norm;
4. SVD of ``experiment.svd_layer``'s activations at the steered site and ``method.position``
   (store-cached capture) over the text set: singular values, explained variance, the top
   ``experiment.svd_k`` directions unembedded with both signs and their cosine with the steering
   vector of that layer;
5. cosines between every vector of the run (across layers) and those of
   ``experiment.vector_paths`` (files or run dirs; their widths checked);
6. a PCA map of ``experiment.pca_layer``'s activations coloured by the answer label, with the
   steering direction projected into the plane, and a t-SNE map of the same activations;
7. with ``experiment.sae.train`` or ``experiment.sae.path``: a sparse autoencoder on
   ``experiment.sae.layer``'s activations of the text set (``eas.core.sae``; trained and
   store-cached, or an sae-lens folder loaded), its reconstruction and dead features on the set,
   every steering vector of that width decomposed into its top features (``eas.core.sae.decompose``:
   by cosine with the decoder rows, weights by least squares), each of those features' top-activating
   texts and the top tokens of its decoder row unembedded.

Writes ``results.parquet`` (per layer lens rows), ``top_tokens.parquet``, ``vector_lens.parquet``,
``svd.parquet``, ``cosines.parquet``, ``pca.parquet`` (PCA and t-SNE coordinates), ``sae.parquet`` (with an
SAE: one row per (vector, feature)), ``vectors/``, ``figures/``, ``summary.json``
and ``manifest.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from eas import store
from eas.config import ConfigError
from eas.core import lens as L
from eas.core import sae as SAE
from eas.core import stats
from eas.core.sites import ModelError
from eas.data.schema import MCItem
from eas.experiments.base import SPLITS, Experiment, NonFiniteScores
from eas.experiments.base import Config as BaseConfig
from eas.methods.base import VectorError, check_width

log = logging.getLogger("eas")


@dataclass
class SAEConfig:
    train: bool = MISSING  # train an SAE on the layer's activations of the text set (store-cached)
    path: str | None = None  # or load one: an sae-lens folder (cfg.json, sae_weights.safetensors)
    layer: int | None = None  # null: svd_layer
    n_features: int = MISSING
    l1: float = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    top_features: int = MISSING  # features per steering vector
    top_texts: int = MISSING  # top-activating texts per feature


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/lens.yaml``."""

    max_items: int | None = None  # the text set: the first N items of train, val, test (null: all)
    top_k: int = MISSING  # tokens per layer, per vector sign, per singular direction
    sample_prompts: int = MISSING  # prompts whose top tokens per layer are tabled
    vectors: bool = MISSING  # the method's steering vectors (vector lens, cosines, the PCA arrow)
    vector_paths: list[str] = MISSING  # more vector files or run dirs for the cosine matrix and the lens
    svd_layer: int | None = None  # null: the middle of the layer list
    svd_k: int = MISSING  # singular directions unembedded
    pca_layer: int | None = None  # null: svd_layer
    sae: SAEConfig = field(default_factory=SAEConfig)
    n_bootstrap: int = MISSING
    alpha: float = MISSING


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    if x.max_items is not None and x.max_items < 2:
        raise ConfigError(f"experiment.max_items={x.max_items}: at least 2 items, or null for all")
    for name, low in (("top_k", 1), ("sample_prompts", 0), ("svd_k", 1), ("n_bootstrap", 100)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    for name in ("svd_layer", "pca_layer"):
        if x[name] is not None and x[name] < 0:
            raise ConfigError(f"experiment.{name}={x[name]}: a 0-based block index, or null")
    sae = x.sae
    if sae.train and sae.path is not None:
        raise ConfigError(f"experiment.sae.train=true and experiment.sae.path={sae.path!r}: train one or load one")
    if sae.path is not None and not Path(str(sae.path)).is_dir():
        raise ConfigError(f"experiment.sae.path={str(sae.path)!r}: no such folder (an sae-lens SAE folder)")
    if sae.layer is not None and sae.layer < 0:
        raise ConfigError(f"experiment.sae.layer={sae.layer}: a 0-based block index, or null")
    for name in ("n_features", "epochs", "batch_size", "top_features", "top_texts"):
        if sae[name] < 1:
            raise ConfigError(f"experiment.sae.{name}={sae[name]}: must be >= 1")
    if sae.l1 < 0 or sae.lr <= 0:
        raise ConfigError(f"experiment.sae.l1={sae.l1}, lr={sae.lr}: l1 must be >= 0 and lr > 0")
    if not 0 < x.alpha < 1:
        raise ConfigError(f"experiment.alpha={x.alpha}: must be in (0, 1)")
    for i, p in enumerate(x.vector_paths):
        if not Path(str(p)).exists():
            raise ConfigError(f"experiment.vector_paths[{i}]={str(p)!r}: no such file or folder")


def interval(values: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float, float]:
    """``(mean, low, high)``: a percentile bootstrap over items (NaN bounds under 2 values)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan")
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0]), float(v[0])
    ci = stats.bootstrap_ci(v, n_resamples=n_boot, ci=1 - alpha, seed=seed)
    return float(ci.point), float(ci.low), float(ci.high)


def letter_readout(logits: torch.Tensor, letter_ids: list[list[int]], labels: list[int],
                   n_opts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of lens logits ``[n, vocab]``: the answer letter's rank (its best spelling), probability (its
    spellings summed) and the option letter picked (log-sum-exp over each letter's spellings)."""
    probs = torch.softmax(logits.float(), -1)
    rank, prob, pick = [], [], []
    for i, (lab, k) in enumerate(zip(labels, n_opts)):
        ids = letter_ids[lab]
        rank.append(min(int(L.answer_rank(logits[i], t).rank) for t in ids))
        prob.append(float(probs[i, ids].sum()))
        scores = torch.stack([logits[i, letter_ids[j]].float().logsumexp(-1) for j in range(k)])
        pick.append(int(scores.argmax()))
    return torch.tensor(rank), torch.tensor(prob), torch.tensor(pick)


class Lens(Experiment):
    def run(self) -> dict[str, Any]:
        self.load()
        x = self.x
        n = self.lm.sites.n_layers
        self.svd_layer = self.checked_layer("svd_layer", x.svd_layer)
        self.pca_layer = self.checked_layer("pca_layer", x.pca_layer if x.pca_layer is not None else self.svd_layer)
        self.sae_layer = self.checked_layer("sae.layer", x.sae.layer if x.sae.layer is not None else self.svd_layer)
        self.d_model = int(self.lm.model.config.hidden_size)
        extra = self.extra_vectors()  # bad files fail here, before any forward pass
        loaded = self.load_sae()  # so does an SAE folder of another width
        items = self.items()
        texts = [self.prompter.mc(it) for it in items]
        self.mc_rows(items)  # a prompt past the context fails here, naming its item
        lens = self.logit_lens(items, texts)
        table = self.per_layer(lens, items, n)
        tops = self.top_table(lens, items)
        vecs = {}
        if x.vectors:
            vecs = self.vectors(self.unsteered()["train"])
            self.write_vectors(vecs)
        named = {f"{self.method} L{layer}": ("run", layer, v) for layer, v in vecs.items()}
        named.update(extra)
        vlens = self.vector_table(named)
        svd_df, svd_info = self.svd_table(texts, vecs)
        cos_labels, cos = self.cosines(named)
        pca_df, pca_info = self.pca_map(texts, items, vecs)
        sae_df, sae_info = self.sae_table(texts, items, named, loaded)
        return self.write(table, tops, vlens, svd_df, svd_info, cos_labels, cos, pca_df, pca_info, sae_df, sae_info,
                          items)

    # -- the text set -----------------------------------------------------
    def items(self) -> list[MCItem]:
        pool = [it for split in SPLITS for it in self.splits[split]]
        cap = self.x.max_items
        return pool[:int(cap)] if cap else pool

    def checked_layer(self, name: str, layer: int | None) -> int:
        if layer is None:
            return self.layers[len(self.layers) // 2]
        n = self.lm.sites.n_layers
        if not 0 <= layer < n:
            raise ModelError(f"experiment.{name}={layer} is out of range: this model has {n} blocks (0..{n - 1})")
        return int(layer)

    def capture(self, texts: list[str], layers: list[int], site: str, position: str) -> dict[int, torch.Tensor]:
        """``Experiment.activations`` at ``site`` and ``position`` for ``layers`` (the same store records)."""
        saved = self.layers, self.position
        self.layers, self.position = list(layers), position
        try:
            return self.activations(texts, site)
        finally:
            self.layers, self.position = saved

    # -- step 2: the logit lens --------------------------------------------
    def logit_lens(self, items: list[MCItem], texts: list[str]) -> dict[str, Any]:
        """``{rank, prob, pick: [layer][item], top_ids, top_logits: [layer][sample][k]}`` (a store record)."""
        x = self.x
        n = self.lm.sites.n_layers
        labels, n_opts = [it.label for it in items], [len(it.options) for it in items]
        samples = min(int(x.sample_prompts), len(items))
        k = min(int(x.top_k), int(self.lm.model.config.vocab_size))
        key = store.key("lens", self.lm.fingerprint, texts, self.prompter.add_special_tokens, labels, n_opts,
                        self.letter_ids, samples, k)

        def fits(rec: dict) -> bool:
            return (all(len(rec[m]) == n and all(len(r) == len(items) for r in rec[m]) for m in ("rank", "prob", "pick"))
                    and len(rec["top_ids"]) == n and all(len(r) == samples for r in rec["top_ids"]))

        rec = self.store.get_json("lens", key, fits)
        if rec is not None:
            log.info("logit lens: from the store")
            return rec
        acts = self.capture(texts, list(range(n)), "residual", "last")
        rec = {"rank": [], "prob": [], "pick": [], "top_ids": [], "top_logits": []}
        for layer in range(n):
            logits = L.logit_lens(self.lm.model, acts[layer]).cpu()  # [item, vocab]
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteScores(f"the logit lens of layer {layer} is NaN or infinite in model.dtype="
                                      f"{self.cfg.model.dtype}: try model.dtype=float32")
            rank, prob, pick = letter_readout(logits, self.letter_ids, labels, n_opts)
            top = L.top_tokens(logits[:samples], k)
            rec["rank"].append(rank.tolist())
            rec["prob"].append(prob.tolist())
            rec["pick"].append(pick.tolist())
            rec["top_ids"].append(top.ids.tolist())
            rec["top_logits"].append(top.logits.tolist())
        self.store.put_json("lens", key, rec)
        return rec

    def per_layer(self, lens: dict[str, Any], items: list[MCItem], n: int) -> pd.DataFrame:
        x = self.x
        labels = np.array([it.label for it in items])
        rows = []
        for layer in range(n):
            rank = np.asarray(lens["rank"][layer], float)
            prob = np.asarray(lens["prob"][layer], float)
            r, r_lo, r_hi = interval(rank, int(x.n_bootstrap), self.seed, float(x.alpha))
            p, p_lo, p_hi = interval(prob, int(x.n_bootstrap), self.seed, float(x.alpha))
            rows.append({"layer": layer, "rank_mean": r, "rank_low": r_lo, "rank_high": r_hi,
                         "rank_median": float(np.median(rank)), "prob_mean": p, "prob_low": p_lo, "prob_high": p_hi,
                         "top1_rate": float((rank == 0).mean()), "top10_rate": float((rank < 10).mean()),
                         "letter_accuracy": float((np.asarray(lens["pick"][layer]) == labels).mean()),
                         "n": len(items)})
        return pd.DataFrame(rows)

    def decode(self, token_id: int) -> str:
        return self.lm.tokenizer.decode([int(token_id)])

    def top_table(self, lens: dict[str, Any], items: list[MCItem]) -> pd.DataFrame:
        rows = []
        for layer, (ids, logits) in enumerate(zip(lens["top_ids"], lens["top_logits"])):
            for s, (row_ids, row_logits) in enumerate(zip(ids, logits)):
                for r, (t, v) in enumerate(zip(row_ids, row_logits)):
                    rows.append({"item_id": items[s].id, "label": items[s].letters[items[s].label], "layer": layer,
                                 "rank": r, "token_id": int(t), "token": self.decode(t), "logit": float(v)})
        return pd.DataFrame(rows, columns=["item_id", "label", "layer", "rank", "token_id", "token", "logit"])

    # -- steps 3 and 5: vectors --------------------------------------------
    def extra_vectors(self) -> dict[str, tuple[str, int, torch.Tensor]]:
        """``{label: (source, layer, [d_model])}`` of ``experiment.vector_paths``: every
        ``vector`` of a file, or of a run dir's ``vectors/`` and ``probes/``; each made on this
        model and of its width."""
        from safetensors import safe_open

        out = {}
        for i, p in enumerate(self.x.vector_paths):
            path, field = Path(str(p)), f"experiment.vector_paths[{i}]"
            files = [path] if path.is_file() else sorted([*path.glob("vectors/*.safetensors"),
                                                          *path.glob("probes/*.safetensors")])
            if not files:
                raise VectorError(f"{field}={str(path)!r}: no vectors/*.safetensors or probes/*.safetensors there")
            for f in files:
                try:
                    with safe_open(str(f), "pt") as fh:
                        meta = dict(fh.metadata() or {})
                        if "vector" not in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                            raise VectorError(f"{field}: {f} holds no 'vector' tensor")
                        v = fh.get_tensor("vector").float()
                except VectorError:
                    raise
                except Exception as e:  # noqa: BLE001 - an unreadable file is the user's to fix
                    raise VectorError(f"{field}: {f} is not a safetensors file ({e})") from None
                check_width(v, self.d_model, f"{field}: {f}")
                if meta.get("model", self.lm.name) != self.lm.name:
                    raise VectorError(f"{field}: {f} was made on model {meta['model']!r}, this job has "
                                      f"{self.lm.name!r}: its cosines with this model's vectors mean nothing")
                if not bool(torch.isfinite(v).all()):
                    raise VectorError(f"{field}: {f} holds NaN or infinite values")
                layer = int(meta["layer"]) if str(meta.get("layer", "")).lstrip("-").isdigit() else -1
                label = f"{meta.get('method', f.stem)} L{layer} ({path.name})" if layer >= 0 else f"{f.stem} ({path.name})"
                if label in out:  # e.g. a run dir's vectors/ and probes/ of one method and layer
                    label = f"{f.parent.name}/{f.stem} ({path.name})"
                out[label] = (str(f), layer, v)
        return out

    def vector_table(self, named: dict[str, tuple[str, int, torch.Tensor]]) -> pd.DataFrame:
        k = min(int(self.x.top_k), int(self.lm.model.config.vocab_size))
        rows = []
        for label, (source, layer, v) in named.items():
            for normed in (False, True):
                vl = L.vector_lens(self.lm.model, v, k, normed)
                for sign, top in (("+", vl.positive), ("-", vl.negative)):
                    for r, (t, s) in enumerate(zip(top.ids.tolist(), top.logits.tolist())):
                        rows.append({"vector": label, "source": source, "layer": layer, "normed": normed,
                                     "sign": sign, "rank": r, "token_id": int(t), "token": self.decode(t),
                                     "score": float(s), "norm": float(v.norm())})
        return pd.DataFrame(rows, columns=["vector", "source", "layer", "normed", "sign", "rank", "token_id",
                                           "token", "score", "norm"])

    def cosines(self, named: dict[str, tuple[str, int, torch.Tensor]]) -> tuple[list[str], np.ndarray]:
        labels = list(named)
        if not labels:
            return [], np.zeros((0, 0))
        V = torch.stack([named[lab][2].double() for lab in labels])
        norms = V.norm(dim=1, keepdim=True)
        U = V / torch.where(norms > 0, norms, torch.ones_like(norms))
        return labels, (U @ U.T).numpy()

    # -- steps 4 and 6: the geometry of one layer ---------------------------
    def svd_table(self, texts: list[str], vecs: dict[int, torch.Tensor]) -> tuple[pd.DataFrame, dict]:
        layer = self.svd_layer
        acts = self.capture(texts, [layer], self.site, self.position)[layer]
        full = L.svd(acts, min(acts.shape))
        k = min(int(self.x.svd_k), len(full.singular_values))
        top_k = min(int(self.x.top_k), int(self.lm.model.config.vocab_size))
        ul = L.unembed_directions(self.lm.model, torch.tensor(full.components[:k], dtype=torch.float32), top_k)
        v = vecs.get(layer)
        cos = full.components @ (v.double().numpy() / max(float(v.norm()), 1e-30)) if v is not None else None
        rows = []
        for i, (s, e) in enumerate(zip(full.singular_values, full.explained)):
            row = {"layer": layer, "site": self.site, "position": self.position, "component": i,
                   "singular_value": float(s), "explained": float(e),
                   "cumulative": float(np.sum(full.explained[:i + 1])),
                   "cosine_with_vector": float(cos[i]) if cos is not None else float("nan"),
                   "top_positive": None, "top_negative": None}
            if i < k:
                row["top_positive"] = " | ".join(self.decode(t) for t in ul.positive.ids[i].tolist())
                row["top_negative"] = " | ".join(self.decode(t) for t in ul.negative.ids[i].tolist())
            rows.append(row)
        df = pd.DataFrame(rows)
        cum = df.cumulative.to_numpy()
        info = {"layer": layer, "n_texts": len(texts), "explained_top1": float(df.explained.iloc[0]),
                "components_for_90pct": int(np.searchsorted(cum, 0.9) + 1) if len(cum) else None}
        return df, info

    def pca_map(self, texts: list[str], items: list[MCItem], vecs: dict[int, torch.Tensor]) -> tuple[pd.DataFrame, dict]:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        layer = self.pca_layer
        acts = self.capture(texts, [layer], self.site, self.position)[layer].double().numpy()
        n_comp = min(2, *acts.shape)
        pca = PCA(n_components=n_comp, random_state=self.seed).fit(acts)
        xy = pca.transform(acts)
        if n_comp < 2:
            xy = np.c_[xy, np.zeros(len(xy))]
        # t-SNE keeps neighbourhoods rather than variance: clusters the top two PCs may hide
        tsne = TSNE(n_components=2, perplexity=float(min(30, len(acts) - 1)), init="pca", random_state=self.seed)
        ts = tsne.fit_transform(acts) if len(acts) > 2 else np.zeros((len(acts), 2))
        df = pd.DataFrame({"item_id": [it.id for it in items], "label": [it.letters[it.label] for it in items],
                           "pc1": xy[:, 0], "pc2": xy[:, 1], "tsne1": ts[:, 0], "tsne2": ts[:, 1], "layer": layer})
        info: dict[str, Any] = {"layer": layer, "explained": [float(e) for e in pca.explained_variance_ratio_],
                                "vector_layer": None}
        if vecs:
            vl = layer if layer in vecs else min(vecs, key=lambda q: (abs(q - layer), q))
            v = vecs[vl].double().numpy()
            proj = pca.components_ @ v  # the direction's coordinates in the plane
            norm = float(np.linalg.norm(v))
            info.update({"vector_layer": int(vl), "arrow": [float(a) for a in np.r_[proj, 0.0][:2]],
                         "in_plane": float(np.linalg.norm(proj) / norm) if norm > 0 else float("nan"),
                         "cosine_pc": [float(a / norm) if norm > 0 else float("nan") for a in proj]})
        return df, info

    # -- step 7: sparse autoencoder features ----------------------------------
    def load_sae(self) -> SAE.SAE | None:
        """The SAE of ``experiment.sae.path`` (None without one), checked against this model's width."""
        path = self.x.sae.path
        if path is None:
            return None
        sae, _ = SAE.load_sae(str(path))
        if sae.d_in != self.d_model:
            raise VectorError(f"experiment.sae.path={str(path)!r}: the SAE's d_in is {sae.d_in}, this model's "
                              f"width is {self.d_model}: an SAE of another model or site")
        return sae

    def trained_sae(self, texts: list[str], acts: torch.Tensor, layer: int) -> tuple[SAE.SAE, dict[str, Any]]:
        """An SAE trained on ``acts`` (a store record keyed by the activations and the hyperparameters)."""
        s = self.x.sae
        hyper = {"n_features": int(s.n_features), "l1": float(s.l1), "epochs": int(s.epochs), "lr": float(s.lr),
                 "batch_size": int(s.batch_size), "seed": int(self.seed)}
        key = store.key("sae", self.lm.fingerprint, texts, self.prompter.add_special_tokens, self.site, self.position,
                        layer, hyper)
        rec = self.store.get_tensors("sae", key)
        if rec is not None and tuple(rec["W_enc"].shape) == (acts.shape[1], hyper["n_features"]):
            log.info("SAE: from the store")
            return SAE.SAE(rec["W_enc"], rec["b_enc"], rec["W_dec"], rec["b_dec"]), {**hyper, "from_store": True}
        sae, tlog = SAE.train_sae(acts, **hyper)
        self.store.put_tensors("sae", key, {k: getattr(sae, k).detach().contiguous()
                                            for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
        log.info("SAE: trained %d features on %d texts in %d steps, loss %.4g -> %.4g", hyper["n_features"],
                 len(acts), tlog.steps, tlog.loss[0], tlog.loss[-1])
        return sae, {**hyper, "from_store": False, "final_loss": tlog.loss[-1]}

    def sae_table(self, texts: list[str], items: list[MCItem], named: dict[str, tuple[str, int, torch.Tensor]],
                  loaded: SAE.SAE | None) -> tuple[pd.DataFrame, dict[str, Any]]:
        """One row per (vector, feature): the vector's top SAE features, their weights, top-activating
        texts and unembedded decoder rows; and the SAE's statistics on the text set."""
        s = self.x.sae
        if not s.train and loaded is None:
            return pd.DataFrame(columns=SAE_COLUMNS), {"enabled": False}
        layer = self.sae_layer
        acts = self.capture(texts, [layer], self.site, self.position)[layer].float()
        if loaded is not None:
            sae, source, hyper = loaded, str(s.path), None
        else:
            sae, hyper = self.trained_sae(texts, acts, layer)
            source = "trained"
        stats = SAE.sae_stats(sae, acts)
        SAE.save_sae(sae, self.out / "sae", {"model": self.lm.name, "layer": layer, "site": self.site,
                                             "position": self.position, "source": source, "hyper": hyper})
        k = min(int(s.top_features), sae.d_sae)
        n_tok = min(int(self.x.top_k), int(self.lm.model.config.vocab_size))
        rows, vectors = [], {}
        for label, (_, vlayer, v) in named.items():
            if v.shape[-1] != sae.d_in or not bool(v.any()):
                continue
            dec = SAE.decompose(sae, v, k)
            feats = dec.features.tolist()
            ex_rows, ex_vals = SAE.top_activating(sae, acts, feats, int(s.top_texts))
            ul = L.unembed_directions(self.lm.model, sae.W_dec[dec.features].float(), n_tok)
            vectors[label] = {"layer": vlayer, "reconstruction": dec.reconstruction,
                              "features": feats[:3], "weights": [float(w) for w in dec.weights[:3]]}
            for r, f in enumerate(feats):
                active = ex_vals[r] > 0
                rows.append({"vector": label, "vector_layer": vlayer, "sae_layer": layer, "rank": r, "feature": f,
                             "cosine": float(dec.cosine[r]), "weight": float(dec.weights[r]),
                             "encoder": float(dec.encoder[r]), "reconstruction": dec.reconstruction,
                             "top_item_ids": [items[i].id for i in ex_rows[r][active].tolist()],
                             "top_acts": [float(a) for a in ex_vals[r][active]],
                             "top_texts": [items[i].question[:80] for i in ex_rows[r][active].tolist()],
                             "top_positive": " | ".join(self.decode(t) for t in ul.positive.ids[r].tolist()),
                             "top_negative": " | ".join(self.decode(t) for t in ul.negative.ids[r].tolist())})
        info = {"enabled": True, "source": source, "layer": layer, "d_sae": sae.d_sae, "n_texts": stats.n,
                "mse": stats.mse, "explained_variance": stats.explained_variance, "l0": stats.l0,
                "dead_fraction": stats.dead_fraction, "hyper": hyper, "vectors": vectors}
        return pd.DataFrame(rows, columns=SAE_COLUMNS), info

    # -- writing ------------------------------------------------------------
    def write(self, table, tops, vlens, svd_df, svd_info, cos_labels, cos, pca_df, pca_info, sae_df, sae_info,
              items) -> dict[str, Any]:
        meta = {**self.meta(), "method": self.method}
        store.write_parquet(self.out / "results.parquet", table.assign(**meta))
        store.write_parquet(self.out / "top_tokens.parquet", tops.assign(**meta))
        store.write_parquet(self.out / "vector_lens.parquet", vlens.assign(**meta))
        store.write_parquet(self.out / "svd.parquet", svd_df.assign(**meta))
        cos_rows = [{"a": a, "b": b, "cosine": float(cos[i, j])} for i, a in enumerate(cos_labels)
                    for j, b in enumerate(cos_labels)]
        store.write_parquet(self.out / "cosines.parquet",
                            pd.DataFrame(cos_rows, columns=["a", "b", "cosine"]).assign(**meta))
        store.write_parquet(self.out / "pca.parquet", pca_df.assign(**meta))
        if sae_info["enabled"]:
            store.write_parquet(self.out / "sae.parquet", sae_df.assign(**meta))
        last = table.iloc[-1]
        first_top1 = table[table.top1_rate >= 0.5]
        best_prob = table.loc[table.prob_mean.idxmax()]
        off = [float(cos[i, j]) for i in range(len(cos_labels)) for j in range(len(cos_labels)) if i < j]
        summary = {
            **meta, "n_items": len(items), "n_layers": len(table),
            "final_layer": {k: float(last[k]) for k in ("rank_mean", "rank_low", "rank_high", "rank_median",
                                                        "prob_mean", "prob_low", "prob_high", "top1_rate",
                                                        "letter_accuracy")},
            "first_layer_top1_majority": int(first_top1.layer.iloc[0]) if len(first_top1) else None,
            "best_prob_layer": {"layer": int(best_prob.layer), "prob_mean": float(best_prob.prob_mean)},
            "vectors": len(cos_labels), "mean_offdiagonal_cosine": float(np.mean(off)) if off else None,
            "svd": svd_info, "pca": pca_info, "sae": sae_info, "sae_top_features": int(self.x.sae.top_features),
        }
        summary = self.finish(summary, headline(summary))
        from eas.report.representations import write_lens_figures

        self.figures(write_lens_figures, self.out / "figures", table, svd_df, cos_labels, cos, pca_df, pca_info)
        self.figures(tsne_map, pca_df, pca_info["layer"], self.out / "figures" / "tsne_map.png")
        return summary


SAE_COLUMNS = ["vector", "vector_layer", "sae_layer", "rank", "feature", "cosine", "weight", "encoder",
               "reconstruction", "top_item_ids", "top_acts", "top_texts", "top_positive", "top_negative"]


def tsne_map(df: pd.DataFrame, layer: int, path: Path) -> None:
    """``pca_map``'s picture of the t-SNE coordinates (no arrow: t-SNE has no directions)."""
    from eas.report.figures import save_figure
    from eas.report.representations import pca_map

    fig = pca_map(df.assign(pc1=df.tsne1, pc2=df.tsne2), {"layer": layer})
    ax = fig.axes[0]
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"t-SNE of layer {layer}")
    save_figure(fig, path)


def headline(s: dict) -> list[str]:
    f = s["final_layer"]
    lines = [f"eas lens: {s['model']} on {s['benchmark']} ({s['n_items']} prompts, {s['n_layers']} layers)",
             (f"  answer letter at the last layer: mean rank {f['rank_mean']:.1f} [{f['rank_low']:.1f}, "
              f"{f['rank_high']:.1f}], median {f['rank_median']:.0f}, probability {f['prob_mean']:.3f} "
              f"[{f['prob_low']:.3f}, {f['prob_high']:.3f}], top-1 {f['top1_rate']:.2f}, "
              f"lens letter accuracy {f['letter_accuracy']:.3f}"),
             f"  most probable at layer {s['best_prob_layer']['layer']} ({s['best_prob_layer']['prob_mean']:.3f}); "
             + (f"top-1 for most items from layer {s['first_layer_top1_majority']}"
                if s["first_layer_top1_majority"] is not None else "top-1 for most items at no layer")]
    sv = s["svd"]
    lines.append(f"  SVD at layer {sv['layer']}: top direction explains {sv['explained_top1']:.3f}; "
                 f"{sv['components_for_90pct']} directions for 90%")
    if s["vectors"]:
        mean = s["mean_offdiagonal_cosine"]
        lines.append(f"  {s['vectors']} vectors, mean pairwise cosine "
                     f"{'n/a' if mean is None else f'{mean:.3f}'}")
    p = s["pca"]
    if p.get("vector_layer") is not None:
        lines.append(f"  PCA at layer {p['layer']}: explained {', '.join(f'{e:.3f}' for e in p['explained'])}; "
                     f"the L{p['vector_layer']} vector has {p['in_plane']:.3f} of its norm in the plane")
    a = s["sae"]
    if a["enabled"]:
        lines.append(f"  SAE at layer {a['layer']} ({a['d_sae']} features, {a['source']}): explained variance "
                     f"{a['explained_variance']:.3f}, L0 {a['l0']:.1f}, dead {a['dead_fraction']:.3f}")
        same = [(lab, v) for lab, v in a["vectors"].items() if v["layer"] == a["layer"]] or list(a["vectors"].items())
        for lab, v in same[:2]:
            top = ", ".join(f"f{f} ({w:+.3g})" for f, w in zip(v["features"], v["weights"]))
            lines.append(f"    {lab}: {top}; top-{s['sae_top_features']} reconstruction {v['reconstruction']:.3f}")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Lens(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s tables of lens runs: every run's per-layer rows."""
    table = Experiment.results_table(runs)
    return {} if table is None else {"layers": table}
