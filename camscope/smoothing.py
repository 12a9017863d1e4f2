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

from camscope.errors import UsageError

__all__ = ["SMOOTHINGS", "Augmentation", "AUGMENTATIONS", "parse_smoothing", "variant_name"]

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


def parse_smoothing(specs: Iterable[str] | str | None) -> list[tuple[str, ...]]:
    """Parse smoothing specs into variants; the plain variant ``()`` always comes first.

    Each spec is a comma- or plus-separated combination, e.g. ``"eigen,aug"`` is one variant with
    both. ``"none"``/``"plain"`` adds nothing beyond the plain variant.
    """
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [specs]
    variants: list[tuple[str, ...]] = [()]
    for spec in specs:
        parts = {p.strip().lower() for p in spec.replace("+", ",").split(",") if p.strip()}
        parts -= {"none", "plain"}
        unknown = parts - set(SMOOTHINGS)
        if unknown:
            raise UsageError(
                f"unknown smoothing {', '.join(sorted(unknown))!r}; choose from: {', '.join(SMOOTHINGS)}"
            )
        variant = tuple(s for s in SMOOTHINGS if s in parts)
        if variant not in variants:
            variants.append(variant)
    return variants


def variant_name(method: str, variant: Sequence[str]) -> str:
    """Folder/key name of a method under a smoothing variant, e.g. ``gradcam+eigen+aug``."""
    return "+".join([method, *variant])
