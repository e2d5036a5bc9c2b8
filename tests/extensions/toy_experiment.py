"""A toy experiment kind outside eas: the unsteered accuracy per split and the norm of the
method's vector at every layer, written as a table. One module plus one yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import MISSING

from eas import store
from eas.config import ConfigError
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment


@dataclass
class Config(BaseConfig):
    norm_ord: float = MISSING  # the vector norm's order (2 = Euclidean)


def validate(cfg) -> None:
    if cfg.experiment.norm_ord <= 0:
        raise ConfigError(f"experiment.norm_ord={cfg.experiment.norm_ord}: must be > 0")


class Norms(Experiment):
    def run(self) -> dict:
        self.load()
        base = self.unsteered()
        vecs = self.vectors(base["train"])
        order = float(self.x.norm_ord)
        rows = [{**self.meta(), "method": self.method, "layer": L,
                 "norm": float(v.norm(p=order)), "unsteered_val": base["val"].accuracy} for L, v in vecs.items()]
        store.write_parquet(self.out / "norms.parquet", pd.DataFrame(rows))
        summary = {**self.meta(), "norms": {str(r["layer"]): r["norm"] for r in rows},
                   "unsteered": {k: v.accuracy for k, v in base.items()}}
        return self.finish(summary, [f"toy: {self.method} vector norms {summary['norms']}"])


def run(cfg, out_dir: Path) -> dict:
    return Norms(cfg, out_dir).run()
