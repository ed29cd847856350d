"""The job queue: one line per base, first in first out, a place and a wait for each job, results kept for a
reloaded page, cancelled and closed-session jobs freeing their place, and failures that never stop a line."""
from __future__ import annotations

import threading
import time

import pytest

from core.errors import DeltaAtlasError
from core.jobs import JobQueue, Place, about
from core.progress import Progress


def gate_work(gate: threading.Event, log: list, name: str, result=None):
    """A job that waits for ``gate``, reporting progress while it waits."""
    def work(progress):
        log.append(f"start {name}")
        while not gate.wait(0.01):
            progress(Progress(0, 1, "finetune"))
        log.append(f"end {name}")
        return result if result is not None else name
    return work


def test_jobs_of_one_base_run_one_at_a_time_in_order():
    queue, log, gate = JobQueue(), [], threading.Event()
    jobs = [queue.submit("/base", "search", f"s{i}", gate_work(gate, log, f"j{i}")) for i in range(3)]
    time.sleep(0.1)
    assert [j.state for j in jobs] == ["running", "queued", "queued"]
    assert queue.place(jobs[2].id).ahead == ["search", "search"]
    gate.set()
    for job in jobs:
        assert queue.wait(job.id, timeout=5).state == "done"
    assert log == ["start j0", "end j0", "start j1", "end j1", "start j2", "end j2"]
    assert [j.result for j in jobs] == ["j0", "j1", "j2"]


def test_other_bases_do_not_wait():
    queue, log, gate = JobQueue(), [], threading.Event()
    slow = queue.submit("/base-a", "search", "s1", gate_work(gate, log, "a"))
    quick = queue.submit("/base-b", "merge", "s2", lambda progress: "b")
    assert queue.wait(quick.id, timeout=5).result == "b" and slow.state == "running"
    gate.set()
    assert queue.wait(slow.id, timeout=5).state == "done"


def test_place_says_how_many_and_how_long():
    queue, gate = JobQueue(estimates={"search": 20.0, "merge": 60.0}), threading.Event()
    first = queue.submit("/base", "search", "s1", gate_work(gate, [], "1"))
    queue.submit("/base", "merge", "s2", gate_work(gate, [], "2"))
    mine = queue.submit("/base", "search", "s3", gate_work(gate, [], "3"))
    time.sleep(0.05)
    place = queue.place(mine.id)
    assert place.ahead == ["search", "merge"] and 75 <= place.wait_s <= 80
    assert place.describe() == "1 search and 1 merge are ahead of yours: yours starts in about 80 s."
    assert queue.place(first.id).running and queue.place(first.id).describe() == "Running now."
    gate.set()
    queue.wait(mine.id, timeout=5)
    assert queue.estimate("search") < 20.0            # learnt from the jobs that ran (well under a second)


def test_place_wording():
    assert Place(["search", "search"], 40.0, False).describe() == \
        "2 searches are ahead of yours: yours starts in about 40 s."
    assert Place(["merge"], 3.2, False).describe() == "1 merge is ahead of yours: yours starts in about 3 s."
    assert about(200) == "3 min" and about(0.2) == "1 s" and about(43) == "45 s"


def test_cancel_drops_a_waiting_job_and_stops_a_running_one():
    queue, log, gate = JobQueue(), [], threading.Event()
    running = queue.submit("/base", "search", "s1", gate_work(gate, log, "run"))
    waiting = queue.submit("/base", "search", "s2", gate_work(gate, log, "wait"))
    time.sleep(0.05)
    queue.cancel(waiting.id)
    assert waiting.state == "cancelled" and "cancelled" in waiting.error
    queue.cancel(running.id)
    assert queue.wait(running.id, timeout=5).state == "cancelled"
    assert log == ["start run"] and queue.active() == []


def test_a_closed_session_frees_its_place_after_the_grace_period():
    open_sessions = {"s1", "s2"}
    queue, log, gate = JobQueue(is_alive=open_sessions.__contains__, grace_s=0.2), [], threading.Event()
    running = queue.submit("/base", "search", "s1", gate_work(gate, log, "run"))
    waiting = queue.submit("/base", "search", "s2", gate_work(gate, log, "wait"))
    time.sleep(0.05)
    open_sessions.discard("s2")                 # the waiting job's tab is closed
    assert queue.place(waiting.id).ahead == ["search"]    # within the grace period: still waiting
    time.sleep(0.25)
    assert queue.active() == [running]
    assert waiting.state == "cancelled" and "closed" in waiting.error
    open_sessions.discard("s1")                 # then the running job's
    assert queue.wait(running.id, timeout=5).state == "cancelled" and "closed" in running.error
    assert log == ["start run"]


def test_a_reloaded_page_takes_its_job_over_and_keeps_it_alive():
    open_sessions = {"old-tab"}
    queue, gate = JobQueue(is_alive=open_sessions.__contains__, grace_s=0.2), threading.Event()
    job = queue.submit("/base", "search", "old-tab", gate_work(gate, [], "x", result={"answer": 42}))
    open_sessions.discard("old-tab")
    open_sessions.add("new-tab")
    assert queue.claim(job.id, "new-tab") is job and job.owner == "new-tab"
    time.sleep(0.3)
    gate.set()
    assert queue.wait(job.id, timeout=5).result == {"answer": 42}
    assert queue.claim(job.id, "newer-tab").result == {"answer": 42}     # the result stays for later reloads
    assert queue.claim("no-such-job", "x") is None and queue.get(None) is None


def test_failures_are_messages_and_the_line_goes_on():
    queue = JobQueue()

    def ours(progress):
        raise DeltaAtlasError("The examples file is empty: add at least 2 examples.")

    def a_bug(progress):
        raise ZeroDivisionError("oops")

    first = queue.submit("/base", "search", "s", ours)
    second = queue.submit("/base", "merge", "s", a_bug)
    third = queue.submit("/base", "embed", "s", lambda progress: "fine")
    assert queue.wait(first.id, 5).error == "The examples file is empty: add at least 2 examples."
    assert queue.wait(second.id, 5).state == "failed" and "server log" in second.error and "oops" not in second.error
    assert queue.wait(third.id, 5).result == "fine"


def test_finished_jobs_are_forgotten_after_a_while():
    queue = JobQueue(keep_s=0.1)
    job = queue.submit("/base", "embed", "s", lambda progress: 1)
    queue.wait(job.id, 5)
    time.sleep(0.15)
    queue.active()
    assert queue.get(job.id) is None


def test_wait_times_out():
    queue, gate = JobQueue(), threading.Event()
    job = queue.submit("/base", "search", "s", gate_work(gate, [], "x"))
    with pytest.raises(TimeoutError):
        queue.wait(job.id, timeout=0.1)
    gate.set()
    queue.wait(job.id, 5)
