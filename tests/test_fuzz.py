"""Untrusted workflows: mutated graphs never crash the runner with anything but its clean error."""

import copy
import json
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loralab
from loralab import NODE_CLASS_MAPPINGS as REGISTRY
from loralab import NODE_DISPLAY_NAME_MAPPINGS as NAMES
from loralab.headless.cli import main
from loralab.headless.convert import ui_to_api
from loralab.headless.errors import WorkflowError, printable
from loralab.headless.graph import apply_overrides, validate

WORKFLOWS = Path(loralab.__file__).parent / "workflows"
API = json.loads((WORKFLOWS / "quickstart.json").read_text())
UI = json.loads((WORKFLOWS / "quickstart.ui.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
node_ids = st.sampled_from(sorted(API) + ["99", "", "x"])
input_names = st.sampled_from(["model", "steps", "cfg", "seed", "sampler", "images", "filename_prefix", "zzz"])
mutation = st.one_of(
    st.tuples(st.just("value"), node_ids, input_names, json_values),
    st.tuples(st.just("link"), node_ids, input_names, st.tuples(node_ids | st.integers(), st.integers(-2, 4))),
    st.tuples(st.just("class"), node_ids, st.sampled_from(sorted(REGISTRY) + ["KSampler", ""]), st.none()),
    st.tuples(st.just("node"), node_ids, st.none(), json_values),
    st.tuples(st.just("delete"), node_ids, st.none(), st.none()),
)


ERROR_TYPES = {"invalid_prompt", "prompt_no_outputs", "prompt_outputs_failed_validation", "dependency_cycle"}
NODE_ERROR_TYPES = {"required_input_missing", "bad_linked_input", "return_type_mismatch", "invalid_input_type",
                    "value_smaller_than_min", "value_bigger_than_max", "value_not_in_list", "custom_validation_failed"}


def assert_reported(error: WorkflowError, workflow) -> None:
    """A refusal the user can act on: one of ComfyUI's error types, node errors only for nodes of
    the workflow that some output needs, and a body that survives JSON and the terminal."""
    assert error.error["type"] in ERROR_TYPES and error.error["message"]
    assert bool(error.node_errors) == (error.error["type"] == "prompt_outputs_failed_validation")
    for node_id, entry in error.node_errors.items():
        assert entry["class_type"] == workflow[node_id]["class_type"]
        assert entry["dependent_outputs"] and entry["errors"]
        assert all(e["type"] in NODE_ERROR_TYPES and e["message"] for e in entry["errors"])
    json.dumps(error.to_json())
    assert all(c in "\n\t" or unicodedata.category(c) != "Cc" for c in printable(str(error)))


def mutate(workflow: dict, mutations) -> dict:
    wf = copy.deepcopy(workflow)
    for op, node_id, name, value in mutations:
        target = wf.get(node_id)
        if op == "node":
            wf[node_id] = value
        elif op == "delete":
            wf.pop(node_id, None)
        elif isinstance(target, dict) and op == "class":
            target["class_type"] = name
        elif isinstance(target, dict) and isinstance(target.get("inputs"), dict):
            target["inputs"][name] = list(value) if op == "link" else value
    return wf


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_validation_of_mutated_api_workflows_raises_only_workflow_errors(mutations):
    workflow = mutate(API, mutations)
    try:
        validate(workflow, REGISTRY)
    except WorkflowError as e:
        assert_reported(e, workflow)


ui_mutation = st.tuples(st.sampled_from(["nodes", "links"]), st.integers(0, 12),
                        st.sampled_from(["id", "type", "mode", "inputs", "widgets_values", "title", None]), json_values)


@settings(max_examples=200, deadline=None)
@given(st.lists(ui_mutation, min_size=1, max_size=3))
def test_conversion_of_mutated_ui_workflows_raises_only_workflow_errors(mutations):
    ui = copy.deepcopy(UI)
    for field, index, key, value in mutations:
        items = ui[field]
        if index >= len(items):
            items.append(value)
        elif key is None or not isinstance(items[index], dict):
            items[index] = value
        else:
            items[index][key] = value
    api = None
    try:
        api = ui_to_api(ui, REGISTRY, NAMES)
        validate(api, REGISTRY)
    except WorkflowError as e:
        assert_reported(e, api)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutation, min_size=1, max_size=3), st.lists(st.text(max_size=20), max_size=2))
def test_the_cli_check_exits_0_or_2_on_mutated_files_and_overrides(tmp_path_factory, mutations, overrides):
    path = tmp_path_factory.mktemp("fuzz") / "wf.json"
    path.write_text(json.dumps(mutate(API, mutations)))
    # "--set=VALUE": a value may start with "-" (argparse would take "--set -:" for a missing value)
    args = ["run", str(path), "--check", "-q"] + [f"--set={o}" for o in overrides]
    assert main(args) in (0, 2)


def test_absurd_sizes_are_stopped_by_declared_maxima():
    for override, field in (("5.steps=1000000000", "steps"), ("5.images_per_prompt=1000000", "images_per_prompt"),
                            ("5.width=100000", "width")):
        try:
            validate(apply_overrides(API, [override], REGISTRY), REGISTRY)
        except WorkflowError as e:
            assert e.node_errors["5"]["errors"][0]["type"] == "value_bigger_than_max"
            assert e.node_errors["5"]["errors"][0]["details"] == field
        else:
            raise AssertionError(f"{override} was accepted")
