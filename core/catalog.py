"""A pool of models, described by a CSV file a person can edit in a spreadsheet.

Required columns: ``name`` (unique), ``source`` (local folder or hub id, optionally ``id@revision``), ``kind``
(``lora``, ``full`` or ``auto``) and ``base`` (the base model's source). Every other column is a free label, carried
through to every output. Relative local paths are relative to the catalog file's folder.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import CatalogError

REQUIRED_COLUMNS = ("name", "source", "kind", "base")
KINDS = ("lora", "full", "auto")
BUILTIN_PREFIX = "builtin:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Source:
    """Where a model lives: a local folder, a hub id with an optional revision, or a built-in base
    (``builtin:<name>``, see :mod:`core.bases`)."""

    text: str                      # as written in the catalog
    local: Path | None = None      # resolved folder when local
    hub_id: str | None = None
    revision: str | None = None
    builtin: str | None = None     # name of a built-in base

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
    root = Path(root) if root is not None else Path.cwd()
    path = Path(text).expanduser()
    candidate = path if path.is_absolute() else root / path
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or candidate.exists()
    if looks_like_path or not HUB_ID.match(text):
        return Source(text=text, local=candidate.resolve())
    hub_id, _, revision = text.partition("@")
    return Source(text=text, hub_id=hub_id, revision=revision or None)


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


def read_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog CSV. Everything is checked before any model is touched."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"Catalog file {path} does not exist: give the path of a CSV file with columns "
                           f"{', '.join(REQUIRED_COLUMNS)}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"Catalog {path} is not UTF-8 text ({exc.reason}): save it as CSV UTF-8.") from None
    rows = list(csv.reader(text.splitlines()))
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
    entries, seen = [], {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CatalogError(f"Catalog {path}, line {lineno}: {len(row)} fields but the header has {len(header)}; "
                               "quote values that contain commas.")
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
        entries.append(ModelEntry(
            name=name, kind=kind, line=lineno,
            source=parse_source(record["source"], path.parent),
            base=parse_source(record["base"], path.parent),
            labels={c: record[c] for c in labels},
        ))
    if not entries:
        raise CatalogError(f"Catalog {path} lists no model: add one row per model under the header.")
    return Catalog(entries=entries, label_columns=labels, path=path)


def write_catalog(rows: list[dict], path: str | Path) -> Path:
    """Write catalog rows (dicts with at least the required columns) as CSV, atomically."""
    path = Path(path)
    frame = pd.DataFrame(rows)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(f"Cannot write catalog {path}: rows lack column(s) {', '.join(missing)}.")
    frame = frame[[*REQUIRED_COLUMNS, *[c for c in frame.columns if c not in REQUIRED_COLUMNS]]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
