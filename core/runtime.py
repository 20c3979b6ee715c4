"""Where the pack is running: inside ComfyUI or under the headless runner.

Inside ComfyUI, folders, progress bars and cancellation come from ComfyUI itself
(``folder_paths``, ``comfy.utils.ProgressBar``, ``comfy.model_management``). ComfyUI imports
``folder_paths`` before it loads custom nodes, so its presence in ``sys.modules`` tells us where we
are without importing anything ourselves. Headless, the runner sets the folders with
:func:`configure` and progress goes to tqdm.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

_dirs: dict[str, Path] = {}


def in_comfyui() -> bool:
    return "folder_paths" in sys.modules


def is_main_process() -> bool:
    """False in processes 1..N-1 of a multi-process run (``accelerate launch``, ``torchrun``): they
    compute what process 0 computes but write no file, so a run leaves one set of outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def configure(output_dir: str | os.PathLike) -> None:
    """Set the headless output folder (previews go to ``<output>/temp``)."""
    _dirs["output"] = Path(output_dir).resolve()


def output_directory() -> Path:
    if in_comfyui():
        return Path(sys.modules["folder_paths"].get_output_directory())
    return _dirs.get("output") or Path.cwd() / "output"


def temp_directory() -> Path:
    root, under = write_root("temp")
    return root.joinpath(*under)


# Where each kind of file lands below the output folder, headless.
_HEADLESS_FOLDERS = {"output": (), "temp": ("temp",), "loras": ("loras",), "checkpoints": ("loralab_checkpoints",)}


def write_root(kind: str) -> tuple[Path, tuple[str, ...]]:
    """Where files of a kind go, as (a folder the user configured, fixed folders below it). Writes
    are confined to the first and may not pass through a symbolic link among the second
    (core.files.safe_prefix_path). ``kind``: output, temp (previews), loras, checkpoints.
    Inside ComfyUI previews go to its temp folder and LoRAs to its first ``loras`` folder, where its
    LoRA loaders list them; headless everything stays inside the output folder."""
    if in_comfyui():
        folder_paths = sys.modules["folder_paths"]
        if kind == "temp":
            return Path(folder_paths.get_temp_directory()), ()
        if kind == "loras":
            return Path(folder_paths.get_folder_paths("loras")[0]), ()
        return Path(folder_paths.get_output_directory()), _HEADLESS_FOLDERS[kind]
    return output_directory(), _HEADLESS_FOLDERS[kind]


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (no-op headless,
    where Ctrl-C raises KeyboardInterrupt by itself)."""
    if in_comfyui():
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()


class _Progress:
    def __init__(self, total: int, desc: str):
        if in_comfyui():
            import comfy.utils

            self._bar, self._tqdm = comfy.utils.ProgressBar(total), None
        else:
            from tqdm.auto import tqdm

            self._bar, self._tqdm = None, tqdm(total=total, desc=desc, leave=False,
                                               disable=os.environ.get("LORALAB_NO_PROGRESS") == "1")

    def update(self, n: int = 1) -> None:
        check_interrupted()
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


@contextmanager
def progress(total: int, desc: str = ""):
    """A progress bar that is ComfyUI's inside ComfyUI and tqdm's headless."""
    bar = _Progress(total, desc)
    try:
        yield bar
    finally:
        bar.close()
