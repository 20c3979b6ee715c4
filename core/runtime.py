"""Where the pack is running, through the current host (core/host.py): inside ComfyUI or under the
headless runner. These functions are what nodes and the core call; each asks :func:`host.current`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from . import host as _host
from .host import in_comfyui  # noqa: F401 - re-exported: callers ask runtime where they run


def is_main_process() -> bool:
    """False in processes 1..N-1 of a multi-process run (``accelerate launch``, ``torchrun``): they
    compute what process 0 computes but write no file, so a run leaves one set of outputs."""
    return _host.current().is_main_process()


def configure(output_dir: str | os.PathLike) -> None:
    """Set the headless output folder (previews go to ``<output>/temp``)."""
    _host.configure(output_dir)


def output_directory() -> Path:
    return _host.current().output_dir()


def temp_directory() -> Path:
    root, under = write_root("temp")
    return root.joinpath(*under)


def write_root(kind: str) -> tuple[Path, tuple[str, ...]]:
    """Where files of a kind go, as (a folder the user configured, fixed folders below it). Writes
    are confined to the first and may not pass through a symbolic link among the second
    (core.files.safe_prefix_path). ``kind``: output, temp (previews), loras, checkpoints.
    Inside ComfyUI previews go to its temp folder and LoRAs to its first ``loras`` folder, where its
    LoRA loaders list them; headless everything stays inside the output folder."""
    return _host.current().write_root(kind)


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (no-op headless,
    where Ctrl-C raises KeyboardInterrupt by itself)."""
    _host.current().check_interrupted()


class _Progress:
    def __init__(self, total: int, desc: str):
        self._host = _host.current()
        self._bar = self._host.progress(total, desc)

    def update(self, n: int = 1) -> None:
        self._host.check_interrupted()
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


@contextmanager
def progress(total: int, desc: str = ""):
    """A progress bar that is ComfyUI's inside ComfyUI and tqdm's headless."""
    bar = _Progress(total, desc)
    try:
        yield bar
    finally:
        bar.close()
