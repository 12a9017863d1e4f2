"""Generated scenes with known object masks and a small CNN that learns them in seconds on CPU.

This is the localisation ground truth of camscope: each scene holds exactly one coloured shape on
a noisy background, the class is the kind of shape (never its colour), and the pixel mask of the
shape is known. A CAM method that "points at the object" puts the maximum of its map inside that
mask (the pointing game, :func:`cam_points_inside`).

Typical use::

    from camscope.studies.synthetic import load_or_train, make_scenes, normalize, TARGET_LAYER

    model = load_or_train()                      # trained once (~5 s), then cached
    scenes = make_scenes(200, seed=1000)         # held-out: any seed other than the training one
    x = normalize(scenes.images)                 # the model expects normalised inputs
    # explain `model` at layer TARGET_LAYER ("features"), compare maps with scenes.masks

:class:`SmallCNN` is a global-average-pooling network (conv blocks -> GAP -> linear), the
architecture CAM was defined for. :func:`train_small_cnn` adds a mask-guided loss that keeps the
last conv layer's evidence on the object, so "the evidence lies on the object" holds by
construction: every correct method (Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM,
Eigen-CAM, Ablation-CAM, Score-CAM) should point inside the mask on ~100 % of scenes, and a
method that misplaces, flips or transposes its maps fails. The benchmark tests localisation
mechanics; it does not test class discrimination (all evidence sits on the one object).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.core.threads import torch_threads
from camscope.metrics.localisation import pointing_hits

__all__ = [
    "SHAPES",
    "SYNTH_MEAN",
    "SYNTH_STD",
    "TARGET_LAYER",
    "VERSION",
    "Scenes",
    "SmallCNN",
    "make_scenes",
    "normalize",
    "train_small_cnn",
    "evaluate",
    "load_or_train",
    "default_cache_dir",
    "cam_points_inside",
    "node_masks",
]

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("square", "disk", "triangle", "cross")
"""Class names; the label of a scene is the index of its shape kind in this tuple."""

SYNTH_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SYNTH_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

TARGET_LAYER = "features"
"""Recommended CAM target layer of :class:`SmallCNN`: the last conv block, output (N,64,16,16)."""

VERSION = "1"
"""Bumped whenever the data generator, the model or the training recipe changes (cache key)."""


@dataclass
class Scenes:
    """A batch of generated scenes.

    Attributes:
        images: float32 (n,3,size,size) in [0,1], not normalised (see :func:`normalize`).
        labels: int64 (n,), index into :data:`SHAPES`.
        masks: bool (n,size,size), True on the pixels of the shape.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _shape_masks(kind: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Mask of shape ``kind`` given offsets from its centre (m,S,S) and half-extents r (m,1,1)."""
    if kind == 0:  # square
        return (dx.abs() <= r) & (dy.abs() <= r)
    if kind == 1:  # disk
        return dx * dx + dy * dy <= r * r
    if kind == 2:  # upward isosceles triangle, apex at the top, base at the bottom
        return (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) * 0.5)
    if kind == 3:  # plus-shaped cross with arms of width 0.8 r
        t = 0.4 * r
        return ((dx.abs() <= r) & (dy.abs() <= t)) | ((dy.abs() <= r) & (dx.abs() <= t))
    raise ValueError(f"unknown shape kind {kind}")


_GRID = 5  # the low-frequency background noise is a GRID x GRID random field, upsampled


def _upsampling_matrix(size: int) -> Tensor:
    """(GRID, size) matrix of 1-D bicubic upsampling weights (each column sums to one)."""
    eye = torch.eye(_GRID)[:, None, None, :]
    return F.interpolate(eye, size=(1, size), mode="bicubic", align_corners=False)[:, 0, 0, :]


def make_scenes(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    extent: tuple[float, float] = (1 / 6, 1 / 3),
    pixel_noise: float = 0.03,
    blob_noise: float = 0.12,
    min_contrast: float = 0.5,
) -> Scenes:
    """Generate ``n`` scenes, each with one shape of a random colour on a noisy background.

    Labels are balanced (each class appears ``n // 4`` or ``n // 4 + 1`` times, in random order).
    The shape's extent (side, diameter) is uniform in ``extent`` times ``size`` and it lies fully
    inside the image. The background is a random colour plus smooth low-frequency noise
    (amplitude ``blob_noise``); pixel noise of std ``pixel_noise`` covers the whole image. Object
    and background colours are drawn independently of the class, at least ``min_contrast`` apart
    (Euclidean distance in RGB). Deterministic for a given seed.

    Args:
        n: number of scenes (>= 0).
        size: image side in pixels (>= 16).
        seed: random seed; different seeds give independent scenes.
        extent: (min, max) object extent as a fraction of ``size``.
        pixel_noise: std of the i.i.d. Gaussian pixel noise.
        blob_noise: amplitude of the low-frequency background noise.
        min_contrast: minimum RGB distance between object and background colour (<= 0.9).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    lo_frac, hi_frac = extent
    if not 0 < lo_frac <= hi_frac <= 0.9:
        raise ValueError(f"extent must satisfy 0 < min <= max <= 0.9, got {extent}")
    if not 0 <= min_contrast <= 0.9:
        raise ValueError(f"min_contrast must be in [0, 0.9], got {min_contrast}")
    g = torch.Generator().manual_seed(int(seed))

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=g)

    labels = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]

    # Geometry: half-extent r and a centre keeping the whole shape inside the image.
    r = (lo_frac + (hi_frac - lo_frac) * rand(n)) * size / 2
    margin = r + 1.0
    cx = margin + (size - 2 * margin) * rand(n)
    cy = margin + (size - 2 * margin) * rand(n)

    # Colours: background in [0.15, 0.85]^3; object colour redrawn until far enough from it.
    bg = 0.15 + 0.7 * rand(n, 3)
    obj = rand(n, 3)
    for _ in range(100):
        close = (obj - bg).norm(dim=1) < min_contrast
        if not bool(close.any()):
            break
        obj[close] = rand(int(close.sum()), 3)
    else:  # pragma: no cover - practically unreachable; fall back to the opposite corner
        close = (obj - bg).norm(dim=1) < min_contrast
        obj[close] = (bg[close] < 0.5).float()

    # Smooth background noise: a coarse random grid upsampled bicubically (as a separable matrix
    # product, much faster than F.interpolate on the batch); then pixel noise.
    coarse = rand(n, 3, _GRID, _GRID) * 2 - 1
    up = _upsampling_matrix(size)  # (GRID, size)
    blobs = up.T @ coarse @ up  # (n,3,size,size)
    noise = torch.randn((n, 3, size, size), generator=g)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for kind in range(len(SHAPES)):
        idx = (labels == kind).nonzero().flatten()
        if idx.numel() == 0:
            continue
        dx = coords[None, None, :] - cx[idx, None, None]
        dy = coords[None, :, None] - cy[idx, None, None]
        masks[idx] = _shape_masks(kind, dx, dy, r[idx, None, None])

    m = masks[:, None]
    images = blobs.mul_(blob_noise).add_(bg[:, :, None, None])
    images = torch.where(m, obj[:, :, None, None], images)
    images = images.add_(noise.mul_(pixel_noise)).clamp_(0.0, 1.0)
    return Scenes(images=images, labels=labels.long(), masks=masks)


def normalize(images: Tensor) -> Tensor:
    """Normalise images in [0,1] (N,3,H,W) with :data:`SYNTH_MEAN` / :data:`SYNTH_STD`."""
    mean = torch.tensor(SYNTH_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(SYNTH_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


def _conv_block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    """conv3x3 -> [max-pool 2x2] -> BN -> ReLU (pooling first: same maxima, 4x cheaper BN)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return [conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """Four conv blocks -> global average pooling -> linear classifier over :data:`SHAPES`.

    ``features`` (conv-BN-ReLU blocks, max-pooling in the first two) maps normalised (N,3,64,64)
    inputs to (N,widths[-1],16,16); it is the recommended CAM target layer
    (:data:`TARGET_LAYER`, the same output as ``features.13``, its final ReLU). The logits are
    ``classifier(mean over positions of features(x))``, the architecture CAM was defined for.
    Inputs must be normalised with :func:`normalize`.
    """

    def __init__(
        self, num_classes: int = len(SHAPES), widths: tuple[int, int, int, int] = (8, 16, 32, 64)
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            *_conv_block(3, w1, pool=True),
            *_conv_block(w1, w2, pool=True),
            *_conv_block(w2, w3, pool=False),
            *_conv_block(w3, w4, pool=False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) for normalised images (N,3,H,W)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def node_masks(masks: Tensor, h: int, w: int) -> Tensor:
    """Fraction of each (h,w) cell's bilinear-upsampling node that lies inside the mask.

    Bilinear upsampling (align_corners=False) of an (h,w) map to (H,W) has its maxima at the
    pixels nearest the cell centres ``(i + 0.5) * H / h - 0.5``; this returns, per cell, the mean
    of the mask over those (up to 2x2) pixels, as float (n,h,w). It says where a coarse map may
    peak for the pointing game to count it inside the object.
    """
    big_h, big_w = masks.shape[-2:]

    def nodes(small: int, big: int) -> tuple[Tensor, Tensor]:
        p = (torch.arange(small, dtype=torch.float64) + 0.5) * big / small - 0.5
        return p.floor().long().clamp(0, big - 1), p.ceil().long().clamp(0, big - 1)

    (r0, r1), (c0, c1) = nodes(h, big_h), nodes(w, big_w)
    m = masks.float()
    total = sum(m[:, r][:, :, c] for r in (r0, r1) for c in (c0, c1))
    return total / 4


def _guidance_loss(
    acts: Tensor, weights: Tensor, inside: Tensor, background_weight: float = 0.3
) -> Tensor:
    """Loss keeping the evidence of (N,K,h,w) activations on the object (``inside``: (N,h,w)).

    Three terms, each zero when all evidence lies on the object: the mass of a softmax over
    positions of the class activation map ``sum_k weights[n,k] * acts[n,k]`` outside the object
    (a differentiable pointing game for CAM-style methods); the same for the channel sum of the
    activations (for class-agnostic methods such as Eigen-CAM); and ``background_weight`` times
    the mean activation outside the object.
    """
    outside = (1.0 - inside).flatten(1)
    cam = torch.einsum("nkhw,nk->nhw", acts, weights).flatten(1)
    total = acts.sum(1).flatten(1)
    loss = (torch.softmax(cam, 1) * outside).sum(1).mean()
    loss = loss + (torch.softmax(total / 4.0, 1) * outside).sum(1).mean()
    return loss + background_weight * (acts.mean(1).flatten(1) * outside).mean()


def train_small_cnn(
    *,
    seed: int = 0,
    n_train: int = 2000,
    epochs: int = 4,
    size: int = 64,
    batch_size: int = 32,
    lr: float = 1e-2,
    guidance: float = 1.0,
    device: str | torch.device = "cpu",
    num_threads: int | None = 1,
    progress: bool = False,
) -> SmallCNN:
    """Train a :class:`SmallCNN` on ``make_scenes(n_train, size=size, seed=seed)``.

    Loss: cross-entropy plus ``guidance`` times a localisation loss that uses the known masks to
    keep the last conv layer's evidence on the object (see :func:`_guidance_loss`). This makes
    "the model's evidence lies on the object" true by construction, so that a correct CAM method
    must point inside the mask; ``guidance=0`` trains on labels only (slower to learn, and
    coarse maps then often peak just outside the shape's edges).

    Adam with a one-cycle learning-rate schedule, batches of 32. ``num_threads`` sets torch's
    intra-op thread count during training only (restored afterwards; None keeps the current
    one): the tensors are small, and one thread is as fast as two on an idle machine and several
    times faster on a busy one. Deterministic for given arguments on a given device; the global
    RNG state is forked, so the caller's is untouched. Use
    another seed for held-out scenes, e.g. ``make_scenes(n, seed=seed + 1000)``.

    Returns:
        The trained model in eval mode, on ``device``.
    """
    if n_train < 1 or epochs < 1 or batch_size < 1:
        raise ValueError(
            f"n_train, epochs and batch_size must be >= 1, got {n_train}, {epochs}, {batch_size}"
        )
    device = torch.device(device)
    data = make_scenes(n_train, size=size, seed=seed)
    channels_last = device.type == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_all = normalize(data.images).to(device).contiguous(memory_format=fmt)
    y_all = data.labels.to(device)
    steps_per_epoch = math.ceil(n_train / batch_size)
    with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN().to(device)
        model.to(memory_format=fmt)
        model.eval()  # probe the map size without touching the BN statistics
        with torch.no_grad():
            h = model.features(x_all[:1]).shape[-2:]
        inside_all = node_masks(data.masks, h[0], h[1]).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.25
        )
        def step(idx: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            acts = model.features(x_all[idx])
            logits = model.classifier(torch.flatten(model.pool(acts), 1))
            loss = F.cross_entropy(logits, y)
            if guidance:
                loss = loss + guidance * _guidance_loss(acts, model.classifier.weight[y], inside_all[idx])
            return logits, loss

        model.train()
        train_epochs(step, y_all, opt, sched, epochs=epochs, batch_size=batch_size, seed=seed,
                     desc="train SmallCNN", progress=progress)  # fmt: skip
    model.to(memory_format=torch.contiguous_format)
    return model.eval()


def train_epochs(
    step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    labels: Tensor,
    opt: torch.optim.Optimizer,
    sched: Any,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    desc: str,
    progress: bool = False,
) -> None:
    """The training loop the synthetic models share: per epoch a permutation of the examples
    (generator seeded with ``seed + 1``), batches of ``batch_size``; ``step(idx, y)`` returns
    the batch's (logits, loss), then a step of ``opt`` and ``sched``."""
    from tqdm.auto import tqdm

    n = labels.shape[0]
    order = torch.Generator().manual_seed(seed + 1)
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=order).to(labels.device)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            y = labels[idx]
            logits, loss = step(idx, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += idx.numel()
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * idx.numel()
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        logger.debug("epoch %d: loss %.4f acc %.4f", epoch, loss_sum / total, correct / total)


@torch.no_grad()
def evaluate(model: nn.Module, scenes: Scenes, batch_size: int = 500) -> float:
    """Classification accuracy of ``model`` on ``scenes`` (normalised internally)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        correct = 0
        for i in range(0, len(scenes), batch_size):
            x = normalize(scenes.images[i : i + batch_size]).to(device)
            pred = model(x).argmax(1).cpu()
            correct += int((pred == scenes.labels[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(scenes))


def default_cache_dir() -> Path:
    """``$CAMSCOPE_SYNTHETIC_CACHE`` when set, else ``$XDG_CACHE_HOME/camscope/synthetic``
    (``~/.cache/camscope/synthetic`` by default). The test suite points the variable at a folder
    holding the committed fixture weights, so that no test depends on this machine's training."""
    explicit = os.environ.get("CAMSCOPE_SYNTHETIC_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "camscope" / "synthetic"


_TRAIN_PARAMS = inspect.signature(train_small_cnn).parameters
_KEY_PARAMS = ("seed", "n_train", "epochs", "size", "batch_size", "lr", "guidance")


def load_or_train(cache_dir: Path | str | None = None, **kw: object) -> SmallCNN:
    """Return a trained :class:`SmallCNN`, loading it from the cache or training and caching it.

    ``kw`` are passed to :func:`train_small_cnn`. The cache file name hashes :data:`VERSION` and
    the training hyper-parameters (not ``device``, ``num_threads`` or ``progress``). Writes are
    atomic (temp file in the same directory, then ``os.replace``); an unreadable cache entry is
    retrained and overwritten.
    """
    return cached_model(
        "smallcnn", VERSION, SmallCNN, train_small_cnn, _KEY_PARAMS, cache_dir, kw, _TRAIN_PARAMS
    )  # type: ignore[return-value]


def cached_model(
    prefix: str,
    version: str,
    build: Callable[[], nn.Module],
    train: Callable[..., nn.Module],
    key_params: tuple[str, ...],
    cache_dir: Path | str | None,
    kw: dict[str, object],
    params_of: Mapping[str, inspect.Parameter],
) -> nn.Module:
    """``train(**kw)``'s model, cached as ``<cache_dir>/<prefix>-v<version>-<hash>.pt`` (the hash
    covers ``version`` and the ``key_params`` of the training arguments, whose defaults come from
    ``params_of``, the trainer's signature); loaded into ``build()`` when the file exists and is
    readable."""
    defaults = {k: p.default for k, p in params_of.items() if k in key_params}
    unknown = set(kw) - set(params_of)
    if unknown:
        raise TypeError(f"unexpected training arguments: {sorted(unknown)}")
    params = {k: kw.get(k, defaults[k]) for k in key_params}
    blob = json.dumps({"version": version, **params}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{prefix}-v{version}-{key}.pt"
    device = torch.device(str(kw.get("device", "cpu")))

    if path.is_file():
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            model = build().to(device)
            model.load_state_dict(state)
            return model.eval()
        except Exception as exc:  # corrupt or incompatible entry: retrain below
            logger.warning("ignoring unreadable cache entry %s: %s", path, exc)

    model = train(**kw)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return model


def cam_points_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """Pointing game: whether the argmax of each map (n,H,W) falls inside its mask (n,H,W).

    Ties are broken by the first maximum in row-major order. A map that is constant (e.g. all
    zeros) counts as pointing at pixel (0,0). (:func:`camscope.metrics.pointing_hits` with
    ``ties="first"``.)
    """
    return pointing_hits(maps, masks, ties="first")
