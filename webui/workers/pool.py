"""The queue with several workers: which job goes where, and what happens when a worker dies.

`PoolQueue` keeps JobQueue's interface (submit, cancel, position, listeners, history) so the UI
and the API do not change; instead of one thread running jobs in order, a dispatcher thread
hands the oldest waiting job that some free worker can run to the best such worker:

* model affinity: a free worker that has the job's checkpoint loaded (and, among those, the most
  of its LoRAs and ControlNets: affinity.py), else the least busy one (fewest seconds spent on
  jobs), so switching checkpoints and reading networks again is rare;
* a job only this process can run (loading a model here, a folder batch) goes to the head's
  own executor; a generation (`job.remote` set) goes to a remote one;
* a worker lost mid-job (process killed, node gone) is marked down and the job is queued again,
  once, at the front, with a note the user sees (`job.meta["retried"]`); a second loss fails it;
* a worker that lacks the checkpoint says so (`ModelMissing`); the job goes to another one, or
  fails with every worker's message when none has it.

Ray is not imported here: the executors that talk to workers live in ray_pool.py.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..core.jobs import Interrupted, Job, JobQueue, JobState
from .affinity import score

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2  # a job whose worker died is tried once more on another


class WorkerLost(RuntimeError):
    """The worker process running a job went away (killed, crashed, its machine lost)."""


class ModelMissing(LookupError):
    """The worker has no file with the job's checkpoint (by hash or by name)."""

    user_facing = True


class Executor:
    """Runs one job at a time somewhere. `run` blocks until the job ends and returns its result."""

    remote = False

    def __init__(self, name: str):
        self.name = name
        self.alive = True
        self.busy = False
        self.busy_seconds = 0.0
        self.jobs_run = 0
        self.loaded: set[str] = set()  # checkpoint names and sha256s, lora:/controlnet: keys loaded there (affinity)

    def can_run(self, job: Job) -> bool:
        return (job.remote is not None) == self.remote

    def run(self, job: Job) -> Any:
        return job.run(job)

    def revive(self) -> bool:
        """Try to reach a lost worker again; True once it answers."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "alive": self.alive, "busy": self.busy, "jobs_run": self.jobs_run,
                "busy_seconds": round(self.busy_seconds, 3), "loaded": sorted(self.loaded)}

    def close(self) -> None:
        """Let go of the worker (the queue is stopping)."""


class PoolQueue(JobQueue):
    """A JobQueue whose jobs run on several executors at once."""

    remote = True  # read by the app: the head loads no checkpoint of its own

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.executors: list[Executor] = [Executor("head")]  # runs what only this process can run
        self._running: dict[str, Job] = {}
        self._by_thread: dict[int, Job] = {}
        self.closers: list[Any] = []  # called once the workers are let go (Ray's shutdown)

    def add(self, executor: Executor) -> None:
        with self._cv:
            self.executors.append(executor)
            self._cv.notify_all()

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's state, for the API and the queue panel."""
        with self._cv:
            return [e.describe() for e in self.executors]

    # ---- JobQueue's interface, for several running jobs ----------------------------------------

    def start(self) -> None:
        with self._cv:
            if self._thread and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._dispatch, name="easel-dispatch", daemon=True)
            self._thread.start()
        threading.Thread(target=self._watch, name="easel-revive", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:  # stopping first: a job that ends because the process stops is kept for the next start
            self._stopping = True
            running = list(self._running.values())
        for job in running:
            job.interrupt()
        super().stop(timeout)
        deadline = time.monotonic() + timeout
        for job in running:
            job.wait(max(0.0, deadline - time.monotonic()))
        for executor in self.executors:
            try:
                executor.close()
            except Exception:
                log.exception("worker %s: close failed", executor.name)
        for closer in self.closers:
            try:
                closer()
            except Exception:
                log.exception("closing the workers failed")

    @property
    def current(self) -> Job | None:
        """The job the calling worker thread runs; for anyone else, the longest-running job."""
        job = self._by_thread.get(threading.get_ident())
        if job is not None:
            return job
        running = list(self._running.values())
        return min(running, key=lambda j: j.sequence) if running else None

    @property
    def worker(self) -> threading.Thread | None:
        return None  # several threads run jobs; `current` already answers per thread

    def interrupt_current(self) -> Job | None:
        job = self.current
        if job is not None:
            job.interrupt()
        return job

    def skip_current(self) -> Job | None:
        job = self.current
        if job is not None:
            job.skip()
        return job

    def running(self) -> list[Job]:
        with self._cv:
            return sorted(self._running.values(), key=lambda j: j.sequence)

    def position(self, job_id: str) -> int | None:
        with self._cv:
            if job_id in self._running:
                return 0
            for index, job in enumerate(self._pending, start=1):
                if job.id == job_id:
                    return index
        return None

    # ---- dispatching ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._cv:
                assignment = None
                while not self._stopping and (assignment := self._assign()) is None:
                    self._cv.wait(1.0)
                if self._stopping:
                    return
                job, executor = assignment
                self._pending.remove(job)
                executor.busy = True
                self._running[job.id] = job
                job.state = JobState.RUNNING
                job.meta["worker"] = executor.name
                job.meta.setdefault("workers", []).append(executor.name)
                if job.started_at is None:
                    job.started_at = time.time()
                job.progress.started_at = time.monotonic()
            threading.Thread(target=self._run_on, args=(job, executor), name=f"easel-{executor.name}",
                             daemon=True).start()

    def _assign(self) -> tuple[Job, Executor] | None:
        """The oldest waiting job some free worker can run, with the best such worker."""
        free = [e for e in self.executors if e.alive and not e.busy]
        if not free:
            return None
        for job in self._pending:
            excluded = job.meta.get("excluded", ())
            candidates = [e for e in free if e.can_run(job) and e.name not in excluded]
            if candidates:
                return job, self.choose(job, candidates)
        return None

    @staticmethod
    def choose(job: Job, candidates: list[Executor]) -> Executor:
        """Model affinity (its checkpoint, then most of its LoRAs/ControlNets), then the least busy; ties go to
        the first listed."""
        checkpoint = getattr(job.remote, "affinity_keys", lambda: set())()
        networks = getattr(job.remote, "network_keys", lambda: set())()
        scores = {id(e): score(checkpoint, networks, e.loaded) for e in candidates}
        best = max(scores.values())
        return min((e for e in candidates if scores[id(e)] == best), key=lambda e: e.busy_seconds)

    def _run_on(self, job: Job, executor: Executor) -> None:
        self._by_thread[threading.get_ident()] = job
        started = time.monotonic()
        state = JobState.DONE
        requeued = False
        try:
            job.result = executor.run(job)
            if job.interrupted or getattr(job.result, "interrupted", False):
                state = JobState.INTERRUPTED
        except Interrupted:
            state = JobState.INTERRUPTED
        except WorkerLost as lost:
            executor.alive = False
            requeued = self._retry(job, executor, f"worker {executor.name} was lost ({lost})")
            if not requeued:
                job.error, state = lost, JobState.FAILED
        except ModelMissing as missing:
            job.meta.setdefault("excluded", []).append(executor.name)
            job.meta.setdefault("missing", []).append(str(missing))
            requeued = self._requeue_if_possible(job)
            if not requeued:
                job.error, state = ModelMissing("; ".join(job.meta["missing"])), JobState.FAILED
        except Exception as exc:  # reported to the caller, never kills the dispatcher
            job.error, state = exc, JobState.FAILED
            if not getattr(exc, "user_facing", False):
                log.exception("job %s failed on %s", job.id, executor.name)
        finally:
            self._by_thread.pop(threading.get_ident(), None)
        with self._cv:
            executor.busy = False
            executor.jobs_run += 1
            executor.busy_seconds += time.monotonic() - started
            self._running.pop(job.id, None)
            if not requeued:
                self._finish(job, state)
            self._cv.notify_all()
        if not requeued:
            job.remote = None  # the request (and its input images) is no longer needed
            self._retire(job)

    def _retry(self, job: Job, executor: Executor, why: str) -> bool:
        attempts = len(job.meta.get("workers", []))
        if attempts >= MAX_ATTEMPTS or job.interrupted or self._stopping:
            return False
        note = f"{why}; retried on another worker"
        job.meta["retried"] = note  # the lost worker is down, so the retry goes to another (or to it once back)
        log.warning("job %s: %s", job.id, note)
        return self._requeue(job, note)

    def _requeue_if_possible(self, job: Job) -> bool:
        excluded = job.meta.get("excluded", ())
        if not any(e.can_run(job) and e.name not in excluded for e in self.executors):
            return False
        return self._requeue(job, "; ".join(job.meta.get("missing", [])) + "; trying another worker")

    def _requeue(self, job: Job, text: str) -> bool:
        with self._cv:
            if self._stopping:
                return False
            job.state = JobState.QUEUED
            job.progress.text = text
            job.progress.step = 0
            job.progress.preview_latents = job.progress.preview_image = None
            self._pending.appendleft(job)
            self._cv.notify_all()
        return True

    def _watch(self) -> None:
        """Take workers into service once they answer: new ones when started, lost ones when Ray restarted them."""
        while not self._stopping:
            for executor in list(self.executors):
                if not executor.alive and not self._stopping:
                    try:
                        if executor.revive():
                            log.info("worker %s is ready", executor.name)
                            with self._cv:
                                executor.alive = True
                                self._cv.notify_all()
                    except Exception as exc:
                        log.debug("worker %s still down: %s", executor.name, exc)
            time.sleep(2.0)
