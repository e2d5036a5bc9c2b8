"""eas.sweep without a cluster: packing cells into jobs, SLURM output parsing, the backend
rule, cell states, job status records and the eas-sweep CLI on a synthetic sweep dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eas import extensions
from eas.sweep import backend, records, slurm
from eas.sweep import cli as sweep_cli
from eas.sweep.backends import slurm as slurm_backend
from eas.sweep.pack import pack
from eas.sweep.status import resolve_job, sweep_status

CELLS = [[f"layer={L}", f"strength={s}", "model=tiny_random"] for L in (1, 2, 3) for s in (1, 4)]


# -- pack -----------------------------------------------------------------
def test_pack_one_cell_per_job_keeps_the_overrides():
    jobs = pack(CELLS, 1)
    assert [j.overrides for j in jobs] == CELLS
    assert [j.cells for j in jobs] == [[c] for c in CELLS]


@pytest.mark.parametrize("per_job,expected", [
    (2, ["layer=1 strength=[1,4]", "layer=2 strength=[1,4]", "layer=3 strength=[1,4]"]),
    (4, ["layer=[1,2] strength=[1,4]", "layer=3 strength=[1,4]"]),
    (6, ["layer=[1,2,3] strength=[1,4]"]),
    (100, ["layer=[1,2,3] strength=[1,4]"]),
])
def test_pack_cuts_the_grid_into_blocks(per_job, expected):
    jobs = pack(CELLS, per_job)
    assert [" ".join(o for o in j.overrides if not o.startswith("model=")) for j in jobs] == expected
    assert all(j.overrides[0] == "model=tiny_random" for j in jobs)
    # every cell is covered exactly once, by its original override list
    covered = [c for j in jobs for c in j.cells]
    assert sorted(map(tuple, covered)) == sorted(map(tuple, CELLS))
    assert all(len(j.cells) <= per_job for j in jobs)


def test_pack_splits_one_axis_when_a_row_does_not_fit():
    cells = [["layer=1", f"strength={s}"] for s in (1, 2, 3, 4, 5)]
    assert [j.overrides for j in pack(cells, 2)] == [
        ["layer=1", "strength=[1,2]"], ["layer=1", "strength=[3,4]"], ["layer=1", "strength=5"]]


def test_pack_keeps_other_overrides_apart_and_leaves_non_grids_alone():
    cells = [[f"benchmark={b}", f"layer={L}"] for b in ("a", "b") for L in (1, 2)]
    assert [j.overrides for j in pack(cells, 10)] == [["benchmark=a", "layer=[1,2]"],
                                                      ["benchmark=b", "layer=[1,2]"]]
    lists = [["layer=[1,2]", "strength=1"], ["layer=[3,4]", "strength=1"]]  # already lists
    assert [j.overrides for j in pack(lists, 4)] == lists
    ragged = [["layer=1", "strength=1"], ["layer=2", "strength=4"]]  # not a full grid
    assert [j.overrides for j in pack(ragged, 4)] == ragged


# -- slurm output parsing ---------------------------------------------------
def test_parse_squeue_and_sacct_lines():
    text = "12_0|COMPLETED\n12_[1-3,7%2]|PENDING\n12.batch|COMPLETED\n13|CANCELLED by 0\n"
    assert slurm._parse(text) == {"12_0": "COMPLETED", "12_1": "PENDING", "12_2": "PENDING",
                                  "12_3": "PENDING", "12_7": "PENDING", "13": "CANCELLED"}
    assert slurm.is_live("PENDING") and slurm.is_live("REQUEUED") and not slurm.is_live("TIMEOUT")


def test_job_states_without_slurm_is_none(monkeypatch):
    monkeypatch.setattr(slurm, "_run", lambda cmd, timeout=30: None)
    assert slurm.job_states(["12_0"]) is None
    assert slurm.job_states([]) == {}
    assert slurm.max_array_size() == 1001


def test_job_states_trusts_squeue_for_live_jobs(monkeypatch):
    answers = {"sacct": "12_0|COMPLETED\n12_1|PENDING\n", "squeue": "12_1|RUNNING\n"}
    monkeypatch.setattr(slurm, "_run", lambda cmd, timeout=30: answers[cmd[0]])
    assert slurm.job_states(["12_0", "12_1", "12_2"]) == {"12_0": "COMPLETED", "12_1": "RUNNING",
                                                          "12_2": "UNKNOWN"}


# -- cell states ------------------------------------------------------------
JOB = {"num": 0, "overrides": ["layer=1", "strength=1"], "cells": [["layer=1", "strength=1"]],
       "job_id": "7_0"}


@pytest.mark.parametrize("rec_state,rec_id,slurm_state,expected", [
    ("done", "7_0", "COMPLETED", "done"),
    ("failed", "7_0", "COMPLETED", "failed"),  # jobs that raise still end COMPLETED
    ("running", "7_0", "RUNNING", "running"),
    ("running", "7_0", "PENDING", "pending"),  # requeued after preemption
    ("interrupted", "7_0", "REQUEUED", "pending"),
    ("running", "7_0", "CANCELLED", "failed"),  # scancel, timeout, OOM: no record says so
    ("running", "7_0", "TIMEOUT", "failed"),
    ("running", "7_0", None, "running"),  # SLURM does not answer: trust the record
    (None, None, "PENDING", "pending"),
    (None, None, "RUNNING", "running"),
    (None, None, "CANCELLED", "missing"),  # cancelled before it started
    (None, None, "FAILED", "failed"),
    (None, None, "UNKNOWN", "missing"),
    (None, None, None, "unknown"),
    ("done", "6_0", "PENDING", "pending"),  # a record from the previous submission is stale
    ("failed", "6_0", "CANCELLED", "missing"),
])
def test_resolve_job(rec_state, rec_id, slurm_state, expected):
    rec = None if rec_state is None else {"state": rec_state, "slurm_job_id": rec_id, "error": "boom"}
    st = resolve_job(JOB, rec, None if slurm_state is None else slurm_backend.phase(slurm_state))
    assert st.state == expected
    if expected == "failed":
        assert st.error


def test_resolve_job_without_scheduler_and_one_task_arrays():
    local = {"num": 3, "overrides": ["layer=1"], "job_id": None}
    assert resolve_job(local, None, None).state == "missing"
    assert resolve_job(local, {"state": "done"}, None).state == "done"
    one = {**JOB, "job_id": "9"}  # a one-task array is 9 to sbatch and 9_0 inside the job
    completed = slurm_backend.phase("COMPLETED")
    assert resolve_job(one, {"state": "done", "slurm_job_id": "9_0"}, completed).state == "done"
    old = {"num": 0, "overrides": ["layer=1"], "slurm_job_id": "9"}  # a manifest of eas before backends
    assert resolve_job(old, {"state": "done", "slurm_job_id": "9_0"}, completed).state == "done"


def _sweep(tmp_path: Path, jobs: list[dict], recs: dict[int, dict]) -> Path:
    d = tmp_path / "sweep"
    d.mkdir()
    (d / records.MANIFEST).write_text(json.dumps({"jobs": jobs, "command": {
        "cwd": str(tmp_path), "hydra_overrides": ["hydra/launcher=slurm"], "task_overrides": ["layer=1,2"],
        "env": {}}}))
    for num, rec in recs.items():
        jd = d / f"{num}-job"
        jd.mkdir()
        (jd / records.STATUS).write_text(json.dumps({"num": num, "job_dir": str(jd), **rec}))
    return d


def test_sweep_status_lists_every_cell_of_a_packed_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "available", lambda: False)
    cells = [["layer=1", "strength=1"], ["layer=1", "strength=4"]]
    jobs = [{"num": 0, "overrides": ["layer=1", "strength=[1,4]"], "cells": cells, "job_id": "5_0"},
            {"num": 1, "overrides": ["layer=2", "strength=1"], "cells": [["layer=2", "strength=1"]],
             "job_id": None}]
    d = _sweep(tmp_path, jobs, {0: {"state": "failed", "slurm_job_id": "5_0", "error": "1 cell(s) failed",
                                    "failed_cells": ["pasf/L1_s4"]}})
    st = sweep_status(d)
    assert [(c.cell[-1], c.state) for c in st.cells] == [("strength=1", "done"), ("strength=4", "failed"),
                                                         ("strength=1", "missing")]
    assert st.counts() == "3 cells: 1 done, 1 failed, 1 missing"
    assert not st.complete and not st.live
    assert "strength=4" in st.table() and "1 cell(s) failed" in st.table()


def test_status_cli_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(slurm, "available", lambda: False)
    d = _sweep(tmp_path, [{**JOB, "job_id": None}], {0: {"state": "done"}})
    assert sweep_cli.main(["status", str(d)]) == 0
    assert "1 cells: 1 done" in capsys.readouterr().out
    assert sweep_cli.main(["status", "--json", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["done"] == 1
    assert sweep_cli.main(["status", str(tmp_path / "nope")]) == 2


def test_resume_takes_hydra_overrides_only(tmp_path, capsys):
    d = _sweep(tmp_path, [JOB], {})
    assert sweep_cli.main(["resume", str(d), "layer=3"]) == 2
    assert "hydra.* overrides only" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    assert sweep_cli.main(["resume", str(plain)]) == 2
    assert "only sweeps launched with eas's launcher (hydra/launcher=local|slurm|vast)" in capsys.readouterr().err


# -- job status records -------------------------------------------------------
def test_job_record_done_and_partial_failure(tmp_path):
    with records.job_record(tmp_path, multirun=True) as rec:
        rec.done({"failed_cells": []})
    assert records.read_json(tmp_path / records.STATUS)["state"] == "done"
    with records.job_record(tmp_path, multirun=True) as rec:
        rec.done({"failed_cells": [{"cell": "pasf/L1_s4", "error": "Traceback...\nRuntimeError: nan"}]})
    r = records.read_json(tmp_path / records.STATUS)
    assert r["state"] == "failed" and r["failed_cells"] == ["pasf/L1_s4"] and "RuntimeError: nan" in r["error"]


def test_job_record_swallows_errors_in_a_multirun_only(tmp_path):
    with records.job_record(tmp_path, multirun=True) as rec:
        raise ValueError("layer out of range")
    r = records.read_json(tmp_path / records.STATUS)
    assert rec.failed and rec.result["state"] == "failed"
    assert r["state"] == "failed" and r["error"] == "ValueError: layer out of range"
    assert "Traceback" in r["traceback"] and "layer out of range" in r["traceback"]
    with pytest.raises(ValueError), records.job_record(tmp_path, multirun=False):
        raise ValueError("again")
    assert records.read_json(tmp_path / records.STATUS)["error"] == "ValueError: again"


def test_job_record_exit_paths(tmp_path):
    with pytest.raises(SystemExit), records.job_record(tmp_path, multirun=True):
        try:
            raise KeyError("bad config")
        except KeyError:
            raise SystemExit(2)  # the CLI's exit after a user error
    assert records.read_json(tmp_path / records.STATUS)["error"] == "KeyError: 'bad config'"
    with pytest.raises(SystemExit), records.job_record(tmp_path, multirun=True):
        raise SystemExit(-1)  # submitit, after requeueing a preempted job: never swallowed
    assert records.read_json(tmp_path / records.STATUS)["state"] == "interrupted"


# -- the backend rule --------------------------------------------------------
def test_a_backend_is_a_module_chosen_by_name():
    assert backend.builtin() == ["local", "slurm"]
    assert backend.presets() == {"local": "local", "slurm": "slurm", "vast": "eas.vast.backend"}
    assert backend.load("slurm") is slurm_backend.BACKEND
    assert backend.load("eas.sweep.backends.local").name == "local"  # a dotted path: any module on sys.path
    with pytest.raises(extensions.ExtensionError, match=r"hydra.launcher.backend='sge': no module .*choose one of local, slurm or give a dotted"):
        backend.load("sge")
    # manifests of eas before backends name no backend: SLURM wrote them
    assert backend.of_manifest({"jobs": []}) is slurm_backend.BACKEND
    assert backend.of_manifest({"launcher": "vast"}).name == "Vast.ai"
    assert backend.of_manifest(None).name == "local"


def _vast_sweep(tmp_path: Path, words: dict[str, str]) -> Path:
    """A Vast sweep dir: the manifest names the backend, the executor recorded each job's state."""
    d = tmp_path / "sweep"
    folder = d / ".submitit" / "%j"
    jobs = [{"num": i, "overrides": [f"layer={i}"], "cells": [[f"layer={i}"]], "job_id": jid}
            for i, jid in enumerate(words)]
    d.mkdir()
    (d / records.MANIFEST).write_text(json.dumps({"backend": "eas.vast.backend", "submitit_folder": str(folder), "jobs": jobs}))
    for jid, word in words.items():
        (d / ".submitit" / jid).mkdir(parents=True)
        (d / ".submitit" / jid / "vast_state.json").write_text(json.dumps({"state": word}))
    return d


def test_vast_jobs_read_through_the_backend(tmp_path):
    d = _vast_sweep(tmp_path, {"v1_0": "COMPLETED", "v1_1": "NODE_FAIL", "v1_2": "CANCELLED", "v1_3": "PENDING"})
    (d / "0-job").mkdir()
    (d / "0-job" / records.STATUS).write_text(json.dumps({"num": 0, "state": "done", "job_dir": str(d / "0-job")}))
    st = sweep_status(d)
    assert st.backend.name == "Vast.ai" and st.backend_answered
    assert [c.state for c in st.cells] == ["done", "failed", "missing", "pending"]
    err = st.cells[1].error
    assert err.startswith("Vast.ai job v1_1 ended NODE_FAIL before the job recorded a status")
    assert err.endswith("v1_1/v1_1_0_log.out")  # the runner writes stdout and stderr to one log
    assert "Vast.ai job v1_2 was cancelled before the cell started" in st.cells[2].error
    assert st.as_dict()["backend"] == "Vast.ai"


def test_local_backend_reads_pids_on_its_own_host(tmp_path, monkeypatch):
    import os
    import socket
    import subprocess
    import sys

    from eas.sweep.backends import local

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone = dead.stdout.strip()
    mine = {"host": socket.gethostname()}
    states = local.BACKEND.job_states(mine, [str(os.getpid()), gone])
    assert states[str(os.getpid())].phase == "running" and states[gone].phase == "gone"
    assert local.BACKEND.job_states({"host": "elsewhere"}, [gone]) is None  # another host's pids say nothing
    # a job the launcher started whose process was SIGKILLed: its record says running
    d = tmp_path / "sweep"
    (d / "0-job").mkdir(parents=True)
    (d / records.MANIFEST).write_text(json.dumps({**mine, "backend": "local", "jobs": [
        {"num": 0, "overrides": ["layer=1"], "cells": [["layer=1"]], "job_id": gone},
        {"num": 1, "overrides": ["layer=2"], "cells": [["layer=2"]], "job_id": gone}]}))
    (d / "0-job" / records.STATUS).write_text(json.dumps({"num": 0, "state": "running", "job_dir": str(d / "0-job"),
                                                          "pid": int(gone), "host": mine["host"]}))
    assert [c.state for c in sweep_status(d).cells] == ["died", "missing"]


def test_cancel_asks_the_backend(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(slurm, "available", lambda: True)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {i: "RUNNING" for i in ids})
    monkeypatch.setattr(slurm_backend.subprocess, "run", lambda argv, check=False: calls.append(argv))
    d = _sweep(tmp_path, [JOB, {**JOB, "num": 1, "job_id": "7_1"}], {1: {"state": "done", "slurm_job_id": "7_1"}})
    assert sweep_cli.main(["cancel", str(d)]) == 0
    assert calls == [["scancel", "7_0"]]  # the finished job is left alone
    assert "1 queued or running job(s) cancelled" in capsys.readouterr().out
    plain = tmp_path / "plain"
    plain.mkdir()
    assert sweep_cli.main(["cancel", str(plain)]) == 2


@pytest.mark.integration
def test_local_backend_launches_packs_and_resumes(tmp_path):
    """``hydra/launcher=local``: the manifest, packing and resume of SLURM, as processes here."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EAS_OUTPUTS": str(tmp_path / "out"), "EAS_STORE": str(tmp_path / "store")}
    r = subprocess.run([sys.executable, "-m", "eas.cli", "-m", "hydra/launcher=local", "model=tiny_random",
                        "progress=false", "layer=1,2", "strength=1,4", "hydra.launcher.cells_per_job=2"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (d,) = (tmp_path / "out").glob("multirun/*/*")
    manifest = records.read_manifest(d)
    assert manifest["backend"] == "local" and [len(j["cells"]) for j in manifest["jobs"]] == [2, 2]
    # a job whose record is lost (as if it never ran): missing, and resume runs only that job again
    (rec,) = [p for p in d.glob("*/status.json") if records.read_json(p)["num"] == 1]
    rec.unlink()
    assert [c.state for c in sweep_status(d).cells] == ["done", "done", "missing", "missing"]
    res = subprocess.run([sys.executable, "-m", "eas.sweep.cli", "resume", str(d)], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "(done, not resubmitted)" in res.stdout + res.stderr
    assert sweep_cli.main(["status", str(d)]) == 0
    assert [len(j["submissions"]) for j in records.read_manifest(d)["jobs"]] == [1, 2]
