"""Drawing scenes: every shape is a polygon, drawn 4× supersampled with PIL and reduced with a box
filter (anti-aliased edges), so images are deterministic functions of the scene."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUNDS, CLOSEUP_SIZE, COLOURS, CONCEPT_COLOURS, POSITIONS, SIZES, Scene

SUPERSAMPLE = 4
PASTEL_MIX = 0.55  # share of white mixed into a pastel colour
_TURN = np.linspace(0, 2 * np.pi, 73)[:-1]


def _unit_outline(shape: str) -> np.ndarray:
    """Outline of a shape of diameter ≈ 1 centred on the origin, as (N, 2) points, y down."""
    if shape == "circle":
        pts = np.stack([np.cos(_TURN), np.sin(_TURN)], 1) * 0.5
    elif shape in ("square", "diamond", "hexagon", "triangle"):
        n, start = {"square": (4, np.pi / 4), "diamond": (4, -np.pi / 2), "hexagon": (6, 0.0),
                    "triangle": (3, -np.pi / 2)}[shape]
        angles = start + np.arange(n) * 2 * np.pi / n
        pts = np.stack([np.cos(angles), np.sin(angles)], 1) * 0.5
        if shape == "square":
            pts *= 0.5 / np.abs(pts).max()  # side = diameter
        if shape == "diamond":
            pts[:, 0] *= 0.7
        if shape == "triangle":
            pts[:, 1] += 0.1  # centre the bounding box, not the centroid
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 0.5, 0.21)
        pts = np.stack([np.cos(angles) * radius, np.sin(angles) * radius + 0.05], 1)
    elif shape == "cross":
        a, b = 0.5, 0.17
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                        (-a, b), (-a, -b), (-b, -b)])
    elif shape == "heart":
        t = _TURN
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2.5], 1) / 34
    elif shape == "badge":  # the concept: a scalloped disc
        r = 0.5 * (0.9 + 0.1 * np.cos(10 * _TURN))
        pts = np.stack([np.cos(_TURN) * r, np.sin(_TURN) * r], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return pts


def _centres(scene: Scene, diameter: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Shape centres as fractions of the side: jittered around the position for one shape, spread
    without overlap for several (rejection sampling, deterministic from the layout seed)."""
    if scene.count == 1:
        x, y = (0.5, 0.5) if scene.size == "closeup" else POSITIONS[scene.position]
        return [(x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03))]
    low, high = diameter / 2 + 0.03, 1 - diameter / 2 - 0.03
    for _ in range(500):
        pts = rng.uniform(low, high, size=(scene.count, 2))
        gaps = [np.hypot(*(pts[i] - pts[j])) for i in range(len(pts)) for j in range(i)]
        if min(gaps) > diameter * 1.15:
            return [tuple(p) for p in pts]
    return [(0.5 + 0.3 * np.cos(a), 0.5 + 0.3 * np.sin(a)) for a in np.arange(scene.count) * 2 * np.pi / scene.count]


def _colour(name: str, pastel: bool) -> tuple[int, int, int]:
    rgb = np.array(COLOURS[name], float)
    return tuple(int(round(c)) for c in (rgb + PASTEL_MIX * (255 - rgb) if pastel else rgb))


def _pattern(kind: str, side: int, colour, rng: np.random.Generator) -> Image.Image:
    """A full-frame fill: stripes for the striped style, dots for the concept's pattern."""
    canvas = Image.new("RGB", (side, side), colour)
    draw = ImageDraw.Draw(canvas)
    if kind == "striped":
        period, phase = side / 8, rng.uniform(0, side / 8)
        light = sum(colour) / 3 > 90  # stripes must show on black shapes too
        dark = tuple(int(c * 0.35) if light else int(c + 0.6 * (255 - c)) for c in colour)
        for k in range(-9, 18):
            x0 = k * period + phase
            draw.polygon([(x0, 0), (x0 + period / 2, 0), (x0 + period / 2 - side, side), (x0 - side, side)], fill=dark)
    else:
        dot, step = side / 28, side / 9
        for y in np.arange(step / 2, side, step):
            for x in np.arange(step / 2 + (y // step % 2) * step / 2, side, step):
                draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=COLOURS[CONCEPT_COLOURS[1]])
    return canvas


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as an ``(size, size, 3)`` uint8 image."""
    side = size * SUPERSAMPLE
    rng = np.random.default_rng(scene.layout_seed)
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    diameter = (CLOSEUP_SIZE if scene.size == "closeup" else SIZES[scene.size]) * rng.uniform(0.93, 1.07)
    colour = _colour(scene.colour, scene.style == "pastel")
    fill = None
    if scene.style in ("striped", "concept"):
        fill = _pattern(scene.style, side, colour, rng)
    for cx, cy in _centres(scene, diameter, rng):
        pts = _unit_outline(scene.shape)
        angle = 0.0 if scene.shape in ("circle", "badge") else rng.uniform(-0.15, 0.15)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = pts @ rot.T
        if scene.style == "wobbly":  # a hand-drawn outline: smooth radial noise along the contour
            edges = zip(pts, np.roll(pts, -1, 0), strict=True)
            dense = np.concatenate([np.linspace(p, q, 8, endpoint=False) for p, q in edges])
            phase = np.linspace(0, 2 * np.pi, len(dense), endpoint=False)
            wobble = sum(rng.uniform(0.02, 0.05) * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7))
            pts = dense * (1 + wobble)[:, None]
        xy = [tuple(p) for p in (pts * diameter + (cx, cy)) * side]
        mask = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(mask)
        if scene.style == "outlined":
            draw.line(xy + [xy[0]], fill=255, width=max(2, int(diameter * side * 0.1)), joint="curve")
        else:
            draw.polygon(xy, fill=255)
        image.paste(fill if fill is not None else colour, (0, 0), mask)
        if scene.style == "wobbly":  # an ink line that shows on dark shapes too
            ink = (20, 20, 20) if sum(colour) > 180 else (235, 235, 235)
            ImageDraw.Draw(image).line(xy + [xy[0]], fill=ink, width=max(2, side // 64), joint="curve")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def render_batch(scenes: list[Scene], size: int = 64):
    """A ComfyUI ``IMAGE`` batch: float32 ``[N, H, W, 3]`` in 0..1."""
    import torch

    return torch.from_numpy(np.stack([render(s, size) for s in scenes])).float() / 255
