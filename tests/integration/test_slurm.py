"""eas sweeps on a real single-node SLURM cluster with accounting, started on this machine by
``launchers/slurm/cluster.sh`` (once per session, ``conftest.py``). Every sweep runs the tiny random model in
its own submitit folder, store and outputs (EAS_STORE/EAS_OUTPUTS per test).

Needs root and the packages from ``launchers/slurm/install.sh``; skipped otherwise.
About 4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from eas.sweep import slurm
from tests.integration.local_slurm import MARKS

pytestmark = MARKS

# one CPU per job: two jobs at once on a 2-core machine
COMMON = ["hydra/launcher=slurm", "model=tiny_random", "resources.cpus_per_task=1", "resources.mem_gb=2",
          "hydra.launcher.poll_s=1", "progress=false"]


def eas(*overrides: str, env: dict | None = None, timeout: float = 300, background: bool = False):
    cmd = [sys.executable, "-m", "eas.cli", "-m", *overrides]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)


def eas_sweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``eas-sweep`` in a second process, as a user would run it from another shell."""
    return subprocess.run([sys.executable, "-m", "eas.sweep.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout)


def the_sweep_dir(outputs: str | None = None) -> Path:
    dirs = [p for p in Path(outputs or os.environ["EAS_OUTPUTS"]).glob("multirun/*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def manifest(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def cell_states(sweep_dir: Path) -> dict[str, tuple[str, str | None]]:
    """``{"layer=1 strength=4": (state, error)}`` from ``eas-sweep status --json``."""
    out = eas_sweep("status", "--json", str(sweep_dir))
    st = json.loads(out.stdout)
    return {" ".join(o for o in c["cell"] if o.startswith(("layer=", "strength="))): (c["state"], c["error"])
            for c in st["cells"]}


def store_files() -> dict[str, int]:
    """Every finished record in the store (cells, vectors, activations) and its mtime."""
    root = Path(os.environ["EAS_STORE"])
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def n_cell_records() -> int:
    return sum(1 for p in Path(os.environ["EAS_STORE"]).glob("cells/*/*.json"))


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def val_cells(sweep_dir: Path) -> set[tuple[int, float]]:
    df = pd.read_parquet(sweep_dir / "report" / "merged_results.parquet")
    val = df[(df["split"] == "val") & (df["method"] != "unsteered")]
    return {(int(r.layer), float(r.strength)) for r in val.itertuples()}


# unsteered train/val/test come first; more cell records than these means a steered cell landed
N_UNSTEERED = 3


def test_multirun_lands_one_merged_table_equal_to_the_local_launchers(slurm_cluster, tmp_path):
    grid = ["layer=1,2", "strength=1,4"]
    on_slurm = eas(*COMMON, *grid, background=True)
    local_env = {**os.environ, "EAS_OUTPUTS": str(tmp_path / "local"), "EAS_STORE": str(tmp_path / "local_store")}
    local = eas("model=tiny_random", "progress=false", *grid, env=local_env)
    out, _ = on_slurm.communicate(timeout=300)
    assert on_slurm.returncode == 0, out
    assert local.returncode == 0, local.stdout + local.stderr

    d = the_sweep_dir()
    jobs = manifest(d)["jobs"]
    assert len(jobs) == 4 and len({j["job_id"].split("_")[0] for j in jobs}) == 1  # one job array
    assert "4 cells: 4 done, 0 failed" in out
    assert json.loads((d / "sweep_status.json").read_text())["counts"]["done"] == 4
    assert val_cells(d) == {(1, 1.0), (1, 4.0), (2, 1.0), (2, 4.0)}

    def table(sweep_dir: Path) -> pd.DataFrame:
        df = pd.read_parquet(sweep_dir / "report" / "merged_results.parquet").drop(columns=["run_dir"], errors="ignore")
        return df.sort_values(["method", "layer", "strength", "split"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(table(d), table(the_sweep_dir(local_env["EAS_OUTPUTS"])))
    summary = (d / "report" / "summary_table.csv").read_text()
    assert summary == (the_sweep_dir(local_env["EAS_OUTPUTS"]) / "report" / "summary_table.csv").read_text()


def test_a_failing_cell_is_recorded_and_the_others_land(slurm_cluster):
    # two cells per job (one model load each), one job per array (MaxArraySize 1): two arrays
    r = eas(*COMMON, "layer=1,99", "strength=1,4", "hydra.launcher.cells_per_job=2",
            "hydra.launcher.max_array_size=1")
    assert r.returncode == 1, r.stdout + r.stderr  # the sweep is incomplete, but the launcher did not fail
    d = the_sweep_dir()
    jobs = manifest(d)["jobs"]
    assert [j["overrides"][-2:] for j in jobs] == [["layer=1", "strength=[1,4]"], ["layer=99", "strength=[1,4]"]]
    assert len({j["job_id"].split("_")[0] for j in jobs}) == 2

    states = cell_states(d)
    assert states["layer=1 strength=1"][0] == states["layer=1 strength=4"][0] == "done"
    for cell in ("layer=99 strength=1", "layer=99 strength=4"):
        state, error = states[cell]
        assert state == "failed" and "layer=99 is out of range" in error, (cell, state, error)
    rec = json.loads(next(d.glob("1-*/status.json")).read_text())
    assert rec["state"] == "failed" and "out of range" in rec["traceback"] and "Traceback" in rec["traceback"]
    assert val_cells(d) == {(1, 1.0), (1, 4.0)}  # the merged table holds the cells that landed
    assert "2 failed" in r.stdout and "eas-sweep resume" in r.stdout


def test_detach_status_and_resume_from_another_process_after_scancel(slurm_cluster):
    # three jobs of two cells, two at a time: the third waits in the queue
    r = eas(*COMMON, "layer=1,2,3", "strength=1,4", "hydra.launcher.cells_per_job=2",
            "hydra.launcher.detach=true", "hydra.launcher.array_parallelism=2", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "eas-sweep status" in r.stdout
    d = the_sweep_dir()
    _, second, third = (j["job_id"] for j in manifest(d)["jobs"])
    assert manifest(d)["report_job_id"]

    subprocess.run(["scancel", third], check=True)  # never started: missing
    wait_for(lambda: list(d.glob("1-*/status.json")), 120, "the second job to start")
    subprocess.run(["scancel", second], check=True)  # killed while it runs: failed

    waited = eas_sweep("status", "--wait", "--poll", "1", str(d))
    assert waited.returncode == 1, waited.stdout + waited.stderr
    states = cell_states(d)
    assert {states[f"layer=1 strength={s}"][0] for s in (1, 4)} == {"done"}, states
    assert {states[f"layer=2 strength={s}"][0] for s in (1, 4)} == {"failed"}, states
    assert "CANCELLED" in states["layer=2 strength=1"][1]
    assert {states[f"layer=3 strength={s}"][0] for s in (1, 4)} == {"missing"}, states
    assert (d / "report" / "summary_table.md").exists()  # the report job merged what landed
    before = store_files()  # layer 1's cells, and the unsteered scores and activations all jobs share

    resumed = eas_sweep("resume", "--wait", str(d))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(done, not resubmitted)" in resumed.stdout + resumed.stderr
    after = store_files()
    assert {p: after.get(p) for p in before} == before, "a finished record was recomputed"
    final = eas_sweep("status", str(d))
    assert final.returncode == 0 and "6 cells: 6 done, 0 failed" in final.stdout, final.stdout
    assert [len(j["submissions"]) for j in manifest(d)["jobs"]] == [1, 2, 2]
    assert val_cells(d) == {(L, s) for L in (1, 2, 3) for s in (1.0, 4.0)}


def test_a_preempted_job_is_requeued_and_resumes_from_the_store(slurm_cluster):
    strengths = ",".join(str(s) for s in range(1, 25))
    proc = eas(*COMMON, "layer=1", f"strength={strengths}", "hydra.launcher.cells_per_job=24",
               "cells_per_chunk=1", background=True)
    try:
        wait_for(lambda: list(Path(os.environ["EAS_OUTPUTS"]).glob("multirun/*/*/sweep.json"))
                 and manifest(the_sweep_dir())["jobs"][0]["job_id"], 120, "the submission")
        d = the_sweep_dir()
        job = manifest(d)["jobs"][0]["job_id"]
        wait_for(lambda: n_cell_records() > N_UNSTEERED, 180, "a steered cell in the store")
        before = store_files()
        # what SLURM sends before preemption (and before the time limit): submitit checkpoints
        # the job and requeues it
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        wait_for(lambda: (slurm.job_states([job]) or {}).get(job) in slurm.QUEUED, 60, "the requeue")
        # a requeued job may start again only after a delay (BeginTime): lift it
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    rec = json.loads(next(d.glob("0-*/status.json")).read_text())
    assert rec["state"] == "done" and rec["attempt"] == 1, rec  # the same job, second run
    after = store_files()
    assert {p: after.get(p) for p in before} == before, "a finished record was recomputed"
    assert len(manifest(d)["jobs"][0]["submissions"]) == 1  # requeued by SLURM, not resubmitted
    assert val_cells(d) == {(1, float(s)) for s in range(1, 25)}
