"""The engine: Delta Activations of a pool, fast, cached, on one machine or many.

``from core.engine import embed_catalog`` is the entry point; the modules are listed in ARCHITECTURE.md.
"""
from core.engine.embed import EmbedResult, Failure, embed_adapters, embed_catalog

__all__ = ["EmbedResult", "Failure", "embed_adapters", "embed_catalog"]
