"""What the runner needs to know about the node pack it runs, registered by the pack itself
(``loralab/nodes/__init__.py`` calls :func:`register`), so the runner imports no pack type:

- ``tables(value)``: the (key columns, rows) of an output value that is a score table, else None
  (sweep results, run records);
- ``encode(value)`` / ``decode(entry)``: a JSON form of pack values the disk cache may store
  (tensors and plain values it stores itself), ``None`` when a value has none;
- ``disk_cacheable(cls)``: whether a node's results are worth keeping on disk;
- ``is_main_process()``: False in processes 1..N-1 of a multi-process run (they write nothing).

A runner with no pack registered treats every value as plain and caches nothing on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class PackHooks:
    tables: Callable[[object], tuple[list[str], list[dict]] | None] = lambda value: None
    encode: Callable[[object], dict | None] = lambda value: None
    decode: Callable[[dict], object] = lambda entry: None
    disk_cacheable: Callable[[type], bool] = lambda cls: False
    is_main_process: Callable[[], bool] = lambda: True


_hooks = PackHooks()


def register(**hooks) -> None:
    """Set some hooks (keyword arguments named as :class:`PackHooks`' fields)."""
    global _hooks
    unknown = set(hooks) - set(PackHooks.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown runner hooks: {', '.join(sorted(unknown))}")
    _hooks = PackHooks(**{**_hooks.__dict__, **hooks})


def hooks() -> PackHooks:
    return _hooks
