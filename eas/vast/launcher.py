"""The ``hydra/launcher=vast`` launcher: the sweep launcher (manifest, packing, resume) over
the Vast executor (``eas.vast.executor``) instead of SLURM.

Hydra instantiates launchers only from ``hydra_plugins``; the class is
``launchers/hydra_plugins/eas_vast``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

from eas.sweep.launcher import SweepLauncher
from eas.sweep.pack import PACK_KEYS


@dataclass
class VastSweepConf(BaseQueueConf):
    """What to rent and how to run on it (all under ``hydra.launcher``)."""

    _target_: str = "hydra_plugins.eas_vast.launcher.EasVastLauncher"
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
    pack_keys: list[str] = field(default_factory=lambda: list(PACK_KEYS))
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
    poll_s: float = 10.0
    timeout_min: int = 24 * 60
    server_url: str | None = None  # null: the SDK's default (or VAST_URL)
    label: str = "eas"
    detach: bool = False  # not supported: the launcher drives the instances




class VastSweepLauncher(SweepLauncher):
    """``SweepLauncher`` with the Vast executor; the Vast instances are destroyed on every way out."""

    _EXECUTOR = "vast"

    def __init__(self, **params: Any) -> None:
        poll = params.get("poll_s", 10.0)
        super().__init__(**params)
        self.params["poll_s"] = poll  # both: the sweep's wait loop and the executor's polling

    def _check_backend(self) -> None:
        import sys

        from eas.vast import api

        try:
            if self.sweep_opts.get("detach"):
                raise api.VastError("hydra/launcher=vast does not detach: the launcher drives the instances and "
                                    "destroys them; keep it running (e.g. in tmux)")
            api.client(self.params.get("server_url"))  # a key, and the SDK is installed
        except api.VastError as e:  # before anything is rented: a message, not a traceback
            print(f"eas: error: {e}", file=sys.stderr)
            sys.exit(2)

    def _max_array_size(self) -> int:
        return 10**9

    def _job_states(self, job_ids: list[str]) -> dict[str, str]:
        from eas.vast.records import job_states

        return job_states(self.params["submitit_folder"], job_ids)

    def _executor(self, **extra: Any):
        import submitit

        params = dict(self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()  # type: ignore[attr-defined]
        params.update(extra, pull_dirs=[str(sweep_dir)])
        executor = submitit.AutoExecutor(cluster="vast", folder=params.pop("submitit_folder"))
        base = set(BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(**{k if k in base else f"vast_{k}": v for k, v in params.items()
                                      if k not in ("_target_", "max_num_timeout") and v is not None})
        return executor

    def launch(self, job_overrides, initial_job_idx: int):
        from eas.vast.executor import teardown_all, wait_all

        try:
            out = super().launch(job_overrides, initial_job_idx)
            wait_all(600)  # the last pulls and the teardown, before the sweep's report
            return out
        except BaseException:
            teardown_all("the launcher stopped (error or Ctrl-C)")
            raise
