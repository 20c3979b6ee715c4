"""FID and KID between a generated and a reference image set, with torchmetrics' estimators.

- ``fid``: Fréchet distance ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussians fitted (sample
  mean, unbiased covariance) to the Inception-v3 pool features of each set (Heusel et al. 2017).
  FID is biased upward at small N (it falls as N grows), so it is reported with ``n_generated`` and
  ``n_reference``: compare FIDs only at equal N.
- ``kid_mean`` / ``kid_std``: KID (Bińkowski et al. 2018), the unbiased estimator of MMD² with the
  kernel k(x, y) = (xᵀy / d + 1)³, averaged over ``kid_subsets`` random subsets of
  ``kid_subset_size`` images from each set. Unbiased, so usable at small N; the subset size is
  capped at the smaller set (reported as ``kid_subset_size``). Subsets are drawn with a fixed seed.

Images reach Inception as the 8-bit pictures they save as, resized to 299 px by torchmetrics
(bilinear with antialias, its default). One Inception pass per batch feeds both estimators; FID
keeps running sums (its memory does not grow with N), KID keeps the features (8 KB per image), never
the images. The estimators' states stay on the CPU in float64 (MPS has no float64).
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..runtime import check_interrupted
from .weights import INCEPTION, WeightsError, load_state_dict

FEATURE_DIMS = (2048, 768, 192, 64)


class _Precomputed(torch.nn.Module):
    """The torchmetrics "feature extractor" when features are computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@functools.lru_cache(maxsize=1)  # a sweep scores many sets with one network
def _inception(path: str | None, stamp: tuple, dims: int) -> torch.nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    class Unloaded(NoTrainInceptionV3):
        # torch-fidelity torch.load()s its weights path with weights_only=False, and downloads when it
        # has none. It gets an empty dict of our own making; the weights are loaded below, from
        # tensors read without unpickling, so the user's file never reaches a pickle loader.
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict, assign) if state_dict else None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.random.fork_rng(devices=[]):  # path None: seeded random weights, global RNG untouched
        torch.manual_seed(0)
        model = Unloaded("inception-v3-compat", [str(dims)], empty)
    if path is not None:
        try:
            model.load_state_dict(load_state_dict(Path(path)))
        except RuntimeError as e:
            raise WeightsError(f"{path!r} is not {INCEPTION.what} ({str(e).splitlines()[0]}); expected the file "
                               f"{INCEPTION.name!r} from {INCEPTION.url}") from None
    model.num_features = dims
    return model.eval()


def inception(path: Path | None, dims: int = 2048) -> torch.nn.Module:
    """torchmetrics' FID Inception-v3 with the weights of the local file ``path`` (kept on the CPU
    between calls): uint8 ``[B, 3, H, W]`` images → ``[B, dims]`` features (``num_features`` = dims).
    ``path = None``: the same network with seeded random weights, for smoke runs (its FID means
    nothing beyond "the graph runs")."""
    if dims not in FEATURE_DIMS:
        raise ValueError(f"Inception feature size {dims} is not one of {FEATURE_DIMS}")
    if path is None:
        return _inception(None, (), dims)
    stat = path.stat()
    return _inception(str(path), (stat.st_mtime_ns, stat.st_size), dims)


@contextmanager
def on_device(model: torch.nn.Module, device: str | torch.device):
    """Run a cached, CPU-resident model on ``device`` and give the device memory back afterwards:
    ComfyUI's model management does not know our models and could not free them."""
    if torch.device(device).type == "cpu":
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")


def as_uint8_nchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI images (``B, H, W, C`` in 0..1) as the 8-bit pictures they save as (``to_pil``)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-1, 1)


def batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of at most ``batch_size`` from one image tensor or from an iterable of them (so a
    caller can stream a set that does not fit in memory)."""
    for chunk in [images] if isinstance(images, torch.Tensor) else images:
        for start in range(0, len(chunk), batch_size):
            yield chunk[start:start + batch_size]


def fid_kid(generated, reference, feature: torch.nn.Module, device: str | torch.device = "cpu",
            batch_size: int = 32, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID of ``generated`` against ``reference`` (each an image tensor or an iterable of
    image batches). ``feature`` maps uint8 ``[B, 3, H, W]`` images on ``device`` to ``[B, D]``
    features and says D in ``num_features`` (``inception(...)``, or any module: tests give known
    features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dims = int(feature.num_features)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        fid = FrechetInceptionDistance(feature=_Precomputed(dims))
        kid = KernelInceptionDistance(feature=_Precomputed(dims), subsets=kid_subsets, subset_size=kid_subset_size)
    with torch.inference_mode(), on_device(feature, device):
        for real, images in ((False, generated), (True, reference)):
            for batch in batches(images, batch_size):
                check_interrupted()
                features = feature(as_uint8_nchw(batch.to(device))).double().cpu()
                fid.update(features, real=real)
                kid.update(features, real=real)
    n_generated, n_reference = int(fid.fake_features_num_samples), int(fid.real_features_num_samples)
    for name, n in (("generated", n_generated), ("reference", n_reference)):
        if n < 2:
            raise ValueError(f"got {n} {name} image(s); FID and KID need at least 2 per set")
    kid.subset_size = min(kid_subset_size, n_generated, n_reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": kid.subset_size, "kid_subsets": kid_subsets,
            "n_generated": n_generated, "n_reference": n_reference, "feature_dim": dims}
