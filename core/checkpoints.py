"""Finding and loading real models offline: single-file SD1.x/SDXL checkpoints (the files ComfyUI
users keep in ``models/checkpoints``) and diffusers-format folders.

Single files load through diffusers' ``from_single_file`` with the architecture configs and the
tokenizer we ship in ``models/``, so nothing is fetched. Pickled ``.ckpt``/``.pt`` files are
accepted only when they load with ``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CONFIGS = {"sd1": MODELS_DIR / "configs" / "sd15", "sdxl": MODELS_DIR / "configs" / "sdxl",
           "sdxl_refiner": MODELS_DIR / "configs" / "sdxl_refiner"}
TOKENIZER = MODELS_DIR / "tokenizers" / "clip"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
DIFFUSERS_PREFIX = "diffusers: "

# Keys that identify a family (diffusers' CHECKPOINT_KEY_NAMES, single_file_utils.py).
SD1_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
INPAINT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
V_PRED_KEYS = ("v_pred", "edm_vpred.sigma_max", "edm_vpred.sigma_min")


class ModelError(ValueError):
    pass


def model_roots() -> list[Path]:
    """The host's model roots (headless: ``--models-dir``, default ``./models``; ComfyUI: its
    ``models`` folder)."""
    from .host import current

    return current().model_roots()


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def available_loras() -> dict[str, Path]:
    """LoRA files: ComfyUI's ``loras`` folder inside ComfyUI, ``<models-dir>/loras/**`` headless."""
    from .host import current

    return current().model_files("loras")


def _headless_diffusers_folders() -> dict[str, Path]:
    found = {}
    for root in model_roots():
        if not root.is_dir():
            continue
        for index in sorted(root.glob("**/model_index.json")):
            # Our own models/ (embedded model, weightless architecture configs) is listed apart.
            if len(index.relative_to(root).parts) <= 4 and not _is_within(index, MODELS_DIR):
                found.setdefault(DIFFUSERS_PREFIX + index.parent.relative_to(root).as_posix(), index.parent)
    return found


def available_models() -> dict[str, Path]:
    """Name -> path of every loadable model: ComfyUI's ``checkpoints`` inside ComfyUI, the model
    roots headless; plus diffusers folders under the model roots."""
    from .host import current

    found = {n: p for n, p in current().model_files("checkpoints").items() if n.lower().endswith(CHECKPOINT_SUFFIXES)}
    return {**found, **_headless_diffusers_folders()}


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a checkpoint, without reading the tensors of a safetensors file."""
    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise ModelError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e})") from None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return {k: tuple(v.shape) for k, v in load_pickle_safely(path).items() if hasattr(v, "shape")}
    raise ModelError(f"checkpoint {str(path)!r}: unsupported file type; use {', '.join(CHECKPOINT_SUFFIXES)}")


def load_pickle_safely(path: Path) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as e:
        raise ModelError(
            f"refusing {str(path)!r}: it is a pickle that does not load with weights_only=True (it may "
            f"contain code, or be damaged). Convert it to .safetensors with a tool you trust. ({e})") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {str(path)!r} holds no state dict")
    return state


def detect_family(keys: dict[str, tuple[int, ...]], name: str = "checkpoint", refiner: bool = False) -> str:
    """"sd1" or "sdxl" from the original (LDM) key layout, or "sdxl_refiner" when ``refiner`` is
    allowed; anything else gets a clear error."""
    if any(k in keys for k in V_PRED_KEYS):
        raise ModelError(f"{name} is a v-prediction model; LoRA Lab supports epsilon-prediction SD1.x and "
                         "SDXL checkpoints for now")
    if keys.get(INPAINT_KEY, (0, 0))[1:2] == (9,):
        raise ModelError(f"{name} is an inpainting model (9 input channels); use a standard checkpoint")
    if keys.get(SD2_KEY, (0,))[-1] == 1024:
        raise ModelError(f"{name} is a Stable Diffusion 2.x model (OpenCLIP-H, mostly v-prediction), "
                         "which is not supported; use SD1.x or SDXL")
    if SDXL_KEY in keys:
        return "sdxl"
    if SDXL_REFINER_KEY in keys:
        if refiner:
            return "sdxl_refiner"
        raise ModelError(f"{name} is the SDXL refiner; load the SDXL base model")
    if SD1_KEY in keys:
        return "sd1"
    sample = ", ".join(sorted(keys)[:3])
    raise ModelError(f"{name} is not a Stable Diffusion 1.x or SDXL checkpoint in the original (LDM) key "
                     f"layout (no '{SD1_KEY}' or '{SDXL_KEY}'; first keys: {sample or 'none'})")


def _tokenizers(family: str) -> dict:
    from transformers import CLIPTokenizer

    tokenizers = {"tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)}
    if family in ("sdxl", "sdxl_refiner"):  # OpenCLIP-bigG's tokenizer pads with "!" (id 0), not <|endoftext|>
        tokenizers["tokenizer_2"] = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77, pad_token="!")
    if family == "sdxl_refiner":  # the refiner has only the OpenCLIP-bigG encoder
        tokenizers["tokenizer"] = None
    return tokenizers


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    return {"sdxl": StableDiffusionXLPipeline, "sdxl_refiner": StableDiffusionXLImg2ImgPipeline}.get(
        family, StableDiffusionPipeline)


def load_single_file(path: Path, dtype, config_dir: Path | None = None):
    """(diffusers pipeline, family) from a single-file checkpoint, offline. An SDXL refiner loads as
    diffusers' refiner pipeline (StableDiffusionXLImg2ImgPipeline, OpenCLIP-bigG encoder only) with
    the shipped refiner config: family "sdxl_refiner", for Generate's refiner input."""
    family = detect_family(read_keys(path), f"checkpoint {path.name!r}", refiner=True)
    cls = _pipeline_class(family)
    extra = {"sd1": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
             "sdxl_refiner": {"text_encoder": None}}.get(family, {})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        try:
            pipe = cls.from_single_file(str(path), config=str(config_dir or CONFIGS[family]), local_files_only=True,
                                        torch_dtype=dtype, **_tokenizers(family), **extra)
        except (OSError, KeyError, RuntimeError, ValueError) as e:
            raise ModelError(f"checkpoint {str(path)!r} could not be loaded as "
                             f"{family.upper().replace('_', ' ')}: {e}") from e
    # diffusers leaves weights it found no key for on the meta device instead of failing.
    for name, module in pipe.components.items():
        missing = [k for k, v in getattr(module, "state_dict", dict)().items() if v.is_meta]
        if missing:
            raise ModelError(f"checkpoint {str(path)!r} is incomplete: {len(missing)} {name} weights are "
                             f"missing (e.g. {missing[0]})")
    return pipe, family


def load_diffusers_folder(folder: Path, dtype):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers import StableDiffusionXLImg2ImgPipeline as RefinerPipeline

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        try:
            pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"diffusers folder {str(folder)!r} could not be loaded offline: {e}") from e
    if isinstance(pipe, StableDiffusionXLPipeline):
        family = "sdxl"
    elif isinstance(pipe, RefinerPipeline) and pipe.config.get("requires_aesthetics_score"):
        family = "sdxl_refiner"  # stabilityai/stable-diffusion-xl-refiner-1.0's layout
    elif isinstance(pipe, StableDiffusionPipeline):
        family = "sd1"
    else:
        raise ModelError(f"diffusers folder {str(folder)!r} holds a {type(pipe).__name__}; "
                         "LoRA Lab supports StableDiffusionPipeline, StableDiffusionXLPipeline and the SDXL "
                         "refiner (StableDiffusionXLImg2ImgPipeline with requires_aesthetics_score)")
    if pipe.scheduler.config.get("prediction_type") == "v_prediction":
        raise ModelError(f"diffusers folder {str(folder)!r} is a v-prediction model; not supported yet")
    return pipe, family
