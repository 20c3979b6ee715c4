"""Datasets."""


def _image_inputs() -> dict:
    """Resolution, crop and flip: the same preparation for every dataset loader."""
    return {
        "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                               "tooltip": "Side of the square training images (SD1.5: 512, SDXL: 1024)."}),
        "crop": (["center", "random"], {"default": "center", "tooltip":
                 "Which square to keep after resizing the shorter side; random is seeded."}),
        "flip": ("BOOLEAN", {"default": False, "tooltip": "Add horizontally mirrored copies."}),
    }


def _seed_and_buckets() -> dict:
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                         "tooltip": "Seed of random crops (fixed: the editor never changes it on Run)."}),
        "buckets": ("BOOLEAN", {"default": False, "tooltip":
                    "Aspect-ratio buckets (kohya): each image keeps its shape, resized to the bucket of "
                    "about resolution² pixels with the nearest aspect ratio; batches never mix buckets."}),
    }


class LoRALabImageFolder:
    DESCRIPTION = ("Images and captions from a folder inside the input folder: captions from metadata.jsonl "
                   "or a .txt beside each image (else the default caption); square resize-and-crop to the "
                   "resolution, or aspect-ratio buckets; optional mirrored copies; optional loss masks "
                   "(alpha channel or mask files) transformed exactly as their images.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("Images with captions, for Train LoRA.", "The prepared images, to preview.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "dataset", "tooltip": "Folder inside ComfyUI's input folder "
                                  "(headless: --input-dir, default ./input)."}),
            **_image_inputs(),
        }, "optional": {
            "default_caption": ("STRING", {"default": "", "tooltip": "Caption for images without one."}),
            **_seed_and_buckets(),
            "masks": (["none", "alpha", "mask_file"], {"default": "none", "tooltip":
                      "Per-image loss masks (1 = trained at full weight, 0 = ignored), resized, cropped, "
                      "flipped and bucketed exactly as their image. alpha: the image's alpha channel (an "
                      "image without alpha is trained everywhere, all ones); mask_file: a grayscale "
                      "<stem>_mask.png beside the image, else OneTrainer's <stem>-masklabel.png (a missing "
                      "one is an error). Such mask files are never loaded as images."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        return _paths_valid("Image Folder", folder=folder)

    def load(self, folder, resolution, crop, flip, default_caption="", seed=0, buckets=False, masks="none"):
        from ..core.datasets import load_image_folder, preview_batch

        try:
            dataset = load_image_folder(folder, resolution, crop, flip, default_caption, seed, buckets, masks)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Image Folder: {e}") from None
        return (dataset, preview_batch(dataset.images))


class LoRALabSingleImageConcept:
    DESCRIPTION = ("DreamBooth dataset (seed 003's single-garment LoRA): instance images with a rare-token "
                   "prompt such as 'a photo of sks jacket', plus optional prior-preservation images the base "
                   "model generates for the class prompt, weighted by prior_weight.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("Instance and class examples, for Train LoRA.", "All images of the dataset, to preview.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LL_PIPELINE", {"tooltip": "Base model (generates the class images)."}),
            "instance_images": ("IMAGE", {"tooltip": "The concept's images (one or a few)."}),
            "instance_prompt": ("STRING", {"default": "a photo of sks jacket", "tooltip":
                                "Caption with a rare token (sks, ukj) naming the concept."}),
        }, "optional": {
            "class_prompt": ("STRING", {"default": "", "tooltip": "The concept's class, e.g. 'a photo of a jacket'."}),
            "class_images": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip":
                             "Prior-preservation images to generate; 0 = none."}),
            "prior_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "Loss weight of the class images (DreamBooth's lambda)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                             "tooltip": "Seed of the class images (fixed: the editor never changes it on Run, "
                                        "so the class images are not regenerated)."}),
        }}

    def build(self, pipeline, instance_images, instance_prompt, class_prompt="", class_images=0, prior_weight=1.0,
              seed=0):
        from ..core.datasets import concept_dataset

        try:
            dataset = concept_dataset(pipeline, instance_images, instance_prompt, class_prompt, class_images,
                                      prior_weight, seed)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Single-Image Concept: {e}") from None
        return (dataset, dataset.images)


def _caption_options(what: str) -> dict:
    return {
        "caption": (["first", "all", "random"], {"default": "first", "tooltip":
                    f"Which of an image's captions ({what}): first; all = one example per caption; random "
                    "= one drawn with the seed."}),
        "max_images": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip":
                       "Use only the first N images of the caption file (0 = all). Every image is held in memory at "
                       "the resolution: 1000 images at 512 px take about 3 GB."}),
        **_seed_and_buckets(),
        "missing_images": (["error", "skip"], {"default": "error", "tooltip":
                           "An image the caption file names but the folder lacks: an error naming it, or "
                           "skipped (e.g. only part of the data set was downloaded)."}),
    }


def _paths_valid(node: str, **paths) -> bool | str:
    """Validation (before anything runs, ComfyUI's exit 2 headless): a path that could only lead
    outside the input folder is refused from its text; links and existence are checked on loading."""
    from ..core.datasets import input_path_problem

    for name, value in paths.items():
        if isinstance(value, str) and (problem := input_path_problem(value, name)):
            return f"LoRA Lab: {node}: input '{name}': {problem}"
    return True


class _CaptionFile:
    """COCO and Flickr: a caption file plus an image folder, prepared as Image Folder prepares images."""
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("Images with captions, for Train LoRA.", "The prepared images, to preview.")
    FUNCTION = "load"
    TITLE = ""

    def _load(self, reader: str, caption_file, image_folder, resolution, crop, flip, caption, max_images, seed,
              buckets, missing_images):
        from ..core import datasets

        try:
            dataset = getattr(datasets, reader)(caption_file, image_folder, resolution, crop=crop, flip=flip,
                                                caption=caption, max_images=max_images, seed=seed,
                                                buckets=buckets, missing=missing_images)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: {self.TITLE}: {e}") from None
        return (dataset, datasets.preview_batch(dataset.images))


class LoRALabCOCOCaptions(_CaptionFile):
    DESCRIPTION = ("Images and captions of a COCO-captions data set (captions_train2014.json / "
                   "captions_val2014.json: 'images' with id and file_name, 'annotations' with image_id and "
                   "caption) from the input folder; images without a caption are left out. Prepared as Image "
                   "Folder prepares images (square crop or buckets, mirrored copies).")
    TITLE = "COCO Captions"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "annotations": ("STRING", {"default": "coco/annotations/captions_val2014.json", "tooltip":
                            "The COCO captions JSON, inside ComfyUI's input folder (headless: --input-dir)."}),
            "image_folder": ("STRING", {"default": "coco/val2014", "tooltip":
                             "The folder its file_names are relative to, inside the input folder."}),
            **_image_inputs(),
        }, "optional": _caption_options("COCO has about five")}

    @classmethod
    def VALIDATE_INPUTS(cls, annotations=None, image_folder=None):
        return _paths_valid(cls.TITLE, annotations=annotations, image_folder=image_folder)

    def load(self, annotations, image_folder, resolution, crop, flip, caption="first", max_images=0, seed=0,
             buckets=False, missing_images="error"):
        return self._load("load_coco_captions", annotations, image_folder, resolution, crop, flip, caption,
                          max_images, seed, buckets, missing_images)


class LoRALabFlickrCaptions(_CaptionFile):
    DESCRIPTION = ("Images and captions of Flickr8k / Flickr30k from the input folder; the caption file's "
                   "form is recognised by its content: Flickr8k.token.txt or results_20130124.token "
                   "('<image>#<n><TAB><caption>'), Flickr30k's results.csv ('image_name| comment_number| "
                   "comment'), or the 'image,caption' CSV of the Kaggle copy. Prepared as Image Folder "
                   "prepares images.")
    TITLE = "Flickr Captions"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "captions_file": ("STRING", {"default": "flickr8k/Flickr8k.token.txt", "tooltip":
                              "Flickr8k.token.txt, results_20130124.token or results.csv, inside ComfyUI's "
                              "input folder (headless: --input-dir)."}),
            "image_folder": ("STRING", {"default": "flickr8k/Flicker8k_Dataset", "tooltip":
                             "The folder holding its images, inside the input folder (Flickr8k's zip spells "
                             "it Flicker8k_Dataset)."}),
            **_image_inputs(),
        }, "optional": _caption_options("Flickr has five")}

    @classmethod
    def VALIDATE_INPUTS(cls, captions_file=None, image_folder=None):
        return _paths_valid(cls.TITLE, captions_file=captions_file, image_folder=image_folder)

    def load(self, captions_file, image_folder, resolution, crop, flip, caption="first", max_images=0, seed=0,
             buckets=False, missing_images="error"):
        return self._load("load_flickr_captions", captions_file, image_folder, resolution, crop, flip, caption,
                          max_images, seed, buckets, missing_images)


class LoRALabSplitDataset:
    DESCRIPTION = ("Splits a dataset into training and held-out test examples: a seeded shuffle of the source "
                   "images, test_fraction of them (rounded) to test. All examples of one source image (its "
                   "mirrored copy, one per caption) land on the same side; captions, weights and masks stay "
                   "with their images. The same seed always gives the same split.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "LL_DATASET", "IMAGE")
    RETURN_NAMES = ("train", "test", "test_images")
    OUTPUT_TOOLTIPS = ("The training examples, for Train LoRA.", "The held-out examples.",
                       "The held-out images, e.g. as FID/KID references.")
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LL_DATASET", {"tooltip": "The dataset to split."}),
            "test_fraction": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 0.99, "step": 0.01, "tooltip":
                              "Share of the source images held out; neither side may end up empty."}),
        }, "optional": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                             "tooltip": "Seed of the shuffle (fixed: the editor never changes it on Run)."}),
        }}

    def split(self, dataset, test_fraction, seed=0):
        from ..core.datasets import preview_batch, split_dataset

        try:
            train, test = split_dataset(dataset, test_fraction, seed)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Train/Test Split: {e}") from None
        return (train, test, preview_batch(test.images))


class LoRALabAspectFilter:
    DESCRIPTION = ("Keeps the examples whose aspect ratio (width/height) lies in [min_aspect, max_aspect]: "
                   "the source image's before cropping where the loader recorded it (Image Folder, COCO, "
                   "Flickr), else the prepared image's.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("The examples kept, for Train LoRA.", "Their images, to preview.")
    FUNCTION = "filter"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LL_DATASET", {"tooltip": "The dataset to filter."}),
            "min_aspect": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip":
                           "Smallest width/height kept (0.5 = twice as tall as wide)."}),
            "max_aspect": ("FLOAT", {"default": 2.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip":
                           "Largest width/height kept (2.0 = twice as wide as tall)."}),
        }}

    def filter(self, dataset, min_aspect, max_aspect):
        from ..core.datasets import filter_aspect, preview_batch

        try:
            kept = filter_aspect(dataset, min_aspect, max_aspect)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Aspect Ratio Filter: {e}") from None
        return (kept, preview_batch(kept.images))


NODE_CLASS_MAPPINGS = {"LoRALabImageFolder": LoRALabImageFolder, "LoRALabSingleImageConcept": LoRALabSingleImageConcept,
                       "LoRALabCOCOCaptions": LoRALabCOCOCaptions, "LoRALabFlickrCaptions": LoRALabFlickrCaptions,
                       "LoRALabSplitDataset": LoRALabSplitDataset, "LoRALabAspectFilter": LoRALabAspectFilter}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabImageFolder": "LoRA Lab: Image Folder Dataset",
                              "LoRALabSingleImageConcept": "LoRA Lab: Single-Image Concept",
                              "LoRALabCOCOCaptions": "LoRA Lab: COCO Captions",
                              "LoRALabFlickrCaptions": "LoRA Lab: Flickr Captions",
                              "LoRALabSplitDataset": "LoRA Lab: Train/Test Split",
                              "LoRALabAspectFilter": "LoRA Lab: Aspect Ratio Filter"}
