"""The launch backend protocol: what the sweep launcher and ``eas-sweep`` ask of a place that runs jobs.

A backend submits arrays of jobs (through a submitit executor), tells the state of each
job it was given, states its limits (the largest array, whether a launch may detach) and
tears down what a sweep holds. ``eas.sweep.launcher``, ``eas.sweep.status`` and
``eas-sweep`` talk only to this protocol, never to a backend by name.

A launcher is one backend module plus one preset, ``conf/hydra/launcher/<preset>.yaml``,
whose ``backend`` field names the module: a short name is a module of
``eas.sweep.backends`` (``local``, ``slurm``), a dotted name a module anywhere on
``sys.path`` (``eas.vast.backend``), by ``eas.extensions``'s rule. The module defines
``BACKEND`` (a ``Backend``) and ``Conf`` (the structured config of ``hydra.launcher``,
registered as ``hydra/launcher=eas_<preset>`` by eas's Hydra plugin, the base the preset
extends). The manifest records the backend's name, so ``eas-sweep`` finds the backend of
a sweep dir from any shell. eas.sweep imports no backend outside its package: the rule
imports it by its path.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from eas import extensions
from eas.sweep.pack import PACK_KEYS

PACKAGE = "eas.sweep.backends"
# the rule for extension point "launcher"; a no-op once eas.extensions.PACKAGES names it
extensions.PACKAGES.setdefault("launcher", PACKAGE)

Phase = Literal["pending", "running", "ended", "cancelled", "gone"]
# pending: queued or requeued, not running; ended: ended by itself (completed, failed,
# timeout, out of memory, node failure); cancelled: cancelled (before it started, if the
# job wrote no record); gone: the backend does not know the job (purged, never existed)
LIVE_PHASES = ("pending", "running")


@dataclass(frozen=True)
class JobPhase:
    """A job's state as its backend tells it: the phase and the backend's own word for it."""

    phase: Phase
    word: str  # what the backend calls it (SLURM's TIMEOUT, Vast's NODE_FAIL): for messages

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES


class BackendError(RuntimeError):
    """A launch the backend cannot do as configured; the message says what to change."""


@dataclass
class SweepFields:
    """``hydra.launcher`` fields every eas launcher has (the sweep's own, not the backend's)."""

    # the backend module: a short name of eas.sweep.backends or a dotted module path
    backend: str = "local"
    # submit, record the manifest, and return without waiting (see eas-sweep status)
    detach: bool = False
    # cells run by one job (one model load): layer/strength grids packed as list overrides
    cells_per_job: int = 1
    pack_keys: list[str] = field(default_factory=lambda: list(PACK_KEYS))
    # tasks per job array; null: the backend's limit (SLURM: the cluster's MaxArraySize)
    max_array_size: int | None = None
    # seconds between two looks at the jobs while waiting
    poll_s: float = 10.0
    # detach: queue a job that writes the merged report once every cell has ended
    report_job: bool = True


SWEEP_KEYS = tuple(SweepFields.__dataclass_fields__)
LAUNCHER_TARGET = "hydra_plugins.eas_sweep.launcher.EasLauncher"
# the launcher presets (hydra/launcher=<name>); eas.cli's config tree
PRESETS = Path(__file__).resolve().parents[2] / "conf" / "hydra" / "launcher"


class Backend:
    """A place that runs a sweep's jobs. Subclasses set ``name``/``cluster`` and override what differs.

    The base class builds submitit's executor for ``cluster`` from ``hydra.launcher`` (as
    hydra-submitit-launcher does), so a backend over a submitit executor only says how to
    ask for its jobs' states.
    """

    name: ClassVar[str] = "local"  # how messages name it
    cluster: ClassVar[str] = "local"  # submitit's executor (submitit.AutoExecutor(cluster=...))
    init_keys: ClassVar[tuple[str, ...]] = ()  # hydra.launcher fields submitit takes at construction
    can_detach: ClassVar[bool] = False
    log_stream: ClassVar[str] = "err"  # the submitit log a failed job's traceback is in

    # -- launching ---------------------------------------------------------
    def check(self, params: dict, opts: dict) -> None:
        """Raise ``BackendError`` when nothing could be launched as configured (before anything is)."""
        if opts.get("detach") and not self.can_detach:
            raise BackendError(f"hydra.launcher.detach=true: {self.name} jobs end with the launcher; keep "
                               f"it running (e.g. in tmux) or use hydra/launcher=slurm")

    def max_array_size(self) -> int:
        """The most jobs one array may hold."""
        return 10**9

    def executor(self, params: dict, opts: dict, sweep_dir: Path, **extra: Any):
        """A submitit executor from ``hydra.launcher``: the backend's fields ``params`` (``extra``
        overrides some) and the sweep's own ``opts`` (``SweepFields``)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = {**params, **extra}
        folder = params.pop("submitit_folder")
        init = {f"{self.cluster}_{k}": params.pop(k) for k in self.init_keys if k in params}
        executor = submitit.AutoExecutor(cluster=self.cluster, folder=folder, **init)
        base = set(BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(**{k if k in base else f"{self.cluster}_{k}": v for k, v in params.items()
                                      if k not in ("_target_", *SWEEP_KEYS)})
        return executor

    def submit_report(self, params: dict, sweep_dir: Path, finalize, jobs: list) -> str | None:
        """Queue ``finalize(str(sweep_dir), True)`` to run once the submitit ``jobs`` have ended
        (a detached sweep); returns its job id, or None where the backend cannot."""
        return None

    def run_launch(self, launch):
        """Run ``launch()`` (submit and, unless detached, wait): a backend that holds resources
        while its jobs run releases them on every way out."""
        return launch()

    # -- job states --------------------------------------------------------
    def job_states(self, manifest: dict, job_ids: list[str]) -> dict[str, JobPhase] | None:
        """Each job's state, from any process; None when the backend does not answer (then the
        jobs' own records are believed)."""
        return None

    def waiting_states(self, manifest: dict, jobs: list) -> dict[str, JobPhase] | None:
        """The states of submitit ``jobs`` this process submitted (the launcher's wait)."""
        return self.job_states(manifest, [j.job_id for j in jobs])

    def log_path(self, manifest: dict, job_id: str) -> str | None:
        """Where the job's output is (for error messages)."""
        folder = manifest.get("submitit_folder")
        if not folder or not job_id:
            return None
        return f"{folder.replace('%j', job_id)}/{job_id}_0_log.{self.log_stream}"

    # -- teardown ----------------------------------------------------------
    def cancel(self, manifest: dict, job_ids: list[str]) -> list[str]:
        """Stop the given jobs and release what they hold; returns one line per action taken."""
        return []


def builtin() -> list[str]:
    """The short names of ``eas.sweep.backends``'s modules."""
    pkg = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


@cache
def presets() -> dict[str, str]:
    """``{preset: backend}`` for every ``conf/hydra/launcher/<preset>.yaml`` that names a backend."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted(PRESETS.glob("*.yaml")):
        name = OmegaConf.load(path).get("backend")
        if name:
            out[path.stem] = str(name)
    return out


def load_module(name: str, field: str = "hydra.launcher.backend"):
    """The module of backend ``name`` (a short name of ``eas.sweep.backends`` or a dotted path)."""
    return extensions.load("launcher", name, field, needs=("BACKEND", "Conf"))


def load(name: str, field: str = "hydra.launcher.backend") -> Backend:
    """The backend ``name`` names."""
    return load_module(name, field).BACKEND


def of_manifest(manifest: dict | None) -> Backend:
    """The backend that ran a sweep: the one its manifest names; a sweep without one ran locally."""
    name = (manifest or {}).get("backend")
    if manifest is not None and not name:
        # manifests of eas before backends name the preset (vast) or nothing (SLURM wrote those)
        launcher = manifest.get("launcher") or "slurm"
        name = presets().get(launcher, launcher)
    return load(name or "local", f"{(manifest or {}).get('sweep_dir', 'the sweep')}/sweep.json: backend")
