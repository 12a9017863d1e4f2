"""What every model source shares: preprocessing, the loaded-model record, class names, helpers."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from camscope import errors
from camscope.errors import UsageError, WeightsError

logger = logging.getLogger("camscope.models")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("classic", "weights")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DETECTION_INPUT_SIZE = (800, 800)
"""Size photos are resized to for a detector by the photo pipeline (torchvision detectors resize
their input again, to their own ``min_size``; boxes come back in these pixels)."""


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input, and which part of the photo the map covers.

    ``mode="classic"``: resize the whole photo to ``size`` (aspect ratio not kept), as in the
    classic Grad-CAM/Score-CAM studies, so the map covers the whole photo.
    ``mode="weights"``: the weights' own transform: resize the shorter side to ``resize``, then
    centre-crop ``size`` (crop fraction ``size / resize``); the map covers that crop.
    ``interpolation``: ``"bilinear"`` (default), ``"bicubic"`` (timm's and many Hugging Face
    models' pretrained configs) or ``"nearest"``; antialiased when shrinking.
    """

    mode: str = "classic"
    size: tuple[int, int] = (224, 224)
    resize: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std

    @property
    def crop_fraction(self) -> float | None:
        """Share of the resized shorter side that the centre crop keeps (``weights`` mode)."""
        if self.mode == "classic" or not self.resize:
            return None
        return min(self.size) / self.resize

    def frame(self, image: Any) -> Any:
        """The region of a PIL photo that the model input (and so the map) covers."""
        if self.mode == "classic":
            return image
        w, h = image.size
        scale = (self.resize or min(self.size)) / min(w, h)
        cw, ch = self.size[1] / scale, self.size[0] / scale
        left, top = (w - cw) / 2, (h - ch) / 2
        box = (round(left), round(top), round(left + cw), round(top + ch))
        return image.crop(box)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        import torch.nn.functional as F

        if self.interpolation == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)

    def to_tensor(self, image: Any) -> Tensor:
        """PIL RGB photo -> normalised float tensor (3,H,W)."""
        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        if self.mode == "classic":
            x = self._resize(x, self.size)
        else:
            h, w = x.shape[-2:]
            r = self.resize or min(self.size)
            scale = r / min(h, w)
            nh, nw = max(round(h * scale), self.size[0]), max(round(w * scale), self.size[1])
            x = self._resize(x, (nh, nw))
            top, left = (nh - self.size[0]) // 2, (nw - self.size[1]) // 2
            x = x[..., top : top + self.size[0], left : left + self.size[1]]
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return ((x[0].clamp(0, 1) - mean) / std).contiguous()

    def describe(self) -> dict[str, Any]:
        """The manifest's description (``interpolation`` only when not bilinear, so runs made
        before it existed describe the same preprocessing the same way)."""
        desc: dict[str, Any] = {
            "mode": self.mode,
            "input_size": list(self.size),
            "resize_shorter_side": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "map_covers": "whole photo" if self.mode == "classic" else "centre crop",
        }
        if self.interpolation != "bilinear":
            desc["interpolation"] = self.interpolation
        return desc

    def with_overrides(
        self,
        input_size: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocess:
        """A copy with ``--input-size`` / ``--mean`` / ``--std`` applied (the crop fraction of
        ``weights`` mode is kept)."""
        from dataclasses import replace

        out = self
        if input_size is not None:
            size = (int(input_size[0]), int(input_size[1]))
            resize = out.resize
            if resize is not None:
                resize = round(resize * min(size) / min(out.size))
            out = replace(out, size=size, resize=resize)
        if mean is not None:
            out = replace(out, mean=tuple(float(v) for v in mean))
        if std is not None:
            out = replace(out, std=tuple(float(v) for v in std))
        return out


def preprocess_from_description(desc: dict[str, Any]) -> Preprocess:
    """Rebuild a :class:`Preprocess` from its ``describe()`` dict (as saved in manifest.json)."""
    return Preprocess(
        desc["mode"],
        tuple(desc["input_size"]),
        desc.get("resize_shorter_side"),
        tuple(desc["mean"]),
        tuple(desc["std"]),
        desc.get("interpolation", "bilinear"),
    )


def interpolation_name(value: Any) -> str:
    """``bilinear`` / ``bicubic`` / ``nearest`` from a timm string or a PIL resample code; other
    values (``random``, ``lanczos``, ...) become ``bilinear`` with a log line."""
    if isinstance(value, str):
        name = value.lower()
    else:
        name = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(getattr(value, "value", value)), str(value))
    if name in INTERPOLATIONS:
        return name
    logger.info("interpolation %r is not supported; using bilinear", value)
    return "bilinear"


@dataclass
class LoadedModel:
    """A model ready for explaining, with what is known about it."""

    model: nn.Module
    name: str
    weights: str
    categories: list[str] | None
    preprocess: Preprocess
    wnids: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or a one-line UsageError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{what} needs the optional package '{module}': pip install \"camscope[{extra}]\""
        ) from None


def fit_state_dict(model: nn.Module, state: dict[str, Tensor], weights_file: Any, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is one WeightsError line."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise WeightsError(f"{weights_file}: does not fit {what}: {first[:200]}") from None


def classifier_outputs(state: dict[str, Tensor]) -> int | None:
    """Number of outputs of the last 2-D weight (the classifier) in a state dict, if any."""
    last = None
    for key, value in state.items():
        if key.endswith("weight") and getattr(value, "dim", lambda: 0)() == 2:
            last = value
    return int(last.shape[0]) if last is not None else None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - timm and transformers both depend on it
        import os

        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        return Path(home) / "hub"


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message, shortened."""
    text = " ".join(errors.first_line(getattr(exc, "reason", exc), default="").split())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- class names


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names from torchvision's weights metadata (nothing is downloaded)."""
    import torchvision.models as tvm

    return list(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order."""
    text = (Path(__file__).resolve().parent.parent / "data" / "imagenet_wnids.txt").read_text()
    return text.split()


_WNID = re.compile(r"(?<![A-Za-z0-9])(n\d{8})(?!\d)")


def wnid_from_name(name: str) -> str | None:
    """The WordNet id carried by a file name such as ``n01608432_kite.JPEG``, if any."""
    m = _WNID.search(name)
    return m.group(1) if m else None


def load_class_names(path: str | Path) -> list[str]:
    """Class names from a file: one per line (``n01440764 tench, Tinca tinca`` lines keep the first
    name after the WordNet id), or a JSON list, or a JSON object mapping index -> name."""
    import json

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read labels file ({exc.strerror or exc})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict):
            items = sorted(data.items(), key=lambda kv: int(kv[0]))
            return [v[-1] if isinstance(v, list) else str(v) for _, v in items]
        return [str(v) for v in data]
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if _WNID.match(line):
            line = line[9:].strip()
        names.append(line.split(",")[0].strip())
    if not names:
        raise UsageError(f"{p}: labels file holds no class names")
    return names


def class_index(spec: str, categories: Sequence[str] | None, num_classes: int) -> int:
    """Resolve ``--class`` (an index or a class name, case-insensitive) to an index."""
    s = spec.strip()
    if re.fullmatch(r"-?\d+", s):
        i = int(s)
        if not 0 <= i < num_classes:
            raise UsageError(f"--class {i} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
        return i
    if categories is None:
        raise UsageError(f"--class {spec!r}: the model has no class names; give an index 0..{num_classes - 1}")
    lowered = [c.lower() for c in categories]
    if s.lower() in lowered:
        return lowered.index(s.lower())
    close = difflib.get_close_matches(s.lower(), lowered, n=5)
    hint = f"; did you mean: {', '.join(categories[lowered.index(c)] for c in close)}?" if close else ""
    raise UsageError(f"--class {spec!r} is not a class name of this model{hint}")


def imagenet_wnids_if(categories: Sequence[str] | None) -> list[str] | None:
    """ImageNet-1k WordNet ids when ``categories`` are ImageNet-1k's classes in its order."""
    if categories is not None and len(categories) == 1000 and categories[0].lower().startswith("tench"):
        return imagenet_wnids()
    return None


# --------------------------------------------------------------------------- CLI value parsing


def parse_input_size(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``--input-size``: ``224`` or ``HxW`` (``384x288``) -> (H, W)."""
    if value is None:
        return None
    if isinstance(value, int):
        parts = [value, value]
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", value)
        if m is None:
            raise UsageError(f"--input-size {value!r}: give N or HxW, e.g. 224 or 384x288")
        parts = [int(m.group(1)), int(m.group(2) or m.group(1))]
    else:
        parts = [int(v) for v in value]
        if len(parts) == 1:
            parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--input-size {value!r}: give N or HxW with positive sizes")
    return parts[0], parts[1]


def parse_channels(value: str | Sequence[float] | None, flag: str) -> tuple[float, float, float] | None:
    """``--mean`` / ``--std``: three comma-separated numbers (one number: the same for all)."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")] if isinstance(value, str) else [float(v) for v in value]
    except ValueError:
        raise UsageError(f"{flag} {value!r}: give three comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise UsageError(f"{flag} {value!r}: give three numbers (R,G,B), not {len(parts)}")
    if flag == "--std" and min(parts) <= 0:
        raise UsageError(f"--std {value!r}: standard deviations must be positive")
    return parts[0], parts[1], parts[2]


RANDOM_WEIGHTS_SEED = 0
"""Seed of the random initialisation of a model built without weights (``--weights-tag none``)."""


@contextlib.contextmanager
def seeded_random() -> Iterator[None]:
    """Build a model without weights reproducibly: seeded with :data:`RANDOM_WEIGHTS_SEED`
    without touching the global generator, so that every process that builds it -- a resumed
    run, a report, each worker of a ``--ray`` run -- gets the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield
