"""The host LoRA Lab runs in, as one explicit object: ComfyUI, or the headless runner.

A host says where models, inputs and outputs live, draws progress and answers "was Cancel
pressed?". :class:`ComfyUIHost` asks ComfyUI (``folder_paths``, ``comfy.utils.ProgressBar``,
``comfy.model_management``); :class:`HeadlessHost` holds what the command line gave. ComfyUI
imports ``folder_paths`` before it loads custom nodes, so its presence in ``sys.modules`` tells
which host is current without importing anything. The runner activates its host with
:func:`activate` (each Ray worker and each ``accelerate launch`` process does the same); code that
needs a folder calls :func:`current`. This module is the only one that reads ``LORALAB_*``
environment variables: the defaults of a headless host started without a command line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

# Where each kind of file lands below the output folder, headless.
HEADLESS_FOLDERS = {"output": (), "temp": ("temp",), "loras": ("loras",), "checkpoints": ("loralab_checkpoints",)}
MODEL_SUFFIXES = {"checkpoints": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"), "loras": (".safetensors",)}


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p)


class Host:
    """What every host answers. ``write_root(kind)`` gives (a folder the user configured, fixed
    folders below it): writes are confined to the first and may not pass through a symbolic
    link among the second (core.files.safe_prefix_path)."""

    name = "host"

    def output_dir(self) -> Path:
        raise NotImplementedError

    def write_root(self, kind: str) -> tuple[Path, tuple[str, ...]]:
        return self.output_dir(), HEADLESS_FOLDERS[kind]

    def model_roots(self) -> list[Path]:
        raise NotImplementedError

    def model_files(self, kind: str) -> dict[str, Path]:
        """Name -> file of a model kind (``checkpoints``, ``loras``), as the host lists them."""
        found: dict[str, Path] = {}
        for root in self.model_roots():
            folder = root / kind
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.suffix.lower() in MODEL_SUFFIXES[kind] and path.is_file():
                        found.setdefault(path.relative_to(folder).as_posix(), path)
        return found

    def model_folders(self, kind: str) -> list[Path]:
        """Folders of a kind of model file (``metrics``, ``clip_vision``)."""
        return [root / kind for root in self.model_roots()]

    def input_roots(self) -> list[Path]:
        raise NotImplementedError

    def progress(self, total: int, desc: str):
        """An object with ``update(n)`` and ``close()``."""
        raise NotImplementedError

    def check_interrupted(self) -> None:
        """Raise when the user asked to stop (no-op where Ctrl-C raises by itself)."""

    def is_main_process(self) -> bool:
        """False in processes 1..N-1 of a multi-process run (``accelerate launch``, ``torchrun``):
        they compute what process 0 computes but write no file."""
        return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class HeadlessHost(Host):
    """The runner's host: an output folder (previews, LoRAs and checkpoints below it), model and
    input folders, and whether tqdm draws bars."""

    output: Path | None = None
    models: tuple[Path, ...] = field(default_factory=lambda: (Path("models").resolve(),))
    inputs: tuple[Path, ...] = field(default_factory=lambda: (Path("input").resolve(),))
    show_progress: bool = True
    name = "headless"

    @classmethod
    def from_environment(cls) -> HeadlessHost:
        """Defaults for a host nobody configured: ``LORALAB_MODELS_DIR`` / ``LORALAB_INPUT_DIR``
        (``os.pathsep``-separated), ``LORALAB_NO_PROGRESS=1``; else ./models, ./input."""
        return cls(None, _paths(os.environ.get("LORALAB_MODELS_DIR") or "models"),
                   _paths(os.environ.get("LORALAB_INPUT_DIR") or "input"),
                   os.environ.get("LORALAB_NO_PROGRESS") != "1")

    def output_dir(self) -> Path:
        return self.output or Path.cwd() / "output"

    def model_roots(self) -> list[Path]:
        return list(self.models)

    def input_roots(self) -> list[Path]:
        return list(self.inputs)

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=not self.show_progress)


class _ComfyProgress:
    def __init__(self, total: int):
        import comfy.utils

        self._bar = comfy.utils.ProgressBar(total)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        pass


class ComfyUIHost(Host):
    """Inside ComfyUI: its folders, its progress bar on the node, its Cancel button."""

    name = "comfyui"

    @property
    def _fp(self):
        return sys.modules["folder_paths"]

    def output_dir(self) -> Path:
        return Path(self._fp.get_output_directory())

    def write_root(self, kind: str) -> tuple[Path, tuple[str, ...]]:
        # Previews go to ComfyUI's temp folder and LoRAs to its first `loras` folder, where its
        # LoRA loaders list them.
        if kind == "temp":
            return Path(self._fp.get_temp_directory()), ()
        if kind == "loras":
            return Path(self._fp.get_folder_paths("loras")[0]), ()
        return self.output_dir(), HEADLESS_FOLDERS[kind]

    def model_roots(self) -> list[Path]:
        return [Path(self._fp.models_dir).resolve()]

    def model_files(self, kind: str) -> dict[str, Path]:
        return {n: Path(self._fp.get_full_path(kind, n)) for n in self._fp.get_filename_list(kind)
                if n.lower().endswith(MODEL_SUFFIXES[kind])}

    def model_folders(self, kind: str) -> list[Path]:
        if kind == "metrics":
            return [Path(self._fp.models_dir) / "metrics"]
        found = []
        for name in (kind, "clip") if kind == "clip_vision" else (kind,):
            try:
                found += [Path(p) for p in self._fp.get_folder_paths(name)]
            except KeyError:  # a ComfyUI without that folder kind
                pass
        return found

    def input_roots(self) -> list[Path]:
        return [Path(self._fp.get_input_directory()).resolve()]

    def progress(self, total: int, desc: str):
        return _ComfyProgress(total)

    def check_interrupted(self) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()


_active: Host | None = None


def in_comfyui() -> bool:
    return "folder_paths" in sys.modules


def current() -> Host:
    """ComfyUI's host inside ComfyUI, else the one the runner activated (else the defaults)."""
    global _active
    if in_comfyui():
        return ComfyUIHost()
    if _active is None:
        _active = HeadlessHost.from_environment()
    return _active


def activate(host: Host) -> Host:
    """Make ``host`` current; returns the one it replaces."""
    global _active
    previous, _active = current(), host
    return previous


def configure(output_dir: str | os.PathLike | None = None, **changes) -> HeadlessHost:
    """The current headless host with a new output folder (or other fields), activated."""
    base = _active if isinstance(_active, HeadlessHost) else HeadlessHost.from_environment()
    if output_dir is not None:
        changes["output"] = Path(output_dir).resolve()
    host = replace(base, **changes)
    activate(host)
    return host
