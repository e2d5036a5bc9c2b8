"""What a job's status says after it is killed, and the exit status of jobs whose every cell failed.

A SIGKILLed job cannot write anything: its record stays ``running`` and the reader, on the
job's host, finds the process gone (``died``). A SIGTERMed job records ``interrupted`` and
exits 143. A local multirun lists the jobs that never wrote a record as ``missing``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from eas.sweep import cli as sweep_cli
from eas.sweep import records
from eas.sweep.status import BASIC_SWEEPER, process_gone, sweep_status

# a job that runs until it is signalled, recording its status as eas's jobs do
JOB = """
import sys, time
from pathlib import Path
from eas.sweep.records import job_record
with job_record(Path(sys.argv[1]), multirun=False):
    time.sleep(600)
"""


def wait_for(cond, what: str, timeout_s: float = 120.0):
    """Poll until ``cond()`` is truthy; a generous ceiling, not a wait."""
    t0 = time.monotonic()
    while not (out := cond()):
        assert time.monotonic() - t0 < timeout_s, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.05)
    return out


def start_running_job(job_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", JOB, str(job_dir)], stderr=subprocess.PIPE, text=True)
    rec = wait_for(lambda: records.read_json(job_dir / records.STATUS) or (p.poll() is not None and {"exit": p.poll()}),
                   "running status.json")
    assert rec.get("state") == "running", f"the job ended before it was signalled: {rec} {p.stderr.read()}"
    assert rec["pid"] == p.pid and rec["host"] == socket.gethostname()
    return p


def test_sigkilled_job_reads_died(tmp_path, capsys):
    d = tmp_path / "sweep"
    p = start_running_job(d / "0-job")
    assert sweep_status(d).cells[0].state == "running"  # alive: the record is believed
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert records.read_json(d / "0-job" / records.STATUS)["state"] == "running"  # nothing could be written
    (cell,) = sweep_status(d).cells
    assert cell.state == "died" and f"process {p.pid}" in cell.error and "SIGKILL" in cell.error
    assert sweep_cli.main(["status", str(d)]) == 1
    assert "1 cells: 0 done, 0 failed, 1 died" in capsys.readouterr().out


def test_sigtermed_job_records_interrupted_and_exits_143(tmp_path):
    d = tmp_path / "sweep"
    p = start_running_job(d / "0-job")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143
    rec = records.read_json(d / "0-job" / records.STATUS)
    assert rec["state"] == "interrupted" and rec["error"] == "process ended early: terminated by SIGTERM"
    (cell,) = sweep_status(d).cells
    assert cell.state == "interrupted" and "SIGTERM" in cell.error


def test_process_gone_only_for_this_hosts_ended_processes():
    me = {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": records.proc_stat(os.getpid())[1]}
    assert not process_gone(me)
    assert process_gone({**me, "pid_start": me["pid_start"] - 1})  # the pid now belongs to another process
    assert not process_gone({**me, "host": "elsewhere", "pid": 2**22 + 1})  # another host: cannot tell
    assert not process_gone({"host": me["host"]})  # an old record without a pid


def test_multirun_lists_jobs_without_a_record_as_missing(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    # what Hydra's basic sweeper writes before the first job starts (the parts that matter here)
    OmegaConf.save({"hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "max_batch_size": None, "params": None},
                              "overrides": {"task": ["model=tiny_random", "layer=1,2,3", "strength=1"]}}},
                   d / "multirun.yaml")
    (d / "0-job").mkdir()
    (d / "0-job" / records.STATUS).write_text(json.dumps({"state": "done", "num": 0, "job_dir": str(d / "0-job")}))
    st = sweep_status(d)
    assert [(c.num, c.state) for c in st.cells] == [(0, "done"), (1, "missing"), (2, "missing")]
    assert st.cells[2].cell == ["model=tiny_random", "layer=3", "strength=1"]
    assert st.counts() == "3 cells: 1 done, 0 failed, 2 missing" and not st.complete


# -- every cell failed: exit status ---------------------------------------------------
def run_eas_in_process(monkeypatch, *argv: str) -> int:
    """``eas ARGV`` in this process with every scoring pass raising (a lost node, not a config
    error): a subprocess could not be made to fail that way."""
    from hydra.core.global_hydra import GlobalHydra

    from eas import cli
    from eas.core import engine

    def lost(*a, **k):
        raise RuntimeError("node lost")

    monkeypatch.setattr(engine, "sweep_mc", lost)
    monkeypatch.setattr(sys, "argv", ["eas", *argv, "model=tiny_random", "max_sample_size=40", "strength=[1]",
                                      "progress=false"])
    GlobalHydra.instance().clear()
    try:
        cli.main()
    except SystemExit as e:
        return e.code
    finally:
        GlobalHydra.instance().clear()
    return 0


def test_job_whose_every_cell_failed_exits_1(monkeypatch, capsys):
    assert run_eas_in_process(monkeypatch, "layer=[1]") == 1
    out = capsys.readouterr()
    assert "FAILED cells: 1 (see summary.json)" in out.out
    assert "eas: error: every cell failed (1); the first: RuntimeError: node lost" in out.err


def test_multirun_exits_1_when_its_end_of_sweep_record_fails(monkeypatch, capsys):
    """Hydra turns an exception in the end-of-multirun callback into a warning and exit 0."""
    from eas.sweep import report

    def broken(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(report, "finalize", broken)
    assert run_eas_in_process(monkeypatch, "-m", "layer=1") == 1
    assert "were not recorded (OSError: No space left on device)" in capsys.readouterr().err
