"""Everything exact resume restores, in one object: the trained weights (adapters or whole
modules), optimizer, LR schedule, data order, the noise generator, torch's global generators
(peft's LoRA dropout draws from them), step, losses, learning rates and the validation images so
far. A checkpoint is a folder written atomically (temp folder + rename, then ``latest.json``):
the weights as safetensors, the rest through ``torch.save`` and read back with ``weights_only``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import _UMASK, atomic_write_text

# The ``targets`` of a component trained in full (every parameter) rather than through adapters.
FULL = ["*"]
ADAPTER = "loralab_train"
# peft's parameter names for each adapter kind: LoRA/DoRA (lora_A/B, lora_magnitude_vector), LoHa
# (hada_w1_a ...), LoKr (lokr_w1 ...).
ADAPTER_PARTS = ("lora_", "hada_", "lokr_")


def is_adapter(name: str) -> bool:
    """Whether a parameter/state-dict name belongs to an adapter rather than the base model."""
    return any(part in name for part in ADAPTER_PARTS)


def lora_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors in peft's names without the adapter name ("...lora_A.weight", "...hada_w1_a")."""
    return {k.replace(f".{ADAPTER}", ""): v.detach().clone() for k, v in model.state_dict().items() if is_adapter(k)}


def trained_state(model, targets: list[str]) -> dict[str, torch.Tensor]:
    """What training changed in ``model``: every weight when trained in full, else the adapters."""
    if targets == FULL:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return lora_state(model)


class _Batches:
    """Shuffled example indices, epoch after epoch, from a seeded generator (resumable). With
    buckets (one key per example) every batch comes from one bucket: each epoch's shuffled order is
    split per bucket into batches (the last of a bucket may be smaller) and the batches shuffled."""

    def __init__(self, n: int, batch_size: int, seed: int, buckets: list | None = None):
        self.n, self.batch_size, self.buckets = n, batch_size, buckets
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.sizes: list[int] = []  # bucketed: the sizes of the batches left in ``order``

    def next(self) -> list[int]:
        if self.buckets is not None:
            if not self.order:
                self._bucketed_epoch()
            size = self.sizes.pop(0)
            batch, self.order = self.order[:size], self.order[size:]
            return batch
        batch = []
        while len(batch) < self.batch_size:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.generator).tolist()
            batch.append(self.order.pop(0))
        return batch

    def _bucketed_epoch(self) -> None:
        groups: dict = {}
        for i in torch.randperm(self.n, generator=self.generator).tolist():
            groups.setdefault(self.buckets[i], []).append(i)
        chunks = [g[k:k + self.batch_size] for g in groups.values() for k in range(0, len(g), self.batch_size)]
        chunks = [chunks[k] for k in torch.randperm(len(chunks), generator=self.generator).tolist()]
        self.order, self.sizes = [i for c in chunks for i in c], [len(c) for c in chunks]

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": torch.tensor(self.order, dtype=torch.long),
                "sizes": torch.tensor(self.sizes, dtype=torch.long)}

    def load(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].tolist()
        self.sizes = state["sizes"].tolist() if "sizes" in state else []


def derived_seed(seed: int, k: int) -> int:
    """The k-th stream's seed: seed + k, wrapped into torch's 64-bit range (the node allows up to 2⁶⁴ − 1)."""
    return (seed + k) % 2**64


def rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainState:
    models: dict  # component -> (module, targets): FULL, adapter target names, or [] (frozen)
    optimizer: object
    schedule: object  # the LR schedule
    batches: _Batches
    noise_generator: torch.Generator
    signature: str  # what a checkpoint must match to be resumed (train.run_signature)
    step: int = 0
    losses: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    validations: list = field(default_factory=list)  # (step, images)
    grad_norms: list = field(default_factory=list)  # per optimizer step, before clipping
    val_losses: list = field(default_factory=list)  # (step, validation loss, the EMA weights' or nan)
    ema: object = None  # diffusers' EMAModel over the trained parameters, or None

    def save(self, folder: Path, device: torch.device) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".checkpoint."))
        os.chmod(tmp, 0o777 & ~_UMASK)  # as a plain mkdir would make it (mkdtemp: owner only)
        try:
            weights = {f"{name}.{k}": v.contiguous() for name, (model, targets) in self.models.items()
                       for k, v in trained_state(model, targets).items() if targets}
            save_file(weights, tmp / "adapter.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                        "batches": self.batches.state(), "noise_generator": self.noise_generator.get_state(),
                        "rng": _rng_state(device), "step": self.step,
                        "losses": torch.tensor(self.losses, dtype=torch.float64),
                        "lrs": torch.tensor(self.lrs, dtype=torch.float64), "signature": self.signature,
                        "grad_norms": torch.tensor(self.grad_norms, dtype=torch.float64),
                        "val_losses": torch.tensor(self.val_losses, dtype=torch.float64).reshape(-1, 3),
                        **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                        # the images so far, so that a resumed run returns all of them
                        "validation": {"steps": torch.tensor([s for s, _ in self.validations], dtype=torch.long),
                                       "images": [image.detach().cpu() for _, image in self.validations]}},
                       tmp / "state.pt")
            for path in tmp.iterdir():
                os.chmod(path, 0o666 & ~_UMASK)
            target = folder / f"checkpoint-{self.step:07d}"
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            _write_latest(folder, target.name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self, checkpoint: Path, device: torch.device) -> None:
        """Continue from ``checkpoint`` (refused when it holds another run)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
        if state.get("signature") != self.signature:
            raise ValueError(f"checkpoint folder {str(checkpoint.parent)!r} holds a run with other data or settings; "
                             "use another run name to start afresh, or delete that folder")
        weights = load_file(checkpoint / "adapter.safetensors")
        for name, (model, targets) in self.models.items():
            own = {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}
            if targets == FULL:
                model.load_state_dict(own)
            elif targets:
                set_peft_model_state_dict(model, own, adapter_name=ADAPTER)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.load(state["batches"])
        self.noise_generator.set_state(state["noise_generator"])
        if "rng" in state:
            _set_rng_state(state["rng"], device)
        self.step, self.losses, self.lrs = state["step"], state["losses"].tolist(), state["lrs"].tolist()
        self.grad_norms = state["grad_norms"].tolist() if "grad_norms" in state else []
        self.val_losses = [(int(s), v, e) for s, v, e in state["val_losses"].tolist()] if "val_losses" in state else []
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        saved = state.get("validation", {"steps": torch.zeros(0), "images": []})
        self.validations = list(zip(saved["steps"].tolist(), saved["images"], strict=True))


def make_ema(params: list, spec):
    """diffusers' EMAModel over ``params`` (Polyak averaging, as its training scripts use it): each
    update ``shadow ← shadow − (1 − d)(shadow − θ)`` with ``d = min(decay, (1 + n) / (10 + n))``, or
    ``min(decay, 1 − (1 + n)^(−2/3))`` with warm-up, n counting updates from 0 (the first update
    copies θ). None when ``ema_decay`` is 0."""
    if not spec.ema_decay:
        return None
    if not 0.0 < spec.ema_decay < 1.0 or spec.ema_every < 1:
        raise ValueError(f"ema_decay {spec.ema_decay} must be in (0, 1) and ema_every {spec.ema_every} at least 1")
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=spec.ema_decay, use_ema_warmup=spec.ema_warmup, inv_gamma=1.0, power=2 / 3)


def trained_parameters(models: dict) -> list:
    """What a run trains (``models``: component -> (module, targets)), in one fixed order that the
    optimizer, the EMA and its checkpoints share: every parameter of a FULL component, the adapters'
    of the others."""
    return [p for model, targets in models.values() for n, p in model.named_parameters()
            if targets == FULL or (targets and is_adapter(n))]


@contextmanager
def ema_weights(ema, params: list):
    """``params`` hold the EMA's weights inside the block; the raw ones come back exactly after."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _write_latest(folder: Path, name: str) -> None:
    atomic_write_text(folder / "latest.json", json.dumps({"checkpoint": name}))


def latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not (folder / "latest.json").is_file():
        return None
    name = json.loads((folder / "latest.json").read_text())["checkpoint"]
    path = folder / name
    return path if (path / "state.pt").is_file() and (path / "adapter.safetensors").is_file() else None
