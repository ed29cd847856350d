"""Progress reporting: every long call takes ``progress: ProgressFn | None`` and calls it with a :class:`Progress`.

The CLI draws a text bar from it, the app a ``st.progress`` bar; the library itself never prints.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    done: int            # units finished so far (models, steps...)
    total: int           # units in all
    stage: str           # short name of the phase: "base", "adapters", "full", "finetune", "merge", "search"...
    item: str = ""       # what is running now, e.g. a model's name
    loss: float | None = None  # training / evaluation loss where there is one

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 0.0

    def describe(self) -> str:
        """A plain-words line for a person, e.g. 'adapters 3/30: legal-first'."""
        text = f"{self.stage} {self.done}/{self.total}"
        if self.item:
            text += f": {self.item}"
        if self.loss is not None:
            text += f" (loss {self.loss:.3f})"
        return text


ProgressFn = Callable[[Progress], None]


def report(progress: ProgressFn | None, *args, **kwargs) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(Progress(*args, **kwargs))


class TextBar:
    """A one-line progress bar on stderr for the CLI."""

    def __init__(self, stream=None, width: int = 30):
        self.stream, self.width = stream, width  # stream None: sys.stderr as it is when the bar draws

    def __call__(self, p: Progress) -> None:
        stream = self.stream or sys.stderr
        filled = int(self.width * p.fraction)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {p.describe()}"[:120]
        stream.write(line.ljust(120) + ("\n" if p.done >= p.total else ""))
        stream.flush()
