"""Save Image: ComfyUI's PNG metadata and file naming; never writes outside the output folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from loralab.nodes.io import LoRALabPreviewImage, LoRALabSaveImage

IMAGES = torch.rand(2, 16, 24, 3)
PROMPT = {"1": {"class_type": "LoRALabPrompts", "inputs": {"text": "a cat"}}}
WORKFLOW = {"nodes": [], "links": [], "version": 0.4}


def test_save_image_embeds_the_api_graph_and_ui_workflow_as_png_text(output_dir):
    result = LoRALabSaveImage().save(IMAGES, "run/img", prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})
    entries = result["ui"]["images"]
    assert entries == [{"filename": f"img_0000{i}_.png", "subfolder": "run", "type": "output"} for i in (1, 2)]
    with Image.open(output_dir / "run" / "img_00001_.png") as img:
        assert img.size == (24, 16)
        assert json.loads(img.text["prompt"]) == PROMPT
        assert json.loads(img.text["workflow"]) == WORKFLOW
        saved = torch.tensor(np.asarray(img), dtype=torch.float32) / 255
    torch.testing.assert_close(saved, IMAGES[0], atol=0.5 / 255 + 1e-6, rtol=0)


def test_numbering_continues_after_existing_files_and_leaves_no_temp_files(output_dir):
    LoRALabSaveImage().save(IMAGES, "x")
    second = LoRALabSaveImage().save(IMAGES[:1], "x")["ui"]["images"]
    assert second[0]["filename"] == "x_00003_.png"
    assert sorted(p.name for p in output_dir.iterdir()) == ["x_00001_.png", "x_00002_.png", "x_00003_.png"]


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/abs/path", "C:/win", "..", "a//b", "", "sub/"])
def test_prefixes_that_could_leave_the_output_folder_are_refused(output_dir, prefix):
    with pytest.raises(ValueError, match="filename_prefix"):
        LoRALabSaveImage().save(IMAGES, prefix)
    assert not output_dir.parent.joinpath("escape_00001_.png").exists()


def test_a_symlinked_subfolder_pointing_outside_is_refused(output_dir, tmp_path):
    output_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (output_dir / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="input 'filename_prefix': .*link is a symbolic link"):
        LoRALabSaveImage().save(IMAGES, "link/img")
    assert not any((tmp_path / "elsewhere").iterdir())


def test_preview_goes_to_the_temp_folder(output_dir):
    entries = LoRALabPreviewImage().save(IMAGES[:1])["ui"]["images"]
    assert entries[0]["type"] == "temp"
    assert (output_dir / "temp" / entries[0]["subfolder"] / entries[0]["filename"]).is_file()


def test_numbering_works_for_prefixes_with_glob_characters(output_dir):
    LoRALabSaveImage().save(IMAGES[:1], "run[1]*")
    assert LoRALabSaveImage().save(IMAGES[:1], "run[1]*")["ui"]["images"][0]["filename"] == "run[1]*_00002_.png"


def test_saved_files_get_ordinary_permissions_not_mkstemps_private_ones(output_dir):
    import os
    import stat

    LoRALabSaveImage().save(IMAGES[:1], "perm")
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((output_dir / "perm_00001_.png").stat().st_mode)
    assert mode == 0o666 & ~umask
