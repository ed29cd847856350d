"""A pool of models, described by a CSV file a person can edit in a spreadsheet.

Required columns: ``name`` (unique), ``source`` (local folder or hub id, optionally ``id@revision``), ``kind``
(``lora``, ``full`` or ``auto``) and ``base`` (the base model's source). Every other column is a free label, carried
through to every output. Relative local paths are relative to the catalog file's folder.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import CatalogError, ModelSourceError
from core.textio import file_problem, read_text, spreadsheet_safe, unescape, unescape_frame

REQUIRED_COLUMNS = ("name", "source", "kind", "base")
RESERVED_COLUMNS = {"vector", "origin", "similarity", "cluster", "x", "y"}   # the engine's and the app's own
KINDS = ("lora", "full", "auto")
BUILTIN_PREFIX = "builtin:"
MAX_CATALOG_BYTES = 20 * 2**20   # some 100,000 models
# A hub id as the Hugging Face Hub accepts it: organisation/name, each 1-96 of [A-Za-z0-9_.-] starting and ending with
# a letter, digit or '_', with no '..' or '--'; optionally @revision (a branch, tag or commit: parts joined by '/').
_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"^{_PART}/{_PART}(?:@[\w.-]+(?:/[\w.-]+)*)?$", re.ASCII)
HUB_ID_HELP = "write it as organisation/model, e.g. ASethi04/llama-3.1-8b-gsm8k-first (optionally @revision)"


def hub_id_problem(text: str) -> str | None:
    """Why ``text`` is not a hub id (``org/name`` or ``org/name@revision``), in a few words; None when it is one."""
    hub_id, at, revision = text.partition("@")
    if ".." in text:
        return "'..' is not allowed in a hub id or revision"
    if "--" in hub_id:
        return "'--' is not allowed in a hub id"
    if hub_id.count("/") != 1:
        return "it needs exactly one '/', between the organisation and the model name"
    if at and not revision:
        return "nothing follows '@'; give a branch, tag or commit, or leave '@' out"
    if len(revision) > 200:
        return "the revision is over 200 characters"
    if any(len(part) > 96 for part in hub_id.split("/")):
        return "the organisation or model name is over 96 characters"
    if not HUB_ID.fullmatch(text):
        return ("only letters, digits, '-', '_' and '.' are allowed, and each name starts and ends with a letter or "
                "digit")
    return None


def check_hub_id(text: str) -> str:
    """``text`` stripped when it is a hub id; else a :class:`ModelSourceError` that says what is wrong with it."""
    problem = hub_id_problem(text.strip())
    if problem:
        raise ModelSourceError(f"{text!r} is not a hub id ({problem}): {HUB_ID_HELP}.")
    return text.strip()


@dataclass(frozen=True)
class Source:
    """Where a model lives: a local folder, a hub id with an optional revision, or a built-in base
    (``builtin:<name>``, see :mod:`core.engine.bases`)."""

    text: str                      # as written in the catalog
    local: Path | None = None      # resolved folder when local
    hub_id: str | None = None
    revision: str | None = None
    builtin: str | None = None     # name of a built-in base
    hub_problem: str | None = None  # a missing local path that reads like a hub id: why it is not one

    def missing_hint(self) -> str:
        """What to add to "folder not found" where the text may have been meant as a hub id."""
        return f" If {self.text!r} was meant as a hub id, it is not one: {self.hub_problem}." if self.hub_problem else ""

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.text


def parse_source(text: str, root: Path | None = None) -> Source:
    """Resolve ``text`` against ``root``: an existing folder wins, then a hub id, then a (missing) local path.

    A missing local folder is still returned as local so that the error later says "folder not found".
    """
    text = text.strip()
    if text.startswith(BUILTIN_PREFIX):
        return Source(text=text, builtin=text.removeprefix(BUILTIN_PREFIX))
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ModelSourceError(f"Model source {text!r} holds a control character (a NUL byte, tab or line break): "
                               "write the folder path or hub id on one line, without them.")
    root = Path(root) if root is not None else Path.cwd()
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~someone who is not a user here
        raise ModelSourceError(f"Model source {text!r} starts with ~ but names no user of this machine: write the "
                               "full path of the folder.") from None
    candidate = path if path.is_absolute() else root / path
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or _exists(candidate)
    if not looks_like_path and "@" in text:  # meant as hub id@revision
        check_hub_id(text)
    if looks_like_path or (problem := hub_id_problem(text)):
        meant_as_hub = not looks_like_path and text.count("/") == 1
        try:
            return Source(text=text, local=candidate.resolve(), hub_problem=problem if meant_as_hub else None)
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long for the file system
            raise ModelSourceError(f"Model source {text!r} cannot be resolved as a folder ({exc}): fix the "
                                   "path.") from None
    hub_id, _, revision = text.partition("@")
    return Source(text=text, hub_id=hub_id, revision=revision or None)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name longer than the file system allows
        return False


@dataclass(frozen=True)
class ModelEntry:
    """One row of a catalog."""

    name: str
    source: Source
    kind: str
    base: Source
    labels: dict = field(default_factory=dict)
    line: int = 0  # line number in the CSV file (header is line 1)


@dataclass
class Catalog:
    entries: list[ModelEntry]
    label_columns: list[str]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> ModelEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        known = ", ".join(self.names[:8]) + (" ..." if len(self.entries) > 8 else "")
        raise CatalogError(f"Model {name!r} is not in the catalog {self.path or ''}: known names are {known}.")

    def by_base(self) -> dict[str, list[ModelEntry]]:
        """Entries grouped by the base they are embedded against, in catalog order."""
        groups: dict[str, list[ModelEntry]] = {}
        for entry in self.entries:
            groups.setdefault(str(entry.base), []).append(entry)
        return groups

    def labels_frame(self) -> pd.DataFrame:
        """One row per model: ``name`` and every label column (strings), in catalog order."""
        rows = [{"name": e.name, **e.labels} for e in self.entries]
        return pd.DataFrame(rows, columns=["name", *self.label_columns])

    def align(self, table: pd.DataFrame, source) -> pd.DataFrame:
        """A vector table read from ``source``, checked against this catalog before any ranking, report or map:
        every model it holds must be one of the catalog's, and its labels become the catalog's (the catalog is
        what people edit; a vector file may be older). Rows keep the table's order."""
        known = set(self.names)
        unknown = [str(n) for n in table["name"] if str(n) not in known]
        if unknown:
            listed = ", ".join(repr(n) for n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise CatalogError(f"The vector file {source} holds {len(unknown)} model(s) that catalog {self.path} "
                               f"does not list ({listed}): it was made for another catalog. Recompute it with "
                               f"`python -m core embed --catalog {self.path}`, or add those models to the catalog.")
        names = table[["name"]].astype(str)
        return names.assign(vector=table["vector"].to_numpy()).merge(self.labels_frame(), on="name", how="left",
                                                                      sort=False)


def read_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog CSV. Everything is checked before any model is touched."""
    path = Path(path)
    if problem := file_problem(path):
        raise CatalogError(f"Catalog file {path} {problem}: give the path of a CSV file with columns "
                           f"{', '.join(REQUIRED_COLUMNS)}.")
    text = read_text(path, CatalogError, MAX_CATALOG_BYTES, "split the pool into several catalogs.",
                     "save the catalog as CSV UTF-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines, start = [], [], 1   # each row with the line it starts on (a quoted cell may hold line breaks)
    try:
        for row in reader:
            rows.append([unescape(cell) for cell in row])
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise CatalogError(f"Catalog {path}, line {start}: not valid CSV ({exc}); check the quotes on that line (a "
                           "cell that opens a quote must close it).") from None
    if not rows:
        raise CatalogError(f"Catalog {path} is empty: the first line must name the columns {', '.join(REQUIRED_COLUMNS)}.")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"Catalog {path}, line 1: missing column(s) {', '.join(missing)}; "
                           f"the header must include {', '.join(REQUIRED_COLUMNS)}.")
    blank = [i + 1 for i, h in enumerate(header) if not h]
    if blank:
        raise CatalogError(f"Catalog {path}, line 1: column {blank[0]} has no name; name it or delete it.")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise CatalogError(f"Catalog {path}, line 1: column {dupes[0]!r} appears twice; keep one.")
    labels = [h for h in header if h not in REQUIRED_COLUMNS]
    reserved = [h for h in labels if h.strip().lower() in RESERVED_COLUMNS]
    if reserved:
        raise CatalogError(f"Catalog {path}, line 1: column {reserved[0]!r} is a name the app uses for its own data "
                           f"({', '.join(sorted(RESERVED_COLUMNS))}); rename that label column, e.g. to "
                           f"'{reserved[0]}_label'.")
    entries, seen, bases = [], {}, {}
    for lineno, row in zip(lines[1:], rows[1:]):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CatalogError(f"Catalog {path}, line {lineno}: {len(row)} fields but the header has {len(header)}; "
                               "quote values that contain commas, and close every quote you open.")
        record = {h: cell.strip() for h, cell in zip(header, row)}
        for column in REQUIRED_COLUMNS:
            if not record[column]:
                raise CatalogError(f"Catalog {path}, line {lineno}, column {column!r}: empty; every model needs a {column}.")
        name, kind = record["name"], record["kind"].lower()
        if name in seen:
            raise CatalogError(f"Catalog {path}, line {lineno}, column 'name': {name!r} already used on line "
                               f"{seen[name]}; names must be unique.")
        if kind not in KINDS:
            raise CatalogError(f"Catalog {path}, line {lineno}, column 'kind': unknown kind {record['kind']!r}; "
                               f"use one of {', '.join(KINDS)}.")
        seen[name] = lineno
        try:
            source = parse_source(record["source"], path.parent)
            if record["base"] not in bases:           # a pool has a handful of bases: resolve each once
                bases[record["base"]] = parse_source(record["base"], path.parent)
            base = bases[record["base"]]
        except ModelSourceError as exc:
            raise CatalogError(f"Catalog {path}, line {lineno}: {exc}") from None
        entries.append(ModelEntry(name=name, kind=kind, line=lineno, source=source, base=base,
                                  labels={c: record[c] for c in labels}))
    if not entries:
        raise CatalogError(f"Catalog {path} lists no model: add one row per model under the header.")
    return Catalog(entries=entries, label_columns=labels, path=path)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a catalog written by :func:`write_catalog`, as dicts of strings, unvalidated."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return unescape_frame(frame).to_dict("records")


def write_catalog(rows: list[dict], path: str | Path) -> Path:
    """Write catalog rows (dicts with at least the required columns) as CSV, atomically; a cell a spreadsheet would
    run as a formula is written with a ``'`` in front (see :mod:`core.textio`)."""
    path = Path(path)
    frame = pd.DataFrame(rows)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(f"Cannot write catalog {path}: rows lack column(s) {', '.join(missing)}.")
    frame = frame[[*REQUIRED_COLUMNS, *[c for c in frame.columns if c not in REQUIRED_COLUMNS]]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    spreadsheet_safe(frame).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def pool_base(catalog: Catalog, names: list[str]) -> Source:
    """The one base the ranked models share (a task can only be compared with models of its own base)."""
    bases = {str(e.base): e.base for e in catalog if e.name in set(names)} or {str(e.base): e.base for e in catalog}
    if len(bases) > 1:
        raise CatalogError(f"Catalog {catalog.path} mixes {len(bases)} bases ({', '.join(sorted(bases))}); "
                              "task search compares a task with models of one base: split the catalog per base.")
    return next(iter(bases.values()))
