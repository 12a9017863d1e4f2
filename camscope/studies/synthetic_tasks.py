"""The synthetic scenes as a segmentation task and as a detection task, with known object masks.

Both models reuse the trained :class:`~camscope.studies.synthetic.SmallCNN`'s convolutional trunk
(``features``, (N, 64, 16, 16), frozen) and add a small head trained for a few seconds on the
scenes' masks (the trunk's training kept its evidence on the object, so the heads learn quickly):

* :class:`SceneSegmenter`: per-pixel logits (N, 1 + 4, H, W), class 0 the background and class
  ``1 + i`` the shape :data:`~camscope.studies.synthetic.SHAPES` ``[i]`` (head: conv 3x3 -> ReLU
  -> conv 1x1 at stride 4, upsampled bilinearly to the input as FCN does; cross-entropy per cell
  against the mask at the cells' resolution);
* :class:`SceneDetector`: a one-stage detector in the manner of FCOS (Tian et al. 2019): every
  cell predicts the four shapes' scores (sigmoid) and the distances (l, t, r, b) from its centre
  to the box's sides; cells inside the object are positives. Its output is torchvision's: one
  ``{"boxes", "labels", "scores"}`` dict per image, after per-class NMS (IoU 0.5), best first.

Their CAM layer is the trunk's last block (:data:`~camscope.studies.synthetic.TARGET_LAYER`,
``features``); the task's target (the shape's class over the predicted mask; the detection
matching the object's box) is explained and the map compared with the object's mask (pointing
game, energy in the mask) by :func:`localisation_table` (``benchmarks/synthetic_tasks.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.core.threads import torch_threads
from camscope.studies.synthetic import (
    SHAPES,
    Scenes,
    SmallCNN,
    cached_model,
    load_or_train,
    make_scenes,
    normalize,
)

__all__ = [
    "SceneSegmenter", "SceneDetector", "train_segmenter", "train_detector", "load_or_train_task",
    "scene_boxes", "localisation_table", "TaskFigures",
]

VERSION = "1"
"""Bumped whenever the heads or their training change (cache key)."""

BACKGROUND = 0
NUM_CLASSES = 1 + len(SHAPES)


def scene_boxes(masks: Tensor) -> Tensor:
    """(n, 4) boxes (x0, y0, x1, y1) in pixels enclosing each (n, H, W) mask."""
    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h, ar_w = torch.arange(h).expand(n, h), torch.arange(w).expand(n, w)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


class SceneSegmenter(nn.Module):
    """SmallCNN's trunk and a per-pixel head: normalised (N, 3, H, W) -> logits (N, 5, H, W)."""

    def __init__(self, trunk: SmallCNN | None = None) -> None:
        super().__init__()
        self.features = (trunk if trunk is not None else SmallCNN()).features
        self.head = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, NUM_CLASSES, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.features(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SceneDetector(nn.Module):
    """SmallCNN's trunk and an FCOS-style head: normalised (N, 3, H, W) -> detections.

    Per cell (stride ``s`` = H / 16): class logits (4 shapes, sigmoid scores) and box distances
    ``(l, t, r, b) = s * exp(d)`` from the cell centre; the box ``(cx - l, cy - t, cx + r, cy +
    b)``. Per image the cells with a score of at least ``score_threshold``, per-class NMS at IoU
    0.5, at most ``max_detections``, best first (scores, boxes and labels as torchvision's).
    """

    def __init__(self, trunk: SmallCNN | None = None, score_threshold: float = 0.05, max_detections: int = 10) -> None:
        super().__init__()
        self.features = (trunk if trunk is not None else SmallCNN()).features
        self.tower = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(32, len(SHAPES), 1)
        self.box = nn.Conv2d(32, 4, 1)
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def dense(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits (N, 4, h, w), boxes (N, 4, h, w) as x0, y0, x1, y1 in input pixels)."""
        t = self.tower(self.features(x))
        h, w = t.shape[-2:]
        sy, sx = x.shape[-2] / h, x.shape[-1] / w
        cy = (torch.arange(h, device=x.device, dtype=t.dtype) + 0.5) * sy
        cx = (torch.arange(w, device=x.device, dtype=t.dtype) + 0.5) * sx
        d = torch.exp(self.box(t).clamp(max=6.0)) * max(sx, sy)
        boxes = torch.stack([cx[None, :] - d[:, 0], cy[:, None] - d[:, 1], cx[None, :] + d[:, 2], cy[:, None] + d[:, 3]], 1)
        return self.cls(t), boxes

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        from torchvision.ops import batched_nms

        logits, boxes = self.dense(x)
        probs = torch.sigmoid(logits).flatten(2)  # (N, 4, hw)
        scores, labels = probs.max(dim=1)
        boxes = boxes.flatten(2).transpose(1, 2)  # (N, hw, 4)
        out = []
        for i in range(x.shape[0]):
            keep = (scores[i] >= self.score_threshold).nonzero().flatten()
            keep = keep[batched_nms(boxes[i, keep].detach(), scores[i, keep].detach(), labels[i, keep], 0.5)]
            keep = keep[: self.max_detections]
            out.append({"boxes": boxes[i, keep], "labels": labels[i, keep], "scores": scores[i, keep]})
        return out


def _trunk(device: torch.device) -> SmallCNN:
    return load_or_train(device=device)  # the committed / cached SmallCNN (training seed 0)


def train_segmenter(*, seed: int = 0, n_train: int = 2000, steps: int = 400, batch_size: int = 32,
                    lr: float = 3e-3, device: str | torch.device = "cpu", num_threads: int | None = 1) -> SceneSegmenter:
    """Train :class:`SceneSegmenter`'s head (trunk frozen) on ``make_scenes(n_train, seed=seed)``:
    per-cell cross-entropy against each 4x4 cell's majority label (shape or background)."""
    device = torch.device(device)
    data = make_scenes(n_train, seed=seed)
    x_all = normalize(data.images).to(device)
    with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SceneSegmenter(_trunk(device)).to(device)
        with torch.no_grad():
            feats = model.features.eval()(x_all)
        cells = F.avg_pool2d(data.masks[:, None].float(), 4)[:, 0].to(device) > 0.5
        labels = torch.where(cells, data.labels[:, None, None].to(device) + 1, BACKGROUND)
        weight = torch.ones(NUM_CLASSES, device=device)
        weight[BACKGROUND] = 0.25  # the object covers a few cells of 256
        _fit(model.head, lambda idx: F.cross_entropy(model.head(feats[idx]), labels[idx], weight=weight),
             n_train, steps, batch_size, lr, seed)
    return model.eval()


def train_detector(*, seed: int = 0, n_train: int = 2000, steps: int = 400, batch_size: int = 32,
                   lr: float = 3e-3, device: str | torch.device = "cpu", num_threads: int | None = 1) -> SceneDetector:
    """Train :class:`SceneDetector`'s head (trunk frozen) on ``make_scenes(n_train, seed=seed)``:
    binary cross-entropy of every cell's four class scores (positive: the cell's centre pixel
    inside the object, for its class) and an L1 loss on the log distances to the object's box
    at the positive cells."""
    device = torch.device(device)
    data = make_scenes(n_train, seed=seed)
    x_all = normalize(data.images).to(device)
    gt = scene_boxes(data.masks).to(device)
    with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SceneDetector(_trunk(device)).to(device)
        with torch.no_grad():
            feats = model.features.eval()(x_all)
        h, w = feats.shape[-2:]
        s = data.images.shape[-1] / w
        inside = data.masks[:, 2::4, 2::4].to(device)  # the pixel at each cell's centre
        onehot = F.one_hot(data.labels, len(SHAPES)).float().to(device)[:, :, None, None]
        cls_target = onehot * inside[:, None].float()
        c = (torch.arange(h, device=device) + 0.5) * s
        cx, cy = c[None, None, :].expand(n_train, h, w), c[None, :, None].expand(n_train, h, w)
        g = gt[:, :, None, None]
        dist = torch.stack([cx - g[:, 0], cy - g[:, 1], g[:, 2] - cx, g[:, 3] - cy], 1)
        log_d = torch.log(dist.clamp_min(0.5) / s)

        def loss(idx: Tensor) -> Tensor:
            t = model.tower(feats[idx])
            bce = F.binary_cross_entropy_with_logits(model.cls(t), cls_target[idx], reduction="sum")
            pos = inside[idx][:, None].expand(-1, 4, -1, -1)
            l1 = (model.box(t) - log_d[idx]).abs()[pos].sum()
            return (bce + l1) / pos.sum().clamp_min(1)

        _fit(nn.ModuleList([model.tower, model.cls, model.box]), loss, n_train, steps, batch_size, lr, seed)
    return model.eval()


def _fit(params: nn.Module, loss_of: object, n: int, steps: int, batch_size: int, lr: float, seed: int) -> None:
    opt = torch.optim.Adam(params.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        loss = loss_of(idx)  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


_KEYS = ("seed", "n_train", "steps", "batch_size", "lr")


def load_or_train_task(task: str, cache_dir: Path | str | None = None, **kw: object) -> nn.Module:
    """The trained :class:`SceneSegmenter` (``task="segment"``) or :class:`SceneDetector`
    (``"detect"``), from the synthetic models' cache or trained (seconds) and cached."""
    if task == "segment":
        train, build = train_segmenter, SceneSegmenter
    elif task == "detect":
        train, build = train_detector, SceneDetector
    else:
        raise ValueError(f"task must be 'segment' or 'detect', not {task!r}")
    params = inspect.signature(train).parameters
    return cached_model(f"scene-{task}", VERSION, build, train, _KEYS, cache_dir, kw, params)


# --------------------------------------------------------------------------- measurement


@dataclass
class TaskFigures:
    """Per method: pointing-game hits and energy in the object's mask (and in its box), over
    the scenes whose target the model found (``found``: their share; a segment of the right
    class / a detection matching the object's box and class); the chance levels: the mean
    share of the image the masks / boxes cover (a uniform map's energy, a random point's hit
    rate)."""

    task: str
    n: int
    found: float
    pointing: dict[str, float]
    energy: dict[str, float]
    energy_box: dict[str, float]
    chance_pointing: float
    chance_energy_box: float


def localisation_table(task: str, methods: Sequence[str], *, n: int = 100, seed: int = 1000,
                       model: nn.Module | None = None, images_per_call: int = 25) -> TaskFigures:
    """Explain ``n`` held-out scenes (``make_scenes(n, seed=seed)``) with each method and
    measure the maps against the objects' masks.

    ``segment``: the target is the object's class (``1 + label``) over the model's predicted
    mask of it; ``detect``: the detection best matching the object's box with its class (IoU >
    0.5; as ``--box x0,y0,x1,y1:label``). Pointing: the map's first maximum inside the mask
    (:func:`~camscope.studies.synthetic.cam_points_inside`); energy: ``sum(S M) / sum(S)``
    (Wang et al. 2020, Sec. 4.3), inside the mask and inside the box. A scene whose target the
    model misses (an empty predicted mask, no matching detection) has a zero score and nothing
    to explain: it is left out of the figures, and ``found`` says how many were kept.
    """
    from camscope.engine import CamEngine
    from camscope.studies.synthetic import TARGET_LAYER, cam_points_inside
    from camscope.targets import Detection

    model = model if model is not None else load_or_train_task(task)
    scenes: Scenes = make_scenes(n, seed=seed)
    x = normalize(scenes.images)
    boxes = scene_boxes(scenes.masks)
    if task == "segment":
        targets: list = [[int(lab) + 1] for lab in scenes.labels]
    else:
        targets = [[Detection(b.tolist(), int(lab))] for b, lab in zip(boxes, scenes.labels, strict=True)]
    engine = CamEngine(model, TARGET_LAYER, methods=list(methods))
    maps: dict[str, list[Tensor]] = {m: [] for m in methods}
    scores = []
    for start in range(0, n, images_per_call):
        sl = slice(start, start + images_per_call)
        res = engine(x[sl], targets[sl], task=task)
        scores.append(res.scores[:, 0])
        for m in methods:
            maps[m].append(res.maps[m][:, 0])
    found = torch.cat(scores) > 0
    box_masks = torch.zeros_like(scenes.masks)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        box_masks[i, y0:y1, x0:x1] = True
    pointing, energy, energy_box = {}, {}, {}
    masks, box_masks = scenes.masks[found], box_masks[found]
    for m in methods:
        s = torch.cat(maps[m])[found].clamp_min(0)
        total = s.sum(dim=(1, 2)).clamp_min(1e-12)
        pointing[m] = float(cam_points_inside(s, masks).float().mean())
        energy[m] = float(((s * masks).sum(dim=(1, 2)) / total).mean())
        energy_box[m] = float(((s * box_masks).sum(dim=(1, 2)) / total).mean())
    return TaskFigures(
        task, n, float(found.float().mean()), pointing, energy, energy_box,
        chance_pointing=float(masks.float().mean()), chance_energy_box=float(box_masks.float().mean()),
    )
