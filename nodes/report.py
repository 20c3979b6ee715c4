"""Score tables: combine, summarize, compare with a baseline, Pareto fronts, save and show."""

JOINS = ("outer", "inner", "concat")  # core.stats.JOINS, repeated so declaring imports no numpy
TESTS = ("paired", "welch")
BETTER = ("higher", "lower")
SAVE_FORMATS = ("csv", "json", "csv+json")
COMBINE_SLOTS = 4

SCORES = ("LL_SCORES", {"tooltip": "A score table (Generate's cost, a metric node's scores, another report node)."})
METRICS = ("STRING", {"default": "", "tooltip": "Metric columns, comma-separated (e.g. 'ssim, lpips'); empty = "
                      "every numeric non-key column except image, width, height, rank, alpha, strength."})
TEXT_OUT = "The table as aligned markdown (wire it to ComfyUI's Preview as Text, Markdown mode)."


def _columns(text: str):
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _group(text: str):
    """'auto' -> None (core.stats.auto_group), '' -> no grouping, else the named columns."""
    return None if text.strip().lower() == "auto" else _columns(text)


def _run(node: str, compute):
    """Call a core.stats function; its StatsError becomes a message naming this node and input."""
    from ..core.stats import StatsError

    try:
        return compute()
    except StatsError as e:
        raise ValueError(f"LoRA Lab: {node}: input '{e.input}': {e}") from None


def _with_text(table):
    from ..core.score_report import to_markdown

    return (table, to_markdown(table))


class LoRALabCombineScores:
    DESCRIPTION = ("Join score tables from several branches on their shared key columns (model, sampler, steps, "
                   "cfg, category, prompt, seed, ...), e.g. Generate's cost with pixel, CLIP and LPIPS scores; "
                   "or concatenate tables of the same keys (two models' scores, to compare them).")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("The combined table; its keys are the union of the inputs' keys.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        slot = ("LL_SCORES", {"tooltip": "Another table to combine (optional)."})
        return {"required": {
            "scores_1": SCORES,
            "how": (list(JOINS), {"default": "outer", "tooltip":
                    "outer: join on shared keys, keep unmatched rows of every table (empty cells where a table "
                    "has no row). inner: keep matched rows only. concat: rows one after another (same keys). "
                    "A value column in several tables is kept once if they agree, else named <column>_<slot>."}),
        }, "optional": {f"scores_{i}": slot for i in range(2, COMBINE_SLOTS + 1)}}

    def combine(self, scores_1, how, **more):
        from ..core.stats import combine

        given = {1: scores_1, **{i: more.get(f"scores_{i}") for i in range(2, COMBINE_SLOTS + 1)}}
        slots = {i: t for i, t in given.items() if t is not None}
        return (_run("Combine Scores", lambda: combine(list(slots.values()), how, list(slots))),)


class LoRALabSummarize:
    DESCRIPTION = ("Mean, sample standard deviation, n and a percentile-bootstrap confidence interval of the mean "
                   "of every metric, per group (e.g. per model and prompt category): mean ± std tables as in "
                   "seeds 002 and 003. One row per group and metric.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("LL_SCORES", "STRING")
    RETURN_NAMES = ("summary", "text")
    OUTPUT_TOOLTIPS = ("Keys: the group columns and 'metric'; columns n, mean, std (ddof 1), ci_low, ci_high.",
                       TEXT_OUT)
    FUNCTION = "summarize"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": SCORES,
            "group_by": ("STRING", {"default": "auto", "tooltip":
                         "Columns to group by, comma-separated (e.g. 'model, category'). auto = every key "
                         "column except prompt, seed and image (one row per configuration and category); "
                         "empty = all rows in one group."}),
            "metrics": METRICS,
            "resamples": ("INT", {"default": 10000, "min": 100, "max": 1000000, "tooltip":
                          "Bootstrap resamples for the confidence interval (percentile method)."}),
            "confidence": ("FLOAT", {"default": 0.95, "min": 0.5, "max": 0.999, "step": 0.005, "tooltip":
                           "Confidence level of the interval (0.95 = 95% CI)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                     "tooltip": "Seed of the bootstrap draws: same seed, same interval (fixed: the editor "
                                "never changes it on Run)."}),
        }}

    def summarize(self, scores, group_by, metrics, resamples, confidence, seed):
        from ..core.stats import summarize

        return _with_text(_run("Summarize", lambda: summarize(scores, _group(group_by), _columns(metrics) or None,
                                                              resamples, confidence, seed)))


class LoRALabCompare:
    DESCRIPTION = ("Compare every value of a column (e.g. model) with a baseline value: mean of each side, mean "
                   "paired difference, % change vs the baseline and a t-test p-value, per metric and group "
                   "(seed 000's '% increase vs base model' table, seed 004's significance tests).")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("LL_SCORES", "STRING")
    RETURN_NAMES = ("comparison", "text")
    OUTPUT_TOOLTIPS = ("Keys: the compared column, the group columns and 'metric'; columns baseline, n_pairs and "
                       "unpaired (paired) or n_baseline and n_variant (welch), mean_baseline, mean_variant, "
                       "mean_diff, pct_change, t, p_value.", TEXT_OUT)
    FUNCTION = "compare"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": SCORES,
            "column": ("STRING", {"default": "model", "tooltip":
                       "The column whose values are compared (model, sampler, steps, cfg, lora, ...)."}),
            "baseline": ("STRING", {"default": "", "tooltip":
                         "The baseline value of that column (e.g. the base model's name, '20' for steps); "
                         "empty = the value in the table's first row."}),
            "group_by": ("STRING", {"default": "", "tooltip":
                         "Extra columns for one comparison per group, comma-separated (e.g. 'category'); "
                         "empty = one comparison per value over all rows."}),
            "metrics": METRICS,
            "test": (list(TESTS), {"default": "paired", "tooltip":
                     "paired: pair each row with the baseline row of the same pair_on values (same prompt and "
                     "seed) and run a paired t-test (scipy ttest_rel); unpaired rows are dropped and counted. "
                     "welch: compare the two groups' rows unpaired (Welch's t-test)."}),
            "pair_on": ("STRING", {"default": "auto", "tooltip":
                        "Paired test: the columns that identify a pair, comma-separated; auto = every key column "
                        "except the compared one."}),
        }}

    def compare(self, scores, column, baseline, group_by, metrics, test, pair_on):
        from ..core.stats import compare

        def run():
            if not scores.rows:
                raise ValueError("LoRA Lab: Compare: input 'scores': the table has no rows")
            chosen = baseline if baseline.strip() else scores.rows[0].get(column.strip())
            return compare(scores, column.strip(), chosen, _group(pair_on), _columns(group_by),
                           _columns(metrics) or None, test)

        return _with_text(_run("Compare", run))


class LoRALabPareto:
    DESCRIPTION = ("Mark the Pareto front of two metrics (seed 004: content vs style similarity, quality vs "
                   "seconds per image): the configurations no other one beats in both.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("LL_SCORES", "STRING")
    RETURN_NAMES = ("front", "text")
    OUTPUT_TOOLTIPS = ("One row per group (or per row): the two metrics (group means), n, and pareto "
                       "(true on the front).", TEXT_OUT)
    FUNCTION = "front"

    @classmethod
    def INPUT_TYPES(cls):
        def better(default, tooltip):
            return (list(BETTER), {"default": default, "tooltip": tooltip})

        return {"required": {
            "scores": SCORES,
            "x": ("STRING", {"default": "ssim", "tooltip": "First metric column (a quality score)."}),
            "x_better": better("higher", "Whether higher or lower x is better (lower for LPIPS or seconds)."),
            "y": ("STRING", {"default": "seconds_per_image", "tooltip": "Second metric column (e.g. a cost)."}),
            "y_better": better("lower", "Whether higher or lower y is better."),
            "group_by": ("STRING", {"default": "auto", "tooltip":
                         "Columns whose groups are the points (their mean x and y), comma-separated; auto = "
                         "every key column except prompt, seed and image; empty = every row is a point."}),
        }}

    def front(self, scores, x, x_better, y, y_better, group_by):
        from ..core.stats import auto_group, pareto

        groups = _group(group_by)
        groups = auto_group(scores) if groups is None else (groups or None)
        return _with_text(_run("Pareto", lambda: pareto(scores, x.strip(), y.strip(), x_better, y_better, groups)))


class LoRALabSaveScores:
    DESCRIPTION = ("Save a score table as CSV and/or JSON in the output folder (written atomically; numbered "
                   "like ComfyUI's images). Numbers keep full precision.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": SCORES,
            "filename_prefix": ("STRING", {"default": "loralab/scores", "tooltip":
                                "File name prefix; 'folder/name' saves into a subfolder of the output folder. "
                                "It can never leave the output folder."}),
            "format": (list(SAVE_FORMATS), {"default": "csv+json", "tooltip":
                       "csv: one header line, one line per row (empty cell = missing). json: {keys, columns, "
                       "rows}, non-finite numbers as NaN/Infinity like results.jsonl."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        from ..core.files import validate_name

        return validate_name(filename_prefix)

    def save(self, scores, filename_prefix, format):
        from ..core import runtime
        from ..core.files import UnsafePathError
        from ..core.score_report import save_scores

        if format not in SAVE_FORMATS:
            raise ValueError(f"LoRA Lab: Save Scores: input 'format': {format!r} is not one of "
                             f"{', '.join(SAVE_FORMATS)}")
        root = runtime.output_directory()
        try:
            paths = save_scores(scores, root, filename_prefix, format.split("+"))
        except UnsafePathError as e:
            raise ValueError(f"LoRA Lab: Save Scores: input 'filename_prefix': {e}") from None
        return {"ui": {"text": [p.relative_to(root.resolve()).as_posix() for p in paths]}}


class LoRALabShowScores:
    DESCRIPTION = ("Show a score table in the editor, as a picture of the table on this node; also gives it as "
                   "markdown text and as an IMAGE. Floats are shown to a few significant digits.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("text", "image")
    OUTPUT_TOOLTIPS = (TEXT_OUT, "The table rendered as an image (for Save Image, or a figure).")
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": SCORES,
            "digits": ("INT", {"default": 4, "min": 1, "max": 17, "tooltip":
                       "Significant digits of floats in the preview (saved files keep full precision)."}),
            "max_rows": ("INT", {"default": 50, "min": 1, "max": 10000, "tooltip":
                         "Rows shown; the rest are counted in a last line."}),
        }}

    def show(self, scores, digits, max_rows):
        import numpy as np
        import torch

        from ..core.score_report import render_table_image, to_markdown
        from .io import LoRALabPreviewImage

        text = to_markdown(scores, digits, max_rows)
        picture = np.asarray(render_table_image(scores, digits, max_rows), dtype=np.float32) / 255.0
        image = torch.from_numpy(picture)[None]
        preview = LoRALabPreviewImage().save(image)["ui"]
        return {"ui": {**preview, "text": [text]}, "result": (text, image)}


class LoRALabPlotTrainingCurves:
    DESCRIPTION = ("Plot the training loss (raw and smoothed) and the learning rate per step of up to four "
                   "LoRAs in one figure (seed 002's loss curves, seed 004's training curves).")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The figure (connect Save Image to keep it).",)
    FUNCTION = "plot"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        lora = ("LL_LORA", {"tooltip": "A LoRA from Train LoRA (a loaded file has no training record)."})
        return {"required": {
            "lora_1": lora,
            "smoothing": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 0.999, "step": 0.01, "tooltip":
                          "EMA factor of the smoothed loss, debiased as TensorBoard does (0 = raw)."}),
            "log_loss": ("BOOLEAN", {"default": False, "tooltip": "Logarithmic loss axis."}),
        }, "optional": {"lora_2": lora, "lora_3": lora, "lora_4": lora}}

    def plot(self, lora_1, smoothing, log_loss, lora_2=None, lora_3=None, lora_4=None):
        import torch

        from ..core.plots import training_curves
        from .io import LoRALabPreviewImage

        loras = [x for x in (lora_1, lora_2, lora_3, lora_4) if x is not None]
        for slot, lora in enumerate(loras, 1):
            if not lora.losses:
                raise ValueError(f"LoRA Lab: Plot Training Curves: input 'lora_{slot}': LoRA {lora.name!r} has no "
                                 "training record (it was loaded from a file); connect Train LoRA's output")
        picture = training_curves([(x.name, x.losses, x.lrs, x.val_losses, x.grad_norms) for x in loras],
                                  smoothing, log_loss)
        image = torch.from_numpy(picture)[None]
        return {"ui": LoRALabPreviewImage().save(image)["ui"], "result": (image,)}


# --- Figures ---------------------------------------------------------------------------------------

def _size(width, height, title_tooltip="Figure title; empty = a title from the columns."):
    return {
        "width": ("INT", {"default": width, "min": 64, "max": 8192, "step": 8, "tooltip": "Figure width in pixels."}),
        "height": ("INT", {"default": height, "min": 64, "max": 8192, "step": 8,
                           "tooltip": "Figure height in pixels."}),
        "title": ("STRING", {"default": "", "tooltip": title_tooltip}),
    }


def _figure_result(node: str, draw):
    """Run a core.plots function (its StatsError/ValueError named for this node) and return the
    figure as an IMAGE shown on the node."""
    import torch

    from .io import LoRALabPreviewImage

    try:
        picture = _run(node, draw)
    except ValueError as e:
        if str(e).startswith("LoRA Lab:"):
            raise
        raise ValueError(f"LoRA Lab: {node}: {e}") from None
    image = torch.from_numpy(picture)[None]
    return {"ui": LoRALabPreviewImage().save(image)["ui"], "result": (image,)}


def _summary(scores, group_by: str, metrics: str):
    """Summarize's table as given, or the summary of a per-image table (same group and metric
    rules as the Summarize node); returns (rows, group columns, metrics)."""
    from ..core.stats import StatsError, auto_group, summarize

    chosen = _columns(metrics)
    if "metric" in scores.keys and "mean" in scores.columns:  # already Summarize's output
        groups = tuple(k for k in scores.keys if k != "metric")
        present = list(dict.fromkeys(r["metric"] for r in scores.rows))
        missing = [m for m in chosen if m not in present]
        if missing:
            raise StatsError("metrics", f"{', '.join(missing)} not in the summary; it has {', '.join(present)}")
        return scores.rows, groups, list(chosen) or present
    groups = _group(group_by)
    groups = auto_group(scores) if groups is None else groups
    table = summarize(scores, groups, chosen or None, resamples=2000)
    return table.rows, groups, list(chosen) or list(dict.fromkeys(r["metric"] for r in table.rows))


class _Figure:
    """What every figure node declares: one IMAGE, shown on the node."""
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The figure (Save Image keeps it; Save Report puts it in the page).",)
    FUNCTION = "plot"
    OUTPUT_NODE = True


class LoRALabPlotScatter(_Figure):
    DESCRIPTION = ("Scatter two metrics with their Pareto front (seed 004's content vs style similarity, "
                   "quality vs seconds per image): one point per group (its mean), coloured by a column; the "
                   "front's points ringed, joined and labelled. The front is the Pareto Front node's.")

    @classmethod
    def INPUT_TYPES(cls):
        better = LoRALabPareto.INPUT_TYPES()["required"]
        return {"required": {
            "scores": SCORES,
            "x": better["x"], "x_better": better["x_better"], "y": better["y"], "y_better": better["y_better"],
            "group_by": better["group_by"],
            "colour_by": ("STRING", {"default": "", "tooltip": "A column whose values colour the points (e.g. "
                                     "sampler); empty = one colour."}),
            **_size(800, 550),
        }}

    def plot(self, scores, x, x_better, y, y_better, group_by, colour_by, width, height, title):
        from ..core.plots import label_of, scatter
        from ..core.stats import StatsError, auto_group, pareto

        groups = _group(group_by)
        groups = auto_group(scores) if groups is None else (groups or None)
        colour = colour_by.strip()

        def draw():
            points = pareto(scores, x.strip(), y.strip(), x_better, y_better, groups)
            if colour and colour not in points.columns:
                raise StatsError("colour_by", f"column {colour!r} is not among the points' columns "
                                 f"({', '.join(points.columns)}); colour by a group_by column")
            kept = [p for p in points.rows if p["pareto"] is not None]
            labels = [label_of(p, groups or ()) for p in kept]
            return scatter(kept, x.strip(), y.strip(), [p["pareto"] for p in kept], colour, labels if groups else None,
                           title, width, height)

        return _figure_result("Plot Scatter", draw)


class LoRALabPlotBars(_Figure):
    DESCRIPTION = ("Bars of each metric's mean per group with its confidence interval (seed 002/003's mean ± "
                   "CI charts): one panel per metric. Takes Summarize's table, or a per-image table that it "
                   "summarizes the same way (2000 bootstrap resamples, 95%).")
    kind = "Plot Bars"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": ("LL_SCORES", {"tooltip": "Summarize's table, or a per-image score table."}),
            "metrics": METRICS,
            "group_by": ("STRING", {"default": "auto", "tooltip":
                         "Per-image tables: columns whose groups are the bars (auto = every key column except "
                         "prompt, seed and image). Ignored for Summarize's table (its groups are kept)."}),
            **_size(*cls.default_size),
        }}

    default_size = (800, 450)

    def plot(self, scores, metrics, group_by, width, height, title):
        from ..core import plots

        draw = getattr(plots, "radar" if self.kind == "Plot Radar" else "bars")
        return _figure_result(self.kind, lambda: draw(*_summary(scores, group_by, metrics), title,
                                                       width, height))


class LoRALabPlotRadar(LoRALabPlotBars):
    DESCRIPTION = ("A radar chart per condition (seed 004's strategy profiles): one polygon per group over "
                   "several metrics' means, each metric scaled min-max across the groups. Takes Summarize's "
                   "table or a per-image table.")
    kind = "Plot Radar"
    default_size = (600, 600)


class LoRALabPlotLine(_Figure):
    DESCRIPTION = ("A metric against an axis (steps, CFG, rank, LoRA strength): the mean per axis value, one "
                   "line per group, with a ± std band where a point averages several rows.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": SCORES,
            "axis": ("STRING", {"default": "steps", "tooltip": "The column on the x axis (steps, cfg, rank, ...)."}),
            "metric": ("STRING", {"default": "seconds_per_image", "tooltip": "The metric column on the y axis."}),
            "group_by": ("STRING", {"default": "", "tooltip":
                         "Columns whose groups are separate lines (e.g. 'sampler'), comma-separated; "
                         "empty = one line."}),
            **_size(800, 450),
        }}

    def plot(self, scores, axis, metric, group_by, width, height, title):
        from ..core.plots import line
        from ..core.stats import _require, metric_columns

        groups = _columns(group_by)

        def draw():
            _require(scores, [axis.strip()], "axis")
            _require(scores, groups, "group_by")
            metric_columns(scores, [metric.strip()])
            return line(scores.rows, axis.strip(), metric.strip(), groups, title, width, height)

        return _figure_result("Plot Line", draw)


class LoRALabImageGrid:
    DESCRIPTION = ("Images in one labelled grid: a row per value of one score column and a column per value of "
                   "another (LoRA x sampler, CFG 1 -> 15, steps 10 -> 100, rank 1 -> 64, prompt x model), read "
                   "from the images' score rows (Generate's second output). Numbers sort ascending. Saved as PNG "
                   "and shown on the node. Across the runs of a sweep: loralab report.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("The grid as one image.",)
    FUNCTION = "grid"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        scores = ("LL_SCORES", {"tooltip": "One row per image, in the images' order (Generate's or Img2Img's "
                                "scores, or a metric table of them). Without it the grid is unlabelled."})
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images (all of one size)."}),
            "rows": ("STRING", {"default": "prompt", "tooltip":
                     "The column whose values are the rows (prompt, lora, sampler, cfg, steps, seed, ...); "
                     "empty = one row."}),
            "columns": ("STRING", {"default": "model", "tooltip":
                        "The column whose values are the columns; empty = one column. Images sharing a row and "
                        "column value sit side by side in their cell."}),
            "title": ("STRING", {"default": "", "tooltip": "A line above the grid."}),
            "filename_prefix": ("STRING", {"default": "loralab/grid", "tooltip":
                                "Saved as <prefix>_00001_.png in the output folder (never outside it)."}),
        }, "optional": {
            "image_scores": scores,
            "images_2": ("IMAGE", {"tooltip": "More images of the same size (e.g. the base model's, beside a "
                                   "LoRA's), placed by image_scores_2."}),
            "image_scores_2": ("LL_SCORES", {"tooltip": "The rows of images_2."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    VALIDATE_INPUTS = LoRALabSaveScores.VALIDATE_INPUTS

    def grid(self, images, rows, columns, title, filename_prefix, image_scores=None, images_2=None,
             image_scores_2=None, prompt=None, extra_pnginfo=None):
        import numpy as np
        import torch

        from ..core import runtime
        from ..core.files import UnsafePathError
        from ..core.grid import columns_for, image_grid
        from ..core.images import save_images

        sets = [("images", images, "image_scores", image_scores)]
        if images_2 is not None:
            sets.append(("images_2", images_2, "image_scores_2", image_scores_2))
        names = (rows.strip(), columns.strip())
        for name, batch, _, _ in sets[1:]:
            if batch.shape[1:] != images.shape[1:]:
                raise ValueError(f"LoRA Lab: Image Grid: input '{name}': images of {batch.shape[2]}x{batch.shape[1]} "
                                 f"beside images of {images.shape[2]}x{images.shape[1]}; give one size")
        row_values, column_values = [], []
        for _, batch, scores_name, table in sets:
            if table is None:
                if any(names):
                    raise ValueError(f"LoRA Lab: Image Grid: input '{scores_name}': rows and columns name score "
                                     "columns, so connect the images' score table (or leave rows and columns "
                                     "empty for an unlabelled grid)")
                continue
            if len(table) != len(batch):
                raise ValueError(f"LoRA Lab: Image Grid: input '{scores_name}': {len(table)} rows for {len(batch)} "
                                 f"images; give the images' own score rows (one per image, in order)")
            for which, column in zip(("rows", "columns"), names, strict=True):
                if column and column not in table.columns:
                    raise ValueError(f"LoRA Lab: Image Grid: input '{which}': column {column!r} is not in "
                                     f"'{scores_name}'; it has {', '.join(table.columns)}")
            row_values += [r.get(names[0]) if names[0] else "" for r in table.rows]
            column_values += [r.get(names[1]) if names[1] else "" for r in table.rows]
        count = sum(len(b) for _, b, _, _ in sets)
        labelled = any(names)
        if not labelled:  # near-square, in order, no labels
            per_row = columns_for(count)
            row_values, column_values = [i // per_row for i in range(count)], [i % per_row for i in range(count)]
        stacked = torch.cat([b for _, b, _, _ in sets]).float().cpu().numpy()
        picture, _ = image_grid(stacked, row_values, column_values, names[0], names[1], title.strip(),
                                labels=labelled)
        grid = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]
        entries = []
        if filename_prefix.strip():
            root, under = runtime.write_root("output")
            try:
                entries = save_images(grid, root, filename_prefix, prompt, extra_pnginfo, 4, under)
            except UnsafePathError as e:
                raise ValueError(f"LoRA Lab: Image Grid: input 'filename_prefix': {e}") from None
        return {"ui": {"images": [{**e, "type": "output"} for e in entries]}, "result": (grid,)}


# --- Report ----------------------------------------------------------------------------------------

REPORT_TABLES, REPORT_FIGURES = 6, 4
# Nodes whose files a report links, and where each writes (core.runtime.write_root kinds).
SAVERS = {"LoRALabSaveImage": "output", "LoRALabSaveScores": "output", "LoRALabImageGrid": "output",
          "LoRALabSaveLoRA": "loras", "SaveImage": "output"}


def _source_name(prompt: dict | None, node_id, input_name: str, fallback: str) -> str:
    """The title of the node wired to ``input_name`` (and its output's name), from the workflow."""
    try:
        source_id, slot = prompt[str(node_id)]["inputs"][input_name]
        source = prompt[str(source_id)]
    except (KeyError, TypeError, ValueError):
        return fallback
    title = (source.get("_meta") or {}).get("title") or source.get("class_type", fallback)
    from .. import NODE_CLASS_MAPPINGS

    names = getattr(NODE_CLASS_MAPPINGS.get(source.get("class_type")), "RETURN_NAMES", ())
    return f"{title} · {names[slot]}" if isinstance(slot, int) and slot < len(names) and slot else title


def saved_files(prompt: dict | None) -> list:
    """Files the workflow's save nodes have written so far, found by their filename prefixes."""
    from ..core import runtime
    from ..core.files import UnsafePathError, safe_prefix_path

    found = []
    for node in (prompt or {}).values():
        kind = SAVERS.get(node.get("class_type")) if isinstance(node, dict) else None
        prefix = (node.get("inputs") or {}).get("filename_prefix") if kind else None
        if not isinstance(prefix, str) or not prefix.strip():
            continue
        root, under = runtime.write_root(kind)
        try:
            folder, stem = safe_prefix_path(root, prefix, under)
        except UnsafePathError:
            continue
        if folder.is_dir():
            found += sorted(p for p in folder.glob(f"{stem}_*") if p.is_file() and not p.name.startswith("."))
    return list(dict.fromkeys(found))


class LoRALabSaveReport:
    DESCRIPTION = ("Write one self-contained HTML page for this run (open it in any browser, no network): the "
                   "workflow's settings, every row of the connected score tables (mean ± std, % change and "
                   "p-values with the test named), the connected figures and grids inlined, and links to the "
                   "files the workflow's save nodes wrote before it. A sweep's page: loralab report OUTPUT_DIR.")
    CATEGORY = "LoRA Lab/report"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        table = ("LL_SCORES", {"tooltip": "A table for the page (named after the node it comes from)."})
        image = ("IMAGE", {"tooltip": "A figure or grid for the page (every image of the batch)."})
        return {"required": {
            "title": ("STRING", {"default": "LoRA Lab report", "tooltip": "The page's heading."}),
            "filename_prefix": ("STRING", {"default": "loralab/report", "tooltip":
                                "Saved as <prefix>_00001_.html in the output folder (never outside it)."}),
        }, "optional": {
            **{f"scores_{i}": table for i in range(1, REPORT_TABLES + 1)},
            **{f"figure_{i}": image for i in range(1, REPORT_FIGURES + 1)},
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    VALIDATE_INPUTS = LoRALabSaveScores.VALIDATE_INPUTS

    def save(self, title, filename_prefix, prompt=None, unique_id=None, **inputs):
        from ..core import report_html, runtime
        from ..core.files import UnsafePathError, safe_prefix_path, write_numbered

        root = runtime.output_directory()
        try:
            folder, stem = safe_prefix_path(root, filename_prefix)
        except UnsafePathError as e:
            raise ValueError(f"LoRA Lab: Save Report: input 'filename_prefix': {e}") from None
        report = report_html.Report(title.strip() or "LoRA Lab report", "one run of a workflow")
        report.config = report_html.workflow_sections(prompt or {})
        for i in range(1, REPORT_TABLES + 1):
            if (table := inputs.get(f"scores_{i}")) is not None:
                report.tables.append(report_html.html_table(_source_name(prompt, unique_id, f"scores_{i}",
                                                                         f"table {i}"), table))
        for i in range(1, REPORT_FIGURES + 1):
            if (batch := inputs.get(f"figure_{i}")) is not None:
                name = _source_name(prompt, unique_id, f"figure_{i}", f"figure {i}")
                pictures = batch.float().cpu().numpy()
                report.figures += [report_html.figure(name if len(pictures) == 1 else f"{name} ({k + 1})", picture)
                                   for k, picture in enumerate(pictures)]
        report.files = [report_html.Link(p.relative_to(root.resolve()).as_posix() if p.is_relative_to(root.resolve())
                                         else p.name, report_html.href(p, folder)) for p in saved_files(prompt)]
        _, paths = write_numbered(folder, stem, {"html": lambda path: report_html.write(report, path)})
        return {"ui": {"text": [paths[0].relative_to(root.resolve()).as_posix()]}}


NODE_CLASS_MAPPINGS = {
    "LoRALabPlotTrainingCurves": LoRALabPlotTrainingCurves,
    "LoRALabCombineScores": LoRALabCombineScores,
    "LoRALabSummarize": LoRALabSummarize,
    "LoRALabCompare": LoRALabCompare,
    "LoRALabPareto": LoRALabPareto,
    "LoRALabSaveScores": LoRALabSaveScores,
    "LoRALabShowScores": LoRALabShowScores,
    "LoRALabImageGrid": LoRALabImageGrid,
    "LoRALabPlotScatter": LoRALabPlotScatter,
    "LoRALabPlotBars": LoRALabPlotBars,
    "LoRALabPlotRadar": LoRALabPlotRadar,
    "LoRALabPlotLine": LoRALabPlotLine,
    "LoRALabSaveReport": LoRALabSaveReport,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoRALabPlotTrainingCurves": "LoRA Lab: Plot Training Curves",
    "LoRALabCombineScores": "LoRA Lab: Combine Scores",
    "LoRALabSummarize": "LoRA Lab: Summarize",
    "LoRALabCompare": "LoRA Lab: Compare",
    "LoRALabPareto": "LoRA Lab: Pareto Front",
    "LoRALabSaveScores": "LoRA Lab: Save Scores",
    "LoRALabShowScores": "LoRA Lab: Show Scores",
    "LoRALabImageGrid": "LoRA Lab: Image Grid",
    "LoRALabPlotScatter": "LoRA Lab: Plot Scatter + Pareto",
    "LoRALabPlotBars": "LoRA Lab: Plot Bars (mean ± CI)",
    "LoRALabPlotRadar": "LoRA Lab: Plot Radar",
    "LoRALabPlotLine": "LoRA Lab: Plot Line",
    "LoRALabSaveReport": "LoRA Lab: Save Report",
}
