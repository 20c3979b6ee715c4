"""Paired pixel metrics: each image against its reference (one reference per image, or one for all).

Inputs are ComfyUI ``IMAGE`` tensors, float32 ``[B, H, W, 3]`` in 0..1, images and references of
the same size. Every metric returns one float64 value per image. Tensor metrics run batched, in
chunks of about ``CHUNK_ELEMENTS`` values, so memory stays bounded however many images are scored;
one reference for all is broadcast (SSIM copies it per chunk only), never repeated for the set.

Definitions (``x`` image, ``y`` reference):

- ``mse``: mean of (x − y)² over pixels and channels. ``psnr_db``: 10·log10(1 / mse) (data range
  1); identical images give ``inf``.
- ``ssim``: SSIM of Wang et al. 2004 (Gaussian window σ = 1.5, 11 px; K1 0.01, K2 0.03, data range
  1), averaged over channels and over the *valid* region, the pixels whose window lies inside the
  image — as the original code and skimage do. torchmetrics' scalar SSIM also averages the border,
  computed on a reflect-padded image (up to 0.05 off at 32 px, 0.03 at 64 px, 0.002 at 512 px on
  our test images), so we average torchmetrics' SSIM map over the valid region ourselves.
- ``ms_ssim``: torchmetrics' multi-scale SSIM (Wang et al. 2003, 5 scales with their weights, data
  range 1, negative scales clipped to 0). Needs at least ``MS_SSIM_MIN_SIZE`` px on each side.
- histogram similarity: per channel, a histogram of ``bins`` equal bins over 0..1, normalised to sum
  1, compared as OpenCV's ``compareHist`` does, then averaged over R, G, B: ``hist_correl``
  (correlation), ``hist_intersect`` (Σ min), ``hist_bhattacharyya_sim`` (1 − Bhattacharyya
  distance, so 1 = identical histograms).
- ``phash_sim`` / ``dhash_sim`` / ``ahash_sim``: 1 − Hamming(hash(x), hash(y)) / hash_size² with
  ``imagehash`` on the 8-bit RGB picture the images save as (``core.images.to_pil``).
- ``color_w1_sim``: colour-distribution similarity, 1 − the mean over R, G, B of the Wasserstein-1
  (earth mover's) distance between the two images' distributions of that channel's values. Values
  lie in 0..1, so the distance does too: 1 = same colour distribution (whatever the layout), 0 = all
  black against all white.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# Image values per chunk (1 MB float32; SSIM's working set is ~20x that). Measured on CPU, larger
# chunks are slower: temporaries fall out of cache, and those over 32 MB get fresh pages every call.
CHUNK_ELEMENTS = 1 << 18
SSIM_PAD = 5  # half the 11-px window: Gaussian σ 1.5 truncated at 3.5σ, as torchmetrics and skimage
MS_SSIM_MIN_SIZE = 176  # torchmetrics needs side // 2**4 > 10 (its own message says "> 160")
HASHES = ("phash", "dhash", "ahash")
HISTOGRAM_COLUMNS = {"correlation": "hist_correl", "intersection": "hist_intersect",
                     "bhattacharyya": "hist_bhattacharyya_sim"}


class PixelMetricError(ValueError):
    """A problem with one input; ``input`` names it so that a node can say which."""

    def __init__(self, input_name: str, message: str):
        super().__init__(message)
        self.input = input_name


def _size(t: torch.Tensor) -> str:
    return f"{t.shape[2]}x{t.shape[1]} px"


def check_pair(images: torch.Tensor, reference: torch.Tensor) -> None:
    for name, t in (("images", images), ("reference", reference)):
        if t.ndim != 4 or t.shape[-1] != 3 or len(t) == 0:
            raise PixelMetricError(name, f"expected a batch of RGB images [B, H, W, 3], got shape "
                                         f"{tuple(t.shape)}")
    if len(reference) not in (1, len(images)):
        raise PixelMetricError("reference", f"got {len(reference)} reference images for {len(images)} "
                                            "images; give one reference for all or one per image")
    if reference.shape[1:3] != images.shape[1:3]:
        raise PixelMetricError("reference", f"references are {_size(reference)} but images are "
                                            f"{_size(images)}; pixel metrics compare images of the same "
                                            "size (resize or crop one side)")


def _chunks(images: torch.Tensor, reference: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs of ``N,H,W,C`` chunks; a single reference stays a batch of one for kernels to broadcast."""
    check_pair(images, reference)
    step = max(1, CHUNK_ELEMENTS // images[0].numel())
    for start in range(0, len(images), step):
        y = reference if len(reference) == 1 else reference[start:start + step]
        yield images[start:start + step].float(), y.float()


def _paired(kernel: Callable, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return torch.cat([kernel(x, y).double() for x, y in _chunks(images, reference)])


def _mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).square().mean(dim=(1, 2, 3))  # float32: torch's cascade sum keeps ~1e-7 relative


def mse(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return _paired(_mse, images, reference)


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse(images, reference))


def _ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = x.movedim(-1, 1), y.expand_as(x).movedim(-1, 1)
    _, ssim_map = structural_similarity_index_measure(x, y, data_range=1.0, sigma=1.5, reduction="none",
                                                      return_full_image=True)
    return ssim_map[..., SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD].mean(dim=(1, 2, 3))


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    if min(images.shape[1:3]) <= 2 * SSIM_PAD:
        raise PixelMetricError("images", f"SSIM needs images of at least {2 * SSIM_PAD + 1}x"
                                         f"{2 * SSIM_PAD + 1} px (its Gaussian window); these are "
                                         f"{_size(images)}")
    return _paired(_ssim, images, reference)


def _ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    x, y = x.movedim(-1, 1), y.expand_as(x).movedim(-1, 1)
    return multiscale_structural_similarity_index_measure(x, y, data_range=1.0, sigma=1.5, reduction="none",
                                                          normalize="relu")


def check_ms_ssim_size(images: torch.Tensor) -> None:
    if min(images.shape[1:3]) < MS_SSIM_MIN_SIZE:
        raise PixelMetricError("ms_ssim", f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE}x"
                                          f"{MS_SSIM_MIN_SIZE} px (5 scales, each half the size of the "
                                          f"last, with an 11-px window); these are {_size(images)}. "
                                          "Turn MS-SSIM off or score larger images (SSIM works from 11 px)")


def ms_ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    check_ms_ssim_size(images)
    return _paired(_ms_ssim, images, reference)


def channel_histograms(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``N,H,W,C`` in 0..1 → ``N,C,bins`` float64, each summing to 1. Bin k holds [k, k+1)/bins, the
    last one also 1.0, as ``numpy.histogram``; float64 so values at bin edges land as numpy puts them."""
    n, height, width, c = x.shape
    index = (x.double() * bins).floor_().clamp_(0, bins - 1).long()
    index += torch.arange(n * c, device=x.device).view(n, 1, 1, c) * bins  # one bin range per image·channel
    counts = torch.bincount(index.flatten(), minlength=n * c * bins).view(n, c, bins)
    return counts.double() / (height * width)


def _compare_histograms(h1: torch.Tensor, h2: torch.Tensor) -> dict[str, torch.Tensor]:
    """OpenCV ``compareHist`` on normalised histograms ``…, bins``, averaged over channels."""
    d1, d2 = h1 - h1.mean(-1, keepdim=True), h2 - h2.mean(-1, keepdim=True)
    denom2 = d1.square().sum(-1) * d2.square().sum(-1)
    # OpenCV: two flat histograms (zero variance) count as perfectly correlated.
    correl = torch.where(denom2.abs() > 2.220446049250313e-16, (d1 * d2).sum(-1) / denom2.sqrt(),
                         torch.ones_like(denom2))
    coefficient = (h1 * h2).sqrt().sum(-1) / (h1.sum(-1) * h2.sum(-1)).sqrt()
    bhattacharyya = (1 - coefficient).clamp(min=0).sqrt()
    return {"hist_correl": correl.mean(-1), "hist_intersect": torch.minimum(h1, h2).sum(-1).mean(-1),
            "hist_bhattacharyya_sim": (1 - bhattacharyya).mean(-1)}


def histogram_similarity(images: torch.Tensor, reference: torch.Tensor, bins: int = 64) -> dict[str, torch.Tensor]:
    """All three histogram comparisons (one histogram pass): ``hist_correl``, ``hist_intersect``,
    ``hist_bhattacharyya_sim``."""
    if not 2 <= bins <= 65536:
        raise PixelMetricError("histogram_bins", f"got {bins} histogram bins; use 2 to 65536 (64 is usual)")
    parts = [_compare_histograms(channel_histograms(x, bins), channel_histograms(y, bins))
             for x, y in _chunks(images, reference)]
    return {column: torch.cat([p[column] for p in parts]) for column in HISTOGRAM_COLUMNS.values()}


def hash_similarity(images: torch.Tensor, reference: torch.Tensor, kind: str = "phash",
                    hash_size: int = 8) -> torch.Tensor:
    """1 − Hamming distance / hash_size² between ``imagehash`` hashes (one image at a time: PIL)."""
    import imagehash

    from ..images import to_pil

    check_pair(images, reference)
    functions = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash}
    if kind not in functions:
        raise PixelMetricError("hash_kind", f"unknown perceptual hash {kind!r}; choose one of {', '.join(HASHES)}")
    fn = functions[kind]
    references = [fn(to_pil(r), hash_size=hash_size) for r in reference]
    distances = [fn(to_pil(img), hash_size=hash_size) - references[i % len(references)]
                 for i, img in enumerate(images)]
    return 1 - torch.tensor(distances, dtype=torch.float64) / hash_size**2


def _color_w1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Equal sample counts: W1 between two empirical distributions = mean |sorted x − sorted y|.
    xs, ys = (t.movedim(-1, 1).flatten(2).sort(dim=-1).values for t in (x, y))
    return 1 - (xs - ys).abs().mean(dim=-1, dtype=torch.float64).mean(dim=-1)


def color_w1_similarity(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return _paired(_color_w1, images, reference)
