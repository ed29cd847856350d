"""The app in a real browser: one ``streamlit run app.py`` server for every check, driven by headless Chromium.

Screenshots go to a temporary folder, and also to ``$SCREENSHOT_DIR`` when it is set (e.g. artifacts/screenshots).
Skipped when /usr/bin/chromium is missing: install it with ``apt-get install chromium``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import ROOT
from core.catalog import read_catalog

DEMO = ROOT / "data" / "demo" / "catalog.csv"

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PAGES = {  # page -> (url path, what shows that it has finished drawing); the first is opened first, by its own URL
    "find": ("find", "text=Find matching models"), "map": ("", ".js-plotly-plot"), "merge": ("merge", "text=Merge"),
    "add_models": ("add_models", "text=Your models"), "how_it_works": ("how_it_works", ".js-plotly-plot"),
}
TITLES = ["Map", "Find models for a task", "Merge", "Add models", "How it works"]  # the app's navigation
VIEWPORT = {"width": 1400, "height": 1000}
START_TIMEOUT = 90     # seconds for the server to answer
RENDER_TIMEOUT = 120_000  # ms for a page to finish running (the first one imports torch and compiles UMAP)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium: install it with "
                                "`apt-get install chromium` to run the real-browser tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(app_pool, tmp_path_factory):
    """``streamlit run app.py`` on a free port, on the demo zoo when it is built (what a visitor sees), else on the
    tiny test pool; stopped after the module."""
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "allowed").mkdir()
    port = free_port()
    catalog = DEMO if DEMO.is_file() and DEMO.with_name("vectors.parquet").is_file() else app_pool["catalog"]
    env = {**os.environ, "DELTA_ATLAS_CATALOG": str(catalog), "DELTA_ATLAS_DATA_DIR": str(tmp / "data"),
           "DELTA_ATLAS_USER_DIR": str(tmp / "user"), "DELTA_ATLAS_ALLOWED_ROOTS": str(tmp / "allowed"),
           "DELTA_ATLAS_CACHE": str(app_pool["cache"]), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start: {(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": url, "log": tmp / "server.log", "models": len(read_catalog(catalog))}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        yield context.new_page()
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> list[Path]:
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("SCREENSHOT_DIR"):
        folders.append(Path(os.environ["SCREENSHOT_DIR"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


def snap(page, shots: list[Path], name: str) -> Path:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so the window is made as tall as
    the content first."""
    path = shots[0] / f"{name}.png"
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight || 1000")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 40)})
    page.wait_for_timeout(400)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    for folder in shots[1:]:
        shutil.copy(path, folder / path.name)
    return path


IDLE = """() => {
    const app = document.querySelector('[data-test-script-state]');
    return app && app.getAttribute('data-test-script-state') === 'notRunning'
        && !document.querySelector('[data-testid="stSpinner"]');
}"""


def settle(page, shows: str | None = None) -> None:
    """Wait until the script has stopped running (Streamlit marks its state on the app) and shows ``shows``."""
    page.wait_for_selector("[data-testid='stApp']", timeout=RENDER_TIMEOUT)
    page.wait_for_timeout(300)
    page.wait_for_function(IDLE, timeout=RENDER_TIMEOUT)
    if shows:
        page.locator(shows).first.wait_for(timeout=RENDER_TIMEOUT)
    page.wait_for_timeout(500)  # charts draw just after the script ends


def no_error(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    errors = page.locator("[data-testid='stAlertContentError']").all_inner_texts()
    assert errors == []


def test_every_page_opens(server, page, shots):
    for name, (path, shows) in PAGES.items():
        page.goto(f"{server['url']}/{path}")
        settle(page, shows)
        no_error(page)
        links = [text.split("\n")[-1] for text in page.locator("[data-testid='stSidebarNav'] a").all_inner_texts()]
        assert links == TITLES, name  # app.py's navigation, never a list of the files in pages/
        assert page.url.rstrip("/") == f"{server['url']}/{path}".rstrip("/")
        assert snap(page, shots, f"page-{name}").stat().st_size > 10_000


def test_clicking_a_point_opens_its_neighbours(server, page, shots):
    page.goto(server["url"])
    settle(page, ".js-plotly-plot")
    point = page.locator(".js-plotly-plot .scatterlayer .trace .points path").first
    point.wait_for(timeout=RENDER_TIMEOUT)
    point.click(force=True)
    page.locator("strong", has_text="Closest models").wait_for(timeout=RENDER_TIMEOUT)
    settle(page)
    no_error(page)
    snap(page, shots, "map-selected")


def test_a_sample_task_finds_models(server, page, shots):
    page.goto(f"{server['url']}/find")
    settle(page, "text=Find matching models")
    page.get_by_text("Settings", exact=True).click()
    steps = page.locator("input[aria-label='Finetuning steps']")
    steps.fill("3")
    steps.press("Enter")
    settle(page)
    page.get_by_role("button", name="Find matching models").click()
    settle(page, "text=Models closest to")
    no_error(page)
    assert page.get_by_text("★ = your task").count() == 1
    assert page.locator(".js-plotly-plot").count() >= 2  # the loss curve and the map with the task
    snap(page, shots, "find-result")


def test_vectors_and_map_download(server, page, shots):
    page.goto(server["url"])
    settle(page, ".js-plotly-plot")
    page.get_by_text("Download the vectors or the map").click()
    with page.expect_download(timeout=RENDER_TIMEOUT) as csv:
        page.get_by_role("button", name="Vectors (CSV)").click()
    text = Path(csv.value.path()).read_text()
    assert text.startswith("name,vector,") and text.count("\n") == server["models"] + 1  # header + every model
    with page.expect_download(timeout=RENDER_TIMEOUT) as html:
        page.get_by_role("button", name="Map (interactive HTML)").click()
    assert "plotly" in Path(html.value.path()).read_text()[:200_000].lower()
