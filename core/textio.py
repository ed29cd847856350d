"""Text a person gives or gets back: files and uploads decoded with a size cap, a binary check and the line and
column of a byte that is not UTF-8; and CSV cells made safe to open in a spreadsheet.

A CSV cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is a formula to Excel,
LibreOffice and Google Sheets: a label such as ``=HYPERLINK("http://evil.example", "click")`` typed into the app
would run when someone opens the exported file. Every CSV the engine writes goes through :func:`spreadsheet_safe`,
which puts a ``'`` in front of such cells (plain numbers such as ``-0.5`` are left alone); :func:`unescape` takes it
off again when the engine reads a CSV back.
"""
from __future__ import annotations

import re
import stat
from pathlib import Path

import pandas as pd

from core.errors import DeltaAtlasError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# -- in ----------------------------------------------------------------------------------------------------------
def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, in a few words ("does not exist", "is a folder, not a file", "is not
    a regular file ..."), or None when it is a regular file. A pipe or device would hang a read: refused here."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:                   # a link loop, a name too long, no permission
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def check_size(size: int, where: str, error: type[DeltaAtlasError], limit: int, fix: str) -> None:
    if size > limit:
        raise error(f"{where} is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:g} MiB: {fix}")


def decode_text(data: bytes, where: str, error: type[DeltaAtlasError], limit: int, too_big: str, fix: str) -> str:
    """``data`` as text, or ``error`` naming ``where`` (and the line at fault) when it is too big, binary or not
    UTF-8. ``too_big`` and ``fix`` say what to do in those cases. A UTF-8 byte-order mark is dropped."""
    check_size(len(data), where, error, limit, too_big)
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise error(f"{where}, line {line}: holds a NUL byte, so it looks like a binary (or UTF-16) file; {fix}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{where}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                    f"{fix}.") from None


def read_text(path: Path, error: type[DeltaAtlasError], limit: int, too_big: str, fix: str) -> str:
    """The text of the file ``path`` (its size checked before it is read), as :func:`decode_text`."""
    check_size(path.stat().st_size, str(path), error, limit, too_big)
    return decode_text(path.read_bytes(), str(path), error, limit, too_big, fix)


# -- out (and back) ----------------------------------------------------------------------------------------------
def formula_safe(value):
    """``value`` with a ``'`` in front when a spreadsheet would read it as a formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not NUMBER.match(value):
        return "'" + value
    return value


def unescape(value):
    """The cell :func:`formula_safe` was given (the ``'`` it added taken off)."""
    if isinstance(value, str) and value.startswith("'") and formula_safe(value[1:]) != value[1:]:
        return value[1:]
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` fit to write as CSV: every text cell and column name through :func:`formula_safe`."""
    frame = frame.rename(columns=formula_safe)
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        frame[text] = frame[text].map(formula_safe)
    return frame


def unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`spreadsheet_safe` for a frame read back with ``dtype=str``."""
    frame = frame.rename(columns=unescape)
    return frame.map(unescape) if len(frame.columns) else frame


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def markdown_literal(text) -> str:
    """``text`` (a model name, a label, a catalog's or the Hub's words) escaped so that a markdown renderer shows it
    as it is: no link, emphasis, heading, HTML or formula is made from it."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
