"""The node catalogue meets what ComfyUI and its editor require of every input spec.

tests/data/object_info.comfyui.json is what ComfyUI 0.8's /object_info served for this pack
(refreshed by tests/manual/refresh_object_info.py). The rules below are ComfyUI's validation and
frontend 1.35.9's widget constructors, not a copy of our declarations; they are checked on that
recording (what ComfyUI really serves) and on our current catalogue (what the next refresh will serve).
"""

import json
import math
from pathlib import Path

from loralab import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from loralab.headless.catalog import object_info
from loralab.headless.cli import main

COMFY = Path(__file__).parent / "data" / "object_info.comfyui.json"
SEED_NAMES = {"seed", "noise_seed"}  # the editor adds a "control after generate" to these INTs unless told


def normalise(info: dict) -> dict:
    return json.loads(json.dumps({k: {f: v for f, v in node.items() if f != "python_module"}
                                  for k, node in info.items()}))


def input_problems(name: str, spec: list) -> list[str]:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    combo = isinstance(kind, list) or kind == "COMBO"
    problems = [] if str(options.get("tooltip", "")).strip() else [f"{name}: no tooltip"]
    control = options.get("control_after_generate")
    if kind == "INT" and name in SEED_NAMES and not isinstance(control, bool):
        problems.append(f"{name}: a seed INT without control_after_generate (the editor adds a 'randomize' control)")
    if control is not None and not (combo or kind in ("INT", "FLOAT")):
        problems.append(f"{name}: control_after_generate on a {kind}, where the editor ignores it")
    if options.get("forceInput"):
        return problems
    default = options.get("default")
    if combo:
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if not choices:
            problems.append(f"{name}: a combo without choices")
        elif "default" in options and default not in choices:
            problems.append(f"{name}: default {default!r} is not among the choices")
    elif kind in ("INT", "FLOAT"):
        low, high = options.get("min", -math.inf), options.get("max", math.inf)
        number = int if kind == "INT" else (int, float)
        if not isinstance(default, number) or isinstance(default, bool) or not math.isfinite(default):
            problems.append(f"{name}: {kind} default {default!r} is not a finite {kind.lower()}")
        elif not low <= default <= high:
            problems.append(f"{name}: default {default} is outside [{low}, {high}] (ComfyUI refuses it on Run)")
        if "step" in options and not options["step"] > 0:
            problems.append(f"{name}: step {options['step']} is not positive")
    elif kind == "BOOLEAN" and not isinstance(default, bool):
        problems.append(f"{name}: BOOLEAN default {default!r}")
    elif kind == "STRING" and not isinstance(default, str):
        problems.append(f"{name}: STRING default {default!r}")
    return problems


def catalogue_problems(info: dict) -> list[str]:
    problems = []
    for node_id, node in sorted(info.items()):
        inputs = {part: node["input"].get(part, {}) for part in ("required", "optional")}
        for part, specs in inputs.items():
            problems += [f"{node_id}.{p}" for name, spec in specs.items() for p in input_problems(name, spec)]
            if sorted(specs) != sorted(node.get("input_order", {}).get(part, [])):
                problems.append(f"{node_id}: input_order.{part} does not list exactly the {part} inputs")
        lengths = {len(node[key]) for key in ("output", "output_name", "output_is_list", "output_tooltips")
                   if key in node}
        if len(lengths) > 1:
            problems.append(f"{node_id}: output, output_name, output_is_list, output_tooltips differ in length")
        if not str(node.get("description", "")).strip():
            problems.append(f"{node_id}: no description")
    return problems


def test_what_comfyui_served_for_our_nodes_meets_its_rules():
    served = json.loads(COMFY.read_text())
    assert served and all(node_id.startswith("LoRALab") for node_id in served)
    assert catalogue_problems(served) == []


def test_our_current_catalogue_meets_comfyuis_rules(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./models: the model list is the embedded model only
    assert catalogue_problems(normalise(object_info(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS))) == []


def test_the_rules_catch_specs_comfyui_or_its_editor_would_mishandle():
    node = {"input": {"required": {
        "seed": ["INT", {"default": 0, "min": 0, "max": 10, "tooltip": "t"}],
        "steps": ["INT", {"default": 0, "min": 1, "max": 10, "tooltip": "t"}],
        "mode": [["a", "b"], {"default": "c", "tooltip": "t"}],
        "flag": ["BOOLEAN", {"default": 0, "control_after_generate": True, "tooltip": "t"}],
        "cfg": ["FLOAT", {"default": float("nan"), "tooltip": "t"}],
        "text": ["STRING", {"default": ""}]}},
        "input_order": {"required": ["steps", "seed"]}, "output": ["INT"], "output_name": [],
        "output_is_list": [False], "description": ""}
    found = "\n".join(catalogue_problems({"X": node}))
    for expected in ("X.seed: a seed INT without control_after_generate", "X.steps: default 0 is outside [1, 10]",
                     "X.mode: default 'c' is not among", "X.flag: control_after_generate on a BOOLEAN",
                     "X.flag: BOOLEAN default 0", "X.cfg: FLOAT default nan", "X.text: no tooltip",
                     "input_order.required", "differ in length", "X: no description"):
        assert expected in found


def test_recorded_fixture_is_current(monkeypatch, tmp_path):
    """NOT a correctness check: fails only when a declaration changed after the last refresh of
    tests/data/object_info.comfyui.json (run tests/manual/refresh_object_info.py against a live
    ComfyUI with this pack), so the rules above keep being checked on what ComfyUI really serves."""
    monkeypatch.chdir(tmp_path)
    ours = normalise(object_info(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS))
    assert ours == normalise(json.loads(COMFY.read_text()))


def test_nodes_command_lists_every_node_and_emits_object_info(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["nodes"]) == 0
    text = capsys.readouterr().out
    assert all(node_id in text for node_id in NODE_CLASS_MAPPINGS)
    assert "in  steps: INT default=20 min=1 max=1000" in text
    assert main(["nodes", "--object-info"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(NODE_CLASS_MAPPINGS)
