import json
from pathlib import Path

from loralab import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from loralab.headless.catalog import object_info
from loralab.headless.cli import main

COMFY = Path(__file__).parent / "data" / "object_info.comfyui.json"


def normalise(info: dict) -> dict:
    return json.loads(json.dumps({k: {f: v for f, v in node.items() if f != "python_module"}
                                  for k, node in info.items()}))


def test_object_info_equals_what_comfyui_serves_for_our_nodes(monkeypatch, tmp_path):
    """tests/data/object_info.comfyui.json was fetched from ComfyUI 0.8's /object_info with this pack
    installed (30 nodes) on a machine with no checkpoints or LoRA files. Refresh it when nodes change:
    a node added or changed here without a refresh fails this test."""
    monkeypatch.chdir(tmp_path)  # no ./models: the model list is the embedded model only
    comfy = json.loads(COMFY.read_text())
    ours = normalise(object_info(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS))
    assert set(ours) == set(comfy)
    assert ours == normalise(comfy)


def test_nodes_command_lists_every_node_and_emits_object_info(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["nodes"]) == 0
    text = capsys.readouterr().out
    assert all(node_id in text for node_id in NODE_CLASS_MAPPINGS)
    assert "in  steps: INT default=20 min=1 max=1000" in text
    assert main(["nodes", "--object-info"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(NODE_CLASS_MAPPINGS)
