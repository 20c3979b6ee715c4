"""Recipes for the procedural world's shipped models in ``models/world/``.

    python models/build_world.py evaluator   # trains evaluator.safetensors (~3 min on 2 CPU cores)

The recipe is deterministic on one machine (fixed seeds, one thread); the committed file is the
reference. Held-out accuracy per head is measured on scenes of another seed and written beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import save_file

from loralab.core.world.evaluator import WEIGHTS, accuracy, degrade, render_scenes, train_evaluator, world_scenes

HELDOUT_SEED, HELDOUT_IMAGES = 999, 3000


def build_evaluator() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = train_evaluator()
    seconds = time.perf_counter() - start
    scenes = world_scenes(HELDOUT_IMAGES, HELDOUT_SEED)
    clean = render_scenes(scenes)
    report = {"train_seconds": round(seconds, 1), "heldout_images": HELDOUT_IMAGES,
              "accuracy_clean": accuracy(model, scenes, clean),
              "accuracy_degraded": accuracy(model, scenes, degrade(clean, torch.Generator().manual_seed(1)))}
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS),
              metadata={"recipe": "models/build_world.py evaluator"})
    (WEIGHTS.parent / "evaluator.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["evaluator"])
    parser.parse_args()
    build_evaluator()
