"""One explicit host context (core/host.py): the headless host from the command line or the
environment, ComfyUI's from its folder_paths, and the runner knowing the pack only through the
hooks the pack registers."""

import json
import re
import sys
import types
from pathlib import Path

import pytest

import loralab
from loralab.core import checkpoints, datasets, host, runtime
from loralab.core.scores import ScoreTable
from loralab.headless.cli import main
from loralab.headless.hooks import hooks

ROOT = Path(loralab.__file__).parent


def test_headless_host_defaults_from_the_environment_and_the_command_line_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("LORALAB_MODELS_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("LORALAB_INPUT_DIR", str(tmp_path / "in"))
    monkeypatch.setenv("LORALAB_NO_PROGRESS", "1")
    current = host.current()
    assert isinstance(current, host.HeadlessHost) and current.name == "headless"
    assert checkpoints.model_roots() == [tmp_path / "a", tmp_path / "b"]
    assert datasets.input_roots() == [tmp_path / "in"] and current.show_progress is False
    host.configure(tmp_path / "out", models=(tmp_path / "m",))
    assert runtime.output_directory() == tmp_path / "out" and checkpoints.model_roots() == [tmp_path / "m"]
    assert runtime.write_root("loras") == (tmp_path / "out", ("loras",))
    assert runtime.temp_directory() == tmp_path / "out" / "temp"
    (tmp_path / "m" / "loras" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "loras" / "sub" / "x.safetensors").write_bytes(b"")
    (tmp_path / "m" / "loras" / "notes.txt").write_text("")
    assert checkpoints.available_loras() == {"sub/x.safetensors": tmp_path / "m" / "loras" / "sub" / "x.safetensors"}


def test_the_command_line_activates_its_host(tmp_path, capsys):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "mine.safetensors").write_bytes(b"")
    workflow = json.loads((ROOT / "workflows" / "quickstart.json").read_text())
    workflow["1"]["inputs"]["model"] = "mine.safetensors"
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    assert main(["run", str(tmp_path / "wf.json"), "--check"]) == 2  # ./models has no such file
    assert "mine.safetensors" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "wf.json"), "--check", "--models-dir", str(tmp_path / "models")]) == 0
    assert host.current().models == (tmp_path / "models",)


class FakeFolderPaths(types.ModuleType):
    """ComfyUI's folder_paths, as much of it as the host asks."""

    def __init__(self, root: Path):
        super().__init__("folder_paths")
        self.root, self.models_dir = root, str(root / "models")

    def get_output_directory(self):
        return str(self.root / "output")

    def get_temp_directory(self):
        return str(self.root / "temp")

    def get_input_directory(self):
        return str(self.root / "input")

    def get_folder_paths(self, kind):
        if kind == "clip":
            raise KeyError(kind)
        return [str(self.root / "models" / kind)]

    def get_filename_list(self, kind):
        return ["a.safetensors", "b.ckpt", "c.txt"]

    def get_full_path(self, kind, name):
        return str(self.root / "models" / kind / name)


def test_inside_comfyui_the_host_asks_folder_paths(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", FakeFolderPaths(tmp_path))
    current = host.current()
    assert isinstance(current, host.ComfyUIHost) and runtime.in_comfyui()
    assert runtime.output_directory() == tmp_path / "output"
    assert runtime.write_root("temp") == (tmp_path / "temp", ())
    assert runtime.write_root("loras") == (tmp_path / "models" / "loras", ())
    assert runtime.write_root("checkpoints") == (tmp_path / "output", ("loralab_checkpoints",))
    assert datasets.input_roots() == [tmp_path / "input"]
    assert checkpoints.available_loras() == {"a.safetensors": tmp_path / "models" / "loras" / "a.safetensors"}
    assert current.model_files("checkpoints").keys() == {"a.safetensors", "b.ckpt"}
    assert current.model_folders("clip_vision") == [tmp_path / "models" / "clip_vision"]  # no 'clip' kind: skipped
    assert current.model_folders("metrics") == [tmp_path / "models" / "metrics"]


def test_only_the_host_reads_loralab_environment_variables():
    readers = [p.relative_to(ROOT).as_posix() for folder in ("core", "nodes") for p in (ROOT / folder).rglob("*.py")
               if "LORALAB_" in p.read_text()]
    assert readers == ["core/host.py"]


def test_the_runner_imports_no_pack_type_and_reads_tables_through_the_hook():
    # The runner proper (graph, execution, caching, sweeps, engines); `loralab report` and the CLI's
    # pack commands (build-world) are the pack's own commands.
    for name in ("execute", "graph", "diskcache", "sweep", "sweep_cli", "results", "engines", "errors", "convert",
                 "ui", "catalog"):
        text = (ROOT / "headless" / f"{name}.py").read_text()
        assert not re.search(r"ScoreTable|LL_SCORES|DISK_CACHE|from \.\.core\.scores|from \.\.nodes", text), name
    table = ScoreTable(("model",), [{"model": "m", "ssim": 0.5}])
    assert hooks().tables(table) == (["model"], [{"model": "m", "ssim": 0.5}])
    assert hooks().tables("not a table") is None
    assert hooks().decode(hooks().encode(table)) == table
    from loralab.nodes.report import LoRALabSummarize
    from loralab.nodes.sample import LoRALabGenerate

    assert hooks().disk_cacheable(LoRALabGenerate) and not hooks().disk_cacheable(LoRALabSummarize)


def test_unknown_hooks_are_refused():
    from loralab.headless.hooks import register

    with pytest.raises(TypeError, match="unknown runner hooks: colour"):
        register(colour=lambda: None)
