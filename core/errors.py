"""One error base class for the whole engine.

Every message names the value at fault and says what to do about it, so the CLI can print it as one line and the
app can show it with ``st.error`` without a traceback.
"""
from __future__ import annotations


class DeltaAtlasError(Exception):
    """Base class of every error the engine raises on purpose (bad input, bad model, bad file)."""


class CatalogError(DeltaAtlasError):
    """The catalog file is malformed: missing columns, duplicate names, unknown kind, bad path."""


class ModelSourceError(DeltaAtlasError):
    """A model source cannot be found, read or trusted (missing folder, unreachable hub id, pickle weights...)."""


class IncompatibleModelError(DeltaAtlasError):
    """A model does not fit its base (adapter for another base, other architecture, hidden size or tokenizer)."""


class ComputationError(DeltaAtlasError):
    """A computation produced something unusable (NaN activations, empty probe set)."""


class ExamplesError(DeltaAtlasError):
    """A file of task examples is unreadable or invalid."""


class MergeError(DeltaAtlasError):
    """Adapters cannot be merged as asked."""


class PathNotAllowedError(DeltaAtlasError):
    """A local path lies outside the folders the user allowed."""


class HubError(DeltaAtlasError):
    """The Hugging Face Hub cannot answer: no network, offline mode, rate limit, refused token, unknown base id."""
