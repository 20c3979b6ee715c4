"""UI -> API conversion: equal to what ComfyUI's frontend sends, and stable round trips.

tests/data/ui/*.frontend.api.json were produced by ComfyUI 0.8 / frontend 1.35.9's own
``app.graphToPrompt()`` on the matching ``*.ui.json`` (loaded in headless Chromium with this pack
installed; tests/manual/record_frontend_conversions.py), so these tests compare our converter with
the real one; ``*.editor-saved.json`` are the same graphs as that editor saves them.
"""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loralab
from loralab import NODE_CLASS_MAPPINGS as REGISTRY
from loralab import NODE_DISPLAY_NAME_MAPPINGS as NAMES
from loralab.headless.cli import main
from loralab.headless.convert import ui_to_api
from loralab.headless.errors import WorkflowError
from loralab.headless.ui import api_to_ui

DATA = Path(__file__).parent / "data" / "ui"
WORKFLOWS = Path(loralab.__file__).parent / "workflows"
CONTROL_MODES = {"fixed", "increment", "decrement", "randomize"}


def load(path):
    return json.loads(Path(path).read_text())


UI_FILES = sorted(WORKFLOWS.glob("*.ui.json")) + sorted(DATA.glob("*.ui.json"))


def frontend_copy(ui_path: Path) -> Path:
    return DATA / ui_path.name.replace(".ui.json", ".frontend.api.json")


def registry_from_object_info(info: dict) -> tuple[dict, dict]:
    """Node classes declared exactly as a recorded /object_info serves them (test-only node types)."""
    def node_class(node_id, spec):
        inputs = {part: {name: tuple(s) for name, s in specs.items()} for part, specs in spec["input"].items()}
        return type(node_id, (), {"CATEGORY": spec["category"], "RETURN_TYPES": tuple(spec["output"]), "FUNCTION": "f",
                                  "INPUT_TYPES": classmethod(lambda cls: inputs)})
    return ({k: node_class(k, v) for k, v in info.items()}, {k: v["display_name"] for k, v in info.items()})


def registry_for(ui_path: Path) -> tuple[dict, dict]:
    defs = ui_path.with_name(ui_path.name.replace(".ui.json", ".object_info.json"))
    return registry_from_object_info(load(defs)) if defs.exists() else (REGISTRY, NAMES)


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_ui_file_converts_exactly_as_comfyuis_frontend_does(ui_path):
    """Every shipped UI workflow, rules.ui.json (Reroute, a PrimitiveNode feeding a converted seed
    widget, a Note, a bypassed Img2Img, a muted Generate) and controls.ui.json (which widgets get
    a "control after generate" value: seed/noise_seed INTs unless declared, declared INT/FLOAT/COMBO,
    a COMBO's filter list; the defaults of values missing from an old file) against the frontend's
    own graphToPrompt() output."""
    registry, names = registry_for(ui_path)
    assert ui_to_api(load(ui_path), registry, names) == load(frontend_copy(ui_path))


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_a_file_saved_by_the_editor_converts_as_the_editor_runs_it(ui_path):
    """The same graphs as the editor itself saves them (graphToPrompt()'s workflow part, recorded
    with its output): frontend 1.35.9's own serialisation, with its id, revision and slot fields."""
    registry, names = registry_for(ui_path)
    saved = DATA / ui_path.name.replace(".ui.json", ".editor-saved.json")
    assert ui_to_api(load(saved), registry, names) == load(frontend_copy(ui_path))


@pytest.mark.parametrize("ui_path", sorted(WORKFLOWS.glob("*.ui.json")), ids=lambda p: p.name)
def test_shipped_api_workflow_is_what_the_editor_sends_for_its_ui_twin(ui_path):
    assert load(ui_path.with_name(ui_path.name.replace(".ui.json", ".json"))) == load(frontend_copy(ui_path))


@pytest.mark.parametrize("ui_path", sorted(WORKFLOWS.glob("*.ui.json")), ids=lambda p: p.name)
def test_what_the_editor_sends_for_each_shipped_workflow_is_valid(ui_path, capsys):
    """Pressing Run in the editor sends the recorded copy: it validates (ComfyUI's rules), so no
    branch is dropped for a misread widget (frontend 1.35.9 read Train Config one place off before)."""
    assert main(["run", str(frontend_copy(ui_path)), "--check"]) == 0, capsys.readouterr().err


def test_convert_command_writes_the_api_file(tmp_path):
    target = tmp_path / "api.json"
    assert main(["convert", str(WORKFLOWS / "train_lora.ui.json"), "-o", str(target)]) == 0
    assert load(target) == load(DATA / "train_lora.frontend.api.json")


def test_api_to_ui_lays_out_widget_values_where_the_frontend_reads_them():
    """api_to_ui's widgets_values line up with the hand-laid controls.ui.json that the frontend read
    as intended (above; where that file stops early, api_to_ui goes on with the defaults); every
    control it writes is 'fixed', so a loaded workflow keeps its seeds."""
    registry, _ = registry_for(DATA / "controls.ui.json")
    laid_out = {n["id"]: n["widgets_values"] for n in load(DATA / "controls.ui.json")["nodes"]}
    for entry in api_to_ui(load(DATA / "controls.frontend.api.json"), registry)["nodes"]:
        expected = laid_out[entry["id"]]
        assert len(entry["widgets_values"]) >= len(expected)
        assert all(ours == theirs or (theirs in CONTROL_MODES and ours == "fixed")
                   for ours, theirs in zip(entry["widgets_values"], expected, strict=False))


class ListNode:
    CATEGORY = "test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "f"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE", {}), "sizes": ("STRING", {"default": ""}),
                             "seed": ("INT", {"default": 0, "control_after_generate": True}),
                             "mode": (["a", "b"], {})},
                "optional": {"scale": ("FLOAT", {"default": 1.0})}}


class Source:
    CATEGORY = "test"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "f"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


TEST_REGISTRY = {"ListNode": ListNode, "Source": Source}


def node(node_id, kind, inputs=(), widgets=None, mode=0, **extra):
    return {"id": node_id, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [],
            "widgets_values": widgets if widgets is not None else [], **extra}


def test_positional_and_named_widget_values_lists_and_the_seed_control_slot():
    ui = {"nodes": [node(1, "Source"),
                    node(2, "ListNode", [{"name": "image", "type": "IMAGE", "link": 1}],
                         [["x", "y"], 5, "increment", "b", 2.5]),
                    node(3, "ListNode", [{"name": "image", "type": "IMAGE", "link": 2}],
                         {"sizes": "s", "seed": 1, "mode": "a"})],
          "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 3, 0, "IMAGE"]]}
    api = ui_to_api(ui, TEST_REGISTRY)
    assert api["2"]["inputs"] == {"image": ["1", 0], "sizes": {"__value__": ["x", "y"]}, "seed": 5,
                                  "mode": "b", "scale": 2.5}
    assert api["3"]["inputs"] == {"image": ["1", 0], "sizes": "s", "seed": 1, "mode": "a"}
    assert api["2"]["_meta"]["title"] == "ListNode"


def test_a_converted_widget_without_a_link_keeps_its_widget_value_and_reroute_chains_are_followed():
    ui = {"nodes": [node(1, "Source"), node(5, "Reroute", [{"name": "", "type": "*", "link": 1}]),
                    node(6, "Reroute", [{"name": "", "type": "*", "link": 2}]),
                    node(2, "ListNode", [{"name": "image", "type": "IMAGE", "link": 3},
                                         {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
                         ["", 9, "fixed", "a"]),
                    node(7, "PrimitiveNode", widgets=[["p", "q"], "fixed"]),
                    node(3, "ListNode", [{"name": "image", "type": "IMAGE", "link": 4},
                                         {"name": "sizes", "type": "STRING", "widget": {"name": "sizes"}, "link": 5}],
                         ["old", 1, "fixed", "a"])],
          "links": [[1, 1, 0, 5, 0, "IMAGE"], [2, 5, 0, 6, 0, "IMAGE"], [3, 6, 0, 2, 0, "IMAGE"],
                    [4, 1, 0, 3, 0, "IMAGE"], [5, 7, 0, 3, 1, "STRING"]]}
    api = ui_to_api(ui, TEST_REGISTRY)
    assert set(api) == {"1", "2", "3"}
    assert api["2"]["inputs"]["image"] == ["1", 0] and api["2"]["inputs"]["seed"] == 9
    assert api["3"]["inputs"]["sizes"] == {"__value__": ["p", "q"]}


def test_bypass_passes_the_same_typed_input_and_drops_what_it_cannot_pass():
    ui = {"nodes": [node(1, "Source"),
                    node(2, "ListNode", [{"name": "image", "type": "IMAGE", "link": 1}], ["", 0, "fixed", "a"], mode=4),
                    node(3, "ListNode", [{"name": "image", "type": "IMAGE", "link": 2}], ["", 0, "fixed", "a"]),
                    node(4, "ListNode", [{"name": "image", "type": "MASK", "link": 3}], ["", 0, "fixed", "a"], mode=4),
                    node(5, "ListNode", [{"name": "image", "type": "IMAGE", "link": 4}], ["", 0, "fixed", "a"])],
          "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 1, 1, 4, 0, "MASK"],
                    [4, 4, 0, 5, 0, "IMAGE"]]}
    api = ui_to_api(ui, TEST_REGISTRY)
    assert api["3"]["inputs"]["image"] == ["1", 0]
    assert "image" not in api["5"]["inputs"]  # node 4 has no IMAGE input to pass on


@pytest.mark.parametrize("ui,message", [
    ({"nodes": [node(1, "Nope")], "links": []}, "Nope does not exist"),
    ({"nodes": [node(2, "ListNode", [{"name": "image", "type": "IMAGE", "link": 1}])],
      "links": [[1, 99, 0, 2, 0, "IMAGE"]]}, "node 99, which does not exist"),
    ({"nodes": [], "links": [], "definitions": {"subgraphs": [{"id": "x"}]}}, "subgraphs"),
    ({"nodes": [{"type": "Source"}], "links": []}, "without id or type"),
    ({"nodes": [], "links": [[1, 2]]}, "malformed link"),
])
def test_broken_ui_files_give_clean_errors(ui, message):
    with pytest.raises(WorkflowError, match=message):
        ui_to_api(ui, TEST_REGISTRY)


widget_values = st.fixed_dictionaries({
    "steps": st.integers(1, 1000), "cfg": st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 2)),
    "seed": st.integers(0, 2**64 - 1), "negative_prompt": st.text(max_size=30),
    "sampler_name": st.sampled_from(["euler", "ddim", "lcm"]), "text": st.text(min_size=1, max_size=40),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=widget_values)
def test_api_to_ui_to_api_round_trip_is_stable(values):
    api = load(WORKFLOWS / "quickstart.json")
    api["5"]["inputs"].update({k: values[k] for k in ("steps", "cfg", "seed", "negative_prompt")})
    api["3"]["inputs"]["sampler_name"] = values["sampler_name"]
    api["2"]["inputs"]["text"] = values["text"]
    assert ui_to_api(api_to_ui(api, REGISTRY), REGISTRY, NAMES) == api
