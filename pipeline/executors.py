"""Executors run a stage's chunks. The default runs them in this process, one after another.

An executor only maps `fn` over work units and yields results in completion order; stages never
know which executor runs them (a dask executor plugs in behind the same interface).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...


class InProcessExecutor:
    """Runs every work unit in the calling process, lazily, in order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)
