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


NODE_CLASS_MAPPINGS = {"LoRALabWorldDataset": LoRALabWorldDataset, "LoRALabWorldPrompts": LoRALabWorldPrompts}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabWorldDataset": "LoRA Lab: Synthetic World Dataset",
                              "LoRALabWorldPrompts": "LoRA Lab: World Prompts"}
