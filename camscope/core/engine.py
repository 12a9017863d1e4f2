"""The CAM engine: one capture per batch of images, every requested method and smoothing variant.

    engine = CamEngine(model, "layer4.2", methods=["gradcam", "scorecam"])
    result = engine(images)            # images: (B,3,H,W), normalised for the model
    result.maps["gradcam"]             # (B, k, H, W) float32 in [0,1]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from camscope.core.capture import Runtime, capture, model_state_guard
from camscope.core.postprocess import finalize, first_component, normalize, weighted_activations
from camscope.core.reshape import Reshape
from camscope.methods.registry import MethodSpec, get_method
from camscope.smoothing import AUGMENTATIONS, parse_smoothing, variant_name

__all__ = ["CamEngine", "CamResult", "compute_cams"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class CamResult:
    """Maps and predictions for a batch of B images and k target classes each.

    Attributes:
        targets: (B,k) explained classes.
        probabilities: (B,C) softmax of the model output on the original images.
        maps: variant name (``"gradcam"``, ``"gradcam+eigen+aug"``...) -> (B,k,H,W) in [0,1].
        seconds: wall time per method (all its variants), plus ``"capture"``.
    """

    targets: Tensor
    probabilities: Tensor
    maps: dict[str, Tensor]
    seconds: dict[str, float] = field(default_factory=dict)


class CamEngine:
    """Computes CAMs for one model, target layer, method list and smoothing list.

    The model is split once at the target layer (``core.tail.split_model``); each call runs
    the head once, the tail with a backward to the target layer only when a gradient method is
    requested, and then every method from the same capture. The model is put in eval mode only
    for the duration of a call; its flags and ``.grad`` are restored afterwards.

    ``batch_size`` (rows per pass of Score-/Ablation-CAM), ``precision``, ``channels_last``
    (full forwards through a channels-last copy of the model; default: on CPU only) and
    ``compile`` (that copy compiled by ``torch.compile``: seconds to tens of seconds once, then
    faster masked forwards) and ``freeze`` (that copy frozen by TorchScript and checked against
    eager logits; None: on CPU at fp32, or bf16 with bf16 instructions, for torch / torchvision
    models, see ``Runtime``) change the speed, not the maps beyond rounding. The batch defaults
    were chosen with ``benchmarks/batch_sweep.py``, except on CPU for Score-CAM's full forwards
    without ``batch_size``: there they are measured on each engine's first batches
    (``Runtime.forward_slices``).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        *,
        methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
        smoothing: Sequence[str] | str | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        batch_size: int | None = None,
        precision: str = "fp32",
        progress: bool = False,
        allow_trace: bool = True,
        channels_last: bool | None = None,
        compile: bool = False,
        freeze: bool | None = None,
        reshape: str | Reshape = "auto",
        input_size: Sequence[int] | None = None,
    ) -> None:
        from camscope.core.layers import canonical_layer_name, default_layer
        from camscope.core.reshape import model_input_size
        from camscope.core.tail import split_model
        from camscope.errors import UsageError

        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {batch_size}")
        self.model = model
        rs = Reshape.parse(reshape)
        if input_size is None:
            input_size = model_input_size(model) or (224, 224)
        if len(input_size) == 2:
            input_size = (1, 3, *input_size)
        with model_state_guard(model), torch.no_grad():
            if layer:
                self.layer = canonical_layer_name(model, layer)
            else:
                self.layer = default_layer(model, input_size=tuple(input_size))
            self.split = split_model(model, self.layer, allow_trace=allow_trace, reshape=rs)
        self.methods: list[MethodSpec] = [get_method(m) for m in methods]
        if not self.methods:
            raise UsageError("no method given")
        self.variants = parse_smoothing(smoothing)
        self.normalization = normalization
        self.runtime = Runtime(
            model, self.split, batch_size, precision, progress, channels_last, compile=compile, freeze=freeze
        )

    @property
    def reshape(self) -> Reshape:
        """How the target layer's output becomes a map: the concrete choice for the latest
        input size (after a call or :meth:`resolve_reshape`), else what was asked for."""
        return self.split.reshape_used or self.split.reshape

    def resolve_reshape(self, input_size: Sequence[int]) -> Reshape:
        """The concrete reshape for inputs of ``input_size`` ((B,3,H,W) or (H,W)); decided by one
        head run on zeros the first time (the model's flags are restored)."""
        with model_state_guard(self.model):
            return self.split.resolve_reshape(input_size)

    @property
    def names(self) -> list[str]:
        """Output names: every method under every variant, plain first."""
        return [variant_name(m.name, v) for v in self.variants for m in self.methods]

    def __call__(
        self, images: Tensor, targets: Sequence[Sequence[int]] | Sequence[int] | None = None, top_k: int = 1
    ) -> CamResult:
        """Explain a batch of images (B,3,H,W).

        Args:
            targets: classes to explain, per image (a list of ints, or of lists for several);
                default: the ``top_k`` predicted classes.
        """
        with model_state_guard(self.model):
            try:
                return self._run(images, targets, top_k)
            finally:
                self.runtime.reset()

    def _run(self, images: Tensor, targets, top_k: int) -> CamResult:
        b = images.shape[0]
        use_aug = any("aug" in v for v in self.variants)
        augs = AUGMENTATIONS if use_aug else AUGMENTATIONS[:1]
        n_aug = len(augs)
        if use_aug:
            views = torch.stack([a.apply(images, self.normalization) for a in augs], dim=1)
            views = views.reshape(b * n_aug, *images.shape[1:])
        else:
            views = images
        plain_view_of = [(v // n_aug) * n_aug for v in range(b * n_aug)]
        per_view = None
        if targets is not None:
            per_image = [list(t) if isinstance(t, (list, tuple)) else [int(t)] for t in targets]
            if len(per_image) != b:
                raise ValueError(f"{len(per_image)} target lists for {b} images")
            per_view = [per_image[v // n_aug] for v in range(b * n_aug)]

        t0 = time.perf_counter()
        cap = capture(
            self.split,
            views,
            targets_of_view=per_view,
            top_k=top_k,
            plain_view_of=plain_view_of,
            need_gradients=any(m.needs_gradients for m in self.methods),
        )
        seconds = {"capture": time.perf_counter() - t0}
        k = cap.targets.shape[0] // (b * n_aug)
        size = tuple(images.shape[-2:])
        plain_views = torch.arange(b, device=views.device) * n_aug
        probabilities = torch.softmax(cap.view_logits[plain_views], dim=1)
        result_targets = cap.targets.reshape(b, n_aug, k)[:, 0]

        maps: dict[str, Tensor] = {}
        for spec in self.methods:
            t0 = time.perf_counter()
            weights = spec.fn(cap, self.runtime)
            weighted = weighted_activations(weights, cap.activations)
            for variant in self.variants:
                maps[variant_name(spec.name, variant)] = self._reduce(
                    spec, variant, weighted, b, n_aug, k, size, augs
                ).cpu()
            seconds[spec.name] = time.perf_counter() - t0
        return CamResult(result_targets.cpu(), probabilities.cpu(), maps, seconds)

    @staticmethod
    def _reduce(
        spec: MethodSpec,
        variant: tuple[str, ...],
        weighted: Tensor,
        b: int,
        n_aug: int,
        k: int,
        size: tuple[int, int],
        augs,
    ) -> Tensor:
        wa = weighted.reshape(b, n_aug, k, *weighted.shape[1:])
        n_views = n_aug if "aug" in variant else 1
        wa = wa[:, :n_views].reshape(b * n_views * k, *weighted.shape[1:])
        plain = wa.sum(dim=1)
        if spec.reduce == "pca" or "eigen" in variant:
            sal = first_component(wa, reference=plain)
        else:
            sal = plain
        maps = finalize(sal, size).reshape(b, n_views, k, *size)
        if n_views == 1:
            return maps[:, 0]
        restored = torch.stack([augs[a].invert(maps[:, a]) for a in range(n_views)], dim=1)
        return normalize(restored.mean(dim=1).reshape(b * k, *size)).reshape(b, k, *size)


def compute_cams(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str | None = None,
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
    targets: Sequence[Sequence[int]] | Sequence[int] | None = None,
    top_k: int = 1,
    smoothing: Sequence[str] | str | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    progress: bool = False,
    compile: bool = False,
    freeze: bool | None = None,
    reshape: str | Reshape = "auto",
) -> CamResult:
    """One-call convenience around :class:`CamEngine` for a batch of images."""
    engine = CamEngine(
        model,
        layer,
        methods=methods,
        smoothing=smoothing,
        normalization=normalization,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        compile=compile,
        freeze=freeze,
        reshape=reshape,
        input_size=tuple(images.shape),
    )
    return engine(images, targets, top_k)
