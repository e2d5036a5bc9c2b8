"""eas.sweep without a cluster: packing cells into jobs, SLURM output parsing, cell states,
job status records and the eas-sweep CLI on a synthetic sweep dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eas.sweep import cli as sweep_cli
from eas.sweep import records, slurm
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
       "slurm_job_id": "7_0"}


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
    st = resolve_job(JOB, rec, slurm_state)
    assert st.state == expected
    if expected == "failed":
        assert st.error


def test_resolve_job_without_scheduler_and_one_task_arrays():
    local = {"num": 3, "overrides": ["layer=1"], "slurm_job_id": None}
    assert resolve_job(local, None, None).state == "missing"
    assert resolve_job(local, {"state": "done"}, None).state == "done"
    one = {**JOB, "slurm_job_id": "9"}  # a one-task array is 9 to sbatch and 9_0 inside the job
    assert resolve_job(one, {"state": "done", "slurm_job_id": "9_0"}, "COMPLETED").state == "done"


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
    jobs = [{"num": 0, "overrides": ["layer=1", "strength=[1,4]"], "cells": cells, "slurm_job_id": "5_0"},
            {"num": 1, "overrides": ["layer=2", "strength=1"], "cells": [["layer=2", "strength=1"]],
             "slurm_job_id": None}]
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
    d = _sweep(tmp_path, [{**JOB, "slurm_job_id": None}], {0: {"state": "done"}})
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
    assert "only sweeps launched with hydra/launcher=slurm" in capsys.readouterr().err


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
