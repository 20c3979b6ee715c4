"""On-disk cache of expensive node results, keyed by the executor's cache key.

Only nodes the pack marks (headless/hooks.py ``disk_cacheable``: generated image sets now) are
stored, and only when every output value has a safe codec: tensors go to safetensors, plain values
and what the pack's ``encode`` hook turns into JSON (score tables) to JSON. Nothing is ever
unpickled. Entries are written to a temporary folder and renamed into place, so an interrupted
write leaves no partial entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from .hooks import hooks

PACKAGE = Path(__file__).resolve().parents[1]


def package_sources(root: Path) -> list[Path]:
    """The package's .py files: ``root`` and its sub-packages (folders with an ``__init__.py``),
    so an editable checkout's tests/ and .venv/ do not count."""
    files, folders = [], [root]
    while folders:
        folder = folders.pop()
        files += folder.glob("*.py")
        folders += [d for d in folder.iterdir() if d.is_dir() and (d / "__init__.py").is_file()]
    return sorted(files)


def code_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in package_sources(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def dependency_versions() -> dict[str, str]:
    """Installed versions of what the package requires (torch, diffusers, transformers, peft...),
    read from its metadata, or from requirements.txt in a checkout that was never installed."""
    try:
        requires = [r for r in metadata.requires("loralab") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        listed = PACKAGE / "requirements.txt"
        requires = listed.read_text().splitlines() if listed.is_file() else []
    versions = {}
    for requirement in requires:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if name and not requirement.lstrip().startswith("#"):
            try:
                versions[name[1]] = metadata.version(name[1])
            except metadata.PackageNotFoundError:
                versions[name[1]] = "absent"
    return versions


@functools.cache
def cache_namespace() -> str:
    """The folder of this code's entries: a fix in our code or another library version must not
    be answered with results the old one computed. Computed once per process (a few ms)."""
    text = json.dumps([code_digest(PACKAGE), dependency_versions()], sort_keys=True)
    return f"loralab-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _encode(value, tensors: dict):
    import torch

    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if (packed := hooks().encode(value)) is not None:
        return {"pack": packed}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"json": value}
    raise TypeError(type(value).__name__)


def _decode(entry: dict, tensors: dict):
    if "tensor" in entry:
        return tensors[entry["tensor"]]
    if "pack" in entry:
        return hooks().decode(entry["pack"])
    return entry["json"]


class DiskCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str):
        folder = self._dir(key)
        if not (folder / "outputs.json").is_file():
            return None
        from safetensors.torch import load_file

        try:
            meta = json.loads((folder / "outputs.json").read_text())
            tensors = load_file(folder / "tensors.safetensors") if (folder / "tensors.safetensors").exists() else {}
            outputs = [[_decode(e, tensors) for e in slot] for slot in meta["outputs"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # damaged entry: recompute
        return outputs, meta.get("ui", [])

    def put(self, key: str, outputs: list, ui: list) -> bool:
        from safetensors.torch import save_file

        tensors: dict = {}
        try:
            encoded = [[_encode(v, tensors) for v in slot] for slot in outputs]
            text = json.dumps({"outputs": encoded, "ui": ui})
        except (TypeError, ValueError):
            return False  # an output without a safe codec: keep it in memory only
        folder = self._dir(key)
        if folder.exists():
            return True
        if not hooks().is_main_process():  # one writer per multi-process run; the others keep it in memory
            return False
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key[:8]}."))
        try:
            if tensors:
                save_file(tensors, tmp / "tensors.safetensors")
            (tmp / "outputs.json").write_text(text)
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return folder.exists()
        return True
