"""What a model learned, in words (core.map.describe): the words it leans towards and its answers beside the base's
or beside another model's. Used by the Map page (a clicked model, two models side by side) and How it works."""
from __future__ import annotations

import streamlit as st

from core.map.describe import SHOWN_WORDS
from pages.parts import ui

NOT_DESCRIBED = "What this model learned has not been described yet: run `python -m core describe` for this pool."
SILENT = "*(says nothing: it ends its answer at once)*"
PROMPTS = ("Its first words after each of the five fixed prompts that all models are compared on (\"Please provide a "
           "response. Input: Input.\", worded five ways)")


def words_line(about: dict) -> str:
    return ui.plain(", ".join(about.get("words", [])[:SHOWN_WORDS]))


def learned(found: dict, name: str) -> None:
    """The words the model leans towards, and (in an expander) its answers, each above the base model's."""
    about = found.get("models", {}).get(name)
    if not about:
        st.caption(NOT_DESCRIBED)
        return
    if about.get("words"):
        st.markdown("**What it learned** — the words it leans towards more than the other models do: "
                    + words_line(about))
    answers, base = about.get("answers"), found.get("base", {}).get("answers") or []
    if not answers:
        st.caption(ui.plain(about.get("note") or "Its answers are not available (its weights are not on this disk)."))
        return
    with st.expander("What it says, beside the base model"):
        st.caption(PROMPTS + "; below each, in grey, what the untouched base model says to the same prompt.")
        for i, answer in enumerate(answers):
            st.markdown(f"**{i + 1}.** {ui.plain(answer) or SILENT}")
            if i < len(base):
                st.caption(f"base model: {ui.plain(base[i])}")


def side_by_side(found: dict, first: str, second: str) -> None:
    """Two models' leaning words and answers in two columns, prompt by prompt: "what A says / what B says"."""
    models = found.get("models", {})
    columns = st.columns(2, gap="medium")
    for column, name in zip(columns, (first, second)):
        about = models.get(name) or {}
        column.markdown(f"**What {ui.plain(name)} says**")
        column.caption("Leans towards: " + (words_line(about) if about.get("words") else "(not described yet)"))
    answers = [models.get(n, {}).get("answers") or [] for n in (first, second)]
    if not any(answers):
        st.caption(NOT_DESCRIBED)
        return
    st.caption(PROMPTS + ", one row per prompt.")
    for i in range(max(len(a) for a in answers)):
        columns = st.columns(2, gap="medium")
        for column, said in zip(columns, answers):
            column.markdown(f"**{i + 1}.** {ui.plain(said[i]) or SILENT}" if i < len(said) else f"**{i + 1}.** —")
