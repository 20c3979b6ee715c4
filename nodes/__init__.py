"""Node declarations, one module per capability. Importing this package is cheap: node modules
import torch/diffusers only inside their functions, so ComfyUI starts fast."""

from . import data, io, lora, models, report, sample, score, score_model, train, world

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (models, data, world, sample, train, lora, score, score_model, report, io):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
