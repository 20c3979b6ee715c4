"""Record what ComfyUI's KSampler computes on LoRA Lab's embedded tiny UNet, as test data.

Run by hand (not by CI), in a virtual environment with ComfyUI's requirements plus diffusers:

    python tests/manual/record_comfy_sampling.py /path/to/ComfyUI

It writes tests/data/comfy_sampling/ksampler.safetensors. Nothing of ComfyUI is copied: its own
functions run here and only their results are stored. The path is KSampler's: the sigmas from
``KSampler.calculate_sigmas`` (which adds a step and drops the penultimate sigma for uni_pc), the
noise from ``comfy.sample.prepare_noise``, the sampler from ``comfy.samplers.sampler_object`` with
``extra_args = {"seed": seed}`` as ``CFGGuider`` passes it. ComfyUI's own UNet code is not used:
the diffusers UNet of the embedded model stands in for it, behind a stand-in for ComfyUI's
``BaseModel.apply_model`` + ``cfg_function`` (input scaled by 1/sqrt(1+sigma^2), the timestep from
``model_sampling.timestep``, denoised = x - sigma*eps, CFG on the denoised predictions).
Stored per sampler x schedule x steps: the sigmas, the integer timesteps the UNet was given
(in call order) and the final latent (before ``process_latent_out``, i.e. in diffusers' units).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "comfy_sampling" / "ksampler.safetensors"
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim", "uni_pc",
            "uni_pc_bh2", "lcm"]
STEPS = (4, 20)
SEED, CFG, SIZE = 7, 6.0, 32
PROMPT, NEGATIVE = "a photo of a cat", "blurry"
# ComfyUI's one noise stream for a whole batch (prepare_noise, one step-noise generator, one
# Brownian tree): recorded for the samplers that draw step noise.
BATCH_CASES = [("euler_ancestral", "normal"), ("dpmpp_2m_sde", "karras"), ("dpmpp_sde", "normal"), ("lcm", "normal")]
# Image to image: KSampler with denoise < 1 on a given latent (stored), and with a noise mask
# (Set Latent Noise Mask; ddim keeps the unmasked area with noise of its own).
IMG2IMG_CASES = [("euler", "normal"), ("dpmpp_2m", "karras"), ("dpmpp_2m_sde", "normal"), ("uni_pc", "simple")]
MASK_CASES = [("euler", "normal"), ("ddim", "normal"), ("euler_ancestral", "karras")]
IMG2IMG_STEPS, IMG2IMG_DENOISE, MASK_DENOISE = 6, 0.5, 0.8


def import_comfy(comfy_dir: str):
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers

    return comfy


def model_sampling_for(comfy, scheduler_config):
    """ComfyUI's eps model sampling for SD's config. ComfyUI's "linear" β schedule is the LDM one,
    linspace(√β0, √β1)², which diffusers calls scaled_linear."""
    assert scheduler_config["beta_schedule"] == "scaled_linear"
    assert scheduler_config["prediction_type"] == "epsilon"

    class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    config = SimpleNamespace(sampling_settings={"beta_schedule": "linear",
                                                "linear_start": scheduler_config["beta_start"],
                                                "linear_end": scheduler_config["beta_end"]})
    return ModelSampling(config)


class Guider:
    """Stands in for ComfyUI's CFGGuider around a BaseModel: what k-diffusion's samplers call."""

    def __init__(self, unet, model_sampling, cond, uncond, cfg):
        self.unet, self.cond, self.uncond, self.cfg = unet, cond, uncond, cfg
        # BaseModel.scale_latent_inpaint: the kept area, the input noised to σ.
        self.inner_model = SimpleNamespace(model_sampling=model_sampling, scale_latent_inpaint=lambda sigma, noise,
                                           latent_image, **kw: model_sampling.noise_scaling(
                                               sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1)), noise,
                                               latent_image))
        self.model_patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.timesteps: list[int] = []

    def __call__(self, x, sigma, model_options=None, seed=None):
        ms = self.inner_model.model_sampling
        xc = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        self.timesteps += [int(v) for v in t]
        batch = x.shape[0]
        eps = self.unet(torch.cat([xc, xc]), torch.cat([t, t]),
                        encoder_hidden_states=torch.cat([self.cond.expand(batch, -1, -1),
                                                         self.uncond.expand(batch, -1, -1)])).sample
        cond, uncond = ms.calculate_denoised(torch.cat([sigma, sigma]), eps.float(), torch.cat([x, x])).chunk(2)
        return uncond + (cond - uncond) * self.cfg  # comfy.samplers.cfg_function


def ksampler_run(comfy, guider, name, schedule, steps, batch, latent=None, denoise=None, mask=None):
    """KSampler.sample's path. ``latent`` is given in the model's units (what ``process_latent_in``
    returns); ``mask`` at latent size (what ``prepare_mask`` returns)."""
    model = SimpleNamespace(get_model_object=lambda key: guider.inner_model.model_sampling)
    ksampler = comfy.samplers.KSampler(model, steps, "cpu", sampler=name, scheduler=schedule, denoise=denoise)
    assert ksampler.sampler == name and ksampler.scheduler == schedule
    latent = torch.zeros(batch, 4, SIZE // 4, SIZE // 4) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, SEED)
    guider.timesteps = []
    extra_args = {"model_options": {}, "seed": SEED}
    out = comfy.samplers.sampler_object(name).sample(guider, ksampler.sigmas.clone(), extra_args, None, noise,
                                                     latent, mask, True)
    return ksampler.sigmas, torch.tensor(guider.timesteps, dtype=torch.int32), out.float(), noise


@torch.inference_mode()
def main(comfy_dir: str) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    comfy = import_comfy(comfy_dir)
    pipe = StableDiffusionPipeline.from_pretrained(REPO / "models" / "tiny-sd", local_files_only=True,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    guider = Guider(pipe.unet, model_sampling_for(comfy, pipe.scheduler.config), cond, uncond, CFG)
    tensors = {"cond": cond.contiguous(), "uncond": uncond.contiguous()}
    cases = [(n, s, k, 1) for n in SAMPLERS for s in comfy.samplers.SCHEDULER_NAMES for k in STEPS]
    cases += [(n, s, 4, 2) for n, s in BATCH_CASES]
    for name, schedule, steps, batch in cases:
        sigmas, timesteps, latent, noise = ksampler_run(comfy, guider, name, schedule, steps, batch)
        key = f"{name}/{schedule}/{steps}/{batch}"
        tensors.update({f"{key}/sigmas": sigmas.float().contiguous(), f"{key}/timesteps": timesteps,
                        f"{key}/latent": latent.contiguous()})
        tensors[f"noise/{batch}"] = noise.contiguous()
        print(key, f"{latent.abs().mean():.4f}", flush=True)
    start = torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(123))
    mask = torch.zeros(1, 4, SIZE // 4, SIZE // 4)
    mask[..., : SIZE // 8] = 1.0
    tensors.update({"img2img/start": start, "img2img/mask": mask})
    runs = [(f"img2img/{n}/{s}", n, s, IMG2IMG_DENOISE, None) for n, s in IMG2IMG_CASES]
    runs += [(f"masked/{n}/{s}", n, s, MASK_DENOISE, mask) for n, s in MASK_CASES]
    for key, name, schedule, denoise, noise_mask in runs:
        sigmas, timesteps, latent, _ = ksampler_run(comfy, guider, name, schedule, IMG2IMG_STEPS, 1, start.clone(),
                                                    denoise, noise_mask)
        tensors.update({f"{key}/sigmas": sigmas.float().contiguous(), f"{key}/timesteps": timesteps,
                        f"{key}/latent": latent.contiguous()})
        print(key, f"{latent.abs().mean():.4f}", flush=True)
    import comfyui_version

    meta = {"comfyui": comfyui_version.__version__, "seed": SEED, "cfg": CFG, "size": SIZE, "prompt": PROMPT,
            "negative": NEGATIVE, "schedules": comfy.samplers.SCHEDULER_NAMES, "samplers": SAMPLERS,
            "steps": list(STEPS), "batch_cases": BATCH_CASES, "torch": torch.__version__,
            "img2img_steps": IMG2IMG_STEPS, "img2img_denoise": IMG2IMG_DENOISE, "mask_denoise": MASK_DENOISE,
            "img2img_cases": IMG2IMG_CASES, "mask_cases": MASK_CASES}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT, metadata={"recording": json.dumps(meta)})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
