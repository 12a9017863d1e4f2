"""Models, weights, class names and preprocessing.

Pretrained weights come through torchvision's weights API (downloaded with a progress bar on first
use into torch's hub cache); ``weights_file`` loads a local state dict with ``weights_only=True``.
Offline with nothing cached, loading fails with one line naming ``--weights FILE`` and the cache path.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camscope.errors import UsageError, WeightsError

if TYPE_CHECKING:
    from camscope.io.rundir import RunSettings

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "Preprocess",
    "LoadedModel",
    "load_model",
    "classification_models",
    "imagenet_wnids",
    "wnid_from_name",
    "load_class_names",
    "pick_device",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("classic", "weights")
RANDOM_WEIGHTS_SEED = 0
"""Seed of the random initialisation of a model built without weights (``--weights-tag none``)."""


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input, and which part of the photo the map covers.

    ``mode="classic"``: resize the whole photo to ``size`` (aspect ratio not kept), as in the
    classic Grad-CAM/Score-CAM studies, so the map covers the whole photo.
    ``mode="weights"``: the weights' own transform: resize the shorter side to ``resize``, then
    centre-crop ``size``; the map covers that crop.
    """

    mode: str = "classic"
    size: tuple[int, int] = (224, 224)
    resize: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std

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

    def to_tensor(self, image: Any) -> Tensor:
        """PIL RGB photo -> normalised float tensor (3,H,W)."""
        import numpy as np
        import torch.nn.functional as F

        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        if self.mode == "classic":
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        else:
            h, w = x.shape[-2:]
            r = self.resize or min(self.size)
            scale = r / min(h, w)
            nh, nw = max(round(h * scale), self.size[0]), max(round(w * scale), self.size[1])
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (nh - self.size[0]) // 2, (nw - self.size[1]) // 2
            x = x[..., top : top + self.size[0], left : left + self.size[1]]
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return ((x[0].clamp(0, 1) - mean) / std).contiguous()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "input_size": list(self.size),
            "resize_shorter_side": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "map_covers": "whole photo" if self.mode == "classic" else "centre crop",
        }


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: the ``--model``, ``--weights-tag``, ``--weights``,
    ``--preprocess``, ``--labels`` and ``--trust-checkpoint`` options, loadable anywhere (the
    CLI, a run, a remote worker) with :meth:`load`."""

    name: str = "resnet50"
    weights_tag: str | None = "IMAGENET1K_V1"
    weights_file: str | None = None
    preprocess: str = "classic"
    labels: str | None = None
    trust_checkpoint: bool = False

    def load(self, device: str | torch.device = "cpu", *, progress: bool = True) -> LoadedModel:
        """Build the model (see :func:`load_model`), with the class names of ``labels``."""
        loaded = load_model(
            self.name,
            weights_tag=self.weights_tag,
            weights_file=self.weights_file,
            preprocess=self.preprocess,
            device=device,
            trust_checkpoint=self.trust_checkpoint,
            progress=progress,
        )
        if self.labels:
            loaded.categories = load_class_names(self.labels)
        return loaded


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


def pick_device(spec: str | torch.device | None) -> torch.device:
    """``--device``: CUDA when available for ``None``/``"auto"``; a clear error for bad values."""
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown --device {spec!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    return dev


def classification_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _weights_enum(name: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(name)


def _resolve_tag(name: str, tag: str | None):
    if tag is None or tag.lower() == "none":
        return None
    enum = _weights_enum(name)
    if tag == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise UsageError(
            f"unknown --weights-tag {tag!r} for {name}; choose from: {', '.join(e.name for e in enum)}"
        ) from None


def cache_path_for(weights: Any) -> Path:
    """Where torch's hub cache keeps the file of a torchvision weights entry."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _download_state_dict(weights: Any, progress: bool) -> dict[str, Tensor]:
    path = cache_path_for(weights)
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash mismatch, ...
        reason = str(getattr(exc, "reason", exc)).splitlines()[0][:120]
        raise WeightsError(
            f"cannot get {weights} weights: download from {weights.url} failed ({reason}) and no "
            f"cached copy is at {path}; pass --weights FILE with a local state dict, or put the file "
            f"at that path"
        ) from None


def load_model(
    name: str = "resnet50",
    *,
    weights_tag: str | None = "IMAGENET1K_V1",
    weights_file: str | Path | None = None,
    preprocess: str = "classic",
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Build a torchvision classifier with weights.

    Args:
        name: any torchvision classification model (``resnet50``, ``vgg16``, ``convnext_tiny``...).
        weights_tag: entry of the model's weights enum (``IMAGENET1K_V1``, ``DEFAULT``...), or
            ``None``/``"none"`` for random weights (seeded with :data:`RANDOM_WEIGHTS_SEED`:
            the same in every process). With ``weights_file`` it still supplies the
            class names and preprocessing.
        weights_file: a local state dict (loaded with ``weights_only=True``).
        preprocess: ``"classic"`` (resize to 224x224) or ``"weights"`` (the weights' transform).
    """
    import torchvision.models as tvm

    if preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"did you mean: {', '.join(close)}?" if close else "see `camscope models`"
        raise UsageError(f"unknown model {name!r} (not a torchvision classification model); {hint}")
    weights = _resolve_tag(name, weights_tag)
    categories = list(weights.meta["categories"]) if weights is not None else None

    if weights_file is not None:
        from camscope.io.checkpoint import load_checkpoint

        state = load_checkpoint(weights_file, trust=trust_checkpoint)
        num_classes = _num_classes(state)
        kwargs: dict[str, Any] = {}
        if num_classes is not None and (categories is None or num_classes != len(categories)):
            kwargs["num_classes"] = num_classes
            categories = None
        model = tvm.get_model(name, weights=None, **kwargs)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise WeightsError(f"{weights_file}: does not fit {name}: {first[:200]}") from None
        weights_desc = f"file:{weights_file}"
    elif weights is not None:
        model = tvm.get_model(name, weights=None)
        model.load_state_dict(_download_state_dict(weights, progress))
        weights_desc = str(weights)
    else:
        # Seeded (without touching the global generator), so that every process that builds
        # the model -- a resumed run, a report, each worker of a --ray run -- gets the same one.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = tvm.get_model(name, weights=None)
        weights_desc = "random (no weights)"

    pre = _preprocess_for(weights, preprocess)
    wnids = imagenet_wnids() if categories is not None and len(categories) == 1000 else None
    model = model.to(device).eval()
    return LoadedModel(model, name, weights_desc, categories, pre, wnids)


def _num_classes(state: dict[str, Tensor]) -> int | None:
    """Number of outputs of the last 2-D weight (the classifier) in a state dict, if any."""
    last = None
    for key, value in state.items():
        if key.endswith("weight") and getattr(value, "dim", lambda: 0)() == 2:
            last = value
    return int(last.shape[0]) if last is not None else None


def _preprocess_for(weights: Any, mode: str) -> Preprocess:
    if mode == "classic" or weights is None:
        if mode == "weights":
            logger.warning("no weights transform known; using the classic 224x224 resize")
        return Preprocess("classic")
    t = weights.transforms()
    crop = int(t.crop_size[0])
    return Preprocess(
        "weights", (crop, crop), int(t.resize_size[0]), tuple(t.mean), tuple(t.std)
    )


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names from torchvision's weights metadata (nothing is downloaded)."""
    import torchvision.models as tvm

    return list(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order."""
    text = (Path(__file__).parent / "data" / "imagenet_wnids.txt").read_text()
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


def preprocess_from_description(desc: dict[str, Any]) -> Preprocess:
    """Rebuild a :class:`Preprocess` from its ``describe()`` dict (as saved in manifest.json)."""
    return Preprocess(
        desc["mode"],
        tuple(desc["input_size"]),
        desc.get("resize_shorter_side"),
        tuple(desc["mean"]),
        tuple(desc["std"]),
    )


def load_from_settings(
    settings: RunSettings,
    *,
    weights_file: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Rebuild the model of a finished run from its manifest ``settings``.

    A run made with ``--weights FILE`` is reloaded from that file unless ``weights_file`` says
    otherwise; a run made with a weights tag is reloaded through the weights API.
    """
    weights = settings.weights
    tag: str | None = None
    if weights_file is None and weights.startswith("file:"):
        weights_file = weights[len("file:") :]
    elif "." in weights and not settings.random_weights:
        tag = weights.rsplit(".", 1)[1]
    loaded = load_model(
        settings.model,
        weights_tag=tag if tag else ("IMAGENET1K_V1" if weights_file else None),
        weights_file=weights_file,
        preprocess=settings.preprocess.get("mode", "classic"),
        device=device,
        trust_checkpoint=trust_checkpoint,
        progress=progress,
    )
    if settings.preprocess:
        loaded.preprocess = preprocess_from_description(settings.preprocess)
    return loaded
