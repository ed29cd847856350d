"""Serialise heavy work (finetune, embed, merge) so that two sessions never run it on the same model at once.

The app serves several browser sessions from one process. A finetune or an embedding run holds a model in memory
and writes files next to it; two of them on the same base would double the memory and race on the files. A
:class:`JobLocks` registry holds one lock per key (the base model's path) and remembers who holds it and for what,
so that a second user is told "another user is finetuning on this model — waiting" instead of seeing a frozen page.

Leaving a page mid-work is safe: :func:`JobLocks.hold` releases the lock in ``finally`` (Streamlit stops a script by
raising inside it), and every file the engine writes is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import DeltaAtlasError

WAIT_POLL_S = 0.5  # how often a waiting session checks whether the lock is free


class JobBusyError(DeltaAtlasError):
    """Another session kept a model busy for longer than the caller wanted to wait."""


@dataclass(frozen=True)
class Job:
    """Who holds a key, doing what, since when."""

    key: str
    owner: str      # a session id
    what: str       # plain words, e.g. "finetuning", "embedding", "merging"
    since: float    # time.time() when it started

    def describe(self) -> str:
        seconds = int(time.time() - self.since)
        return f"another user is {self.what} on this model (started {seconds} s ago) — waiting"


class JobLocks:
    """A process-wide registry of locks keyed by a string (a model's path). Thread-safe; one per app process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, Job] = {}
        self._depth: dict[str, int] = {}  # re-entrant holds by the same owner

    def try_acquire(self, key: str, owner: str, what: str) -> bool:
        """Take ``key`` for ``owner`` if it is free or already ``owner``'s (re-entrant); never blocks."""
        with self._guard:
            job = self._held.get(key)
            if job is not None and job.owner != owner:
                return False
            if job is None:
                self._held[key] = Job(key=key, owner=owner, what=what, since=time.time())
            self._depth[key] = self._depth.get(key, 0) + 1
            return True

    def release(self, key: str, owner: str) -> None:
        """Give ``key`` back (once per :meth:`try_acquire`); a no-op when ``owner`` does not hold it."""
        with self._guard:
            job = self._held.get(key)
            if job is None or job.owner != owner:
                return
            self._depth[key] -= 1
            if self._depth[key] <= 0:
                del self._held[key], self._depth[key]

    def holder(self, key: str) -> Job | None:
        with self._guard:
            return self._held.get(key)

    def busy(self) -> list[Job]:
        """Every job running now, oldest first."""
        with self._guard:
            return sorted(self._held.values(), key=lambda job: job.since)

    @contextmanager
    def hold(self, key: str, owner: str, what: str, on_wait: Callable[[str], None] | None = None,
             timeout: float | None = None) -> Iterator[None]:
        """Hold ``key`` for the duration of the block, waiting (and saying so once through ``on_wait``) while another
        owner holds it. Raises :class:`JobBusyError` when ``timeout`` seconds pass without getting it."""
        start, told = time.monotonic(), False
        while not self.try_acquire(key, owner, what):
            if not told and on_wait is not None:
                job = self.holder(key)
                on_wait(job.describe() if job else "another user is working on this model — waiting")
                told = True
            if timeout is not None and time.monotonic() - start > timeout:
                raise JobBusyError(f"The model {key} stayed busy for {int(timeout)} s: try again in a few minutes.")
            time.sleep(WAIT_POLL_S)
        try:
            yield
        finally:
            self.release(key, owner)
