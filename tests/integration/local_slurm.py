"""The real single-node SLURM cluster the SLURM tests share: ``launchers/slurm/cluster.sh``
started once per test session (the ``slurm_cluster`` fixture in ``conftest.py``), and the
marks that skip those tests where SLURM is not installed or the daemons cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "launchers" / "slurm" / "cluster.sh"
MISSING = [b for b in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
           if shutil.which(b) is None]

MARKS = [
    pytest.mark.integration,
    pytest.mark.slurm,
    pytest.mark.skipif(bool(MISSING), reason=f"SLURM is not installed ({', '.join(MISSING)} not found); "
                                             f"install it with: sudo bash launchers/slurm/install.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster runs its daemons as root"),
]


def cluster(state: Path) -> Iterator[Path]:
    """Start the cluster with its state in ``state``, point ``SLURM_CONF`` at it, stop it after."""
    start = subprocess.run(["bash", str(CLUSTER), "start", str(state)], check=False, capture_output=True,
                           text=True, timeout=180)
    if start.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=False, capture_output=True, timeout=120)
        pytest.fail(f"the local SLURM cluster did not start:\n{start.stdout}\n{start.stderr}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=False, capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
