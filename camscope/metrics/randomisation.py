"""Randomisation of the explained class: Random Logit (Sixt et al. 2020).

(Model-parameter randomisation — the cascade of Adebayo et al. 2018 — is
:func:`camscope.metrics.sanity.cascading_randomization`, run by ``camscope sanity``; it needs
model copies, not one photo's inputs, so it is not a per-photo registered metric.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._registered import explainers_of, model_of, params_of, run_explainer
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["random_logit", "ssim_data_range"]


def ssim_data_range(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps with ``data_range`` = the range of both together and skimage's default
    7x7 window (Quantus 0.6's ``similarity_func.ssim``); smaller odd window for tiny maps."""
    try:
        from skimage.metrics import structural_similarity  # optional: scikit-image, only for SSIM
    except ImportError:
        raise UsageError("metric random_logit: SSIM needs scikit-image (pip install scikit-image)") from None

    both = np.concatenate([a.ravel(), b.ravel()])
    rng = float(abs(both.max() - both.min()))
    win = min(7, *a.shape)
    win -= 1 - win % 2
    if rng == 0:
        return 1.0
    return float(structural_similarity(a, b, data_range=rng, win_size=win))


_RL = {"num_classes": None}


@register_metric(
    "random_logit", title="Random Logit", category="randomisation", direction="lower",
    paper="Sixt et al., ICML 2020", url="https://arxiv.org/abs/1912.09818",
    equation="SSIM(a(x, y), a(x, y')),  y' ~ U({0..C-1} \\ {y})",
    needs=("model", "explain"), cost="1 explanation per map (+1 forward)", params=_RL, default=False,
)
def random_logit(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Similarity of the map of the explained class to the map of a random other class (Sixt et
    al. 2020, "When explanations lie: why many modified BP attributions fail", ICML, Sec. 6;
    Quantus' RandomLogit): a class-sensitive explanation changes (low SSIM). The other class is
    drawn uniformly from the C-1 other classes with ``inputs.generator()`` (C from the model's
    output unless ``num_classes`` is given); the same class for every map of the photo. SSIM as
    Quantus: ``data_range`` = range of both maps, 7x7 window.
    """
    p = params_of(inputs, _RL, "random_logit")
    image, forward = model_of(inputs, "random_logit")
    explainers = explainers_of(inputs, maps.shape[0], "random_logit")
    c = p["num_classes"]
    if c is None:
        with torch.inference_mode():
            c = int(forward(image.unsqueeze(0)).shape[1])
    c = int(c)
    if c < 2:
        raise UsageError("metric random_logit: needs at least 2 classes")
    g = inputs.generator()
    off = int(torch.randint(0, c - 1, (1,), generator=g, device=image.device))
    other = off + (off >= inputs.target)
    values = []
    for a, explain in zip(maps, explainers, strict=True):
        b = run_explainer(explain, image.unsqueeze(0), [other], 1)[0]
        values.append(ssim_data_range(a.detach().to("cpu", torch.float64).numpy(), b.to("cpu").numpy()))
    return {"random_logit": torch.tensor(values, dtype=torch.float64, device=maps.device)}
