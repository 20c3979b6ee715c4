"""Presenting and saving ``LL_SCORES`` tables: plain-text / markdown and image previews, CSV/JSON files."""

from __future__ import annotations

import math

from .scores import ScoreTable
from .stats import is_number


def format_value(value, digits: int | None = 4) -> str:
    """A cell for reading: floats to ``digits`` significant digits without an exponent between 1e-3
    and 1e6, in scientific notation outside (tiny p-values); ``digits=None`` (key columns such as
    cfg) as typed. Files keep full precision."""
    if value is None:
        return ""
    if isinstance(value, float) and digits is not None:
        if not math.isfinite(value) or value == 0:
            return "0" if value == 0 else str(value)
        magnitude = math.floor(math.log10(abs(value)))
        if -3 <= magnitude < 6:
            return f"{value:.{max(digits - 1 - magnitude, 0)}f}"
        return f"{value:.{max(digits - 1, 0)}e}"
    return " ".join(str(value).split())


def _cell(value, digits: int | None, width: int) -> str:
    text = format_value(value, digits).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def table_cells(table: ScoreTable, digits: int = 4, max_rows: int = 50, max_width: int = 40):
    """Header, rows of cell texts (at most ``max_rows``), which columns are numeric, rows left out."""
    columns = table.columns
    numeric = [all(r.get(c) is None or is_number(r.get(c)) for r in table.rows) for c in columns]
    rows = [[_cell(r.get(c), None if c in table.keys else digits, max_width) for c in columns]
            for r in table.rows[:max_rows]]
    return columns, rows, numeric, max(0, len(table) - max_rows)


def to_markdown(table: ScoreTable, digits: int = 4, max_rows: int = 50, max_width: int = 40) -> str:
    """A GitHub-markdown table, padded so it also reads as plain text; numbers right-aligned."""
    columns, rows, numeric, more = table_cells(table, digits, max_rows, max_width)
    if not columns:
        return "(empty table)"
    widths = [max(3, len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric, strict=True)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    text = "\n".join([line(columns), rule, *map(line, rows)])
    return text + (f"\n\n… {more} more row(s) (the saved CSV/JSON has all)" if more else "")


def render_table_image(table: ScoreTable, digits: int = 4, max_rows: int = 50, max_width: int = 40,
                       font_size: int = 14):
    """The table as a PIL image (black on white, header rule, numbers right-aligned), for an
    ``IMAGE`` preview: ComfyUI shows images on any node, text only on its own Preview as Text."""
    from PIL import Image, ImageDraw, ImageFont

    columns, rows, numeric, more = table_cells(table, digits, max_rows, max_width)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    lines = [columns, *rows]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(measure.textlength(line[i], font=font) for line in lines) for i in range(len(columns))]
    pad, height = font_size, int(font_size * 1.6)
    footer = [f"… {more} more row(s)"] if more else []
    size = (int(sum(widths) + pad * (len(columns) + 1)) or 200, height * (len(lines) + len(footer)) + pad)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([(0, 0), (size[0], pad // 2 + height - 3)], fill="#e6e6e6")
    for r, line in enumerate(lines):
        x, top = pad, pad // 2 + r * height
        for text, width, num in zip(line, widths, numeric, strict=True):
            offset = width - draw.textlength(text, font=font) if num else 0
            draw.text((x + offset, top), text, fill="black", font=font)
            x += width + pad
    for i, text in enumerate(footer):
        draw.text((pad, pad // 2 + (len(lines) + i) * height), text, fill="gray", font=font)
    return image


# --- Files -----------------------------------------------------------------------------------------

def to_csv(table: ScoreTable) -> str:
    """Header plus one line per row; floats at full precision (``repr``), ``None`` as an empty cell."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.rows)
    return buffer.getvalue()


def to_json(table: ScoreTable) -> str:
    """``{"keys", "columns", "rows"}``: reads back into a ScoreTable. Non-finite floats are written
    as ``NaN``/``Infinity``, as Python's json and the runner's results.jsonl do."""
    import json

    return json.dumps({"keys": list(table.keys), "columns": table.columns, "rows": table.rows}, indent=1) + "\n"


def save_scores(table: ScoreTable, root, filename_prefix: str, formats=("csv", "json")) -> list:
    """Write ``<prefix>_<NNNNN>_.csv`` / ``.json`` atomically inside ``root``. A CSV and its JSON share
    one number, and a lone CSV or JSON takes one that neither has. Returns the paths."""
    from .files import atomic_write_text, safe_prefix_path, write_numbered

    folder, stem = safe_prefix_path(root, filename_prefix)
    writers = {"csv": to_csv, "json": to_json}
    texts = {ext: writers[ext](table) for ext in formats}
    _, paths = write_numbered(folder, stem, {ext: lambda path, text=text: atomic_write_text(path, text)
                                             for ext, text in texts.items()}, count_also=tuple(writers))
    return paths
