"""A submitit executor that runs jobs on rented Vast.ai instances.

Registered as a submitit plugin (``[project.entry-points.submitit]`` in pyproject), so
``submitit.AutoExecutor(cluster="vast", folder=...)`` builds it. ``map_array`` splits
the jobs into ``instances`` batches; a thread per batch rents one instance, rsyncs the
code and the job pickles to it, runs the jobs one after the other (the model is loaded
once per job and cached on the instance's disk), brings each job's results back with
rsync, and destroys the instance in ``finally``. A job whose instance is lost (no
offer, never running, outbid, SSH gone) is recorded ``CANCELLED`` (not started) or
``NODE_FAIL`` (started): ``eas-sweep resume`` resubmits it.

Paths: the job pickles hold absolute paths (sweep dir, config dir), so the code goes
to the same absolute path on the instance and jobs run from the same working directory;
Vast logs in as root, which may create them.

The executor knows nothing of sweeps; ``eas.vast.backend`` is the sweep's backend over it
(what env vars reach the jobs, which dirs come back).
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path

from submitit.core import core, job_environment, utils
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
)

from eas.vast import api, records
from eas.vast.remote import Remote

log = logging.getLogger("eas")

CODE_EXCLUDES = (".git", ".venv", "outputs", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
DESTROY_ATTEMPTS = 3  # waits 2 s between them; then the instance is recorded for eas-vast destroy
_RUNNERS: set[InstanceRunner] = set()
_RUNNERS_LOCK = threading.Lock()


class VastJobEnvironment(job_environment.JobEnvironment):
    """The job's side: the runner exports these variables on the instance."""

    _env = {  # noqa: RUF012 - submitit's JobEnvironment protocol
        "job_id": "EAS_VAST_JOB_ID",
        "num_tasks": "EAS_VAST_NTASKS",
        "num_nodes": "EAS_VAST_NNODES",
        "node": "EAS_VAST_NODEID",
        "global_rank": "EAS_VAST_GLOBALID",
        "local_rank": "EAS_VAST_LOCALID",
    }

    def _requeue(self, countdown: int) -> None:  # no scheduler to requeue into: resume does it
        sys.exit(1)


class VastJob(core.Job[tp.Any]):
    _cancel_command = "true"

    def _state_rec(self) -> dict:
        return records.read_job_state(self.paths.folder) or {}

    @property
    def state(self) -> str:
        return self._state_rec().get("state", "UNKNOWN")

    def done(self, force_check: bool = False) -> bool:
        return self.paths.result_pickle.exists() or self.state in records.TERMINAL

    def get_info(self, mode: str = "force") -> dict[str, str]:
        return {"State": self.state}

    def cancel(self, check: bool = True) -> None:
        teardown_all(f"job {self.job_id} cancelled")


class InstanceRunner:
    """One rented instance running one batch of jobs, then destroyed."""

    def __init__(self, params: dict, root: Path, jobs: list[VastJob], label: str):
        self.p, self.root, self.jobs, self.label = params, root, jobs, label
        self.instance_id: int | None = None  # the live instance (None once destroyed)
        self.last_instance_id: int | None = None
        self.stop = threading.Event()
        self._destroy_lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"eas-vast-{label}", daemon=True)
        with _RUNNERS_LOCK:  # before the thread starts: teardown_all and wait_all see it at once
            _RUNNERS.add(self)

    def spec(self) -> api.OfferSpec:
        p = self.p
        return api.OfferSpec(gpu_name=p.get("gpu_name"), num_gpus=int(p.get("num_gpus", 1)),
                             max_dph=float(p.get("max_dph", 1.0)), disk_gb=float(p.get("disk_gb", 40)),
                             spot=bool(p.get("spot", False)), min_gpu_ram_gb=p.get("min_gpu_ram_gb"),
                             extra_filters=p.get("extra_filters"))

    # -- the batch ---------------------------------------------------------
    def run(self) -> None:
        started: set[str] = set()
        vast, error = None, None
        try:
            vast = api.client(self.p.get("server_url"))
            remote = self._rent(vast)
            self._push_code(remote)
            for job in self.jobs:
                if self.stop.is_set():
                    raise api.VastError("stopped before the job started")
                started.add(job.job_id)
                self._run_job(vast, remote, job)
        except BaseException as e:  # noqa: BLE001 - every way out marks the jobs and tears down
            error = str(e) if isinstance(e, api.VastError) else f"{type(e).__name__}: {e}"
            log.error("vast %s: %s", self.label, error)
        finally:
            self.destroy(vast)  # first: a job that reads as ended has no instance left behind
            for job in self.jobs if error else []:
                records.mark_lost(job.paths.folder, error, ran=job.job_id in started,
                                  instance_id=self.last_instance_id)
            with _RUNNERS_LOCK:
                _RUNNERS.discard(self)

    def _rent(self, vast) -> Remote:
        spec, tried = self.spec(), set()
        attempts = int(self.p.get("max_attempts", 2))
        last: api.VastError | None = None
        for attempt in range(attempts):
            try:
                offer = api.find_offer(vast, spec, exclude=tried)
            except api.VastError as e:
                if last is None:
                    raise
                # no other offer: what went wrong with the last instance is the cause, not "no offer"
                raise api.VastError(f"{last} (no other offer to try)") from e
            tried.add(int(offer["id"]))
            if self.stop.is_set():
                raise api.VastError("stopped before an instance was rented")
            self.instance_id = self.last_instance_id = api.create(vast, offer, spec, image=self.p.get("image"), label=self.label,
                                          onstart=self.p.get("onstart"))
            records.log_instance(self.root, "created", self.instance_id, label=self.label, offer_id=offer["id"],
                                 gpu_name=offer.get("gpu_name"), dph_total=offer.get("dph_total"),
                                 jobs=[j.job_id for j in self.jobs])
            log.info("vast %s: instance %s on offer %s (%s, $%s/h)", self.label, self.instance_id, offer["id"],
                     offer.get("gpu_name"), offer.get("dph_total"))
            try:
                row = api.wait_running(vast, self.instance_id, float(self.p.get("start_timeout_s", 600)),
                                       float(self.p.get("poll_s", 10)), stop=self.stop.is_set)
                remote = Remote(row["ssh_host"], int(row["ssh_port"]), self.p.get("ssh_user") or "root",
                                self.p.get("ssh_key"))
                self._wait_ssh(remote)
                return remote
            except api.VastError as e:
                if attempt + 1 == attempts:
                    raise
                last = e
                log.warning("vast %s: %s; destroying it and trying another offer", self.label, e)
                self.destroy(vast)
        raise AssertionError("unreachable")

    def _wait_ssh(self, remote: Remote) -> None:
        """Try SSH until it lets us in, every ``poll_s`` for at most ``ssh_timeout_s``."""
        timeout_s = float(self.p.get("ssh_timeout_s", 300))

        def attempt() -> int:
            if self.stop.is_set():
                raise api.VastError(f"stopped while waiting for SSH on instance {self.instance_id}")
            return remote.run("true", timeout_s=60, log=subprocess.DEVNULL)

        def gave_up(_state) -> None:
            # a closed port and a refused key have different fixes: say which it was
            if not remote.port_open():
                raise api.VastError(f"instance {self.instance_id} never opened its SSH port {remote.host}:"
                                    f"{remote.port} in {timeout_s:.0f} s; if it boots slowly, raise "
                                    f"hydra.launcher.ssh_timeout_s")
            raise api.VastError(f"instance {self.instance_id}: SSH at {remote.host}:{remote.port} did not let "
                                f"us in; is your public key in the Vast account (vastai create ssh-key), and "
                                f"hydra.launcher.ssh_key its private key?")

        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(float(self.p.get("poll_s", 10))),
                 retry=retry_if_result(lambda rc: rc != 0), retry_error_callback=gave_up)(attempt)

    def _push_code(self, remote: Remote) -> None:
        code = str(code_dir())
        if remote.rsync(code + "/", ":" + code + "/", excludes=CODE_EXCLUDES) != 0:
            raise api.VastError(f"rsync of the code {code} to instance {self.instance_id} failed")
        setup = list(self.p.get("setup") or [])
        if setup:
            with open(self.root / f"vast_{self.label}_setup.log", "ab") as logf:
                rc = remote.run(f"cd {shlex.quote(code)} && " + " && ".join(setup), log=logf)
            if rc != 0:
                raise api.VastError(f"setup on instance {self.instance_id} failed (exit {rc}); see "
                                    f"{self.root / f'vast_{self.label}_setup.log'}")

    def _run_job(self, vast, remote: Remote, job: VastJob) -> None:
        folder = str(job.paths.folder)
        if remote.rsync(folder + "/", ":" + folder + "/") != 0:
            raise api.VastError(f"rsync of job {job.job_id} to instance {self.instance_id} failed")
        records.set_job_state(job.paths.folder, "RUNNING", instance_id=self.instance_id)
        env = {"SUBMITIT_EXECUTOR": "vast", "EAS_VAST_JOB_ID": job.job_id, "EAS_VAST_NTASKS": "1",
               "EAS_VAST_NNODES": "1", "EAS_VAST_NODEID": "0", "EAS_VAST_GLOBALID": "0", "EAS_VAST_LOCALID": "0",
               "PYTHONPATH": str(code_dir()), "PYTHONUNBUFFERED": "1",
               **{str(k): str(v) for k, v in (self.p.get("env") or {}).items()}}
        cwd = os.getcwd()
        folder_pattern = str(self.root / "%j")
        cmd = (f"mkdir -p {shlex.quote(cwd)} && cd {shlex.quote(cwd)} && "
               + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
               + f" {self.p.get('python') or 'python'} -u -m eas.vast.runner {shlex.quote(folder_pattern)}")
        timeout_s = 60 * float(self.p.get("timeout_min") or 60 * 24)
        with open(job.paths.stdout, "ab") as logf:
            rc = remote.run(cmd, timeout_s=timeout_s, log=logf)
        self._pull(remote, job)
        if job.paths.result_pickle.exists():
            records.set_job_state(job.paths.folder, "COMPLETED" if rc == 0 else "FAILED", exit_code=rc)
            return
        # no result: find out whether the instance went away (outbid spot instances go to "stopped")
        row = api.show(vast, self.instance_id) or {}
        state = row.get("actual_status")
        if state != "running":
            raise api.VastError(f"instance {self.instance_id} is {state} (outbid or lost) while running job "
                                f"{job.job_id}")
        raise api.VastError(f"job {job.job_id} on instance {self.instance_id} ended without a result "
                            f"(exit {rc}); log: {job.paths.stdout}")

    def _pull(self, remote: Remote, job: VastJob) -> None:
        # the job dirs first: the result pickle is what tells the launcher the job ended
        for d in self.p.get("pull_dirs") or []:
            remote.rsync(":" + str(d) + "/", str(d) + "/", excludes=(".submitit",))
        folder = str(job.paths.folder)
        remote.rsync(":" + folder + "/", folder + "/", excludes=("*_submitted.pkl", "*.out"))

    def destroy(self, vast=None) -> None:
        """Destroy the instance (idempotent); a failure is recorded for ``eas-vast destroy``."""
        with self._destroy_lock:
            iid, self.instance_id = self.instance_id, None
            if iid is None:
                return
            try:
                # on top of _call's retries of a flaky API: a client that could not be made, a refusal
                Retrying(stop=stop_after_attempt(DESTROY_ATTEMPTS), wait=wait_fixed(2),
                         retry=retry_if_exception_type(Exception), reraise=True)(
                    lambda: api.destroy(vast or api.client(self.p.get("server_url")), iid))
                records.log_instance(self.root, "destroyed", iid)
                log.info("vast %s: instance %s destroyed", self.label, iid)
                return
            except Exception as e:  # noqa: BLE001 - recorded: eas-vast destroy finishes the job
                err = str(e)
            records.log_instance(self.root, "destroy_failed", iid, error=err)
            log.error("vast %s: could not destroy instance %s (%s): run `eas-vast destroy %s`",
                      self.label, iid, err, self.root)


def teardown_all(reason: str = "interrupted") -> None:
    """Stop every batch of this process and destroy its instance (Ctrl-C, exit, cancel)."""
    with _RUNNERS_LOCK:
        runners = list(_RUNNERS)
    for r in runners:
        r.stop.set()
        r.destroy()
    for r in runners:  # a batch between create_instance and its record destroys its own in finally
        if r.thread.is_alive() and r.thread is not threading.current_thread():
            r.thread.join(30)
        for job in r.jobs:
            records.mark_lost(job.paths.folder, reason)


atexit.register(teardown_all, "the launcher exited")


def destroy_recorded(root: Path, server_url: str | None, reason: str) -> list[str]:
    """Destroy every instance recorded under the submitit root ``root`` and not destroyed, and
    mark the jobs left queued or running lost (``reason``); returns what was done, one line each.

    Raises:
        api.VastError: no SDK or key; an instance that could not be destroyed (after the others).
    """
    insts = records.instances(root)
    live = [i for i, r in insts.items() if r["last"] != "destroyed"]
    done, failed = [], []
    if live:
        vast = api.client(server_url)
        for iid in live:
            try:
                api.destroy(vast, iid)
            except api.VastError as e:
                failed.append(f"instance {iid}: {e}")
                continue
            records.log_instance(root, "destroyed", iid, by=reason)
            done.append(f"destroyed instance {iid}")
    n = sum(records.mark_lost(f.parent, reason) for f in Path(root).glob(f"*/{records.JOB_STATE}"))
    done.append(f"{len(insts)} instance(s) recorded, {len(live) - len(failed)} destroyed now; "
                f"{n} unfinished job(s) marked lost")
    if failed:
        raise api.VastError("; ".join(failed) + " (" + "; ".join(done) + ")")
    return done


def wait_all(timeout_s: float | None = None) -> None:
    """Wait until every batch of this process has brought its results back and destroyed its instance."""
    with _RUNNERS_LOCK:
        runners = list(_RUNNERS)
    for r in runners:
        r.thread.join(timeout_s)


def code_dir() -> Path:
    """The project root holding ``eas/`` and ``conf/`` (pushed to the same path on the instance)."""
    import eas

    return Path(eas.__file__).resolve().parent.parent


class VastExecutor(core.PicklingExecutor):
    """Run submitit jobs on Vast.ai instances, ``instances`` at a time, each over a batch."""

    job_class = VastJob

    def __init__(self, folder: str | Path, max_num_timeout: int = 0, max_pickle_size_gb: float = 1.0) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb)
        self.root = utils.JobPaths.get_first_id_independent_folder(self.folder)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return {"gpu_name", "num_gpus", "max_dph", "disk_gb", "spot", "min_gpu_ram_gb", "extra_filters", "image",
                "onstart", "instances", "max_attempts", "start_timeout_s", "ssh_timeout_s", "poll_s", "ssh_key",
                "ssh_user", "setup", "python", "env", "server_url", "pull_dirs", "label"}

    @classmethod
    def _equivalence_dict(cls):
        return None

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return ""

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return []

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        return str(string)

    def _submit_command(self, command: str) -> VastJob:
        raise NotImplementedError("VastExecutor submits in batches (_internal_process_submissions)")

    def _internal_process_submissions(self, delayed_submissions: list[utils.DelayedSubmission]) -> list[VastJob]:
        if not delayed_submissions:
            return []
        api.api_key()  # no key: fail before anything is written or rented
        run = f"v{int(time.time() * 1000) % 10**10}"
        jobs = []
        for k, delayed in enumerate(delayed_submissions):
            job = VastJob(folder=self.folder, job_id=f"{run}_{k}", tasks=[0])
            job.paths.folder.mkdir(parents=True, exist_ok=True)
            delayed.set_timeout(self.parameters.get("timeout_min", 60 * 24), self.max_num_timeout)
            delayed.dump(job.paths.submitted_pickle)
            records.set_job_state(job.paths.folder, "PENDING")
            jobs.append(job)
        n = max(1, min(int(self.parameters.get("instances", 1)), len(jobs)))
        size = -(-len(jobs) // n)
        params = dict(self.parameters)
        for b in range(n):
            batch = jobs[b * size:(b + 1) * size]
            if batch:
                runner = InstanceRunner(params, self.root, batch, f"{params.get('label') or 'eas'}-{run}-{b}")
                runner.thread.start()
        return jobs
