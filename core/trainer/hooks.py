"""What happens after an optimizer step besides training: progress, validation images, atomic
checkpoints. Checkpoints are written by the main process only (the others wait for it), so a
multi-process run leaves one set of files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .state import TrainState, rng_devices


@dataclass
class Hooks:
    progress: object = None  # progress(step, loss)
    validation: object = None  # validation(step) -> images, sampled with the adapters live
    validation_every: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # 0: only at the end

    def after_step(self, state: TrainState, unet, total_steps: int, accelerator, loss: float,
                   device: torch.device) -> None:
        if self.validation is not None and self.validation_every and state.step % self.validation_every == 0:
            unet.eval()  # the adapters are live in the pipeline's own UNet: sample with them
            with torch.random.fork_rng(devices=rng_devices(device)):  # dropout's stream goes on untouched
                state.validations.append((state.step, self.validation(state.step)))
            unet.train()
        if self.checkpoint_dir is not None and (state.step == total_steps or (
                self.checkpoint_every and state.step % self.checkpoint_every == 0)):
            if accelerator.is_main_process:
                state.save(self.checkpoint_dir, device)
            accelerator.wait_for_everyone()
        if self.progress is not None:
            self.progress(state.step, loss)
