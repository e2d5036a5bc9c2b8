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

CONF_DIR = config_mod.CONF_DIR
log = logging.getLogger("eas")


class UserError(Exception):
    """An error the user fixes in their command or files; printed without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from eas.data.schema import DataError
    from eas.experiments.base import NonFiniteScores
    from eas.extensions import ExtensionError
    from eas.methods.base import TooFewExamples, VectorError
    from eas.models import ModelError
    from eas.store import StoreError

    return (config_mod.ConfigError, DataError, ModelError, TooFewExamples, VectorError, StoreError,
            NonFiniteScores, ExtensionError)


def run_job(cfg: DictConfig, out_dir: Path) -> dict:
    """Check the config, then run the experiment kind's ``run`` (it prints its headline)."""
    from eas.experiments.base import prepare

    return prepare(cfg).run(cfg, out_dir)


def _task(cfg: DictConfig) -> dict | None:
    from eas.sweep import job_record

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    # status.json: running -> done | failed (traceback); in a multirun a failure is recorded, not raised
    with job_record(out_dir) as record:
        try:
            summary = run_job(cfg, out_dir)
        except _user_errors() as e:
            print(f"eas: error: {e}", file=sys.stderr)
            if multirun:
                raise UserError(str(e)) from None
            sys.exit(2)
        record.done(summary)
    if summary.get("error"):
        # e.g. no cell landed: nothing to report, so a script must not read it as a result (in a
        # multirun the job is recorded failed and the end-of-sweep callback sets the exit status)
        print(f"eas: error: {summary['error']}", file=sys.stderr)
        if not multirun:
            sys.exit(1)
    return record.result


def main() -> None:
    config_mod.register()
    if not CONF_DIR.is_dir():
        print(f"eas: error: config tree not found at {CONF_DIR}; install eas from its repository "
              f"with `pip install -e .`", file=sys.stderr)
        sys.exit(2)
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)
    app()


if __name__ == "__main__":
    main()
