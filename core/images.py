"""Saving ComfyUI ``IMAGE`` batches as PNG files, the way ComfyUI's SaveImage does."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import atomic_write


class UnsafePathError(ValueError):
    pass


def safe_prefix_path(root: Path, filename_prefix: str) -> tuple[Path, str]:
    """Split ``filename_prefix`` ("name" or "sub/dir/name") into a folder inside ``root`` and a
    file stem. Absolute paths, ``..``, drive letters and anything resolving outside ``root``
    are refused, whatever a shared workflow asks for."""
    prefix = filename_prefix.replace("\\", "/").strip()
    parts = prefix.split("/")
    if (not prefix or prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix)
            or any(p in ("", ".", "..") for p in parts) or "\x00" in prefix):
        raise UnsafePathError(
            f"filename_prefix {filename_prefix!r} must be a relative name such as 'loralab' or "
            "'experiment/img' (no absolute path, no '..', no empty parts)")
    root = root.resolve()
    folder = (root / "/".join(parts[:-1])).resolve()
    if folder != root and root not in folder.parents:
        raise UnsafePathError(f"filename_prefix {filename_prefix!r} leaves the output folder {root}")
    return folder, parts[-1]


def next_counter(folder: Path, stem: str) -> int:
    """ComfyUI's numbering: ``<stem>_00001_.png`` continues after the highest existing number."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_\.png$")
    numbers = [int(m.group(1)) for p in folder.glob(f"{glob.escape(stem)}_*_.png")
               if (m := pattern.match(p.name))]
    return max(numbers, default=0) + 1


def png_metadata(prompt: dict | None, extra_pnginfo: dict | None) -> PngInfo:
    """The text chunks ComfyUI writes: ``prompt`` (API graph) and each ``extra_pnginfo`` key
    (``workflow`` = the editor's UI graph), so dragging the PNG into ComfyUI restores the graph."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def atomic_save_png(img: Image.Image, path: Path, info: PngInfo, compress_level: int) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level))


def save_images(images: torch.Tensor, root: Path, filename_prefix: str, prompt: dict | None = None,
                extra_pnginfo: dict | None = None, compress_level: int = 4) -> list[dict]:
    """Write each image of a ``[B,H,W,C]`` batch; return ComfyUI ``ui.images`` entries
    (filename, subfolder relative to ``root``)."""
    folder, stem = safe_prefix_path(root, filename_prefix)
    folder.mkdir(parents=True, exist_ok=True)
    info = png_metadata(prompt, extra_pnginfo)
    counter = next_counter(folder, stem)
    subfolder = folder.relative_to(root.resolve()).as_posix()
    entries = []
    for i, image in enumerate(images):
        name = f"{stem}_{counter + i:05}_.png"
        atomic_save_png(to_pil(image), folder / name, info, compress_level)
        entries.append({"filename": name, "subfolder": "" if subfolder == "." else subfolder})
    return entries
