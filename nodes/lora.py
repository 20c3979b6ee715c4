"""Training, applying and saving LoRAs."""

from ..core.choices import DORA_NORMS, LR_SCHEDULES, OPTIMIZERS


class LoRALabTrainConfig:
    DESCRIPTION = ("Optimisation settings for Train LoRA: steps, batch, optimizer, learning-rate schedule, "
                   "clipping, seed.")
    CATEGORY = "LoRA Lab/train"
    RETURN_TYPES = ("LL_TRAIN_CONFIG",)
    RETURN_NAMES = ("train_config",)
    OUTPUT_TOOLTIPS = ("The training settings for Train LoRA.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": 200, "min": 1, "max": 1000000, "tooltip": "Optimizer steps."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Examples per micro-batch."}),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "Peak learning rate (seed 002: 5e-4; seed 004: 1e-4)."}),
            "lr_schedule": (list(LR_SCHEDULES), {"default": "constant", "tooltip":
                            "constant, linear decay or cosine annealing, each after warmup_steps."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                     "tooltip": "Seeds LoRA init, data order, timesteps and noise: same seed, same LoRA "
                                "(fixed: the editor never changes it on Run, so nothing retrains)."}),
        }, "optional": {
            "optimizer": (list(OPTIMIZERS), {"default": "adamw", "tooltip": "torch optimizer."}),
            "gradient_accumulation": ("INT", {"default": 1, "min": 1, "max": 256,
                                              "tooltip": "Micro-batches per optimizer step."}),
            "warmup_steps": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip": "Linear LR warmup."}),
            "weight_decay": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001,
                                       "tooltip": "Decoupled weight decay (AdamW)."}),
            "max_grad_norm": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                        "tooltip": "Gradient clipping by global norm; 0 = off."}),
            "checkpoint_every": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip":
                                 "Save a resumable checkpoint every N steps (0 = only at the end)."}),
            "epochs": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip":
                       "Passes over the data; > 0 overrides steps (seeds 002/004 count epochs)."}),
            "validation_every": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip":
                                 "Render a validation image every N steps with the LoRA so far (0 = never)."}),
            "validation_prompt": ("STRING", {"default": "", "tooltip":
                                  "Prompt of the validation images (empty = the first caption)."}),
            "mixed_precision": (["no", "bf16", "fp16"], {"default": "no", "tooltip":
                                "Autocast the UNet forward: bf16 (CPUs with bf16 support, recent GPUs) or fp16 "
                                "(GPU, with loss scaling). LoRA weights and optimizer stay fp32."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                                       "Recompute activations in the backward pass: less memory, more time."}),
            "fp32_math": (["highest", "fast"], {"default": "highest", "tooltip":
                          "fp32 layers' inner math: highest = true fp32; fast = TF32 on NVIDIA GPUs (like "
                          "--allow_tf32). No effect on CPUs (use mixed_precision bf16 there)."}),
            "beta1": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 0.9999, "step": 0.001, "round": False,
                      "tooltip": "Adam/AdamW β1 (SGD: momentum)."}),
            "beta2": ("FLOAT", {"default": 0.999, "min": 0.0, "max": 0.99999, "step": 0.0001, "round": False,
                      "tooltip": "Adam/AdamW β2 (seed 002: 0.999)."}),
            "caption_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                                "Fraction of examples trained without their caption (SD1: the empty prompt; "
                                "SDXL: zeros), so classifier-free guidance keeps working; pretraining uses 0.1."}),
        }}

    def build(self, steps, batch_size, learning_rate, lr_schedule, seed, optimizer="adamw",
              gradient_accumulation=1, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, checkpoint_every=0,
              mixed_precision="no", gradient_checkpointing=False, epochs=0, validation_every=0,
              validation_prompt="", fp32_math="highest", beta1=0.9, beta2=0.999, caption_dropout=0.0):
        from ..core.train import TrainSpec

        return (TrainSpec(steps=steps, batch_size=batch_size, grad_accum=gradient_accumulation, optimizer=optimizer,
                          lr=learning_rate, weight_decay=weight_decay, lr_schedule=lr_schedule,
                          warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, seed=seed,
                          checkpoint_every=checkpoint_every, mixed_precision=mixed_precision,
                          gradient_checkpointing=gradient_checkpointing, epochs=epochs,
                          validation_every=validation_every, validation_prompt=validation_prompt,
                          fp32_math=fp32_math, beta1=beta1, beta2=beta2, caption_dropout=caption_dropout),)


class LoRALabTrainLoRA:
    DESCRIPTION = ("Train a UNet LoRA on images and captions with the given noise strategy. Latents and "
                   "text embeddings are encoded once; checkpoints resume exactly (same run_name). "
                   "Returns the LoRA, the pipeline with it applied, and a cost row.")
    CATEGORY = "LoRA Lab/train"
    RETURN_TYPES = ("LL_LORA", "LL_PIPELINE", "LL_SCORES", "IMAGE")
    RETURN_NAMES = ("lora", "pipeline", "cost", "validation")
    OUTPUT_TOOLTIPS = ("The trained LoRA (save it with Save LoRA).", "The input pipeline with the LoRA merged in.",
                       "One row: training seconds, peak memory, trainable parameters, final loss.",
                       "The validation images rendered during training, in step order (empty if none).")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LL_PIPELINE", {"tooltip": "Base model."}),
            "noise": ("LL_NOISE", {"tooltip": "Noise strategy (LoRA Lab: Noise Strategy)."}),
            "lora_config": ("LL_LORA_CONFIG", {"tooltip": "LoRA settings (LoRA Lab: LoRA Config)."}),
            "train_config": ("LL_TRAIN_CONFIG", {"tooltip": "Optimisation settings (LoRA Lab: Train Config)."}),
            "run_name": ("STRING", {"default": "lora", "tooltip": "Checkpoints go to <output>/loralab_checkpoints/"
                                    "<run_name>; a run with the same name resumes from its last checkpoint."}),
        }, "optional": {
            "dataset": ("LL_DATASET", {"tooltip": "Images with captions (LoRA Lab: Image Folder Dataset); "
                                       "or give images and captions below."}),
            "images": ("IMAGE", {"tooltip": "Training images (a batch; width and height multiples of 8)."}),
            "captions": ("STRING", {"multiline": True, "default": "a photo in sks style", "tooltip":
                         "With images: one caption per line, one per image in order; or one for all."}),
            "distill": ("LL_DISTILL", {"tooltip": "LCM-LoRA distillation (LoRA Lab: LCM Distill Config) instead "
                                       "of the denoising loss: the Noise Strategy then gives only the beta "
                                       "schedule and prediction type. UNet LoRA only."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, run_name=None):
        from ..core.files import validate_name

        return validate_name(run_name)

    def train(self, pipeline, noise, lora_config, train_config, run_name, dataset=None, images=None,
              captions="a photo in sks style", distill=None):
        from ..core.lab_lora import apply_lora
        from ..core.scores import ScoreTable
        from ..core.train import train_from_images

        checkpoints = _checkpoint_folder("Train LoRA", run_name)
        if distill is not None:
            import dataclasses

            if not lora_config.train_unet or lora_config.text_encoder_rank:
                raise ValueError(f"LoRA Lab: Train LoRA: input 'distill': LCM distillation trains a UNet LoRA "
                                 f"only; got train_unet={lora_config.train_unet}, text_encoder_rank="
                                 f"{lora_config.text_encoder_rank} in lora_config")
            train_config = dataclasses.replace(train_config, distill=distill)
        images, lines, weights = _examples("Train LoRA", dataset, images, captions)
        try:
            lora = train_from_images(pipeline, images, lines, noise, lora_config, train_config, checkpoints, run_name,
                                     weights)
        except ValueError as e:  # settings that cannot train, or a checkpoint folder of another run
            raise ValueError(f"LoRA Lab: Train LoRA: run '{run_name}': {e}") from None
        try:
            applied, _ = apply_lora(pipeline, lora, 1.0, 1.0, name=run_name)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Train LoRA: input 'pipeline': {e}") from None
        row = {"model": applied.name, "lora": run_name, "rank": lora.rank, "alpha": lora.alpha,
               "train_seconds": lora.seconds, "train_peak_memory_mb": lora.peak_memory_mb,
               "trainable_parameters": lora.trainable_parameters, "final_loss": lora.losses[-1]}
        import torch

        shots = [batch for _, batch in lora.validation_images]
        validation = torch.cat(shots) if shots else torch.zeros(0, *images[0].shape[:2], 3)
        return (lora, applied, ScoreTable(("model", "lora"), [row]), validation)


def _checkpoint_folder(node: str, run_name: str):
    """``<output>/loralab_checkpoints/<run_name>`` (confined), cleared of half-written checkpoints."""
    from ..core import runtime
    from ..core.files import UnsafePathError, clean_stale_temp, confined_folder, relative_parts

    root, under = runtime.write_root("checkpoints")
    try:
        checkpoints = confined_folder(root, [*under, *relative_parts(run_name)])
    except UnsafePathError as e:
        raise ValueError(f"LoRA Lab: {node}: input 'run_name': {e}") from None
    # What core.train's checkpoint writer leaves behind when the process is killed mid-write.
    clean_stale_temp(checkpoints, (".checkpoint.", ".latest."))
    return checkpoints


def _examples(node: str, dataset, images, captions: str):
    """(images, captions, per-example weights or None) from a dataset or from images + caption lines."""
    if dataset is not None:
        return dataset.images, dataset.captions, dataset.weights or None
    if images is not None:
        return images, [c.strip() for c in captions.splitlines() if c.strip()], None
    raise ValueError(f"LoRA Lab: {node}: connect a dataset, or images (with captions)")


class LoRALabFineTune:
    DESCRIPTION = ("Full fine-tuning: every weight of the UNet (and of the text encoders, if chosen) trains, "
                   "as DreamBooth's and the pretraining recipes do; seed 003 compares it with LoRA. Same noise "
                   "strategy, train config, checkpoints and exact resume as Train LoRA. The input pipeline is "
                   "left unchanged: the result holds trained copies.")
    CATEGORY = "LoRA Lab/train"
    RETURN_TYPES = ("LL_PIPELINE", "LL_SCORES")
    RETURN_NAMES = ("pipeline", "cost")
    OUTPUT_TOOLTIPS = ("The fine-tuned model (the input's VAE and tokenizers, trained copies of the rest).",
                       "One row: training seconds, peak memory, trainable parameters, final loss.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LL_PIPELINE", {"tooltip": "Base model; loaded in fp32 (full fine-tuning trains its "
                                         "weights in place, on a copy)."}),
            "noise": ("LL_NOISE", {"tooltip": "Noise strategy (LoRA Lab: Noise Strategy)."}),
            "train_config": ("LL_TRAIN_CONFIG", {"tooltip": "Optimisation settings (LoRA Lab: Train Config); "
                                                 "full fine-tuning wants a lower learning rate than LoRA "
                                                 "(DreamBooth: 5e-6 on SD1.5)."}),
            "run_name": ("STRING", {"default": "finetune", "tooltip": "Checkpoints go to <output>/"
                                    "loralab_checkpoints/<run_name>; the same name resumes."}),
            "train_text_encoder": ("BOOLEAN", {"default": False, "tooltip":
                                   "Train the text encoder(s) too (SDXL: both)."}),
        }, "optional": {
            "dataset": ("LL_DATASET", {"tooltip": "Images with captions; or give images and captions below."}),
            "images": ("IMAGE", {"tooltip": "Training images (a batch)."}),
            "captions": ("STRING", {"multiline": True, "default": "a photo in sks style", "tooltip":
                         "With images: one caption per line, one per image in order; or one for all."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, run_name=None):
        from ..core.files import validate_name

        return validate_name(run_name)

    def train(self, pipeline, noise, train_config, run_name, train_text_encoder, dataset=None, images=None,
              captions="a photo in sks style"):
        from ..core.scores import ScoreTable
        from ..core.train import finetune_from_images

        checkpoints = _checkpoint_folder("Fine-tune Model", run_name)
        images, lines, weights = _examples("Fine-tune Model", dataset, images, captions)
        if weights:
            raise ValueError("LoRA Lab: Fine-tune Model: input 'dataset': per-example weights (prior "
                             "preservation) are supported by Train LoRA only for now")
        try:
            tuned, result = finetune_from_images(pipeline, images, lines, noise, train_config, train_text_encoder,
                                                 checkpoints, run_name)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Fine-tune Model: {e}") from None
        row = {"model": tuned.name, "lora": "", "rank": "full", "alpha": "",
               "train_seconds": result.seconds, "train_peak_memory_mb": result.peak_memory_mb,
               "trainable_parameters": result.trainable_parameters, "final_loss": result.losses[-1]}
        return (tuned, ScoreTable(("model", "lora"), [row]))


class LoRALabApplyLoRA:
    DESCRIPTION = ("Apply a LoRA to a pipeline with separate UNet and text-encoder strengths; the weights "
                   "are merged into copies, so sampling runs at full speed and the input is unchanged.")
    CATEGORY = "LoRA Lab/lora"
    RETURN_TYPES = ("LL_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The pipeline with the LoRA merged in.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LL_PIPELINE", {"tooltip": "Base model."}),
            "lora": ("LL_LORA", {"tooltip": "The LoRA to apply."}),
            "unet_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                        "tooltip": "Multiplier of the UNet update (0 = base model)."}),
            "text_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                        "tooltip": "Multiplier of the text-encoder update."}),
        }, "optional": {
            "dora_norm": (list(DORA_NORMS), {"default": "peft", "tooltip":
                          "DoRA LoRAs only. peft: m*(W+dW)/||W+dW|| (the paper, peft, diffusers, training). "
                          "comfyui: m*(W+dW)/||W||, what ComfyUI 0.8 computes (an open upstream bug), to see "
                          "a DoRA LoRA as ComfyUI shows it."}),
        }}

    def apply(self, pipeline, lora, unet_strength, text_strength, dora_norm="peft"):
        from ..core.lab_lora import apply_lora

        if lora.family != pipeline.family:
            raise ValueError(f"LoRA Lab: Apply LoRA: LoRA '{lora.name}' is for {lora.family}, the pipeline is "
                             f"{pipeline.family}")
        if dora_norm not in DORA_NORMS:
            raise ValueError(f"LoRA Lab: Apply LoRA: input 'dora_norm' = {dora_norm!r} is not one of "
                             f"{', '.join(DORA_NORMS)}")
        try:
            applied, unmatched = apply_lora(pipeline, lora, unet_strength, text_strength, dora_norm)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Apply LoRA: LoRA '{lora.name}': {e}") from None
        if unmatched:
            raise ValueError(f"LoRA Lab: Apply LoRA: {len(unmatched)} LoRA modules are not in this model "
                             f"(e.g. {unmatched[0]}); was it trained on another architecture?")
        return (applied,)


class LoRALabSaveLoRA:
    DESCRIPTION = ("Save a LoRA as .safetensors with kohya keys and ss_* metadata, which ComfyUI, A1111, "
                   "kohya and diffusers all load (or in diffusers/peft layout on request). Inside ComfyUI it "
                   "goes to ComfyUI's loras folder (models/loras), headless to <output>/loras; a leading "
                   "'loras/' in the prefix is dropped, so both give the same file name.")
    CATEGORY = "LoRA Lab/lora"
    RETURN_TYPES = ("LL_SCORES",)
    RETURN_NAMES = ("cost",)
    OUTPUT_TOOLTIPS = ("One row (keys model = '<base> + <lora>' as Generate names the LoRA's images, lora): "
                       "rank, alpha, trainable parameters, training seconds and peak memory, file size in bytes.",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": ("LL_LORA", {"tooltip": "The LoRA to save."}),
            "filename_prefix": ("STRING", {"default": "loralab/lora", "tooltip":
                                "File name prefix inside ComfyUI's loras folder (models/loras), headless "
                                "<output>/loras; a leading 'loras/' is dropped ('loras/x' and 'x' are the same)."}),
        }, "optional": {
            "layout": (["kohya", "diffusers"], {"default": "kohya", "tooltip":
                       "kohya: lora_unet_/lora_te_ keys with alpha (ComfyUI, A1111, kohya, diffusers load it). "
                       "diffusers: peft keys (unet.<module>.lora_A.weight) with the peft config in the "
                       "metadata, as diffusers' save_lora_weights writes them."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        from ..core.files import validate_name

        return validate_name(filename_prefix)

    def save(self, lora, filename_prefix, layout="kohya"):
        from ..core import runtime
        from ..core.files import UnsafePathError, relative_parts, safe_prefix_path, write_numbered
        from ..core.lora_files import compatibility_warning, save_lora_file, to_diffusers

        root, under = runtime.write_root("loras")
        try:
            parts = relative_parts(filename_prefix)
            if parts[0] == "loras" and len(parts) > 1:
                # ComfyUI's own Save LoRA writes to output/loras/, so prefixes often start with 'loras/';
                # this root is a loras folder already.
                parts = parts[1:]
            folder, stem = safe_prefix_path(root, "/".join(parts), under)
        except UnsafePathError as e:
            raise ValueError(f"LoRA Lab: Save LoRA: input 'filename_prefix': {e}") from None
        tensors, metadata = lora.tensors, lora.metadata
        warning = compatibility_warning(lora.tensors)
        if warning:  # not an error: ComfyUI and newer diffusers load the whole file
            import logging

            logging.getLogger("loralab").warning("LoRA Lab: Save LoRA: %s: %s", lora.name, warning)
            metadata = {**metadata, "loralab_warning": warning}
        if layout == "diffusers":
            try:
                tensors, peft_metadata = to_diffusers(tensors, lora.family)
            except ValueError as e:
                raise ValueError(f"LoRA Lab: Save LoRA: input 'layout' = 'diffusers': {e}") from None
            metadata = {**metadata, **peft_metadata}
        elif layout != "kohya":
            raise ValueError(f"LoRA Lab: Save LoRA: input 'layout' = {layout!r} is not one of kohya, diffusers")
        _, (path,) = write_numbered(folder, stem, {"safetensors": lambda p: save_lora_file(tensors, metadata, p)})
        from ..core.runtime import is_main_process
        from ..core.scores import ScoreTable

        # the input LoRA is left as it is (other nodes share it); processes 1..N-1 write nothing
        size = path.stat().st_size if is_main_process() else None

        row = {"model": f"{lora.base_model} + {lora.name}", "lora": lora.name, "rank": lora.rank, "alpha": lora.alpha,
               "trainable_parameters": lora.trainable_parameters, "train_seconds": lora.seconds,
               "train_peak_memory_mb": lora.peak_memory_mb, "file_size_bytes": size,
               "layout": layout, "file": path.name, **({"warning": warning} if warning else {})}
        return {"ui": {"text": [str(path)]}, "result": (ScoreTable(("model", "lora"), [row]),)}


class LoRALabLoadLoRA:
    DESCRIPTION = ("Load a LoRA file: kohya layout (A1111/kohya/LoRA Lab), ComfyUI's own trainer layout, or "
                   "diffusers/peft layout. Only .safetensors files are read.")
    CATEGORY = "LoRA Lab/lora"
    RETURN_TYPES = ("LL_LORA",)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The LoRA, ready for Apply LoRA or Blend LoRAs.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.checkpoints import available_loras

        return {"required": {"lora_name": (list(available_loras()) or ["(no LoRA files found)"], {"tooltip":
                             "Inside ComfyUI: models/loras. Headless: <models-dir>/loras (default ./models/loras)."})}}

    def load(self, lora_name):
        from ..core.checkpoints import available_loras
        from ..core.lab_lora import LabLoRA
        from ..core.lora_files import read_lora_file

        files = available_loras()
        if lora_name not in files:
            raise ValueError(f"LoRA Lab: Load LoRA: input 'lora_name' = {lora_name!r} is not a LoRA file here; "
                             f"found: {', '.join(files) or 'none'}")
        try:
            tensors, meta = read_lora_file(files[lora_name])
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Load LoRA: input 'lora_name' = {lora_name!r}: {e}") from None
        # rank 0: only full weight offsets (.diff/.diff_b, ComfyUI's trainer), no low-rank pair
        rank = next((int(v.shape[0]) for k, v in tensors.items() if k.endswith(".lora_down.weight")), 0)
        alpha = next((float(v) for k, v in tensors.items() if k.endswith(".alpha")), float(rank))
        family = "sdxl" if any(k.startswith(("lora_te1_", "lora_te2_", "diffusion_model.label_emb")) for k in tensors) \
            or meta.get("ss_base_model_version", "").startswith("sdxl") else "sd1"
        lora = LabLoRA(tensors, rank, alpha, family, lora_name, meta, file_size_bytes=files[lora_name].stat().st_size)
        try:
            _ = lora.schedule  # a damaged or hostile schedule is refused here, not when sampling
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Load LoRA: input 'lora_name' = {lora_name!r}: {e}") from None
        return (lora,)


class LoRALabBlendLoRAs:
    DESCRIPTION = ("Weighted merge of two LoRAs: w*A + (1-w)*B of their weight updates (style "
                   "interpolation, seed 004). Exact by default; a target rank re-ranks each module by SVD.")
    CATEGORY = "LoRA Lab/lora"
    RETURN_TYPES = ("LL_LORA",)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The blended LoRA.",)
    FUNCTION = "blend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_a": ("LL_LORA", {"tooltip": "First LoRA."}),
            "lora_b": ("LL_LORA", {"tooltip": "Second LoRA."}),
            "weight_a": ("FLOAT", {"default": 0.5, "min": -2.0, "max": 3.0, "step": 0.01,
                                   "tooltip": "w: the blend is w*A + (1-w)*B."}),
            "rank": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip":
                     "0 = exact (ranks add up); otherwise the best rank-r approximation per module (SVD)."}),
        }}

    def blend(self, lora_a, lora_b, weight_a, rank):
        from ..core.lab_lora import LabLoRA
        from ..core.lora_files import blend
        from ..core.pipeline import describe_schedule

        if lora_a.family != lora_b.family:
            raise ValueError(f"LoRA Lab: Blend LoRAs: {lora_a.name} is {lora_a.family}, "
                             f"{lora_b.name} is {lora_b.family}")
        sa, sb = lora_a.schedule or {}, lora_b.schedule or {}
        if any(sa[k] != sb[k] for k in sa.keys() & sb.keys()):
            a, b = describe_schedule(sa), describe_schedule(sb)
            raise ValueError(f"LoRA Lab: Blend LoRAs: {lora_a.name} trained with {a}, {lora_b.name} with {b}; "
                             "LoRAs for different noise schedules do not blend")
        try:
            tensors = blend([lora_a.tensors, lora_b.tensors], [weight_a, 1 - weight_a], rank or None)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Blend LoRAs: {lora_a.name} and {lora_b.name}: {e}") from None
        down = next(v for k, v in tensors.items() if k.endswith(".lora_down.weight"))
        name = f"{weight_a:g}*{lora_a.name}+{1 - weight_a:g}*{lora_b.name}"
        meta = {**lora_a.metadata, "ss_network_dim": str(down.shape[0]), "ss_network_alpha": str(down.shape[0]),
                "loralab_blend": name}
        return (LabLoRA(tensors, int(down.shape[0]), float(down.shape[0]), lora_a.family, name, meta),)


class LoRALabLCMDistillConfig:
    DESCRIPTION = ("LCM-LoRA distillation settings for Train LoRA (Luo et al. 2023; diffusers' "
                   "train_lcm_distill_lora_sd_wds.py): the LoRA learns to jump from any point of the base "
                   "model's guided DDIM trajectory to its end, so the LCM sampler makes images in 2-8 steps "
                   "at CFG 1. The teacher is the base model itself (the LoRA switched off).")
    CATEGORY = "LoRA Lab/distill"
    RETURN_TYPES = ("LL_DISTILL",)
    RETURN_NAMES = ("distill",)
    OUTPUT_TOOLTIPS = ("Connect to Train LoRA's 'distill' input.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.choices import LCM_LOSSES

        return {"required": {
            "ddim_steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip":
                           "DDIM solver steps N of the teacher's trajectory (skip k = 1000/N timesteps)."}),
            "w_min": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                "tooltip": "Smallest guidance scale w drawn per example (LCM's w; CFG = w + 1)."}),
            "w_max": ("FLOAT", {"default": 15.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                "tooltip": "Largest guidance scale w drawn per example."}),
            "loss": (list(LCM_LOSSES), {"default": "huber", "tooltip":
                     "huber: sqrt(d^2 + c^2) - c (the LCM-LoRA paper); l2: squared error."}),
        }, "optional": {
            "huber_c": ("FLOAT", {"default": 0.001, "min": 1e-6, "max": 1.0, "step": 0.0001, "round": False,
                                  "tooltip": "Huber loss c."}),
            "timestep_scaling": ("FLOAT", {"default": 10.0, "min": 0.1, "max": 1000.0, "step": 0.1, "tooltip":
                                 "Boundary-condition timestep scaling (LCMScheduler's timestep_scaling)."}),
        }}

    def build(self, ddim_steps, w_min, w_max, loss, huber_c=0.001, timestep_scaling=10.0):
        from ..core.distill import LCMSpec

        if w_min > w_max:
            raise ValueError(f"LoRA Lab: LCM Distill Config: input 'w_min': {w_min} exceeds w_max {w_max}")
        return (LCMSpec(ddim_steps, w_min, w_max, loss, huber_c, timestep_scaling),)


NODE_CLASS_MAPPINGS = {"LoRALabTrainConfig": LoRALabTrainConfig, "LoRALabTrainLoRA": LoRALabTrainLoRA,
                       "LoRALabLCMDistillConfig": LoRALabLCMDistillConfig, "LoRALabFineTune": LoRALabFineTune,
                       "LoRALabApplyLoRA": LoRALabApplyLoRA, "LoRALabSaveLoRA": LoRALabSaveLoRA,
                       "LoRALabLoadLoRA": LoRALabLoadLoRA, "LoRALabBlendLoRAs": LoRALabBlendLoRAs}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabTrainConfig": "LoRA Lab: Train Config",
                              "LoRALabTrainLoRA": "LoRA Lab: Train LoRA",
                              "LoRALabLCMDistillConfig": "LoRA Lab: LCM Distill Config",
                              "LoRALabFineTune": "LoRA Lab: Fine-tune Model",
                              "LoRALabApplyLoRA": "LoRA Lab: Apply LoRA", "LoRALabSaveLoRA": "LoRA Lab: Save LoRA",
                              "LoRALabLoadLoRA": "LoRA Lab: Load LoRA", "LoRALabBlendLoRAs": "LoRA Lab: Blend LoRAs"}
