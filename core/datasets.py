"""``LL_DATASET``: images with captions, read from a folder inside the allowed input roots.

Captions come from ``metadata.jsonl`` (``{"file_name": ..., "text": ...}`` per line, the
Hugging Face image-folder convention) or from a ``.txt`` file beside each image (kohya's), else
from a default caption. Images are resized so the shorter side equals the resolution, then
cropped (centre, or a seeded random crop) to a square; ``flip`` adds mirrored copies, which keeps
latent caching valid (an augmentation drawn per step would not).

With aspect-ratio buckets (kohya's scheme, also SDXL's multi-aspect training) each image instead
goes to the bucket ``(w, h)`` whose aspect ratio is closest to its own; buckets have about the
area resolution², sides multiples of 64 (8 below 256 px) between resolution/2 and 2·resolution.
The image is resized to cover its bucket and cropped; a training batch never mixes buckets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Dataset:
    images: object  # torch.Tensor [N,H,W,3] in 0..1 (ComfyUI IMAGE); with buckets, a list of [H,W,3]
    captions: list[str]
    files: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per-example loss weight (prior preservation); [] = all 1
    # per-example loss masks in 0..1 (1 = trained at full weight), the images' sizes: a tensor
    # [N,H,W], or a list of [H,W] with buckets; None = no masks
    masks: object = None


def input_roots() -> list[Path]:
    """The host's input folders (ComfyUI's ``input/``; headless ``--input-dir``, default ./input)."""
    from .host import current

    return current().input_roots()


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


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) buckets as kohya's ``make_bucket_resolutions``: for each width w (a multiple
    of the step from resolution/2 to 2·resolution) the largest step-multiple height with
    w·h ≤ resolution², kept when that height is in range too; plus each bucket transposed."""
    step = 64 if resolution >= 256 else 8
    low, high, area = max(step, resolution // 2 // step * step), 2 * resolution, resolution * resolution
    sizes = {(resolution // step * step,) * 2}
    for w in range(low, high + 1, step):
        h = min(high, area // w // step * step)
        if h >= low:
            sizes |= {(w, h), (h, w)}
    return sorted(sizes)


def _nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket with the smallest aspect-ratio error |w/h − W/H| (kohya's rule; ties: the first)."""
    return min(buckets, key=lambda b: abs(b[0] / b[1] - width / height))


def load_image_folder(folder: str, resolution: int, crop: str = "center", flip: bool = False,
                      default_caption: str = "", seed: int = 0, buckets: bool = False) -> Dataset:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    if crop not in ("center", "random"):
        raise ValueError(f"crop {crop!r} is not one of center, random")
    path = resolve_folder(folder)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    captions = _captions(path, files, default_caption)
    rng = np.random.default_rng(seed)
    sizes = bucket_sizes(resolution) if buckets else [(resolution, resolution)]
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("RGB")
                width, height = _nearest_bucket(img.width, img.height, sizes)
                scale = max(width / img.width, height / img.height)  # cover the bucket, then crop
                size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.LANCZOS)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"image {str(f)!r} could not be read: {e}") from None
        dx, dy = img.width - width, img.height - height
        if crop == "random":
            left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        else:
            left, top = dx // 2, dy // 2
        arrays.append(torch.from_numpy(np.asarray(img.crop((left, top, left + width, top + height)),
                                                  dtype=np.float32) / 255))
    names = [f.relative_to(path).as_posix() for f in files]
    if flip:
        arrays += [a.flip(1) for a in arrays]
        captions, names = captions * 2, names + [f"{n} (flipped)" for n in names]
    uniform = len({a.shape for a in arrays}) == 1
    return Dataset(torch.stack(arrays) if uniform else arrays, captions, names)


def preview_batch(images) -> object:
    """One ComfyUI ``IMAGE`` batch for previews: bucketed images centred on black canvases of the
    largest height and width."""
    import torch

    if isinstance(images, torch.Tensor):
        return images
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    out = torch.zeros(len(images), height, width, 3)
    for k, image in enumerate(images):
        top, left = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
        out[k, top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


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
