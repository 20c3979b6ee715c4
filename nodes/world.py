"""The procedural world: datasets and prompts drawn on demand (no image files shipped)."""

from ..core.world import CATEGORIES, VARIANTS

MAX_COUNT = 100_000


def _category_inputs(what: str) -> dict:
    return {c: ("BOOLEAN", {"default": True, "tooltip": f"Include seed 000's '{c}' {what}."}) for c in CATEGORIES}


def _categories(node: str, flags: dict) -> tuple[str, ...]:
    chosen = tuple(c for c in CATEGORIES if flags[c])
    if not chosen:
        raise ValueError(f"LoRA Lab: {node}: inputs {', '.join(CATEGORIES)} are all off; switch on at least one")
    return chosen


class LoRALabWorldDataset:
    DESCRIPTION = ("A training set from the procedural world: 64 px scenes of 1–3 simple shapes with template "
                   "captions ('two small red circles on a blue background'). 'base' is the world the embedded "
                   "world models know; the styles (outlined, striped, pastel, hand-drawn) are absent from it, "
                   "for style LoRAs; 'concept' is one patterned badge bound to the rare tokens 'sks' and 'ukj' "
                   "(DreamBooth). Only captions of the train half are drawn: World Prompts' held-out prompts "
                   "never appear here.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("Images with captions, for Train LoRA.", "The images, to preview.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "variant": (list(VARIANTS), {"default": "base", "tooltip":
                        "base = the world as pretrained; a style (captions end with its phrase, e.g. "
                        "'…, in striped style'); concept = 'a sks badge with ukj pattern …'."}),
            "count": ("INT", {"default": 64, "min": 1, "max": MAX_COUNT, "tooltip": "Number of images."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                             "tooltip": "Draws scenes and their layout; the same seed gives the same images."}),
            "resolution": ("INT", {"default": 64, "min": 32, "max": 512, "step": 8, "tooltip":
                           "Side of the images; the world's models are trained at 64."}),
            **_category_inputs("scenes (standard: one centred shape; challenging: several, or one small "
                               "off-centre; closeup: one shape filling the frame)"),
        }}

    def build(self, variant, count, seed, resolution, **flags):
        from ..core.world import world_dataset

        dataset = world_dataset(variant, count, seed, _categories("World Dataset", flags), resolution)
        return (dataset, dataset.images)


class LoRALabWorldPrompts:
    DESCRIPTION = ("Prompts from the procedural world with their seed-000 category (standard / challenging / "
                   "closeup), by default from the held-out half of the caption space (never in a World "
                   "Dataset), for scoring prompt adherence.")
    CATEGORY = "LoRA Lab/sample"
    RETURN_TYPES = ("LL_PROMPTS", "STRING")
    RETURN_NAMES = ("prompts", "text")
    OUTPUT_TOOLTIPS = ("The prompts with their categories.", "The same as 'category: prompt' lines.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "count": ("INT", {"default": 12, "min": 1, "max": MAX_COUNT, "tooltip": "Number of prompts."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                             "tooltip": "Draws the prompts; the same seed gives the same list."}),
            "split": (["heldout", "train", "both"], {"default": "heldout", "tooltip":
                      "heldout = captions no World Dataset contains (evaluation); train = captions of the "
                      "training half; both = either."}),
            "variant": (list(VARIANTS), {"default": "base", "tooltip":
                        "Prompts of a style (ending in its phrase) or of the concept."}),
            **_category_inputs("prompts"),
        }}

    def build(self, count, seed, split, variant, **flags):
        from ..core.world import world_prompts

        prompts = world_prompts(count, seed, _categories("World Prompts", flags), variant,
                                None if split == "both" else split)
        return (prompts, "\n".join(f"{p.category}: {p.text}" for p in prompts))


EVALUATOR = ("STRING", {"default": "embedded: world-evaluator", "tooltip":
                         "The world evaluator's weights: 'embedded: world-evaluator' (shipped, trained on rendered "
                         "scenes by models/build_world.py) or an absolute path to a file of the same layout."})


def _evaluator(node: str, name: str):
    from ..core.world.evaluator import load_evaluator

    try:
        return load_evaluator(None if name.strip() == "embedded: world-evaluator" else name.strip())
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise ValueError(f"LoRA Lab: {node}: input 'evaluator': {e}") from None


class LoRALabWorldAdherence:
    DESCRIPTION = ("Prompt adherence in the procedural world, the offline counterpart of CLIP score: per image, "
                   "the fraction of its caption's attributes (shape, colour, background, count, size, and "
                   "position for one shape) that the shipped world evaluator reads in the image, plus a 1/0 "
                   "column per attribute. Rows of prompts that are not world captions are NaN.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image'), world_adherence "
                       "(0..1) and world_shape, world_colour, world_background, world_count, world_size, "
                       "world_position (1 = recognised, 0 = not, NaN = not asked).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        from .score_model import OPTIONAL_IMAGE_SCORES

        return {"required": {
            "images": ("IMAGE", {"tooltip": "Images to score (any size; read at 64 px)."}),
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                        "One prompt per line: one per image, one for all, or one per equal run of images in "
                        "order ('category: prompt' lines as World Prompts writes them). Empty: the 'prompt' "
                        "column of 'image_scores'."}),
            "evaluator": EVALUATOR,
        }, "optional": {"image_scores": OPTIONAL_IMAGE_SCORES}}

    def score(self, images, prompts, evaluator, image_scores=None):
        from ..core.world.evaluator import adherence
        from .score import check_image_scores, per_image_table
        from .score_model import prompts_per_image

        node = "World Adherence"
        check_image_scores(f"LoRA Lab: {node}", image_scores, len(images))
        texts = prompts_per_image(f"LoRA Lab: {node}", prompts, image_scores, len(images))
        columns = adherence(_evaluator(node, evaluator), images, texts)
        return (per_image_table({f"world_{k}": v for k, v in columns.items()}, len(images), image_scores),)


class LoRALabWorldStyle:
    DESCRIPTION = ("Probability, read by the shipped world evaluator, that each image is drawn in a style of "
                   "the procedural world (outlined, striped, pastel, hand-drawn = wobbly), is plain (base) or "
                   "shows the sks/ukj concept badge.")
    CATEGORY = "LoRA Lab/score"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One row per image: the key columns of 'image_scores' (else 'image') and "
                       "world_style_<style> (0..1).",)
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        from .score_model import OPTIONAL_IMAGE_SCORES

        return {"required": {
            "images": ("IMAGE", {"tooltip": "Images to score (any size; read at 64 px)."}),
            "style": (list(VARIANTS), {"default": "striped", "tooltip": "The style whose probability is reported."}),
            "evaluator": EVALUATOR,
        }, "optional": {"image_scores": OPTIONAL_IMAGE_SCORES}}

    def score(self, images, style, evaluator, image_scores=None):
        from ..core.world.evaluator import style_probability
        from .score import check_image_scores, per_image_table

        check_image_scores("LoRA Lab: World Style", image_scores, len(images))
        p = style_probability(_evaluator("World Style", evaluator), images, style)
        return (per_image_table({f"world_style_{style}": p}, len(images), image_scores),)


NODE_CLASS_MAPPINGS = {"LoRALabWorldDataset": LoRALabWorldDataset, "LoRALabWorldPrompts": LoRALabWorldPrompts,
                       "LoRALabWorldAdherence": LoRALabWorldAdherence, "LoRALabWorldStyle": LoRALabWorldStyle}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabWorldDataset": "LoRA Lab: Synthetic World Dataset",
                              "LoRALabWorldPrompts": "LoRA Lab: World Prompts",
                              "LoRALabWorldAdherence": "LoRA Lab: World Adherence",
                              "LoRALabWorldStyle": "LoRA Lab: World Style"}
