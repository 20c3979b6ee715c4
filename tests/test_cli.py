"""The command line's conveniences: --version, the node catalogue, shipped workflows by name, the
disk cache's key."""

import json
import shutil
from pathlib import Path

import pytest

import loralab
from loralab.headless import diskcache
from loralab.headless.catalog import describe
from loralab.headless.cli import main

SHIPPED = Path(loralab.__file__).parent / "workflows"


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"loralab {loralab.__version__}"


def test_nodes_lists_the_choices_of_combo_inputs(capsys):
    assert main(["nodes"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "in  sampler_name:" in x)
    assert "COMBO" in line and "euler" in line and "dpmpp_2m" in line


def test_long_combo_lists_are_truncated_with_their_length():
    class Many:
        CATEGORY = "test"
        RETURN_TYPES = ()

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"pick": ([f"choice{i}" for i in range(100)], {"default": "choice0"})}}

    line = next(x for x in describe({"Many": Many}, {}).splitlines() if "pick" in x)
    assert "choice0" in line and "choice99" not in line and "100 choices" in line and len(line) < 200


def test_a_bare_name_runs_a_shipped_workflow_or_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "quickstart", "--check"]) == 0
    assert main(["sweep", "sampler_steps", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "18 runs, 0 done"
    # A file of that name in the working folder wins over the shipped one.
    (tmp_path / "quickstart").write_text("{}")
    assert main(["run", "quickstart", "--check"]) == 2
    assert "no outputs" in capsys.readouterr().err.lower()
    assert main(["run", "no_such_workflow", "--check"]) == 2
    err = capsys.readouterr().err
    assert "no_such_workflow" in err and "quickstart" in err  # names what is shipped


def test_workflows_lists_every_shipped_workflow_and_sweep_with_a_description(capsys):
    assert main(["workflows"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {p.name.removesuffix(".ui.json").removesuffix(".json").removesuffix(".toml")
             for p in SHIPPED.iterdir() if p.suffix in (".json", ".toml")}
    listed = {line.split()[0] for line in lines if line.strip() and not line.startswith(" ")}
    assert names <= listed
    toml_line = next(line for line in lines if line.startswith("sampler_steps"))
    assert "Sweep example" in toml_line


def test_a_workflow_description_is_the_first_line_of_its_note(tmp_path):
    from loralab.headless.shipped import description

    ui = {"nodes": [{"id": 1, "type": "LoRALabPrompts", "widgets_values": ["x"]},
                    {"id": 2, "type": "MarkdownNote", "widgets_values": ["\n# Train a style LoRA\nmore"]}],
          "links": []}
    (tmp_path / "a.ui.json").write_text(json.dumps(ui))
    assert description(tmp_path / "a.ui.json") == "Train a style LoRA"
    (tmp_path / "b.toml").write_text('# A grid of samplers\nworkflow = "a.json"\n')
    assert description(tmp_path / "b.toml") == "A grid of samplers"


@pytest.fixture
def fresh_namespace(monkeypatch):
    """The namespace is computed once per process: recompute it around a test that patches its inputs."""
    diskcache.cache_namespace.cache_clear()
    yield monkeypatch
    diskcache.cache_namespace.cache_clear()


def test_the_disk_cache_key_changes_with_the_code_and_the_dependencies(tmp_path, fresh_namespace):
    monkeypatch = fresh_namespace
    copy = tmp_path / "pkg"
    for path in diskcache.package_sources(diskcache.PACKAGE):
        target = copy / path.relative_to(diskcache.PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    assert not list(copy.glob("tests/*")) and (copy / "headless" / "diskcache.py").is_file()
    before = diskcache.code_digest(copy)
    assert diskcache.code_digest(copy) == before == diskcache.code_digest(diskcache.PACKAGE)
    with open(copy / "core" / "images.py", "a") as f:
        f.write("\n# a fix\n")
    assert diskcache.code_digest(copy) != before

    # End to end: a new key leaves the old entries unused, so nothing stale is served.
    from test_sweep import experiment, records

    exp = experiment(tmp_path, '"Generate A.seed" = [0]')
    cache = tmp_path / "cache"
    sweep = ["sweep", str(exp), "-q", "--cache-dir", str(cache), "-o"]
    assert main([*sweep, str(tmp_path / "a")]) == 0
    assert main([*sweep, str(tmp_path / "b")]) == 0
    monkeypatch.setattr(diskcache, "dependency_versions", lambda: {"torch": "0.0-other"})
    diskcache.cache_namespace.cache_clear()
    assert main([*sweep, str(tmp_path / "c")]) == 0
    monkeypatch.setattr(diskcache, "PACKAGE", copy)
    diskcache.cache_namespace.cache_clear()
    assert main([*sweep, str(tmp_path / "d")]) == 0
    executed = ["5" in records(tmp_path / name)[0]["executed"] for name in "abcd"]
    assert executed == [True, False, True, True]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3


def test_build_world_offers_exactly_the_recipes_of_models_build_world(monkeypatch, capsys):
    import runpy

    from loralab.core.checkpoints import MODELS_DIR
    from loralab.headless.cli import WORLD_RECIPES

    recipes = runpy.run_path(str(MODELS_DIR / "build_world.py"))["RECIPES"]
    assert tuple(recipes) == WORLD_RECIPES
    with pytest.raises(SystemExit) as info:
        main(["build-world", "everything"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    ran = []  # the command runs the recipe file as a script, with the recipe's name as its argument
    monkeypatch.setattr(runpy, "run_path", lambda path, run_name: ran.append((Path(path).name, run_name)))
    assert main(["build-world", "examples"]) == 0
    assert ran == [("build_world.py", "__main__")]
