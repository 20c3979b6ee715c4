"""The headless runner: executes API workflows as ComfyUI does; bad workflows exit 2 cleanly."""

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch

import loralab
from loralab.headless.cli import main
from loralab.headless.errors import WorkflowError
from loralab.headless.execute import Executor, map_over_lists, merge_results
from loralab.headless.graph import validate

QUICKSTART = Path(loralab.__file__).parent / "workflows" / "quickstart.json"
FAST = ["--set", "5.steps=2", "--set", "Generate B.steps=2", "--set", "5.images_per_prompt=1"]


def quickstart():
    return json.loads(QUICKSTART.read_text())


def run_cli(tmp_path, workflow, *args):
    path = tmp_path / "wf.json"
    path.write_text(workflow if isinstance(workflow, str) else json.dumps(workflow))
    return main(["run", str(path), "-o", str(tmp_path / "out"), "-q", *args])


def test_quickstart_runs_and_writes_images_from_both_samplers(tmp_path, capsys):
    assert main(["run", str(QUICKSTART), "-o", str(tmp_path / "out"), "-q", *FAST]) == 0
    out = capsys.readouterr().out
    euler = sorted((tmp_path / "out" / "quickstart").glob("euler_*.png"))
    dpm = sorted((tmp_path / "out" / "quickstart").glob("dpmpp_2m_karras_*.png"))
    assert len(euler) == 4 and len(dpm) == 8  # 4 prompts x 1 (overridden) and x 2 images
    assert "wrote 12 image(s)" in out


def test_run_is_reproducible(tmp_path):
    for name in ("a", "b"):
        assert main(["run", str(QUICKSTART), "-o", str(tmp_path / name), "-q", *FAST]) == 0
    for png in (tmp_path / "a" / "quickstart").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "b" / "quickstart" / png.name).read_bytes()


def broken(edit):
    wf = quickstart()
    edit(wf)
    return wf


ERROR_CASES = {
    "unknown_node": (lambda wf: wf["3"].update(class_type="KSampler"), "invalid_prompt", "KSampler does not exist"),
    "missing_input": (lambda wf: wf["5"]["inputs"].pop("steps"), "required_input_missing", "steps"),
    "link_to_missing_node": (lambda wf: wf["5"]["inputs"].update(sampler=["99", 0]), "bad_linked_input", "node '99'"),
    "link_bad_slot": (lambda wf: wf["5"]["inputs"].update(sampler=["3", 4]), "bad_linked_input", "slot 4"),
    "malformed_link": (lambda wf: wf["5"]["inputs"].update(sampler=["3"]), "bad_linked_input", "sampler"),
    "type_mismatch": (lambda wf: wf["5"]["inputs"].update(sampler=["2", 0]), "return_type_mismatch", "LL_PROMPTS"),
    "too_big": (lambda wf: wf["5"]["inputs"].update(steps=10**9), "value_bigger_than_max", "steps"),
    "too_small": (lambda wf: wf["5"]["inputs"].update(images_per_prompt=0),
                  "value_smaller_than_min", "images_per_prompt"),
    "not_in_list": (lambda wf: wf["3"]["inputs"].update(sampler_name="magic"),
                    "value_not_in_list", "sampler_name: 'magic'"),
    "wrong_type": (lambda wf: wf["5"]["inputs"].update(seed="abc"), "invalid_input_type", "seed, abc"),
    "no_outputs": (lambda wf: [wf.pop(k) for k in ("7", "8")], "prompt_no_outputs", "no outputs"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_invalid_workflows_exit_2_with_one_readable_message(tmp_path, capsys, case):
    edit, error_type, text = ERROR_CASES[case]
    assert run_cli(tmp_path, broken(edit)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and text in err
    assert run_cli(tmp_path, broken(edit), "--json") == 2
    body = json.loads(capsys.readouterr().err)
    types = [body["error"]["type"]] + [e["type"] for n in body["node_errors"].values() for e in n["errors"]]
    assert error_type in types
    assert not (tmp_path / "out").exists(), "nothing is written for an invalid workflow"


class LoopNode:
    """Output type equals input type, so a loop of these is type-correct and only the loop is wrong."""
    CATEGORY = "test"
    RETURN_TYPES = ("LL_SAMPLER",)
    FUNCTION = "f"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("LL_SAMPLER", {})}}


def test_a_cycle_is_reported_as_a_dependency_cycle():
    wf = {"1": {"class_type": "Loop", "inputs": {"x": ["2", 0]}},
          "2": {"class_type": "Loop", "inputs": {"x": ["3", 0]}},
          "3": {"class_type": "Loop", "inputs": {"x": ["1", 0]}}}
    with pytest.raises(WorkflowError) as info:
        validate(wf, {"Loop": LoopNode})
    assert info.value.error["type"] == "dependency_cycle"
    assert info.value.exit_code == 2
    assert "1 -> 2 -> 3 -> 1" in str(info.value)


def test_node_error_messages_name_the_node_and_input(tmp_path, capsys):
    wf = broken(lambda wf: wf["5"]["inputs"].update(steps=10**9))
    run_cli(tmp_path, wf)
    err = capsys.readouterr().err
    assert "node 5 (LoRALabGenerate, 'Generate A')" in err and "bigger than max of 1000: steps" in err


@pytest.mark.parametrize("text", ["{not json", "[]", "{}", '{"1": 5}', '{"1": {"inputs": {}}}'])
def test_malformed_files_exit_2(tmp_path, capsys, text):
    assert run_cli(tmp_path, text) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_empty_ui_workflow_has_no_outputs(tmp_path, capsys):
    assert run_cli(tmp_path, {"nodes": [], "links": []}) == 2
    assert "Prompt has no outputs" in capsys.readouterr().err


def test_a_failing_node_exits_1_naming_the_node_without_traceback(tmp_path, capsys):
    wf = broken(lambda wf: wf["2"]["inputs"].update(text=""))  # valid, but Prompts finds no prompt when it runs
    assert run_cli(tmp_path, wf, *FAST) == 1
    err = capsys.readouterr().err
    assert "node 2 (LoRALabPrompts, 'Prompts') failed: ValueError: LoRA Lab: Prompts: input 'text' holds no" in err
    assert "Traceback" not in err


def test_set_overrides_by_id_and_title_and_rejects_unknown_nodes(tmp_path, capsys):
    assert run_cli(tmp_path, quickstart(), "--set", "Nope.steps=3") == 2
    assert "no node with id or unique title 'Nope'" in capsys.readouterr().err
    assert run_cli(tmp_path, quickstart(), "--set", "badsyntax") == 2


class Probe:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    OUTPUT_NODE = True
    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"default": 0})}, "hidden": {"uid": "UNIQUE_ID", "prompt": "PROMPT"}}

    def f(self, x, uid, prompt):
        t = torch.ones(1)
        Probe.seen.append((x, uid, torch.is_inference_mode_enabled(), t.is_inference(), sorted(prompt)))
        return (x + 1,)


def test_nodes_run_in_inference_mode_with_hidden_inputs():
    Probe.seen.clear()
    prompt, outputs, order = validate({"7": {"class_type": "Probe", "inputs": {"x": "41"}}}, {"Probe": Probe})
    result = Executor({"Probe": Probe}, show_progress=False).run(prompt, order)
    assert Probe.seen == [(41, "7", True, True, ["7"])]
    assert result.outputs["7"] == [[42]]


def test_list_mapping_follows_comfyui_rules():
    calls = map_over_lists(lambda a, b: (a + b,), {"a": [1, 2, 3], "b": [10]}, input_is_list=False)
    assert calls == [(11,), (12,), (13,)]
    assert map_over_lists(lambda a: (len(a),), {"a": [1, 2]}, input_is_list=True) == [(2,)]
    assert merge_results([([1, 2], "x"), ([3], "y")], (True, False)) == [[1, 2, 3], ["x", "y"]]


def test_only_nodes_an_output_needs_are_executed():
    wf = quickstart()
    wf["9"] = copy.deepcopy(wf["4"])  # a dangling sampler no output uses
    _, outputs, order = validate(wf, loralab.NODE_CLASS_MAPPINGS)
    assert "9" not in order and sorted(outputs) == ["7", "8"]
    assert order.index("1") < order.index("5") < order.index("7")


def test_headless_pngs_carry_the_api_graph_and_an_editor_workflow(tmp_path):
    from PIL import Image

    assert main(["run", str(QUICKSTART), "-o", str(tmp_path / "out"), "-q", *FAST]) == 0
    with Image.open(next((tmp_path / "out" / "quickstart").glob("euler_*.png"))) as img:
        prompt, ui = json.loads(img.text["prompt"]), json.loads(img.text["workflow"])
    assert prompt["5"]["inputs"]["steps"] == 2
    assert {n["type"] for n in ui["nodes"]} == {v["class_type"] for v in quickstart().values()}


def test_ui_export_puts_widgets_in_declaration_order_with_the_seed_control_value():
    from loralab.headless.ui import api_to_ui

    ui = api_to_ui(quickstart(), loralab.NODE_CLASS_MAPPINGS)
    gen = next(n for n in ui["nodes"] if n["id"] == 5)
    # optional widgets at their defaults
    assert gen["widgets_values"] == ["", 20, 7.5, 42, "fixed", 64, 64, 2, 1, -1.0, 0.2]
    assert [i["name"] for i in gen["inputs"]] == ["pipeline", "sampler", "prompts", "refiner"]
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        target = next(n for n in ui["nodes"] if n["id"] == dst)
        source = next(n for n in ui["nodes"] if n["id"] == src)
        assert target["inputs"][dst_slot]["link"] == link_id
        assert link_id in source["outputs"][slot]["links"] and source["outputs"][slot]["type"] == kind


def test_error_json_has_comfyui_shape_and_real_dependent_outputs(tmp_path, capsys):
    wf = broken(lambda wf: wf["5"]["inputs"].update(steps=10**6))
    assert run_cli(tmp_path, wf, "--json") == 2
    body = json.loads(capsys.readouterr().err)
    assert set(body) == {"error", "node_errors"}
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    entry = body["node_errors"]["5"]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    assert entry["dependent_outputs"] == ["7"]  # Save B does not depend on Generate A
    assert entry["errors"][0]["extra_info"]["received_value"] == 10**6


class Checked:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"default": 0, "min": 0, "max": 10}),
                             "y": ("INT", {"default": 0, "min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, x):
        return True if x % 2 == 0 else f"x must be even, got {x}"

    def f(self, x, y):
        return (x + y,)


def test_validate_inputs_is_honoured_and_replaces_the_range_checks_of_its_inputs():
    registry = {"Checked": Checked}
    validate({"1": {"class_type": "Checked", "inputs": {"x": 100, "y": 3}}}, registry)  # x skips max
    with pytest.raises(WorkflowError) as info:
        validate({"1": {"class_type": "Checked", "inputs": {"x": 3, "y": 3}}}, registry)
    err = info.value.node_errors["1"]["errors"][0]
    assert err["type"] == "custom_validation_failed" and err["details"] == "x - x must be even, got 3"
    with pytest.raises(WorkflowError, match="bigger than max"):
        validate({"1": {"class_type": "Checked", "inputs": {"x": 2, "y": 11}}}, registry)


class Counting:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    calls = 0
    changed = 0.0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, x):
        return cls.changed

    def f(self, x):
        Counting.calls += 1
        return (x,)


class Sink:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"v": ("INT", {})}}

    def f(self, v):
        return (v,)


def test_unchanged_nodes_are_served_from_the_cache_and_is_changed_can_force_a_rerun():
    registry = {"Counting": Counting, "Sink": Sink}
    wf = {"1": {"class_type": "Counting", "inputs": {"x": 1}}, "2": {"class_type": "Sink", "inputs": {"v": ["1", 0]}}}
    prompt, _, order = validate(wf, registry)
    executor = Executor(registry, show_progress=False)
    Counting.calls, Counting.changed = 0, 0.0
    first = executor.run(prompt, order)
    second = executor.run(prompt, order)
    assert Counting.calls == 1 and first.executed == ["1", "2"] and second.executed == []  # Sink too: inputs unchanged
    Counting.changed = 1.0  # a different IS_CHANGED value is a different key
    assert executor.run(prompt, order).executed == ["1", "2"]
    Counting.changed = float("nan")  # NaN never equals itself: always run
    assert executor.run(prompt, order).executed == ["1", "2"]
    assert executor.run(prompt, order).executed == ["1", "2"]


STUDENT = "embedded: world-student"


def rows_of(path):
    return list(csv.DictReader(path.open()))


def run_shipped(tmp_path, name, *overrides):
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["run", str(QUICKSTART.with_name(f"{name}.json")), "-o", str(tmp_path / "out"), "-q", *args]) == 0
    return tmp_path / "out"


def test_training_workflow_trains_saves_and_renders_before_and_after(tmp_path):
    out = run_shipped(tmp_path, "train_lora", "Train Config.steps=6", "Train Config.checkpoint_every=3",
                      "Train Config.validation_every=3", "4.count=8")
    assert len(list((out / "loras").glob("world-striped_*_.safetensors"))) == 1
    assert len(list((out / "train_lora").glob("before_*.png"))) == 12  # the 12 held-out test prompts
    assert len(list((out / "train_lora").glob("after_*.png"))) == 12
    assert len(list((out / "train_lora").glob("validation_*.png"))) == 2  # steps 3 and 6
    assert (out / "loralab_checkpoints" / "world-striped" / "checkpoint-0000006" / "state.pt").is_file()
    rows = rows_of(out / "train_lora" / "scores_00001_.csv")  # before and after, joined per image
    assert [r["model"] for r in rows] == [STUDENT] * 12 + [f"{STUDENT} + world-striped"] * 12
    assert all(r["prompt"].endswith(", in striped style") for r in rows)
    assert all(0 <= float(r["world_adherence"]) <= 1 and 0 <= float(r["world_style_striped"]) <= 1 for r in rows)


def test_knowledge_transfer_workflow_writes_seed_000s_tables(tmp_path):
    out = run_shipped(tmp_path, "knowledge_transfer", "10.steps=4", "6.steps=4", "7.steps=4", "12.steps=4")
    out = out / "knowledge_transfer"
    assert len(list(out.glob("teacher_*.png"))) == len(list(out.glob("lora_*.png"))) == 9
    rows = rows_of(out / "change_by_category_00001_.csv")
    metrics = {"mse", "psnr_db", "ssim", "hist_correl", "phash_sim", "color_w1_sim", "world_adherence"}
    assert {(r["category"], r["metric"]) for r in rows} == {
        (c, m) for c in ("standard", "challenging", "closeup") for m in metrics}
    assert all(r["n_pairs"] == "3" and r["model"] == f"{STUDENT} + knowledge-transfer" for r in rows)
    assert all(r["baseline"] == STUDENT for r in rows)
    p_values = [float(r["p_value"]) for r in rows if r["p_value"] != "nan"]  # nan: every difference is 0
    assert len(p_values) >= len(rows) // 2 and all(0 <= p <= 1 for p in p_values)
    summary = rows_of(out / "summary_00001_.csv")
    teacher = [r for r in summary if r["model"] == "embedded: world-teacher"]
    assert {r["model"] for r in summary} == {STUDENT, f"{STUDENT} + knowledge-transfer", "embedded: world-teacher"}
    assert {(r["category"], r["metric"], r["n"]) for r in teacher} == {  # the teacher has adherence only
        (c, "world_adherence", "3") for c in ("standard", "challenging", "closeup")}
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in summary
               if r["metric"] != "psnr_db" or r["ci_low"])


def test_lora_rank_workflow_writes_seed_002s_tables(tmp_path):
    fast = [f"{node}.steps=2" for node in ("15", "16", "17")]
    out = run_shipped(tmp_path, "lora_rank", "8.epochs=1", "4.count=8", "13.count=6", *fast) / "lora_rank"
    assert len(list(out.glob("rank16_*.png"))) == len(list(out.glob("rank64_*.png"))) == 6
    assert len(list(out.glob("loss_curves_*.png"))) == 1
    summary = rows_of(out / "summary_00001_.csv")
    metrics = ("clip_score", "world_adherence", "world_style_outlined")
    assert {(r["model"].split(" + ")[-1], r["category"], r["metric"]) for r in summary} == {
        (m, c, x) for m in (STUDENT, "outlined-r16", "outlined-r64") for c in ("standard", "challenging", "closeup")
        for x in metrics}
    assert all(r["n"] == "2" for r in summary)
    assert all(0 <= float(r["mean"]) <= 1 for r in summary if r["metric"] != "clip_score")
    costs = {r["rank"]: r for r in rows_of(out / "costs_00001_.csv")}
    assert set(costs) == {"16", "64"} and costs["64"]["alpha"] == "128.0"
    assert int(costs["64"]["trainable_parameters"]) == 4 * int(costs["16"]["trainable_parameters"])
    assert 3.5 < int(costs["64"]["file_size_bytes"]) / int(costs["16"]["file_size_bytes"]) < 4.1
    change = rows_of(out / "change_vs_base_00001_.csv")
    assert len(change) == 2 * 3 * 3 and all(r["baseline"] == STUDENT and r["n_pairs"] == "2" for r in change)


def test_style_noise_workflow_scores_content_style_lpips_and_time(tmp_path):
    fast = ["Train Config.steps=3", "4.count=4", "12.steps=2", "13.steps=2"]
    out = run_shipped(tmp_path, "style_noise", *fast) / "style_noise"
    rows = rows_of(out / "per_image_00001_.csv")
    assert len(rows) == 12 and {r["category"] for r in rows} == {"standard", "challenging", "closeup"}
    for r in rows:
        assert r["prompt"].endswith(", in pastel style")
        assert -1 <= float(r["clip_content_sim"]) <= 1 and -1 <= float(r["clip_style_sim"]) <= 1
        assert float(r["lpips_alex_rand"]) >= 0 and float(r["seconds_per_image"]) > 0
        assert 0 <= float(r["world_adherence"]) <= 1 and 0 <= float(r["world_style_pastel"]) <= 1
    gain = rows_of(out / "style_gain_00001_.csv")
    assert [r["metric"] for r in gain] == ["world_style_pastel", "world_adherence", "clip_style_sim"]
    assert all(r["n_pairs"] == "12" and r["model"] == f"{STUDENT} + L1" for r in gain)
    assert len(list(out.glob("training_curves_*.png"))) == 1
    (front,) = rows_of(out / "pareto_00001_.csv")  # one model: its mean adherence and style
    assert front["model"] == f"{STUDENT} + L1" and front["pareto"] == "True"
    styled = [float(r["world_style_pastel"]) for r in rows]
    assert float(front["world_style_pastel"]) == pytest.approx(sum(styled) / len(styled))


def test_style_noise_sweep_crosses_seven_loras_with_eleven_scheduler_settings(tmp_path, capsys):
    import tomli_w

    from loralab.headless.sweep import tomllib

    toml_path = QUICKSTART.with_name("style_noise.toml")
    assert main(["sweep", str(toml_path), "-o", str(tmp_path / "dry"), "--dry-run"]) == 0  # validates all 77
    assert capsys.readouterr().out.splitlines()[-1] == "77 runs, 0 done"
    exp = tomllib.loads(toml_path.read_text())
    exp["workflow"] = str(toml_path.with_name(exp["workflow"]))
    exp["set"] = {"Train Config.steps": 2, "4.count": 4, "10.count": 2}
    exp["axes"]["lora"] = [exp["axes"]["lora"][0], exp["axes"]["lora"][4]]  # L1, L5 (min-SNR)
    exp["axes"]["scheduler"] = [{**s, "Base images (content sources).steps": 2, "Styled images.steps": 2}
                                for s in (exp["axes"]["scheduler"][0], exp["axes"]["scheduler"][8])]
    small = tmp_path / "small.toml"
    small.write_text(tomli_w.dumps(exp))
    out = tmp_path / "out"
    assert main(["sweep", str(small), "-o", str(out), "-q"]) == 0
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    assert sum(node == "8" for r in runs for node in r["executed"]) == 2  # each LoRA trained once
    models = {row.get("model") for r in runs for row in r["scores"]}
    assert {f"{STUDENT} + L1", f"{STUDENT} + L5"} <= models


def test_fashion_lora_workflow_and_sweep_give_seed_003s_fid_clip_and_parameter_counts(tmp_path):
    import tomli_w

    from loralab.headless.sweep import tomllib

    path = QUICKSTART.with_name("fashion_lora.json")
    fast = {"Train Config.epochs": 1, "4.count": 8, "2.count": 4, "11.steps": 2, "12.steps": 2}
    out = run_shipped(tmp_path, "fashion_lora", *(f"{k}={v}" for k, v in fast.items())) / "fashion_lora"
    fids = {r["set"]: r for r in rows_of(out / "fid_00001_.csv")}
    assert set(fids) == {"base", "lora"} and all(r["n_generated"] == "4" and r["n_reference"] == "8"
                                                 for r in fids.values())
    assert "fid" not in fids["lora"] and float(fids["lora"]["fid_world"]) >= 0  # domain FID, labelled so
    compared = {r["metric"]: r for r in rows_of(out / "clip_00001_.csv")}
    assert set(compared) == {"clip_score", "world_adherence", "world_style_pastel"}
    assert all(r["n_pairs"] == "4" and r["model"] == f"{STUDENT} + unet-r2" for r in compared.values())
    assert all(0 <= float(compared[m][k]) <= 1 for m in ("world_adherence", "world_style_pastel")
               for k in ("mean_baseline", "mean_variant"))

    exp = tomllib.loads(QUICKSTART.with_name("fashion_lora.toml").read_text())
    assert [c["Train LoRA.run_name"] for c in exp["axes"]["config"]] == [
        "unet-r2", "unet-r1-te-r4", "te-r8", "unet-r1", "unet-r4", "unet-r8", "unet-r64"]
    exp["workflow"] = str(path)
    exp["set"] = fast
    exp["axes"]["config"] = [c for c in exp["axes"]["config"] if c["Train LoRA.run_name"] in ("unet-r1-te-r4", "te-r8")]
    small = tmp_path / "small.toml"
    small.write_text(tomli_w.dumps(exp))
    assert main(["sweep", str(small), "-o", str(tmp_path / "sweep"), "-q"]) == 0
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "runs").glob("*/result.json")]
    assert len(runs) == 2 and sum("12" in r["executed"] for r in runs) == 1  # base images made once
    params = {row["lora"]: row["trainable_parameters"] for r in runs for row in r["scores"]
              if row.get("node") == "9"}
    assert set(params) == {"unet-r1-te-r4", "te-r8"} and all(p > 0 for p in params.values())


def test_garment_concept_workflow_trains_a_single_image_lora_and_renders_the_prompts(tmp_path):
    out = run_shipped(tmp_path, "garment_concept", "Train Config (2000 epochs of one image, lr 1e-4 constant).epochs=3",
                      "13.steps=2")
    assert len(list((out / "garment_concept").glob("concept_0*.png"))) == 8  # 4 prompts x 2 seeds
    assert len(list((out / "garment_concept").glob("photo_*.png"))) == 1
    assert len(list((out / "loras").glob("concept-badge_*.safetensors"))) == 1
    rows = rows_of(out / "garment_concept" / "concept_probability_00001_.csv")
    assert [r["prompt"] for r in rows[::2]] == [
        "a sks badge with ukj pattern on a blue background", "a sks badge with ukj pattern on a yellow background",
        "a close-up of a sks badge with ukj pattern on a white background", "a badge on a blue background"]
    assert all(0 <= float(r["world_style_concept"]) <= 1 for r in rows)


def test_lcm_lora_workflow_distills_and_times_seed_001s_models(tmp_path):
    fast = ["7.steps=3", "4.count=8", "2.count=4", "15.steps=2", "16.steps=2"]
    out = run_shipped(tmp_path, "lcm_lora", *fast) / "lcm_lora"
    assert len(list(out.glob("lcm_lora_*.png"))) == 4
    fids = {r["set"]: r for r in rows_of(out / "fid_00001_.csv")}
    assert set(fids) == {"base", "lora", "lcm-lora"}
    assert all(r["n_generated"] == "4" and r["n_reference"] == "8" and float(r["fid_world"]) >= 0
               for r in fids.values())
    models = {STUDENT, f"{STUDENT} + flickr-lora", f"{STUDENT} + flickr-lcm-lora"}
    speed = {r["model"]: r for r in rows_of(out / "speed_00001_.csv")}
    assert set(speed) == models
    assert speed[f"{STUDENT} + flickr-lcm-lora"]["sampler"] == "lcm"
    assert speed[f"{STUDENT} + flickr-lcm-lora"]["steps"] == "4"
    assert all(float(r["mean"]) > 0 for r in speed.values())
    adherence = {r["model"]: r for r in rows_of(out / "adherence_00001_.csv")}
    assert set(adherence) == models and all(r["metric"] == "world_adherence" and r["n"] == "4"
                                            for r in adherence.values())
    assert all(0 <= float(r["mean"]) <= 1 for r in adherence.values())


class Floats:
    CATEGORY = "test"
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "f"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0}),
                             "y": ("FLOAT", {"default": 0.0, "allow_nonfinite": True})}}


@pytest.mark.parametrize("value", [float("nan"), "nan", float("inf"), "-Infinity", 1e999])
def test_non_finite_floats_are_refused_unless_the_input_declares_it_accepts_them(value):
    registry = {"Floats": Floats}
    with pytest.raises(WorkflowError) as info:
        validate({"1": {"class_type": "Floats", "inputs": {"x": value, "y": 0.0}}}, registry)
    (err,) = info.value.node_errors["1"]["errors"]
    assert err["type"] == "invalid_input_type" and err["extra_info"]["input_name"] == "x"
    assert "not a finite number" in err["message"] and "from -1.0 to 1.0" in err["details"]
    prompt, _, _ = validate({"1": {"class_type": "Floats", "inputs": {"x": 0.5, "y": value}}}, registry)
    assert not math.isfinite(prompt["1"]["inputs"]["y"])


def test_set_refuses_an_input_the_node_does_not_declare_and_names_the_valid_ones(tmp_path, capsys):
    assert run_cli(tmp_path, quickstart(), "--check", "--set", "Generate A.stepz=5") == 2
    err = capsys.readouterr().err
    assert "node 5 (LoRALabGenerate, 'Generate A') has no input 'stepz'" in err
    assert "its inputs: pipeline, sampler, prompts, negative_prompt, steps, cfg, seed" in err
    # In a workflow file an undeclared input is ignored, as ComfyUI ignores it.
    prompt, _, _ = validate(broken(lambda wf: wf["5"]["inputs"].update(stepz=5)), loralab.NODE_CLASS_MAPPINGS)
    assert "stepz" not in prompt["5"]["inputs"]


class Anything:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "f"
    OUTPUT_NODE = True
    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("*", {})}}

    def f(self, x):
        Anything.seen.append(x)
        return (1,)


def test_a_list_constant_stays_a_constant_and_is_never_run_as_a_link():
    registry = {"Anything": Anything}
    wf = {"1": {"class_type": "Anything", "inputs": {"x": 3}},
          "2": {"class_type": "Anything", "inputs": {"x": {"__value__": ["1", 0]}}}}
    prompt, _, order = validate(wf, registry)
    assert prompt["2"]["inputs"]["x"] == {"__value__": ["1", 0]}
    assert validate(prompt, registry)[0] == prompt  # validating again changes nothing
    Anything.seen.clear()
    Executor(registry, show_progress=False).run(prompt, order)
    assert sorted(Anything.seen, key=str) == [3, ["1", 0]]


def test_a_constant_for_an_input_only_a_node_can_feed_is_refused(tmp_path, capsys):
    assert run_cli(tmp_path, quickstart(), "--check", "--set", '5.prompts=["1",0]') == 2
    err = capsys.readouterr().err
    assert "Input of type LL_PROMPTS must be linked to a node's output: prompts, ['1', 0]" in err


def test_progress_bars_escape_control_characters_of_node_ids(capsys):
    prompt, _, order = validate({"\x1b]52;c;ZXZpbA==\x07": {"class_type": "Probe", "inputs": {"x": 1}}},
                                {"Probe": Probe})
    Executor({"Probe": Probe}, show_progress=True).run(prompt, order)
    err = capsys.readouterr().err
    assert "\\x1b]52;c;ZXZpbA==\\x07:Probe" in err and "\x1b" not in err
