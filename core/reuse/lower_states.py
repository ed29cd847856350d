"""The frozen lower layers' output, kept for the length of one task search.

A search runs the base's frozen lower layers over the same examples three times: teaching the base the task
(``train.TopLayers``: they run once, then only the top layers learn), reading the examples (core.reuse.fingerprints)
and measuring the closest models' loss (core.reuse.fit: adapters live in the top layers only). The token sequences
are the same or one is the start of another (the read leaves out the end-of-answer token), so the three can share
one pass: :class:`LowerStates` keeps each sequence's output of the layers below ``start`` ([T, d], float32) and hands
it out again, also for a sequence that is the start of a kept one (its first rows: under causal attention a
token's state never depends on the tokens after it). Exact up to float rounding; a sequence not kept is computed as
before. Keyed by the first layer above and the compute precision, so that states made under bf16 autocast never
stand in for float32 ones.

    kept = LowerStates()
    TopLayers(model, start, encoded, pad_id, autocast, kept=kept)    # fills it, or takes from it
"""
from __future__ import annotations

import torch

MAX_BYTES = 256 * 2**20      # what one search may keep; past it, states are computed again instead of kept


class LowerStates:
    """{(start, precision): {token ids: [T, d] state}}, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._kept: dict[tuple[int, str], dict[tuple[int, ...], torch.Tensor]] = {}

    def find(self, start: int, precision: str, ids: list[int]) -> torch.Tensor | None:
        """The kept state [len(ids), d] of ``ids`` below layer ``start``, from an equal sequence or one that starts
        with ``ids``; None when there is none."""
        kept = self._kept.get((start, precision), {})
        key = tuple(ids)
        if key in kept:
            return kept[key]
        n = len(key)
        for seq, state in kept.items():
            if len(seq) > n and seq[:n] == key:
                return state[:n]
        return None

    def keep(self, start: int, precision: str, ids: list[int], state: torch.Tensor) -> None:
        """Keep ``state`` [len(ids), d] (detached), unless that would pass the byte bound."""
        size = state.numel() * state.element_size()
        if self.bytes + size > self.max_bytes:
            return
        self._kept.setdefault((start, precision), {})[tuple(ids)] = state.detach()
        self.bytes += size

    def starts(self, precision: str) -> list[int]:
        """The layers above which states are kept in ``precision``, most sequences first."""
        held = [(len(v), start) for (start, p), v in self._kept.items() if p == precision and v]
        return [start for _, start in sorted(held, reverse=True)]
