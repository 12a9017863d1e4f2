"""Models whose forward takes more than the image: the other inputs held fixed."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["WithFixedInputs"]


class WithFixedInputs(nn.Module):
    """``model(x, *args, **kwargs)`` as a one-input model ``f(x)``, for explaining models with
    several inputs (a text prompt's tokens, a mask, a second image): the extra inputs are the
    same for every row (tensors whose first dimension is the image batch are repeated to the
    rows of a call: Ablation-CAM and Score-CAM run more rows than images). Layer names get the
    prefix ``model.``; the user's model is held, not copied."""

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.args = args
        self.kwargs = kwargs

    def forward(self, x: Tensor) -> Any:
        n = x.shape[0]
        args = [_rows(a, n) for a in self.args]
        kwargs = {k: _rows(v, n) for k, v in self.kwargs.items()}
        return self.model(x, *args, **kwargs)


def _rows(value: Any, n: int) -> Any:
    """A batched tensor (first dimension 1) repeated to ``n`` rows; anything else as it is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1 and n != 1:
        return value.expand(n, *value.shape[1:])
    return value
