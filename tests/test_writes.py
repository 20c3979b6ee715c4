"""Every file the pack writes: numbered without overwriting (even when two saves race), confined to its
folder (symlinks included), path inputs refused at validation, LoRAs where ComfyUI's loaders look."""

import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from loralab.core.lab_lora import LabLoRA
from loralab.core.scores import ScoreTable
from loralab.headless.cli import main
from loralab.nodes.io import LoRALabPreviewImage, LoRALabSaveImage
from loralab.nodes.lora import LoRALabFineTune, LoRALabSaveLoRA, LoRALabTrainLoRA
from loralab.nodes.report import LoRALabImageGrid, LoRALabSaveReport, LoRALabSaveScores

WORKFLOWS = Path(__file__).parent.parent / "workflows"


def tiny_lora() -> LabLoRA:
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    name = "lora_unet_mid_block_attentions_0_proj_in"
    return LabLoRA({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(2.0)}, 2, 2.0, "sd1", "style")


# --- Numbering ------------------------------------------------------------------------------------------

def test_save_lora_with_glob_characters_in_the_name_keeps_every_file(output_dir):
    first = LoRALabSaveLoRA().save(tiny_lora(), "loras/style[v2]")["ui"]["text"][0]
    second = LoRALabSaveLoRA().save(tiny_lora(), "loras/style[v2]")["ui"]["text"][0]
    assert first != second
    assert sorted(p.name for p in (output_dir / "loras").iterdir()) == [
        "style[v2]_00001_.safetensors", "style[v2]_00002_.safetensors"]


def test_two_saves_racing_into_one_folder_lose_no_image(output_dir):
    from loralab.core.images import save_images, to_pil

    batches = [torch.rand(64, 8, 8, 3, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    start = threading.Barrier(2)
    errors = []

    def save(images):
        try:
            start.wait()
            save_images(images, output_dir, "race/img")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = sorted((output_dir / "race").iterdir())
    assert len(files) == 128
    written = {np.asarray(Image.open(f)).tobytes() for f in files}
    expected = {np.asarray(to_pil(img)).tobytes() for batch in batches for img in batch}
    assert written == expected and len(expected) == 128


def test_a_number_taken_after_the_listing_is_skipped_not_overwritten(tmp_path, monkeypatch):
    import loralab.core.files as files

    (tmp_path / "x_00001_.txt").write_text("theirs")
    monkeypatch.setattr(files, "_highest_number", lambda *args: 0)  # listed before another writer claimed 1
    number, paths = files.write_numbered(tmp_path, "x", {"txt": lambda p: files.atomic_write_text(p, "mine"),
                                                         "json": lambda p: files.atomic_write_text(p, "{}")})
    assert number == 2 and [p.name for p in paths] == ["x_00002_.txt", "x_00002_.json"]
    assert (tmp_path / "x_00001_.txt").read_text() == "theirs" and not (tmp_path / "x_00001_.json").exists()


# --- Confinement ----------------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def link(output_dir: Path, name: str, target: Path) -> None:
    (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (output_dir / name).symlink_to(target, target_is_directory=True)


def assert_refused(call, outside: Path):
    with pytest.raises(ValueError, match="symbolic link"):
        call()
    assert list(outside.rglob("*")) == [], "nothing may be written outside the output folder"


def test_preview_refuses_a_symlinked_temp_folder(output_dir, outside):
    link(output_dir, "temp", outside)
    assert_refused(lambda: LoRALabPreviewImage().save(torch.rand(1, 8, 8, 3)), outside)


def test_save_image_refuses_a_symlink_even_one_pointing_back_inside(output_dir):
    (output_dir / "real").mkdir(parents=True)
    link(output_dir, "alias", output_dir / "real")
    with pytest.raises(ValueError, match="LoRALabSaveImage: input 'filename_prefix': .*symbolic link"):
        LoRALabSaveImage().save(torch.rand(1, 8, 8, 3), "alias/img")


def test_save_scores_refuses_a_symlinked_subfolder(output_dir, outside):
    link(output_dir, "study", outside)
    table = ScoreTable(("model",), [{"model": "a", "x": 1.0}])
    assert_refused(lambda: LoRALabSaveScores().save(table, "study/s", "csv+json"), outside)


def test_report_and_grid_refuse_a_symlinked_subfolder(output_dir, outside):
    link(output_dir, "study", outside)
    table = ScoreTable(("model",), [{"model": "a", "x": 1.0}])
    assert_refused(lambda: LoRALabSaveReport().save("r", "study/report", scores_1=table), outside)
    assert_refused(lambda: LoRALabImageGrid().grid(torch.rand(2, 8, 8, 3), "", "", "", "study/grid"), outside)
    with pytest.raises(ValueError, match="LoRA Lab: Image Grid: input 'filename_prefix': .*symbolic link"):
        LoRALabImageGrid().grid(torch.rand(2, 8, 8, 3), "", "", "", "study/grid")
    with pytest.raises(ValueError, match="LoRA Lab: Save Report: input 'filename_prefix': .*symbolic link"):
        LoRALabSaveReport().save("r", "study/report")


def test_save_lora_refuses_a_symlinked_loras_folder(output_dir, outside):
    link(output_dir, "loras", outside)
    assert_refused(lambda: LoRALabSaveLoRA().save(tiny_lora(), "loras/style"), outside)


@pytest.mark.parametrize("linked", ["loralab_checkpoints", "loralab_checkpoints/run"])
def test_train_lora_refuses_a_symlinked_checkpoint_folder_before_training(output_dir, outside, linked):
    link(output_dir, linked, outside)
    # Refused before anything else is looked at: no pipeline, no data needed.
    assert_refused(lambda: LoRALabTrainLoRA().train(None, None, None, None, "run"), outside)
    assert_refused(lambda: LoRALabFineTune().train(None, None, None, "run", False), outside)


def test_a_checkpoint_folder_left_by_a_killed_run_is_cleaned_on_the_next_start(tiny, output_dir, monkeypatch):
    import loralab.core.train as train
    import loralab.core.trainer.state as checkpoints
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy

    run = output_dir / "loralab_checkpoints" / "run"
    (run / "checkpoint-0000004").mkdir(parents=True)  # a finished checkpoint: kept
    data = train.encode_dataset(tiny.pipe, torch.rand(1, 32, 32, 3), ["x"])
    with monkeypatch.context() as killed:  # the process dies while publishing a checkpoint: its clean-up never runs
        def die(*args):
            raise KeyboardInterrupt

        killed.setattr(checkpoints.os, "replace", die)
        killed.setattr(checkpoints.shutil, "rmtree", lambda *args, **kwargs: None)
        with pytest.raises(KeyboardInterrupt):
            train.train_lora(tiny.pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=2), train.TrainSpec(steps=1), run)
    left = sorted(p.name for p in run.iterdir())
    assert len(left) == 2 and left[0].startswith("."), left  # the writer's temporary folder survived the "kill"
    seen = {}

    def fake_training(*args, **kwargs):
        seen["folder"] = next(a for a in (*args, *kwargs.values()) if isinstance(a, Path))
        raise KeyboardInterrupt  # the rest of the node is not under test

    monkeypatch.setattr(train, "train_from_images", fake_training)
    with pytest.raises(KeyboardInterrupt):
        LoRALabTrainLoRA().train(None, None, SimpleNamespace(), None, "run", images=torch.rand(1, 8, 8, 3))
    assert Path(seen["folder"]) == run.resolve()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-0000004"]


def test_checkpoints_get_the_permissions_a_plain_write_gives_and_a_refusal_names_the_node(tiny, output_dir):
    import os

    from loralab.core.files import _UMASK
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec

    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LoRAConfigSpec(rank=2), TrainSpec(steps=1), "perm", images=images)
    folder = output_dir / "loralab_checkpoints" / "perm"
    (checkpoint,) = folder.glob("checkpoint-*")
    assert os.stat(checkpoint).st_mode & 0o777 == 0o777 & ~_UMASK  # others on a shared machine can read it
    for path in (*checkpoint.iterdir(), folder / "latest.json"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~_UMASK, path
    with pytest.raises(ValueError, match="LoRA Lab: Train LoRA: run 'perm': checkpoint folder .* holds a run with"):
        LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LoRAConfigSpec(rank=2), TrainSpec(steps=1, seed=1), "perm",
                                 images=images)


# --- Validation -----------------------------------------------------------------------------------------

PATH_INPUTS = [("9", "filename_prefix"), ("8", "run_name"), ("14", "filename_prefix")]


@pytest.mark.parametrize("node,name", PATH_INPUTS)
@pytest.mark.parametrize("value", ["../x", "/tmp/x", "a/../../x", "C:/x", ""])
def test_path_inputs_that_leave_the_output_folder_are_refused_before_anything_runs(tmp_path, capsys, node,
                                                                                    name, value):
    workflow = json.loads((WORKFLOWS / "train_lora.json").read_text())
    assert workflow[node]["inputs"][name]  # the shipped workflow has this path input as a constant
    workflow[node]["inputs"][name] = value
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"node {node} (" in err and name in err and "must be a relative name" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing ran: no training, no checkpoint, no image"


@pytest.mark.parametrize("cls,name", [(LoRALabSaveImage, "filename_prefix"), (LoRALabSaveScores, "filename_prefix"),
                                      (LoRALabSaveLoRA, "filename_prefix"), (LoRALabTrainLoRA, "run_name"),
                                      (LoRALabFineTune, "run_name"), (LoRALabImageGrid, "filename_prefix"),
                                      (LoRALabSaveReport, "filename_prefix")])
def test_validate_inputs_accepts_names_and_links(cls, name):
    """ComfyUI passes None for a linked input at validation time: it is checked when the node runs."""
    assert cls.VALIDATE_INPUTS(**{name: "study/run-1"}) is True
    assert cls.VALIDATE_INPUTS(**{name: None}) is True
    assert "must be a relative name" in cls.VALIDATE_INPUTS(**{name: "../x"})


# --- Where LoRAs land -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix,relative", [("loras/style", "style_00001_.safetensors"),
                                             ("loralab/lora", "loralab/lora_00001_.safetensors"),
                                             ("loras/a/b", "a/b_00001_.safetensors")])
def test_loras_land_in_the_loras_folder_headless_and_in_comfyui(output_dir, tmp_path, monkeypatch, prefix,
                                                                relative):
    headless = LoRALabSaveLoRA().save(tiny_lora(), prefix)["ui"]["text"][0]
    assert Path(headless) == (output_dir / "loras" / relative).resolve()
    comfy = tmp_path / "ComfyUI"
    folders = {"loras": [str(comfy / "models" / "loras"), str(comfy / "more_loras")]}
    monkeypatch.setitem(sys.modules, "folder_paths", SimpleNamespace(
        get_folder_paths=folders.__getitem__, get_output_directory=lambda: str(comfy / "output"),
        get_temp_directory=lambda: str(comfy / "temp")))
    inside = LoRALabSaveLoRA().save(tiny_lora(), prefix)["ui"]["text"][0]
    assert Path(inside) == (comfy / "models" / "loras" / relative).resolve()
    assert not (comfy / "output").exists()
