"""Prompts, samplers and image generation."""

from ..core.samplers import BATCH_NOISE, SAMPLER_TOOLTIP, SAMPLERS, SCHEDULE_TOOLTIP, SCHEDULES

MAX_SEED = 0xFFFFFFFFFFFFFFFF


class LoRALabPrompts:
    DESCRIPTION = ("A list of prompts, one per line. Write 'category: prompt' to group prompts "
                   "(e.g. standard / challenging / closeup) so scores can be summarised per group.")
    CATEGORY = "LoRA Lab/sample"
    RETURN_TYPES = ("LL_PROMPTS",)
    RETURN_NAMES = ("prompts",)
    OUTPUT_TOOLTIPS = ("The prompts with their categories.",)
    FUNCTION = "parse"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "default": "a photo of a cat",
                                "tooltip": "One prompt per line; optional 'category: prompt'; "
                                           "blank lines and lines starting with # are skipped."}),
        }}

    def parse(self, text):
        from ..core.prompts import parse_prompts

        prompts = parse_prompts(text)
        if not prompts:
            raise ValueError("LoRA Lab: Prompts: input 'text' holds no prompt; write one prompt per line")
        return (prompts,)


class LoRALabSampler:
    DESCRIPTION = ("Choose a sampling algorithm and sigma schedule by ComfyUI KSampler's names; each means "
                   "what it means there (k-diffusion's samplers, the same sigmas, noise and UNet timesteps), so "
                   "the same seed, model and CFG give KSampler's latent at batch size 1.")
    CATEGORY = "LoRA Lab/sample"
    RETURN_TYPES = ("LL_SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("The sampler settings for Generate.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sampler_name": (list(SAMPLERS), {"default": "euler", "tooltip": SAMPLER_TOOLTIP}),
                "schedule": (list(SCHEDULES), {"default": "normal", "tooltip": SCHEDULE_TOOLTIP}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                        "Step-noise scale of euler_ancestral, dpmpp_2m_sde and dpmpp_sde (the eta of ComfyUI's "
                        "SamplerEulerAncestral / SamplerDPMPP_2M_SDE / SamplerDPMPP_SDE nodes). KSampler uses "
                        "1.0; 0 makes them deterministic. The other samplers ignore it."}),
            },
            "optional": {
                "batch_noise": (list(BATCH_NOISE), {"default": "per_image", "tooltip":
                                "per_image: image k of a batch has its own noise from seed + k, so it is "
                                "reproducible alone. comfyui: one noise stream for the whole batch from the "
                                "seed, as KSampler draws it (image k then depends on the batch size)."}),
            },
        }

    def build(self, sampler_name, schedule, eta, batch_noise="per_image"):
        from ..core.samplers import SamplerSpec

        return (SamplerSpec(sampler_name, schedule, eta, batch_noise),)


PROMPTS_PER_BATCH = ("INT", {"default": 1, "min": 1, "max": 256, "tooltip":
                     "Prompts sampled together in one batch: faster on any device (about 2.5x for the "
                     "embedded world at 16), the same images up to float rounding. The cost table then "
                     "splits each batch's time evenly over its images."})


REFINE_FRACTION = ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01, "round": 0.001, "tooltip":
                   "With a refiner: the refiner's share of the noise schedule (seed 003: 0.2; diffusers' "
                   "denoising_end = denoising_start = 1 - refine_fraction, the SDXL paper's ensemble of "
                   "experts). The base runs the steps at training timesteps >= 1000 x refine_fraction, the "
                   "refiner the rest from the base's latent, and the refiner's VAE decodes. 0.2 = the "
                   "refiner does the last 20% (timesteps below 200, where it was trained); 0 = the base "
                   "alone; 1 = the refiner alone. Ignored without a refiner."})


CFG_RESCALE = ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05, "round": 0.01, "tooltip":
               "Rescaled CFG's phi (Lin et al. 2023; ComfyUI's RescaleCFG multiplier; diffusers' "
               "guidance_rescale): 0 = plain CFG. -1 = auto: 0.7 when the model or an applied LoRA "
               "is zero-terminal-SNR, else 0."})


class LoRALabGenerate:
    DESCRIPTION = ("Text-to-image generation: every prompt x images_per_prompt, image k of each "
                   "prompt seeded with seed + k, so any single image is reproducible on its own. "
                   "Also returns a score table with the seconds per image and peak memory.")
    CATEGORY = "LoRA Lab/sample"
    RETURN_TYPES = ("IMAGE", "LL_SCORES")
    RETURN_NAMES = ("images", "cost")
    DISK_CACHE = True  # headless --cache-dir: image sets are worth keeping across processes
    OUTPUT_TOOLTIPS = ("Generated images, prompt by prompt.",
                       "One row per image: model, sampler, steps, cfg, category, prompt, seed, "
                       "seconds_per_image, peak_memory_mb.")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 0, "min": 0, "max": 4096, "step": 8}
        return {"required": {
            "pipeline": ("LL_PIPELINE", {"tooltip": "The model to sample from."}),
            "sampler": ("LL_SAMPLER", {"tooltip": "Sampler and schedule (LoRA Lab: Sampler)."}),
            "prompts": ("LL_PROMPTS", {"tooltip": "Prompts to render (LoRA Lab: Prompts)."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "What to steer away from (used when cfg > 1)."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Denoising steps."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale, applied to the x0 estimates "
                                         "as KSampler does; exactly 1.0 skips the unconditional pass "
                                         "(twice as fast)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "Seed of image 0 of each prompt; image k uses seed + k (or, "
                                        "with the Sampler's batch_noise = comfyui, one stream from the seed)."}),
            "width": ("INT", {**size, "tooltip": "Image width in pixels, a multiple of 8; "
                                                 "0 = the model's native size (64 tiny, 512 SD1.5)."}),
            "height": ("INT", {**size, "tooltip": "Image height in pixels, a multiple of 8; "
                                                  "0 = the model's native size."}),
            "images_per_prompt": ("INT", {"default": 1, "min": 1, "max": 64,
                                          "tooltip": "Images per prompt, generated as one batch."}),
        }, "optional": {"prompts_per_batch": PROMPTS_PER_BATCH, "cfg_rescale": CFG_RESCALE,
                        "refiner": ("LL_PIPELINE", {"tooltip":
                                    "Optional SDXL refiner (Load Pipeline: sd_xl_refiner_1.0, a diffusers "
                                    "refiner folder, or 'embedded: tiny-sdxl-refiner' for world-teacher) that "
                                    "finishes the last refine_fraction of the SDXL base's schedule, conditioned on "
                                    "aesthetic score 6 (negative 2.5) as in diffusers."}),
                        "refine_fraction": REFINE_FRACTION}}

    def generate(self, pipeline, sampler, prompts, negative_prompt, steps, cfg, seed, width,
                 height, images_per_prompt, prompts_per_batch=1, cfg_rescale=-1.0, refiner=None,
                 refine_fraction=0.2):
        from ..core.generate import GenerateSettings, Refiner, generate

        if pipeline.family == "sdxl_refiner":
            raise ValueError(f"LoRA Lab: Generate: input 'pipeline': '{pipeline.name}' is an SDXL refiner, which "
                             "finishes a base model's images; connect an SDXL base model here and the refiner to "
                             "'refiner' (or refine existing images with Img2Img)")
        width, height = width or pipeline.native_size, height or pipeline.native_size
        if problem := pipeline.size_problem(width, height):
            raise ValueError(f"LoRA Lab: Generate: inputs 'width'/'height': {problem}")
        _check_refiner("Generate", pipeline, refiner, refine_fraction, width, height)
        settings = GenerateSettings(steps, cfg, seed, width, height, images_per_prompt, negative_prompt,
                                    prompts_per_batch, None if cfg_rescale < 0 else cfg_rescale)
        return generate(pipeline, sampler, prompts, settings,
                        None if refiner is None else Refiner(refiner, refine_fraction))


def _check_refiner(node: str, pipeline, refiner, refine_fraction: float, width: int, height: int) -> None:
    """Refuse a refiner that cannot finish ``pipeline``'s images, naming the node and the input."""
    from ..core.generate import refiner_problem

    if refiner is None:
        return
    if not 0 <= refine_fraction <= 1:
        raise ValueError(f"LoRA Lab: {node}: input 'refine_fraction': {refine_fraction} is not in 0..1")
    if refiner.family == "sdxl_refiner" and pipeline.family != "sdxl":
        raise ValueError(f"LoRA Lab: {node}: input 'pipeline': '{pipeline.name}' is {pipeline.family}, but "
                         "the connected refiner finishes SDXL base images; use an SDXL base model")
    if problem := refiner_problem(pipeline, refiner, width, height):
        raise ValueError(f"LoRA Lab: {node}: input 'refiner': {problem}")


class LoRALabImg2Img:
    DESCRIPTION = ("Image-to-image (SDEdit): noise the input images to 'strength' and denoise them with "
                   "the prompts. 0 returns the input, 1 ignores it (same as Generate). An optional "
                   "mask limits the change to its white area. Output size = input size.")
    CATEGORY = "LoRA Lab/sample"
    RETURN_TYPES = ("IMAGE", "LL_SCORES")
    RETURN_NAMES = ("images", "cost")
    DISK_CACHE = True
    OUTPUT_TOOLTIPS = LoRALabGenerate.OUTPUT_TOOLTIPS
    FUNCTION = "img2img"

    @classmethod
    def INPUT_TYPES(cls):
        shared = LoRALabGenerate.INPUT_TYPES()["required"]
        for size in ("width", "height"):
            shared.pop(size)
        return {
            "required": {
                **{k: shared[k] for k in ("pipeline", "sampler", "prompts")},
                "image": ("IMAGE", {"tooltip": "Start images: one for all prompts, or one per prompt. "
                                               "Width and height must be multiples of 8."}),
                "strength": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                             "How much to change: the fraction of the noise schedule applied to the "
                             "input (ComfyUI's denoise)."}),
                **{k: v for k, v in shared.items() if k not in ("pipeline", "sampler", "prompts")},
            },
            "optional": {"mask": ("MASK", {"tooltip": "Optional: repaint only where the mask is 1."}),
                         "prompts_per_batch": PROMPTS_PER_BATCH, "cfg_rescale": CFG_RESCALE,
                         "refiner": ("LL_PIPELINE", {"tooltip":
                                     "Optional SDXL refiner that takes over the last refine_fraction of the "
                                     "schedule from the SDXL base (all of it where strength is lower). To "
                                     "refine finished images with the refiner alone, connect it as 'pipeline'."}),
                         "refine_fraction": REFINE_FRACTION},
        }

    def img2img(self, pipeline, sampler, prompts, image, strength, negative_prompt, steps, cfg, seed,
                images_per_prompt, mask=None, prompts_per_batch=1, cfg_rescale=-1.0, refiner=None,
                refine_fraction=0.2):
        # An SDXL refiner is welcome as 'pipeline': refining given images at a low strength is its own use.
        from ..core.generate import GenerateSettings, Refiner, img2img

        height, width = image.shape[1:3]
        if problem := pipeline.size_problem(width, height):
            raise ValueError(f"LoRA Lab: Img2Img: input 'image': {problem} (resize or crop it)")
        _check_refiner("Img2Img", pipeline, refiner, refine_fraction, width, height)
        settings = GenerateSettings(steps, cfg, seed, width, height, images_per_prompt, negative_prompt,
                                    prompts_per_batch, None if cfg_rescale < 0 else cfg_rescale)
        return img2img(pipeline, sampler, prompts, settings, image, strength, mask,
                       None if refiner is None else Refiner(refiner, refine_fraction))


NODE_CLASS_MAPPINGS = {
    "LoRALabPrompts": LoRALabPrompts,
    "LoRALabSampler": LoRALabSampler,
    "LoRALabGenerate": LoRALabGenerate,
    "LoRALabImg2Img": LoRALabImg2Img,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoRALabPrompts": "LoRA Lab: Prompts",
    "LoRALabSampler": "LoRA Lab: Sampler",
    "LoRALabGenerate": "LoRA Lab: Generate",
    "LoRALabImg2Img": "LoRA Lab: Img2Img",
}
