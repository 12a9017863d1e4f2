"""Small random-weight models the task tests of the command line load by import path
(``--model tests.cli.task_models:tiny_rcnn``): built in milliseconds, nothing downloaded."""

from __future__ import annotations

import torch
from torch import nn


def _seeded(build):  # noqa: ANN001, ANN202
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def tiny_rcnn() -> nn.Module:
    """Faster R-CNN on a 3-conv backbone (16 channels), 64-pixel inputs, every box kept
    (``box_score_thresh=0``): the threshold of the run decides."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    def build() -> nn.Module:
        backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
        )
        backbone.out_channels = 16
        return FasterRCNN(
            backbone, num_classes=3, min_size=64, max_size=64, box_score_thresh=0.0,
            rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), rpn_pre_nms_top_n_test=60,
            rpn_post_nms_top_n_test=20, box_detections_per_img=10,
        )

    return _seeded(build)


def tiny_clip() -> nn.Module:
    """An open_clip CLIP from a tiny config (32-pixel images, 16-dimensional embeddings)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return _seeded(lambda: CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ))


class TinyMultiLabel(nn.Module):
    """A 2-conv classifier with 5 independent labels (logits; sigmoid per label)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def tiny_multilabel() -> nn.Module:
    return _seeded(TinyMultiLabel)
