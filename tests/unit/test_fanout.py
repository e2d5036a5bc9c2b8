"""Fan-out of a fitness over submitit's local executor (real worker subprocesses): the file
queue keeps the order, a failing or killed worker fails the call with its job id and log, a
worker that never starts times out, and experiment=cmaes with 2 workers runs the same search
as in-process and resumes after a worker is killed. About 2 minutes on two CPU cores."""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eas import config as config_mod
from eas import store
from eas.core import cmaes
from eas.experiments import cmaes as cmaes_job
from eas.fanout import Fanout, WorkerError
from tests.unit.test_cmaes import _cfg, _cfg_plain, _history

LOCAL = {"cpus_per_task": 1, "timeout_min": 10}


# -- worker fitnesses (module-level: the workers unpickle them by reference) ----------------
def _weighted_sum(weights: torch.Tensor, fail_on: float | None, deltas: torch.Tensor) -> torch.Tensor:
    if fail_on is not None and bool((deltas == fail_on).any()):
        raise ValueError(f"a delta holds {fail_on}")
    return deltas @ weights


def _build(d: int, fail_on: float | None = None, sleep_s: float = 0.0):
    time.sleep(sleep_s)
    return partial(_weighted_sum, torch.arange(d, dtype=torch.float32), fail_on)


def _gone(pid: int) -> bool:
    """The process has ended (gone, or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float = 180) -> None:  # a ceiling: a loaded machine is slow, not wrong
    end = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < end, f"worker processes {pids} still alive after {timeout}s"
        time.sleep(0.1)


def _wait_done(jobs: list, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not all(j.done() for j in jobs):
        assert time.monotonic() < end, f"jobs {[j.job_id for j in jobs]} still running after {timeout}s"
        time.sleep(0.1)


def _pids(folder: Path) -> list[int]:
    return [store.read_json(p)["pid"] for p in sorted(folder.glob("worker_*/ready"))]


# -- the queue --------------------------------------------------------------------------------
def test_fanout_scores_chunks_in_order_and_stops_its_workers(tmp_path):
    d = 8
    ref = _build(d)
    deltas = torch.randn(7, d, generator=torch.Generator().manual_seed(0))
    with Fanout(tmp_path / "fan", 2, partial(_build, d), "local", LOCAL, poll_s=0.02) as fan:
        assert fan.start_seconds > 0 and len(fan.jobs) == 2
        torch.testing.assert_close(fan(deltas), ref(deltas), atol=0, rtol=0)  # chunks of 4 and 3
        torch.testing.assert_close(fan(deltas[:1]), ref(deltas[:1]), atol=0, rtol=0)  # worker 1 rests
        pids = _pids(tmp_path / "fan")
    assert all(j.done() for j in fan.jobs)
    served = [j.result() for j in fan.jobs]  # the workers returned on `stop`, not cancelled
    assert [s["calls"] for s in served] == [2, 1]
    _wait_gone(pids)
    assert not list((tmp_path / "fan").glob("worker_*/*.safetensors"))  # every task and result consumed


def test_a_worker_that_raises_fails_the_call_with_its_trace(tmp_path):
    deltas = torch.zeros(4, 3)
    deltas[3, 0] = 7.0  # in worker 1's chunk
    fan = Fanout(tmp_path / "fan", 2, partial(_build, 3, 7.0), "local", LOCAL, poll_s=0.02)
    with pytest.raises(WorkerError) as err, fan:
        fan(deltas)
    msg = str(err.value)
    assert "fan-out worker 1" in msg and f"submitit job {fan.jobs[1].job_id}" in msg
    assert "ValueError: a delta holds 7.0" in msg and str(fan.jobs[1].paths.stderr) in msg
    assert "re-run the same command to resume" in msg
    _wait_done(fan.jobs)  # worker 0 was stopped


def test_workers_that_do_not_start_in_time_are_cancelled(tmp_path):
    fan = Fanout(tmp_path / "fan", 2, partial(_build, 3, None, 60.0), "local", LOCAL, poll_s=0.05,
                 start_timeout_s=2)
    with pytest.raises(WorkerError, match=r"not serving after 2s .*experiment.fanout.start_timeout_s"), fan:
        pass
    _wait_done(fan.jobs)  # cancelled


def test_fanout_config_is_validated():
    for override, match in (("experiment.fanout.workers=-1", "experiment.fanout.workers=-1"),
                            ("experiment.fanout.cluster=debug", "experiment.fanout.cluster='debug'"),
                            ("experiment.fanout.poll_s=0", "experiment.fanout.poll_s=0")):
        with pytest.raises(config_mod.ConfigError, match=match):
            _cfg_plain(["experiment=cmaes", override])


# -- experiment=cmaes on two local workers ------------------------------------------------
SMALL = ["experiment.popsize=4", "experiment.generations=3", "resources.cpus_per_task=1",
         "experiment.fanout.poll_s=0.02"]
FAN = ["experiment.fanout.workers=2", "experiment.fanout.cluster=local"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The reference: the same search scored in-process (workers=0)."""
    root = tmp_path_factory.mktemp("ref")
    summary = cmaes_job.run(_cfg(root, "ref", *SMALL), root / "run")
    return summary, root / "run"


def _close_to(run_dir: Path, ref_dir: Path) -> None:
    pd.testing.assert_frame_equal(_history(run_dir), _history(ref_dir), check_exact=False, rtol=1e-5, atol=1e-6)
    a = store.read_tensors(run_dir / "vectors/refined_residual_L1.safetensors")["vector"]
    b = store.read_tensors(ref_dir / "vectors/refined_residual_L1.safetensors")["vector"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cmaes_on_local_workers_runs_the_in_process_search(tmp_path, in_process):
    ref, ref_dir = in_process
    s = cmaes_job.run(_cfg(tmp_path, "fan", *SMALL, *FAN), tmp_path / "run")
    assert s["fanout_workers"] == 2 and s["fanout_cluster"] == "local" and s["fanout_start_seconds"] > 0
    assert ref["fanout_workers"] == 0 and ref["fanout_start_seconds"] is None
    assert s["generations"] == ref["generations"] == 3
    _close_to(tmp_path / "run", ref_dir)
    for split in ("val", "test"):
        assert s["refined"][split]["accuracy"] == ref["refined"][split]["accuracy"]
        assert s["refined"][split]["fitness"] == pytest.approx(ref["refined"][split]["fitness"], abs=1e-6)
    fan = tmp_path / "run" / "fanout"
    assert (fan / "config.yaml").exists() and (fan / "stop").exists()
    _wait_gone(_pids(fan))


def test_a_killed_worker_fails_the_job_and_a_rerun_resumes(tmp_path, in_process, monkeypatch):
    _, ref_dir = in_process
    cfg = _cfg(tmp_path, "fan", *SMALL, *FAN)
    real_step = cmaes.Refiner.step
    killed = {}

    def step_then_kill(self, fitness):
        if self.generation == 2:  # two generations checkpointed: SIGKILL worker 0, then go on
            killed["pid"] = store.read_json(tmp_path / "run1" / "fanout" / "worker_0" / "ready")["pid"]
            os.kill(killed["pid"], signal.SIGKILL)
        return real_step(self, fitness)

    monkeypatch.setattr(cmaes.Refiner, "step", step_then_kill)
    with pytest.raises(WorkerError, match=r"fan-out worker 0 \(submitit job \d+, state \w+\) ended without a result"
                       ) as err:
        cmaes_job.run(cfg, tmp_path / "run1")
    assert str(tmp_path / "run1" / "fanout" / "submitit") in str(err.value)
    assert "re-run the same command to resume" in str(err.value)
    _wait_gone(_pids(tmp_path / "run1" / "fanout"))  # the other worker was stopped too
    assert not (tmp_path / "run1" / "summary.json").exists()

    monkeypatch.setattr(cmaes.Refiner, "step", real_step)
    s = cmaes_job.run(cfg, tmp_path / "run2")
    assert s["resumed_from"] == 2 and s["generations"] == 3
    _close_to(tmp_path / "run2", ref_dir)
    hist = pd.read_parquet(tmp_path / "run2" / "cmaes_history.parquet")
    assert np.all(np.diff(hist["best_so_far"]) >= 0)
