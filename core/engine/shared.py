"""Base models loaded once per process and lent to one job at a time.

An app that serves many people would otherwise read the same base from disk for every task search, merge and
embedding run, and hold one copy per job in memory. :class:`SharedModels` keeps each base (keyed by folder, device
and dtype) loaded and lends it out under a per-base lock:

* work that only reads the base (the engine's probe passes, whose LoRA terms live in forward hooks that remove
  themselves) borrows the shared model with :meth:`SharedModels.lend`;
* work that changes weights or wraps modules (a finetune, a merge) asks for :meth:`SharedModels.private_copy`,
  a deep copy made from the loaded model instead of from disk.

When a lend ends, the model is checked: a forward hook left behind, an adapter layer PEFT did not strip, or a
parameter that asks for gradients means a borrower broke the rule, and the model is dropped (reloaded on next
use) rather than handed, changed, to the next job.
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from core.engine.loading import load_model

log = logging.getLogger(__name__)

MAX_MODELS = 2  # bases kept loaded at once; the least recently used beyond that is dropped


@dataclass
class _Loaded:
    model: torch.nn.Module
    tokenizer: object


class SharedModels:
    """A process-wide, thread-safe registry of loaded bases (one per folder, device and dtype)."""

    def __init__(self, max_models: int = MAX_MODELS):
        if max_models < 1:
            raise ValueError(f"max_models is {max_models}: keep at least one model.")
        self.max_models = max_models
        self._guard = threading.Lock()        # protects the registry itself, never held while loading
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._loaded: OrderedDict[tuple, _Loaded] = OrderedDict()
        self.loads = 0                        # models read from disk so far (a test and the load bench read it)

    @staticmethod
    def key(path: Path | str, device, dtype: torch.dtype) -> tuple[str, str, str]:
        return str(Path(path).resolve()), str(torch.device(device)), str(dtype)

    @contextmanager
    def lend(self, path: Path | str, device, dtype: torch.dtype,
             allow_pickle: bool = False) -> Iterator[tuple[torch.nn.Module, object]]:
        """(model, tokenizer) of the base at ``path``, loaded on first use, for the block's duration only. Other
        borrowers of the same base wait; the model is checked for leftovers when the block ends."""
        key = self.key(path, device, dtype)
        with self._key_lock(key):
            loaded = self._get(key, path, device, dtype, allow_pickle)
            try:
                yield loaded.model, loaded.tokenizer
            finally:
                problem = leftover(loaded.model)
                if problem:
                    log.warning("Base %s was changed by a job (%s): it is dropped and will be reloaded.", path, problem)
                    self.discard(path, device, dtype)

    def private_copy(self, path: Path | str, device, dtype: torch.dtype,
                     allow_pickle: bool = False) -> tuple[torch.nn.Module, object]:
        """A deep copy of the base (and of its tokenizer, which is not safe to share between threads) for work
        that changes the model: made from memory, without reading the disk again."""
        with self.lend(path, device, dtype, allow_pickle) as (model, tokenizer):
            private = copy.deepcopy(model)
        return private.requires_grad_(True), copy.deepcopy(tokenizer)    # as a fresh load: every weight trainable

    def discard(self, path: Path | str, device, dtype: torch.dtype) -> None:
        """Forget a base (it is reloaded on next use)."""
        with self._guard:
            self._loaded.pop(self.key(path, device, dtype), None)

    def loaded(self) -> list[tuple[str, str, str]]:
        """The (folder, device, dtype) of every base held now, least recently used first."""
        with self._guard:
            return list(self._loaded)

    # ---- internals ----
    def _key_lock(self, key: tuple) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def _get(self, key: tuple, path, device, dtype, allow_pickle: bool) -> _Loaded:
        with self._guard:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                return loaded
        model, tokenizer = load_model(Path(path), device, dtype, allow_pickle)   # slow: outside the registry lock
        model.requires_grad_(False)
        loaded = _Loaded(model, tokenizer)
        with self._guard:
            self.loads += 1
            self._loaded[key] = loaded
            while len(self._loaded) > self.max_models:
                dropped, _ = self._loaded.popitem(last=False)
                log.info("Dropped base %s from memory (more than %d loaded).", dropped[0], self.max_models)
        return loaded


def private_model(path: Path | str, device, dtype: torch.dtype, models: SharedModels | None = None):
    """(model, tokenizer) that the caller may change (train, wrap in PEFT): a copy of the base held by ``models``,
    or a fresh load from disk when there is no registry."""
    if models is None:
        return load_model(Path(path), device, dtype)
    return models.private_copy(path, device, dtype)


def leftover(model: torch.nn.Module) -> str:
    """What a borrower left on ``model`` ("" when nothing): hooks, adapter layers, or trainable parameters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if any(not _is_transformers_own(hook) for hook in hooks):
            return f"a forward hook on {name or 'the model'}"
        if isinstance(module, BaseTunerLayer):
            return f"an adapter layer at {name}"
    if any(p.requires_grad for p in model.parameters()):
        return "parameters that ask for gradients"
    return ""


def _is_transformers_own(hook) -> bool:
    """transformers installs hooks of its own on a model's first forward pass, to record the hidden states it is
    asked for; they stay, and change no number."""
    return "output_capturing_hook" in getattr(hook, "__qualname__", "")
