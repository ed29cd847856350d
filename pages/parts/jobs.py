"""Heavy work from the pages: one job queue and one set of shared base models per server process, a job's place in
the line and its progress in plain words, and a job found again (with the form that started it) after a reload.

A page starts its job with :func:`start_job` (the job's id goes in the session and in the URL), calls
:func:`restore_form` before drawing its widgets, and :func:`finished_job` to follow the job to its end.
"""
from __future__ import annotations

import logging
import re
import time

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.jobs import Job, noun
from core.progress import Progress
from pages.parts.pools import Pool
from pages.parts.task_examples import LAST_TASK, UPLOAD
from pages.parts.ui import connected_sessions, job_queue, remember, remembered

log = logging.getLogger(__name__)

STAGES = {  # progress stage -> plain words
    "finetune": "Teaching the base model your task", "base": "Reading the base model",
    "adapters": "Measuring the adapters", "full": "Measuring the full models", "merge": "Merging the adapters",
    "search": "Trying merge weights on your examples", "evaluate": "Measuring the error on your examples",
    "embed": "Measuring how the model changed", "load": "Loading the models",
    "measure": "Checking whether the closest models help with your examples",
    "describe": "Reading what the model learned (its answers and words)",
    "read": "Comparing your examples with what the models were trained on",
}
STARTING = "Loading the base model (the first time after the server starts, this takes a few seconds)"
QUIET_ITEMS = {"embed", "finetune", "base", "search", "read"}   # stages whose item is an internal name (a hash, "task")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
FORM = "form"  # a job's meta: the widget values of the form that started it
POLL_S = 0.5  # how often a page waiting for its job redraws its place and progress


@st.cache_resource(show_spinner=False)
def shared_models():
    """Each base loaded once per server process and lent to one job at a time (``core.engine.shared``); never mutated:
    a task search or a merge trains or wraps a private copy. Torch starts on every core but one; each job then sets
    its own threads as it starts (:func:`with_job_threads`)."""
    import torch

    from core.engine.device import background_threads
    from core.engine.shared import SharedModels  # imports torch: not for the map

    torch.set_num_threads(background_threads())   # the jobs leave a core to the pages
    return SharedModels()


def session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def start_job(slot: str, key: str, kind: str, work, pool: Pool, form: tuple[str, ...] = (), **meta) -> None:
    """Queue ``work(progress)`` on base ``key`` for ``pool``; its id goes in the session and the URL, so that a
    reloaded tab finds the job again. ``meta`` is kept with the job for the page that shows its result, and so are
    the values of the widgets named in ``form``, which :func:`restore_form` puts back after a reload."""
    values = {k: st.session_state[k] for k in form if k in st.session_state}
    job = job_queue().submit(str(key), kind, session_id(), with_job_threads(work),
                             {**meta, "catalog": str(pool.catalog_path), FORM: values})
    st.session_state[slot] = job.id
    st.query_params[slot] = job.id


def with_job_threads(work):
    """``work`` on as many torch threads as the server can give it: every core while it is the only job and one
    browser session is connected (a person alone, waiting for it), every core but one otherwise, so that the others'
    pages stay quick (core.engine.device.job_threads). Checked as it starts and at each of its progress reports."""
    def run(progress):
        from core.engine.device import use_job_threads  # imports torch: not for the map

        def alone() -> bool:
            return len(job_queue().active()) <= 1 and connected_sessions() == 1

        def report(p: Progress) -> None:
            use_job_threads(alone())
            progress(p)

        log.info("Job starts on %d torch threads", use_job_threads(alone()))
        return work(report)

    return run


def restore_form(slot: str) -> None:
    """In a reloaded tab (the job's id in the URL, not yet in this session): put the form back as it was when the
    job started, so that the page shows what the job runs on and the next click does not run something else.
    Call it before the page draws its widgets."""
    job_id = st.query_params.get(slot)
    if st.session_state.get(slot) or not job_id or not JOB_ID.match(str(job_id)):
        return
    job = job_queue().get(str(job_id))
    if job is None:
        return
    for key, value in job.meta.get(FORM, {}).items():
        if value == UPLOAD:  # an uploaded file cannot be put back in its uploader; its examples can
            value = LAST_TASK
            st.session_state[f"_{slot}_examples"] = {"title": job.meta.get("title", ""),
                                                     "examples": job.meta.get("examples", [])}
        st.session_state[key] = value


def restored_examples(slot: str) -> dict | None:
    """The examples of an uploaded file that :func:`restore_form` put back ({"title", "examples"}), if any."""
    return st.session_state.get(f"_{slot}_examples")


def job_in(slot: str) -> Job | None:
    """The job this page started in this session, or the one named in the URL (a reloaded tab), now this
    session's; None when there is none or the server no longer knows it."""
    job_id = st.session_state.get(slot) or st.query_params.get(slot)
    if not job_id or not JOB_ID.match(str(job_id)):
        return None
    job = job_queue().claim(job_id, session_id())
    if job is None:
        forget_job(slot)
        return None
    st.session_state[slot] = job.id
    return job


def forget_job(slot: str) -> None:
    st.session_state.pop(slot, None)
    if slot in st.query_params:
        del st.query_params[slot]


def follow(job: Job) -> Job:
    """While the job waits or runs: its place in the line ("2 searches ahead of yours...") or its progress, and a
    Cancel button. Returns when the job has ended (or the user clicks, which starts a new run of the page)."""
    queue = job_queue()
    note, bar, cancel = st.empty(), st.empty(), st.empty()
    if cancel.button(f"Cancel this {noun(job.kind)}", key=f"cancel_{job.id}"):
        queue.cancel(job.id)
    while job.active:
        if job.state == "queued":
            note.info(queue.place(job.id).describe(), icon=":material/hourglass_top:")
            bar.empty()
        else:
            note.empty()
            p = job.progress
            bar.progress(p.fraction if p else 0.0, text=progress_words(p) if p else STARTING)
        time.sleep(POLL_S)
    for slot in (note, bar, cancel):
        slot.empty()
    return job


def progress_words(p: Progress) -> str:
    """A progress report in plain words: "Teaching the base model your task: step 3 of 40"."""
    words = STAGES.get(p.stage, p.stage.capitalize())
    text = f"{words}: {'step ' if p.stage == 'finetune' else ''}{p.done} of {p.total}"
    if p.item and p.stage not in QUIET_ITEMS:
        text += f" · {p.item}"
    return text


def finished_job(slot: str, once: bool = False) -> Job | None:
    """Follow the page's job (if any) to its end and return it when it is done; a failure or cancellation is
    shown once and the job forgotten (None). With ``once``, a done job is forgotten too (its page shows what it
    did once, as "added")."""
    job = job_in(slot)
    if job is None:
        return None
    follow(job)
    if ended_badly(job) or once:
        forget_job(slot)
    return None if job.state != "done" else job


def keep_result(job: Job | None, key: str, pool: Pool) -> None:
    """Put a finished job's result (and its meta) in the shared state ``key``, once, when it is this pool's."""
    if job is None or job.meta.get("catalog") != str(pool.catalog_path):
        return
    if (remembered(key, pool) or {}).get("token") != job.id:
        remember(key, pool, **{**job.meta, "token": job.id, "result": job.result})


def ended_badly(job: Job) -> bool:
    """Say why a failed or cancelled job ended (once: the page forgets it then); True when it did."""
    if job.state == "failed":
        st.error(job.error)
    elif job.state == "cancelled":
        st.info(job.error)
    else:
        return False
    return True
