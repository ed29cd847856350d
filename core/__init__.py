"""Delta Atlas engine: Delta Activations of finetuned LLMs, their map, task search and merging.

A plain Python library (no Streamlit); the command line is ``python -m core``.
"""
ENGINE_VERSION = "1"  # bump when a change alters computed vectors: it is part of every cache key

from core.errors import DeltaAtlasError  # noqa: E402

__all__ = ["ENGINE_VERSION", "DeltaAtlasError"]
