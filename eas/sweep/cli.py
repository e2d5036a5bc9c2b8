"""``eas-sweep``: follow, resume and report a sweep from its directory, from any shell.

    eas-sweep status DIR [--wait] [--json]   each cell: done, failed (error), died, interrupted,
                                             running, pending, missing
    eas-sweep resume DIR [--detach|--wait] [hydra.launcher.X=Y ...]
                                             resubmit only the missing and failed cells
    eas-sweep report DIR                     write sweep_status.{json,md} and the merged report
    eas-sweep cancel DIR                     stop the sweep's queued and running jobs and release
                                             what they hold (Vast.ai: destroy its instances)

``resume`` launches the recorded command again into the same sweep dir (same cwd,
same EAS_STORE/EAS_OUTPUTS); the launcher leaves finished and live jobs alone, and
the store makes the resubmitted jobs skip every cell that already finished.
Every command asks the sweep's backend (``eas.sweep.backend``), the one its manifest names.
Exit status: 0 when every cell is done, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eas.sweep import backend as backends
from eas.sweep import records
from eas.sweep.status import LIVE, SweepStatus, sweep_status


def _quote(value: str) -> str:
    """A string as a Hydra override value."""
    if all(ch.isalnum() or ch in "/._-+:~" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _report_job_live(st: SweepStatus) -> bool:
    rid = (st.manifest or {}).get("report_job_id")
    if not rid:
        return False
    state = (st.backend.job_states(st.manifest or {}, [rid]) or {}).get(rid)
    return state is not None and state.live


def status(sweep_dir: Path, wait: bool, poll_s: float, as_json: bool) -> int:
    st = sweep_status(sweep_dir)
    # only the backend can tell that a "running" job died elsewhere: without it, waiting could be forever
    while wait and st.backend_answered and (st.live or _report_job_live(st)):
        time.sleep(poll_s)
        st = sweep_status(sweep_dir)
    if as_json:
        print(json.dumps(st.as_dict(), indent=2))
    else:
        print(f"sweep {sweep_dir}: {st.counts()}")
        if not st.backend_answered and st.manifest is not None:
            print(f"  ({st.backend.name} did not answer: states are from the job records only)")
        if st.cells:
            print(st.table())
        report = sweep_dir / "report" / "summary_table.md"
        if report.exists():
            print(f"merged report: {report}")
    return 0 if st.complete else 1


def resume(sweep_dir: Path, detach: bool | None, overrides: list[str]) -> int:
    manifest = records.read_manifest(sweep_dir)
    if manifest is None:
        print(f"eas-sweep: error: {sweep_dir} has no {records.MANIFEST}; only sweeps launched with eas's "
              f"launcher (hydra/launcher={'|'.join(backends.presets())}) can be resumed", file=sys.stderr)
        return 2
    bad = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    if bad:
        print(f"eas-sweep: error: {bad}: resume takes hydra.* overrides only (e.g. hydra.launcher.timeout_min=240); "
              f"other overrides would change the sweep's cells", file=sys.stderr)
        return 2
    cmd = manifest["command"]
    hydra_overrides = list(cmd["hydra_overrides"])
    if detach is not None:
        hydra_overrides = [o for o in hydra_overrides if not o.startswith("hydra.launcher.detach=")]
        hydra_overrides.append(f"hydra.launcher.detach={str(detach).lower()}")
    argv = [sys.executable, "-m", "eas.cli", "-m", *hydra_overrides, *cmd["task_overrides"],
            f"hydra.sweep.dir={_quote(str(sweep_dir.resolve()))}", *overrides]
    print("eas-sweep: " + " ".join(argv[1:]), flush=True)
    return subprocess.run(argv, check=False, cwd=cmd["cwd"], env={**os.environ, **cmd.get("env", {})}).returncode


def cancel(sweep_dir: Path) -> int:
    st = sweep_status(sweep_dir)
    if st.manifest is None:
        print(f"eas-sweep: error: {sweep_dir} has no {records.MANIFEST}; only sweeps launched with eas's "
              f"launcher can be cancelled (a local multirun ends with its process)", file=sys.stderr)
        return 2
    ids = [j.job_id for j in st.jobs if j.job_id and j.state in LIVE]
    rid = st.manifest.get("report_job_id")
    try:
        done = st.backend.cancel(st.manifest, ids + ([rid] if rid and _report_job_live(st) else []))
    except backends.BackendError as e:
        print(f"eas-sweep: error: {e}", file=sys.stderr)
        return 1
    for line in done:
        print(f"eas-sweep: {line}")
    print(f"sweep {sweep_dir}: {len(ids)} queued or running job(s) cancelled; resubmit them: eas-sweep resume {sweep_dir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eas-sweep", description="Follow, resume and report an eas sweep.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="each cell: done, failed (with the error), died, interrupted, running, pending, missing")
    s.add_argument("dir", type=Path, metavar="DIR", help="the sweep dir (hydra.sweep.dir)")
    s.add_argument("--wait", action="store_true", help="wait until no cell is queued or running")
    s.add_argument("--poll", type=float, default=10.0, metavar="S", help="seconds between looks (--wait)")
    s.add_argument("--json", action="store_true", help="print the full state as JSON")
    r = sub.add_parser("resume", help="resubmit the missing and failed cells")
    r.add_argument("dir", type=Path, metavar="DIR")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--detach", dest="detach", action="store_const", const=True, default=None,
                      help="submit and return")
    mode.add_argument("--wait", dest="detach", action="store_const", const=False,
                      help="submit and wait (default: as the sweep was launched)")
    r.add_argument("overrides", nargs="*", metavar="hydra.X=Y", help="hydra.* overrides for the resubmission")
    rep = sub.add_parser("report", help="write sweep_status.{json,md} and the merged report")
    rep.add_argument("dir", type=Path, metavar="DIR")
    c = sub.add_parser("cancel", help="stop the queued and running jobs, release what they hold")
    c.add_argument("dir", type=Path, metavar="DIR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.dir.is_dir():
        print(f"eas-sweep: error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    if args.command == "status":
        return status(args.dir, args.wait, args.poll, args.json)
    if args.command == "resume":
        return resume(args.dir, args.detach, args.overrides)
    if args.command == "cancel":
        return cancel(args.dir)
    from eas.sweep.report import finalize

    st = finalize(args.dir)
    print(f"sweep {args.dir}: {st.counts()}\nwrote {args.dir / 'sweep_status.md'}")
    return 0 if st.complete else 1


if __name__ == "__main__":
    sys.exit(main())
