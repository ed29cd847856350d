"""The app in a real browser: one ``streamlit run app.py`` server for every check, driven by headless Chromium.

Screenshots go to a temporary folder, and also to ``$SCREENSHOT_DIR`` when it is set (e.g. artifacts/screenshots).
Skipped when /usr/bin/chromium is missing: install it with ``apt-get install chromium``.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from core.pool.catalog import read_catalog
from tests.app.conftest import ROOT

DEMO = ROOT / "data" / "demo" / "catalog.csv"   # the tiny zoo (4.0M base): real searches in seconds

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
    """``streamlit run app.py`` on a free port, on the tiny shipped zoo when it is built (a real pool whose searches
    take seconds, not the default SmolLM2 zoo's half minute), else on the tiny test pool; stopped after the module."""
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
        yield {"url": url, "log": tmp / "server.log", "models": len(read_catalog(catalog)), "user": tmp / "user"}
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


def menu(page) -> list[str]:
    return [text.split("\n")[-1] for text in page.locator("[data-testid='stSidebar'] a").all_inner_texts()]


def first_menu(page, url: str) -> list[str]:
    """The first menu the sidebar shows after opening ``url``: at a server's cold start Streamlit would list the
    files of pages/ ("add models", "find"...) until app.py has run once."""
    page.goto(url, wait_until="commit")
    deadline = time.time() + RENDER_TIMEOUT / 1000
    while not (links := menu(page)) and time.time() < deadline:
        page.wait_for_timeout(50)
    return links


def test_every_page_opens(server, page, shots):
    assert first_menu(page, f"{server['url']}/find") == TITLES   # the first page a cold server draws
    for name, (path, shows) in PAGES.items():
        page.goto(f"{server['url']}/{path}")
        settle(page, shows)
        no_error(page)
        assert menu(page) == TITLES, name  # app.py's navigation, never a list of the files in pages/
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
    steps = page.locator("input[aria-label='Teaching steps']")
    steps.fill("3")
    steps.press("Enter")
    settle(page)
    page.get_by_role("button", name="Find matching models").click()
    settle(page, "text=Models for “")
    no_error(page)
    assert page.get_by_text("★ = your task").count() == 1
    assert page.locator(".js-plotly-plot").count() >= 1  # the map with the task
    verdicts = ("Strong match", "Weak match", "Nothing in this pool fits your task")
    assert sum(page.get_by_text(v, exact=False).count() for v in verdicts) >= 1      # the verdict, in words
    snap(page, shots, "find-result")


def start_search(page, url: str, steps: int) -> None:
    page.goto(f"{url}/find")
    settle(page, "text=Find matching models")
    page.get_by_text("Settings", exact=True).click()
    box = page.locator("input[aria-label='Teaching steps']")
    box.fill(str(steps))
    box.press("Enter")
    settle(page)
    page.get_by_role("button", name="Find matching models").click()


def test_two_users_queue_and_a_reload_keeps_the_result(server, page, shots):
    """Two browser sessions search at once on one base: the second is told its place in the line; reloading its
    tab while it waits (the job's id is in the URL) still brings its result."""
    other = page.context.browser.new_context(viewport=VIEWPORT).new_page()
    try:
        start_search(other, server["url"], steps=40)                 # the first user's longer search
        other.get_by_text("Teaching the base model your task").first.wait_for(timeout=RENDER_TIMEOUT)
        start_search(page, server["url"], steps=3)
        page.get_by_text("1 search is ahead of yours").first.wait_for(timeout=RENDER_TIMEOUT)
        snap(page, shots, "find-queued")
        assert "find_job=" in page.url
        page.reload()
        settle(page, "text=Models for “")
        no_error(page)
        settle(other, "text=Models for “")
        no_error(other)
    finally:
        other.context.close()


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


def a_zip(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


ADAPTER = {"adapter_config.json": "{}", "adapter_model.safetensors": b"\0" * 8}
BAD_EXAMPLES = [  # file name, content, what the error box under the uploader says
    ("picture.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 4, "line 3: holds a NUL byte, so it looks like a"),
    ("empty.csv", b"", "empty.csv is empty: write at least 2 examples"),
    ("one.txt", b"Just one example, no blank line.\n", "one.txt holds 1 example; give at least 2"),
    ("deep.json", b"[" * 50_000 + b"]" * 50_000, "deep.json, line 1: the JSON is nested too deeply"),
    ("latin1.csv", b"question,answer\ncaf\xe9,x\nb,y\n", "latin1.csv, line 2, column 4: byte 0xe9 is not UTF-8"),
]
BAD_ZIPS = [
    ("slip.zip", a_zip({**ADAPTER, "../../../../tmp/evil.json": "{}"}), "'../../../../tmp/evil.json' points outside"),
    ("renamed.zip", b"a text file with a .zip name", "The upload is not a zip file"),
    ("pickled.zip", a_zip({"adapter_config.json": "{}", "adapter_model.bin": b"\x80\x04"}), "holds pickle weights"),
]


def upload(page, name: str, data: bytes) -> None:
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(
        files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    settle(page)


def shows_error(page, expected: str) -> str:
    """The error box that says ``expected``, and no traceback anywhere on the page."""
    box = page.locator("[data-testid='stAlertContentError']", has_text=re.compile(re.escape(expected)))
    box.first.wait_for(timeout=RENDER_TIMEOUT)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body
    assert page.locator("[data-testid='stException']").count() == 0
    return box.first.inner_text()


def open_uploader(page, url: str, shows: str, choice: str) -> None:
    """Open a page and pick ``choice`` (the radio option that brings its file uploader)."""
    page.goto(url)
    settle(page, shows)
    page.get_by_text(choice).click()
    settle(page, "[data-testid='stFileUploaderDropzone']")


def test_bad_uploads_get_a_message_not_a_traceback(server, page, shots):
    open_uploader(page, f"{server['url']}/find", "text=Find matching models", "Upload my own examples")
    for name, data, expected in BAD_EXAMPLES:
        upload(page, name, data)
        shows_error(page, expected)
        assert page.get_by_role("button", name="Find matching models").is_disabled()  # nothing to run on
        if name == "deep.json":
            snap(page, shots, "bad-upload-examples")

    open_uploader(page, f"{server['url']}/add_models", "text=Your models", "Upload a zip")
    for name, data, expected in BAD_ZIPS:
        upload(page, name, data)
        page.get_by_role("button", name="Add and measure").click()
        settle(page)
        shows_error(page, expected)
        assert page.get_by_text("None yet.").count() == 1  # the user's model list is as it was: empty
        if name == "slip.zip":
            snap(page, shots, "bad-upload-zip")
    upload(page, "setup.exe", b"MZ\x90\x00")  # a type the uploader itself refuses, before the app sees it
    page.get_by_text("files are not allowed").first.wait_for(timeout=RENDER_TIMEOUT)

    page.get_by_text("Hugging Face Hub id").click()
    settle(page)
    field = page.locator("input[aria-label='Hub id']")
    field.fill("../../etc/passwd")
    field.press("Enter")
    settle(page)
    page.get_by_role("button", name="Add and measure").click()
    settle(page)
    shows_error(page, "'../../etc/passwd' is not a hub id ('..' is not allowed")
    assert page.get_by_text("None yet.").count() == 1
    user = server["user"]
    assert not (user / "catalog.csv").exists() and not any((user / "models").glob("*"))
    assert not Path("/tmp/evil.json").exists()
