"""The procedural world: deterministic scenes whose pictures show what their captions say."""

import numpy as np
import pytest
from scipy import ndimage

from loralab.core.world import (
    CATEGORIES,
    STYLES,
    VARIANTS,
    caption,
    concept_class_prompt,
    parse_caption,
    sample_scenes,
    split_of,
    world_dataset,
    world_prompts,
)
from loralab.core.world.render import PASTEL_MIX, render
from loralab.core.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Scene


def foreground(image: np.ndarray, background: str, tol: int = 40) -> np.ndarray:
    return np.abs(image.astype(int) - BACKGROUNDS[background]).sum(-1) > tol


def test_same_seed_gives_identical_scenes_images_and_captions():
    a, b = world_dataset("base", 12, seed=3), world_dataset("base", 12, seed=3)
    assert a.captions == b.captions and bool((a.images == b.images).all())
    c = world_dataset("base", 12, seed=4)
    assert a.captions != c.captions
    assert a.images.shape == (12, 64, 64, 3) and 0 <= a.images.min() and a.images.max() <= 1


def test_vocabulary_is_as_large_as_the_world_promises():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 4 and len(STYLES) >= 4


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "concept"])
def test_captions_parse_back_to_the_scene_attributes(variant):
    for scene in sample_scenes(300, 7, variant=variant, split=None):
        text = caption(scene)
        assert parse_caption(text) == {"shape": scene.shape, "colour": scene.colour, "background": scene.background,
                                       "size": scene.size, "count": scene.count, "position": scene.position,
                                       "style": scene.style}, text
        assert text.endswith(STYLES[variant]) if variant in STYLES else "style" not in text


@pytest.mark.parametrize("text", ["a photo of a cat", "two small red circle on a blue background",
                                  "a small mauve circle on a blue background", "a sks badge with ukj pattern on a "
                                  "grey background", "a large red circle on a blue background, in neon style"])
def test_texts_that_are_not_world_captions_parse_to_none(text):
    assert parse_caption(text) is None


def test_rendered_scenes_show_count_colour_background_and_position():
    for scene in sample_scenes(120, 11, split=None):
        image = render(scene)
        assert tuple(image[0, 0]) == BACKGROUNDS[scene.background] or scene.size == "closeup"
        mask = foreground(image, scene.background)
        labels, n = ndimage.label(mask, np.ones((3, 3)))
        blobs = (np.bincount(labels.ravel())[1:] >= 4).sum()  # not single anti-aliased edge pixels
        assert blobs == scene.count, caption(scene)
        # the shape's own colour is there, exactly, on its interior
        exact = (image == COLOURS[scene.colour]).all(-1)
        assert exact.sum() >= 4 * scene.count, caption(scene)
        if scene.count == 1 and scene.size != "closeup":
            cy, cx = ndimage.center_of_mass(mask)
            ex, ey = POSITIONS[scene.position]
            assert abs(cx / 64 - ex) < 0.12 and abs(cy / 64 - ey) < 0.12, caption(scene)


def test_sizes_are_ordered_by_area():
    areas = {}
    for size in ("small", "medium", "large", "closeup"):
        scene = Scene("circle", "red", "white", size, "center", 1, layout_seed=1)
        areas[size] = foreground(render(scene), "white").sum()
    assert areas["small"] < areas["medium"] < areas["large"] < areas["closeup"]


@pytest.mark.parametrize("shape", ["circle", "square", "hexagon"])
def test_outlined_shapes_are_hollow_and_base_shapes_filled(shape):
    base = render(Scene(shape, "blue", "white", "large", "center", 1, layout_seed=2))
    outlined = render(Scene(shape, "blue", "white", "large", "center", 1, "outlined", layout_seed=2))
    assert tuple(base[32, 32]) == COLOURS["blue"]
    assert tuple(outlined[32, 32]) == BACKGROUNDS["white"]
    assert foreground(outlined, "white").sum() < 0.6 * foreground(base, "white").sum()


def test_styles_change_the_picture_but_not_the_layout():
    base = Scene("square", "red", "grey", "large", "center", 1, layout_seed=5)
    plain = render(base)
    for style in STYLES:
        styled = render(Scene(**{**base.__dict__, "style": style}))
        assert np.abs(styled.astype(int) - plain).mean() > 2, style
    pastel = render(Scene(**{**base.__dict__, "style": "pastel"}))
    want = np.array(COLOURS["red"]) + PASTEL_MIX * (255 - np.array(COLOURS["red"]))
    assert np.abs(pastel[32, 32].astype(float) - want).max() <= 1
    striped = render(Scene(**{**base.__dict__, "style": "striped"}))
    assert len(np.unique(striped[24:40, 24:40].reshape(-1, 3), axis=0)) > 2  # stripes inside the shape


def test_categories_follow_seed_000():
    for scene in sample_scenes(90, 5, split=None):
        if scene.category == "closeup":
            assert scene.size == "closeup" and scene.count == 1
        elif scene.category == "standard":
            assert scene.count == 1 and scene.position == "center" and scene.size in ("medium", "large")
        else:
            assert scene.count > 1 or (scene.size == "small" and scene.position != "center")
    assert {s.category for s in sample_scenes(9, 5, categories=("closeup",))} == {"closeup"}


def test_heldout_prompts_never_appear_in_a_training_set():
    train = set(world_dataset("base", 400, seed=0).captions)
    heldout = {p.text for p in world_prompts(150, seed=1)}
    assert train and heldout and not train & heldout
    assert all(split_of(s) == "heldout" for s in sample_scenes(50, 2, split="heldout"))
    share = np.mean([split_of(s) == "heldout" for s in sample_scenes(2000, 3, split=None)])
    assert 0.1 < share < 0.3


def test_world_prompts_carry_their_category():
    prompts = world_prompts(9, seed=2, categories=CATEGORIES)
    assert [p.category for p in prompts] == list(CATEGORIES) * 3


def test_concept_binds_rare_tokens_to_one_patterned_badge():
    data = world_dataset("concept", 6, seed=0)
    assert all(c.startswith(("a sks badge with ukj pattern", "a close-up of a sks badge")) for c in data.captions)
    assert "sks" not in concept_class_prompt() and "badge" in concept_class_prompt()
    images = (data.images * 255).round().numpy().astype(int)
    for rgb in (COLOURS["orange"], COLOURS["purple"]):  # body and dots on every image
        assert all(((img == rgb).all(-1)).sum() > 3 for img in images)


@pytest.mark.parametrize("kwargs,match", [({"variant": "neon"}, "variant 'neon'"),
                                          ({"categories": ("portrait",)}, "categories"),
                                          ({"categories": ()}, "categories")])
def test_bad_arguments_say_what_is_valid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_scenes(3, 0, **{"categories": CATEGORIES, "variant": "base", **kwargs})


def test_world_nodes_give_a_dataset_and_categorised_prompts():
    from loralab.nodes.world import LoRALabWorldDataset, LoRALabWorldPrompts

    dataset, images = LoRALabWorldDataset().build("striped", 4, 1, 64, standard=True, challenging=False,
                                                  closeup=True)
    assert images.shape == (4, 64, 64, 3) and all(c.endswith("in striped style") for c in dataset.captions)
    prompts, text = LoRALabWorldPrompts().build(4, 0, "heldout", "base", standard=False, challenging=True,
                                                closeup=False)
    assert {p.category for p in prompts} == {"challenging"}
    assert text.splitlines()[0] == f"challenging: {prompts[0].text}"
    with pytest.raises(ValueError, match="World Prompts: inputs standard, challenging, closeup are all off"):
        LoRALabWorldPrompts().build(4, 0, "heldout", "base", standard=False, challenging=False, closeup=False)


# The shipped evaluator (models/world/evaluator.safetensors, built by models/build_world.py).

@pytest.fixture(scope="module")
def evaluator():
    from loralab.core.world.evaluator import load_evaluator

    return load_evaluator()


def heldout_renders(count: int, seed: int, variant: str = "base"):
    from loralab.core.world.evaluator import render_scenes

    scenes = sample_scenes(count, seed, variant=variant, split="heldout")
    return scenes, render_scenes(scenes)


def test_evaluator_reads_held_out_captions_from_their_pictures(evaluator):
    from loralab.core.world.evaluator import adherence

    scenes, images = heldout_renders(150, 31)
    right = adherence(evaluator, images, [caption(s) for s in scenes])["adherence"]
    wrong = adherence(evaluator, images, [caption(s) for s in scenes[1:] + scenes[:1]])["adherence"]
    assert right.mean() > 0.95 and wrong.mean() < 0.5, (right.mean(), wrong.mean())


def test_adherence_columns_and_non_world_captions(evaluator):
    from loralab.core.world.evaluator import CONTENT, adherence

    scenes, images = heldout_renders(2, 32)
    got = adherence(evaluator, images, [caption(scenes[0]), "a photo of a cat"])
    assert set(got) == {"adherence", *CONTENT}
    assert all(torch_isnan(v[1]) for v in got.values())
    asked = [got[n][0] for n in CONTENT if not torch_isnan(got[n][0])]
    assert got["adherence"][0] == pytest.approx(sum(asked) / len(asked))


def torch_isnan(value) -> bool:
    return bool(value != value)


@pytest.mark.parametrize("style", list(STYLES) + ["concept"])
def test_evaluator_tells_each_style_from_the_base_world(evaluator, style):
    from loralab.core.world.evaluator import style_probability

    _, styled = heldout_renders(40, 33, style)
    _, base = heldout_renders(40, 34)
    assert style_probability(evaluator, styled, style).mean() > 0.9
    assert style_probability(evaluator, base, style).mean() < 0.1


def test_missing_evaluator_file_is_named(tmp_path):
    from loralab.core.world.evaluator import load_evaluator

    with pytest.raises(FileNotFoundError, match="nothing.safetensors.*build_world.py evaluator"):
        load_evaluator(tmp_path / "nothing.safetensors")


def test_world_adherence_node_gives_one_row_per_image_with_keys():
    from loralab.core.scores import ScoreTable
    from loralab.nodes.world import LoRALabWorldAdherence, LoRALabWorldStyle

    scenes, images = heldout_renders(3, 35)
    keys = ScoreTable(("model", "seed"), [{"model": "m", "seed": i} for i in range(3)])
    (table,) = LoRALabWorldAdherence().score(images, "\n".join(caption(s) for s in scenes),
                                             "embedded: world-evaluator", keys)
    assert table.keys == ("model", "seed") and [r["seed"] for r in table.rows] == [0, 1, 2]
    assert all(r["world_adherence"] > 0.8 for r in table.rows)
    (styles,) = LoRALabWorldStyle().score(images, "base", "embedded: world-evaluator")
    assert all(r["world_style_base"] > 0.5 for r in styles.rows)
    with pytest.raises(ValueError, match="World Adherence: input 'evaluator'.*missing"):
        LoRALabWorldAdherence().score(images, "x", "/nonexistent/e.safetensors")


def test_domain_fid_is_small_between_world_sets_and_large_for_noise():
    import torch

    from loralab.nodes.score_model import LoRALabFIDKID

    _, world_a = heldout_renders(48, 40)
    _, world_b = heldout_renders(48, 41)
    noise = torch.rand(48, 64, 64, 3, generator=torch.Generator().manual_seed(0))

    def fid(generated):
        (table,) = LoRALabFIDKID().score(generated, world_b, "x", "unused", "2048", 10, 24, 16,
                                         features="world-evaluator")
        row = table.rows[0]
        assert row["feature_dim"] == 256 and "fid" not in row
        return row["fid_world"], row["kid_mean_world"]

    (fid_world, kid_world), (fid_noise, kid_noise) = fid(world_a), fid(noise)
    # KID is unbiased (≈ 0 for two world sets); FID at N = 48 in 256-d carries a large small-N bias
    assert kid_noise > 10 * abs(kid_world) and fid_noise > 2 * fid_world


def test_world_prompts_never_repeat_a_caption():
    """A repeated prompt multiplies per-image joins (Compare); the concept's few captions run out."""
    for variant in ("base", "pastel"):
        texts = [p.text for p in world_prompts(120, seed=9, variant=variant)]
        assert len(set(texts)) == 120
    plain = [caption(s) for s in sample_scenes(120, 9, variant="base", split="heldout")]
    assert len(set(plain)) < 120  # what drawing with replacement gives for the same seed
    with pytest.raises(ValueError, match="distinct concept captions"):
        world_prompts(30, seed=0, variant="concept", split=None)
