"""CLIP metrics from a local Hugging Face CLIP folder, with transformers' ``CLIPModel`` directly
(torchmetrics 1.9's ``CLIPScore`` crashes with transformers 5, torchmetrics #3407).

Embeddings are the projected, L2-normalised image and text features; cos = their dot product.

- ``clip_score``: 100·max(cos(image, its prompt), 0) (Hessel et al. 2021; torchmetrics' CLIPScore
  per image). Prompts longer than CLIP's 77 tokens are truncated, as in torchmetrics.
- ``clip_content_sim``: cos(image, its source image): content preservation (seed 004).
- ``clip_style_sim``: mean over the style images s of cos(image, s) = image · mean of the style
  embeddings: the average CLIP similarity to the style references (with one style image, the
  plain cosine). Higher = closer to the style set.

Images go through the folder's ``CLIPImageProcessor`` (resize the short side, centre crop, CLIP's
mean/std) as the 8-bit pictures they save as, in batches on the model's device.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime import check_interrupted
from .fid import as_uint8_nchw, batches, on_device
from .weights import WeightsError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass(frozen=True)
class Clip:
    model: object  # transformers CLIPModel
    processor: object  # transformers CLIPImageProcessor
    tokenizer: object


def _stamp(folder: Path) -> tuple:
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.iterdir()) if f.is_file())


@functools.lru_cache(maxsize=1)  # a sweep scores many batches with one model
def _load(folder: str, stamp: tuple) -> Clip:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from ..checkpoints import TOKENIZER

    path = Path(folder)
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "clip":  # CLIPModel would load a vision-only model with a random text tower
            raise WeightsError(f"CLIP folder {folder!r} holds a {model_type!r} model; the CLIP metrics need a full "
                               "CLIP model (text and vision towers, model_type 'clip')")
        config = CLIPConfig.from_pretrained(path, local_files_only=True)
        model, info = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                output_loading_info=True)
        if (path / "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        else:  # CLIP's own preprocessing at the model's input size
            size = config.vision_config.image_size
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        has_tokenizer = any((path / f).is_file() for f in TOKENIZER_FILES)
        tokenizer = CLIPTokenizer.from_pretrained(path if has_tokenizer else TOKENIZER, local_files_only=True,
                                                  model_max_length=config.text_config.max_position_embeddings)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise WeightsError(f"CLIP folder {folder!r} could not be loaded offline as a transformers CLIPModel: "
                           f"{e}") from None
    if info["missing_keys"]:  # transformers would leave them randomly initialised
        raise WeightsError(f"CLIP folder {folder!r} lacks {len(info['missing_keys'])} weights of its model "
                           f"(e.g. {sorted(info['missing_keys'])[0]})")
    return Clip(model.eval().requires_grad_(False), processor, tokenizer)


def load_clip(folder: Path) -> Clip:
    """The CLIP model, image processor and tokenizer of a local folder (kept on the CPU between calls)."""
    return _load(str(folder), _stamp(folder))


def _embedding(output) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected
    # embedding; transformers 4 returned that tensor itself.
    embedding = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(embedding.float(), dim=-1)


def image_embeddings(clip: Clip, images, device: str | torch.device = "cpu", batch_size: int = 32) -> torch.Tensor:
    """Unit CLIP embeddings ``[N, D]`` (CPU) of ComfyUI images (a tensor or an iterable of batches)."""
    out = []
    with torch.inference_mode(), on_device(clip.model, device):
        for batch in batches(images, batch_size):
            check_interrupted()
            pixels = clip.processor(images=as_uint8_nchw(batch.to(device)), return_tensors="pt",
                                    device=device)["pixel_values"]
            out.append(_embedding(clip.model.get_image_features(pixel_values=pixels)).cpu())
    return torch.cat(out)


def text_embeddings(clip: Clip, texts: list[str], device: str | torch.device = "cpu",
                    batch_size: int = 64) -> torch.Tensor:
    out = []
    with torch.inference_mode(), on_device(clip.model, device):
        for start in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                    return_tensors="pt").to(device)
            features = clip.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"])
            out.append(_embedding(features).cpu())
    return torch.cat(out)


def clip_score(clip: Clip, images: torch.Tensor, prompts: list[str], device: str | torch.device = "cpu",
               batch_size: int = 32) -> torch.Tensor:
    """100·max(cos, 0) of image i and ``prompts[i]``, float64 ``[N]``."""
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; give one prompt per image")
    index = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # Generate repeats a prompt per seed
    text = text_embeddings(clip, list(index), device)[[index[p] for p in prompts]]
    return 100 * (image_embeddings(clip, images, device, batch_size) * text).sum(-1).double().clamp(min=0)


def content_similarity(clip: Clip, images: torch.Tensor, sources: torch.Tensor, device: str | torch.device = "cpu",
                       batch_size: int = 32) -> torch.Tensor:
    """cos(image i, source i), or against the one source for all; float64 ``[N]``."""
    if len(sources) not in (1, len(images)):
        raise ValueError(f"got {len(sources)} source images for {len(images)} images; give one source "
                         "for all or one per image")
    image = image_embeddings(clip, images, device, batch_size)
    return (image * image_embeddings(clip, sources, device, batch_size)).sum(-1).double()


def style_similarity(clip: Clip, images, style, device: str | torch.device = "cpu",
                     batch_size: int = 32) -> torch.Tensor:
    """Mean over the style images of cos(image i, style image); float64 ``[N]``."""
    centroid = image_embeddings(clip, style, device, batch_size).double().mean(0)
    return image_embeddings(clip, images, device, batch_size).double() @ centroid
