"""Loading models."""

from ..core.pipeline import DEVICES, DTYPES, EMBEDDED


class LoRALabLoadPipeline:
    DESCRIPTION = ("Load a Stable Diffusion pipeline (UNet, VAE, text encoder, tokenizer) for "
                   "LoRA Lab's generate and train nodes. The embedded tiny model runs anywhere, "
                   "offline, in seconds on a CPU.")
    CATEGORY = "LoRA Lab/models"
    RETURN_TYPES = ("LL_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The loaded diffusers pipeline and what LoRA Lab knows about it.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(EMBEDDED), {"tooltip": "Model to load. 'embedded: tiny-sd' is a tiny "
                                                  "SD1-architecture model shipped with LoRA Lab."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": "Weight precision. auto = fp16 "
                                     "on a GPU, fp32 on the CPU."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip": "Where to run. auto = CUDA "
                                       "if present, then Apple MPS, else the CPU."}),
        }}

    def load(self, model, dtype, device):
        from ..core.pipeline import load_pipeline

        return (load_pipeline(model, dtype=dtype, device=device),)


NODE_CLASS_MAPPINGS = {"LoRALabLoadPipeline": LoRALabLoadPipeline}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabLoadPipeline": "LoRA Lab: Load Pipeline"}
