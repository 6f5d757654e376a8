"""Seeded subsets of large pools that do not depend on where, or in which order, the files are listed.

A file's rank is a hash of the seed and its path from its split folder on, so the same dataset gives
the same subset from a folder, a zip or a tar anywhere; `Smallest` keeps the n smallest ranks in one
pass and bounded memory (ProGAN's 720,000 training files).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable
from typing import Any


def sample_key(seed: int, key: str) -> int:
    """The rank of the file named `key` (its path from the split folder on) in the seeded order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def subset_digest(keys: Iterable[str]) -> str:
    """A short digest of the files drawn (by their keys): the same subset, wherever it lies, has the same one."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


class Smallest:
    """The `n` items of smallest key seen so far, in one pass and bounded memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._heap: list[tuple[int, int, Any]] = []
        self._tie = itertools.count()

    def add(self, key: int, item: Any) -> None:
        self.seen += 1
        if self.n <= 0:
            return
        entry = (-key, next(self._tie), item)  # a max-heap of the n smallest keys
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[Any]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: -e[0])]
