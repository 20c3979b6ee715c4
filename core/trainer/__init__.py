"""The trainer in named parts, each small enough to read on one screen:

- ``state``: :class:`TrainState`, everything exact resume restores, with save/load;
- ``objectives``: what a step minimises (the denoising loss, LCM distillation);
- ``conditioner``: the UNet's text, pooled and size conditioning, with caption dropout;
- ``hooks``: progress, validation images, checkpoints;
- ``loop``: the loop itself, on accelerate (device, precision, accumulation, processes).

``core.train`` is the public entry point (Train LoRA, full fine-tuning, datasets).
"""
