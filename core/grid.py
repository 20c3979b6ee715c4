"""Labelled image grids (seed 004's LoRA x sampler matrices, CFG and step sweeps): images placed by
two label values, one row per value of the first and one column per value of the second, with
the values written on the left and on top, as an XY plot in A1111 or ComfyUI's XY grids."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .score_report import format_value
from .stats import is_number

WHITE, INK, RULE = (255, 255, 255), (20, 20, 20), (200, 200, 200)


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes, in pixels: a label column ``label_width`` wide, a label row
    ``header_height`` high, then ``len(columns)`` cells of ``cell`` (width, height) per row, each
    holding up to ``slots`` images side by side, ``gap`` pixels apart."""
    rows: tuple
    columns: tuple
    tile: tuple[int, int]
    slots: int
    label_width: int
    header_height: int
    title_height: int
    gap: int

    @property
    def cell(self) -> tuple[int, int]:
        w, h = self.tile
        return self.slots * w + (self.slots - 1) * self.gap, h

    @property
    def size(self) -> tuple[int, int]:
        (cw, ch), g = self.cell, self.gap
        return (self.label_width + len(self.columns) * (cw + g) + g,
                self.title_height + self.header_height + len(self.rows) * (ch + g) + g)

    def box(self, row: int, column: int, slot: int = 0) -> tuple[int, int]:
        """Top-left corner of image ``slot`` of a cell."""
        (cw, ch), g = self.cell, self.gap
        return (self.label_width + g + column * (cw + g) + slot * (self.tile[0] + g),
                self.title_height + self.header_height + g + row * (ch + g))


def label_text(value) -> str:
    """As typed for short floats (7.5, 3.0), else 4 significant digits."""
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 8 else format_value(value, 4)
    return format_value(value, None)


def ordered_values(values) -> tuple:
    """Distinct values in the order a reader expects: numbers ascending (CFG 1 -> 15, rank 1 -> 64),
    anything else in order of first appearance."""
    distinct = list(dict.fromkeys(values))
    if distinct and all(is_number(v) for v in distinct):
        return tuple(sorted(distinct))
    return tuple(distinct)


def place(row_values, column_values, orders=(None, None)) -> tuple[tuple, tuple, dict]:
    """Rows, columns and each cell's image indices (in input order) for images labelled by
    ``row_values[i]`` and ``column_values[i]``; ``orders`` fixes the order of rows / columns
    (values not in it follow, in :func:`ordered_values` order)."""
    def order(values, fixed):
        present = ordered_values(values)
        return present if fixed is None else tuple(
            [v for v in dict.fromkeys(fixed) if v in present] + [v for v in present if v not in fixed])

    rows, columns = order(row_values, orders[0]), order(column_values, orders[1])
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (r, c) in enumerate(zip(row_values, column_values, strict=True)):
        cells.setdefault((rows.index(r), columns.index(c)), []).append(i)
    return rows, columns, cells


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a last line that does not fit ends in an ellipsis."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return [_clip(draw, x, font, width) for x in lines]


def _clip(draw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def image_grid(images: np.ndarray, row_values, column_values, row_name: str = "", column_name: str = "",
               title: str = "", font_size: int = 0, gap: int = 4, labels: bool = True, orders=(None, None)):
    """One labelled grid of ``images`` (``[N, H, W, 3]`` floats in 0..1, ComfyUI's layout): image i
    goes to the row of ``row_values[i]`` and the column of ``column_values[i]``; several images of
    one cell sit side by side in input order; ``labels=False`` draws no label row or column (a
    plain contact sheet). Returns (PIL image, :class:`GridLayout`)."""
    from PIL import Image, ImageDraw

    n, h, w = images.shape[:3]
    if not n:
        raise ValueError("no images to place")
    if len(row_values) != n or len(column_values) != n:
        raise ValueError(f"{n} images but {len(row_values)} row labels and {len(column_values)} column labels")
    rows, columns, cells = place(row_values, column_values, orders)
    slots = max(len(v) for v in cells.values())
    size = font_size or max(10, min(24, round(h / 6)))
    font = _font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(size * 1.3)
    cell_w = slots * w + (slots - 1) * gap
    row_texts = [label_text(v) for v in rows]
    label_width = int(min(max(draw.textlength(t, font=font) for t in [*row_texts, row_name]) + 2 * gap,
                          max(3 * w, 8 * size))) + gap if labels else 0
    column_lines = [_wrap(draw, label_text(v), font, cell_w, 3) if labels else [] for v in columns]
    header_height = line * (max(map(len, column_lines)) + bool(column_name)) + 2 * gap if labels else 0
    layout = GridLayout(rows, columns, (w, h), slots, label_width, header_height, line + 2 * gap if title else 0, gap)
    canvas = Image.new("RGB", layout.size, WHITE)
    pen = ImageDraw.Draw(canvas)
    pixels = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    for (r, c), members in cells.items():
        for slot, i in enumerate(members):
            canvas.paste(Image.fromarray(pixels[i]), layout.box(r, c, slot))
    top = layout.title_height
    if title:
        pen.text((gap, gap), _clip(pen, title, font, layout.size[0] - 2 * gap), fill=INK, font=font)
    if column_name:
        pen.text((label_width + gap, top + gap), _clip(pen, column_name, font, layout.size[0]), fill=INK,
                 font=font)
    if row_name:
        pen.text((gap, top + header_height - line - gap), _clip(pen, row_name, font, label_width - gap),
                 fill=INK, font=font)
    for c, lines in enumerate(column_lines):
        x = layout.box(0, c)[0]
        y = top + header_height - gap - line * len(lines)
        for k, text in enumerate(lines):
            pen.text((x, y + k * line), text, fill=INK, font=font)
    if not labels:
        return canvas, layout
    pen.line([(0, top + header_height - 1), (layout.size[0], top + header_height - 1)], fill=RULE)
    max_lines = max(1, h // line)
    for r, text in enumerate(row_texts):
        y = layout.box(r, 0)[1]
        for k, part in enumerate(_wrap(pen, text, font, label_width - 2 * gap, max_lines)):
            pen.text((gap, y + k * line), part, fill=INK, font=font)
    return canvas, layout


def columns_for(count: int, columns: int = 0) -> int:
    """Columns of an unlabelled grid: ``columns`` if given, else near-square."""
    return columns if columns > 0 else math.ceil(math.sqrt(count))
