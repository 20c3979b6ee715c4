"""Loading models."""

from ..core.pipeline import ATTENTION, DEVICES, DTYPES, OFFLOAD, VAE_MODES, model_choices


class LoRALabLoadPipeline:
    DESCRIPTION = ("Load a Stable Diffusion 1.x or SDXL pipeline (UNet, VAE, text encoders, tokenizers) "
                   "for LoRA Lab's generate and train nodes, offline: the embedded tiny model, "
                   "single-file checkpoints (.safetensors; .ckpt only if it loads without code) "
                   "or diffusers folders. An SDXL refiner loads too, for Generate's 'refiner' input (or Img2Img).")
    CATEGORY = "LoRA Lab/models"
    RETURN_TYPES = ("LL_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The loaded diffusers pipeline and what LoRA Lab knows about it.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(), {"tooltip": "Shipped with LoRA Lab, trained on the procedural world "
                                        "(64 px shapes): 'embedded: world-student' (SD1.5 architecture) and "
                                        "'embedded: world-teacher' (SDXL architecture); 'embedded: tiny-sd' "
                                        "has random weights (fast tests), as has 'embedded: tiny-sdxl-refiner' "
                                        "(an SDXL refiner for world-teacher). Inside ComfyUI: your "
                                        "models/checkpoints files. Headless: <models-dir>/checkpoints files "
                                        "and diffusers folders under --models-dir (default ./models)."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": "Weight precision. auto = fp16 "
                                     "on a GPU, fp32 on the CPU."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip": "Where to run. auto = CUDA "
                                       "if present, then Apple MPS, else the CPU."}),
        }, "optional": {
            "attention": (list(ATTENTION), {"default": "auto", "tooltip": "auto/sdpa = PyTorch's fused "
                                            "scaled-dot-product attention; sliced = attention slicing "
                                            "(less memory, slower)."}),
            "vae": (list(VAE_MODES), {"default": "auto", "tooltip": "VAE decoding: auto = tiled above "
                                      "4 megapixels, sliced for batches, else full; or force one."}),
            "offload": (list(OFFLOAD), {"default": "none", "tooltip": "CPU offload on a GPU: model = "
                                        "move whole models to the GPU only while used (diffusers "
                                        "enable_model_cpu_offload); sequential = per layer (least "
                                        "memory, slowest)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, model, **_):
        from ..core.pipeline import model_signature

        return model_signature(model)

    def load(self, model, dtype, device, attention="auto", vae="auto", offload="none"):
        from ..core.pipeline import load_pipeline

        return (load_pipeline(model, dtype=dtype, device=device, attention=attention, vae=vae, offload=offload),)


NODE_CLASS_MAPPINGS = {"LoRALabLoadPipeline": LoRALabLoadPipeline}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabLoadPipeline": "LoRA Lab: Load Pipeline"}
