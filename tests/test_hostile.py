"""Hostile inputs through the command line: every case exits 2 with a message that names what is
wrong, prints no traceback and no raw terminal control character, and writes no file at all; and
very long chains, which are legitimate, run without hitting Python's recursion limit.

Each case is (command, workflow file content, extra arguments, text the message must contain).
Content is a JSON-able object or raw text, written to input.json; for ``sweep`` the first extra
argument is the experiment TOML (its ``workflow = "input.json"``). More cases add rows to CASES.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import loralab
from loralab.headless.cli import main
from loralab.headless.convert import ui_to_api
from loralab.headless.errors import WorkflowError
from loralab.headless.execute import Executor
from loralab.headless.graph import node_depths, validate
from loralab.headless.ui import api_to_ui

WORKFLOWS = Path(loralab.__file__).parent / "workflows"
ESC_CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"  # OSC 52: "set the clipboard to 'evil'"
HUGE = "9" * 5000  # above Python's 4300-digit int/str conversion limit


def quickstart(edit=None):
    wf = json.loads((WORKFLOWS / "quickstart.json").read_text())
    if edit:
        edit(wf)
    return wf


def ui_node(node_id, kind, inputs=(), widgets=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [],
            "widgets_values": list(widgets)}


def save_image_fed_by(link_type, origin_slot=0, bypassed_source=False, name="images"):
    """UI file: Image Folder -> (optionally a bypassed Save Image) -> Save Image."""
    source = ui_node(1, "LoRALabImageFolder", widgets=["x", "", 64, 0])
    middle = ui_node(2, "LoRALabPreviewImage", [{"name": "images", "type": "IMAGE", "link": 1}], mode=4)
    sink_input = {"type": link_type, "link": 2 if bypassed_source else 1}
    if name is not None:
        sink_input["name"] = name
    sink = ui_node(3, "LoRALabSaveImage", [sink_input], ["x"])
    links = [[1, 1, origin_slot if not bypassed_source else 1, 2 if bypassed_source else 3, 0, "IMAGE"]]
    if bypassed_source:
        links.append([2, 2, origin_slot, 3, 0, link_type])
    return {"nodes": [source, middle, sink] if bypassed_source else [source, sink], "links": links}


def reroute_chain(length, link_type):
    """A Prompts node's LL_PROMPTS output through ``length`` reroutes into Save Image's IMAGE input."""
    nodes = [ui_node(1, "LoRALabPrompts", widgets=["a"])]
    links = []
    for i in range(length):
        nodes.append(ui_node(100 + i, "Reroute", [{"name": "", "type": "*", "link": i + 1}]))
        links.append([i + 1, 1 if i == 0 else 99 + i, 0, 100 + i, 0, link_type])
    nodes.append(ui_node(2, "LoRALabSaveImage", [{"name": "images", "type": "IMAGE", "link": length + 1}], ["x"]))
    links.append([length + 1, 99 + length, 0, 2, 0, link_type])
    return {"nodes": nodes, "links": links}


def dataset_node(kind, **paths):
    """A dataset node with the given path inputs, its images saved (validation needs an output)."""
    inputs = {**paths, "resolution": 64, "crop": "center", "flip": False}
    return {"1": {"class_type": kind, "inputs": inputs},
            "2": {"class_type": "LoRALabSaveImage", "inputs": {"images": ["1", 1], "filename_prefix": "x"}}}


def set_model(value):
    return lambda wf: wf["1"]["inputs"].update(model=value)


CASES = {
    # non-finite numbers
    "nan_json_literal": ("run", json.dumps(quickstart(lambda wf: wf["5"]["inputs"].update(cfg=float("nan")))),
                         [], "cfg"),
    "nan_string": ("run", quickstart(lambda wf: wf["5"]["inputs"].update(cfg="nan")), [], "cfg"),
    "set_nan": ("run", quickstart(), ["--set", "5.cfg=NaN"], "cfg"),
    "set_minus_infinity": ("run", quickstart(), ["--set", "5.cfg=-Infinity"], "cfg"),
    # overrides
    "set_typo": ("run", quickstart(), ["--set", "Generate A.stepz=5"], "'stepz'"),
    "set_link_to_missing_node": ("run", quickstart(), ["--set", '5.pipeline=["99",0]'], "99"),
    "set_on_a_list_root": ("run", [1, 2], ["--set", "1.x=2"], "JSON object"),
    "set_5000_digits": ("run", quickstart(), ["--set", f"5.steps={HUGE}"], "steps"),
    "set_10000_deep_list": ("run", quickstart(), ["--set", "5.negative_prompt=" + "[" * 10000 + "]" * 10000],
                            "negative_prompt"),
    "set_constant_that_looks_like_a_link": ("run", quickstart(), ["--set", '5.prompts=["1",0]'], "prompts"),
    "set_constant_that_looks_like_a_link_to_a_missing_node": ("run", quickstart(), ["--set", '5.prompts=["99",0]'],
                                                              "prompts"),
    "set_escape_in_input_name": ("run", quickstart(), ["--set", f"5.{ESC_CLIPBOARD}=1"], "\\x1b"),
    # API files
    "integer_of_5000_digits": ("run", '{"1": {"class_type": "LoRALabSampler", "inputs": {"steps": ' + HUGE + "}}}",
                               [], "4300"),
    "list_constant_of_a_link_to_a_missing_node": (
        "run", quickstart(lambda wf: wf["5"]["inputs"].update(prompts={"__value__": ["99", 0]})), [], "prompts"),
    "escape_in_class_name": ("run", {"1": {"class_type": ESC_CLIPBOARD, "inputs": {}}}, [], "\\x1b]52"),
    "escape_in_model_name": ("run", quickstart(set_model(ESC_CLIPBOARD)), [], "\\x1b]52"),
    "escape_in_node_id": ("run", {"\x1b[2J": {"class_type": "Nope", "inputs": {}}}, [], "\\x1b[2J"),
    "escape_in_title": ("run", quickstart(lambda wf: (wf["5"]["_meta"].update(title=ESC_CLIPBOARD),
                                                      wf["5"]["inputs"].update(steps=0))), [], "\\x1b]52"),
    # UI files
    "ui_definitions_as_a_list": ("run", {"nodes": [], "links": [], "definitions": []}, [], "definitions"),
    "ui_links_as_an_integer": ("convert", {"nodes": [], "links": 5}, [], "links"),
    "ui_integer_links": ("convert", {"nodes": [], "links": [1, 2]}, [], "malformed link"),
    "ui_unnamed_input": ("convert", save_image_fed_by("IMAGE", name=None), [], "name"),
    "ui_negative_bypass_slot": ("convert", save_image_fed_by("IMAGE", origin_slot=-5, bypassed_source=True), [],
                                "slot -5"),
    "ui_negative_origin_slot": ("run", save_image_fed_by("IMAGE", origin_slot=-1), [], "slot -1"),
    "ui_10000_reroutes_of_the_wrong_type": ("run", reroute_chain(10000, "LL_PROMPTS"), [], "LL_PROMPTS"),
    # dataset paths that could only lead outside the input folder: refused at validation
    "image_folder_parent": ("run", dataset_node("LoRALabImageFolder", folder="../outside"), [],
                            "input 'folder': folder '../outside' must be a relative path inside the input folder"),
    "coco_absolute_annotations": ("run", dataset_node("LoRALabCOCOCaptions", annotations="/etc/passwd",
                                                      image_folder="coco"), [], "input 'annotations'"),
    "flickr_drive_folder": ("run", dataset_node("LoRALabFlickrCaptions", captions_file="f.txt",
                                                image_folder="C:/Windows"), [], "input 'image_folder'"),
    # sweeps
    "sweep_of_a_list_root_workflow": ("sweep", [1, 2], ['workflow = "input.json"\n[axes]\n"5.steps" = [1, 2]\n'],
                                      "JSON object"),
    "sweep_axis_typo": ("sweep", quickstart(), ['workflow = "input.json"\n[axes]\n"5.stepz" = [1, 2]\n',
                                                "--dry-run"], "has no input 'stepz'"),
}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_exits_2_with_a_clean_message_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    command, content, args, expected = CASES[case]
    monkeypatch.chdir(tmp_path)  # relative default paths would land here
    path = tmp_path / "input.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    if command == "sweep":
        path = tmp_path / "experiment.toml"
        path.write_text(args[0], encoding="utf-8")
        args = args[1:]
    before = files_under(tmp_path)
    out_arg = ["-o", str(tmp_path / "out" / ("api.json" if command == "convert" else ""))]
    rc = main([command, str(path), *out_arg, *(["-q"] if command != "convert" else []), *args])
    out, err = capsys.readouterr()
    shown = out + err
    assert rc == 2, shown
    assert expected in shown, shown
    assert shown.startswith("error: ") and "Traceback" not in shown
    assert not any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) < 0xa0 for c in shown), repr(shown)
    assert files_under(tmp_path) == before


def test_a_fresh_process_refuses_an_invalid_workflow_before_importing_torch_or_diffusers(tmp_path):
    """The console entry point (``loralab`` calls ``main``) in a fresh interpreter: a clean message,
    and neither torch nor diffusers (seconds and most of a GB) imported to say so."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(quickstart(set_model(ESC_CLIPBOARD))))
    probe = ("import sys\nfrom loralab.headless.cli import main\nrc = main(sys.argv[1:])\n"
             "print('imported:', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
             "sys.exit(rc)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe, "run", str(path), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Value not in list: model: '\\x1b]52;c;ZXZpbA==\\x07'" in done.stderr
    assert "Traceback" not in done.stderr and "\x1b" not in done.stderr + done.stdout
    assert done.stdout.strip() == "imported: []"
    assert not (tmp_path / "out").exists()


# Long chains are legitimate (ComfyUI runs graphs of any size): they must work, not crash.

class Step:
    """out = x + 1: a chain of these is as deep as it is long."""
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    calls = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"default": 0})}}

    def f(self, x):
        Step.calls += 1
        return (x + 1,)


class Last(Step):
    OUTPUT_NODE = True


def test_a_3000_node_chain_validates_runs_caches_and_round_trips_through_the_ui_format():
    registry = {"Step": Step, "Last": Last}
    # Listed output first: a recursive walk would go 3000 calls deep from the first node.
    wf = {str(i): {"class_type": "Step", "inputs": {"x": [str(i - 1), 0]}} for i in range(3000, 1, -1)}
    wf["1"] = {"class_type": "Step", "inputs": {"x": 0}}
    wf["3000"]["class_type"] = "Last"
    prompt, outputs, order = validate(wf, registry)
    assert outputs == ["3000"] and order == [str(i) for i in range(1, 3001)]
    assert node_depths(prompt)["3000"] == 2999
    executor = Executor(registry, show_progress=False)
    Step.calls = 0
    assert executor.run(prompt, order).outputs["3000"] == [[3000]] and Step.calls == 3000
    rerun = executor.run(prompt, order).executed
    assert not set(rerun) & set(order[:-1])  # the whole chain's keys are found again
    back = ui_to_api(api_to_ui(prompt, registry), registry)
    assert {k: v["inputs"] for k, v in back.items()} == {k: v["inputs"] for k, v in prompt.items()}


def test_the_cli_accepts_a_3000_node_chain_in_both_formats(tmp_path, capsys):
    wf = {"9": {"class_type": "LoRALabSaveScores", "inputs": {"scores": ["3099", 0], "filename_prefix": "s",
                                                              "format": "csv"}}}
    wf.update({str(100 + i): {"class_type": "LoRALabCombineScores",
                              "inputs": {"scores_1": [str(99 + i) if i else "5", 0 if i else 1], "how": "outer"}}
               for i in range(2999, -1, -1)})  # output first, as in the in-process chain above
    wf.update(quickstart())
    api, ui = tmp_path / "chain.json", tmp_path / "chain.ui.json"
    api.write_text(json.dumps(wf))
    ui.write_text(json.dumps(api_to_ui(wf, loralab.NODE_CLASS_MAPPINGS)))
    for path in (api, ui):
        assert main(["run", str(path), "--check"]) == 0
        assert capsys.readouterr().out == "valid: 3009 nodes to run for 3 output(s)\n"
    assert main(["convert", str(ui), "-o", str(tmp_path / "back.json")]) == 0
    assert json.loads((tmp_path / "back.json").read_text())["9"]["inputs"]["scores"] == ["3099", 0]


def test_10000_chained_reroutes_convert_to_one_link(tmp_path):
    path = tmp_path / "reroutes.ui.json"
    path.write_text(json.dumps(reroute_chain(10000, "IMAGE")))
    assert main(["convert", str(path), "-o", str(tmp_path / "api.json")]) == 0
    assert json.loads((tmp_path / "api.json").read_text())["2"]["inputs"]["images"] == ["1", 0]


def test_a_sweep_listing_escapes_control_characters_of_node_titles(tmp_path, capsys):
    csi = "\x9b31m"  # the 8-bit CSI (a C1 control), which TOML allows in a quoted key
    (tmp_path / "wf.json").write_text(json.dumps(quickstart(lambda wf: wf["5"]["_meta"].update(title=csi))))
    (tmp_path / "exp.toml").write_text(f'workflow = "wf.json"\n[axes]\n"{csi}.steps" = [2, 3]\n', encoding="utf-8")
    assert main(["sweep", str(tmp_path / "exp.toml"), "-o", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\\x9b31m.steps=") == 2 and "\x9b" not in out


def test_api_ids_that_are_not_numbers_and_odd_meta_still_give_an_editor_graph():
    """ComfyUI accepts any string ids ("10:5" from subgraphs, names); LiteGraph needs numbers. The
    editor graph a headless run embeds in its PNGs takes free numbers for them."""
    wf = quickstart()
    renamed = {k: f"10:{k}" if k in ("1", "5") else k for k in wf}
    wf = {renamed[k]: {**v, "inputs": {n: [renamed[x[0]], x[1]] if isinstance(x, list) else x
                                       for n, x in v["inputs"].items()}} for k, v in wf.items()}
    wf["10:5"]["_meta"] = ["not", "an", "object"]
    prompt, _, _ = validate(wf, loralab.NODE_CLASS_MAPPINGS)
    ui = api_to_ui(prompt, loralab.NODE_CLASS_MAPPINGS)
    ids = {n["id"] for n in ui["nodes"]}
    assert len(ids) == len(wf) and all(isinstance(i, int) for i in ids) and {2, 3, 4, 6, 7, 8} <= ids
    back = ui_to_api(ui, loralab.NODE_CLASS_MAPPINGS, loralab.NODE_DISPLAY_NAME_MAPPINGS)
    loader = next(n["id"] for n in ui["nodes"] if n["type"] == "LoRALabLoadPipeline")
    generate_a = next(n["id"] for n in ui["nodes"] if n["type"] == "LoRALabGenerate" and "title" not in n)
    assert back[str(generate_a)]["inputs"]["pipeline"] == [str(loader), 0]
    assert back["7"]["inputs"]["images"] == [str(generate_a), 0]


def test_validation_time_grows_linearly_with_a_chain_of_3000_outputs():
    """Every node an output: walking up from each output separately would be 4.5 million steps."""
    registry = {"Step": Step, "Last": Last}
    wf = {str(i): {"class_type": "Last", "inputs": {"x": [str(i - 1), 0]}} for i in range(3000, 1, -1)}
    wf["1"] = {"class_type": "Last", "inputs": {"x": 0}}
    start = time.perf_counter()
    assert len(validate(wf, registry)[2]) == 3000
    wf["2999"]["inputs"]["x"] = -1.5  # not a whole number: only outputs 2999 and 3000 depend on it
    with pytest.raises(WorkflowError) as info:
        validate(wf, registry)
    assert time.perf_counter() - start < 5  # about 0.2 s; the per-output walk took 27 s
    assert info.value.node_errors["2999"]["dependent_outputs"] == ["3000", "2999"]


def test_conversion_time_grows_linearly_when_3000_nodes_share_a_3000_reroute_chain():
    ui = reroute_chain(3000, "IMAGE")
    last = ui["links"][-1]
    for k in range(10**6, 10**6 + 3000):
        ui["nodes"].append(ui_node(k, "LoRALabSaveImage", [{"name": "images", "type": "IMAGE", "link": k}], ["x"]))
        ui["links"].append([k, last[1], 0, k, 0, "IMAGE"])
    start = time.perf_counter()
    api = ui_to_api(ui, loralab.NODE_CLASS_MAPPINGS)
    assert time.perf_counter() - start < 2  # about 0.1 s; following the chain once per consumer took 5 s
    assert {tuple(api[str(k)]["inputs"]["images"]) for k in range(10**6, 10**6 + 3000)} == {("1", 0)}


def test_log_lines_are_escaped_too(capsys):
    """Nodes log names that come from the workflow (Save LoRA's warning names the LoRA's run_name)."""
    assert main(["run", str(WORKFLOWS / "quickstart.json"), "--check"]) == 0
    logging.getLogger("loralab").warning("LoRA Lab: Save LoRA: %s: a warning", ESC_CLIPBOARD)
    err = capsys.readouterr().err
    assert "LoRA Lab: Save LoRA: \\x1b]52;c;ZXZpbA==\\x07: a warning" in err and "\x1b" not in err
