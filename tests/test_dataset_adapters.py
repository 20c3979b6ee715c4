"""Dataset adapters (core/datasets.py, nodes/data.py): loss masks that follow their images through
resize, crop, flip and buckets; COCO and Flickr caption files; the train/test split and the
aspect-ratio filter. Every file read stays inside the input folder, symbolic links included."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loralab.core import datasets
from loralab.core.datasets import Dataset
from loralab.core.host import configure as configure_host
from loralab.nodes.data import (
    LoRALabAspectFilter,
    LoRALabCOCOCaptions,
    LoRALabFlickrCaptions,
    LoRALabImageFolder,
    LoRALabSplitDataset,
)


@pytest.fixture
def inputs(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    configure_host(inputs=(root,))
    return root


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "secret.png")
    (folder / "secret.json").write_text(json.dumps({"images": [], "annotations": []}))
    return folder


def region_image(size, box, rgba=False):
    """An image whose red channel is 255 inside ``box`` (left, top, right, bottom), 0 outside, with
    gradients in green and blue so crops and flips are visible; and the mask of the same box."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([mask, (x * 255 // width).astype(np.uint8), (y * 255 // height).astype(np.uint8)], -1)
    if rgba:
        pixels = np.concatenate([pixels, mask[..., None]], -1)
    return Image.fromarray(pixels, "RGBA" if rgba else "RGB"), Image.fromarray(mask, "L")


# --- masks ---------------------------------------------------------------------------------------------------------

def test_a_mask_lands_where_its_image_pixels_land_centre_crop_and_flip(inputs):
    folder = inputs / "masked"
    folder.mkdir()
    image, mask = region_image((64, 96), (10, 20, 30, 40))  # 64 wide, 96 tall: the centre crop drops 16 rows on top
    image.save(folder / "a.png")
    mask.save(folder / "a_mask.png")
    dataset, preview = LoRALabImageFolder().load("masked", 64, "center", True, "a photo", masks="mask_file")
    assert len(dataset.captions) == 2 and dataset.files == ["a.png", "a.png (flipped)"]  # the mask is no image
    expected = torch.zeros(64, 64)
    expected[20 - 16:40 - 16, 10:30] = 1
    assert torch.equal(dataset.masks[0], expected)
    assert torch.equal(dataset.masks[1], expected.flip(1))
    assert torch.equal(dataset.masks, dataset.images[..., 0])  # the red channel is the same region
    assert preview.shape == (2, 64, 64, 3) and dataset.aspects == [64 / 96] * 2


@pytest.mark.parametrize("buckets", [False, True])
def test_masks_follow_resize_random_crop_flip_and_buckets(inputs, buckets):
    folder = inputs / "mixed"
    folder.mkdir()
    shapes = {"wide": ((150, 70), (30, 10, 90, 50)), "tall": ((50, 130), (5, 60, 40, 120)),
              "square": ((90, 90), (0, 0, 45, 45))}
    for name, (size, box) in shapes.items():
        image, mask = region_image(size, box)
        image.save(folder / f"{name}.png")
        mask.save(folder / (f"{name}_mask.png" if name != "tall" else f"{name}-masklabel.png"))  # both conventions
    dataset, _ = LoRALabImageFolder().load("mixed", 64, "random", True, "x", seed=5, buckets=buckets,
                                           masks="mask_file")
    assert dataset.files == ["square.png", "tall.png", "wide.png"] + [f"{n}.png (flipped)" for n in
                                                                     ("square", "tall", "wide")]
    assert len(dataset.masks) == 6
    for image, mask in zip(dataset.images, dataset.masks, strict=True):
        assert mask.shape == image.shape[:2]
        assert torch.equal(mask, image[..., 0])  # the same resampling, the same crop box, the same mirror
        assert 0 < mask.mean() < 1
    for k in range(3):
        assert torch.equal(dataset.masks[k + 3], dataset.masks[k].flip(1))
    if buckets:
        assert isinstance(dataset.masks, list) and dataset.images[2].shape[:2] == (40, 88)  # wide: a wide bucket
        assert dataset.aspects[:3] == [1.0, 50 / 130, 150 / 70]
    else:
        assert dataset.masks.shape == (6, 64, 64)


def test_alpha_masks_and_images_without_alpha(inputs):
    folder = inputs / "alpha"
    folder.mkdir()
    image, _ = region_image((80, 64), (8, 8, 40, 30), rgba=True)
    image.save(folder / "cut.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / "plain.jpg")
    dataset, _ = LoRALabImageFolder().load("alpha", 64, "random", False, "x", seed=1, masks="alpha")
    assert dataset.files == ["cut.png", "plain.jpg"]
    assert torch.equal(dataset.masks[0], dataset.images[0][..., 0]) and 0 < dataset.masks[0].mean() < 1
    assert torch.equal(dataset.masks[1], torch.ones(64, 64))  # no alpha channel: trained everywhere
    unmasked, _ = LoRALabImageFolder().load("alpha", 64, "random", False, "x", seed=1)
    assert unmasked.masks is None and torch.equal(unmasked.images, dataset.images)


def test_mask_files_are_never_images_and_a_missing_one_is_named(inputs):
    folder = inputs / "set"
    folder.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / f"{stem}.jpg")
    Image.new("L", (32, 32), 255).save(folder / "a_mask.png")
    Image.new("L", (32, 32), 0).save(folder / "lonely_mask.png")  # no image 'lonely': it is an image itself
    dataset, _ = LoRALabImageFolder().load("set", 32, "center", False, "x")
    assert dataset.files == ["a.jpg", "b.jpg", "lonely_mask.png"] and dataset.masks is None
    (folder / "lonely_mask.png").unlink()
    with pytest.raises(ValueError, match=r"LoRA Lab: Image Folder: image '.*b\.jpg' has no mask file: expected "
                                         r"'b_mask\.png' or 'b-masklabel\.png'"):
        LoRALabImageFolder().load("set", 32, "center", False, "x", masks="mask_file")
    Image.new("L", (16, 32), 0).save(folder / "b-masklabel.png")
    with pytest.raises(ValueError, match=r"b-masklabel\.png' is 16x32 pixels but its image is 32x32"):
        LoRALabImageFolder().load("set", 32, "center", False, "x", masks="mask_file")
    Image.new("L", (32, 32), 0).save(folder / "b-masklabel.png")
    dataset, _ = LoRALabImageFolder().load("set", 32, "center", False, "x", masks="mask_file")
    assert dataset.masks.shape == (2, 32, 32) and dataset.masks[0].min() == 1 and dataset.masks[1].max() == 0


def test_a_symlinked_image_or_mask_pointing_outside_is_refused(inputs, outside):
    folder = inputs / "links"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    (folder / "a_mask.png").symlink_to(outside / "secret.png")
    with pytest.raises(ValueError, match="a_mask.png' leads outside the input folder"):
        LoRALabImageFolder().load("links", 16, "center", False, "x", masks="mask_file")
    (folder / "b.png").symlink_to(outside / "secret.png")
    with pytest.raises(ValueError, match="b.png' leads outside the input folder"):
        LoRALabImageFolder().load("links", 16, "center", False, "x")
    (folder / "b.png").unlink()
    (folder / "b.png").symlink_to(folder / "a.png")  # a link that stays inside is fine
    assert LoRALabImageFolder().load("links", 16, "center", False, "x")[0].files == ["a.png", "b.png"]


# --- COCO ----------------------------------------------------------------------------------------------------------

def coco_set(inputs, images=("0.jpg", "1.jpg", "2.jpg"), annotations=None, sizes=None):
    folder = inputs / "coco" / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(images):
        Image.new("RGB", (sizes or {}).get(name, (48, 32)), (40 * k, 50, 60)).save(folder / name)
    if annotations is None:
        annotations = [{"image_id": 11, "id": 1, "caption": "a red bus "},
                       {"image_id": 12, "id": 2, "caption": "two cats\n on a sofa"},
                       {"image_id": 11, "id": 3, "caption": "a bus in the street"}]
    data = {"info": {}, "images": [{"id": 10 + k, "file_name": n, "height": 32, "width": 48}
                                   for k, n in enumerate(images)], "annotations": annotations}
    (inputs / "coco" / "captions.json").write_text(json.dumps(data))
    return folder


def test_coco_captions_first_all_random_and_max_images(inputs):
    coco_set(inputs)  # image 10 ('0.jpg') has no caption: left out
    node = LoRALabCOCOCaptions()
    dataset, preview = node.load("coco/captions.json", "coco/val", 32, "center", False)
    assert dataset.captions == ["a red bus", "two cats on a sofa"] and dataset.files == ["1.jpg", "2.jpg"]
    assert preview.shape == (2, 32, 32, 3) and dataset.aspects == [1.5, 1.5] and dataset.masks is None
    everything, _ = node.load("coco/captions.json", "coco/val", 32, "center", True, caption="all")
    assert everything.captions == ["a red bus", "a bus in the street", "two cats on a sofa"] * 2
    assert everything.files[:3] == ["1.jpg", "1.jpg", "2.jpg"] and everything.images.shape == (6, 32, 32, 3)
    assert torch.equal(everything.images[0], everything.images[1])  # one image, two captions
    picked = {node.load("coco/captions.json", "coco/val", 32, "center", False, caption="random", seed=s)[0]
              .captions[0] for s in range(12)}
    assert picked == {"a red bus", "a bus in the street"}
    again = [node.load("coco/captions.json", "coco/val", 32, "center", False, caption="random", seed=7)[0].captions
             for _ in range(2)]
    assert again[0] == again[1]
    first, _ = node.load("coco/captions.json", "coco/val", 32, "center", False, caption="all", max_images=1)
    assert first.captions == ["a red bus", "a bus in the street"]


def test_coco_missing_images_error_or_skip(inputs):
    folder = coco_set(inputs)
    (folder / "1.jpg").unlink()  # id 11
    node = LoRALabCOCOCaptions()
    with pytest.raises(ValueError, match=r"LoRA Lab: COCO Captions: image '1.jpg' \(.*captions.json images\[1\]\) "
                                         r"is not in"):
        node.load("coco/captions.json", "coco/val", 32, "center", False)
    dataset, _ = node.load("coco/captions.json", "coco/val", 32, "center", False, missing_images="skip")
    assert dataset.files == ["2.jpg"]


@pytest.mark.parametrize("content,message", [
    ('{"images": [], \n "annotations": [,]}', r"is not JSON: line 2, column"),
    ('[1, 2]', r"is not a COCO captions file"),
    ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] needs an 'id' and a 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], "annotations": []},
     r"images\[1\] repeats id 1"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "caption": " "}]},
     r"annotations\[0\] needs a non-empty 'caption'"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "caption": "x"},
                                                                {"image_id": [2], "caption": "y"}]},
     r"annotations\[1\] names image_id \[2\], which is not in 'images'"),
])
def test_malformed_coco_files_name_file_and_place(inputs, content, message):
    coco_set(inputs)
    (inputs / "coco" / "captions.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=r"LoRA Lab: COCO Captions: '.*captions\.json'.*" + message):
        LoRALabCOCOCaptions().load("coco/captions.json", "coco/val", 32, "center", False)


def test_coco_paths_stay_inside_the_input_folder(inputs, outside):
    node = LoRALabCOCOCaptions()
    for hostile in ("../outside/x.png", "/etc/passwd", "a/../../b.png", "C:/Windows/x.png", 7):
        coco_set(inputs, annotations=[{"image_id": 10, "caption": "x"}])
        data = json.loads((inputs / "coco" / "captions.json").read_text())
        data["images"][0]["file_name"] = hostile
        (inputs / "coco" / "captions.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match="COCO Captions: .*(must be a relative path inside the image folder|"
                                             "needs an 'id' and a 'file_name')"):
            node.load("coco/captions.json", "coco/val", 32, "center", False)
    coco_set(inputs, annotations=[{"image_id": 10, "caption": "x"}])
    for annotations, folder, bad in (("../outside/secret.json", "coco/val", "annotations"),
                                     (str(Path("/") / "etc" / "passwd"), "coco/val", "annotations"),
                                     ("coco/captions.json", "../outside", "image_folder")):
        with pytest.raises(ValueError, match=f"COCO Captions: input '{bad}':"):
            node.load(annotations, folder, 32, "center", False)
    (inputs / "linked.json").symlink_to(outside / "secret.json")
    (inputs / "linked_folder").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="input 'annotations': 'linked.json' was not found in the input folder"):
        node.load("linked.json", "coco/val", 32, "center", False)
    with pytest.raises(ValueError, match="input 'image_folder': 'linked_folder' was not found in the input folder"):
        node.load("coco/captions.json", "linked_folder", 32, "center", False)
    (inputs / "coco" / "val" / "1.jpg").unlink()
    (inputs / "coco" / "val" / "1.jpg").symlink_to(outside / "secret.png")
    data = json.loads((inputs / "coco" / "captions.json").read_text())
    data["annotations"] = [{"image_id": 11, "caption": "x"}]
    (inputs / "coco" / "captions.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="1.jpg' leads outside the input folder"):
        node.load("coco/captions.json", "coco/val", 32, "center", False)


def test_coco_buckets_record_each_source_aspect(inputs):
    coco_set(inputs, sizes={"1.jpg": (128, 64), "2.jpg": (40, 80)})
    dataset, preview = LoRALabCOCOCaptions().load("coco/captions.json", "coco/val", 64, "center", False,
                                                  buckets=True)
    assert [tuple(i.shape[:2]) for i in dataset.images] == [(40, 88), (88, 40)]
    assert dataset.aspects == [2.0, 0.5] and preview.shape == (2, 88, 88, 3)


# --- Flickr --------------------------------------------------------------------------------------------------------

FLICKR_NAMES = ("1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg")
TOKEN = ("1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs .\n"
         "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
         "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting\n")
PIPE = ("image_name| comment_number| comment\n"
        "1000268201_693b08cb0e.jpg| 0| A child in a pink dress is climbing up a set of stairs .\n"
        "1000268201_693b08cb0e.jpg| 1| A girl going into a wooden building .\n"
        "1001773457_577c3a7d70.jpg| 4   A black dog and a spotted dog are fighting\n")  # the published file's row
CSV = ("image,caption\n"
       "1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs .\n"
       '1000268201_693b08cb0e.jpg,"A girl going into a wooden building, slowly ."\n'
       "1001773457_577c3a7d70.jpg,A black dog and a spotted dog are fighting\n")


def flickr_set(inputs, text, name="captions.txt"):
    folder = inputs / "flickr" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(FLICKR_NAMES):
        Image.new("RGB", (50, 40), (90 * k, 20, 20)).save(folder / image)
    (inputs / "flickr" / name).write_text(text)


@pytest.mark.parametrize("text", [TOKEN, PIPE, CSV], ids=["token", "results_csv", "image_caption_csv"])
def test_flickr_forms_are_detected_by_content(inputs, text):
    flickr_set(inputs, text)
    node = LoRALabFlickrCaptions()
    dataset, preview = node.load("flickr/captions.txt", "flickr/images", 32, "center", False)
    assert dataset.files == list(FLICKR_NAMES) and preview.shape == (2, 32, 32, 3)
    assert dataset.captions == ["A child in a pink dress is climbing up a set of stairs .",
                                "A black dog and a spotted dog are fighting"]
    everything, _ = node.load("flickr/captions.txt", "flickr/images", 32, "center", False, caption="all")
    second = "A girl going into a wooden building" + (", slowly ." if text is CSV else " .")
    assert everything.captions[1] == second and everything.files == [FLICKR_NAMES[0]] * 2 + [FLICKR_NAMES[1]]
    one, _ = node.load("flickr/captions.txt", "flickr/images", 32, "center", False, max_images=1)
    assert one.files == [FLICKR_NAMES[0]]


@pytest.mark.parametrize("text,message", [
    (TOKEN + "1001773457_577c3a7d70.jpg A dog\n", r"line 4 is not '<image>#<n><TAB><caption>'"),
    (TOKEN.replace("#1\tA girl going into a wooden building .", "#1\t  "), r"line 2 has an empty caption"),
    (PIPE + "1001773457_577c3a7d70.jpg\n", r"line 5 is not 'image_name\| comment_number\| comment'"),
    (CSV + "a.jpg,b,c\n", r"line 5 is not 'image,caption'"),
    ("just some words\n", r"is not a Flickr caption file"),
    ("../x.jpg#0\tescape\n", r"line 1: image name '\.\./x\.jpg' must be a relative path inside the image folder"),
])
def test_malformed_flickr_files_name_file_and_line(inputs, text, message):
    flickr_set(inputs, text)
    with pytest.raises(ValueError, match=r"LoRA Lab: Flickr Captions: '?.*captions\.txt'?:? .*" + message):
        LoRALabFlickrCaptions().load("flickr/captions.txt", "flickr/images", 32, "center", False)


def test_flickr_refuses_hostile_paths(inputs, outside):
    flickr_set(inputs, TOKEN)
    node = LoRALabFlickrCaptions()
    with pytest.raises(ValueError, match="input 'captions_file': '../outside/secret.json' must be a relative path"):
        node.load("../outside/secret.json", "flickr/images", 32, "center", False)
    with pytest.raises(ValueError, match="input 'image_folder': '/tmp' must be a relative path"):
        node.load("flickr/captions.txt", "/tmp", 32, "center", False)


# --- split and filter ----------------------------------------------------------------------------------------------

def labelled(n, shape=(8, 8), buckets=False):
    """Example i: image value i/n, mask value (i+1)/(n+1), caption c<i>, weight i, aspect i+1."""
    images = [torch.full((*shape, 3), i / n) for i in range(n)]
    masks = [torch.full(shape, (i + 1) / (n + 1)) for i in range(n)]
    return Dataset(images if buckets else torch.stack(images), [f"c{i}" for i in range(n)],
                   [f"f{i}" for i in range(n)], [float(i) for i in range(n)],
                   masks=masks if buckets else torch.stack(masks), aspects=[float(i + 1) for i in range(n)])


def check_aligned(part, n):
    for k, caption in enumerate(part.captions):
        i = int(caption[1:])
        assert part.files[k] == f"f{i}" and part.weights[k] == i and part.aspects[k] == i + 1
        assert torch.all(part.images[k] == i / n) and torch.all(part.masks[k] == (i + 1) / (n + 1))


@pytest.mark.parametrize("buckets", [False, True])
def test_split_is_deterministic_disjoint_complete_and_aligned(buckets):
    n = 20
    data = labelled(n, buckets=buckets)
    node = LoRALabSplitDataset()
    train, test, test_images = node.split(data, 0.25, seed=3)
    again_train, again_test, _ = node.split(data, 0.25, seed=3)
    assert again_train.captions == train.captions and again_test.captions == test.captions
    assert len(test.captions) == 5 and len(train.captions) == 15
    assert set(train.files).isdisjoint(test.files) and set(train.files) | set(test.files) == set(data.files)
    check_aligned(train, n)
    check_aligned(test, n)
    assert test_images.shape == (5, 8, 8, 3)
    assert train.captions == sorted(train.captions, key=lambda c: int(c[1:]))  # source order kept on each side
    assert node.split(data, 0.25, seed=4)[1].captions != test.captions
    assert data.captions == [f"c{i}" for i in range(n)]  # the input is not changed


def test_split_keeps_mirrored_copies_and_captions_of_one_image_together(inputs):
    coco_set(inputs, images=[f"{k}.jpg" for k in range(10)],
             annotations=[{"image_id": 10 + k, "caption": f"image {k} caption {j}"} for k in range(10) for j in
                          range(2)])
    data, _ = LoRALabCOCOCaptions().load("coco/captions.json", "coco/val", 32, "center", True, caption="all")
    assert len(data.captions) == 40
    train, test, _ = LoRALabSplitDataset().split(data, 0.3, seed=1)
    held = {f.removesuffix(" (flipped)") for f in test.files}
    assert len(held) == 3 and len(test.captions) == 12 and len(train.captions) == 28
    assert held.isdisjoint(f.removesuffix(" (flipped)") for f in train.files)


def test_split_refuses_an_empty_side():
    with pytest.raises(ValueError, match=r"LoRA Lab: Train/Test Split: input 'test_fraction': 0.1 of 3 source images "
                                         r"puts 0 in the test set and 3 in the training set"):
        LoRALabSplitDataset().split(labelled(3), 0.1)
    with pytest.raises(ValueError, match=r"0.9 of 3 source images puts 3 in the test set and 0"):
        LoRALabSplitDataset().split(labelled(3), 0.9)


def test_aspect_filter_uses_the_source_aspect_before_cropping(inputs):
    folder = inputs / "shapes"
    folder.mkdir()
    for name, size in {"wide": (128, 64), "tall": (40, 80), "square": (64, 64), "panorama": (256, 64)}.items():
        Image.new("RGB", size, (10, 10, 10)).save(folder / f"{name}.png")
    data, _ = LoRALabImageFolder().load("shapes", 32, "center", True, "x")
    assert data.images.shape[1:] == (32, 32, 3)  # all cropped square: only the recorded aspect tells them apart
    kept, preview = LoRALabAspectFilter().filter(data, 0.5, 2.0)
    assert kept.files == ["square.png", "tall.png", "wide.png", "square.png (flipped)", "tall.png (flipped)",
                          "wide.png (flipped)"] and preview.shape == (6, 32, 32, 3)
    assert LoRALabAspectFilter().filter(data, 0.9, 1.1)[0].files == ["square.png", "square.png (flipped)"]
    with pytest.raises(ValueError, match=r"LoRA Lab: Aspect Ratio Filter: no example has width/height in "
                                         r"\[5.0, 6.0\]: the dataset's 8 examples range from 0.5 to 4"):
        LoRALabAspectFilter().filter(data, 5.0, 6.0)
    with pytest.raises(ValueError, match="'min_aspect' 2.0 and 'max_aspect' 1.0"):
        LoRALabAspectFilter().filter(data, 2.0, 1.0)


def test_aspect_filter_without_recorded_aspects_reads_the_tensors():
    images = [torch.zeros(8, 16, 3), torch.zeros(16, 8, 3), torch.zeros(8, 8, 3)]
    data = Dataset(images, ["a", "b", "c"], ["a", "b", "c"])
    kept, preview = LoRALabAspectFilter().filter(data, 1.5, 3.0)
    assert kept.captions == ["a"] and kept.weights == [] and kept.masks is None and preview.shape == (1, 8, 16, 3)
    assert datasets.example_aspects(data) == [2.0, 0.5, 1.0]
