"""``loralab report OUTPUT_DIR``: the HTML page of a finished (or sharded and collected) sweep, or
of one ``loralab run``, rebuilt from the files the runner wrote (``runs/<id>/result.json`` or
``run.json``), never from memory.

A sweep's page: the experiment (axes with a label per value, fixed overrides, runs done / failed),
one row per run, mean ± std and the 95 % bootstrap CI per axis combination, each value of an axis
against its baseline with a paired t-test, the Pareto front of two metrics and its scatter, and a
grid of one saved image per run with a row per value of one axis and a column per value of
another (seed 004's L1-L7 x sampler matrix). What goes where is read from the experiment's
``[report]`` table (keys in :data:`REPORT_KEYS`), else chosen from the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import invalid_prompt
from .results import RESULT, read_records
from .sweep import Experiment, check_report_table, load_experiment, run_count

RUN_RECORD = "run.json"
PAGE = "report.html"
GRID = "report_grid.png"
REPORT_NODES = ("LoRALabSummarize", "LoRALabCompare", "LoRALabPareto")  # tables about tables
FIGURE_NODES = ("LoRALabImageGrid", "LoRALabPlotScatter", "LoRALabPlotBars", "LoRALabPlotRadar",
                "LoRALabPlotLine", "LoRALabPlotTrainingCurves", "LoRALabShowScores")
PER_SAMPLE = ("category", "prompt", "seed", "image")


# --- Axes and labels -------------------------------------------------------------------------------

def _value_text(value) -> str:
    from ..core.grid import label_text

    return label_text(value) if not isinstance(value, (dict, list)) else json.dumps(value)


def axis_labels(name: str, values: list) -> list[str]:
    """A short label per value of an axis. A bundle's label is its ``run_name``/``name`` override
    when it has one, else the overrides that differ between its values, one per input name
    (``ddim steps=20 cfg=7.5``)."""
    if "." in name:
        return [_value_text(v) for v in values]
    named = [k for k in values[0] if k.rsplit(".", 1)[-1] in ("run_name", "name", "label")]
    if named and all(named[0] in v for v in values):
        return [_value_text(v[named[0]]) for v in values]
    keys = list(dict.fromkeys(k for v in values for k in v))
    varying = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in values}) > 1]
    shown = list({k.rsplit(".", 1)[-1]: k for k in reversed(varying)}.values())[::-1]  # first key per input name
    labels = []
    for v in values:
        parts = [(_value_text(v[k]) if isinstance(v.get(k), str) else f"{k.rsplit('.', 1)[-1]}={_value_text(v.get(k))}")
                 for k in shown if k in v]
        labels.append(" ".join(parts) or "·")
    return labels


def labelled_runs(exp: Experiment, records: list[dict]) -> dict[str, dict[str, str]]:
    """run id -> {axis: label of its value}, read from each run's recorded overrides (so a sweep
    run with extra ``--set`` values is labelled too), in the experiment's order (first axis
    slowest). A run matching no value of some axis (an older experiment) is left out."""
    names = list(exp.axes)
    labels = {n: axis_labels(n, exp.axes[n]) for n in names}

    def index(name: str, overrides: dict) -> int | None:
        for i, value in enumerate(exp.axes[name]):
            wanted = value if "." not in name else {name: value}
            if all(k in overrides and overrides[k] == v for k, v in wanted.items()):
                return i
        return None

    found = {}
    for record in records:
        position = [index(n, record.get("overrides") or {}) for n in names]
        if None not in position:
            found[record["run_id"]] = (position, record.get("repeat", 0))
    ordered = sorted(found, key=lambda r: found[r])
    return {r: {n: labels[n][i] for n, i in zip(names, found[r][0], strict=True)} for r in ordered}


# --- Choosing tables -------------------------------------------------------------------------------

@dataclass
class SweepData:
    exp: Experiment
    settings: dict
    records: list[dict]
    labels: dict[str, dict[str, str]]
    axes: list[str]
    titles: dict[str, str] = field(default_factory=dict)  # node id -> title
    classes: dict[str, str] = field(default_factory=dict)


def _workflow(exp: Experiment) -> dict:
    """The sweep's base workflow, read once; {} when it moved (the page then names nodes by id)."""
    from .cli import load_any

    try:
        prompt, _ = load_any(str(exp.workflow))
    except Exception:  # noqa: BLE001 - the page is still written
        return {}
    return {k: v for k, v in prompt.items() if isinstance(v, dict)}


def pick_node(data: SweepData, wanted: str | None) -> str:
    """The node whose rows are the per-image table: ``wanted`` (an id or title), else the
    non-report node with the most numeric values."""
    from ..core.stats import is_number

    counts: dict[str, int] = {}
    for record in data.records:  # values computed by the run itself: a node the axes do not reach is cached
        for row in record.get("scores") or []:
            counts[str(row.get("node"))] = counts.get(str(row.get("node")), 0) + (not row.get("cached")) * sum(
                1 for k, v in row.items() if k not in ("node", "cached") and is_number(v))
    if wanted:
        for node in counts:
            if wanted in (node, data.titles.get(node)):
                return node
        raise invalid_prompt(f"[report] scores = {wanted!r} names no node with score rows",
                             "nodes with rows: " + ", ".join(f"{n} ({data.titles.get(n, '?')})" for n in counts))
    candidates = {n: c for n, c in counts.items() if data.classes.get(n) not in REPORT_NODES} or counts
    if not candidates:
        raise invalid_prompt("No finished run has score rows", "run the sweep first (loralab sweep EXP.toml)")
    return max(candidates, key=lambda n: (candidates[n], -list(counts).index(n)))


def per_image_table(data: SweepData, node: str):
    """Every finished run's rows of ``node``, with a column per axis (its value's label)."""
    from ..core.generate import SCORE_KEYS
    from ..core.scores import ScoreTable

    rows, node_keys = [], []
    for record in data.records:
        labels = data.labels.get(record["run_id"])
        if labels is None:
            continue  # a run of an older version of the experiment
        node_keys += [k for k in (record.get("score_keys") or {}).get(node, SCORE_KEYS) if k not in node_keys]
        rows += [{**labels, "run_id": record["run_id"],
                  **{k: v for k, v in row.items() if k not in ("node", "cached")}}
                 for row in record.get("scores") or [] if str(row.get("node")) == node]
    keys = tuple(data.axes) + tuple(k for k in node_keys if k not in data.axes and any(k in r for r in rows))
    return ScoreTable(keys, rows)


# --- Grid across runs ------------------------------------------------------------------------------

def run_images(output_dir: Path, record: dict, prefix: str) -> list[Path]:
    """The images a run saved under ``prefix`` (a Save Image filename_prefix), found in its folder
    (paths are rebased, so a folder collected from shards or moved still works)."""
    run_dir = output_dir / "runs" / record["run_id"]
    stem = Path(prefix)
    found = sorted((run_dir / stem.parent).glob(f"{stem.name}_*.png"))
    return [p for p in found if p.is_file()]


def sweep_grid(output_dir: Path, data: SweepData, rows: str, columns: str, prefix: str, index: int):
    """The grid (PIL) of image ``index`` under ``prefix`` of every finished run, or None when no
    run saved one."""
    from PIL import Image

    from ..core.grid import image_grid

    pictures, row_values, column_values = [], [], []
    size = None
    for record in data.records:
        labels = data.labels.get(record["run_id"])
        if labels is None:
            continue
        found = run_images(output_dir, record, prefix)
        if len(found) <= index:
            continue
        with Image.open(found[index]) as opened:
            picture = opened.convert("RGB")
        size = size or _tile(picture.size)
        pictures.append(np.asarray(picture.resize(size) if picture.size != size else picture))
        row_values.append(labels.get(rows, ""))
        column_values.append(labels.get(columns, ""))
    if not pictures:
        return None
    images = np.stack(pictures).astype(np.float32) / 255.0
    order = {a: axis_labels(a, data.exp.axes[a]) for a in (rows, columns) if a in data.exp.axes}
    grid, _ = image_grid(images, row_values, column_values, rows, columns,
                         orders=(order.get(rows), order.get(columns)))
    return grid


def _tile(size: tuple[int, int], longest: int = 192) -> tuple[int, int]:
    """Large renders are scaled down so a 7 x 11 grid stays a readable page."""
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# --- Pages -----------------------------------------------------------------------------------------

def _metrics(table, wanted) -> list[str]:
    from ..core.stats import StatsError, metric_columns

    try:
        return metric_columns(table, wanted or None, exclude=("run_id", "run_seconds", "repeat"))
    except StatsError as e:
        raise invalid_prompt(f"[report] metrics: {e}") from None


def _stats(what: str, compute):
    from ..core.stats import StatsError

    try:
        return compute()
    except StatsError as e:
        raise invalid_prompt(f"[report] {what}: {e}", f"input {e.input!r}") from None


def sweep_report(output_dir: Path, experiment: str | None = None, settings: dict | None = None):
    """The page of a sweep, from ``output_dir/runs/*/result.json`` and its experiment file."""
    from ..core import report_html as H
    from ..core.stats import compare, pareto, summarize

    records = read_records(output_dir)
    if not records:
        raise invalid_prompt(f"{str(output_dir)!r} holds no runs/*/{RESULT}", "run loralab sweep first")
    exp_path = experiment or records[0].get("experiment")
    try:
        exp = load_experiment(exp_path)
    except Exception as e:  # noqa: BLE001 - WorkflowError from a moved file: say which file to pass
        raise invalid_prompt(f"Cannot read the sweep's experiment file {exp_path!r}: {e}",
                             "pass it with --experiment EXP.toml") from None
    chosen = {**exp.report, **(settings or {})}
    labels = labelled_runs(exp, records)
    position = {run: i for i, run in enumerate(labels)}
    records.sort(key=lambda r: position.get(r["run_id"], len(position)))  # the experiment's order
    finished = [r for r in records if r.get("status") == "done"]
    axes = list(exp.axes)
    for key in ("compare", "rows", "columns"):
        if chosen.get(key) and chosen[key] not in axes:
            raise invalid_prompt(f"[report] {key} = {chosen[key]!r} is not an axis of the experiment",
                                 f"axes: {', '.join(axes) or 'none'}")
    workflow = _workflow(exp)
    titles = {k: (v.get("_meta") or {}).get("title") or v.get("class_type", k) for k, v in workflow.items()}
    classes = {k: v.get("class_type", "") for k, v in workflow.items()}
    data = SweepData(exp, chosen, finished, labels, axes, titles, classes)
    page_dir = output_dir
    report = H.Report(chosen.get("title") or f"Sweep {exp.path.stem}",
                      f"sweep of {run_count(exp)} runs: {len(finished)} done, "
                      f"{sum(r.get('status') == 'failed' for r in records)} failed")
    axis_items = [(n, " | ".join(axis_labels(n, v))) for n, v in exp.axes.items()]
    report.config = [
        H.Section("Experiment", [("file", str(exp.path)), ("workflow", str(exp.workflow)), ("mode", exp.mode),
                                 ("repeats", str(exp.repeats)), ("runs", str(run_count(exp)))]),
        H.Section("Axes (a label per value)", axis_items),
        H.Section("Fixed overrides [set]", H.config_items(exp.fixed)),
    ]
    # Runs
    run_rows = []
    for r in records:
        cells = [H.Cell(r["run_id"], href=H.href(output_dir / "runs" / r["run_id"] / RESULT, page_dir))]
        cells += [H.Cell(labels.get(r["run_id"], {}).get(a, "(not in the experiment)")) for a in axes]
        cells += [H.Cell(r.get("status", "")), H.Cell(f"{r.get('seconds') or 0:.1f}", "num")]
        run_rows.append(H.Row(cells))
    runs_table = H.HtmlTable("Runs", ["run", *axes, "status", "seconds"], run_rows)
    if not finished:
        report.tables.append(runs_table)
        return report
    node = pick_node(data, chosen.get("scores"))
    table = per_image_table(data, node)
    metrics = _metrics(table, chosen.get("metrics"))
    node_name = titles.get(node, f"node {node}")
    summary = _stats("summary", lambda: summarize(table, axes, metrics))
    report.tables.append(H.html_table(f"Mean ± std per configuration: {node_name}", summary,
                                      note=f"{len(table)} rows from {len(finished)} runs; 95 % bootstrap CI "
                                           "(10,000 resamples, seed 0)."))
    compared = chosen.get("compare") or (axes[0] if axes else "")
    if compared:
        baseline = chosen.get("baseline") or axis_labels(compared, exp.axes[compared])[0]
        pair_on = [a for a in axes if a != compared] + [k for k in PER_SAMPLE if k in table.keys]
        # Per-run settings (model, sampler, steps) differ with the compared axis: not pairing keys.
        comparison = _stats("compare", lambda: compare(table, compared, baseline, pair_on, (), metrics, "paired"))
        report.tables.append(H.html_table(f"Each {compared} against {baseline} (paired on "
                                          f"{', '.join(pair_on) or 'nothing'})", comparison))
    if chosen.get("pareto") and axes:
        x, y = chosen["pareto"]
        xb, yb = chosen.get("pareto_better", ["higher", "higher"])
        front = _stats("pareto", lambda: pareto(table, x, y, xb, yb, axes))
        report.tables.append(H.html_table(f"Pareto front: {x} ({xb} is better) vs {y} ({yb} is better)", front))
        from ..core.plots import label_of, scatter

        kept = [p for p in front.rows if p["pareto"] is not None]
        picture = scatter(kept, x, y, [p["pareto"] for p in kept], axes[0], [label_of(p, axes) for p in kept],
                          f"{y} vs {x}, one point per configuration (front ringed)")
        report.figures.append(H.figure(f"Pareto front: {x} vs {y}", picture))
    report.tables.append(runs_table)
    # Grid across runs
    prefix = chosen.get("images") or _first_image_prefix(workflow)
    if prefix and axes:
        rows_axis = chosen.get("rows") or axes[0]
        columns_axis = chosen.get("columns") or (axes[1] if len(axes) > 1 else "")
        grid = sweep_grid(output_dir, data, rows_axis, columns_axis, prefix, chosen.get("image", 0))
        if grid is not None:
            from ..core.files import atomic_write

            path = atomic_write(output_dir / GRID, lambda tmp: grid.save(tmp, format="PNG"))
            report.figures.insert(0, H.figure(f"Image {chosen.get('image', 0)} of '{prefix}' per run: "
                                              f"{rows_axis} x {columns_axis or '-'}", np.asarray(grid),
                                              H.href(path, page_dir)))
    report.files = [H.Link(p.relative_to(output_dir).as_posix(), H.href(p, page_dir))
                    for p in [output_dir / "results.csv", output_dir / "results.jsonl",
                              *sorted(output_dir.glob("runs/*/**/*.safetensors"))] if p.is_file()]
    return report


def _first_image_prefix(prompt: dict) -> str:
    return next((n["inputs"].get("filename_prefix", "") for n in prompt.values()
                 if n.get("class_type") in ("LoRALabSaveImage", "SaveImage")), "")


def run_report(output_dir: Path):
    """The page of one ``loralab run``, from ``output_dir/run.json``."""
    from ..core import report_html as H
    from ..core.scores import ScoreTable

    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise invalid_prompt(f"{str(output_dir)!r} holds neither a sweep (runs/*/{RESULT}) nor a run "
                             f"({RUN_RECORD})", str(e)) from None
    prompt = record.get("prompt") or {}
    nodes = record.get("nodes", [])
    report = H.Report(f"Run of {Path(record.get('workflow', 'workflow')).name}",
                      f"{len(nodes)} nodes in {sum(n['seconds'] for n in nodes):.1f} s")
    report.config = H.workflow_sections(prompt)
    by_node: dict[str, list] = {}
    for row in record.get("scores") or []:
        by_node.setdefault(str(row.get("node")), []).append(
            {k: v for k, v in row.items() if k not in ("node", "cached")})
    for node, rows in by_node.items():
        title = ((prompt.get(node) or {}).get("_meta") or {}).get("title") or f"node {node}"
        keys = tuple((record.get("score_keys") or {}).get(node, ()))
        report.tables.append(H.html_table(title, ScoreTable(keys, rows)))
    for figure in record.get("figures") or []:
        path = Path(figure["path"])
        if path.is_file():
            from PIL import Image

            with Image.open(path) as opened:
                pixels = np.asarray(opened.convert("RGB"))
            report.figures.append(H.figure(figure["title"], pixels, H.href(path, output_dir)))
    report.files = [H.Link(Path(p).name, H.href(Path(p), output_dir)) for p in record.get("images") or []
                    if Path(p).is_file()]
    report.files += [H.Link(p.relative_to(output_dir).as_posix(), H.href(p, output_dir))
                     for p in sorted(output_dir.glob("loras/**/*.safetensors"))]
    return report


def cmd_report(args) -> int:
    from ..core import report_html

    output_dir = Path(args.output_dir).resolve()
    if not output_dir.is_dir():
        raise invalid_prompt(f"{str(output_dir)!r} is not a folder", "give the output folder of a sweep or run")
    settings = {}
    for key in ("title", "rows", "columns", "images", "compare", "baseline", "scores"):
        if getattr(args, key, None):
            settings[key] = getattr(args, key)
    if args.pareto:
        settings["pareto"] = args.pareto.split(",")
    sweep = (output_dir / "runs").is_dir()
    report = sweep_report(output_dir, args.experiment, check_report_table(settings)) if sweep \
        else run_report(output_dir)
    path = report_html.write(report, output_dir / PAGE)
    print(f"wrote {path} ({len(report.tables)} tables, {len(report.figures)} figures)")
    return 0
