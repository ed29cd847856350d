"""How a search's, a merge's or a reference build's heavy steps run — not what they compute — as one typed object
that travels through their helpers instead of three loose keyword arguments."""
from __future__ import annotations

from dataclasses import dataclass

from core.progress import ProgressFn


@dataclass(frozen=True)
class Run:
    """``device``: "cpu", "cuda", "mps" or None (the best there is); ``progress``: where progress reports go (None:
    nowhere); ``models``: a ``core.engine.shared.SharedModels`` lending bases from memory (None: load from disk);
    ``kept``: a ``core.reuse.lower_states.LowerStates`` that a search's stages share (None: each runs its own)."""

    device: object = None
    progress: ProgressFn | None = None
    models: object = None
    kept: object = None


LOCAL = Run()   # the default: the best device, no progress, bases loaded from disk
