"""experiment=cmaes fanned out over a SLURM job array on a real single-node cluster
(``launchers/slurm/cluster.sh``, shared with test_slurm.py): two workers, the tiny random
model, the same search as in-process; a worker cancelled with scancel fails the run with its
job id and log, and the re-run resumes. The coordinator runs in the test process, as it would
on a login node: the node's two CPUs go to the two workers.

Needs root and the packages from ``launchers/slurm/install.sh``; skipped otherwise.
About two minutes on 2 cores (plus the cluster's start).
"""

from __future__ import annotations

import subprocess
import time

import pandas as pd
import pytest
import torch

from eas import store
from eas.core import cmaes
from eas.experiments import cmaes as cmaes_job
from eas.fanout import WorkerError
from eas.sweep import slurm
from tests.integration.local_slurm import MARKS
from tests.unit.test_cmaes import _cfg, _history

pytestmark = MARKS

SMALL = ["experiment.popsize=4", "experiment.generations=3", "resources.cpus_per_task=1", "resources.mem_gb=2",
         "resources.timeout_min=10", "experiment.fanout.poll_s=0.05", "experiment.fanout.start_timeout_s=240"]


def test_cmaes_on_a_slurm_array_runs_the_in_process_search(slurm_cluster, tmp_path):
    ref = cmaes_job.run(_cfg(tmp_path, "ref", *SMALL), tmp_path / "ref_run")
    cfg = _cfg(tmp_path, "fan", *SMALL, "experiment.fanout.workers=2", "experiment.fanout.cluster=slurm")
    s = cmaes_job.run(cfg, tmp_path / "run")

    assert s["fanout_workers"] == 2 and s["fanout_cluster"] == "slurm" and s["generations"] == ref["generations"]
    pd.testing.assert_frame_equal(_history(tmp_path / "run"), _history(tmp_path / "ref_run"), check_exact=False,
                                  rtol=1e-5, atol=1e-6)
    a, b = (store.read_tensors(d / "vectors/refined_residual_L1.safetensors")["vector"]
            for d in (tmp_path / "run", tmp_path / "ref_run"))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    # one array of two tasks, both ended on `stop` (COMPLETED), each serving from its queue
    logs = sorted((tmp_path / "run" / "fanout" / "submitit").glob("*_log.err"))
    ids = sorted(p.name.split("_log")[0].rsplit("_", 1)[0] for p in logs)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, ids
    end = time.monotonic() + 60  # a task's result is written just before its process exits and SLURM sees it end
    while (states := slurm.job_states(ids)) and any(slurm.is_live(st) for st in states.values()):
        assert time.monotonic() < end, f"array tasks still live 60s after the run: {states}"
        time.sleep(0.5)
    assert states is not None and set(states.values()) <= {"COMPLETED", "COMPLETING"}, states
    for p in logs:
        assert "stop after" in p.read_text(), p.read_text()[-2000:]


def test_a_cancelled_worker_fails_the_job_and_a_rerun_resumes(slurm_cluster, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "fan", *SMALL, "experiment.fanout.workers=2", "experiment.fanout.cluster=slurm")
    real_step = cmaes.Refiner.step
    cancelled = {}

    def step_then_scancel(self, fitness):
        if self.generation == 2:  # two generations checkpointed: cancel worker 1's array task
            ready = store.read_json(tmp_path / "run1" / "fanout" / "worker_1" / "ready")
            cancelled["job_id"] = ready["job_id"]
            subprocess.run(["scancel", ready["job_id"]], check=True, timeout=30)
            end = time.monotonic() + 60  # submitit's task ignores SIGTERM: SLURM kills it after KillWait
            while slurm.is_live((slurm.job_states([ready["job_id"]]) or {}).get(ready["job_id"], "RUNNING")):
                assert time.monotonic() < end, f"job {ready['job_id']} still live 60s after scancel"
                time.sleep(0.2)
        return real_step(self, fitness)

    monkeypatch.setattr(cmaes.Refiner, "step", step_then_scancel)
    with pytest.raises(WorkerError) as err:
        cmaes_job.run(cfg, tmp_path / "run1")
    msg = str(err.value)
    assert f"fan-out worker 1 (submitit job {cancelled['job_id']}, state CANCELLED" in msg, msg
    assert str(tmp_path / "run1" / "fanout" / "submitit" / f"{cancelled['job_id']}_0_log.err") in msg, msg

    monkeypatch.setattr(cmaes.Refiner, "step", real_step)
    s = cmaes_job.run(cfg, tmp_path / "run2")
    assert s["resumed_from"] == 2 and s["generations"] == 3 and s["fanout_cluster"] == "slurm"
