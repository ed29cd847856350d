"""The frozen lower layers' output, kept for the length of one task search.

A search runs the base's frozen lower layers over the same examples three times: teaching the base the task
(``train.TopLayers``: they run once, then only the top layers learn), reading the examples (core.reuse.fingerprints)
and measuring the closest models' loss (core.reuse.fit: adapters live in the top layers only). The token sequences
are the same, or the read's is one token shorter (it leaves out the end-of-answer token), so the three can share
one pass: :class:`LowerStates` keeps each sequence's output of the layers below ``start`` ([T, d], float32) and hands
it out again, also for a sequence that is a kept one less its last token (its first rows: under causal attention a
token's state never depends on the tokens after it). Both look-ups are dictionary hits, for a thousand examples
too. Exact up to float rounding; a sequence not kept is computed as
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
        self._longer: dict[tuple[int, str], dict[tuple[int, ...], tuple[int, ...]]] = {}   # ids less last -> ids

    def find(self, start: int, precision: str, ids: list[int]) -> torch.Tensor | None:
        """The kept state [len(ids), d] of ``ids`` below layer ``start``, from an equal sequence or from one that
        is ``ids`` and one token more; None when there is none."""
        key, where = tuple(ids), (start, precision)
        kept = self._kept.get(where, {})
        if key in kept:
            return kept[key]
        longer = self._longer.get(where, {}).get(key)
        return None if longer is None else kept[longer][: len(key)]

    def keep(self, start: int, precision: str, ids: list[int], state: torch.Tensor) -> None:
        """Keep ``state`` [len(ids), d] (detached), unless that would pass the byte bound."""
        size = state.numel() * state.element_size()
        if self.bytes + size > self.max_bytes:
            return
        key = tuple(ids)
        self._kept.setdefault((start, precision), {})[key] = state.detach()
        if len(key) > 1:
            self._longer.setdefault((start, precision), {})[key[:-1]] = key
        self.bytes += size

    def starts(self, precision: str) -> list[int]:
        """The layers above which states are kept in ``precision``, most sequences first."""
        held = [(len(v), start) for (start, p), v in self._kept.items() if p == precision and v]
        return [start for _, start in sorted(held, reverse=True)]
