"""Scoring images: paired pixel metrics against reference images."""

HISTOGRAM_METHODS = ("correlation", "intersection", "bhattacharyya", "all")
HASHES = ("phash", "dhash", "ahash")  # core.metrics.pixel.HASHES, repeated so declaring imports no torch


def check_image_scores(node: str, image_scores, n: int) -> None:
    if image_scores is not None and len(image_scores) != n:
        raise ValueError(f"{node}: input 'image_scores': got {len(image_scores)} rows for {n} images; "
                         "give the table made with these images (one row per image, in batch order, "
                         "e.g. Generate's 'cost')")


def per_image_table(columns: dict, n: int, image_scores=None):
    """One row per image: ``image_scores``' key columns (or none), the image index, the metrics.
    Keys are ``image_scores.keys`` so the rows join with that table, else ``("image",)``."""
    from ..core.scores import ScoreTable

    if image_scores is None:
        return ScoreTable(("image",), [{"image": i, **{c: float(v[i]) for c, v in columns.items()}}
                                       for i in range(n)])
    rows = [{**{k: row.get(k) for k in image_scores.keys}, "image": i,
             **{c: float(v[i]) for c, v in columns.items()}} for i, row in enumerate(image_scores.rows)]
    return ScoreTable(tuple(image_scores.keys), rows)


class LoRALabPixelMetrics:
    DESCRIPTION = ("Paired pixel metrics, each image against its reference (one reference per image, "
                   "or one for all; same size): MSE, PSNR, SSIM, MS-SSIM, histogram similarity, "
                   "perceptual-hash similarity and colour-distribution similarity (1 - mean per-channel "
                   "Wasserstein-1 distance). One row per image.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image'), the image "
                       "index and the metric columns (mse, psnr_db, ssim, ms_ssim, hist_*, *hash_sim, "
                       "color_w1_sim).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        def toggle(default, tooltip):
            return ("BOOLEAN", {"default": default, "tooltip": tooltip})

        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Images to score."}),
                "reference": ("IMAGE", {"tooltip": "Reference images of the same size: one per image "
                                                   "(image i against reference i) or one for all."}),
                "mse_psnr": toggle(True, "Mean squared error (mse) and PSNR in dB (psnr_db), data range 1; "
                                         "identical images give psnr_db = inf."),
                "ssim": toggle(True, "SSIM (Gaussian window 1.5, data range 1, valid region as skimage); "
                                     "1 = identical. Images of at least 11 px."),
                "ms_ssim": toggle(False, "Multi-scale SSIM (torchmetrics, 5 scales). Needs images of at "
                                         "least 176 px on each side."),
                "histogram": toggle(True, "Per-channel histogram similarity (OpenCV compareHist on "
                                          "normalised histograms, mean over R, G, B)."),
                "histogram_method": (list(HISTOGRAM_METHODS), {"default": "correlation", "tooltip":
                                     "correlation -> hist_correl (-1..1), intersection -> hist_intersect "
                                     "(0..1), bhattacharyya -> hist_bhattacharyya_sim (1 - distance, "
                                     "0..1), all -> the three columns."}),
                "histogram_bins": ("INT", {"default": 64, "min": 2, "max": 256,
                                           "tooltip": "Histogram bins per channel over 0..1."}),
                "perceptual_hash": toggle(True, "Perceptual-hash similarity, 1 - Hamming distance / 64 "
                                                "(imagehash, 8x8 hash of the 8-bit image)."),
                "hash_kind": (list(HASHES), {"default": "phash", "tooltip":
                              "phash (DCT), dhash (gradient) or ahash (average); column <kind>_sim."}),
                "color_distribution": toggle(True, "color_w1_sim: 1 - mean over R, G, B of the "
                                                   "Wasserstein-1 distance between the two images' "
                                                   "channel-value distributions (layout ignored)."),
            },
            "optional": {
                "image_scores": ("LL_SCORES", {"tooltip": "Optional: a table with one row per image "
                                               "(e.g. Generate's 'cost'); its key columns (model, "
                                               "sampler, category, seed, ...) are copied into each row "
                                               "so the scores join with other tables."}),
            },
        }

    def score(self, images, reference, mse_psnr, ssim, ms_ssim, histogram, histogram_method,
              histogram_bins, perceptual_hash, hash_kind, color_distribution, image_scores=None):
        from ..core.metrics import pixel

        node = "LoRA Lab: Pixel Metrics"
        if not (mse_psnr or ssim or ms_ssim or histogram or perceptual_hash or color_distribution):
            raise ValueError(f"{node}: no metric is switched on; turn on at least one of mse_psnr, ssim, "
                             "ms_ssim, histogram, perceptual_hash, color_distribution")
        check_image_scores(node, image_scores, len(images))
        columns = {}
        try:
            pixel.check_pair(images, reference)
            if ms_ssim:  # before the other metrics, so a too-small image fails at once
                pixel.check_ms_ssim_size(images)
            if mse_psnr:
                columns["mse"] = pixel.mse(images, reference)
                columns["psnr_db"] = pixel.psnr_db(images, reference)
            if ssim:
                columns["ssim"] = pixel.ssim(images, reference)
            if ms_ssim:
                columns["ms_ssim"] = pixel.ms_ssim(images, reference)
            if histogram:
                hist = pixel.histogram_similarity(images, reference, histogram_bins)
                wanted = pixel.HISTOGRAM_COLUMNS.values() if histogram_method == "all" else \
                    [pixel.HISTOGRAM_COLUMNS[histogram_method]]
                columns.update({c: hist[c] for c in wanted})
            if perceptual_hash:
                columns[f"{hash_kind}_sim"] = pixel.hash_similarity(images, reference, hash_kind)
            if color_distribution:
                columns["color_w1_sim"] = pixel.color_w1_similarity(images, reference)
        except pixel.PixelMetricError as e:
            raise ValueError(f"{node}: input '{e.input}': {e}") from None
        return (per_image_table(columns, len(images), image_scores),)


NODE_CLASS_MAPPINGS = {"LoRALabPixelMetrics": LoRALabPixelMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabPixelMetrics": "LoRA Lab: Pixel Metrics"}
