"""The task-examples picker of the Find and Merge pages: a sample task, an upload, or the last search's examples."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import DeltaAtlasError
from core.reuse.examples import load_examples, parse_examples, sample_tasks
from pages.parts.pools import stamp

SAMPLE, UPLOAD, LAST_TASK = "Try a sample task", "Upload my own examples", "The examples of my last task search"
FORMAT_HELP = """One example per line in a **.jsonl** file, e.g.
`{"instruction": "What is 12 * 3?", "response": "12 * 3 = 36."}`
(also accepted: prompt/completion, question/answer, input/output), or a **.csv** with those two columns, a
**.json** list, or a **.txt** file with one example per paragraph. 10 to 50 examples work best."""


@st.cache_data(show_spinner=False)
def _sample_examples(path: str, mtime: int) -> list:
    return load_examples(path)


def examples_picker(prefix: str, last_task: dict | None = None) -> tuple[str, list]:
    """Pick examples from the last task search, a sample task or an upload: (title, examples). Problems with an
    upload are shown under it; the examples are then empty."""
    sources = [*([LAST_TASK] if last_task else []), SAMPLE, UPLOAD]
    source = st.radio("Examples", sources, horizontal=True, key=f"{prefix}_source")
    if source == LAST_TASK:
        title, examples = last_task["title"], last_task["examples"]
    elif source == SAMPLE:
        tasks = sample_tasks()
        if not tasks:
            st.warning("No sample task found in data/sample_tasks: upload your own examples instead.")
            return "", []
        title = st.selectbox("Sample task", list(tasks), key=f"{prefix}_sample",
                             help="Small example sets the project wrote itself, one per domain of the demo zoo.")
        examples = _sample_examples(str(tasks[title]), stamp(tasks[title]))
    else:
        upload = st.file_uploader("Examples file", type=["jsonl", "json", "csv", "tsv", "txt"], key=f"{prefix}_upload")
        st.caption(FORMAT_HELP)
        if upload is None:
            return "", []
        title = upload.name
        try:
            examples = parse_examples(upload.getvalue(), upload.name)
        except DeltaAtlasError as exc:
            st.error(str(exc))
            return title, []
    with st.expander(f"See the {len(examples)} examples"):
        rows = pd.DataFrame([{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples])
        st.dataframe(rows.replace("", None).dropna(axis=1, how="all"), hide_index=True, width="stretch")
    return title, examples
