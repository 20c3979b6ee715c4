"""What happens after an optimizer step besides training: progress, validation images and loss,
tracking (TensorBoard event files, ``log.csv``), atomic checkpoints. Checkpoints, logs and event
files are written by the main process only (the others wait for it), so a multi-process run leaves
one set of files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write_text
from .state import TrainState, rng_devices

LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "val_loss", "val_loss_ema")


@dataclass
class Hooks:
    progress: object = None  # progress(step, loss)
    validation: object = None  # validation(step) -> images, sampled with the adapters live
    validation_every: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # 0: only at the end
    validation_loss: object = None  # ValidationLoss, or None
    validation_loss_every: int = 0
    tensorboard: bool = False
    writer: object = None

    def start(self, state: TrainState, accelerator, evaluate) -> None:
        """Before the first step (or the first after a resume): open the event files (dropping
        events a killed run wrote past the checkpoint) and measure the validation loss of the
        untrained weights."""
        if self.tensorboard and accelerator.is_main_process:
            if self.checkpoint_dir is None:
                raise ValueError("tensorboard needs a run folder (Train LoRA's run_name)")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard logging needs the 'tensorboard' package (a LoRA Lab requirement): "
                                 "pip install tensorboard") from None
            self.writer = SummaryWriter(str(self.checkpoint_dir / "tensorboard"), purge_step=state.step + 1)
        if self.validation_loss is not None and not state.val_losses:
            self._validation_loss(state, evaluate)

    def after_step(self, state: TrainState, unet, total_steps: int, accelerator, loss: float,
                   device: torch.device, evaluate) -> None:
        """``evaluate(fn)`` runs ``fn`` with the weights to evaluate (schedule-free AdamW's averaged
        ones) and the model in eval mode."""
        if self.validation is not None and self.validation_every and state.step % self.validation_every == 0:
            # with EMA the images show the EMA weights, the LoRA Train LoRA hands on (as OneTrainer samples)
            ema = state.ema is not None and state.ema.optimization_step > 0
            with torch.random.fork_rng(devices=rng_devices(device)):  # dropout's stream goes on untouched
                images = evaluate(lambda: self.validation(state.step), ema=ema)
            state.validations.append((state.step, images))
            if self.writer is not None:
                self.writer.add_images("validation", images.float().clamp(0, 1), state.step, dataformats="NHWC")
        if self.validation_loss is not None and (state.step % self.validation_loss_every == 0
                                                 or state.step == total_steps):
            self._validation_loss(state, evaluate)
        if self.writer is not None:
            for tag, value in (("train/loss", loss), ("train/lr", state.lrs[-1]),
                               ("train/grad_norm", state.grad_norms[-1])):
                self.writer.add_scalar(tag, value, state.step)
        if self.checkpoint_dir is not None and (state.step == total_steps or (
                self.checkpoint_every and state.step % self.checkpoint_every == 0)):
            if accelerator.is_main_process:
                state.save(self.checkpoint_dir, device)
                write_log(self.checkpoint_dir / "log.csv", state)
                if self.writer is not None:
                    self.writer.flush()
            accelerator.wait_for_everyone()
        if self.progress is not None:
            self.progress(state.step, loss)

    def _validation_loss(self, state: TrainState, evaluate) -> None:
        value = evaluate(self.validation_loss)
        ema = math.nan
        if state.ema is not None and state.ema.optimization_step > 0:
            ema = evaluate(self.validation_loss, ema=True)
        state.val_losses.append((state.step, value, ema))
        if self.writer is not None:
            self.writer.add_scalar("val/loss", value, state.step)
            if not math.isnan(ema):
                self.writer.add_scalar("val/loss_ema", ema, state.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_log(path: Path, state: TrainState) -> None:
    """One CSV row per optimizer step (validation columns empty between evaluations; step 0 holds
    the untrained weights' validation loss)."""
    val = {step: (v, e) for step, v, e in state.val_losses}
    rows = [",".join(LOG_COLUMNS)]
    if 0 in val:
        rows.append(f"0,,,,{_cell(val[0][0])},{_cell(val[0][1])}")
    for k, (loss, lr) in enumerate(zip(state.losses, state.lrs, strict=True), 1):
        v, e = val.get(k, (math.nan, math.nan))
        norm = state.grad_norms[k - 1] if k - 1 < len(state.grad_norms) else math.nan
        rows.append(f"{k},{loss!r},{lr!r},{_cell(norm)},{_cell(v)},{_cell(e)}")
    atomic_write_text(path, "\n".join(rows) + "\n")


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)
