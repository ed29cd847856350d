"""The engine: Delta Activations of a pool, fast, cached, on one machine or many.

``from core.engine import embed_catalog`` is the entry point; the modules are listed in ARCHITECTURE.md. The entry
points are looked up on first use (PEP 562), so that importing a light module of the engine (probes, cache) does not
import torch.
"""
from __future__ import annotations

__all__ = ["EmbedResult", "Failure", "embed_adapters", "embed_catalog"]


def __getattr__(name: str):
    if name in __all__:
        from core.engine import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'core.engine' has no attribute {name!r}")
