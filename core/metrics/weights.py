"""Local weight files for the model-based metrics. Nothing is ever downloaded: a missing file is an
error that names the file, every folder searched, where to place it and where to get it.

Where we look, in order:

- a file or folder given as an absolute path (``~`` expanded);
- inside ComfyUI: ``<ComfyUI models>/metrics`` for single files (Inception, LPIPS trunks) and
  ComfyUI's ``clip_vision`` (then ``clip``) folders for CLIP folders;
- headless: ``<models-dir>/metrics`` and ``<models-dir>/clip_vision`` for every model root
  (``--models-dir``, default ``./models``);
- single files also in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where torch-fidelity and
  torchvision keep these very files when they were allowed to download them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoints import MODELS_DIR


@dataclass(frozen=True)
class WeightFile:
    name: str
    what: str
    url: str


INCEPTION = WeightFile("weights-inception-2015-12-05-6726825d.pth",
                       "torch-fidelity's Inception-v3 FID weights (TensorFlow FID graph, converted)",
                       "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                       "weights-inception-2015-12-05-6726825d.pth")
# torchvision's ImageNet weights (torchvision.models *_Weights.IMAGENET1K_V1), which lpips loads.
LPIPS_TRUNKS = {
    "alex": WeightFile("alexnet-owt-7be5be79.pth", "torchvision's AlexNet ImageNet weights (LPIPS alex trunk)",
                       "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": WeightFile("vgg16-397923af.pth", "torchvision's VGG16 ImageNet weights (LPIPS vgg trunk)",
                      "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "squeeze": WeightFile("squeezenet1_1-b8a52dc0.pth",
                          "torchvision's SqueezeNet 1.1 ImageNet weights (LPIPS squeeze trunk)",
                          "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}
CLIP_DEFAULT = "clip-vit-large-patch14"  # torchmetrics CLIPScore's default model
# A tiny random CLIP we ship so CLIP-scoring workflows run anywhere; its scores mean nothing.
EMBEDDED_CLIP = "embedded: tiny-clip"
# "random" for LPIPS trunks (the LPIPS paper's "rand" baseline) and FID's Inception: seeded, no file.
RANDOM_WEIGHTS = "random"
CLIP_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")


class WeightsError(ValueError):
    pass


def metric_file_folders() -> list[Path]:
    import torch

    from ..host import current

    return current().model_folders("metrics") + [Path(torch.hub.get_dir()) / "checkpoints"]


def clip_folders() -> list[Path]:
    """``<models>/clip_vision`` headless; ComfyUI's ``clip_vision`` then ``clip`` folders."""
    from ..host import current

    return current().model_folders("clip_vision")


def _candidates(value: str, folders: list[Path]) -> list[Path]:
    path = Path(value).expanduser()
    return [path] if path.is_absolute() else [folder / value for folder in folders]


def _searched(folders: list[Path]) -> str:
    return ", ".join(str(f) for f in folders) or "(no model folder is configured)"


def find_weight_file(value: str, default: WeightFile) -> Path:
    """The file ``value`` (a file name looked up in the metric folders, or an absolute path); an
    empty value or "auto" means ``default.name``."""
    value = value.strip()
    if value in ("", "auto"):
        value = default.name
    folders = metric_file_folders()
    for candidate in _candidates(value, folders):
        if candidate.is_file():
            return candidate
    if Path(value).expanduser().is_absolute():
        raise WeightsError(f"weights file {value!r} does not exist. Expected {default.what}, usually named "
                           f"{default.name!r} (get it from {default.url}); nothing is downloaded")
    raise WeightsError(f"weights file {value!r} was not found in: {_searched(folders)}. Place {default.what} "
                       f"as {folders[0] / default.name} (get it from {default.url}; or give an absolute "
                       "path); nothing is downloaded")


def find_clip_folder(value: str) -> Path:
    """A Hugging Face CLIP folder (``config.json`` + weights, as ``CLIPModel.save_pretrained``
    writes it): a folder name looked up in the CLIP folders, an absolute path, or the embedded
    tiny CLIP."""
    value = value.strip() or CLIP_DEFAULT
    if value == EMBEDDED_CLIP:
        return MODELS_DIR / "tiny-clip"
    folders = clip_folders()
    how = (f"Place a Hugging Face CLIP folder (config.json, model.safetensors, preprocessor_config.json "
           f"and the tokenizer files; e.g. all files of https://huggingface.co/openai/{CLIP_DEFAULT}) at "
           f"{(folders[0] if folders else Path('<models>/clip_vision')) / Path(value).name}, or give an "
           "absolute path; nothing is downloaded")
    for candidate in _candidates(value, folders):
        if candidate.is_file():
            raise WeightsError(f"{str(candidate)!r} is a single file (like ComfyUI's vision-only CLIP files); the "
                               f"CLIP metrics need a full CLIP model as a Hugging Face folder. {how}")
        if candidate.is_dir():
            missing = [name for name, found in (
                ("config.json", (candidate / "config.json").is_file()),
                ("model.safetensors (or pytorch_model.bin)", any((candidate / f).is_file() for f in CLIP_WEIGHT_FILES)),
            ) if not found]
            if missing:
                raise WeightsError(f"CLIP folder {str(candidate)!r} lacks {' and '.join(missing)}. {how}")
            return candidate
    raise WeightsError(f"CLIP folder {value!r} was not found in: {_searched(folders)}. {how}")


def load_state_dict(path: Path) -> dict:
    """Tensors of a ``.safetensors`` file, or of a pickle that loads with ``weights_only=True``."""
    from ..checkpoints import ModelError, load_pickle_safely

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return load_pickle_safely(path)
    except ModelError as e:
        raise WeightsError(str(e)) from None
