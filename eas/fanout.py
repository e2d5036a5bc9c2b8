"""A fitness evaluated by a submitit array of long-lived workers (``experiment.fanout``).

A fitness maps ``[n, d_model]`` steering deltas to ``[n]`` scores. ``Fanout`` is such a
callable: it splits the deltas of a call into one contiguous chunk per worker, each worker
scores its chunk with the fitness it built once at start (model loaded, prefix cache
computed), and the chunks' scores are concatenated back in order. A worker serves every call
of the run: a task per generation would reload the model each time.

The workers are the tasks of ONE submitit array (``local``: subprocesses of this machine;
``slurm``: an sbatch array). Coordinator and workers talk through files in ``folder`` on the
shared filesystem, every write a temp file renamed into place (never read half-written):

    folder/submitit/                              submitit's pickles and logs
    folder/heartbeat                              rewritten by the coordinator while it waits
    folder/stop                                   written once: every worker returns
    folder/worker_<r>/ready                       worker r's fitness is built (pid, host, job id, seconds)
    folder/worker_<r>/task_<call>.safetensors     ``deltas`` [m, d_model] of one call
    folder/worker_<r>/result_<call>.safetensors   ``fitness`` [m]

Failure modes: a worker whose job ends while the coordinator runs (killed, out of memory,
timed out, cancelled, an exception) fails the call with ``WorkerError`` naming the worker,
its job id and its logs; workers not serving within ``start_timeout_s`` fail the start.
``close`` (also on any error) writes ``stop`` and cancels what is still running; a worker
that hears nothing from its coordinator for ``ORPHAN_S`` seconds (the coordinator was
killed without running ``close``) returns on its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor

from eas import store

log = logging.getLogger("eas")
CLUSTERS = ("local", "slurm")
ORPHAN_S = 300.0  # the coordinator beats every second while it waits; this is minutes of silence
BEAT_S = 1.0
SCHEDULER_CHECK_S = 10.0  # ask the scheduler (sacct) this often; submitit alone waits up to a minute


class WorkerError(RuntimeError):
    """A fan-out worker ended, or did not start, while the coordinator needed it."""


def _queue(folder: Path, rank: int) -> Path:
    return folder / f"worker_{rank}"


def _refresh(folder: Path) -> None:
    """Make files another host just wrote in ``folder`` visible here: on NFS a client caches a
    folder's listing (and "no such file") for up to a minute; a chmod fetches fresh attributes,
    and a new mtime drops that cache (submitit does the same for its result files)."""
    try:
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass


def _job_id() -> str | None:
    import submitit

    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (serve called directly)
        return None


# -- the worker ------------------------------------------------------------------------
def serve(folder: str, rank: int, build: Callable[[], Callable[[Tensor], Tensor]], poll_s: float,
          devices: str | None = None) -> dict[str, Any]:
    """One worker: build the fitness once, then score every chunk put in its queue until ``stop``.

    Args:
        folder: the fan-out folder (module docstring for its layout).
        rank: this worker's index in the array; its queue is ``folder/worker_<rank>``.
        build: picklable, no arguments, returns the fitness ``[m, d_model] -> [m]``.
        poll_s: seconds between two looks at the queue.
        devices: ``CUDA_VISIBLE_DEVICES`` for this worker (local cluster: each its own GPUs).

    Returns:
        ``{"rank", "calls", "start_seconds", "busy_seconds"}`` once ``stop`` appears.

    Raises:
        WorkerError: the coordinator was silent for ``ORPHAN_S`` seconds.
    """
    if devices is not None:  # before the first CUDA call, which fixes the visible devices
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    if not logging.getLogger().handlers:  # a submitit task: its stderr is the worker's log
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    root = Path(folder)
    queue = _queue(root, rank)
    t0 = time.perf_counter()
    fitness = build()
    start = time.perf_counter() - t0
    store.write_json(queue / "ready", {"pid": os.getpid(), "host": socket.gethostname(), "job_id": _job_id(),
                                       "seconds": start})
    log.info("fan-out worker %d serving %s (ready in %.1fs)", rank, queue, start)
    calls, busy = 0, 0.0
    last_beat, heard = None, time.monotonic()
    while True:
        _refresh(root)
        if (root / "stop").exists():
            break
        _refresh(queue)
        tasks = sorted(queue.glob("task_*.safetensors"))
        for path in tasks:
            t1 = time.perf_counter()
            deltas = store.read_tensors(path)["deltas"]
            scores = torch.as_tensor(fitness(deltas)).detach().cpu()
            store.write_tensors(path.with_name(path.name.replace("task_", "result_", 1)), {"fitness": scores})
            path.unlink()
            calls += 1
            busy += time.perf_counter() - t1
        beat = (root / "heartbeat").read_text() if (root / "heartbeat").exists() else None
        if tasks or beat != last_beat:
            last_beat, heard = beat, time.monotonic()
        elif time.monotonic() - heard > ORPHAN_S:
            raise WorkerError(f"fan-out worker {rank}: no word from the coordinator for {ORPHAN_S:.0f}s "
                              f"(no heartbeat in {root}): it is gone, so this worker ends")
        if not tasks:
            time.sleep(poll_s)
    log.info("fan-out worker %d: stop after %d calls (%.1fs busy)", rank, calls, busy)
    return {"rank": rank, "calls": calls, "start_seconds": start, "busy_seconds": busy}


# -- the coordinator ---------------------------------------------------------------------
class Fanout:
    """A fitness ``[n, d_model] -> [n]`` scored by ``workers`` submitit tasks; a context manager.

    ``with Fanout(...) as fitness:`` submits the array and returns once every worker is
    serving (``start_seconds``: that one-time cost); leaving the block stops the workers.

    Args:
        folder: where the queue, heartbeat and submitit logs go (on a filesystem the workers see).
        workers: tasks in the array; a call's deltas are split into this many contiguous chunks.
        build: what each worker calls once to get its fitness (picklable, no arguments).
        cluster: ``local`` or ``slurm`` (``submitit.AutoExecutor``).
        resources: one worker's ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``timeout_min``,
            ``partition`` (the ``resources`` config group).
        poll_s: seconds between two looks at results and job states.
        start_timeout_s: every worker serving within this, else ``WorkerError``.
        slurm_parameters: more submitit SLURM options, passed as ``slurm_<name>``.
    """

    def __init__(self, folder: Path, workers: int, build: Callable[[], Callable[[Tensor], Tensor]],
                 cluster: str = "local", resources: Mapping[str, Any] | None = None, poll_s: float = 0.1,
                 start_timeout_s: float = 1800.0, slurm_parameters: Mapping[str, Any] | None = None):
        if workers < 1:
            raise ValueError(f"workers={workers}: a fan-out needs at least one worker")
        if cluster not in CLUSTERS:
            raise ValueError(f"cluster={cluster!r}: choose one of {', '.join(CLUSTERS)}")
        self.folder = Path(folder).resolve()
        self.workers = workers
        self.build = build
        self.cluster = cluster
        self.resources = dict(resources or {})
        self.poll_s = poll_s
        self.start_timeout_s = start_timeout_s
        self.slurm_parameters = dict(slurm_parameters or {})
        self.jobs: list = []
        self.start_seconds: float | None = None
        self._calls = 0
        self._beats = 0
        self._beat_at = -float("inf")
        self._asked_at = time.monotonic()

    # -- start and stop ----------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close(grace_s=3.0)
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # on an error a worker may be mid-chunk, and nobody waits for its result
        self.close(grace_s=10.0 if exc_type is None else 3.0)

    def start(self) -> None:
        """Submit the array and wait until every worker has built its fitness."""
        t0 = time.monotonic()
        # a re-run into the same dir: no old stop, tasks or results
        (self.folder / "stop").unlink(missing_ok=True)
        for stale in self.folder.glob("worker_*"):
            shutil.rmtree(stale)
        self._beat(force=True)
        n = self.workers
        self.jobs = self._executor().map_array(serve, [str(self.folder)] * n, list(range(n)), [self.build] * n,
                                               [self.poll_s] * n, self._devices())
        log.info("fan-out: %d %s workers submitted (jobs %s); logs in %s", n, self.cluster,
                 ", ".join(j.job_id for j in self.jobs), self.folder / "submitit")
        waiting = list(range(n))
        while waiting:
            for r in waiting:
                _refresh(_queue(self.folder, r))
            waiting = [r for r in waiting if not (_queue(self.folder, r) / "ready").exists()]
            if not waiting:
                break
            self._check_alive()
            if time.monotonic() - t0 > self.start_timeout_s:
                late = ", ".join(f"worker {r} (job {self.jobs[r].job_id}, state {self.jobs[r].state})"
                                 for r in waiting)
                raise WorkerError(
                    f"fan-out: {late} not serving after {self.start_timeout_s:.0f}s (queued, or still loading "
                    f"the model); raise experiment.fanout.start_timeout_s, ask for fewer workers, or look at "
                    f"the logs in {self.folder / 'submitit'}")
            self._beat()
            time.sleep(self.poll_s)
        self.start_seconds = time.monotonic() - t0
        log.info("fan-out: %d workers serving after %.1fs", n, self.start_seconds)

    def close(self, grace_s: float = 10.0) -> None:
        """Ask every worker to return (``stop``), then cancel whatever still runs after ``grace_s``."""
        store.write_text(self.folder / "stop", "stop\n")
        end = time.monotonic() + grace_s
        while self.jobs and not all(j.done() for j in self.jobs) and time.monotonic() < end:
            time.sleep(min(self.poll_s, 0.5))
        for job in self.jobs:
            if not job.done():
                try:
                    job.cancel(check=False)
                except Exception as e:  # noqa: BLE001 - stopping the others matters more than this error
                    log.warning("fan-out: could not cancel job %s: %s", job.job_id, e)

    def _executor(self):
        import submitit

        r = self.resources
        ex = submitit.AutoExecutor(folder=self.folder / "submitit", cluster=self.cluster)
        params: dict[str, Any] = {"name": "eas-fanout", "timeout_min": r.get("timeout_min"),
                                  "cpus_per_task": r.get("cpus_per_task"), "gpus_per_node": r.get("gpus_per_node"),
                                  "mem_gb": r.get("mem_gb")}
        if self.cluster == "slurm":
            # every generation waits for every worker: the array runs all at once or not at all
            params.update(slurm_partition=r.get("partition"), slurm_array_parallelism=self.workers)
            params.update({f"slurm_{k}": v for k, v in self.slurm_parameters.items()})
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def _devices(self) -> list[str | None]:
        """Local workers with GPUs each get their own ``gpus_per_node`` of this machine's GPUs
        (submitit's local executor would show every worker the same first ones)."""
        g = int(self.resources.get("gpus_per_node") or 0)
        if self.cluster != "local" or g == 0:
            return [None] * self.workers
        # this process's GPUs (inside a SLURM job: the allocation's ids, not 0..n-1)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = ([d for d in visible.split(",") if d] if visible is not None
               else [str(i) for i in range(torch.cuda.device_count())])
        if self.workers * g > len(ids):
            raise WorkerError(f"fan-out: {self.workers} local workers x resources.gpus_per_node={g} GPUs, but this "
                              f"process sees {len(ids)} GPUs; use experiment.fanout.workers<={len(ids) // g} or "
                              f"fewer resources.gpus_per_node")
        return [",".join(ids[r * g:(r + 1) * g]) for r in range(self.workers)]

    # -- one call ----------------------------------------------------------------------
    def __call__(self, deltas: Tensor) -> Tensor:
        """Scores of ``deltas`` ``[n, d_model]`` -> ``[n]``: worker ``r`` scores the ``r``-th chunk.

        Raises:
            WorkerError: a worker's job ended before its chunk was scored.
        """
        call = self._calls
        self._calls += 1
        pending: dict[int, Path] = {}
        for r, chunk in enumerate(torch.tensor_split(deltas.detach().cpu(), self.workers)):
            if len(chunk):  # fewer deltas than workers: the last ones rest
                q = _queue(self.folder, r)
                store.write_tensors(q / f"task_{call:06d}.safetensors", {"deltas": chunk})
                pending[r] = q / f"result_{call:06d}.safetensors"
        got: dict[int, Tensor] = {}
        while pending:
            for r, path in list(pending.items()):
                _refresh(path.parent)
                if path.exists():
                    got[r] = store.read_tensors(path)["fitness"]
                    path.unlink()
                    del pending[r]
            if pending:
                self._check_alive()
                self._beat()
                time.sleep(self.poll_s)
        return torch.cat([got[r] for r in sorted(got)])

    def _beat(self, force: bool = False) -> None:
        if force or time.monotonic() - self._beat_at >= BEAT_S:
            self._beats += 1
            store.write_text(self.folder / "heartbeat", f"{self._beats}\n")
            self._beat_at = time.monotonic()

    def _check_alive(self) -> None:
        """Raise ``WorkerError`` for the first worker whose job has ended."""
        if self.jobs and time.monotonic() - self._asked_at > SCHEDULER_CHECK_S:
            self.jobs[0].done(force_check=True)  # one sacct call refreshes every job of the array
            self._asked_at = time.monotonic()
        for r, job in enumerate(self.jobs):
            if job.done():
                raise self._ended(r, job)

    def _ended(self, rank: int, job) -> WorkerError:
        state = job.state
        if job.paths.result_pickle.exists():
            err = job.exception()
            why = (f"raised:\n{_tail(str(err), 30)}" if err is not None
                   else "returned before the coordinator asked it to stop")
        else:
            why = "ended without a result: killed, out of memory, timed out or cancelled"
            if job.paths.stderr.exists():
                why += f"; the end of its log:\n{_tail(job.paths.stderr.read_text(errors='replace'), 15)}"
        return WorkerError(
            f"fan-out worker {rank} (submitit job {job.job_id}, state {state}) {why}\n"
            f"logs: {job.paths.stderr} and {job.paths.stdout}\n"
            f"every finished generation is checkpointed in the store: re-run the same command to resume "
            f"(if it ran out of time, raise resources.timeout_min)")


def _tail(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])
