"""LPIPS v0.1 (Zhang et al. 2018) with the ``lpips`` package: the learned linear layers ship inside
the package; the trunk (AlexNet, VGG16 or SqueezeNet 1.1 ImageNet features) comes from a local
torchvision weights file, never from the internet.

``lpips_<net>``: the distance between each image and its reference (one per image, or one for
all): 0 for identical images, larger = more different (about 0..1). Images in 0..1 are scaled to
−1..1 as LPIPS expects (``normalize=True``); both must have the same size.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from ..runtime import check_interrupted
from .fid import batches, on_device
from .weights import LPIPS_TRUNKS, WeightsError, load_state_dict

NETS = tuple(LPIPS_TRUNKS)


def _trunk_key(name: str) -> str:
    # lpips keeps torchvision's layer indices and splits them into slices:
    # "slice2.3.weight" is torchvision's "features.3.weight".
    return "features." + name.split(".", 1)[1]


@functools.lru_cache(maxsize=1)  # a sweep scores many batches with one network
def _load(net: str, path: str | None, stamp: tuple):
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips builds its trunk with torchvision's pretrained=False
        torch.manual_seed(0)
        model = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    model.load_state_dict(torch.load(linear, map_location="cpu", weights_only=True), strict=False)  # lin* only
    if path is None:
        return model.eval().requires_grad_(False)
    state, expected = load_state_dict(Path(path)), LPIPS_TRUNKS[net]
    for name, tensor in model.net.state_dict().items():
        key = _trunk_key(name)
        if key not in state or state[key].shape != tensor.shape:
            problem = f"no {key!r}" if key not in state else f"{key!r} has shape {tuple(state[key].shape)}"
            raise WeightsError(f"{path!r} is not {expected.what} ({problem}); expected the file "
                               f"{expected.name!r} from {expected.url}")
    model.net.load_state_dict({name: state[_trunk_key(name)] for name in model.net.state_dict()})
    return model.eval().requires_grad_(False)


def load_lpips(net: str, trunk: Path | None):
    """``lpips.LPIPS`` v0.1 with the package's linear layers and the trunk from the file ``trunk``,
    or a random trunk (seed 0) for ``None`` (kept on the CPU between calls)."""
    if net not in NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
    if trunk is None:
        return _load(net, None, ())
    stat = trunk.stat()
    return _load(net, str(trunk), (stat.st_mtime_ns, stat.st_size))


def check_pair(images: torch.Tensor, reference: torch.Tensor) -> None:
    if len(reference) not in (1, len(images)):
        raise ValueError(f"got {len(reference)} reference images for {len(images)} images; give one "
                         "reference for all or one per image")
    if reference.shape[1:] != images.shape[1:]:
        raise ValueError(f"references are {reference.shape[2]}x{reference.shape[1]} px but images are "
                         f"{images.shape[2]}x{images.shape[1]} px; LPIPS compares images of the same size")


def lpips_distance(model, images: torch.Tensor, reference: torch.Tensor, device: str | torch.device = "cpu",
                   batch_size: int = 16) -> torch.Tensor:
    """LPIPS of image i against reference i (or the one reference for all), float64 ``[N]``."""
    check_pair(images, reference)
    out, start = [], 0
    with torch.inference_mode(), on_device(model, device):
        for batch in batches(images, batch_size):
            check_interrupted()
            ref = reference if len(reference) == 1 else reference[start:start + len(batch)]
            x, y = (t.to(device).movedim(-1, 1) for t in (batch, ref))
            out.append(model(x, y.expand_as(x), normalize=True).flatten().double().cpu())
            start += len(batch)
    return torch.cat(out)
