"""Saving and previewing results."""


class LoRALabSaveImage:
    DESCRIPTION = ("Save images as PNG in the output folder, with the workflow embedded as "
                   "ComfyUI does (drag a PNG into ComfyUI to restore the graph).")
    CATEGORY = "LoRA Lab/io"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    folder_type = "output"
    compress_level = 4
    refused = "input 'filename_prefix'"  # what an error names when a write is refused

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Images to save."}),
                "filename_prefix": ("STRING", {"default": "loralab", "tooltip":
                                    "File name prefix; 'folder/name' saves into a subfolder of "
                                    "the output folder. It can never leave the output folder."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        from ..core.files import validate_name

        return validate_name(filename_prefix)

    def save(self, images, filename_prefix="loralab", prompt=None, extra_pnginfo=None):
        from ..core import runtime
        from ..core.files import UnsafePathError
        from ..core.images import save_images

        root, under = runtime.write_root(self.folder_type)
        try:
            entries = save_images(images, root, filename_prefix, prompt, extra_pnginfo, self.compress_level, under)
        except UnsafePathError as e:
            raise ValueError(f"{type(self).__name__}: {self.refused}: {e}") from None
        return {"ui": {"images": [{**e, "type": self.folder_type} for e in entries]}}


class LoRALabPreviewImage(LoRALabSaveImage):
    DESCRIPTION = "Show images in the editor (saved to ComfyUI's temp folder; headless, <output>/temp)."
    folder_type = "temp"
    compress_level = 1
    refused = "the preview folder"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"images": ("IMAGE", {"tooltip": "Images to preview."})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, images, prompt=None, extra_pnginfo=None):
        return super().save(images, "preview/loralab", prompt, extra_pnginfo)


NODE_CLASS_MAPPINGS = {
    "LoRALabSaveImage": LoRALabSaveImage,
    "LoRALabPreviewImage": LoRALabPreviewImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoRALabSaveImage": "LoRA Lab: Save Image",
    "LoRALabPreviewImage": "LoRA Lab: Preview Image",
}
