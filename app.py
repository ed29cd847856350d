"""Delta Atlas in the browser: ``streamlit run app.py`` (or ``make run``).

This file only builds the navigation and the sidebar; each page lives in ``pages/`` and can also run on its own.
"""
from __future__ import annotations

import logging

import streamlit as st

from pages.parts import ui

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

PAGES = [  # file, title, icon; the first is the home page
    ("pages/map.py", "Map", ":material/scatter_plot:"),
    ("pages/find.py", "Find models for a task", ":material/search:"),
    ("pages/merge.py", "Merge", ":material/merge:"),
    ("pages/add_models.py", "Add models", ":material/add_circle:"),
    ("pages/how_it_works.py", "How it works", ":material/school:"),
]

st.set_page_config(page_title="Delta Atlas", page_icon=":material/scatter_plot:", layout="wide")
pages = [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)]
# The menu is drawn here rather than by st.navigation, because .streamlit/config.toml hides Streamlit's own menu:
# at a cold start that menu would first list the files of pages/.
navigation = st.navigation(pages, position="hidden")
with st.sidebar:
    for page in pages:
        st.page_link(page)
    st.divider()
    st.markdown("**Delta Atlas** — a map of finetuned language models, by what they learned.")
st.session_state[ui.APP_KEY] = True
ui.sidebar()
navigation.run()
ui.sidebar_footer()
ui.warm_up_in_background()  # after the first page is drawn: compiling holds the GIL for seconds
