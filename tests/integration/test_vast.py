"""``eas -m hydra/launcher=vast`` end to end, without the internet.

The real vastai client talks to a stand-in API on 127.0.0.1 (``tests/vast_fake.py``); each
"instance" it rents is a real sshd on loopback in its own mount and pid namespaces
(``launchers/vast/loopback_instance.sh``), with an empty project dir: eas's real code
goes there over rsync, the jobs run there with ``model=tiny_random``, and the results
come back over rsync into the sweep dir. "destroy" kills the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = ROOT / "launchers" / "vast" / "loopback_instance.sh"
KEY = "vast-test-key"
_MISSING = [c for c in ("/usr/sbin/sshd", "ssh", "rsync", "unshare", "ssh-keygen")
            if shutil.which(c) is None and not Path(c).exists()]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vast,
    pytest.mark.skipif(bool(_MISSING), reason=f"needs openssh-server, rsync and unshare ({', '.join(_MISSING)} "
                                              f"not found); install them with: sudo bash launchers/vast/install.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the loopback instance uses mount/pid namespaces (root)"),
]
pytest.importorskip("vastai", reason="the vastai SDK is not installed (eas's extra `vast`): run `make vast`")

from eas.vast.remote import Remote
from tests.vast_fake import FakeVast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instances:
    """Loopback sshd instances, started on create and killed on destroy. Each reports
    ``loading`` until its sshd listens, and ``exited`` with its log if the script ended."""

    def __init__(self, state: Path, pubkey: Path):
        self.state, self.pubkey, self.procs, self.ports = state, pubkey, {}, {}

    def create(self, iid: int) -> tuple[str, int]:
        port = free_port()
        # the Python the jobs run with, wherever this venv lives (not only <project>/.venv)
        prefixes = dict.fromkeys([sys.prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)])
        self.procs[iid] = subprocess.Popen(
            ["bash", str(INSTANCE), str(self.state / str(iid)), str(port), str(self.pubkey), str(ROOT), *prefixes],
            stdout=subprocess.DEVNULL, stderr=open(self.state / f"{iid}.log", "wb"), start_new_session=True)  # noqa: SIM115
        self.ports[iid] = port
        return "127.0.0.1", port

    def start_state(self, iid: int, n_shows: int) -> str | tuple[str, str]:
        """FakeVast's answer for an instance still loading: the launcher waits on it (start_timeout_s)."""
        if iid not in self.ports:
            return "loading"
        p = self.procs[iid]
        if p.poll() is not None:
            log = " ".join((self.state / f"{iid}.log").read_text(errors="replace").split())
            return "exited", (f"loopback instance never opened 127.0.0.1:{self.ports[iid]}: "
                              f"{INSTANCE.name} exited {p.returncode}: {log[:300] or 'no output'}")
        return "running" if Remote("127.0.0.1", self.ports[iid], connect_timeout_s=1).port_open() else "loading"

    def destroy(self, iid: int) -> None:
        p = self.procs.get(iid)
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # unshare and the namespace's init: everything in it dies
            p.wait(timeout=10)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]


@pytest.fixture
def vast(tmp_path):
    (tmp_path / "keys").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "keys" / "id")], check=True)
    (tmp_path / "inst").mkdir()
    insts = Instances(tmp_path / "inst", tmp_path / "keys" / "id.pub")
    fake = FakeVast(key=KEY, on_create=insts.create, on_destroy=insts.destroy, start_state=insts.start_state)
    fake.url = fake.start()
    fake.insts = insts
    yield fake
    for iid in list(insts.procs):
        insts.destroy(iid)
    fake.stop()


def env(tmp_path: Path) -> dict:
    return {**os.environ, "VAST_API_KEY": KEY, "EAS_OUTPUTS": str(tmp_path / "outputs"),
            "EAS_STORE": str(tmp_path / "outputs" / "store"), "PYTHONUNBUFFERED": "1"}


def eas(tmp_path: Path, fake, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "eas.cli", "-m", "hydra/launcher=vast", "model=tiny_random", "progress=false",
           f"hydra.launcher.server_url={fake.url}", f"hydra.launcher.ssh_key={tmp_path / 'keys' / 'id'}",
           "hydra.launcher.setup=[]", f"hydra.launcher.python={sys.executable}", "hydra.launcher.poll_s=0.2",
           # ceilings, not waits: an instance reports running once its sshd listens
           "hydra.launcher.start_timeout_s=120", "hydra.launcher.ssh_timeout_s=120", *overrides]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env(tmp_path),
                          cwd=tmp_path)


def eas_sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eas.sweep.cli", *args], check=False, capture_output=True,
                          text=True, timeout=240, env=env(tmp_path), cwd=tmp_path)


def sweep_dir(tmp_path: Path) -> Path:
    (d,) = [p for p in (tmp_path / "outputs").glob("multirun/*/*") if p.is_dir()]
    return d


def test_sweep_runs_on_instances_and_results_come_back(vast, tmp_path):
    r = eas(tmp_path, vast, "layer=1,2", "strength=1,4", "hydra.launcher.instances=2",
            "hydra.launcher.cells_per_job=2", "hydra.launcher.gpu_name=RTX 4090", "hydra.launcher.max_dph=0.5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = sweep_dir(tmp_path)
    # two instances, one per packed job (layer=1 strength=[1,4] and layer=2 strength=[1,4])
    puts = vast.calls("PUT", "/api/v0/asks/")
    assert len(puts) == 2 and all(p["path"] == "/api/v0/asks/101/" for p in puts)  # the cheapest matching offer
    (q,) = {json.dumps(p["body"], sort_keys=True) for p in vast.calls("POST", "/api/v0/bundles/")}
    q = json.loads(q)
    assert q["gpu_name"] == {"eq": "RTX 4090"} and q["dph_total"] == {"lte": 0.5} and q["num_gpus"] == {"eq": 1}
    assert all(req["auth"] == f"Bearer {KEY}" for req in vast.requests)
    manifest = json.loads((d / "sweep.json").read_text())
    assert manifest["backend"] == "eas.vast.backend" and [len(j["cells"]) for j in manifest["jobs"]] == [2, 2]
    # results were written on the instances (their own /tmp) and rsynced back here
    job_dirs = sorted(p.parent for p in d.glob("*/results.parquet"))
    assert len(job_dirs) == 2
    assert all(json.loads((j / "status.json").read_text())["state"] == "done" for j in job_dirs)
    assert (d / "report").is_dir()
    # torn down: every instance destroyed through the API and its namespace gone
    assert vast.live() == [] and vast.insts.alive() == []
    st = eas_sweep(tmp_path, "status", str(d))
    assert st.returncode == 0 and "4 cells: 4 done" in st.stdout, st.stdout + st.stderr


def test_outbid_spot_instance_loses_cells_that_resume(vast, tmp_path):
    """A spot instance stopped mid-sweep: its finished job stays, the rest resume elsewhere."""
    root_holder: dict = {}

    def outbid_after_first_result():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 200:
            results = list((tmp_path / "outputs").glob("multirun/*/*/.submitit/*/*_result.pkl"))
            if results and vast.instances:
                iid = min(vast.instances)
                vast.instances[iid]["actual_status"] = "stopped"  # what Vast does to an outbid instance
                vast.insts.destroy(iid)  # its machine goes away; the disk (and the bill) would stay
                root_holder["stopped"] = iid
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=outbid_after_first_result, daemon=True)
    watcher.start()
    r = eas(tmp_path, vast, "layer=1,2", "strength=1", "hydra.launcher.spot=true", "hydra.launcher.max_dph=0.3",
            "hydra.launcher.cells_per_job=1", "hydra.launcher.instances=1")
    watcher.join(timeout=5)
    d = sweep_dir(tmp_path)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    stopped = root_holder["stopped"]
    assert vast.instances[stopped]["actual_status"] == "destroyed"  # a stopped instance is destroyed too
    put = vast.calls("PUT", "/api/v0/asks/")[0]
    assert put["body"]["price"] == 0.3 and vast.calls("POST", "/api/v0/bundles/")[0]["body"]["type"] == "bid"
    st = eas_sweep(tmp_path, "status", "--json", str(d))
    states = [c["state"] for c in json.loads(st.stdout)["cells"]]
    assert states == ["done", states[1]] and states[1] in ("failed", "missing"), st.stdout
    # resumed on a new instance: only the lost cells run again
    n_before = len(vast.instances)
    res = eas_sweep(tmp_path, "resume", str(d))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(vast.instances) == n_before + 1 and vast.live() == [] and vast.insts.alive() == []
    st = eas_sweep(tmp_path, "status", str(d))
    assert st.returncode == 0 and "2 cells: 2 done" in st.stdout, st.stdout
