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
        picture = training_curves([(x.name, x.losses, x.lrs) for x in loras], smoothing, log_loss)
        image = torch.from_numpy(picture)[None]
        return {"ui": LoRALabPreviewImage().save(image)["ui"], "result": (image,)}


NODE_CLASS_MAPPINGS = {
    "LoRALabPlotTrainingCurves": LoRALabPlotTrainingCurves,
    "LoRALabCombineScores": LoRALabCombineScores,
    "LoRALabSummarize": LoRALabSummarize,
    "LoRALabCompare": LoRALabCompare,
    "LoRALabPareto": LoRALabPareto,
    "LoRALabSaveScores": LoRALabSaveScores,
    "LoRALabShowScores": LoRALabShowScores,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoRALabPlotTrainingCurves": "LoRA Lab: Plot Training Curves",
    "LoRALabCombineScores": "LoRA Lab: Combine Scores",
    "LoRALabSummarize": "LoRA Lab: Summarize",
    "LoRALabCompare": "LoRA Lab: Compare",
    "LoRALabPareto": "LoRA Lab: Pareto Front",
    "LoRALabSaveScores": "LoRA Lab: Save Scores",
    "LoRALabShowScores": "LoRA Lab: Show Scores",
}
