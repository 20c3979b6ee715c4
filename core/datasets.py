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

Loss masks (the image's alpha channel, or a grayscale ``<stem>_mask.png`` / OneTrainer's
``<stem>-masklabel.png`` beside it) go through the very same resize, crop, flip and bucket as
their image. COCO-captions JSON and Flickr8k/30k caption files are read into the same examples.
Every file read must lie inside the input roots once symbolic links are resolved.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIXES = ("_mask.png", "-masklabel.png")  # <stem>_mask.png first, then OneTrainer's <stem>-masklabel.png
MASK_MODES = ("none", "alpha", "mask_file")
CAPTION_CHOICES = ("first", "all", "random")
FLIPPED = " (flipped)"  # the suffix of a mirrored copy's name in Dataset.files


@dataclass
class Dataset:
    images: object  # torch.Tensor [N,H,W,3] in 0..1 (ComfyUI IMAGE); with buckets, a list of [H,W,3]
    captions: list[str]
    files: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per-example loss weight (prior preservation); [] = all 1
    # per-example loss masks in 0..1 (1 = trained at full weight), the images' sizes: a tensor
    # [N,H,W], or a list of [H,W] with buckets; None = no masks
    masks: object = None
    # width/height of each example's source image before resize and crop; [] = unknown (the tensor's)
    aspects: list[float] = field(default_factory=list)


def input_roots() -> list[Path]:
    """The host's input folders (ComfyUI's ``input/``; headless ``--input-dir``, default ./input)."""
    from .host import current

    return current().input_roots()


def _roots_text() -> str:
    return ", ".join(map(str, input_roots()))


def input_path_problem(name: str, kind: str) -> str | None:
    """Why ``name`` cannot name something inside the input folder, from its text alone (absolute,
    '..', a drive or scheme), or None: what nodes check at validation, before anything runs."""
    text = name.replace("\\", "/").strip().rstrip("/")
    if not text or text.startswith("/") or ".." in text.split("/") or ":" in text:
        return f"{kind} {name!r} must be a relative path inside the input folder ({_roots_text()})"
    return None


def _resolve_input(name: str, kind: str, exists) -> Path:
    if problem := input_path_problem(name, kind):
        raise ValueError(problem)
    text = name.replace("\\", "/").strip().strip("/")
    for root in input_roots():
        root = root.resolve()
        path = (root / text).resolve()
        if (path == root or root in path.parents) and exists(path):
            return path
    raise ValueError(f"{kind} {name!r} was not found in the input folder ({_roots_text()})")


def resolve_folder(folder: str, kind: str = "folder") -> Path:
    """A dataset folder named relative to an input root; nothing outside the roots is reachable."""
    return _resolve_input(folder, kind, Path.is_dir)


def resolve_file(name: str, kind: str = "file") -> Path:
    """A file (a caption or annotation list) named relative to an input root, as ``resolve_folder``."""
    return _resolve_input(name, kind, Path.is_file)


def _confine(path: Path) -> Path:
    """``path`` resolved, refused unless it lies inside an input root (a symbolic link in a dataset
    folder must not reach files outside them)."""
    resolved = path.resolve()
    for root in input_roots():
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            return resolved
    raise ValueError(f"{str(path)!r} leads outside the input folder ({_roots_text()}) through a symbolic link")


def _member(folder: Path, name: object, where: str) -> Path:
    """The image ``name`` (from a caption file) inside ``folder``: relative, no '..'."""
    text = str(name).replace("\\", "/").strip() if isinstance(name, str) else ""
    parts = text.split("/")
    if not text or text.startswith("/") or ":" in text or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{where}: image name {name!r} must be a relative path inside the image folder "
                         "(no absolute path, no '..')")
    return folder / text


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


def _folder_images(path: Path) -> list[Path]:
    """The images below ``path``, without the mask files of other images (``x_mask.png`` beside ``x.jpg``)."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    stems = {(p.parent, p.stem) for p in files}

    def is_mask(p: Path) -> bool:
        return any(p.name.endswith(s) and p.name != s and (p.parent, p.name[:-len(s)]) in stems
                   for s in MASK_SUFFIXES)

    return [p for p in files if not is_mask(p)]


def mask_file(image: Path) -> Path:
    """The mask beside ``image``: ``<stem>_mask.png``, else ``<stem>-masklabel.png`` (OneTrainer)."""
    candidates = [image.with_name(image.stem + s) for s in MASK_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"image {str(image)!r} has no mask file: expected {candidates[0].name!r} or "
                     f"{candidates[1].name!r} beside it (masks = mask_file)")


def _layers(f: Path, masks: str) -> list:
    """The image as RGB, then (with masks) its loss mask as a grayscale ("L") image of the same size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_confine(f)) as img:
            layers = [img.convert("RGB")]
            if masks == "alpha":  # no alpha channel: the whole image is trained
                layers.append(img.convert("RGBA").getchannel("A") if img.has_transparency_data
                              else Image.new("L", img.size, 255))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"image {str(f)!r} could not be read: {e}") from None
    if masks == "mask_file":
        m = mask_file(f)
        try:
            with Image.open(_confine(m)) as img:
                mask = img.convert("L")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"mask {str(m)!r} could not be read: {e}") from None
        if mask.size != layers[0].size:
            raise ValueError(f"mask {str(m)!r} is {mask.width}x{mask.height} pixels but its image is "
                             f"{layers[0].width}x{layers[0].height}")
        layers.append(mask)
    return layers


def build_dataset(sources: list[Path], captions: list[str], names: list[str], resolution: int,
                  crop: str = "center", flip: bool = False, seed: int = 0, buckets: bool = False,
                  masks: str = "none") -> Dataset:
    """One example per source image file (a file may repeat, e.g. once per caption): each image and
    its mask are resized to cover the square or their bucket, cropped with one box and mirrored
    together, so a mask pixel stays on its image pixel."""
    import numpy as np
    import torch
    from PIL import Image

    if crop not in ("center", "random"):
        raise ValueError(f"crop {crop!r} is not one of center, random")
    if masks not in MASK_MODES:
        raise ValueError(f"input 'masks': {masks!r} is not one of {', '.join(MASK_MODES)}")
    rng = np.random.default_rng(seed)
    sizes = bucket_sizes(resolution) if buckets else [(resolution, resolution)]
    arrays, mask_arrays, aspects = [], [], []
    loaded = None  # (file, resized layers, bucket, aspect): the examples of one image are consecutive
    for f in sources:
        if loaded is None or loaded[0] != f:
            layers = _layers(f, masks)
            width, height = _nearest_bucket(layers[0].width, layers[0].height, sizes)
            scale = max(width / layers[0].width, height / layers[0].height)  # cover the bucket, then crop
            size = (max(width, round(layers[0].width * scale)), max(height, round(layers[0].height * scale)))
            loaded = (f, [layer.resize(size, Image.Resampling.LANCZOS) for layer in layers], (width, height),
                      layers[0].width / layers[0].height)
        _, layers, (width, height), aspect = loaded
        dx, dy = layers[0].width - width, layers[0].height - height
        if crop == "random":
            left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        else:
            left, top = dx // 2, dy // 2
        image, *mask = [torch.from_numpy(np.asarray(layer.crop((left, top, left + width, top + height)),
                                                    dtype=np.float32) / 255) for layer in layers]
        arrays.append(image)
        mask_arrays += mask
        aspects.append(aspect)
    captions, names = list(captions), list(names)
    if flip:  # dim 1 is the width of an [H,W,3] image and of an [H,W] mask alike
        arrays += [a.flip(1) for a in arrays]
        mask_arrays += [m.flip(1) for m in mask_arrays]
        captions, names, aspects = captions * 2, names + [n + FLIPPED for n in names], aspects * 2
    uniform = len({a.shape for a in arrays}) == 1
    mask_value = None if masks == "none" else torch.stack(mask_arrays) if uniform else mask_arrays
    return Dataset(torch.stack(arrays) if uniform else arrays, captions, names, masks=mask_value, aspects=aspects)


def load_image_folder(folder: str, resolution: int, crop: str = "center", flip: bool = False,
                      default_caption: str = "", seed: int = 0, buckets: bool = False,
                      masks: str = "none") -> Dataset:
    if crop not in ("center", "random"):
        raise ValueError(f"crop {crop!r} is not one of center, random")
    path = resolve_folder(folder)
    files = _folder_images(path)
    if not files:
        raise ValueError(f"folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    captions = _captions(path, files, default_caption)
    names = [f.relative_to(path).as_posix() for f in files]
    return build_dataset(files, captions, names, resolution, crop, flip, seed, buckets, masks)


def _read_text(file: Path) -> str:
    try:
        return _confine(file).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(file)!r} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{str(file)!r} could not be read: {e}") from None


def coco_captions(file: Path) -> list[tuple[str, list[str], str]]:
    """(file_name, captions, where) per image of a COCO captions JSON, in the order of ``images``;
    images without a caption (COCO's test sets) are left out."""
    try:
        data = json.loads(_read_text(file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(file)!r} is not JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"{str(file)!r} is not a COCO captions file: expected an object with lists "
                         "'images' ([{\"id\", \"file_name\"}]) and 'annotations' ([{\"image_id\", \"caption\"}])")
    names, captions = {}, {}
    for k, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and isinstance(image.get("file_name"), str)
                and isinstance(image.get("id"), (int, str))):
            raise ValueError(f"{str(file)!r}: images[{k}] needs an 'id' and a 'file_name' (got {str(image)[:80]})")
        if image["id"] in names:
            raise ValueError(f"{str(file)!r}: images[{k}] repeats id {image['id']!r}")
        names[image["id"]] = (image["file_name"], f"{file} images[{k}]")
    for k, note in enumerate(data["annotations"]):
        if not (isinstance(note, dict) and isinstance(note.get("caption"), str) and note["caption"].strip()):
            raise ValueError(f"{str(file)!r}: annotations[{k}] needs a non-empty 'caption' (got {str(note)[:80]})")
        if not isinstance(note.get("image_id"), (int, str)) or note["image_id"] not in names:
            raise ValueError(f"{str(file)!r}: annotations[{k}] names image_id {note.get('image_id')!r}, "
                             "which is not in 'images'")
        captions.setdefault(note["image_id"], []).append(" ".join(note["caption"].split()))
    return [(name, captions[i], where) for i, (name, where) in names.items() if i in captions]


_TOKEN = re.compile(r"^(?P<name>[^\t#]+)#\d+\t(?P<caption>.*)$")


def flickr_captions(file: Path) -> list[tuple[str, list[str], str]]:
    """(image name, captions, where) per image of a Flickr caption file, in first-appearance order.
    Detected by content: Flickr8k.token.txt / results_20130124.token lines ``<image>#<n>\\t<caption>``;
    Flickr30k's results.csv (header ``image_name| comment_number| comment``); or the ``image,caption``
    CSV of the Kaggle Flickr8k copy."""
    lines = _read_text(file).splitlines()
    start = next((k for k, line in enumerate(lines) if line.strip()), 0)
    first = lines[start] if lines else ""
    header = first.replace(" ", "").lower()
    rows = []  # (line number, name, caption)
    if header.startswith("image_name|"):
        for number, line in enumerate(lines[start + 1:], start + 2):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("|", 2)]
            if len(parts) == 2 and (m := re.match(r"^\d+\s+(\S.*)$", parts[1])):
                parts = [parts[0], "", m.group(1)]  # a row of the published file lacks its second '|'
            if len(parts) != 3:
                raise ValueError(f"{str(file)!r}: line {number} is not 'image_name| comment_number| comment' "
                                 f"(got {line[:80]!r})")
            rows.append((number, parts[0], parts[2]))
    elif header == "image,caption":
        reader = csv.reader(lines[start + 1:])
        for row in reader:
            number = start + 1 + reader.line_num
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{str(file)!r}: line {number} is not 'image,caption' (got {','.join(row)[:80]!r})")
            rows.append((number, row[0].strip(), row[1]))
    elif "\t" in first:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not (m := _TOKEN.match(line)):
                raise ValueError(f"{str(file)!r}: line {number} is not '<image>#<n><TAB><caption>' "
                                 f"(got {line[:80]!r})")
            rows.append((number, m["name"].strip(), m["caption"]))
    else:
        raise ValueError(f"{str(file)!r} is not a Flickr caption file: its first line is neither "
                         "'<image>#<n><TAB><caption>' (Flickr8k.token.txt), 'image_name| comment_number| comment' "
                         "(Flickr30k results.csv) nor 'image,caption'")
    table = {}
    for number, name, caption in rows:
        caption = " ".join(caption.split())
        if not caption:
            raise ValueError(f"{str(file)!r}: line {number} has an empty caption")
        table.setdefault(name, ([], f"{file} line {number}"))[0].append(caption)
    return [(name, caps, where) for name, (caps, where) in table.items()]


def load_captioned(entries: list[tuple[str, list[str], str]], image_folder: str, resolution: int,
                   crop: str = "center", flip: bool = False, caption: str = "first", max_images: int = 0,
                   seed: int = 0, buckets: bool = False, missing: str = "error") -> Dataset:
    """A dataset from (image name, captions, where) entries: the first ``max_images`` images
    (0 = all) found in ``image_folder``, each with its first caption, all of them (one example per
    caption) or one drawn with ``seed``."""
    import numpy as np

    if caption not in CAPTION_CHOICES:
        raise ValueError(f"input 'caption': {caption!r} is not one of {', '.join(CAPTION_CHOICES)}")
    if missing not in ("error", "skip"):
        raise ValueError(f"input 'missing_images': {missing!r} is not one of error, skip")
    folder = resolve_folder(image_folder, "input 'image_folder':")
    picker = np.random.default_rng([seed, 1])  # not the crops' stream: captions do not move the crops
    sources, captions, names, count = [], [], [], 0
    for name, caps, where in entries:
        if max_images and count == max_images:
            break
        path = _member(folder, name, where)
        if not path.is_file():
            if missing == "skip":
                continue
            raise ValueError(f"image {name!r} ({where}) is not in {str(folder)!r} "
                             "(missing_images = skip leaves such images out)")
        chosen = (caps if caption == "all" else
                  [caps[int(picker.integers(len(caps)))]] if caption == "random" else caps[:1])
        sources += [path] * len(chosen)
        captions += chosen
        names += [str(name)] * len(chosen)
        count += 1
    if not sources:
        raise ValueError(f"none of the {len(entries)} captioned images is in {str(folder)!r}")
    return build_dataset(sources, captions, names, resolution, crop, flip, seed, buckets)


def load_coco_captions(annotations: str, image_folder: str, resolution: int, **options) -> Dataset:
    entries = coco_captions(resolve_file(annotations, "input 'annotations':"))
    return load_captioned(entries, image_folder, resolution, **options)


def load_flickr_captions(captions_file: str, image_folder: str, resolution: int, **options) -> Dataset:
    entries = flickr_captions(resolve_file(captions_file, "input 'captions_file':"))
    return load_captioned(entries, image_folder, resolution, **options)


def _size(dataset: Dataset) -> int:
    return len(dataset.captions)


def subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """The examples at ``indices``, every per-example field (images, captions, files, weights,
    masks, aspects, and any added later) kept aligned; empty lists and None stay as they are."""
    import torch

    n = _size(dataset)

    def pick(name: str, value):
        if value is None or (isinstance(value, list) and not value):
            return value
        if isinstance(value, (list, torch.Tensor)):
            if len(value) != n:
                raise ValueError(f"the dataset's {name} has {len(value)} entries for {n} captions")
            return value[torch.tensor(indices, dtype=torch.long)] if isinstance(value, torch.Tensor) \
                else [value[i] for i in indices]
        return value

    return replace(dataset, **{f.name: pick(f.name, getattr(dataset, f.name)) for f in fields(dataset)})


def split_dataset(dataset: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test): a seeded shuffle of the source images, ``test_fraction`` of them (rounded)
    to test. The examples of one source image (its mirrored copy, one per caption) stay on one
    side, so no test image is trained on in another form."""
    import numpy as np

    if not 0 < test_fraction < 1:
        raise ValueError(f"input 'test_fraction': {test_fraction} must lie strictly between 0 and 1")
    n = _size(dataset)
    keys = [name.removesuffix(FLIPPED) for name in dataset.files] if len(dataset.files) == n else list(range(n))
    groups = list(dict.fromkeys(keys))
    n_test = math.floor(len(groups) * test_fraction + 0.5)
    if n_test == 0 or n_test == len(groups):
        raise ValueError(f"input 'test_fraction': {test_fraction} of {len(groups)} source images puts {n_test} "
                         f"in the test set and {len(groups) - n_test} in the training set: neither may be empty")
    order = np.random.default_rng(seed).permutation(len(groups))
    test_groups = {groups[i] for i in order[:n_test]}
    test = [i for i, key in enumerate(keys) if key in test_groups]
    train = [i for i, key in enumerate(keys) if key not in test_groups]
    return subset(dataset, train), subset(dataset, test)


def example_aspects(dataset: Dataset) -> list[float]:
    """Width/height of each example's source image, or of its tensor where the loader did not record it."""
    if len(dataset.aspects) == _size(dataset):
        return list(dataset.aspects)
    return [image.shape[1] / image.shape[0] for image in dataset.images]


def filter_aspect(dataset: Dataset, min_aspect: float, max_aspect: float) -> Dataset:
    """The examples whose width/height lies in [min_aspect, max_aspect]."""
    if not 0 < min_aspect <= max_aspect:
        raise ValueError(f"inputs 'min_aspect' {min_aspect} and 'max_aspect' {max_aspect} must satisfy "
                         "0 < min_aspect <= max_aspect")
    aspects = example_aspects(dataset)
    keep = [i for i, a in enumerate(aspects) if min_aspect <= a <= max_aspect]
    if not keep:
        raise ValueError(f"no example has width/height in [{min_aspect}, {max_aspect}]: the dataset's "
                         f"{len(aspects)} examples range from {min(aspects):.3g} to {max(aspects):.3g}")
    return subset(dataset, keep)


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
