"""LoRAs applied as views: patches on shared modules, merged in while a pipeline is used.

Apply LoRA copies no model. An ``LL_PIPELINE`` holds the shared diffusers components and a tuple
of patches; reading its ``pipe`` makes the shared modules carry exactly those patches: weights
another view changed are first restored from their backups, then this view's LoRAs are merged in
place. ComfyUI's ModelPatcher does the same (back up the weights a patch touches, patch, restore
when another patch set is wanted), so memory stays one model plus one backup of the touched
weights however many LoRAs a workflow or sweep holds. Backups of weights on an accelerator are
kept on the CPU, as ModelPatcher keeps them on its offload device.

State is kept per module (the UNet, each text encoder), since pipelines can share some components
and not others (a fine-tuned UNet beside the base text encoder).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True, eq=False)
class Patch:
    """One applied LoRA: its kohya tensors, the checked plan of what it changes
    (:func:`lora_files.lora_plan`) and its strengths."""

    tensors: dict
    plan: tuple
    unet_strength: float
    text_strength: float
    dora_norm: str = "peft"

    def touches(self, component: str) -> bool:
        return any(c == component for _, c, _, _ in self.plan)

    def key(self, component: str) -> tuple:
        strength = self.unet_strength if component == "unet" else self.text_strength
        return id(self.tensors), strength, self.dora_norm


class _Carried:
    """What one shared module carries now: its patches (held, so their ids stay unique) and the
    saved originals of the parameters they changed."""

    def __init__(self):
        self.patches: tuple[Patch, ...] = ()
        self.backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []


_CARRIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def activate(pipe, patches: tuple[Patch, ...]) -> None:
    """Make ``pipe``'s modules carry exactly ``patches`` (in order); a no-op when they already do."""
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        wanted = tuple(p for p in patches if p.touches(component))
        carried = _CARRIED.get(module)
        if carried is None:
            if not wanted:
                continue
            carried = _CARRIED.setdefault(module, _Carried())
        if [p.key(component) for p in carried.patches] == [p.key(component) for p in wanted]:
            continue
        with torch.inference_mode(False), torch.no_grad():
            _restore(carried)
            for patch in wanted:
                _merge(pipe, patch, component, carried)
        carried.patches = wanted


def restore(pipe) -> None:
    """Put back the original weights of ``pipe``'s modules (every view's patches removed)."""
    activate(pipe, ())


def _restore(carried: _Carried) -> None:
    for parameter, saved in carried.backups:
        parameter.copy_(saved)
    carried.backups, carried.patches = [], ()


def _merge(pipe, patch: Patch, component: str, carried: _Carried) -> None:
    from .lora_files import merge_into

    def backup(parameter):
        if not any(parameter is saved for saved, _ in carried.backups):  # first change only: the original
            carried.backups.append((parameter, parameter.detach().to("cpu", copy=True)))

    merge_into(pipe, patch.tensors, [step for step in patch.plan if step[1] == component], patch.unet_strength,
               patch.text_strength, patch.dora_norm, before=backup)


def carried_patches(module) -> tuple[Patch, ...]:
    carried = _CARRIED.get(module)
    return carried.patches if carried is not None else ()
