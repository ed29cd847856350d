"""Heavy work (task search, merge, measuring a model) queued per base model and run in the background.

The app serves many browser sessions from one process, and every heavy job holds a base model in memory. Two jobs
on one base at once would double that memory and fight over the cores, so a :class:`JobQueue` keeps one
first-in-first-out line per base and one worker thread per line:

* ``submit`` puts a job in its base's line and returns at once; the page shows :meth:`JobQueue.place`
  ("2 searches ahead of yours: yours starts in about 40 s") and the job's latest progress;
* the job runs outside the page's script, so its result outlives the browser tab: a reloaded page finds it again
  by its id (the page keeps the id in the URL) and :meth:`JobQueue.claim` hands it to the new session;
* a job whose session is gone (the tab closed, not reloaded) for ``grace_s`` seconds is dropped from the line, or
  stopped at its next progress report when it is running, so that it frees its place;
* how long a kind of job takes is learnt from the jobs that finished, for the waiting times shown.

Finished jobs are kept ``keep_s`` seconds for their pages to collect, then forgotten.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from core.errors import DeltaAtlasError
from core.progress import Progress

log = logging.getLogger(__name__)

ESTIMATES_S = {"search": 30.0, "merge": 60.0, "embed": 20.0}   # first guesses, replaced by what jobs measure
NOUNS = {"search": ("search", "searches"), "merge": ("merge", "merges"), "embed": ("measurement", "measurements")}
GRACE_S = 30.0         # a job outlives its session's end this long (a reload comes back well within it)
KEEP_S = 3600.0        # finished jobs are kept this long for their page to collect
LEARNING_RATE = 0.5    # weight of the newest duration in the running estimate of a kind of job

Work = Callable[[Callable[[Progress], None]], Any]   # the job: called with a progress callback, returns the result


class JobCancelled(DeltaAtlasError):
    """Raised inside a running job (through its progress callback) when it was cancelled or its session left."""


@dataclass
class Job:
    """One piece of heavy work and where it stands. Pages read it; only the queue changes it."""

    id: str
    key: str                      # the line it waits in: the base model's path
    kind: str                     # "search", "merge", "embed"
    owner: str                    # the session that asked for it (a reloaded page takes it over)
    meta: dict = field(default_factory=dict)   # what the page needs to show the result (title, examples...)
    submitted: float = 0.0
    started: float | None = None
    finished: float | None = None
    state: str = "queued"         # queued -> running -> done | failed | cancelled
    progress: Progress | None = None
    result: Any = None
    error: str = ""               # for people: why it failed or was cancelled
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def seconds(self) -> float:
        """How long it ran (so far, when it is running)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


@dataclass(frozen=True)
class Place:
    """Where a job stands in its line: the jobs before it (running or waiting) and the expected wait."""

    ahead: list[str]              # kinds of the jobs ahead, the running one first
    wait_s: float                 # until this job starts (0 when it runs)
    running: bool

    def describe(self) -> str:
        if self.running:
            return "Running now."
        if not self.ahead:
            return "Starting..."
        counts: dict[str, int] = {}
        for kind in self.ahead:
            counts[kind] = counts.get(kind, 0) + 1
        parts = [f"{n} {noun(kind, n)}" for kind, n in counts.items()]
        verb = "is" if len(self.ahead) == 1 else "are"
        return f"{' and '.join(parts)} {verb} ahead of yours: yours starts in about {about(self.wait_s)}."


def noun(kind: str, n: int = 1) -> str:
    one, many = NOUNS.get(kind, (kind, kind + "s"))
    return one if n == 1 else many


def about(seconds: float) -> str:
    """A wait in plain words: '40 s', '3 min'."""
    seconds = max(1, int(round(seconds)))
    if seconds < 10:
        return f"{seconds} s"
    if seconds < 90:
        return f"{5 * round(seconds / 5)} s"
    return f"{round(seconds / 60)} min"


class JobQueue:
    """A line per key (a base model), one worker thread per line; thread-safe, one per app process.

    ``is_alive(owner)`` says whether a session is still open (None: sessions never end, as in the CLI and tests).
    """

    def __init__(self, is_alive: Callable[[str], bool] | None = None, grace_s: float = GRACE_S,
                 keep_s: float = KEEP_S, estimates: dict[str, float] | None = None):
        self.is_alive, self.grace_s, self.keep_s = is_alive, grace_s, keep_s
        self._estimates = {**ESTIMATES_S, **(estimates or {})}
        self._guard = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._lines: dict[str, deque[Job]] = {}     # key -> waiting jobs, oldest first
        self._running: dict[str, Job] = {}          # key -> the job its worker runs now
        self._workers: set[str] = set()             # keys whose worker thread is alive
        self._work: dict[str, Work] = {}            # job id -> its work, until it ends (it may hold big objects)
        self._gone_since: dict[str, float] = {}     # owner -> when it was first seen gone

    # ---- the pages' side ----
    def submit(self, key: str, kind: str, owner: str, work: Work, meta: dict | None = None) -> Job:
        """Put ``work`` in ``key``'s line and return its :class:`Job` at once."""
        job = Job(id=uuid.uuid4().hex, key=str(key), kind=kind, owner=owner, meta=dict(meta or {}),
                  submitted=time.monotonic())
        with self._guard:
            self._prune()
            self._jobs[job.id] = job
            self._work[job.id] = work
            self._lines.setdefault(job.key, deque()).append(job)
            if job.key not in self._workers:
                self._workers.add(job.key)
                threading.Thread(target=self._work_line, args=(job.key,), name=f"jobs-{kind}", daemon=True).start()
        log.info("Job %s (%s) queued on %s", job.id[:8], kind, key)
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._guard:
            return self._jobs.get(job_id or "")

    def claim(self, job_id: str | None, owner: str) -> Job | None:
        """The job, now belonging to ``owner`` (a reloaded page's new session), or None when it is unknown."""
        with self._guard:
            job = self._jobs.get(job_id or "")
            if job is not None and job.owner != owner:
                log.info("Job %s taken over by a new session", job.id[:8])
                job.owner = owner
            return job

    def cancel(self, job_id: str, why: str = "You cancelled it.") -> None:
        """Drop a waiting job at once; stop a running one at its next progress report."""
        with self._guard:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return
            job.cancel_requested = True
            if job.state == "queued":
                self._finish(job, "cancelled", error=why)

    def place(self, job_id: str) -> Place:
        with self._guard:
            self._prune()
            job = self._jobs.get(job_id)
            if job is None or job.state != "queued":
                return Place([], 0.0, running=job is not None and job.state == "running")
            running = self._running.get(job.key)
            ahead: list[str] = []
            wait = 0.0
            if running is not None and running.state == "running":
                ahead.append(running.kind)
                wait += max(self.estimate(running.kind) - running.seconds, 2.0)
            for other in self._lines.get(job.key, ()):
                if other is job:
                    break
                if other.state == "queued":
                    ahead.append(other.kind)
                    wait += self.estimate(other.kind)
            return Place(ahead, wait, running=False)

    def active(self) -> list[Job]:
        """Every job running or waiting, oldest first."""
        with self._guard:
            self._prune()
            return sorted((j for j in self._jobs.values() if j.active), key=lambda j: j.submitted)

    def estimate(self, kind: str) -> float:
        """Seconds a job of ``kind`` is expected to run, learnt from the ones that finished."""
        return self._estimates.get(kind, 30.0)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (for the CLI and tests); returns it."""
        start = time.monotonic()
        while True:
            job = self.get(job_id)
            if job is None or not job.active:
                return job
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(0.05)

    # ---- the workers' side ----
    def _work_line(self, key: str) -> None:
        try:
            self._serve(key)
        finally:                                    # even if a job escaped with a BaseException
            with self._guard:
                self._workers.discard(key)
                self._running.pop(key, None)

    def _serve(self, key: str) -> None:
        while True:
            with self._guard:
                self._prune()
                line = self._lines.get(key, deque())
                while line and line[0].state != "queued":
                    line.popleft()
                if not line:
                    self._lines.pop(key, None)
                    return
                job = line.popleft()
                job.state, job.started = "running", time.monotonic()
                self._running[key] = job
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(p: Progress) -> None:
            job.progress = p
            if job.cancel_requested or self._owner_gone(job.owner):
                raise JobCancelled("The job was stopped: " + ("you cancelled it." if job.cancel_requested
                                                              else "its page was closed."))

        try:
            with self._guard:
                work = self._work[job.id]
            result = work(progress)
        except JobCancelled as exc:
            self._finish(job, "cancelled", error=str(exc))
        except DeltaAtlasError as exc:
            self._finish(job, "failed", error=str(exc))
        except Exception:  # noqa: BLE001 - a job's bug must not kill its line
            log.exception("Job %s (%s) failed", job.id[:8], job.kind)
            self._finish(job, "failed", error=f"Something went wrong while running the {noun(job.kind)}. The "
                                              "details are in the server log; try again, or try other settings.")
        else:
            job.result = result
            self._finish(job, "done")
            self._learn(job.kind, job.seconds)

    def _finish(self, job: Job, state: str, error: str = "") -> None:
        with self._guard:
            job.state, job.error, job.finished = state, error, time.monotonic()
            self._work.pop(job.id, None)
        log.info("Job %s (%s) %s after %.1f s", job.id[:8], job.kind, state, job.seconds)

    def _learn(self, kind: str, seconds: float) -> None:
        with self._guard:
            old = self._estimates.get(kind)
            self._estimates[kind] = seconds if old is None else (1 - LEARNING_RATE) * old + LEARNING_RATE * seconds

    # ---- housekeeping ----
    def _owner_gone(self, owner: str) -> bool:
        """True once ``owner``'s session has been closed for ``grace_s`` seconds."""
        if self.is_alive is None:
            return False
        try:
            alive = self.is_alive(owner)
        except Exception:  # noqa: BLE001 - when in doubt, keep the job
            alive = True
        with self._guard:
            if alive:
                self._gone_since.pop(owner, None)
                return False
            since = self._gone_since.setdefault(owner, time.monotonic())
            return time.monotonic() - since >= self.grace_s

    def _prune(self) -> None:
        """Drop waiting jobs whose session left, and finished jobs nobody collected in time."""
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.state == "queued" and self._owner_gone(job.owner):
                self._finish(job, "cancelled", error="The job was dropped: its page was closed.")
            elif not job.active and job.finished is not None and now - job.finished > self.keep_s:
                del self._jobs[job.id]
