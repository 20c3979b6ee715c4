"""The shipped UI workflows open laid out for people: a group per stage around its nodes, one note,
no node on top of another, and every seed study ends in its report. Geometry as the editor saves
it (LiteGraph: ``pos`` is the top-left of a node's body, its title bar sits above it; a group's
``bounding`` includes its title)."""

import json
from pathlib import Path

import pytest

import loralab

WORKFLOWS = Path(loralab.__file__).parent / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.ui.json"))
SEED_STUDIES = ("knowledge_transfer", "lcm_lora", "lora_rank", "fashion_lora", "garment_concept", "style_noise")
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT
NOTES = ("Note", "MarkdownNote")


def box(node) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE, x + w, y + h


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_no_node_covers_another_and_each_stage_is_a_group(path):
    graph = json.loads(path.read_text())
    nodes = graph["nodes"]
    boxes = {n["id"]: box(n) for n in nodes}
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not overlap(boxes[a["id"]], boxes[b["id"]]), \
                f"{path.name}: node {a['id']} ({a.get('title', a['type'])}) overlaps node {b['id']} " \
                f"({b.get('title', b['type'])})"
    groups = graph.get("groups") or []
    assert len(groups) >= 2, f"{path.name}: no stage groups"
    frames = [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in groups]
    for i, a in enumerate(frames):
        for b in frames[i + 1:]:
            assert not overlap(a, b), f"{path.name}: groups overlap"
    notes = [n for n in nodes if n["type"] in NOTES]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200, f"{path.name}: one note that explains"
    for n in nodes:
        if n["type"] in NOTES:
            assert not any(overlap(boxes[n["id"]], f) for f in frames), f"{path.name}: the note sits on a group"
            continue
        holders = [g["title"] for g, f in zip(groups, frames, strict=True) if inside(boxes[n["id"]], f)]
        assert len(holders) == 1, f"{path.name}: node {n['id']} ({n['type']}) is in groups {holders}"


@pytest.mark.parametrize("name", SEED_STUDIES)
def test_every_seed_study_ends_in_its_report(name):
    api = json.loads((WORKFLOWS / f"{name}.json").read_text())
    reports = [n for n in api.values() if n["class_type"] == "LoRALabSaveReport"]
    assert len(reports) == 1
    wired = [v for k, v in reports[0]["inputs"].items() if k.startswith(("scores_", "figure_"))]
    assert len(wired) >= 3 and reports[0]["inputs"]["filename_prefix"].startswith(f"{name}/")
