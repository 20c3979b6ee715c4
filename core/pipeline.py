"""``LL_PIPELINE``: a bundle of diffusers components and what we know about them.

torch is imported inside the functions: node declarations read the choices below at ComfyUI
start-up, which must stay light."""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checkpoints import DIFFUSERS_PREFIX, MODELS_DIR, ModelError, available_models

if TYPE_CHECKING:
    import torch

WORLD_DIR = MODELS_DIR / "world"
# The world's models share one VAE and the CLIP tokenizer (models/build_world.py trains them).
EMBEDDED = {"embedded: world-student": WORLD_DIR / "student", "embedded: world-teacher": WORLD_DIR / "teacher",
            "embedded: tiny-sd": MODELS_DIR / "tiny-sd",
            "embedded: tiny-sdxl-refiner": MODELS_DIR / "tiny-sdxl-refiner"}
# Random-weight SDXL refiner (models/build_tiny.py) on the world's VAE, so it continues world-teacher's latents.
WORLD_VAE_MODELS = {"embedded: world-student", "embedded: world-teacher", "embedded: tiny-sdxl-refiner"}
DEFAULT_MODEL = "embedded: world-student"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ATTENTION = ("auto", "sdpa", "sliced")
VAE_MODES = ("auto", "full", "sliced", "tiled")
OFFLOAD = ("none", "model", "sequential")
# "auto" VAE: decode in tiles above this many pixels (4 MP: 2048 x 2048), where a full decode
# of an SD VAE needs tens of GiB.
TILE_ABOVE_PIXELS = 2048 * 2048


@dataclass
class LabPipeline:
    """``LL_PIPELINE``: shared diffusers components and the LoRAs applied to them as patches. Use
    ``pipe``: reading it makes the shared modules carry this pipeline's patches (core/patches.py),
    so views of one model never copy it."""

    base: object  # diffusers StableDiffusionPipeline or StableDiffusionXLPipeline, shared between views
    name: str
    family: str  # "sd1", "sdxl" or "sdxl_refiner" (only Generate's refiner input and Img2Img take a refiner)
    vae_mode: str = "auto"
    loras: list = field(default_factory=list)
    schedule_from: str = ""  # the applied LoRA whose training schedule the scheduler follows, if any
    patches: tuple = ()  # core.patches.Patch, in the order applied

    @property
    def pipe(self):
        """The diffusers pipeline, its modules carrying exactly this view's LoRAs."""
        from .patches import activate

        activate(self.base, self.patches)
        return self.base

    @property
    def device(self) -> torch.device:
        return self.base._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.unet.dtype

    @property
    def native_size(self) -> int:
        return self.base.unet.config.sample_size * self.base.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        return self.base.vae_scale_factor * 2 ** (len(self.base.unet.config.block_out_channels) - 1)

    def size_problem(self, width: int, height: int) -> str | None:
        """Why this model cannot render ``width`` x ``height`` (None when it can)."""
        for name, value in (("width", width), ("height", height)):
            if value % self.size_multiple:
                return f"{name} {value} is not a multiple of {self.size_multiple}, which this model needs"
        return None

    def with_scheduler(self, scheduler):
        """A shallow copy of the diffusers pipeline that samples with ``scheduler``: the weights
        are shared and the original keeps its own scheduler (several samplers share one model)."""
        pipe = copy.copy(self.pipe)
        pipe.scheduler = scheduler
        return pipe

    def prepare_vae(self, width: int, height: int, batch: int) -> None:
        """Set the VAE's slicing/tiling for one decode (set every time: the VAE is shared)."""
        mode = self.vae_mode
        if mode == "auto":
            mode = "tiled" if width * height > TILE_ABOVE_PIXELS else "sliced" if batch > 1 else "full"
        vae = self.base.vae
        vae.use_tiling = mode == "tiled"
        vae.use_slicing = mode in ("sliced", "tiled")


def scheduler_for(scheduler, schedule: dict | None):
    """``scheduler`` when it already samples with ``schedule`` (scheduler-config keys; None: no
    wish), else a new scheduler of its class from its config updated with them. Zero terminal SNR
    comes with trailing timestep spacing, which starts sampling at the last (pure-noise) step as
    Lin et al. 2023 require (our samplers' schedules start there anyway)."""
    from .noise import schedule_of

    if not schedule:
        return scheduler
    current = schedule_of(scheduler.config)
    wanted = {**current, **schedule}
    if wanted == current:
        return scheduler
    spacing = {"timestep_spacing": "trailing"} if wanted["rescale_betas_zero_snr"] else {}
    return type(scheduler).from_config({**dict(scheduler.config), **wanted, **spacing})


def describe_schedule(config) -> str:
    from .noise import schedule_of

    s = schedule_of(config)
    betas = "trained betas" if s["trained_betas"] is not None else f"{s['beta_schedule']} betas"
    return f"{s['prediction_type']}, {betas}" + (", zero terminal SNR" if s["rescale_betas_zero_snr"] else "")


def model_choices() -> list[str]:
    return list(EMBEDDED) + list(available_models())


def model_signature(name: str) -> str:
    """Size and modification time of a model's files: a replaced file is a different model to the
    runner's caches even under the same name."""
    path = EMBEDDED.get(name) or available_models().get(name)
    if path is None:
        return name
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    if name in WORLD_VAE_MODELS:
        files += sorted((WORLD_DIR / "vae").glob("*.safetensors"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())


def resolve_device(device: str) -> torch.device:
    import torch

    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # one process per GPU (accelerate launch, torchrun): each takes its own
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # Half precision only where it is fast and safe; CPU matmuls in fp16 are slow or missing.
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, DTYPES[dtype])


def load_pipeline(name: str, dtype: str = "auto", device: str = "auto", attention: str = "auto",
                  vae: str = "auto", offload: str = "none") -> LabPipeline:
    """Load a model by name. Weights are created outside inference mode even though ComfyUI
    runs nodes inside it: inference tensors could never take part in LoRA training later."""
    import torch

    for option, value, valid in (("attention", attention, ATTENTION), ("vae", vae, VAE_MODES),
                                 ("offload", offload, OFFLOAD)):
        if value not in valid:
            raise ModelError(f"{option} {value!r} is not one of {', '.join(valid)}")
    dev = resolve_device(device)
    if offload != "none" and dev.type != "cuda":
        raise ModelError(f"offload {offload!r} moves weights between CPU and GPU; it needs device cuda "
                         f"(got {dev.type})")
    with torch.inference_mode(False):
        pipe, family = _load(name, resolve_dtype(dtype, dev))
    place(pipe, dev, attention, offload)
    return LabPipeline(pipe, name=name, family=family, vae_mode=vae)


def place(pipe, device: torch.device, attention: str = "auto", offload: str = "none") -> None:
    """Put a diffusers pipeline on ``device`` with its attention and offload options."""
    pipe.set_progress_bar_config(disable=True)
    if attention == "sliced":
        pipe.enable_attention_slicing()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def _load(name: str, dtype):
    from diffusers import StableDiffusionPipeline

    from .checkpoints import load_diffusers_folder, load_single_file

    if name in WORLD_VAE_MODELS:
        return _load_world(EMBEDDED[name], dtype)
    if name in EMBEDDED:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works on every version.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                EMBEDDED[name], torch_dtype=dtype, local_files_only=True, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        return pipe, "sd1"
    models = available_models()
    if name not in models:
        shown = ", ".join(model_choices()[:10])
        raise ModelError(f"model {name!r} not found; available: {shown} (checkpoints go in ComfyUI's "
                         "models/checkpoints, or headless in <models-dir>/checkpoints)")
    if name.startswith(DIFFUSERS_PREFIX):
        return load_diffusers_folder(models[name], dtype)
    return load_single_file(models[name], dtype)


def _load_world(folder, dtype):
    """A world model (or the tiny refiner): its own UNet, text encoder(s) and scheduler, plus the
    shared world VAE and the CLIP tokenizer(s) (fp16 files, loaded in ``dtype``)."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    from .checkpoints import _tokenizers

    index = json.loads((folder / "model_index.json").read_text())
    family = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl_refiner"}.get(
        index["_class_name"], "sd1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        vae = AutoencoderKL.from_pretrained(WORLD_DIR / "vae", torch_dtype=dtype, local_files_only=True)
        extra = {} if family != "sd1" else {"safety_checker": None, "feature_extractor": None,
                                            "requires_safety_checker": False}
        pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, vae=vae,
                                                 **_tokenizers(family), **extra)
    return pipe, family
