"""Smoothing of CAMs: eigen-smoothing and test-time augmentation (TTA).

- ``eigen``: replace the channel sum of the weighted activations by their first principal
  component (as Eigen-CAM does for raw activations; sign fixed to agree with the plain map).
- ``aug``: explain horizontally flipped and intensity-scaled copies of the image for the class
  predicted on the original, map each CAM back to the original frame, and average.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from camscope.core.postprocess import normalize
from camscope.errors import UsageError

__all__ = ["SMOOTHINGS", "Augmentation", "AUGMENTATIONS", "Smoothing", "parse_smoothing", "expand_views", "fold_views"]

SMOOTHINGS = ("eigen", "aug")


@dataclass(frozen=True)
class Augmentation:
    """A test-time augmentation: optional horizontal flip, then intensity scaling."""

    flip: bool = False
    scale: float = 1.0

    def apply(self, x: Tensor, normalization: tuple[Sequence[float], Sequence[float]] | None) -> Tensor:
        """Augment normalised images (N,3,H,W). Scaling acts on pixel intensities when the
        normalisation (mean, std) is known, else on the tensor itself."""
        if self.flip:
            x = x.flip(-1)
        if self.scale != 1.0:
            if normalization is None:
                x = x * self.scale
            else:
                mean = torch.as_tensor(normalization[0], dtype=x.dtype, device=x.device)[:, None, None]
                std = torch.as_tensor(normalization[1], dtype=x.dtype, device=x.device)[:, None, None]
                x = ((x * std + mean) * self.scale - mean) / std
        return x

    def invert(self, maps: Tensor) -> Tensor:
        """Map (N,H,W) maps of augmented images back to the original frame."""
        return maps.flip(-1) if self.flip else maps


#: Identity first: view 0 of every image is the image itself.
AUGMENTATIONS: tuple[Augmentation, ...] = tuple(
    Augmentation(flip, scale) for flip in (False, True) for scale in (1.0, 0.9, 1.1)
)


@dataclass(frozen=True)
class Smoothing:
    """A smoothing variant: ``eigen`` reduces by the first principal component instead of the
    channel sum; ``aug`` averages the maps of the augmented views. ``Smoothing()`` is plain."""

    eigen: bool = False
    aug: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        """``("eigen", "aug")`` for both, ``()`` for plain (the order of ``SMOOTHINGS``)."""
        return tuple(s for s, on in (("eigen", self.eigen), ("aug", self.aug)) if on)

    @property
    def augmentations(self) -> tuple[Augmentation, ...]:
        """The views whose maps this variant averages (the identity alone without ``aug``)."""
        return AUGMENTATIONS if self.aug else AUGMENTATIONS[:1]

    @classmethod
    def of(cls, parts: Iterable[str]) -> Smoothing:
        parts = set(parts)
        return cls(eigen="eigen" in parts, aug="aug" in parts)


def parse_smoothing(specs: Iterable[str] | str | None) -> list[Smoothing]:
    """Parse smoothing specs into variants; the plain variant always comes first.

    Each spec is a comma- or plus-separated combination, e.g. ``"eigen,aug"`` is one variant with
    both. ``"none"``/``"plain"`` adds nothing beyond the plain variant.
    """
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [specs]
    variants = [Smoothing()]
    for spec in specs:
        parts = {p.strip().lower() for p in spec.replace("+", ",").split(",") if p.strip()}
        parts -= {"none", "plain"}
        unknown = parts - set(SMOOTHINGS)
        if unknown:
            raise UsageError(
                f"unknown smoothing {', '.join(sorted(unknown))!r}; choose from: {', '.join(SMOOTHINGS)}"
            )
        variant = Smoothing.of(parts)
        if variant not in variants:
            variants.append(variant)
    return variants


def expand_views(
    images: Tensor,
    augmentations: Sequence[Augmentation],
    normalization: tuple[Sequence[float], Sequence[float]] | None,
) -> Tensor:
    """(B,3,H,W) images -> (B*A,3,H,W) views, image-major: view ``b*A + a`` is image ``b``
    under augmentation ``a`` (the identity first, so view ``b*A`` is the image itself)."""
    if len(augmentations) == 1 and augmentations[0] == Augmentation():
        return images
    views = torch.stack([a.apply(images, normalization) for a in augmentations], dim=1)
    return views.reshape(images.shape[0] * len(augmentations), *images.shape[1:])


def fold_views(maps: Tensor, augmentations: Sequence[Augmentation]) -> Tensor:
    """(B,A,k,H,W) maps of the A views of each image -> (B,k,H,W): each view's map taken back
    to the original frame, averaged and normalised (one view: returned as it is)."""
    b, n, k, h, w = maps.shape
    if n == 1:
        return maps[:, 0]
    restored = torch.stack([augmentations[a].invert(maps[:, a]) for a in range(n)], dim=1)
    return normalize(restored.mean(dim=1).reshape(b * k, h, w)).reshape(b, k, h, w)
