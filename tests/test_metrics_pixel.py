"""Pixel metrics against reference implementations: torchmetrics, skimage, imagehash, scipy, and a
numpy transcription of OpenCV's compareHist formulas."""

import json

import cv2  # opencv-python-headless, a test dependency: the compareHist reference
import imagehash
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import wasserstein_distance
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from torchmetrics.image import (
    MultiScaleStructuralSimilarityIndexMeasure,
    PeakSignalNoiseRatio,
    StructuralSimilarityIndexMeasure,
)

from loralab.core.metrics import pixel
from loralab.core.scores import ScoreTable

SIZES = [(32, 32), (64, 64), (200, 200), (40, 56)]


def pair(n, height, width, seed=0, noise=0.15, quantise=False):
    """Smooth random images (so hashes and SSIM have structure) and noisy references of them."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, height // 8), max(2, width // 8), generator=g)
    images = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    images = (images + 0.1 * torch.rand(n, 3, height, width, generator=g)).clamp(0, 1)
    reference = (images + noise * torch.randn(n, 3, height, width, generator=g)).clamp(0, 1)
    images, reference = images.permute(0, 2, 3, 1).contiguous(), reference.permute(0, 2, 3, 1).contiguous()
    if quantise:  # as decoded 8-bit pictures: values k/255, some exactly on histogram bin edges
        images, reference = (images * 255).round() / 255, (reference * 255).round() / 255
    return images, reference


def nchw(x):
    return x.permute(0, 3, 1, 2)


def as_8bit(image):
    return Image.fromarray((np.clip(image.numpy(), 0, 1) * 255).round().astype(np.uint8))


@pytest.mark.parametrize("height,width", SIZES)
def test_mse_and_psnr_equal_torchmetrics_and_skimage(height, width):
    images, reference = pair(3, height, width)
    ours_mse, ours_psnr = pixel.mse(images, reference), pixel.psnr_db(images, reference)
    tm_psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3))(nchw(images), nchw(reference))
    torch.testing.assert_close(ours_psnr, tm_psnr.double(), atol=1e-4, rtol=0)
    for i in range(3):
        x, y = images[i].double().numpy(), reference[i].double().numpy()
        assert ours_mse[i].item() == pytest.approx(mean_squared_error(y, x), rel=1e-6)
        assert ours_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1), abs=1e-5)


@pytest.mark.parametrize("height,width", SIZES)
def test_ssim_equals_skimage_and_torchmetrics_ssim_map_over_the_valid_region(height, width):
    images, reference = pair(3, height, width)
    ours = pixel.ssim(images, reference)
    for i in range(3):
        expected = structural_similarity(images[i].double().numpy(), reference[i].double().numpy(),
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1, channel_axis=-1)
        assert ours[i].item() == pytest.approx(expected, abs=2e-6)
    module = StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none", return_full_image=True)
    _, tm_map = module(nchw(images), nchw(reference))
    torch.testing.assert_close(ours, tm_map[..., 5:-5, 5:-5].mean(dim=(1, 2, 3)).double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("height,width", [(176, 176), (200, 232)])
def test_ms_ssim_equals_torchmetrics(height, width):
    images, reference = pair(2, height, width, noise=0.05)
    module = MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0, reduction="none")
    expected = module(nchw(images), nchw(reference)).double()
    assert 0.2 < expected.min() < 1
    torch.testing.assert_close(pixel.ms_ssim(images, reference), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", [64, 175])
def test_ms_ssim_on_small_images_says_the_minimum_size(side):
    images, reference = pair(1, side, side)
    with pytest.raises(pixel.PixelMetricError, match=f"at least 176x176 px.*these are {side}x{side} px") as e:
        pixel.ms_ssim(images, reference)
    assert e.value.input == "ms_ssim"


@pytest.mark.parametrize("kind,fn", [("phash", imagehash.phash), ("dhash", imagehash.dhash),
                                     ("ahash", imagehash.average_hash)])
def test_hash_similarity_equals_imagehash_on_the_8bit_picture(kind, fn):
    images, reference = pair(4, 64, 64, noise=0.3)
    ours = pixel.hash_similarity(images, reference, kind)
    expected = [1 - (fn(as_8bit(x)) - fn(as_8bit(y))) / 64 for x, y in zip(images, reference, strict=True)]
    assert ours.tolist() == expected
    assert len(set(expected)) > 1 or expected[0] < 1, "test images must give informative hashes"


def opencv_compare_hist(h1, h2):
    """compareHist's documented formulas (HISTCMP_CORREL, _INTERSECT, _BHATTACHARYYA)."""
    n = len(h1)
    bc = np.sqrt(h1 * h2).sum() / np.sqrt(h1.mean() * h2.mean() * n * n)
    return np.corrcoef(h1, h2)[0, 1], np.minimum(h1, h2).sum(), 1 - np.sqrt(max(1 - bc, 0))


@pytest.mark.parametrize("bins,quantise", [(64, False), (64, True), (10, True), (256, True)])
def test_histogram_similarity_equals_compare_hist_formulas_on_numpy_histograms(bins, quantise):
    images, reference = pair(3, 48, 40, quantise=quantise)
    ours = pixel.histogram_similarity(images, reference, bins)
    for i in range(3):
        per_channel = []
        for c in range(3):
            h1, h2 = (np.histogram(t[i, ..., c].numpy(), bins=bins, range=(0, 1))[0] / (48 * 40)
                      for t in (images, reference))
            per_channel.append(opencv_compare_hist(h1, h2))
            a, b = h1.astype(np.float32), h2.astype(np.float32)
            got = [cv2.compareHist(a, b, m) for m in
                   (cv2.HISTCMP_CORREL, cv2.HISTCMP_INTERSECT, cv2.HISTCMP_BHATTACHARYYA)]
            np.testing.assert_allclose(got, per_channel[-1][:2] + (1 - per_channel[-1][2],), atol=1e-5)
        expected = np.mean(per_channel, axis=0)
        got = [ours[c][i].item() for c in ("hist_correl", "hist_intersect", "hist_bhattacharyya_sim")]
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_color_similarity_is_one_minus_mean_channel_wasserstein_distance():
    images, reference = pair(3, 40, 48, noise=0.3)
    ours = pixel.color_w1_similarity(images, reference)
    for i in range(3):
        w1 = [wasserstein_distance(images[i, ..., c].numpy().ravel(), reference[i, ..., c].numpy().ravel())
              for c in range(3)]
        assert ours[i].item() == pytest.approx(1 - np.mean(w1), abs=1e-6)


def all_metrics(images, reference, bins=64):
    scores = {"mse": pixel.mse(images, reference), "psnr_db": pixel.psnr_db(images, reference),
              "ssim": pixel.ssim(images, reference), "color_w1_sim": pixel.color_w1_similarity(images, reference),
              **pixel.histogram_similarity(images, reference, bins),
              **{f"{k}_sim": pixel.hash_similarity(images, reference, k) for k in pixel.HASHES}}
    if min(images.shape[1:3]) >= pixel.MS_SSIM_MIN_SIZE:
        scores["ms_ssim"] = pixel.ms_ssim(images, reference)
    return scores


def test_identical_images_score_the_extremes():
    images, _ = pair(2, 176, 176)
    scores = all_metrics(images, images)
    assert scores["mse"].tolist() == [0, 0] and scores["psnr_db"].isinf().all()
    for column, values in scores.items():
        if column not in ("mse", "psnr_db"):
            torch.testing.assert_close(values, torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0,
                                       msg=column)


def test_black_against_white_scores_the_other_extremes():
    black, white = torch.zeros(1, 32, 32, 3), torch.ones(1, 32, 32, 3)
    scores = all_metrics(black, white, bins=16)
    assert scores["mse"].item() == 1 and scores["psnr_db"].item() == 0
    assert scores["hist_intersect"].item() == 0 and scores["hist_bhattacharyya_sim"].item() == 0
    assert scores["color_w1_sim"].item() == 0
    assert scores["hist_correl"].item() == pytest.approx(-1 / 15)  # two one-bin spikes in 16 bins


def test_colour_and_histogram_ignore_layout_but_ssim_does_not():
    images, _ = pair(1, 32, 32)
    shuffled = images.flatten(1, 2)[:, torch.randperm(32 * 32)].view(1, 32, 32, 3)
    scores = all_metrics(images, shuffled)
    for column in ("color_w1_sim", "hist_correl", "hist_intersect", "hist_bhattacharyya_sim"):
        assert scores[column].item() == pytest.approx(1, abs=1e-6), column
    assert scores["ssim"].item() < 0.5


def test_one_reference_scores_every_image_as_that_reference_repeated():
    images, reference = pair(3, 176, 176)
    one = all_metrics(images, reference[:1])
    repeated = all_metrics(images, reference[:1].expand(3, -1, -1, -1))
    for column in one:
        torch.testing.assert_close(one[column], repeated[column], atol=1e-6, rtol=0, msg=column)


def test_chunked_scoring_equals_one_batch(monkeypatch):
    images, reference = pair(5, 32, 32)
    whole = {"per_image": all_metrics(images, reference), "one_ref": all_metrics(images, reference[:1])}
    monkeypatch.setattr(pixel, "CHUNK_ELEMENTS", 2 * 32 * 32 * 3)  # chunks of 2, 2, 1 images
    chunked = {"per_image": all_metrics(images, reference), "one_ref": all_metrics(images, reference[:1])}
    for case in whole:
        for column, values in whole[case].items():
            torch.testing.assert_close(chunked[case][column], values, atol=1e-6, rtol=0, msg=column)


def test_mismatched_sizes_and_counts_are_refused_with_both_named():
    images, _ = pair(3, 32, 48)
    with pytest.raises(pixel.PixelMetricError, match="references are 32x32 px but images are 48x32 px"):
        pixel.mse(images, torch.rand(3, 32, 32, 3))
    with pytest.raises(pixel.PixelMetricError, match="got 2 reference images for 3 images"):
        pixel.ssim(images, images[:2])
    with pytest.raises(pixel.PixelMetricError, match="at least 11x11 px"):
        pixel.ssim(torch.rand(1, 10, 64, 3), torch.rand(1, 10, 64, 3))


# --- the node ---------------------------------------------------------------------------------

def run_node(registry, images, reference, **inputs):
    node = registry["LoRALabPixelMetrics"]
    defaults = {name: spec[1]["default"] for name, spec in node.INPUT_TYPES()["required"].items()
                if "default" in spec[1]}
    return node().score(images, reference, **{**defaults, **inputs})[0]


def generate_like_table(n):
    keys = ("model", "sampler", "steps", "cfg", "category", "prompt", "seed")
    rows = [{"model": "tiny", "sampler": "euler", "steps": 4, "cfg": 7.5, "category": f"c{i % 2}",
             "prompt": f"p{i}", "seed": 10 + i, "seconds_per_image": 0.5, "peak_memory_mb": 9.0}
            for i in range(n)]
    return ScoreTable(keys, rows)


def test_node_copies_image_score_keys_into_one_row_per_image(registry):
    images, reference = pair(3, 64, 64)
    table = run_node(registry, images, reference, histogram_method="all", hash_kind="dhash",
                     image_scores=generate_like_table(3))
    assert table.keys == generate_like_table(3).keys and len(table) == 3
    for i, row in enumerate(table.rows):
        assert {k: row[k] for k in table.keys} == {k: generate_like_table(3).rows[i][k] for k in table.keys}
        assert row["image"] == i and "seconds_per_image" not in row
    expected = {"mse": pixel.mse(images, reference), "psnr_db": pixel.psnr_db(images, reference),
                "ssim": pixel.ssim(images, reference), "dhash_sim": pixel.hash_similarity(images, reference, "dhash"),
                "color_w1_sim": pixel.color_w1_similarity(images, reference),
                **pixel.histogram_similarity(images, reference, 64)}
    assert set(table.columns) == {*table.keys, "image", *expected}
    for column, values in expected.items():
        assert [row[column] for row in table.rows] == pytest.approx(values.tolist(), abs=1e-12), column
    json.dumps(table.rows)  # the runner stores rows as JSON


def test_node_without_image_scores_keys_rows_by_image_index_and_respects_toggles(registry):
    images, reference = pair(2, 32, 32)
    table = run_node(registry, images, reference[:1], ssim=False, histogram_method="bhattacharyya",
                     perceptual_hash=False, color_distribution=False)
    assert table.keys == ("image",) and [r["image"] for r in table.rows] == [0, 1]
    assert table.columns == ["image", "mse", "psnr_db", "hist_bhattacharyya_sim"]
    assert all(type(v) in (int, float) for row in table.rows for v in row.values())


@pytest.mark.parametrize("inputs,reference_shape,message", [
    ({}, (1, 64, 48, 3), "input 'reference': references are 48x64 px but images are 64x64 px"),
    ({}, (2, 64, 64, 3), "input 'reference': got 2 reference images for 3 images"),
    ({"ms_ssim": True}, (1, 64, 64, 3), "input 'ms_ssim': MS-SSIM needs images of at least 176x176 px"),
    ({"image_scores": generate_like_table(2)}, (1, 64, 64, 3), "input 'image_scores': got 2 rows for 3 images"),
    ({"mse_psnr": False, "ssim": False, "histogram": False, "perceptual_hash": False,
      "color_distribution": False}, (1, 64, 64, 3), "no metric is switched on"),
])
def test_node_errors_name_the_node_and_the_input(registry, inputs, reference_shape, message):
    images, _ = pair(3, 64, 64)
    with pytest.raises(ValueError, match=f"^LoRA Lab: Pixel Metrics: {message}"):
        run_node(registry, images, torch.rand(reference_shape), **inputs)


def test_node_choice_lists_are_the_metric_modules_own():
    from loralab.nodes import score

    assert score.HASHES == pixel.HASHES
    assert score.HISTOGRAM_METHODS == (*pixel.HISTOGRAM_COLUMNS, "all")
