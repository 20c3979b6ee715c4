"""Scoring images with networks: FID / KID, CLIP score and CLIP similarity, LPIPS. Weights come
from local files only (ComfyUI's models/metrics and models/clip_vision, or <models-dir>/... headless);
a missing file is an error that says which file and where to put it."""

from ..core.metrics.weights import CLIP_DEFAULT, INCEPTION, LPIPS_TRUNKS
from .score import check_image_scores, per_image_table

FEATURE_DIMS = ("2048", "768", "192", "64")  # core.metrics.fid.FEATURE_DIMS, as choices (no torch import here)
LPIPS_NETS = tuple(LPIPS_TRUNKS)

OPTIONAL_PIPELINE = ("LL_PIPELINE", {"tooltip": "Optional: run the network on this pipeline's device. "
                                                "Without it: CUDA when available, else the CPU."})
OPTIONAL_IMAGE_SCORES = ("LL_SCORES", {"tooltip": "Optional: a table with one row per image (e.g. Generate's "
                                                  "'cost'); its key columns (model, sampler, category, seed, "
                                                  "...) are copied into each row so the scores join with other "
                                                  "tables."})
CLIP_MODEL = ("STRING", {"default": CLIP_DEFAULT, "tooltip":
                         "A Hugging Face CLIP folder (config.json, model.safetensors, preprocessor_config.json, "
                         "tokenizer files) in ComfyUI's models/clip_vision (headless: <models-dir>/clip_vision), "
                         "or an absolute path. E.g. all files of huggingface.co/openai/clip-vit-large-patch14 in "
                         "models/clip_vision/clip-vit-large-patch14. Never downloaded. 'embedded: tiny-clip' = "
                         "the tiny random CLIP we ship: the graph runs anywhere, its scores mean nothing."})


def batch_size_input(default: int):
    return ("INT", {"default": default, "min": 1, "max": 1024,
                    "tooltip": "Images per network call: larger is faster until memory runs out."})


def device_of(pipeline):
    import torch

    if pipeline is not None:
        return pipeline.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def input_error(node: str, input_name: str, error: Exception) -> ValueError:
    return ValueError(f"{node}: input '{input_name}': {error}")


class LoRALabFIDKID:
    DESCRIPTION = ("FID and KID of a generated image set against a reference set (torchmetrics, Inception-v3 "
                   "from a local file). One row per set with fid, kid_mean, kid_std and the set sizes: FID is "
                   "biased by N, so compare FIDs at equal N; KID is unbiased and suits small sets.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row: 'set' (and the key columns that are the same for every row of "
                       "'image_scores'), fid, kid_mean, kid_std, kid_subset_size, kid_subsets, n_generated, "
                       "n_reference, feature_dim (fid_rand, kid_mean_rand, kid_std_rand with random weights; "
                       "fid_world, kid_mean_world, kid_std_world with the world evaluator's features).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "The generated images (one set)."}),
                "reference": ("IMAGE", {"tooltip": "Real reference images; any size (resized to 299 px), "
                                                   "any count of at least 2."}),
                "set_label": ("STRING", {"default": "generated", "tooltip": "Names this set in the 'set' "
                                         "column, e.g. the model or LoRA."}),
                "inception_weights": ("STRING", {"default": INCEPTION.name, "tooltip":
                                      f"torch-fidelity's FID Inception file {INCEPTION.name} in ComfyUI's "
                                      "models/metrics (headless: <models-dir>/metrics; torch's hub cache "
                                      "also works), or an absolute path. Never downloaded; from "
                                      f"{INCEPTION.url}. 'random' = the same network with seeded random "
                                      "weights (columns fid_rand, kid_*_rand): the graph runs, the numbers "
                                      "mean nothing."}),
                "feature_dim": (list(FEATURE_DIMS), {"default": "2048", "tooltip":
                                "Inception layer: 2048 (pool3) is standard FID; smaller layers need fewer "
                                "images for a full-rank covariance."}),
                "kid_subsets": ("INT", {"default": 100, "min": 1, "max": 10000,
                                        "tooltip": "KID: random subsets averaged (kid_mean, kid_std)."}),
                "kid_subset_size": ("INT", {"default": 1000, "min": 2, "max": 100000, "tooltip":
                                    "KID: images per subset; capped at the smaller set's size."}),
                "batch_size": batch_size_input(32),
            },
            "optional": {
                "image_scores": ("LL_SCORES", {"tooltip": "Optional: the generated images' table (e.g. "
                                               "Generate's 'cost'); key columns with one value for the whole "
                                               "set (model, sampler, steps, ...) are copied into the row."}),
                "pipeline": OPTIONAL_PIPELINE,
                "features": (["inception", "world-evaluator"], {"default": "inception", "tooltip":
                             "inception = standard FID/KID; world-evaluator = domain FID on the procedural "
                             "world: the shipped world evaluator's 256-d features replace Inception's "
                             "(inception_weights and feature_dim are then unused; columns fid_world, "
                             "kid_mean_world, kid_std_world)."}),
            },
        }

    def score(self, generated, reference, set_label, inception_weights, feature_dim, kid_subsets,
              kid_subset_size, batch_size, image_scores=None, pipeline=None, features="inception"):
        from ..core.metrics import fid, weights
        from ..core.scores import ScoreTable

        node = "LoRA Lab: FID / KID"
        check_image_scores(node, image_scores, len(generated))
        for name, images in (("generated", generated), ("reference", reference)):
            if len(images) < 2:
                raise ValueError(f"{node}: input '{name}': got {len(images)} image(s); FID and KID need at "
                                 "least 2 per set (and FID is only comparable at equal N)")
        suffix = ""  # the columns say which features made them: never mistaken for a real FID
        if features == "world-evaluator":
            from ..core.world.evaluator import DomainFeatures, load_evaluator

            extractor, suffix = DomainFeatures(load_evaluator()), "_world"
        else:
            try:
                random = inception_weights.strip() == weights.RANDOM_WEIGHTS
                extractor = fid.inception(None if random else weights.find_weight_file(inception_weights, INCEPTION),
                                          int(feature_dim))
            except weights.WeightsError as e:
                raise input_error(node, "inception_weights", e) from None
            suffix = "_rand" if random else ""
        result = fid.fid_kid(generated, reference, extractor, device_of(pipeline), batch_size, kid_subsets,
                             kid_subset_size)
        result = {(f"{k}{suffix}" if k in ("fid", "kid_mean", "kid_std") else k): v for k, v in result.items()}
        keys, row = ("set",), {"set": set_label}
        if image_scores is not None:
            constant = [k for k in image_scores.keys if len({repr(r.get(k)) for r in image_scores.rows}) == 1]
            keys, row = (*constant, "set"), {**{k: image_scores.rows[0].get(k) for k in constant}, **row}
        return (ScoreTable(keys, [{**row, **result}]),)


def prompts_per_image(node: str, text: str, image_scores, n: int) -> list[str]:
    """The prompt of each image: lines of ``text`` (one per image, or one per equal run of images in
    order, as Generate makes them), else the 'prompt' column of ``image_scores``."""
    from ..core.prompts import parse_prompts

    lines = [p.text for p in parse_prompts(text)]
    if lines:
        if n % len(lines):
            raise ValueError(f"{node}: input 'prompts': got {len(lines)} prompts for {n} images; give one "
                             "prompt per image, one for all, or one per equal run of images (images per "
                             "prompt), or leave it empty to use the 'prompt' column of 'image_scores'")
        return [line for line in lines for _ in range(n // len(lines))]
    if image_scores is None or "prompt" not in image_scores.columns:
        raise ValueError(f"{node}: input 'prompts' is empty and no 'image_scores' table with a 'prompt' column "
                         "is connected; write the prompts or connect Generate's 'cost' table")
    return [str(row.get("prompt", "")) for row in image_scores.rows]


class LoRALabCLIPScore:
    DESCRIPTION = ("Text-image CLIP score of each image with its prompt: 100 * max(cosine of the CLIP image "
                   "and text embeddings, 0), as torchmetrics' CLIPScore, from a local CLIP folder. One row "
                   "per image.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image'), the image index "
                       "and clip_score (0..100).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Images to score."}),
                "clip_model": CLIP_MODEL,
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "One prompt per line: one per image, one for all, or one per equal run of images "
                            "in order ('category: prompt' lines as in Prompts). Empty: the 'prompt' column "
                            "of 'image_scores'."}),
                "batch_size": batch_size_input(32),
            },
            "optional": {"image_scores": OPTIONAL_IMAGE_SCORES, "pipeline": OPTIONAL_PIPELINE},
        }

    def score(self, images, clip_model, prompts, batch_size, image_scores=None, pipeline=None):
        from ..core.metrics import clip, weights

        node = "LoRA Lab: CLIP Score"
        check_image_scores(node, image_scores, len(images))
        texts = prompts_per_image(node, prompts, image_scores, len(images))
        try:
            model = clip.load_clip(weights.find_clip_folder(clip_model))
        except weights.WeightsError as e:
            raise input_error(node, "clip_model", e) from None
        scores = clip.clip_score(model, images, texts, device_of(pipeline), batch_size)
        return (per_image_table({"clip_score": scores}, len(images), image_scores),)


class LoRALabCLIPSimilarity:
    DESCRIPTION = ("Image-image CLIP similarity from a local CLIP folder: content similarity = cosine to "
                   "each image's source image (content preservation); style similarity = mean cosine to "
                   "the images of a style reference set (style strength). One row per image.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image'), the image index, "
                       "clip_content_sim and/or clip_style_sim (cosines, -1..1, higher = more similar).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Images to score (e.g. the stylised outputs)."}),
                "clip_model": CLIP_MODEL,
                "batch_size": batch_size_input(32),
            },
            "optional": {
                "source": ("IMAGE", {"tooltip": "Content sources: one per image (image i against source i) or "
                                                "one for all -> clip_content_sim."}),
                "style": ("IMAGE", {"tooltip": "Style reference set, any count -> clip_style_sim = mean cosine "
                                               "of each image to the style images."}),
                "image_scores": OPTIONAL_IMAGE_SCORES,
                "pipeline": OPTIONAL_PIPELINE,
            },
        }

    def score(self, images, clip_model, batch_size, source=None, style=None, image_scores=None, pipeline=None):
        from ..core.metrics import clip, weights

        node = "LoRA Lab: CLIP Similarity"
        if source is None and style is None:
            raise ValueError(f"{node}: connect 'source' (content similarity), 'style' (style similarity) or both")
        if source is not None and len(source) not in (1, len(images)):
            raise ValueError(f"{node}: input 'source': got {len(source)} source images for {len(images)} images; "
                             "give one source for all or one per image")
        check_image_scores(node, image_scores, len(images))
        try:
            model = clip.load_clip(weights.find_clip_folder(clip_model))
        except weights.WeightsError as e:
            raise input_error(node, "clip_model", e) from None
        device, columns = device_of(pipeline), {}
        if source is not None:
            columns["clip_content_sim"] = clip.content_similarity(model, images, source, device, batch_size)
        if style is not None:
            columns["clip_style_sim"] = clip.style_similarity(model, images, style, device, batch_size)
        return (per_image_table(columns, len(images), image_scores),)


class LoRALabLPIPS:
    DESCRIPTION = ("LPIPS v0.1 perceptual distance of each image to its reference (one per image, or one for "
                   "all; same size), with the lpips package's linear layers and a local torchvision trunk "
                   "file. 0 = identical, higher = more different. One row per image.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image'), the image index "
                       "and lpips_<net> (lpips_<net>_rand with the random trunk).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        files = ", ".join(f"{net}: {w.name}" for net, w in LPIPS_TRUNKS.items())
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Images to score."}),
                "reference": ("IMAGE", {"tooltip": "Reference images of the same size: one per image or one "
                                                   "for all."}),
                "net": (list(LPIPS_NETS), {"default": "alex", "tooltip":
                        "LPIPS trunk: alex (the paper's default for a metric), vgg (closer to a "
                        "perceptual loss), squeeze (smallest)."}),
                "trunk_weights": ("STRING", {"default": "auto", "tooltip":
                                  f"auto = torchvision's file for the net ({files}) in ComfyUI's models/metrics "
                                  "(headless: <models-dir>/metrics; torch's hub cache also works); or a file "
                                  "name there, or an absolute path. Never downloaded; from "
                                  "download.pytorch.org/models/<file>. 'random' = a random trunk (seed 0; "
                                  "the LPIPS paper's rand baseline), no file needed."}),
                "batch_size": batch_size_input(16),
            },
            "optional": {"image_scores": OPTIONAL_IMAGE_SCORES, "pipeline": OPTIONAL_PIPELINE},
        }

    def score(self, images, reference, net, trunk_weights, batch_size, image_scores=None, pipeline=None):
        from ..core.metrics import lpips, weights

        node = "LoRA Lab: LPIPS"
        try:
            lpips.check_pair(images, reference)
        except ValueError as e:
            raise input_error(node, "reference", e) from None
        check_image_scores(node, image_scores, len(images))
        try:
            trunk = (None if trunk_weights.strip() == weights.RANDOM_WEIGHTS
                     else weights.find_weight_file(trunk_weights, LPIPS_TRUNKS[net]))
            model = lpips.load_lpips(net, trunk)
        except weights.WeightsError as e:
            raise input_error(node, "trunk_weights", e) from None
        distances = lpips.lpips_distance(model, images, reference, device_of(pipeline), batch_size)
        column = f"lpips_{net}" if trunk is not None else f"lpips_{net}_rand"  # never mistaken for the real one
        return (per_image_table({column: distances}, len(images), image_scores),)


NODE_CLASS_MAPPINGS = {
    "LoRALabFIDKID": LoRALabFIDKID,
    "LoRALabCLIPScore": LoRALabCLIPScore,
    "LoRALabCLIPSimilarity": LoRALabCLIPSimilarity,
    "LoRALabLPIPS": LoRALabLPIPS,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoRALabFIDKID": "LoRA Lab: FID / KID",
    "LoRALabCLIPScore": "LoRA Lab: CLIP Score",
    "LoRALabCLIPSimilarity": "LoRA Lab: CLIP Similarity",
    "LoRALabLPIPS": "LoRA Lab: LPIPS",
}
