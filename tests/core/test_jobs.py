import threading
import time

import pytest

from core import jobs
from core.jobs import JobBusyError, JobLocks


def test_second_owner_cannot_take_a_held_key():
    locks = JobLocks()
    assert locks.try_acquire("/base", "alice", "finetuning")
    assert not locks.try_acquire("/base", "bob", "embedding")
    assert locks.try_acquire("/other", "bob", "embedding")  # other models are independent
    assert locks.holder("/base").owner == "alice"
    locks.release("/base", "bob")  # not bob's: no effect
    assert locks.holder("/base").owner == "alice"
    locks.release("/base", "alice")
    assert locks.holder("/base") is None
    assert locks.try_acquire("/base", "bob", "embedding")


def test_reentrant_for_the_same_owner():
    locks = JobLocks()
    assert locks.try_acquire("k", "alice", "merging")
    assert locks.try_acquire("k", "alice", "merging")
    locks.release("k", "alice")
    assert locks.holder("k") is not None  # still held once
    locks.release("k", "alice")
    assert locks.holder("k") is None


def test_hold_releases_on_exception():
    locks = JobLocks()
    with pytest.raises(RuntimeError):
        with locks.hold("k", "alice", "finetuning"):
            raise RuntimeError("user left the page")
    assert locks.holder("k") is None


def test_waiting_user_is_told_and_then_runs(monkeypatch):
    monkeypatch.setattr(jobs, "WAIT_POLL_S", 0.01)
    locks = JobLocks()
    locks.try_acquire("k", "alice", "finetuning")
    messages, order = [], []

    def bob():
        with locks.hold("k", "bob", "merging", on_wait=messages.append):
            order.append("bob")

    thread = threading.Thread(target=bob)
    thread.start()
    time.sleep(0.1)
    order.append("alice done")
    locks.release("k", "alice")
    thread.join(timeout=5)
    assert order == ["alice done", "bob"]
    assert len(messages) == 1 and "another user is finetuning" in messages[0] and "waiting" in messages[0]
    assert locks.busy() == []


def test_hold_times_out_with_a_plain_message(monkeypatch):
    monkeypatch.setattr(jobs, "WAIT_POLL_S", 0.01)
    locks = JobLocks()
    locks.try_acquire("k", "alice", "embedding")
    with pytest.raises(JobBusyError, match="try again"):
        with locks.hold("k", "bob", "merging", timeout=0.05):
            pass
    assert locks.holder("k").owner == "alice"
