"""The world's offline evaluator: a small CNN that reads a scene's attributes from a 64 px image.

It is the world's counterpart of CLIP: ``adherence`` (the fraction of a caption's content attributes
the image shows — shape, colour, background, count, size and, for one shape, position) stands where
CLIP score stands, ``style_probability`` where a style classifier would, and ``features`` (the
penultimate layer) replaces Inception's pool features for a domain FID/KID. Trained on rendered
scenes only (``train_evaluator``); the shipped weights are ``models/world/evaluator.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .render import render
from .scene import (
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    CONCEPT_CLASS,
    POSITIONS,
    SHAPES,
    VARIANTS,
    Scene,
    parse_caption,
    sample_scenes,
)

HEADS = {
    "shape": (*SHAPES, CONCEPT_CLASS), "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS),
    "count": (1, 2, 3), "size": ("small", "medium", "large", "closeup"), "position": tuple(POSITIONS),
    "style": VARIANTS,
}
CONTENT = ("shape", "colour", "background", "count", "size", "position")
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "world" / "evaluator.safetensors"
FEATURES = 256


class WorldEvaluator(nn.Module):
    """Five 3×3 convolutions with GroupNorm (64 → 4 px: one at full resolution first, so 11 px shapes keep
    their corners), a 256-d feature layer, one linear head per attribute."""

    LAYERS = ((3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 128, 2), (128, 128, 2))

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, stride=s, padding=1), nn.GroupNorm(8, b), nn.SiLU())
                                   for a, b, s in self.LAYERS)
        self.fc = nn.Linear(128 * 4 * 4, FEATURES)
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(classes)) for name, classes in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: ComfyUI ``IMAGE`` ``[B, H, W, 3]`` in 0..1, any size (resized to 64)."""
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        x = x * 2 - 1
        for conv in self.convs:
            x = conv(x)
        return F.silu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return {name: head(h) for name, head in self.heads.items()}


def labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class indices per head."""
    def index(name: str, s: Scene) -> int:
        value = {"shape": s.shape, "colour": s.colour, "background": s.background, "count": s.count,
                 "size": s.size, "position": s.position, "style": s.style}[name]
        return HEADS[name].index(value)
    return {name: torch.tensor([index(name, s) for s in scenes]) for name in HEADS}


def degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What a generator's images look like next to clean renders: blur and noise, per image at random."""
    x = images.permute(0, 3, 1, 2)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(len(x), 1, 1, 1, generator=gen)
    x = x + (blur - x) * mix
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(len(x), 1, 1, 1, generator=gen) * 0.06
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def render_scenes(scenes: list[Scene]) -> torch.Tensor:
    return torch.from_numpy(np.stack([render(s) for s in scenes])).float() / 255


def world_scenes(count: int, seed: int) -> list[Scene]:
    """Every variant in equal shares, all categories, both caption halves (an image classifier)."""
    per = -(-count // len(VARIANTS))
    scenes = [s for v in VARIANTS for s in sample_scenes(per, seed, CATEGORIES, v, split=None)]
    order = np.random.default_rng(seed).permutation(len(scenes))[:count]
    return [scenes[i] for i in order]


def train_evaluator(images: int = 32_000, epochs: int = 12, batch: int = 128, seed: int = 0,
                    log=print) -> WorldEvaluator:
    """AdamW with cosine decay, cross-entropy summed over heads, degraded copies half the time."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scenes = world_scenes(images, seed)
    x, y = render_scenes(scenes), labels(scenes)
    model = WorldEvaluator()
    steps = epochs * (len(x) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(len(x) // batch):
            idx = order[k * batch:(k + 1) * batch]
            xb = x[idx]
            noisy = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(noisy[:, None, None, None], degrade(xb, gen), xb)
            out = model(xb)
            loss = sum(F.cross_entropy(out[n], y[n][idx]) for n in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    return model.eval()


def accuracy(model: WorldEvaluator, scenes: list[Scene], images: torch.Tensor) -> dict[str, float]:
    """Held-out accuracy per head; position only where it is meaningful (one shape, not a close-up)."""
    with torch.no_grad():
        out = {n: o.argmax(1) for n, o in model(images).items()}
    y = labels(scenes)
    where = torch.tensor([s.count == 1 and s.size != "closeup" for s in scenes])
    return {n: ((out[n] == y[n])[where] if n == "position" else out[n] == y[n]).float().mean().item()
            for n in HEADS}


def load_evaluator(path: Path | str | None = None) -> WorldEvaluator:
    from safetensors.torch import load_file

    path = Path(path) if path else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"world evaluator weights {str(path)!r} are missing; rebuild them with "
                                f"'python models/build_world.py evaluator'")
    model = WorldEvaluator()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


def predict(model: WorldEvaluator, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class probabilities per head."""
    with torch.inference_mode():
        return {n: o.softmax(1) for n, o in model(images).items()}


def adherence(model: WorldEvaluator, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Per image: ``adherence``, the fraction of its caption's content attributes the evaluator reads
    in it (its most probable class), and each attribute's hit (1/0; NaN where the caption does not
    ask for it — position only for one shape that is not a close-up). NaN rows for captions that are
    not world captions."""
    probs = predict(model, images)
    hits = {n: torch.full((len(captions),), float("nan")) for n in CONTENT}
    for i, text in enumerate(captions):
        asked = parse_caption(text)
        if asked is None:
            continue
        for n in CONTENT:
            if n != "position" or (asked["count"] == 1 and asked["size"] != "closeup"):
                hits[n][i] = float(int(probs[n][i].argmax()) == HEADS[n].index(asked[n]))
    table = torch.stack(list(hits.values()), 1)
    return {"adherence": table.nanmean(1), **hits}


def style_probability(model: WorldEvaluator, images: torch.Tensor, style: str) -> torch.Tensor:
    if style not in HEADS["style"]:
        raise ValueError(f"style {style!r} is not one of {', '.join(HEADS['style'])}")
    return predict(model, images)["style"][:, HEADS["style"].index(style)]


class DomainFeatures(nn.Module):
    """The evaluator's 256-d feature layer as an FID/KID feature extractor (domain FID): takes the
    uint8 ``[B, 3, H, W]`` images ``fid.fid_kid`` passes, like Inception."""

    num_features = FEATURES

    def __init__(self, evaluator: WorldEvaluator):
        super().__init__()
        self.evaluator = evaluator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluator.features(images.movedim(1, -1).float() / 255)
