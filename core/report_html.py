"""One self-contained HTML page per run or sweep: the configuration, the score tables (every row;
mean ± std, % change and p-values with the test named), figures inlined as PNG data, and links
to the images and LoRA files beside it. Rendered from a kept Jinja2 template
(``core/templates/report.html.j2``, autoescaped), with no script and no request off the page."""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .score_report import format_value
from .scores import ScoreTable
from .stats import is_number

TEMPLATE = "report.html.j2"
TESTS = {"n_pairs": "paired t-test (scipy.stats.ttest_rel, two-sided) over pairs of the same pairing keys",
         "n_baseline": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False, two-sided)"}


@dataclass
class Section:
    name: str
    items: list[tuple[str, str]]


@dataclass
class Cell:
    text: str
    cls: str = ""
    href: str = ""


@dataclass
class Row:
    cells: list[Cell]
    front: bool = False


@dataclass
class HtmlTable:
    name: str
    columns: list[str]
    rows: list[Row]
    note: str = ""


@dataclass
class Figure:
    name: str
    src: str  # a data: URL (inlined) or a path relative to the page
    width: int
    height: int
    href: str = ""


@dataclass
class Link:
    name: str
    href: str


@dataclass
class Report:
    title: str
    subtitle: str = ""
    config: list[Section] = field(default_factory=list)
    tables: list[HtmlTable] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    files: list[Link] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def _number_cell(column: str, value, digits: int) -> Cell:
    if column == "pct_change" and is_number(value):
        return Cell(f"{value:+.{max(digits - 2, 1)}f} %", "num")
    if column == "p_value" and is_number(value):
        return Cell(format_value(float(value), digits), "num good" if value < 0.05 else "num")
    return Cell(format_value(value, digits), "num")


def html_table(name: str, table: ScoreTable, digits: int = 4, note: str = "") -> HtmlTable:
    """Every row of ``table``. A Summarize table gains a ``mean ± std`` column; a Compare table's
    note names its test; a Pareto table's front rows are bold."""
    columns = table.columns
    summary = {"mean", "std"} <= set(columns)
    shown = columns + (["mean ± std"] if summary else [])
    rows = []
    for r in table.rows:
        cells = [Cell(format_value(r.get(c), None)) if c in table.keys
                 else _number_cell(c, r.get(c), digits) if is_number(r.get(c)) else Cell(format_value(r.get(c)))
                 for c in columns]
        if summary:
            mean, std = r.get("mean"), r.get("std")
            text = format_value(mean, digits) + (f" ± {format_value(std, digits)}" if is_number(std) else "")
            cells.append(Cell(text, "num"))
        rows.append(Row(cells, front=r.get("pareto") is True))
    tests = [text for column, text in TESTS.items() if column in columns]
    notes = [note] if note else []
    if tests:
        notes.append(f"Test: {tests[0]}; p < 0.05 shaded. pct_change = 100 · (variant − baseline) / |baseline|.")
    if summary:
        notes.append("std: sample standard deviation (ddof 1); ci_low/ci_high: percentile bootstrap interval "
                     "of the mean.")
    if "pareto" in columns:
        notes.append("Bold rows are on the Pareto front.")
    return HtmlTable(name, shown, rows, " ".join(notes))


def png_data(image: np.ndarray) -> tuple[str, int, int]:
    """A data: URL of an RGB image (``[H, W, 3]`` floats in 0..1 or uint8), its width and height."""
    from PIL import Image

    pixels = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), pixels.shape[1], pixels.shape[0]


def figure(name: str, image: np.ndarray, href: str = "") -> Figure:
    src, width, height = png_data(image)
    return Figure(name, src, width, height, href)


def href(path: Path, page_folder: Path) -> str:
    """A link from the page to ``path``, relative so the folder can be moved or zipped."""
    return Path(os.path.relpath(path, page_folder)).as_posix()


def config_items(values: dict) -> list[tuple[str, str]]:
    def text(v) -> str:
        if isinstance(v, float) and math.isfinite(v):
            return repr(v)
        return str(v)

    return [(str(k), text(v)) for k, v in values.items()]


def workflow_sections(prompt: dict) -> list[Section]:
    """One section per node of an API workflow: its title and the values of its widget inputs
    (links are left out: the graph is in the saved workflow)."""
    sections = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            continue
        title = (node.get("_meta") or {}).get("title") or node["class_type"]
        values = {k: v for k, v in (node.get("inputs") or {}).items() if not (isinstance(v, list) and len(v) == 2
                  and isinstance(v[1], int))}
        sections.append(Section(f"{title} (node {node_id}, {node['class_type']})", config_items(values)))
    return sections


def render(report: Report) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from .. import __version__

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(report=report, version=__version__)


def write(report: Report, path: Path) -> Path:
    from .files import atomic_write_text

    return atomic_write_text(path, render(report))
