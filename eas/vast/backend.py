"""The sweep's Vast.ai backend (``hydra/launcher=vast``, ``backend: eas.vast.backend``): the
jobs on rented GPU instances (``eas.vast.executor``), destroyed on every way out of the launcher.

A job's state is the Vast executor's record of it (``eas.vast.records``); ``cancel``
destroys every instance the sweep created and did not destroy (what ``eas-vast destroy``
does). Needs the vastai SDK only to launch or cancel: ``eas-sweep status`` reads records.
This module implements ``eas.sweep.backend``'s protocol; eas.sweep finds it by its module
path (the preset names it), never by importing eas.vast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

from eas.sweep import records
from eas.sweep.backend import LAUNCHER_TARGET, Backend, BackendError, JobPhase, SweepFields

# the Vast executor's words (eas.vast.records) as phases; any other word is an ended job
_PHASES = {"PENDING": "pending", "RUNNING": "running", "CANCELLED": "cancelled", "UNKNOWN": "gone"}


@dataclass
class Conf(SweepFields, BaseQueueConf):
    """What to rent and how to run on it (all under ``hydra.launcher``)."""

    _target_: str = LAUNCHER_TARGET
    backend: str = "eas.vast.backend"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    # the offer: GPU model (Vast's gpu_name, e.g. "RTX 4090", "A100 SXM4"; null: any), count, price
    gpu_name: str | None = "RTX 4090"
    num_gpus: int = 1
    max_dph: float = 1.0  # $/h for the whole instance; with spot, the bid
    spot: bool = False  # true: interruptible (bid) instances; outbid -> stopped -> destroyed, cells resumable
    disk_gb: float = 40.0
    min_gpu_ram_gb: float | None = None
    extra_filters: dict[str, Any] | None = None  # more search_offers filters, e.g. {reliability: {gte: 0.98}}
    image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
    onstart: str | None = None
    # the sweep: instances rented at once, and cells per job (one model load per job)
    instances: int = 1
    cells_per_job: int = 9
    # on the instance
    setup: list[str] = field(default_factory=lambda: ["pip install -q -e ."])  # run in the code dir once
    python: str = "python"
    env: dict[str, str] = field(default_factory=dict)
    ssh_key: str | None = None  # private key; null: ssh's defaults/agent
    ssh_user: str = "root"
    # waiting
    start_timeout_s: float = 600.0  # an instance not running by then is destroyed
    ssh_timeout_s: float = 300.0
    max_attempts: int = 2  # offers tried per batch when an instance never starts
    timeout_min: int = 24 * 60
    server_url: str | None = None  # null: the SDK's default (or VAST_URL)
    label: str = "eas"


def _root(manifest: dict) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths.get_first_id_independent_folder(manifest["submitit_folder"])


class VastBackend(Backend):
    name = "Vast.ai"
    cluster = "vast"
    log_stream = "out"  # the runner writes the job's stdout and stderr to one log

    def check(self, params, opts):
        super().check(params, opts)
        from eas.vast import api

        try:
            api.client(params.get("server_url"))  # a key, and the SDK is installed
        except api.VastError as e:
            raise BackendError(str(e)) from None

    def executor(self, params, opts, sweep_dir, **extra):
        import submitit

        # what locates the store and outputs, and the hub token, reach the jobs on the instance
        forward = {k: os.environ[k] for k in (*records.ENV_KEYS, "HF_TOKEN") if k in os.environ}
        params = {**params, **extra, "poll_s": opts.get("poll_s", 10.0),  # also how often it polls instances
                  "pull_dirs": [str(Path(sweep_dir).resolve())],
                  "env": {**forward, **{str(k): str(v) for k, v in (params.get("env") or {}).items()}}}
        executor = submitit.AutoExecutor(cluster="vast", folder=params.pop("submitit_folder"))
        base = set(BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(**{k if k in base else f"vast_{k}": v for k, v in params.items()
                                      if k not in ("_target_", "max_num_timeout", "backend") and v is not None})
        return executor

    def run_launch(self, launch):
        from eas.vast.executor import teardown_all, wait_all

        try:
            out = launch()
            wait_all(600)  # the last pulls and the teardown, before the sweep's report
            return out
        except BaseException:
            teardown_all("the launcher stopped (error or Ctrl-C)")
            raise

    def job_states(self, manifest, job_ids):
        from eas.vast.records import job_states

        return {j: JobPhase(_PHASES.get(s, "ended"), s)
                for j, s in job_states(manifest["submitit_folder"], job_ids).items()}

    def cancel(self, manifest, job_ids):
        from eas.vast import api
        from eas.vast.executor import destroy_recorded

        try:
            return destroy_recorded(_root(manifest), None, "instance destroyed by eas-sweep cancel")
        except api.VastError as e:
            raise BackendError(str(e)) from None


BACKEND = VastBackend()
