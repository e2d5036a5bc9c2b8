"""The ``eas`` console script: a Hydra app that composes a job and runs it.

Bad config values, missing data files and unknown architectures end the job
with exit status 2 and one line naming the field, the value and what is allowed,
before the model is loaded wherever that can be known.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from eas import config as config_mod

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("eas")


class UserError(Exception):
    """An error the user fixes in their command or files; printed without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from eas.contrasts import TooFewExamples
    from eas.data.schema import DataError
    from eas.jobs.steer import NonFiniteScores
    from eas.models import ModelError
    from eas.store import StoreError

    return (config_mod.ConfigError, DataError, ModelError, TooFewExamples, StoreError, NonFiniteScores)


def run_job(cfg: DictConfig, out_dir: Path) -> dict:
    """Validate, then dispatch to ``eas.jobs.<experiment>.run``."""
    config_mod.validate(cfg)
    # a data problem should surface before minutes of model loading
    from eas.data import load_benchmark, split_items

    bench = load_benchmark(cfg.benchmark, seed=cfg.seed)
    split_items(list(bench.items), cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion,
                seed=cfg.seed, max_sample_size=cfg.max_sample_size)
    import importlib

    job = importlib.import_module(f"eas.jobs.{cfg.experiment.name}")
    return job.run(cfg, out_dir)


def _task(cfg: DictConfig) -> dict | None:
    from eas.sweep import job_record

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    # status.json: running -> done | failed (traceback); in a multirun a failure is recorded, not raised
    with job_record(out_dir) as record:
        try:
            summary = run_job(cfg, out_dir)
        except _user_errors() as e:
            print(f"eas: error: {e}", file=sys.stderr)
            if HydraConfig.get().mode.name == "MULTIRUN":
                raise UserError(str(e)) from None
            sys.exit(2)
        record.done(summary)
        if cfg.experiment.name == "steer":
            _print_summary(summary, out_dir)
    if cfg.experiment.name == "steer" and summary["failed_cells"] and summary["best"] is None:
        # no cell landed: nothing to report, so a script must not read it as a result (in a
        # multirun the job is recorded failed and the end-of-sweep callback sets the exit status)
        tb = summary["failed_cells"][0]["error"].strip().splitlines()
        print(f"eas: error: every cell failed ({len(summary['failed_cells'])}); the first: "
              f"{tb[-1] if tb else '?'} (tracebacks in {out_dir / 'summary.json'})", file=sys.stderr)
        if HydraConfig.get().mode.name != "MULTIRUN":
            sys.exit(1)
    return record.result


def _print_summary(s: dict, out_dir: Path) -> None:
    u = s["unsteered"]
    lines = [f"eas: {s['model']} on {s['benchmark']} ({s['method']} @ {s['steer_target']})",
             f"  unsteered accuracy: train {u['train']:.3f}  val {u['val']:.3f}  test {u['test']:.3f}"]
    if s["best"]:
        b, t = s["best"], s["test"]
        lines.append(f"  best val cell: {b['cell']} (val {b['val_accuracy']:.3f})")
        if t:
            lines.append(f"  test: {t['accuracy']:.3f} vs unsteered {t['unsteered_accuracy']:.3f} "
                         f"(delta {t['delta']:+.3f}; wrong->right {t['wrong_to_right']}, "
                         f"right->wrong {t['right_to_wrong']}, n={t['n']})")
    if s["failed_cells"]:
        lines.append(f"  FAILED cells: {len(s['failed_cells'])} (see summary.json)")
    lines.append(f"  results: {out_dir}")
    print("\n".join(lines))


def main() -> None:
    config_mod.register()
    if not CONF_DIR.is_dir():
        print(f"eas: error: config tree not found at {CONF_DIR}; install eas from its repository "
              f"with `pip install -e .`", file=sys.stderr)
        sys.exit(2)
    OmegaConf.register_new_resolver("eas_n", lambda x: len(x), replace=True)
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)
    app()


if __name__ == "__main__":
    main()
