"""The training loop on accelerate, which owns the device, the precision (autocast, and fp16's loss
scaling), gradient accumulation and the processes: the same call trains in ComfyUI, headless on
one device, or under ``accelerate launch`` / ``torchrun`` on N processes (DDP).

With N processes each optimizer step's global batch (the same data order on every process) is
split between them, process r taking examples r, r + N, …, and every process draws the random
numbers for the whole global batch and keeps its share, so N processes compute the step one
process would (up to floating-point summation order). DDP averages the gradients; the main process
writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from ..measure import measure
from ..runtime import check_interrupted
from .conditioner import Conditioner
from .hooks import Hooks
from .state import TrainState, _Batches, derived_seed, ema_weights, latest_checkpoint, make_ema, trained_parameters
from .validation import ValidationLoss


def make_accelerator(spec, device: torch.device):
    """An Accelerator for one training run. ComfyUI and sweeps run many trainings in one process,
    each with its own precision and accumulation, while accelerate keeps those in a process-wide
    state: it is reset here (the process group, if any, stays)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if spec.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision {spec.mixed_precision!r} is not one of no, bf16, fp16")
    if spec.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU (loss scaling); use 'bf16' or 'no' on the CPU")
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=spec.mixed_precision, cpu=device.type == "cpu",
                              gradient_accumulation_steps=spec.grad_accum, device_placement=False)
    if accelerator.num_processes > 1 and device.type != "cpu" and device != accelerator.device:
        raise ValueError(f"process {accelerator.process_index} of {accelerator.num_processes} should train on "
                         f"{accelerator.device} but the pipeline is on {device}; load it with device 'auto'")
    return accelerator


def autocast_for(accelerator):
    """A reusable autocast context for the accelerator's precision (``Accelerator.autocast`` is
    single-use; the LCM objective enters it several times a step)."""
    from accelerate.utils import get_mixed_precision_context_manager

    return get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)


def run(pipe, models: dict, data, objective, spec, signature: str, hooks: Hooks, optimizer, schedule,
        validation_data=None):
    """Train ``models`` (component -> (module, targets)) on ``data`` until ``spec.steps``; returns the
    final :class:`TrainState` and (seconds, peak memory MB). ``validation_data`` (a TrainingData of
    held-out examples) gives the validation loss every ``spec.validation_loss_every`` steps."""
    device = pipe.unet.device
    accelerator = make_accelerator(spec, device)
    world, rank = accelerator.num_processes, accelerator.process_index
    buckets = None if isinstance(data.latents, torch.Tensor) else [tuple(x.shape) for x in data.latents]
    if world > 1 and (buckets is not None or spec.batch_size % world):
        raise ValueError(f"batch_size {spec.batch_size} must split evenly over {world} processes, without "
                         "aspect-ratio buckets")
    trained = {name: accelerator.prepare_model(model, device_placement=False) if world > 1 else model
               for name, (model, targets) in models.items() if targets}
    unet = trained.get("unet", models["unet"][0])
    params = trained_parameters(models)
    state = TrainState(models, accelerator.prepare_optimizer(optimizer, device_placement=False), schedule,
                       _Batches(len(data.latents), spec.batch_size, spec.seed, buckets),
                       torch.Generator().manual_seed(derived_seed(spec.seed, 1)), signature,
                       ema=make_ema(params, spec))
    wrapped = {n: (trained.get(n, m), t) for n, (m, t) in models.items()}
    conditioner = Conditioner(pipe, data, wrapped, spec.caption_dropout, device, spec.tag_dropout, spec.keep_tags)
    latents = data.latents.clone().to(device) if buckets is None else [x.clone().to(device) for x in data.latents]
    pixels = pixel_weights(data, spec, device)
    autocast = autocast_for(accelerator)
    if spec.validation_loss_every:
        if validation_data is None:
            raise ValueError("validation_loss_every needs held-out examples: set validation_fraction or give a "
                             "validation dataset")
        held_out = [x.to(device) for x in validation_data.latents]
        hooks.validation_loss = ValidationLoss(
            objective, models["unet"][0], autocast, held_out, Conditioner(pipe, validation_data, models, 0.0, device),
            pixel_weights(validation_data, spec, device), spec.validation_timesteps, spec.seed)
        hooks.validation_loss_every = spec.validation_loss_every
    torch.manual_seed(derived_seed(spec.seed, 2))  # LoRA dropout's masks: peft's nn.Dropout draws from it
    resume = latest_checkpoint(hooks.checkpoint_dir)
    if resume is not None:
        state.load(resume, device)
    state.optimizer.train()  # schedule-free AdamW: the training weights (others: nothing)

    def evaluate(fn, ema: bool = False):
        """``fn()`` with the models in eval mode and the weights one evaluates: schedule-free AdamW's
        averaged ones, or (``ema``) the EMA's; the training weights come back exactly."""
        for model, _ in models.values():
            model.eval()
        state.optimizer.eval()
        try:
            with ema_weights(state.ema, params) if ema else contextlib.nullcontext():
                return fn()
        finally:
            state.optimizer.train()
            for model, _ in models.values():
                model.train()

    def micro_batch() -> float:
        """One micro-batch: this process's share of the global batch, forward and backward; the
        optimizer steps after the last of ``grad_accum``. Returns the global batch's mean loss."""
        with accelerator.accumulate(*trained.values()):
            index = state.batches.next()
            drop = conditioner.draw(index, state.noise_generator)
            draws = objective.draw((len(index), *_take(latents, index[:1]).shape[1:]), state.noise_generator)
            rows = list(range(rank, len(index), world))
            local = [index[r] for r in rows]
            cond, added = conditioner(local, drop.take(rows))
            per_sample = objective.loss(unet, _take(latents, local), cond, added, draws.take(rows), autocast,
                                        _take(pixels, local) if pixels is not None else None)
            if data.weights is not None:
                per_sample = per_sample * data.weights[local].to(device)
            loss = per_sample.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {state.step + 1}; stopping. The last good checkpoint "
                    f"(if any) is in {hooks.checkpoint_dir}. Try a lower learning rate or fp32.")
            accelerator.backward(loss)  # divided by grad_accum; fp16: scaled
            if accelerator.sync_gradients:
                # the global norm before clipping (fp16: unscaled first); max norm inf only measures it
                norm = accelerator.clip_grad_norm_(params, spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf)
                grad_norm[0] = float(norm)
                state.optimizer.step()
                state.optimizer.zero_grad(set_to_none=True)
            return (accelerator.reduce(loss.detach(), "mean") if world > 1 else loss).item()

    grad_norm = [math.nan]
    start = time.perf_counter()
    try:
        with measure(device) as cost:
            hooks.start(state, accelerator, evaluate)
            while state.step < spec.steps:
                check_interrupted()
                total = sum(micro_batch() / spec.grad_accum for _ in range(spec.grad_accum))
                # Prodigy's step size is its estimate d times the learning rate (a multiplier there)
                state.lrs.append(schedule.get_last_lr()[0] * state.optimizer.param_groups[0].get("d", 1.0))
                schedule.step()
                state.losses.append(total)
                state.grad_norms.append(grad_norm[0])
                state.step += 1
                if state.ema is not None and state.step % spec.ema_every == 0:
                    state.ema.step(params)
                hooks.after_step(state, models["unet"][0], spec.steps, accelerator, total, device, evaluate)
        state.optimizer.eval()  # schedule-free AdamW: the result is its averaged weights
    finally:
        hooks.close()
        for model in trained.values():
            accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # the shared modules come back as they were
    return state, (time.perf_counter() - start, cost.peak_memory_mb)


def pixel_weights(data, spec, device: torch.device):
    """Masked loss's weights per latent pixel, ``unmasked_weight + (1 − unmasked_weight)·mask`` with
    the masks at latent size (``data.masks``); None without masks."""
    if data.masks is None:
        return None
    if not 0.0 <= spec.unmasked_weight <= 1.0:
        raise ValueError(f"unmasked_weight {spec.unmasked_weight} must be in [0, 1]")

    def weight(mask):
        return (spec.unmasked_weight + (1 - spec.unmasked_weight) * mask).to(device)

    return weight(data.masks) if isinstance(data.masks, torch.Tensor) else [weight(m) for m in data.masks]


def _take(latents, index: list[int]) -> torch.Tensor:
    return latents[index] if isinstance(latents, torch.Tensor) else torch.stack([latents[i] for i in index])
