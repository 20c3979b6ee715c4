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
                            "constant, linear decay, cosine annealing, cosine with lr_cycles hard restarts or "
                            "polynomial decay (lr_power), each after warmup_steps."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                     "tooltip": "Seeds LoRA init, data order, timesteps and noise: same seed, same LoRA "
                                "(fixed: the editor never changes it on Run, so nothing retrains)."}),
        }, "optional": {
            "optimizer": (list(OPTIMIZERS), {"default": "adamw", "tooltip":
                          "adamw/adam/sgd (torch); prodigy (learning rate is a multiplier: use 1.0); adafactor "
                          "(fixed LR); adamw_8bit (bitsandbytes, CUDA GPU only); adamw_schedulefree (its own "
                          "warm-up, lr_schedule constant)."}),
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
            "lr_cycles": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip":
                          "cosine_with_restarts: number of hard restarts (kohya lr_scheduler_num_cycles)."}),
            "lr_power": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.1, "tooltip":
                         "polynomial: decay power to 1e-7 (1 = linear; kohya lr_scheduler_power)."}),
            "tag_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                            "Drop each comma-separated tag of a caption at this rate (kohya "
                            "caption_tag_dropout_rate); captions are then encoded every step."}),
            "keep_tags": ("INT", {"default": 0, "min": 0, "max": 255, "tooltip":
                          "The first N tags are never dropped (kohya keep_tokens), e.g. the trigger word."}),
            "validation_loss_every": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip":
                                      "Measure the loss on held-out examples every N steps (and at step 0 and "
                                      "the end); 0 = never. Fixed timesteps and noise: comparable across "
                                      "runs and resumes. Needs validation_fraction or a validation_dataset."}),
            "validation_fraction": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.01, "tooltip":
                                    "Without a validation_dataset on Train LoRA: hold out this fraction of the "
                                    "training images (seeded; they are not trained on)."}),
            "validation_timesteps": ("INT", {"default": 4, "min": 1, "max": 1000, "tooltip":
                                     "Fixed timesteps per held-out example (midpoints of equal bins of the "
                                     "schedule)."}),
            "ema_decay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99999, "step": 0.0001, "round": False,
                          "tooltip": "EMA of the trained weights (0 = off; e.g. 0.999). The LoRA out (and the "
                                     "validation images) are the EMA; Save LoRA can write the raw weights instead."}),
            "ema_warmup": ("BOOLEAN", {"default": False, "tooltip":
                           "EMA warm-up 1 - (1 + n)^(-2/3) (diffusers' use_ema_warmup) instead of "
                           "(1 + n) / (10 + n), each capped at ema_decay."}),
            "ema_every": ("INT", {"default": 1, "min": 1, "max": 100000, "tooltip":
                          "Update the EMA every N optimizer steps (OneTrainer ema_update_step_interval)."}),
            "tensorboard": ("BOOLEAN", {"default": False, "tooltip":
                            "Write TensorBoard event files (loss, LR, grad norm, validation loss, validation "
                            "images) to <output>/loralab_checkpoints/<run_name>/tensorboard; needs the "
                            "tensorboard package."}),
            "unmasked_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                "Masked loss (when the examples have masks): the loss weight where the mask is "
                                "0 (OneTrainer unmasked_weight; kohya's masked_loss is 0)."}),
            "normalize_masked_loss": ("BOOLEAN", {"default": False, "tooltip":
                                      "Divide each masked example's loss by its mean weight (OneTrainer "
                                      "normalize_masked_area_loss), so small masks are not down-weighted."}),
        }}

    def build(self, steps, batch_size, learning_rate, lr_schedule, seed, optimizer="adamw",
              gradient_accumulation=1, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, checkpoint_every=0,
              mixed_precision="no", gradient_checkpointing=False, epochs=0, validation_every=0,
              validation_prompt="", fp32_math="highest", beta1=0.9, beta2=0.999, caption_dropout=0.0,
              lr_cycles=1, lr_power=1.0, tag_dropout=0.0, keep_tags=0, validation_loss_every=0,
              validation_fraction=0.0, validation_timesteps=4, ema_decay=0.0, ema_warmup=False, ema_every=1,
              tensorboard=False, unmasked_weight=0.0, normalize_masked_loss=False):
        from ..core.train import TrainSpec

        return (TrainSpec(steps=steps, batch_size=batch_size, grad_accum=gradient_accumulation, optimizer=optimizer,
                          lr=learning_rate, weight_decay=weight_decay, lr_schedule=lr_schedule,
                          warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, seed=seed,
                          checkpoint_every=checkpoint_every, mixed_precision=mixed_precision,
                          gradient_checkpointing=gradient_checkpointing, epochs=epochs,
                          validation_every=validation_every, validation_prompt=validation_prompt,
                          fp32_math=fp32_math, beta1=beta1, beta2=beta2, caption_dropout=caption_dropout,
                          lr_cycles=lr_cycles, lr_power=lr_power, tag_dropout=tag_dropout, keep_tags=keep_tags,
                          validation_loss_every=validation_loss_every, validation_fraction=validation_fraction,
                          validation_timesteps=validation_timesteps, ema_decay=ema_decay, ema_warmup=ema_warmup,
                          ema_every=ema_every, tensorboard=tensorboard, unmasked_weight=unmasked_weight,
                          normalize_masked_loss=normalize_masked_loss),)


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
            "validation_dataset": ("LL_DATASET", {"tooltip": "Held-out examples for the validation loss (e.g. "
                                                  "Train/Test Split's test); else validation_fraction of the "
                                                  "training images is held out."}),
            "mask": ("MASK", {"tooltip": "Masked loss for images: one mask per image (or one for all) of the "
                              "images' size; where it is 1 (the painted area of ComfyUI's mask editor) trains at "
                              "full weight, where 0 at train_config's unmasked_weight. A dataset brings its "
                              "own masks (Image Folder's masks option)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, run_name=None):
        from ..core.files import validate_name

        return validate_name(run_name)

    def train(self, pipeline, noise, lora_config, train_config, run_name, dataset=None, images=None,
              captions="a photo in sks style", distill=None, validation_dataset=None, mask=None):
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
        masks = _masks("Train LoRA", dataset, images, mask)
        held_out = None
        if validation_dataset is not None:
            held_out = (validation_dataset.images, validation_dataset.captions, validation_dataset.masks)
        try:
            lora = train_from_images(pipeline, images, lines, noise, lora_config, train_config, checkpoints, run_name,
                                     weights, masks, held_out)
        except ValueError as e:  # settings that cannot train, or a checkpoint folder of another run
            raise ValueError(f"LoRA Lab: Train LoRA: run '{run_name}': {e}") from None
        try:
            applied, _ = apply_lora(pipeline, lora, 1.0, 1.0, name=run_name)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Train LoRA: input 'pipeline': {e}") from None
        row = {"model": applied.name, "lora": run_name, "rank": lora.rank, "alpha": lora.alpha,
               "train_seconds": lora.seconds, "train_peak_memory_mb": lora.peak_memory_mb,
               "trainable_parameters": lora.trainable_parameters, "final_loss": lora.losses[-1],
               **validation_columns(lora.val_losses)}
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


def validation_columns(val_losses: list) -> dict:
    """The score row's validation-loss columns: the last, the best and its step, and the EMA
    weights' last (when trained with EMA)."""
    import math

    if not val_losses:
        return {}
    step, best, _ = min(val_losses, key=lambda row: row[1])
    row = {"val_loss": val_losses[-1][1], "best_val_loss": best, "best_val_step": step}
    if not math.isnan(val_losses[-1][2]):
        row["val_loss_ema"] = val_losses[-1][2]
    return row


def _masks(node: str, dataset, images, mask):
    """The loss masks: a dataset's own, or the MASK input (``[H,W]`` for all images or ``[N,H,W]``)
    checked against the images; None without masks."""
    if mask is None:
        return dataset.masks if dataset is not None else None
    if dataset is not None and dataset.masks is not None:
        raise ValueError(f"LoRA Lab: {node}: input 'mask': the dataset has its own masks; give one or the other")
    sizes = {tuple(image.shape[:2]) for image in images}
    mask = mask if mask.dim() == 3 else mask[None]
    if len(sizes) != 1 or tuple(mask.shape[1:]) != next(iter(sizes)) or len(mask) not in (1, len(images)):
        raise ValueError(f"LoRA Lab: {node}: input 'mask': {len(mask)} mask(s) of {tuple(mask.shape[1:])} pixels "
                         f"for {len(images)} images of {sorted(sizes)}; give one mask for all images or one per "
                         "image, of the images' size (with aspect-ratio buckets use the dataset's masks option)")
    return [m for m in mask.expand(len(images), *mask.shape[1:]).clone()]


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
        masks = _masks("Fine-tune Model", dataset, images, None)
        try:
            tuned, result = finetune_from_images(pipeline, images, lines, noise, train_config, train_text_encoder,
                                                 checkpoints, run_name, masks)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Fine-tune Model: {e}") from None
        row = {"model": tuned.name, "lora": "", "rank": "full", "alpha": "",
               "train_seconds": result.seconds, "train_peak_memory_mb": result.peak_memory_mb,
               "trainable_parameters": result.trainable_parameters, "final_loss": result.losses[-1],
               **validation_columns(result.val_losses)}
        return (tuned, ScoreTable(("model", "lora"), [row]))


class LoRALabApplyLoRA:
    DESCRIPTION = ("Apply a LoRA to a pipeline with separate UNet and text-encoder strengths, as a view: "
                   "nothing is copied; the weights are merged into the shared modules while this pipeline "
                   "samples (full speed) and restored for the others, so the input is unchanged.")
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
                       "metadata, as diffusers' save_lora_weights writes them. LoHa/LoKr are saved in kohya "
                       "layout with LyCORIS keys (hada_*/lokr_*, which ComfyUI and A1111 load); diffusers "
                       "has no layout for them, so 'diffusers' refuses them."}),
            "weights": (["ema", "raw"], {"default": "ema", "tooltip":
                        "A LoRA trained with EMA (Train Config ema_decay): its EMA weights or the raw last "
                        "weights. Without EMA both are the trained weights."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        from ..core.files import validate_name

        return validate_name(filename_prefix)

    def save(self, lora, filename_prefix, layout="kohya", weights="ema"):
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
        if weights not in ("ema", "raw"):
            raise ValueError(f"LoRA Lab: Save LoRA: input 'weights' = {weights!r} is not one of ema, raw")
        tensors, metadata = lora.tensors, lora.metadata
        if lora.raw_tensors is not None:
            tensors = lora.raw_tensors if weights == "raw" else tensors
            metadata = {**metadata, "loralab_weights": weights}
        warning = compatibility_warning(tensors)
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
               "layout": layout, "weights": weights if lora.raw_tensors is not None else "trained",
               "file": path.name, **({"warning": warning} if warning else {})}
        return {"ui": {"text": [str(path)]}, "result": (ScoreTable(("model", "lora"), [row]),)}


def _displayed_rank(tensors: dict) -> tuple[int, float]:
    """(rank, alpha) for the score rows: the largest module rank (block-wise files mix ranks; kohya's
    network_dim is likewise the upper one) with that module's alpha (its rank where it has none).
    The rank is the first axis of LoRA's down, LoHa's w1_b, LoKr's w2_b or w1_b (LyCORIS keys);
    0 = only full weight offsets (.diff/.diff_b, ComfyUI's trainer), no low-rank pair."""
    rank, alpha = 0, 0.0
    for key, value in tensors.items():
        for part in (".lora_down.weight", ".hada_w1_b", ".lokr_w2_b", ".lokr_w1_b"):
            if key.endswith(part) and int(value.shape[0]) > rank:
                rank = int(value.shape[0])
                module_alpha = tensors.get(key[: -len(part)] + ".alpha")
                alpha = float(module_alpha) if module_alpha is not None else float(rank)
    return rank, alpha


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
        rank, alpha = _displayed_rank(tensors)
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
                   "interpolation, seed 004). Exact by default; a target rank re-ranks each module by SVD. "
                   "LoHa/LoKr updates (Hadamard/Kronecker products) do not add factor-wise: their modules are "
                   "blended through the full update and written as a plain LoRA by SVD. DoRA is refused.")
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
                     "0 = exact (ranks add up; LoHa/LoKr modules keep every non-negligible singular value of "
                     "the summed update); otherwise the best rank-r approximation per module (SVD)."}),
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
