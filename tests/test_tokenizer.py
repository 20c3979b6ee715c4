"""The shipped CLIP tokenizer equals Stable Diffusion's."""

from pathlib import Path

from transformers import CLIPTokenizer

import loralab

CLIP_DIR = Path(loralab.__file__).parent / "models" / "tokenizers" / "clip"


def test_clip_tokenizer_gives_sd_ids_for_a_photo_of_a_cat():
    tok = CLIPTokenizer.from_pretrained(CLIP_DIR, model_max_length=77)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.pad_token_id == 49407


def test_embedded_model_tokenizer_is_the_shipped_clip_tokenizer():
    tiny = Path(loralab.__file__).parent / "models" / "tiny-sd" / "tokenizer"
    for name in ("vocab.json", "merges.txt"):
        assert (tiny / name).read_bytes() == (CLIP_DIR / name).read_bytes()
