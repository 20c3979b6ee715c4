"""LoRA Lab: LoRA training, noise strategies, samplers and metrics for Stable Diffusion, as
ComfyUI nodes and a headless runner (``loralab run``) for the same workflow files.

ComfyUI imports this folder from ``custom_nodes/<any name>/``; pip installs it as ``loralab``.
Imports stay relative and light (no torch, no ComfyUI modules) so ComfyUI starts fast.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
