"""Results people look at: labelled image grids, plot nodes, the HTML report (node and
`loralab report`), checked by geometry, against brute force and in a real headless browser."""

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import loralab
from loralab.core.grid import image_grid, ordered_values
from loralab.core.report_html import Report, html_table, render
from loralab.core.score_report import format_value
from loralab.core.scores import ScoreTable
from loralab.headless.cli import main
from loralab.nodes.report import (
    LoRALabImageGrid,
    LoRALabPlotBars,
    LoRALabPlotLine,
    LoRALabPlotRadar,
    LoRALabPlotScatter,
    LoRALabSummarize,
)

QUICKSTART = Path(loralab.__file__).parent / "workflows" / "quickstart.json"


def solid(n, h=16, w=24, seed=0):
    """Images of one flat colour each, distinct, so a cell shows which image landed in it."""
    colours = np.random.default_rng(seed).integers(0, 256, size=(n, 3)).astype(np.float32) / 255
    return np.broadcast_to(colours[:, None, None, :], (n, h, w, 3)).copy()


# --- Grid ------------------------------------------------------------------------------------------

def test_grid_places_every_image_in_its_cell_numbers_ascending():
    cfgs = [7.5, 1.0, 15.0, 7.5, 1.0, 15.0]
    loras = ["L2", "L2", "L2", "L1", "L1", "L1"]
    images = solid(6)
    picture, layout = image_grid(images, loras, cfgs, "lora", "cfg")
    pixels = np.asarray(picture)
    assert layout.rows == ("L2", "L1") and layout.columns == (1.0, 7.5, 15.0)  # first seen; numbers sorted
    assert picture.size == layout.size
    (cw, ch), g = layout.cell, layout.gap
    assert layout.size == (layout.label_width + 3 * (cw + g) + g, layout.header_height + 2 * (ch + g) + g)
    for i, (r, c) in enumerate(zip(loras, cfgs, strict=True)):
        x, y = layout.box(layout.rows.index(r), layout.columns.index(c))
        expected = np.round(images[i] * 255).astype(np.uint8)
        assert np.array_equal(pixels[y:y + 16, x:x + 24], expected), f"image {i} is not in cell ({r}, {c})"
    # Labels: ink in the label column beside each row and above each column.
    for r in range(2):
        y = layout.box(r, 0)[1]
        assert (pixels[y:y + 12, :layout.label_width] < 128).any()
    for c in range(3):
        x = layout.box(0, c)[0]
        assert (pixels[:layout.header_height, x:x + cw] < 128).any()


def test_grid_puts_images_of_one_cell_side_by_side_and_checks_lengths():
    images = solid(3)
    picture, layout = image_grid(images, ["a", "a", "b"], [1, 1, 1])
    assert layout.slots == 2 and layout.cell == (2 * 24 + layout.gap, 16)
    pixels = np.asarray(picture)
    x, y = layout.box(0, 0, slot=1)
    assert np.array_equal(pixels[y:y + 16, x:x + 24], np.round(images[1] * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="3 images but 2 row labels"):
        image_grid(images, ["a", "b"], [1, 2, 3])
    assert ordered_values([10, 2, 100, 2]) == (2, 10, 100) and ordered_values(["b", "a", "b"]) == ("b", "a")


def test_image_grid_node_reads_labels_from_score_rows_and_saves_a_png(output_dir):
    rows = [{"model": m, "prompt": p, "seed": s} for m in ("base", "lora") for p in ("a cat", "a dog") for s in (0, 1)]
    table = ScoreTable(("model", "prompt", "seed"), rows)
    images = torch.from_numpy(solid(8, 32, 32))
    out = LoRALabImageGrid().grid(images, "prompt", "model", "title", "grids/g", image_scores=table)
    (grid,) = out["result"]
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    saved = out["ui"]["images"][0]
    assert (output_dir / saved["subfolder"] / saved["filename"]).is_file()
    _, layout = image_grid(images.numpy(), [r["prompt"] for r in rows], [r["model"] for r in rows], "prompt", "model",
                           "title")
    assert tuple(grid.shape[1:3]) == (layout.size[1], layout.size[0]) and layout.slots == 2
    unlabelled = LoRALabImageGrid().grid(images, "", "", "", "")["result"][0]
    assert tuple(unlabelled.shape[1:3]) == (3 * 32 + 4 * 4, 3 * 32 + 4 * 4)  # near-square 3 x 3, 4 px gaps
    with pytest.raises(ValueError, match="Image Grid: input 'rows': column 'lora' is not in 'image_scores'"):
        LoRALabImageGrid().grid(images, "lora", "model", "", "g", image_scores=table)
    with pytest.raises(ValueError, match="input 'image_scores': 8 rows for 4 images"):
        LoRALabImageGrid().grid(images[:4], "prompt", "model", "", "g", image_scores=table)
    with pytest.raises(ValueError, match="input 'image_scores': rows and columns name score columns"):
        LoRALabImageGrid().grid(images, "prompt", "model", "", "g")


# --- Plots -----------------------------------------------------------------------------------------

def scores_table():
    rng = np.random.default_rng(1)
    rows = [{"model": m, "sampler": s, "steps": st, "prompt": f"p{p}", "seed": 0,
             "ssim": float(rng.random()), "lpips": float(rng.random()), "seconds_per_image": float(rng.random())}
            for m in ("base", "L1", "L2") for s in ("euler", "ddim") for st in (10, 20) for p in range(3)]
    return ScoreTable(("model", "sampler", "steps", "prompt", "seed"), rows)


@pytest.mark.parametrize("size", [(640, 480), (333, 211)])
def test_plot_nodes_return_images_of_the_declared_size(output_dir, size):
    w, h = size
    table = scores_table()
    summary = LoRALabSummarize().summarize(table, "model", "ssim, lpips", 200, 0.95, 0)[0]
    figures = [
        LoRALabPlotScatter().plot(table, "ssim", "higher", "lpips", "lower", "model, sampler", "sampler", w, h, ""),
        LoRALabPlotBars().plot(summary, "", "auto", w, h, "bars"),
        LoRALabPlotBars().plot(table, "ssim", "model", w, h, ""),  # a per-image table, summarized inside
        LoRALabPlotRadar().plot(summary, "ssim, lpips", "auto", w, h, ""),
        LoRALabPlotLine().plot(table, "steps", "ssim", "model", w, h, ""),
    ]
    for out in figures:
        (image,) = out["result"]
        assert tuple(image.shape) == (1, h, w, 3) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01  # something drawn
        assert out["ui"]["images"]


def test_plot_nodes_name_the_input_that_is_wrong(output_dir):
    table = scores_table()
    with pytest.raises(ValueError, match="Plot Scatter: input 'x': column 'clip' is not in the table"):
        LoRALabPlotScatter().plot(table, "clip", "higher", "lpips", "lower", "model", "", 400, 300, "")
    with pytest.raises(ValueError, match="Plot Scatter: input 'colour_by': column 'prompt'"):
        LoRALabPlotScatter().plot(table, "ssim", "higher", "lpips", "lower", "model", "prompt", 400, 300, "")
    with pytest.raises(ValueError, match="Plot Line: input 'axis': column 'cfg' is not in the table"):
        LoRALabPlotLine().plot(table, "cfg", "ssim", "", 400, 300, "")
    with pytest.raises(ValueError, match="Plot Bars: input 'metrics': .*'fid'"):
        LoRALabPlotBars().plot(table, "fid", "model", 400, 300, "")
    with pytest.raises(ValueError, match="64 to 8192"):
        LoRALabPlotLine().plot(table, "steps", "ssim", "", 10, 300, "")


def test_scatter_rings_exactly_the_pareto_front():
    """The front drawn is the Pareto Front node's: rings (black, unfilled) only at front points."""
    from loralab.core.plots import scatter
    from loralab.core.stats import pareto

    table = scores_table()
    front = pareto(table, "ssim", "lpips", "higher", "lower", ("model", "sampler", "steps")).rows
    picture = scatter(front, "ssim", "lpips", [p["pareto"] for p in front], width=500, height=400)
    none = scatter(front, "ssim", "lpips", [False] * len(front), width=500, height=400)
    black = (picture < 0.1).all(-1).sum() - (none < 0.1).all(-1).sum()
    assert sum(p["pareto"] for p in front) >= 1 and black > 50  # the front's line and rings add ink


def test_front_labels_of_points_that_coincide_are_written_once_joined():
    """Several configurations at one point (seed 004's L5/L7) share one label instead of overprinting."""
    from matplotlib.figure import Figure

    from loralab.core.plots import _annotate_once

    ax = Figure(figsize=(5, 4), dpi=100).subplots()
    xy = [(0.0, 0.0), (0.5, 0.5), (0.5, 0.5 + 1e-4), (1.0, 1.0), (0.5, 0.5)]
    ax.scatter(*zip(*xy, strict=True))
    texts = _annotate_once(ax, xy, ["L1", "L5", "L7", "L3", "L5"])
    assert texts == ["L1", "L5, L7", "L3"] and [t.get_text() for t in ax.texts] == texts


# --- HTML ------------------------------------------------------------------------------------------

class Tables(HTMLParser):
    """Every table of a page as rows of cell texts (header row first)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def parse(html: str) -> Tables:
    parser = Tables()
    parser.feed(html)
    return parser


def test_every_row_is_in_the_page_and_hostile_text_is_escaped():
    rows = [{"model": f"m{i}", "prompt": "<script>alert(1)</script> & co", "ssim": i / 7, "p_value": 0.01 * i}
            for i in range(30)]
    table = ScoreTable(("model", "prompt"), rows)
    html = render(Report("<b>title</b>", tables=[html_table("scores", table)]))
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>title" not in html
    (parsed,) = parse(html).tables
    assert parsed[0] == ["model", "prompt", "ssim", "p_value"]
    assert len(parsed) == 31
    for row, cells in zip(rows, parsed[1:], strict=True):
        assert cells == [row["model"], row["prompt"], format_value(row["ssim"]), format_value(row["p_value"])]


def open_in_browser(page_path: Path, screenshot: Path | None = None) -> dict:
    """Load a page in headless Chromium; what it logged, failed and requested."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if chromium is None:
        pytest.skip("no Chromium on this machine (CI installs Debian's chromium)")
    seen = {"errors": [], "failed": [], "requests": []}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("requestfailed", lambda r: seen["failed"].append(r.url))
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        seen["broken_images"] = page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        if screenshot:
            page.screenshot(path=str(screenshot))
        browser.close()
    return seen


# --- Save Report through the runner, loralab report on a sweep -------------------------------------

def small_workflow(tmp_path: Path) -> Path:
    wf = json.loads(QUICKSTART.read_text())
    wf = {k: wf[k] for k in ("1", "2", "3", "5", "7")}
    wf["2"]["inputs"]["text"] = "standard: a red circle\nstandard: a blue square"
    wf["5"]["inputs"].update(width=32, height=32, images_per_prompt=2, steps=2)
    wf["9"] = {"class_type": "LoRALabSummarize", "_meta": {"title": "Mean and std"},
               "inputs": {"scores": ["5", 1], "group_by": "auto", "metrics": "seconds_per_image", "resamples": 200,
                          "confidence": 0.95, "seed": 0}}
    wf["10"] = {"class_type": "LoRALabImageGrid", "_meta": {"title": "Grid"},
                "inputs": {"images": ["5", 0], "image_scores": ["5", 1], "rows": "prompt", "columns": "seed",
                           "title": "", "filename_prefix": "grid"}}
    wf["11"] = {"class_type": "LoRALabSaveReport", "_meta": {"title": "Report"},
                "inputs": {"title": "Small run", "filename_prefix": "report/page", "scores_1": ["9", 0],
                           "scores_2": ["5", 1], "figure_1": ["10", 0]}}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(wf))
    return path


def test_save_report_node_writes_a_page_with_the_tables_figures_and_files(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(small_workflow(tmp_path)), "-o", str(out), "-q"]) == 0
    (page,) = (out / "report").glob("page_*.html")
    html = page.read_text()
    parsed = parse(html)
    assert "Small run" in html and ">Mean and std<" in html and "Generate A · cost" in html
    score_rows = [t for t in parsed.tables if t and "seconds_per_image" in t[0] and "prompt" in t[0]]
    assert len(score_rows) == 1 and len(score_rows[0]) == 1 + 4  # 2 prompts x 2 images, every row
    assert any(img["src"].startswith("data:image/png;base64,") for img in parsed.images)
    assert "../quickstart/euler_00001_.png" in html  # a link to a saved image, relative to the page
    record = json.loads((out / "run.json").read_text())
    assert record["score_keys"]["5"][:3] == ["model", "sampler", "steps"]
    # loralab report rebuilds the run's page from run.json
    assert main(["report", str(out)]) == 0
    rebuilt = (out / "report.html").read_text()
    assert "Grid" in rebuilt and len(parse(rebuilt).images) >= 1
    seen = open_in_browser(page)
    assert seen["errors"] == [] and seen["failed"] == [] and seen["broken_images"] == 0
    assert all(url.startswith("file://") for url in seen["requests"])


REPORT_EXPERIMENT = """workflow = "small.json"
[axes]
"Sampler A.sampler_name" = ["euler", "ddim"]
"Generate A.steps" = [3, 2]
[report]
title = "Sampler x steps"
images = "quickstart/euler"
pareto = ["seconds_per_image", "peak_memory_mb"]
pareto_better = ["lower", "lower"]
metrics = ["seconds_per_image"]
"""


def test_loralab_report_on_a_sweep_has_the_grid_the_t_tests_and_every_row(tmp_path, capsys):
    small_workflow(tmp_path)
    exp = tmp_path / "exp.toml"
    exp.write_text(REPORT_EXPERIMENT)
    out = tmp_path / "sweep"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    tables = parse(html).tables
    summary = next(t for t in tables if "mean ± std" in t[0])
    assert len(summary) == 1 + 4  # one row per sampler x steps configuration (one metric)
    steps_order = [row[1] for row in summary[1:]]
    assert steps_order == ["3", "2", "3", "2"]  # the experiment's order, not the rows' order on disk
    comparison = next(t for t in tables if "p_value" in t[0])
    assert len(comparison) == 2 and comparison[1][0] == "ddim" and "paired t-test" in html
    assert next(t for t in tables if t[0][:1] == ["run"])[1:] and html.count("runs/") >= 4
    assert "Pareto front" in html
    from PIL import Image

    with Image.open(out / "report_grid.png") as grid:
        width, height = grid.size
    assert width > 2 * 32 * 2 and height > 2 * 32  # 2 x 2 runs of 32 px images, labels beside
    seen = open_in_browser(out / "report.html")
    assert seen["errors"] == [] and seen["failed"] == [] and seen["broken_images"] == 0
    # Bad settings are refused by name
    assert main(["report", str(out), "--compare", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_report_table_in_an_experiment_is_checked(tmp_path, capsys):
    small_workflow(tmp_path)
    exp = tmp_path / "exp.toml"
    exp.write_text('workflow = "small.json"\n[axes]\n"Generate A.steps" = [2]\n[report]\ngrid = "x"\n')
    assert main(["sweep", str(exp), "--dry-run"]) == 2
    assert "[report] has an unknown key 'grid'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "holds neither a sweep" in capsys.readouterr().err


def test_runs_are_labelled_from_their_overrides_in_the_experiments_order(tmp_path):
    from loralab.headless.report import axis_labels, labelled_runs
    from loralab.headless.sweep import expand, load_experiment

    small_workflow(tmp_path)
    exp_path = tmp_path / "exp.toml"
    exp_path.write_text('workflow = "small.json"\n[axes]\n"Generate A.steps" = [20, 5]\nbundle = [\n'
                        '  { "Sampler A.sampler_name" = "ddim", "Generate A.cfg" = 7.5 },\n'
                        '  { "Sampler A.sampler_name" = "euler", "Generate A.cfg" = 3.0 },\n]\n')
    exp = load_experiment(exp_path)
    assert axis_labels("bundle", exp.axes["bundle"]) == ["ddim cfg=7.5", "euler cfg=3.0"]
    assert axis_labels("x", [{"Train LoRA.run_name": "L1", "A.rank": 4}, {"Train LoRA.run_name": "L2", "A.rank": 8}]) \
        == ["L1", "L2"]
    runs = list(expand(exp))
    extra = {"Generate A.seed": 3}  # as `loralab sweep --set` adds: other run ids, same labels
    records = [{"run_id": f"id{i}", "overrides": {**r.overrides, **extra}, "repeat": 0}
               for i, r in enumerate(reversed(runs))]
    labels = labelled_runs(exp, records + [{"run_id": "old", "overrides": {"Generate A.steps": 7}}])
    assert list(labels.values()) == [{"Generate A.steps": "20", "bundle": "ddim cfg=7.5"},
                                     {"Generate A.steps": "20", "bundle": "euler cfg=3.0"},
                                     {"Generate A.steps": "5", "bundle": "ddim cfg=7.5"},
                                     {"Generate A.steps": "5", "bundle": "euler cfg=3.0"}]
