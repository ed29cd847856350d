"""The user's own models: a catalog on disk that the app's "Add models" page grows and the map shows.

A user adds a model by hub id, by local folder, or by uploading a zipped adapter. Each addition is embedded right
away (against the base of the pool it joins) and only then written to ``<user dir>/catalog.csv`` and
``<user dir>/vectors.parquet``; a failed addition leaves both files, and the models folder, as they were.

Safety for a public deployment: local folders are read only under allowed roots (the user dir, plus the folders in
``DELTA_ATLAS_ALLOWED_ROOTS``, ``os.pathsep``-separated), after resolving symlinks and ``..``; uploads are size-capped,
extracted file by file with no absolute path, no ``..``, no symlink, no archive inside the archive, a cap on the
number of files and on the total unpacked size (as declared, then as really written), and weights in safetensors
only. The user folder has a disk budget, ``DELTA_ATLAS_USER_BUDGET_MB`` (default 4096 MB): an upload that would not
fit is refused before it is unpacked, and nothing is added while the folder is full.

Several sessions (threads, or server processes) may add and remove models at once: every read-modify-write of the
catalog and vector table holds a file lock (``<user dir>/.lock``), and each file is replaced atomically. An upload
gets its final folder name only in that same locked step, so a killed addition never leaves a model folder without
its catalog row; what a killed process leaves (``.upload-*`` folders, temporary files) is swept when a pool is opened
once it is older than :data:`STALE_AFTER_S`.
"""
from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import pandas as pd

from core.errors import DeltaAtlasError, ModelSourceError, PathNotAllowedError
from core.pool.catalog import REQUIRED_COLUMNS, Catalog, check_hub_id, read_catalog, read_rows, write_catalog
from core.pool.files import check_folder_files
from core.pool.vectors import read_vectors, write_vectors
from core.progress import ProgressFn

log = logging.getLogger(__name__)

USER_DIR_ENV = "DELTA_ATLAS_USER_DIR"
ALLOWED_ROOTS_ENV = "DELTA_ATLAS_ALLOWED_ROOTS"
BUDGET_ENV = "DELTA_ATLAS_USER_BUDGET_MB"
DEFAULT_BUDGET_MB = 4096             # the user folder on disk: every unpacked upload, catalog and vectors together
DEFAULT_USER_DIR = Path(__file__).resolve().parents[2] / "data" / "user"

# Upload limits, in one place.
MAX_ZIP_BYTES = 512 * 2**20          # the uploaded file itself; .streamlit/config.toml's server.maxUploadSize agrees
MAX_UNPACKED_BYTES = 2 * 2**30       # every file of the archive together, counted while extracting
MAX_FILES = 200
MAX_DEPTH = 12                       # folders inside the archive (a model folder is one or two deep)
MAX_NAME_BYTES = 255                 # one file or folder name, as most file systems allow
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".md", ".model", ".jinja", ".tiktoken")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

_WRITE_LOCK = threading.Lock()  # one read-modify-write of the user catalog at a time in this process...
LOCK_FILE = ".lock"             # ...and across processes: an flock on this file in the user folder
STALE_AFTER_S = 3600            # a temporary file or folder this old was left by a killed process
TEMPORARY = (".pending-*", ".*.tmp", "models/.upload-*")  # what an addition writes before it is done

EmbedFn = Callable[..., object]  # core.engine.embed.embed_catalog's signature: (catalog, *, progress=None, ...) -> EmbedResult


def user_dir() -> Path:
    """The folder of the user catalog: ``$DELTA_ATLAS_USER_DIR`` or ``data/user`` in the repository."""
    return Path(os.environ.get(USER_DIR_ENV) or DEFAULT_USER_DIR)


def allowed_roots(user_root: Path | None = None) -> list[Path]:
    """Folders a user may add local models from: the user dir and ``$DELTA_ATLAS_ALLOWED_ROOTS`` (resolved)."""
    roots = [Path(user_root or user_dir())]
    roots += [Path(p) for p in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [r.expanduser().resolve() for r in roots]


def budget_bytes() -> int:
    """The user folder's disk budget: ``$DELTA_ATLAS_USER_BUDGET_MB`` megabytes (default 4096)."""
    text = os.environ.get(BUDGET_ENV, "").strip() or str(DEFAULT_BUDGET_MB)
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not 0 <= megabytes < 2**40:
        raise DeltaAtlasError(f"{BUDGET_ENV}={text!r} is not a number of megabytes: the admin should set it to e.g. "
                              f"{DEFAULT_BUDGET_MB}.")
    return int(megabytes * 2**20)


def folder_bytes(folder: Path) -> int:
    """Bytes used by the files under ``folder`` (links are not followed; 0 when it does not exist)."""
    total = 0
    for top, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def check_local_path(path: str | Path, roots: list[Path]) -> Path:
    """``path`` resolved (symlinks and ``..`` followed) if it lies under one of ``roots``; else PathNotAllowedError."""
    text = str(path).strip()
    if not text:
        raise ModelSourceError("No folder given: type the path of the folder that holds the model's files.")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ModelSourceError(f"The folder {text!r} holds a control character (a NUL byte, tab or line break): type "
                               "its path on one line, without them.")
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # ~nobody, a symlink loop
        raise ModelSourceError(f"The folder {text!r} cannot be resolved ({exc}): type the full path of a real "
                               "folder.") from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        where = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(f"The folder {path} is outside the folders this app may read ({where}): copy the "
                                  f"model there, or ask the admin to add its folder to {ALLOWED_ROOTS_ENV}.")
    try:
        is_dir, exists = resolved.is_dir(), resolved.exists()
    except OSError as exc:  # a name longer than the file system allows
        raise ModelSourceError(f"The folder {text!r} cannot be read ({exc.strerror}): fix the path.") from None
    if exists and not is_dir:
        raise ModelSourceError(f"{path} is a file, not a folder: give the folder that holds the model's files "
                               "(adapter_config.json or config.json and the .safetensors weights).")
    if not is_dir:
        raise ModelSourceError(f"The folder {path} does not exist: give the folder that holds the model's files.")
    return resolved


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the user folder's write lock: one read-modify-write of its catalog and vectors at a time, across the
    threads of this process (a lock) and across processes (``fcntl.flock`` on ``root/.lock``)."""
    with _WRITE_LOCK:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)   # released when the file is closed, also by a killed process
            yield


def sweep_stale(root: Path, max_age_s: float = STALE_AFTER_S, patterns: tuple[str, ...] = TEMPORARY) -> list[Path]:
    """Delete what killed processes left under ``root`` (names matching ``patterns``, by default what an addition
    writes before it is done) once it is older than ``max_age_s`` seconds, as a fresh one may belong to a process
    still running; returns what was deleted."""
    removed, cutoff = [], time.time() - max_age_s
    for path in (p for pattern in patterns for p in root.glob(pattern)):
        try:
            if path.lstat().st_mtime >= cutoff:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:  # removed meanwhile, or not ours to remove
            log.debug("could not sweep %s: %s", path, exc)
            continue
        log.info("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


def safe_name(text: str) -> str:
    """A model name made from a folder, hub id or file name: letters, digits, '.', '_' and '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._")[:100]
    return name or "model"


class UserPool:
    """The user catalog in ``root`` (default :func:`user_dir`). ``embed`` defaults to ``core.engine.embed.embed_catalog``."""

    def __init__(self, root: str | Path | None = None, roots: list[Path] | None = None, embed: EmbedFn | None = None,
                 budget: int | None = None):
        self.root = Path(root) if root is not None else user_dir()
        self.roots = roots if roots is not None else allowed_roots(self.root)
        self.embed = embed
        self.budget = budget  # bytes; None: budget_bytes(), read when a model is added
        sweep_stale(self.root)

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.csv"

    @property
    def vectors_path(self) -> Path:
        return self.root / "vectors.parquet"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    # ---- reading -------------------------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """The catalog rows as dicts of strings ([] when the user has added nothing)."""
        if not self.catalog_path.is_file():
            return []
        return read_rows(self.catalog_path)

    def catalog(self) -> Catalog | None:
        return read_catalog(self.catalog_path) if self.rows() else None

    def vectors(self, base: str | Path | None = None) -> pd.DataFrame | None:
        """The user's vector table (only the models still in the catalog, and of ``base`` when given)."""
        rows = self.rows()
        if not rows or not self.vectors_path.is_file():
            return None
        if base is not None:
            wanted = str(Path(base).resolve()) if Path(str(base)).exists() else str(base)
            rows = [r for r in rows if r["base"] == wanted]
        table = read_vectors(self.vectors_path)
        table = table[table["name"].isin([r["name"] for r in rows])].reset_index(drop=True)
        return table if len(table) else None

    # ---- adding --------------------------------------------------------------------------------------------------

    def add_hub(self, hub_id: str, base: str | Path, name: str | None = None, kind: str = "auto",
                labels: dict | None = None, progress: ProgressFn | None = None, **embed_kwargs) -> pd.DataFrame:
        """Add a Hugging Face model by id (``org/name`` or ``org/name@revision``); returns its vector row."""
        hub_id = check_hub_id(hub_id)
        self.room()
        name = name or safe_name(hub_id.split("@")[0].split("/")[-1])
        return self._add(name, hub_id, kind, base, labels, progress, embed_kwargs)

    def add_local(self, folder: str | Path, base: str | Path, name: str | None = None, kind: str = "auto",
                  labels: dict | None = None, progress: ProgressFn | None = None, **embed_kwargs) -> pd.DataFrame:
        """Add a model folder on the server's disk (only under the allowed roots); it is read in place."""
        resolved = check_local_path(folder, self.roots)
        check_folder_files(resolved)
        self.room()
        name = name or safe_name(resolved.name)
        return self._add(name, str(resolved), kind, base, labels, progress, embed_kwargs)

    def add_zip(self, data: bytes, base: str | Path, name: str, kind: str = "auto", labels: dict | None = None,
                progress: ProgressFn | None = None, **embed_kwargs) -> pd.DataFrame:
        """Add an uploaded zip of a model folder (safetensors only); it is unpacked under ``models/<name>``."""
        self._check_new_name(name)
        room = self.room()
        staging = self.models_dir / f".upload-{uuid.uuid4().hex[:8]}"
        target = self.models_dir / name
        try:
            extract_zip(data, staging, room=room)
            self._check_free(target)
            return self._add(name, str(target.resolve()), kind, base, labels, progress, embed_kwargs, staging)
        finally:  # moved into place when added; else (also when the user leaves the page) nothing half-added stays
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Take ``name`` out of the user catalog (and delete its unpacked upload, if it was one)."""
        with locked(self.root):
            rows = self.rows()
            kept = [r for r in rows if r["name"] != name]
            if len(kept) == len(rows):
                raise DeltaAtlasError(f"{name!r} is not among your models.")
            source = next(r["source"] for r in rows if r["name"] == name)
            if self.vectors_path.is_file():
                table = read_vectors(self.vectors_path)
                write_vectors(table[table["name"] != name].reset_index(drop=True), self.vectors_path)
            if kept:
                write_catalog(kept, self.catalog_path)
            else:
                self.catalog_path.unlink()
        folder = (self.models_dir / name).resolve()
        if source == str(folder) and folder.is_dir():  # an upload we unpacked; never a folder the user pointed at
            shutil.rmtree(folder, ignore_errors=True)

    def room(self) -> int:
        """Bytes left in the user folder's disk budget; a :class:`DeltaAtlasError` when it is full."""
        budget = self.budget if self.budget is not None else budget_bytes()
        used = folder_bytes(self.root)
        if used >= budget:
            raise DeltaAtlasError(f"Your models folder {self.root} is full: it holds {_size(used)} of the "
                                  f"{_size(budget)} allowed. Remove some of your models first, or ask the admin to "
                                  f"raise {BUDGET_ENV}.")
        return budget - used

    # ---- internals -----------------------------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        if not NAME.match(name or ""):
            raise DeltaAtlasError(f"The name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                                  "(up to 100, starting with a letter or digit).")
        if name in {r["name"] for r in self.rows()}:
            raise DeltaAtlasError(f"You already added a model called {name!r}: choose another name or remove it first.")

    def _check_free(self, target: Path) -> None:
        if target.exists():
            raise DeltaAtlasError(f"A folder {target} is already there: choose another name.")

    def _add(self, name: str, source: str, kind: str, base: str | Path, labels: dict | None,
             progress: ProgressFn | None, embed_kwargs: dict, staging: Path | None = None) -> pd.DataFrame:
        """Embed one new model against ``base``; only when that works, write the vectors and then the catalog.
        ``staging``: an unpacked upload, embedded where it is and renamed to ``source`` with the catalog written."""
        self._check_new_name(name)
        base_text = str(Path(base).resolve()) if Path(str(base)).exists() else str(base)
        row = {"name": name, "source": source, "kind": kind, "base": base_text, **(labels or {})}
        self.root.mkdir(parents=True, exist_ok=True)
        pending = self.root / f".pending-{uuid.uuid4().hex[:8]}.csv"
        try:
            write_catalog([row if staging is None else {**row, "source": str(staging.resolve())}], pending)
            one = read_catalog(pending)  # validates the row exactly as any catalog
        finally:
            pending.unlink(missing_ok=True)
        one.path = self.catalog_path
        result = self._embed_fn()(one, progress=progress, **embed_kwargs)
        failures = list(getattr(result, "failures", []) or [])
        if failures or len(result.table) == 0:
            reason = failures[0].reason if failures else "no vector came back"
            raise ModelSourceError(f"{name} could not be embedded: {reason}")
        with locked(self.root):
            self._check_new_name(name)           # another session may have added it meanwhile
            if staging is not None:
                self._check_free(Path(source))
                staging.rename(source)
            try:
                old = read_vectors(self.vectors_path) if self.vectors_path.is_file() else None
                table = result.table if old is None else pd.concat([old[old["name"] != name], result.table],
                                                                    ignore_index=True)
                write_vectors(_strings(table), self.vectors_path)
                write_catalog(_fill([*self.rows(), row]), self.catalog_path)
            except BaseException:
                if staging is not None:
                    Path(source).rename(staging)  # removed by add_zip
                raise
        log.info("added %s (%s) to the user catalog %s", name, source, self.catalog_path)
        return result.table

    def _embed_fn(self) -> EmbedFn:
        if self.embed is None:
            from core.engine.embed import embed_catalog  # imported late: torch and transformers are heavy
            self.embed = embed_catalog
        return self.embed


def _fill(rows: list[dict]) -> list[dict]:
    """Give every row every column (labels differ between additions)."""
    columns = list(dict.fromkeys([*REQUIRED_COLUMNS, *(k for r in rows for k in r)]))
    return [{c: r.get(c, "") for c in columns} for r in rows]


def _strings(table: pd.DataFrame) -> pd.DataFrame:
    labels = [c for c in table.columns if c not in ("name", "vector")]
    table = table.copy()
    table[labels] = table[labels].fillna("").astype(str)
    return table


# ---- safe zip extraction -----------------------------------------------------------------------------------------

def extract_zip(data: bytes, out_dir: Path, room: int | None = None) -> Path:
    """Unpack an uploaded model folder into ``out_dir`` (which must not exist), refusing anything unsafe; ``room``
    is what is left of the user folder's disk budget (bytes).

    A single top-level folder in the archive is stripped, so both "zip of the folder" and "zip of its files" work.
    """
    if len(data) > MAX_ZIP_BYTES:
        raise ModelSourceError(f"The upload is {len(data) / 2**20:.0f} MB, over the {MAX_ZIP_BYTES // 2**20} MB limit: "
                               "upload the adapter only (not a full model), or add it by hub id.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise ModelSourceError("The upload is not a zip file (or it is damaged or cut short): zip the folder that "
                               "save_pretrained wrote, and upload it again.") from None
    every = [(info, _member_path(info)) for info in archive.infolist() if not info.is_dir()]
    members = [(info, path) for info, path in every if not _is_junk(path)]
    if every and not members:
        hidden = sorted({path.parts[0] for _, path in every if path.parts[0].startswith(".")})
        if hidden:
            raise ModelSourceError(f"Every file of the zip sits in the folder {hidden[0]!r}, whose name starts with a "
                                   "dot (a hidden folder, skipped like the files archivers add): rename the folder "
                                   "without the dot and zip it again.")
    if len(members) > MAX_FILES:
        raise ModelSourceError(f"The zip holds {len(members)} files, over the limit of {MAX_FILES}: zip only the model folder.")
    for info, path in members:
        _check_suffix(path)
        if info.flag_bits & 0x1:
            raise ModelSourceError(f"The zip entry {info.filename!r} is encrypted: zip the folder again without a "
                                   "password.")
    files, paths = [m[0] for m in members], [m[1] for m in members]
    _check_layout(paths)
    prefix = _common_folder(paths)
    if not any(p.suffix == ".safetensors" for p in paths):
        raise ModelSourceError("The zip holds no .safetensors file: save the model with safe_serialization=True "
                               "(pickle .bin weights are refused).")
    if not any(p.name in ("adapter_config.json", "config.json") for p in paths):
        raise ModelSourceError("The zip holds no adapter_config.json or config.json: zip the whole folder that "
                               "save_pretrained wrote.")
    limit = MAX_UNPACKED_BYTES if room is None else min(MAX_UNPACKED_BYTES, room)
    declared = sum(info.file_size for info in files)
    if declared > limit:                      # a zip bomb says so in its own directory: refused before any write
        raise _too_big(declared, room)
    out_dir.mkdir(parents=True)
    budget = limit
    for info, path in zip(files, paths):
        target = out_dir.joinpath(*path.parts[len(prefix):])
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(2**20):
                    budget -= len(chunk)
                    if budget < 0:            # the directory lied about the sizes
                        raise _too_big(None, room)
                    dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ModelSourceError(f"The zip entry {info.filename!r} is damaged ({exc}): zip the folder again and "
                                   "upload the new zip.") from None
        except NotImplementedError:
            raise ModelSourceError(f"The zip entry {info.filename!r} uses a compression this server cannot read: "
                                   "zip the folder again with ordinary (deflate) compression.") from None
        except OSError as exc:             # the disk is full, or the file system refuses the name
            raise ModelSourceError(f"The zip entry {info.filename!r} cannot be written here ({exc.strerror or exc}): "
                                   "free some disk space, or zip the folder again with shorter names.") from None
    return out_dir


def _check_layout(paths: list[PurePosixPath]) -> None:
    """Refuse what the disk cannot hold as the archive says: a name twice, a file and a folder of one name, names
    too long for a file system, folders nested too deep."""
    seen: set[PurePosixPath] = set()
    folders = {parent for path in paths for parent in path.parents if parent != PurePosixPath(".")}
    for path in paths:
        if path in seen:
            raise ModelSourceError(f"The zip holds {str(path)!r} twice: zip the folder again so that each file is in "
                                   "it once.")
        seen.add(path)
        if path in folders:
            raise ModelSourceError(f"The zip holds both a file and a folder named {str(path)!r}: rename one of them "
                                   "and zip the folder again.")
        if len(path.parts) > MAX_DEPTH:
            raise ModelSourceError(f"The zip entry {str(path)[:80]!r}... is nested {len(path.parts) - 1} folders deep; "
                                   f"the limit is {MAX_DEPTH}: zip the model folder itself, not a folder far above it.")
        if long := next((part for part in path.parts if len(part.encode()) > MAX_NAME_BYTES), None):
            raise ModelSourceError(f"The zip entry {long[:40]!r}... has a name of {len(long.encode())} bytes; the "
                                   f"limit is {MAX_NAME_BYTES}: rename it and zip the folder again.")


def _too_big(size: int | None, room: int | None) -> ModelSourceError:
    """Why an archive that unpacks to ``size`` bytes (None: to more than allowed) cannot be unpacked."""
    said = f" ({_size(size)})" if size is not None else ""
    if room is not None and room < MAX_UNPACKED_BYTES and (size is None or size <= MAX_UNPACKED_BYTES):
        return ModelSourceError(f"The zip unpacks to more than the {_size(room)} left in your models folder's disk "
                                f"budget{said}: remove some of your models first, or ask the admin to raise "
                                f"{BUDGET_ENV}.")
    return ModelSourceError(f"The zip unpacks to more than the {_size(MAX_UNPACKED_BYTES)} allowed{said}: upload the "
                            "adapter only (not a full model), or add it by hub id.")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or ModelSourceError if it is absolute, escapes with '..' or is a link."""
    raw = info.filename.replace("\\", "/")
    path = PurePosixPath(raw)
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in path.parts:
        raise ModelSourceError(f"The zip entry {info.filename!r} points outside the folder: rebuild the zip from "
                               "inside the model folder.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelSourceError(f"The zip entry {info.filename!r} is a symbolic link: zip real files only.")
    return path


def _is_junk(path: PurePosixPath) -> bool:
    """Files archivers add on their own (macOS resource forks, .DS_Store, other hidden files): skipped."""
    return path.parts[0] == "__MACOSX" or any(part.startswith(".") for part in path.parts)


def _check_suffix(path: PurePosixPath) -> None:
    if path.suffix.lower() in ARCHIVE_SUFFIXES:
        raise ModelSourceError(f"The zip entry {str(path)!r} is an archive inside the archive: upload one zip of the "
                               "model folder itself (unpack the inner archive first).")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelSourceError(f"The zip entry {str(path)!r} holds pickle weights, which can run code: save the "
                               "model with safe_serialization=True to get .safetensors files.")
    if path.suffix.lower() not in ALLOWED_SUFFIXES:
        raise ModelSourceError(f"The zip entry {str(path)!r} is not a model file (allowed: "
                               f"{', '.join(ALLOWED_SUFFIXES)}): zip only the model folder.")


def _common_folder(paths: list[PurePosixPath]) -> tuple[str, ...]:
    """The single top-level folder every path shares, if there is one (as path parts to strip)."""
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in paths):
        return (tops.pop(),)
    return ()
