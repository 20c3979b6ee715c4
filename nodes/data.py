"""Datasets."""


class LoRALabImageFolder:
    DESCRIPTION = ("Images and captions from a folder inside the input folder: captions from metadata.jsonl "
                   "or a .txt beside each image (else the default caption); square resize-and-crop to the "
                   "resolution; optional mirrored copies.")
    CATEGORY = "LoRA Lab/data"
    RETURN_TYPES = ("LL_DATASET", "IMAGE")
    RETURN_NAMES = ("dataset", "images")
    OUTPUT_TOOLTIPS = ("Images with captions, for Train LoRA.", "The prepared images, to preview.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "dataset", "tooltip": "Folder inside ComfyUI's input folder "
                                  "(headless: --input-dir / LORALAB_INPUT_DIR, default ./input)."}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Side of the square training images (SD1.5: 512, SDXL: 1024)."}),
            "crop": (["center", "random"], {"default": "center", "tooltip":
                     "Which square to keep after resizing the shorter side; random is seeded."}),
            "flip": ("BOOLEAN", {"default": False, "tooltip": "Add horizontally mirrored copies."}),
        }, "optional": {
            "default_caption": ("STRING", {"default": "", "tooltip": "Caption for images without one."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of random crops."}),
        }}

    def load(self, folder, resolution, crop, flip, default_caption="", seed=0):
        from ..core.datasets import load_image_folder

        try:
            dataset = load_image_folder(folder, resolution, crop, flip, default_caption, seed)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Image Folder: {e}") from None
        return (dataset, dataset.images)


NODE_CLASS_MAPPINGS = {"LoRALabImageFolder": LoRALabImageFolder}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabImageFolder": "LoRA Lab: Image Folder Dataset"}
