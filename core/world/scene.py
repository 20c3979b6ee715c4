"""Scenes of the procedural world: attributes, seeded sampling, template captions and their parser.

A scene is 1–3 identical shapes (one kind, colour and size) on a plain background, optionally in a
style a LoRA can learn (absent from the base world) or as the DreamBooth concept. Captions are
templates, so ``parse_caption(caption(scene))`` recovers every attribute: the adherence metric reads
what a prompt asks for from its text alone.

Prompt categories follow seed 000: ``standard`` (one medium or large shape near the centre),
``challenging`` (several shapes, or one small shape off-centre), ``closeup`` (one shape filling the
frame). Scenes are split into train and held-out halves by a hash of their caption's content words
(``split_of``), so prompts drawn for evaluation never appear in a training set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart")
COLOURS = {  # name -> sRGB; the names CLIP-style text encoders know
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 70),
    "blue": (40, 90, 220), "purple": (140, 60, 190), "pink": (240, 130, 190), "white": (245, 245, 245),
    "black": (25, 25, 25), "brown": (130, 80, 40),
}
BACKGROUNDS = {
    "white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128), "blue": (70, 110, 200),
    "green": (80, 150, 90), "yellow": (235, 215, 110), "pink": (235, 170, 200), "brown": (120, 85, 55),
}
SIZES = {"small": 0.18, "medium": 0.30, "large": 0.44}  # shape diameter as a fraction of the image side
CLOSEUP_SIZE = 0.76
POSITIONS = {  # centre of a single shape, as fractions of the image side (x, y)
    "center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
    "top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    **{p: f"in the {p} corner" for p in ("top left", "top right", "bottom left", "bottom right")}}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
CATEGORIES = ("standard", "challenging", "closeup")
STYLES = {  # variant -> the phrase its captions end with
    "outlined": "in outline style", "striped": "in striped style", "pastel": "in pastel style",
    "wobbly": "in hand-drawn style",
}
VARIANTS = ("base", *STYLES, "concept")
# The DreamBooth concept (seed 003's "[v] garment with [u] pattern"): one specific patterned badge
# bound to rare tokens; its class prompt names only the class.
CONCEPT_TOKEN, CONCEPT_PATTERN_TOKEN, CONCEPT_CLASS = "sks", "ukj", "badge"
CONCEPT_COLOURS = ("orange", "purple")  # body and dots of the badge


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str  # a SIZES key, or "closeup"
    position: str  # a POSITIONS key (for several shapes: "center", they are spread over the frame)
    count: int
    style: str = "base"  # a VARIANTS entry
    category: str = "standard"
    layout_seed: int = 0  # jitter and the placement of several shapes


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def caption(scene: Scene) -> str:
    """``two small red circles on a blue background``; ``a close-up of …``; ``… in the top left corner``;
    a style phrase last. The concept: ``a sks badge with ukj pattern on a grey background``."""
    if scene.style == "concept":
        thing = f"a {CONCEPT_TOKEN} {CONCEPT_CLASS} with {CONCEPT_PATTERN_TOKEN} pattern"
        return f"a close-up of {thing} on a {scene.background} background" if scene.size == "closeup" else \
            f"{thing} on a {scene.background} background"
    noun = scene.shape if scene.count == 1 else _plural(scene.shape)
    if scene.size == "closeup":
        text = f"a close-up of a {scene.colour} {noun} on a {scene.background} background"
    else:
        article = COUNT_WORDS[scene.count] if scene.count > 1 else ("an" if scene.size[0] in "aeiou" else "a")
        text = f"{article} {scene.size} {scene.colour} {noun} on a {scene.background} background"
        if scene.count == 1 and scene.position != "center":
            text += f" {POSITION_PHRASES[scene.position]}"
    if scene.style in STYLES:
        text += f", {STYLES[scene.style]}"
    return text


_WORDS = {w: n for n, w in COUNT_WORDS.items()} | {"a": 1, "an": 1}
_CAPTION = re.compile(
    r"^(?:a close-up of (?:a|an) (?P<c_colour>[a-z]+) (?P<c_shape>[a-z]+)"
    r"|(?P<count>a|an|one|two|three) (?P<size>small|medium|large) (?P<colour>[a-z]+) (?P<shape>[a-z]+))"
    r" on a (?P<background>[a-z]+) background(?: (?P<position>(?:on|at|in) the [a-z ]+?))?"
    r"(?:, (?P<style>in [a-z -]+ style))?$")


def parse_caption(text: str) -> dict | None:
    """The attributes a world caption asks for (shape, colour, background, size, count, position,
    style), or None when the text is not a world caption (e.g. a concept or a free prompt)."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        return None
    styles = {phrase: name for name, phrase in STYLES.items()}
    style = styles.get(m["style"]) if m["style"] else "base"
    if style is None:
        return None
    if m["c_shape"]:
        shape, colour, size, count, position = m["c_shape"], m["c_colour"], "closeup", 1, "center"
    else:
        count = _WORDS[m["count"]]
        shape = m["shape"] if count == 1 else next((s for s in SHAPES if _plural(s) == m["shape"]), None)
        phrases = {phrase: name for name, phrase in POSITION_PHRASES.items()}
        colour, size, position = m["colour"], m["size"], phrases.get(m["position"], "") if m["position"] else "center"
    if shape not in SHAPES or colour not in COLOURS or m["background"] not in BACKGROUNDS or \
            position not in POSITIONS or (count > 1 and m["position"]):
        return None
    return {"shape": shape, "colour": colour, "background": m["background"], "size": size, "count": count,
            "position": position, "style": style}


def split_of(scene: Scene) -> str:
    """``train`` or ``heldout`` (one scene in five), by a hash of what the caption asks for — the
    same text always falls on the same side, whatever seed drew it."""
    key = caption(Scene(**{**scene.__dict__, "layout_seed": 0, "category": ""}))
    return "heldout" if hashlib.sha256(key.encode()).digest()[0] % 5 == 0 else "train"


def _draw(rng: np.random.Generator, category: str, style: str) -> Scene:
    background = str(rng.choice(list(BACKGROUNDS)))
    # a shape never vanishes into its background, and a pastel white would look like plain white
    colours = [c for c in COLOURS if c != background and not (style == "pastel" and c == "white")]
    if style == "concept":
        size = "closeup" if category == "closeup" else str(rng.choice(["medium", "large"]))
        return Scene(CONCEPT_CLASS, CONCEPT_COLOURS[0], background, size, "center", 1, style, category,
                     int(rng.integers(2**31)))
    shape, colour = str(rng.choice(SHAPES)), str(rng.choice(colours))
    if category == "closeup":
        size, position, count = "closeup", "center", 1
    elif category == "standard":
        size, position, count = str(rng.choice(["medium", "large"])), "center", 1
    elif rng.random() < 0.5:  # challenging: several shapes
        size, position, count = str(rng.choice(["small", "medium"])), "center", int(rng.integers(2, 4))
    else:  # challenging: one small shape off-centre
        size, position, count = "small", str(rng.choice([p for p in POSITIONS if p != "center"])), 1
    return Scene(shape, colour, background, size, position, count, style, category, int(rng.integers(2**31)))


def sample_scenes(count: int, seed: int, categories=CATEGORIES, variant: str = "base",
                  split: str | None = "train", distinct: bool = False) -> list[Scene]:
    """``count`` scenes, categories taken in turn, deterministic from ``seed``; only scenes of
    ``split`` (``train`` / ``heldout``; None = both). The concept has no held-out half. With
    ``distinct`` no caption repeats (prompt sets: a repeated prompt would multiply per-image joins)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"categories {list(categories)!r} must be a non-empty subset of {', '.join(CATEGORIES)}")
    import numpy as np  # here, not at import: the node catalogue imports this module

    rng = np.random.default_rng([seed, VARIANTS.index(variant)])
    scenes: list[Scene] = []
    seen: set[str] = set()
    misses = 0
    while len(scenes) < count:
        scene = _draw(rng, categories[len(scenes) % len(categories)], variant)
        if split is not None and variant != "concept" and split_of(scene) != split:
            continue
        if distinct:
            text = caption(scene)
            if text in seen:
                misses += 1
                if misses > 1000 * count:  # the category's captions are used up
                    raise ValueError(f"only {len(scenes)} distinct {variant} captions of categories "
                                     f"{', '.join(categories)} could be drawn; asked for {count}")
                continue
            seen.add(text)
        scenes.append(scene)
    return scenes
