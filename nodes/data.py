"""Datasets."""


class LoRALabImageFolder:
    DESCRIPTION = ("Images and captions from a folder inside the input folder: captions from metadata.jsonl "
                   "or a .txt beside each image (else the default caption); square resize-and-crop to the "
                   "resolution, or aspect-ratio buckets; optional mirrored copies.")
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
            "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Side of the square training images (SD1.5: 512, SDXL: 1024)."}),
            "crop": (["center", "random"], {"default": "center", "tooltip":
                     "Which square to keep after resizing the shorter side; random is seeded."}),
            "flip": ("BOOLEAN", {"default": False, "tooltip": "Add horizontally mirrored copies."}),
        }, "optional": {
            "default_caption": ("STRING", {"default": "", "tooltip": "Caption for images without one."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                             "tooltip": "Seed of random crops (fixed: the editor never changes it on Run)."}),
            "buckets": ("BOOLEAN", {"default": False, "tooltip":
                        "Aspect-ratio buckets (kohya): each image keeps its shape, resized to the bucket of "
                        "about resolution² pixels with the nearest aspect ratio; batches never mix buckets."}),
        }}

    def load(self, folder, resolution, crop, flip, default_caption="", seed=0, buckets=False):
        from ..core.datasets import load_image_folder, preview_batch

        try:
            dataset = load_image_folder(folder, resolution, crop, flip, default_caption, seed, buckets)
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


NODE_CLASS_MAPPINGS = {"LoRALabImageFolder": LoRALabImageFolder, "LoRALabSingleImageConcept": LoRALabSingleImageConcept}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabImageFolder": "LoRA Lab: Image Folder Dataset",
                              "LoRALabSingleImageConcept": "LoRA Lab: Single-Image Concept"}
