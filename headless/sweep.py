"""Sweeps: one base workflow, axes of ``NODE.INPUT`` overrides (grid or zipped), repeats, shards.

Experiment file (TOML)::

    workflow = "quickstart.json"        # relative to this file; API or UI format
    mode = "grid"                       # or "zip": the i-th values of every axis together
    repeats = 1                         # runs of each combination (timing variance)
    [set]                               # overrides for every run
    "Generate A.images_per_prompt" = 1
    [axes]
    "Sampler A.sampler_name" = ["euler", "ddim", "dpmpp_2m"]
    "Generate A.steps" = [4, 8, 12, 16]
    # A bundle axis: a name without a dot whose values are tables of overrides set together,
    # so a grid can cross whole configurations (seed 004's LoRAs L1..L7 x schedulers).
    lora = [{ "LoRA Config.rank" = 4 }, { "LoRA Config.rank" = 16, "Noise Strategy.beta_schedule" = "cosine" }]

Axes on nodes further upstream vary slowest, so with the executor's cache an upstream node runs
once per value of its own axis, whatever order the file lists the axes in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import invalid_prompt

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published for 3.10 as tomli
    import tomli as tomllib

# The values JSON holds; TOML adds dates and times, which no input takes.
PLAIN = (str, int, float, bool, list, dict)


@dataclass
class Experiment:
    path: Path
    workflow: Path
    axes: dict[str, list]
    fixed: dict[str, object] = field(default_factory=dict)
    mode: str = "grid"
    repeats: int = 1
    report: dict = field(default_factory=dict)  # the [report] table (headless/report.py)


@dataclass(frozen=True)
class Run:
    run_id: str
    overrides: dict
    repeat: int

    def as_set_args(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise invalid_prompt(f"Cannot read experiment file {str(path)!r}", e.strerror or str(e)) from None
    except RecursionError:
        raise invalid_prompt(f"Experiment file {str(path)!r} is not valid TOML",
                             "arrays or tables nested too deeply") from None
    except ValueError as e:  # TOMLDecodeError, bad UTF-8, integers past Python's 4300-digit limit
        raise invalid_prompt(f"Experiment file {str(path)!r} is not valid TOML", str(e)[:300]) from None


def _check_plain(where: str, value) -> None:
    """Every value becomes JSON (``--set``, result files): refuse TOML's dates and times."""
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, PLAIN):
            raise invalid_prompt(f"{where}: a {type(item).__name__} value ({str(item)[:40]}) cannot be an input",
                                 "values are strings, numbers, booleans, arrays and tables")
        stack += item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()


def _check_overrides(where: str, table) -> None:
    if not isinstance(table, dict):
        raise invalid_prompt(f"{where} must map \"NODE.INPUT\" to a value", f"got {table!r}"[:300])
    for key in table:
        if "." not in key:
            raise invalid_prompt(f"{where} {key!r} is not of the form \"NODE.INPUT\"")
    _check_plain(where, table)


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    data = _read_toml(path)
    unknown = set(data) - {"workflow", "mode", "repeats", "axes", "set", "report"}
    if unknown:
        raise invalid_prompt(f"Experiment file {str(path)!r} has unknown keys: {', '.join(sorted(unknown))}",
                             "valid: workflow, mode, repeats, [axes], [set], [report]")
    if not isinstance(data.get("workflow"), str):
        raise invalid_prompt(f"Experiment file {str(path)!r} needs workflow = \"<file.json>\"")
    _check_overrides("[set]", data.get("set", {}))
    axes = data.get("axes", {})
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise invalid_prompt("[axes] must map \"NODE.INPUT\" to a non-empty list of values")
    for name, values in axes.items():
        if "." not in name and not all(isinstance(v, dict) and v and all("." in k for k in v) for v in values):
            raise invalid_prompt(f"[axes] {name!r} is a bundle axis (no dot in its name): each value must be a "
                                 "non-empty table of \"NODE.INPUT\" = value overrides",
                                 f"got {values!r}"[:300])
        _check_plain(f"[axes] {name!r}", values)
    mode = data.get("mode", "grid")
    if mode not in ("grid", "zip"):
        raise invalid_prompt(f"mode = {mode!r}: valid modes are 'grid' and 'zip'")
    if mode == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise invalid_prompt("mode = 'zip' needs axes of equal length",
                             ", ".join(f"{k}: {len(v)}" for k, v in axes.items()))
    repeats = data.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= 1000:
        raise invalid_prompt(f"repeats = {repeats!r}: must be a whole number from 1 to 1000")
    return Experiment(path, (path.parent / data["workflow"]), axes, data.get("set", {}), mode, repeats,
                      check_report_table(data.get("report", {})))


# What `loralab report` reads from [report]; see headless/report.py.
REPORT_KEYS = {"title": str, "scores": str, "metrics": list, "rows": str, "columns": str, "images": str,
               "image": int, "pareto": list, "pareto_better": list, "compare": str, "baseline": str}


def check_report_table(table) -> dict:
    """The experiment file's ``[report]`` table, checked key by key."""
    if not isinstance(table, dict):
        raise invalid_prompt("[report] must be a table of settings", f"valid keys: {', '.join(REPORT_KEYS)}")
    for key, value in table.items():
        kind = REPORT_KEYS.get(key)
        if kind is None:
            raise invalid_prompt(f"[report] has an unknown key {key!r}", f"valid keys: {', '.join(REPORT_KEYS)}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise invalid_prompt(f"[report] {key} = {value!r} must be a {kind.__name__}")
    for key in ("pareto", "pareto_better"):
        if key in table and (len(table[key]) != 2 or not all(isinstance(x, str) for x in table[key])):
            raise invalid_prompt("[report] pareto must name two columns (x, y)" if key == "pareto" else
                                 "[report] pareto_better must be two of 'higher' / 'lower' (x, y)")
    if "pareto_better" in table and not set(table["pareto_better"]) <= {"higher", "lower"}:
        raise invalid_prompt("[report] pareto_better must be two of 'higher' / 'lower' (x, y)")
    if table.get("metrics") and not all(isinstance(x, str) for x in table["metrics"]):
        raise invalid_prompt("[report] metrics must be a list of column names")
    return table


def run_count(exp: Experiment) -> int:
    """How many runs the experiment expands to, computed without expanding it."""
    lengths = [len(v) for v in exp.axes.values()]
    combos = (lengths[0] if lengths else 1) if exp.mode == "zip" else math.prod(lengths)
    return combos * exp.repeats


def check_run_count(exp: Experiment, limit: int) -> None:
    count = run_count(exp)
    if count > limit:
        raise invalid_prompt(f"The experiment has {count:,} runs, more than the limit of {limit:,}",
                             "run fewer (shorter axes, fewer repeats) or raise the limit with --max-runs")


def run_id(overrides: dict, repeat: int) -> str:
    text = json.dumps({"set": overrides, "repeat": repeat}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def workflow_hash(prompt: dict) -> str:
    """What a run computes: the validated workflow with its overrides applied (titles left out), so
    a finished run whose base workflow was edited since is run again."""
    nodes = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    return hashlib.sha256(json.dumps(nodes, sort_keys=True).encode()).hexdigest()[:16]


def expand(exp: Experiment, depth: dict[str, int] | None = None) -> Iterator[Run]:
    """Every run of the experiment, one at a time. ``depth`` (axis -> distance of its node from
    the sources) orders the grid so upstream axes vary slowest. A bundle axis's table is merged
    into the run's overrides."""
    names = sorted(exp.axes, key=lambda a: (depth or {}).get(a, 0))
    values = [exp.axes[n] for n in names]
    combos = zip(*values, strict=True) if exp.mode == "zip" else itertools.product(*values)
    for combo in combos:
        overrides = dict(exp.fixed)
        for name, value in zip(names, combo, strict=True):
            overrides.update(value if "." not in name else {name: value})
        for repeat in range(exp.repeats):
            yield Run(run_id(overrides, repeat), overrides, repeat)


def shard(runs: Iterable[Run], spec: str | None, block_of: int = 0) -> Iterator[Run]:
    """``i/n``: the i-th of n parts (1-based), for separate hosts sharing a sweep: every n-th run,
    or with ``block_of`` (the run count) the i-th of n contiguous blocks, so runs that share
    upstream nodes (one LoRA, many samplers) stay in one process and its cache."""
    if not spec:
        return iter(runs)
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise invalid_prompt(f"--shard {spec!r} must be i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise invalid_prompt(f"--shard {spec!r}: i must be between 1 and n")
    if block_of:
        return itertools.islice(runs, (i - 1) * block_of // n, i * block_of // n)
    return itertools.islice(runs, i - 1, None, n)
