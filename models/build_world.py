"""Recipes for the procedural world's shipped models in ``models/world/``.

    python models/build_world.py evaluator   # trains evaluator.safetensors (~12 min on 2 CPU cores)
    python models/build_world.py vae         # trains a world VAE in vae/ (not shipped yet, see below)

The VAE recipe is a first version: 2,500 steps (10.5 min) reached 25.6 dB PSNR on held-out scenes
and the evaluator read 0.89 of the caption attributes in its reconstructions (0.98 in the originals:
small shapes blur, colours drift), too low a ceiling for the world student; it needs more steps or
width before its weights ship.

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
# The embedded tiny model's VAE architecture (models/build_tiny.py): 64 px -> 16x16x4 latents.
VAE = dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
           block_out_channels=(16, 32, 32), norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def build_evaluator() -> None:
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


def build_vae(steps: int = 2500, batch: int = 32, seed: int = 0) -> None:
    """AutoencoderKL on rendered scenes of every variant: L1 + MSE reconstruction and a KL weight of
    1e-6 (SD's VAE recipe without its LPIPS and GAN terms, which flat shapes do not need); the
    scaling factor is 1 / std of the latents, as SD's 0.18215 was chosen."""
    from diffusers import AutoencoderKL

    from loralab.core.world.evaluator import CONTENT, HEADS, adherence, load_evaluator
    from loralab.core.world.scene import caption

    torch.manual_seed(seed)
    scenes = world_scenes(steps * batch // 4, seed)  # each image seen about 4 times
    x = render_scenes(scenes).permute(0, 3, 1, 2) * 2 - 1
    vae = AutoencoderKL(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=gen)]
        posterior = vae.encode(xb).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = (rec - xb).abs().mean() + ((rec - xb) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    vae.eval()
    held = world_scenes(600, HELDOUT_SEED)
    clean = render_scenes(held)
    with torch.no_grad():
        latents = vae.encode(clean.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
        rec = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    evaluator = load_evaluator()
    base = [i for i, s in enumerate(held) if s.style != "concept"]
    texts = [caption(held[i]) for i in base]
    report = {"train_seconds": round(seconds, 1), "steps": steps, "batch": batch,
              "scaling_factor": vae.config.scaling_factor,
              "psnr_db": float(10 * torch.log10(1 / ((rec - clean) ** 2).mean())),
              "adherence_of_reconstructions": float(adherence(evaluator, rec[base], texts)["adherence"].mean()),
              "adherence_of_originals": float(adherence(evaluator, clean[base], texts)["adherence"].mean()),
              "heads": list(CONTENT), "n_heldout": len(held), "style_classes": list(HEADS["style"])}
    vae.save_pretrained(WEIGHTS.parent / "vae")
    (WEIGHTS.parent / "vae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["evaluator", "vae"])
    what = parser.parse_args().what
    torch.set_num_threads(1 if what == "evaluator" else 2)
    {"evaluator": build_evaluator, "vae": build_vae}[what]()
