"""``LL_DATASET``: images with captions, read from a folder inside the allowed input roots.

Captions come from ``metadata.jsonl`` (``{"file_name": ..., "text": ...}`` per line, the
Hugging Face image-folder convention) or from a ``.txt`` file beside each image (kohya's), else
from a default caption. Images are resized so the shorter side equals the resolution, then
cropped (centre, or a seeded random crop) to a square; ``flip`` adds mirrored copies, which keeps
latent caching valid (an augmentation drawn per step would not).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Dataset:
    images: object  # torch.Tensor [N,H,W,3] in 0..1 (ComfyUI IMAGE layout)
    captions: list[str]
    files: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per-example loss weight (prior preservation); [] = all 1


def input_roots() -> list[Path]:
    if "folder_paths" in sys.modules:
        return [Path(sys.modules["folder_paths"].get_input_directory()).resolve()]
    value = os.environ.get("LORALAB_INPUT_DIR") or "input"
    return [Path(p).resolve() for p in value.split(os.pathsep) if p]


def resolve_folder(folder: str) -> Path:
    """A dataset folder named relative to an input root; nothing outside the roots is reachable."""
    text = folder.replace("\\", "/").strip().strip("/")
    if not text or text.startswith("/") or ".." in text.split("/") or ":" in text:
        raise ValueError(f"folder {folder!r} must be a relative path inside the input folder "
                         f"({', '.join(map(str, input_roots()))})")
    for root in input_roots():
        path = (root / text).resolve()
        if (path == root or root in path.parents) and path.is_dir():
            return path
    raise ValueError(f"folder {folder!r} was not found in the input folder ({', '.join(map(str, input_roots()))})")


def _captions(folder: Path, files: list[Path], default: str) -> list[str]:
    table = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    table[row["file_name"]] = str(row["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{meta}: line {number} is not "
                                     f"{{\"file_name\": ..., \"text\": ...}} ({e})") from None
    captions = []
    for f in files:
        rel = f.relative_to(folder).as_posix()
        txt = f.with_suffix(".txt")
        caption = table.get(rel) or (txt.read_text(encoding="utf-8").strip() if txt.is_file() else "") or default
        if not caption:
            raise ValueError(f"image {str(f)!r} has no caption (no metadata.jsonl entry, no {txt.name}) and no "
                             "default caption was given")
        captions.append(caption)
    return captions


def load_image_folder(folder: str, resolution: int, crop: str = "center", flip: bool = False,
                      default_caption: str = "", seed: int = 0) -> Dataset:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    path = resolve_folder(folder)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    captions = _captions(path, files, default_caption)
    rng = np.random.default_rng(seed)
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("RGB")
                scale = resolution / min(img.size)
                size = (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.LANCZOS)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"image {str(f)!r} could not be read: {e}") from None
        dx, dy = img.width - resolution, img.height - resolution
        if crop == "random":
            left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        elif crop == "center":
            left, top = dx // 2, dy // 2
        else:
            raise ValueError(f"crop {crop!r} is not one of center, random")
        arrays.append(np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.float32) / 255)
    images = torch.from_numpy(np.stack(arrays))
    names = [f.relative_to(path).as_posix() for f in files]
    if flip:
        images = torch.cat([images, images.flip(2)])
        captions, names = captions * 2, names + [f"{n} (flipped)" for n in names]
    return Dataset(images, captions, names)


def concept_dataset(lp, instance_images, instance_prompt: str, class_prompt: str = "", class_images: int = 0,
                    prior_weight: float = 1.0, seed: int = 0, steps: int = 25) -> Dataset:
    """DreamBooth (Ruiz et al. 2023): instance images captioned with a rare-token prompt
    (``a photo of sks jacket``) plus, for prior preservation, ``class_images`` images the base
    model generates for the class prompt (``a photo of a jacket``), weighted by ``prior_weight``."""
    import torch

    from .generate import GenerateSettings, generate
    from .prompts import Prompt
    from .samplers import SamplerSpec

    n = len(instance_images)
    images, captions, weights = instance_images, [instance_prompt] * n, [1.0] * n
    files = [f"instance {i}" for i in range(n)]
    if class_images:
        if not class_prompt:
            raise ValueError("prior preservation needs a class prompt (e.g. 'a photo of a jacket')")
        height, width = instance_images.shape[1:3]
        settings = GenerateSettings(steps=steps, cfg=7.5, seed=seed, width=width, height=height,
                                    images_per_prompt=class_images)
        generated, _ = generate(lp, SamplerSpec("dpmpp_2m", "karras"), [Prompt(class_prompt)], settings)
        images = torch.cat([instance_images.float().cpu(), generated])
        captions += [class_prompt] * class_images
        weights += [prior_weight] * class_images
        files += [f"class {i} (seed {seed + i})" for i in range(class_images)]
    return Dataset(images, captions, files, weights)
