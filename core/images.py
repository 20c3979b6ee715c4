"""Saving ComfyUI ``IMAGE`` batches as PNG files, the way ComfyUI's SaveImage does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import atomic_write, safe_prefix_path, write_numbered


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
                extra_pnginfo: dict | None = None, compress_level: int = 4, under: tuple[str, ...] = ()) -> list[dict]:
    """Write each image of a ``[B,H,W,C]`` batch into ``root/under/<prefix folders>``, numbered
    consecutively where no other writer got there first; return ComfyUI ``ui.images`` entries
    (filename, subfolder relative to ``root/under``)."""
    folder, stem = safe_prefix_path(root, filename_prefix, under)
    info = png_metadata(prompt, extra_pnginfo)
    subfolder = folder.relative_to(Path(root).resolve().joinpath(*under)).as_posix()
    entries, number = [], 0
    for image in images:
        picture = to_pil(image)
        write = {"png": lambda p, picture=picture: atomic_save_png(picture, p, info, compress_level)}
        number, (path,) = write_numbered(folder, stem, write, number + 1)
        entries.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder})
    return entries
