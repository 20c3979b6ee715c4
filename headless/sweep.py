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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import invalid_prompt


@dataclass
class Experiment:
    path: Path
    workflow: Path
    axes: dict[str, list]
    fixed: dict[str, object] = field(default_factory=dict)
    mode: str = "grid"
    repeats: int = 1


@dataclass(frozen=True)
class Run:
    run_id: str
    overrides: dict
    repeat: int

    def as_set_args(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


def load_experiment(path: str | Path) -> Experiment:
    import toml

    path = Path(path)
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise invalid_prompt(f"Cannot read experiment file {str(path)!r}", e.strerror or str(e)) from None
    except (toml.TomlDecodeError, UnicodeDecodeError) as e:
        raise invalid_prompt(f"Experiment file {str(path)!r} is not valid TOML", str(e)) from None
    unknown = set(data) - {"workflow", "mode", "repeats", "axes", "set"}
    if unknown:
        raise invalid_prompt(f"Experiment file {str(path)!r} has unknown keys: {', '.join(sorted(unknown))}",
                             "valid: workflow, mode, repeats, [axes], [set]")
    if not isinstance(data.get("workflow"), str):
        raise invalid_prompt(f"Experiment file {str(path)!r} needs workflow = \"<file.json>\"")
    axes = data.get("axes", {})
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise invalid_prompt("[axes] must map \"NODE.INPUT\" to a non-empty list of values")
    for name, values in axes.items():
        if "." not in name and not all(isinstance(v, dict) and v and all("." in k for k in v) for v in values):
            raise invalid_prompt(f"[axes] {name!r} is a bundle axis (no dot in its name): each value must be a "
                                 "non-empty table of \"NODE.INPUT\" = value overrides",
                                 f"got {values!r}"[:300])
    mode = data.get("mode", "grid")
    if mode not in ("grid", "zip"):
        raise invalid_prompt(f"mode = {mode!r}: valid modes are 'grid' and 'zip'")
    if mode == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise invalid_prompt("mode = 'zip' needs axes of equal length",
                             ", ".join(f"{k}: {len(v)}" for k, v in axes.items()))
    repeats = data.get("repeats", 1)
    if not isinstance(repeats, int) or not 1 <= repeats <= 1000:
        raise invalid_prompt(f"repeats = {repeats!r}: must be a whole number from 1 to 1000")
    return Experiment(path, (path.parent / data["workflow"]), axes, data.get("set", {}), mode, repeats)


def run_id(overrides: dict, repeat: int) -> str:
    text = json.dumps({"set": overrides, "repeat": repeat}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand(exp: Experiment, depth: dict[str, int] | None = None) -> list[Run]:
    """Every run of the experiment. ``depth`` (axis -> distance of its node from the sources)
    orders the grid so upstream axes vary slowest. A bundle axis's table is merged into the run's
    overrides."""
    names = sorted(exp.axes, key=lambda a: (depth or {}).get(a, 0))
    values = [exp.axes[n] for n in names]
    combos = zip(*values, strict=True) if exp.mode == "zip" else itertools.product(*values)
    runs = []
    for combo in combos:
        overrides = dict(exp.fixed)
        for name, value in zip(names, combo, strict=True):
            overrides.update(value if "." not in name else {name: value})
        for repeat in range(exp.repeats):
            runs.append(Run(run_id(overrides, repeat), overrides, repeat))
    return runs


def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """``i/n``: the i-th of n interleaved parts (1-based), for separate hosts sharing a sweep."""
    if not spec:
        return runs
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise invalid_prompt(f"--shard {spec!r} must be i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise invalid_prompt(f"--shard {spec!r}: i must be between 1 and n")
    return runs[i - 1::n]
