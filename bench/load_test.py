"""Load test (run by hand, not a test; issue #9): many browser sessions against one ``streamlit run app.py`` server.

Simulated: ``--sessions`` (20) map sessions that open the Map page and click a point, and ``--searches`` (3) task
searches on the Find page, all at once (the searches click first, so that every map is drawn while a search
runs). Each session is a small client speaking Streamlit's own websocket protocol (ws://127.0.0.1:PORT/_stcore/stream,
the protobuf ``BackMsg`` / ``ForwardMsg`` of ``streamlit.proto``), as a browser tab does: no browser, so the
client's cost stays small next to the server's. Loopback only, bounded in sessions and time (``--max-seconds``: the
server is stopped and the run fails when it is reached), and the server is always stopped at the end.

Phases, every one on a fresh temporary cache, user and data folder (nothing of yours is read or written but the
pool itself):
  1. warm-up, server A: one map session and one search (``--warmup-steps``, default 2), untimed: fills the disk
     caches (the map's 2-D points, compiled kernels) that a server that has been up a while has; A is stopped;
  2. solo, server B (fresh process, warm disk cache): one session opens the map, clicks a point and runs one search
     alone, with ``--steps``: its peak RSS is "one session's" memory, and its times are the unloaded reference;
  3. load, the same server B (every in-process cache now warm: the warm case): the 20 + 3 sessions at once.

Measured: page render time (from sending the run to ``script_finished``) of every map open and click, p50/p95/max
(numpy's linear percentiles); each search's wall time (click to its result), queue wait (click until the job
starts running: the first progress bar) and run time (the server log's "Job ... done after X s"); whether every
session got its answer (the map: the chart, then "Closest models" for the clicked model; a search: "Models closest
to ..."); the server's RSS (with its children) sampled every 0.2 s; the CPU the server, this client and the rest of
the machine used during the load phase (a busy machine shows there).

Targets (issue #9): all sessions served; peak RSS of the load phase <= 2x the solo phase's; map p95 <= 3 s (opens
and clicks, each) while the searches run.

    .venv/bin/python bench/load_test.py --json bench/out/load_test.json
    .venv/bin/python bench/load_test.py --server-threads 1      # torch/OpenMP limited to 1 thread in the server
    .venv/bin/python bench/load_test.py --st runner.postScriptGC=false   # any Streamlit option for the server
    .venv/bin/python bench/load_test.py --sessions 3 --searches 1 --steps 2 --no-warmup --no-solo   # a quick look
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

START_TIMEOUT_S = 120      # for the server to answer its health check
RUN_TIMEOUT_S = 300        # for one page run that is not a search to finish
SAMPLE_S = 0.2             # RSS sampling period
MAP_TARGET_S = 3.0
MEMORY_TARGET = 2.0
MAP_CHART, MAP_TEXT = "map_chart", "Closest models"
FIND_STEPS, FIND_GO, FIND_TEXT = "find_steps", "find_go", "Models for “"
FINISHED_OK = 0            # ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY
JOB_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) core\.jobs INFO Job ([0-9a-f]{8}) \((\w+)\) "
                      r"(queued|done|failed|cancelled)(?: on .*| after ([\d.]+) s)")


class Expired(Exception):
    """The overall deadline (--max-seconds) was reached."""


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, most: float) -> float:
        left = self.left()
        if left <= 0:
            raise Expired("the overall deadline (--max-seconds) was reached")
        return min(most, left)


# ---- the server ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``streamlit run app.py`` on 127.0.0.1, in its own process group; ``stop`` ends it (and its children)."""

    def __init__(self, env: dict, log: Path, port: int | None = None, options: list[str] | None = None):
        self.env, self.log_path, self.port = env, log, port or free_port()
        self.options = [part for option in options or [] for part in (f"--{option.split('=', 1)[0]}",
                                                                       option.split("=", 1)[1])]
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Lock()   # the watchdog and the main thread may both stop it: one waits
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/_stcore/stream"

    def start(self, deadline: Deadline) -> "Server":
        self._log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none", *self.options],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + deadline.timeout(START_TIMEOUT_S)
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2)
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(f"streamlit did not start:\n{self.log_path.read_text()[-2000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        with self._stopping:
            process, self.process = self.process, None
            if process is not None:
                self._end(process)

    def _end(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)   # the group this script created for the server
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


# ---- memory and CPU --------------------------------------------------------------------------------------------

def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def rss_bytes(pid: int) -> int:
    """RSS of a process and its children: psutil when installed, else /proc/PID/status."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (/proc/PID/stat)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """The server's RSS every SAMPLE_S seconds, in a background thread."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self._stop.wait(SAMPLE_S)

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class CpuWindow:
    """CPU used by the server, by this client and by the rest of the machine between ``start`` and ``stop``."""

    def __init__(self, pid: int):
        self.pid = pid
        self.t0, self.machine0, self.server0, self.client0 = (time.monotonic(), machine_busy_seconds(),
                                                              cpu_seconds(pid), sum(os.times()[:2]))
        self.load_before = os.getloadavg()

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        machine = machine_busy_seconds() - self.machine0
        server = cpu_seconds(self.pid) - self.server0
        client = sum(os.times()[:2]) - self.client0
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 1), "cores": cores,
                "server_cpu_s": round(server, 1), "client_cpu_s": round(client, 1),
                "other_processes_cpu_s": round(max(0.0, machine - server - client), 1),
                "machine_busy_fraction": round(machine / (wall * cores), 2) if wall > 0 else None,
                "loadavg_before": [round(v, 2) for v in self.load_before],
                "loadavg_after": [round(v, 2) for v in os.getloadavg()]}


# ---- a Streamlit client over the websocket ---------------------------------------------------------------------

@dataclass
class Run:
    """One script run as the client saw it (times in seconds from sending the run)."""

    seconds: float = 0.0
    texts: list = field(default_factory=list)      # (t, element type, text)
    widgets: dict = field(default_factory=dict)    # user key -> element id
    charts: dict = field(default_factory=dict)     # user key -> figure spec (JSON text)
    errors: list = field(default_factory=list)
    first_progress_s: float | None = None
    first_teaching_s: float | None = None
    place_text: str = ""
    query_string: str = ""

    def has(self, kind: str, text: str) -> bool:
        return any(k == kind and text in t for _, k, t in self.texts)


class Client:
    """A browser tab, as far as the server can tell: one websocket, one session, script runs with widget states."""

    def __init__(self, ws_url: str, deadline: Deadline):
        from websockets.sync.client import connect

        self.deadline = deadline
        self.ws = connect(ws_url, subprotocols=["streamlit"], max_size=None,
                          open_timeout=deadline.timeout(30), close_timeout=2)
        self.page_hash, self.query_string = "", ""

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass

    def run(self, page_name: str = "", widgets: list | None = None, timeout: float = RUN_TIMEOUT_S) -> Run:
        """Send a rerun (the first one of a page by its URL path, later ones with the page's hash and the changed
        widgets) and read the stream until the script has finished successfully."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        back = BackMsg()
        state = back.rerun_script
        state.query_string = self.query_string
        state.page_name = page_name
        if self.page_hash:
            state.page_script_hash = self.page_hash
        for widget in widgets or []:
            state.widget_states.widgets.append(widget)
        run, start = Run(), time.monotonic()
        end = start + self.deadline.timeout(timeout)
        self.ws.send(back.SerializeToString())
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.deadline.timeout(1)   # raises when the overall deadline is the reason
                raise TimeoutError(f"the page did not finish within {timeout:.0f} s")
            msg = ForwardMsg()
            try:
                msg.ParseFromString(self.ws.recv(timeout=left))
            except TimeoutError:
                self.deadline.timeout(1)   # raises when the overall deadline is the reason
                raise TimeoutError(f"the page did not finish within {timeout:.0f} s") from None
            t = time.monotonic() - start
            kind = msg.WhichOneof("type")
            if kind == "navigation":
                self.page_hash = msg.navigation.page_script_hash
            elif kind == "page_info_changed":
                self.query_string = run.query_string = msg.page_info_changed.query_string
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                self._element(run, t, msg.delta.new_element)
            elif kind == "script_finished" and msg.script_finished == FINISHED_OK:
                run.seconds = t
                return run

    @staticmethod
    def _element(run: Run, t: float, element) -> None:
        kind = element.WhichOneof("type")
        sub = getattr(element, kind)
        element_id = getattr(sub, "id", "") if kind != "exception" else ""
        if element_id:
            run.widgets[element_id.rsplit("-", 1)[-1]] = element_id   # ids end with "-<user key>"
        if kind == "plotly_chart":
            run.charts[element_id.rsplit("-", 1)[-1]] = sub.spec
            return
        text = {"markdown": "body", "heading": "body", "alert": "body", "progress": "text", "text": "body",
                "exception": "message"}.get(kind)
        if not text:
            return
        value = getattr(sub, text)
        run.texts.append((t, kind, value))
        if kind == "exception" or (kind == "alert" and sub.format == 1):   # Alert.Format.ERROR
            run.errors.append(value)
        if kind == "progress":
            run.first_progress_s = t if run.first_progress_s is None else run.first_progress_s
            if value.startswith("Teaching") and run.first_teaching_s is None:
                run.first_teaching_s = t
        if kind == "alert" and "ahead of yours" in value and not run.place_text:
            run.place_text = value


def widget(element_id: str, **value):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=element_id, **value)


def chart_points(spec: str) -> list[dict]:
    """Every model point of a plotly figure, as the browser reports a clicked one (curve, index, x, y, customdata)."""
    import numpy as np

    def values(v):
        if isinstance(v, dict) and "bdata" in v:   # plotly's typed arrays
            return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
        return list(v or [])

    points = []
    for curve, trace in enumerate(json.loads(spec).get("data", [])):
        custom = trace.get("customdata")
        if not custom:
            continue
        xs, ys = values(trace.get("x")), values(trace.get("y"))
        for i, data in enumerate(custom):
            if isinstance(data, (list, tuple)) and data and data[0]:
                point = {"curve_number": curve, "point_number": i, "point_index": i, "x": xs[i], "y": ys[i],
                         "customdata": list(data)}
                if trace.get("legendgroup"):
                    point["legendgroup"] = trace["legendgroup"]
                points.append(point)
    return points


# ---- the sessions ----------------------------------------------------------------------------------------------

@dataclass
class MapSession:
    index: int
    model: str = ""
    open_s: float | None = None
    click_s: float | None = None
    open_at: float | None = None      # monotonic time the open was sent
    click_end: float | None = None
    answered: bool = False
    error: str = ""


@dataclass
class SearchSession:
    index: int
    open_s: float | None = None
    wall_s: float | None = None       # click to result
    queue_wait_s: float | None = None  # click to the first progress bar (the job runs)
    to_first_step_s: float | None = None  # click to "Teaching the base model your task"
    job: str = ""
    run_s: float | None = None        # the server log's "done after"
    wait_from_log_s: float | None = None  # queued -> done in the log, less run_s
    place_text: str = ""
    clicked_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    answered: bool = False
    error: str = ""


class Countdown:
    """Counts sessions that are ready (or failed: they count too, so that nobody waits for them)."""

    def __init__(self, n: int):
        self.n, self._cond = n, threading.Condition()

    def arrive(self) -> None:
        with self._cond:
            self.n -= 1
            self._cond.notify_all()

    def wait(self, deadline: Deadline, most: float) -> None:
        end = time.monotonic() + deadline.timeout(most)
        with self._cond:
            while self.n > 0 and time.monotonic() < end:
                self._cond.wait(timeout=0.5)
                deadline.timeout(1)


def wait_for(event: threading.Event | None, deadline: Deadline) -> None:
    while event is not None and not event.wait(timeout=0.5):
        deadline.timeout(1)


def map_session(url: str, deadline: Deadline, s: MapSession, go: threading.Event | None = None,
                connected: Countdown | None = None) -> MapSession:
    client = None
    try:
        try:
            client = Client(url, deadline)
        finally:
            if connected is not None:
                connected.arrive()
        wait_for(go, deadline)
        s.open_at = time.monotonic()
        opened = client.run("")
        s.open_s = opened.seconds
        if opened.errors:
            raise RuntimeError(f"error on the map: {opened.errors[0][:200]}")
        if MAP_CHART not in opened.charts:
            raise RuntimeError("the map page sent no map")
        points = chart_points(opened.charts[MAP_CHART])
        point = points[(7 * s.index) % len(points)]
        s.model = point["customdata"][0]
        selection = {"selection": {"points": [point], "point_indices": [point["point_index"]], "box": [],
                                   "lasso": []}}
        clicked = client.run(widgets=[widget(opened.widgets[MAP_CHART], string_value=json.dumps(selection))])
        s.click_s, s.click_end = clicked.seconds, time.monotonic()
        if clicked.errors:
            raise RuntimeError(f"error after the click: {clicked.errors[0][:200]}")
        from core.textio import markdown_literal  # core is importable once main() has set the path

        s.answered = clicked.has("markdown", MAP_TEXT) and clicked.has("heading", markdown_literal(s.model))
        if not s.answered:
            s.error = f"no '{MAP_TEXT}' for {s.model} after the click"
    except Exception as exc:  # noqa: BLE001 - recorded: a session that failed is what the test reports
        s.error = s.error or f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            client.close()
    return s


def search_session(url: str, deadline: Deadline, s: SearchSession, steps: int, timeout: float,
                   ready: Countdown | None = None, click: threading.Event | None = None) -> SearchSession:
    client = None
    try:
        try:
            client = Client(url, deadline)
            opened = client.run("find")
        finally:
            if ready is not None:
                ready.arrive()
        s.open_s = opened.seconds
        if opened.errors:
            raise RuntimeError(f"error on the Find page: {opened.errors[0][:200]}")
        wait_for(click, deadline)
        s.clicked_at = time.monotonic()
        done = client.run("find", [widget(opened.widgets[FIND_STEPS], int_value=steps),
                                   widget(opened.widgets[FIND_GO], trigger_value=True)], timeout=timeout)
        s.finished_at = time.monotonic()
        s.wall_s = done.seconds
        s.queue_wait_s, s.to_first_step_s, s.place_text = done.first_progress_s, done.first_teaching_s, done.place_text
        if s.queue_wait_s is not None:
            s.started_at = s.clicked_at + s.queue_wait_s
        match = re.search(r"find_job=([0-9a-f]{32})", done.query_string)
        s.job = match.group(1)[:8] if match else ""
        if done.errors:
            raise RuntimeError(f"error in the search: {done.errors[0][:200]}")
        s.answered = done.has("heading", FIND_TEXT)
        if not s.answered:
            s.error = f"no '{FIND_TEXT}' after the search"
    except Exception as exc:  # noqa: BLE001
        s.error = s.error or f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            client.close()
    return s


def job_log(text: str) -> dict[str, dict]:
    """Job id (8 characters) -> {"queued": datetime, "done": datetime, "run_s": float} from the server's log."""
    jobs: dict[str, dict] = {}
    for line in text.splitlines():
        m = JOB_LINE.match(line)
        if not m:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        entry = jobs.setdefault(m.group(2), {})
        if m.group(4) == "queued":
            entry["queued"] = when
        else:
            entry["done"], entry["state"], entry["run_s"] = when, m.group(4), float(m.group(5))
    return jobs


def add_log(searches: list[SearchSession], log: str) -> None:
    jobs = job_log(log)
    for s in searches:
        entry = jobs.get(s.job, {})
        if "run_s" in entry:
            s.run_s = entry["run_s"]
            if "queued" in entry:
                queued_to_done = (entry["done"] - entry["queued"]).total_seconds()
                s.wait_from_log_s = round(max(0.0, queued_to_done - entry["run_s"]), 2)


# ---- the phases ------------------------------------------------------------------------------------------------

def one_session(server: Server, deadline: Deadline, steps: int, search_timeout: float) -> tuple[MapSession,
                                                                                               SearchSession]:
    """One map session, then one search, alone on the server."""
    m = map_session(server.ws_url, deadline, MapSession(0))
    s = search_session(server.ws_url, deadline, SearchSession(0), steps, search_timeout)
    add_log([s], server.log_text())
    return m, s


def load_phase(server: Server, deadline: Deadline, args) -> tuple[list[MapSession], list[SearchSession]]:
    """The searches open the Find page and click together; the map sessions connect, then all open the map at once
    (about a second after the clicks), and click a point each."""
    maps = [MapSession(i) for i in range(args.sessions)]
    searches = [SearchSession(i) for i in range(args.searches)]
    search_timeout = max(60.0, deadline.left())
    ready, connected = Countdown(args.searches), Countdown(args.sessions)
    click, go = threading.Event(), threading.Event()
    threads = [threading.Thread(target=search_session, args=(server.ws_url, deadline, s, args.steps, search_timeout,
                                                             ready, click), name=f"search-{s.index}", daemon=True)
               for s in searches]
    threads += [threading.Thread(target=map_session, args=(server.ws_url, deadline, m, go, connected),
                                 name=f"map-{m.index}", daemon=True) for m in maps]
    for t in threads:
        t.start()
    connected.wait(deadline, 120)    # every map session has its websocket
    ready.wait(deadline, 300)        # every search has its Find page open
    click.set()                      # the searches click together
    if args.searches:
        time.sleep(deadline.timeout(1.0))  # the first search runs when the maps open
    go.set()                         # the map sessions open the map together
    for t in threads:
        while t.is_alive():          # short joins: Ctrl-C reaches the main thread
            t.join(timeout=0.5)
            deadline.timeout(1)
    add_log(searches, server.log_text())
    return maps, searches


# ---- the report ------------------------------------------------------------------------------------------------

def stats(values: list[float]) -> dict:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.asarray(values)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3)}


def mb(n: int) -> float:
    return round(n / 2**20, 1)


def during_search(m: MapSession, searches: list[SearchSession]) -> bool:
    """Whether some search job was running during the whole of this map session (open to click's end)."""
    if m.open_at is None or m.click_end is None:
        return False
    return any(s.started_at is not None and s.started_at <= m.open_at and (s.finished_at or 1e18) >= m.click_end
               for s in searches)


def fmt(v, unit: str = " s", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def report(result: dict) -> str:
    load, lines = result["load"], []
    config = result["config"]
    lines.append(f"Load test: {config['sessions']} map sessions + {config['searches']} task search(es) of "
                 f"{config['steps']} steps, one server, Streamlit websocket clients"
                 + (f"; server options {' '.join(config['streamlit_options'])}" if config["streamlit_options"] else "")
                 + (f"; OMP_NUM_THREADS={config['server_threads']}" if config["server_threads"] else ""))
    if result.get("solo"):
        solo = result["solo"]
        lines.append(f"  solo (one session alone): map open {fmt(solo['map_open_s'])}, click {fmt(solo['map_click_s'])}"
                     f", search {fmt(solo['search_wall_s'])} (run {fmt(solo['search_run_s'])}), peak RSS "
                     f"{solo['peak_rss_mb']} MB")
    lines.append("")
    lines.append(f"  {'map page render':<28}{'n':>4}{'p50':>9}{'p95':>9}{'max':>9}")
    for name in ("map_open", "map_click", "map_all"):
        st = load[name]
        lines.append(f"  {name.replace('_', ' '):<28}{st['n']:>4}{fmt(st['p50']):>9}{fmt(st['p95']):>9}"
                     f"{fmt(st['max']):>9}")
    lines.append(f"  maps drawn while a search was running: {load['maps_during_search']}/{len(load['maps'])}")
    lines.append("")
    lines.append(f"  {'search':<8}{'wall':>9}{'queue wait':>12}{'run (log)':>11}{'wait (log)':>12}"
                 "  answered  place shown")
    for s in load["searches"]:
        lines.append(f"  {s['index']:<8}{fmt(s['wall_s'], ' s', 1):>9}{fmt(s['queue_wait_s'], ' s', 1):>12}"
                     f"{fmt(s['run_s'], ' s', 1):>11}{fmt(s['wait_from_log_s'], ' s', 1):>12}  "
                     f"{'yes' if s['answered'] else 'NO':<9} {s['place_text'][:60] or '-'}")
    lines.append("")
    cpu = load["cpu"]
    lines.append(f"  CPU during the load phase ({cpu['wall_s']} s, {cpu['cores']} cores): server "
                 f"{cpu['server_cpu_s']} s"
                 f", this client {cpu['client_cpu_s']} s, other processes {cpu['other_processes_cpu_s']} s; "
                 f"machine busy {cpu['machine_busy_fraction']}; load average {cpu['loadavg_before'][0]} -> "
                 f"{cpu['loadavg_after'][0]}")
    for m in load["maps"]:
        if m["error"]:
            lines.append(f"  map session {m['index']}: {m['error']}")
    for s in load["searches"]:
        if s["error"]:
            lines.append(f"  search {s['index']}: {s['error']}")
    lines.append("")
    lines.append(f"  {'target':<44}{'measured':>18}  result")
    for name, t in result["targets"].items():
        verdict = "n/a" if t["pass"] is None else "PASS" if t["pass"] else "FAIL"
        lines.append(f"  {t['what']:<44}{t['measured']:>18}  {verdict}")
    return "\n".join(lines)


def summarise(args, maps, searches, solo, load_peak, cpu) -> dict:
    map_open, map_click = stats([m.open_s for m in maps]), stats([m.click_s for m in maps])
    served = sum(m.answered for m in maps) + sum(s.answered for s in searches)
    total = len(maps) + len(searches)
    load = {"map_open": map_open, "map_click": map_click,
            "map_all": stats([m.open_s for m in maps] + [m.click_s for m in maps]),
            "maps_answered": sum(m.answered for m in maps), "searches_answered": sum(s.answered for s in searches),
            "maps_during_search": sum(during_search(m, searches) for m in maps),
            "peak_rss_mb": mb(load_peak), "cpu": cpu,
            "maps": [asdict(m) for m in maps], "searches": [asdict(s) for s in searches]}
    for entry in load["maps"] + load["searches"]:
        for key in ("open_at", "click_end", "clicked_at", "started_at", "finished_at"):
            entry.pop(key, None)
        for key, value in entry.items():
            if isinstance(value, float):
                entry[key] = round(value, 3)
    ratio = round(load_peak / solo["peak_rss"], 2) if solo and solo.get("peak_rss") else None
    worst_p95 = max((v for v in (map_open["p95"], map_click["p95"]) if v is not None), default=None)
    targets = {
        "all_served": {"what": f"every session got its answer ({total})", "measured": f"{served}/{total}",
                       "pass": served == total},
        "memory": {"what": f"peak RSS <= {MEMORY_TARGET:g}x one session's", "measured": "-" if ratio is None else
                   f"{mb(load_peak):.0f}/{solo['peak_rss_mb']:.0f} MB = {ratio:.2f}x",
                   "pass": None if ratio is None else ratio <= MEMORY_TARGET},
        "map_p95": {"what": f"map p95 <= {MAP_TARGET_S:g} s (opens and clicks)", "measured":
                    f"{fmt(map_open['p95'])} / {fmt(map_click['p95'])}",
                    "pass": None if worst_p95 is None else worst_p95 <= MAP_TARGET_S},
    }
    return {"when": datetime.now().isoformat(timespec="seconds"),
            "client": "Streamlit websocket protocol (streamlit.proto BackMsg/ForwardMsg), one thread per session",
            "config": {"sessions": args.sessions, "searches": args.searches, "steps": args.steps,
                       "server_threads": args.server_threads, "streamlit_options": args.st,
                       "catalog": str(args.catalog),
                       "warmup": not args.no_warmup, "solo": not args.no_solo,
                       "phases": "warm-up on server A (stopped); solo then load on a fresh server B"},
            "solo": None if not solo else {k: v for k, v in solo.items() if k != "peak_rss"},
            "load": load, "memory_ratio": ratio, "targets": targets,
            "pass": all(t["pass"] is not False for t in targets.values())}


# ---- main ------------------------------------------------------------------------------------------------------

def server_env(tmp: Path, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTA_ATLAS_")}
    env.update({"DELTA_ATLAS_CACHE": str(args.cache or tmp / "cache"), "DELTA_ATLAS_USER_DIR": str(tmp / "user"),
                "DELTA_ATLAS_DATA_DIR": str(tmp / "data"), "DELTA_ATLAS_ALLOWED_ROOTS": str(tmp / "allowed"),
                "HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", "PYTHONUNBUFFERED": "1"})
    if args.catalog:
        env["DELTA_ATLAS_CATALOG"] = str(Path(args.catalog).resolve())
    if args.server_threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):   # torch's intra-op threads follow OMP_NUM_THREADS
            env[name] = str(args.server_threads)
    for folder in ("data", "allowed"):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    return env


def wait_for_warm_up(server: Server, deadline: Deadline, most: float = 120) -> None:
    """The app compiles UMAP in a background thread after its first page (pages/parts/ui.py): wait for it to end, so
    that the load phase does not measure it (it holds the GIL for seconds)."""
    end = time.monotonic() + deadline.timeout(most)
    while time.monotonic() < end and not re.search(r"UMAP ready|UMAP warm-up failed", server.log_text()):
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20, help="map sessions (open the map, click a point)")
    parser.add_argument("--searches", type=int, default=3, help="task searches on the Find page, at the same time")
    parser.add_argument("--steps", type=int, default=None, help="finetuning steps of each search (default: the "
                        "pool's own, as the Find page starts with: its search.json)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up search")
    parser.add_argument("--port", type=int, default=None, help="the measured server's port (default: a free one)")
    parser.add_argument("--max-seconds", type=float, default=900, help="hard limit for the whole run: the server "
                        "is stopped and the run fails when it is reached")
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS/MKL_NUM_THREADS for the "
                        "server (torch's threads); default: unset (torch uses every core)")
    parser.add_argument("--st", action="append", default=[], metavar="OPTION=VALUE", help="a Streamlit option "
                        "for the server, e.g. --st runner.postScriptGC=false (repeatable)")
    parser.add_argument("--catalog", type=Path, default=None, help="the pool (default: the demo zoo)")
    parser.add_argument("--cache", type=Path, default=None, help="an engine cache to use instead of a fresh "
                        "temporary one (e.g. the tests' pool's own)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up phase")
    parser.add_argument("--no-solo", action="store_true", help="skip the solo phase (no memory ratio)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--log", type=Path, default=None, help="keep the measured server's log here")
    args = parser.parse_args(argv)
    from core.pool.folder import DEMO_CATALOG
    from core.reuse.task import task_steps

    args.catalog = args.catalog or DEMO_CATALOG
    if args.steps is None:
        args.steps = task_steps(args.catalog)      # what the Find page starts with on this pool
    if any("=" not in option for option in args.st):
        parser.error("--st takes OPTION=VALUE, e.g. runner.postScriptGC=false")
    if not (1 <= args.sessions <= 200 and 0 <= args.searches <= 20):
        parser.error("--sessions must be 1..200 and --searches 0..20 (a bounded load test)")

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    handlers = {}
    if threading.current_thread() is threading.main_thread():   # Ctrl-C and kill stop the server too
        handlers = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, interrupted)}
    deadline = Deadline(args.max_seconds)
    tmp = Path(tempfile.mkdtemp(prefix="delta-atlas-load-"))
    servers: list[Server] = []
    sampler = None
    # the watchdog: at the deadline every server is stopped, which ends every client's wait
    watchdog = threading.Timer(max(1.0, args.max_seconds), lambda: [s.stop() for s in list(servers)])
    watchdog.daemon = True
    watchdog.start()
    try:
        env = server_env(tmp, args)
        if not args.no_warmup:
            print("warm-up (untimed): server A, one map session and one search ...", flush=True)
            warm = Server(env, tmp / "warmup.log", options=args.st)
            servers.append(warm)
            warm.start(deadline)
            m, s = one_session(warm, deadline, args.warmup_steps, max(60.0, deadline.left()))
            if m.error or s.error:
                raise RuntimeError(f"the warm-up failed: {m.error or s.error}\n{warm.log_text()[-3000:]}")
            warm.stop()
        server = Server(env, tmp / "server.log", args.port, options=args.st)
        servers.append(server)
        print(f"server B on {server.url} ...", flush=True)
        server.start(deadline)
        sampler = Sampler(server.process.pid)
        solo = None
        if not args.no_solo:
            print("solo: one session opens the map, clicks a point and runs one search alone ...", flush=True)
            t0 = time.monotonic()
            m, s = one_session(server, deadline, args.steps, max(60.0, deadline.left()))
            if m.error or s.error:
                raise RuntimeError(f"the solo session failed: {m.error or s.error}\n{server.log_text()[-3000:]}")
            time.sleep(1.0)
            peak = sampler.peak(0, time.monotonic())   # since the server started: everything one session needed
            solo = {"map_open_s": round(m.open_s, 3), "map_click_s": round(m.click_s, 3),
                    "search_open_s": round(s.open_s, 3), "search_wall_s": round(s.wall_s, 2),
                    "search_run_s": s.run_s, "seconds": round(time.monotonic() - t0, 1),
                    "peak_rss": peak, "peak_rss_mb": mb(peak)}
        if solo is not None:
            wait_for_warm_up(server, deadline)
        print(f"load: {args.sessions} map sessions + {args.searches} searches of {args.steps} steps ...", flush=True)
        t0 = time.monotonic()
        cpu = CpuWindow(server.process.pid)
        maps, searches = load_phase(server, deadline, args)
        cpu = cpu.stop()
        load_peak = sampler.peak(t0, time.monotonic())
        result = summarise(args, maps, searches, solo, load_peak, cpu)
        print()
        print(report(result))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"\nwritten: {args.json}")
        return 0 if result["pass"] else 1
    except Exception as exc:
        if not isinstance(exc, Expired) and deadline.left() > 0:
            raise
        print(f"FAIL: the run took longer than --max-seconds {args.max_seconds:g}; the server was stopped",
              file=sys.stderr)
        return 2
    finally:
        watchdog.cancel()
        if sampler is not None:
            sampler.stop()
        for server in servers:
            server.stop()
        if args.log and (tmp / "server.log").is_file():
            args.log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp / "server.log", args.log)
        shutil.rmtree(tmp, ignore_errors=True)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
