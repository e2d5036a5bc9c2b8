"""The Hydra callback that ends every multirun: record each cell's state, merge the report.

Configured in ``conf/config.yaml`` (``hydra.callbacks.sweep``). A sweep with a cell that
is not done (failed, died, interrupted, missing, or still running from an earlier launch)
still merges what landed, then exits with status 1, so scripts notice; so does a sweep
whose states could not be recorded. A detached sweep prints how to follow it and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        if config.hydra.launcher.get("detach", False):
            from eas.sweep.backend import load

            print(f"eas: sweep submitted to {load(str(config.hydra.launcher.backend)).name}: {sweep_dir}\n"
                  f"  follow it:    eas-sweep status {sweep_dir}\n"
                  f"  resubmit missing and failed cells:  eas-sweep resume {sweep_dir}")
            return
        from eas.sweep.report import REPORT_DIR, finalize
        from eas.sweep.status import RESUMABLE

        try:
            st = finalize(sweep_dir)
        except Exception as e:  # noqa: BLE001 - Hydra would turn it into a warning and exit 0
            print(f"eas: error: the cell states of {sweep_dir} were not recorded ({type(e).__name__}: {e}); "
                  f"see `eas-sweep status {sweep_dir}`", file=sys.stderr)
            sys.exit(1)
        if not st.cells:
            return
        lines = [f"eas: sweep {sweep_dir}: {st.counts()}"]
        if not st.complete:
            lines += ["  " + line for line in st.table().splitlines()]
        if (sweep_dir / REPORT_DIR).is_dir() and st.result_dirs():
            lines.append(f"  merged report: {sweep_dir / REPORT_DIR}")
        lines.append(f"  cell states: {sweep_dir / 'sweep_status.md'}")
        print("\n".join(lines))
        if any(st.count(s) for s in RESUMABLE) and st.manifest is not None:
            print(f"  resubmit the failed and missing cells: eas-sweep resume {sweep_dir}")
        if not st.complete:  # failed, missing, or still running from an earlier launch
            sys.exit(1)
