"""Model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps", NeurIPS 2018: cascading randomisation; similarity by Spearman rank correlation with and
without absolute values, and SSIM)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from camscope.errors import UsageError
from camscope.metrics._common import MapLike, as_map
from camscope.metrics.maps import spearman

logger = logging.getLogger(__name__)


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _owns_any(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def default_groups(model: nn.Module, *, min_steps: int = 3) -> list[str]:
    """Coarse cascade steps, top (classifier) first: the model's top-level children that hold
    parameters, in reverse order — for a torchvision ResNet ``fc, layer4, layer3, layer2,
    layer1, bn1, conv1``.

    When that gives fewer than ``min_steps`` groups (e.g. ``features`` + ``classifier``), the
    container groups (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) are split into
    their own children, repeatedly: VGG/``SmallCNN``-style models get one step per layer.
    """
    groups = [name for name, child in model.named_children() if _owns_any(child)][::-1]
    if not groups:
        raise UsageError(f"{type(model).__name__} has no parameters to randomise")
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    while len(groups) < min_steps:
        expanded: list[str] = []
        changed = False
        for name in groups:
            module = model.get_submodule(name)
            kids = [(n, c) for n, c in module.named_children() if _owns_any(c)]
            if isinstance(module, containers) and kids and not any(
                True for _ in module.parameters(recurse=False)
            ):
                expanded.extend(f"{name}.{n}" for n, _ in reversed(kids))
                changed = True
            else:
                expanded.append(name)
        groups = expanded
        if not changed:
            break
    return groups


def _resolve_groups(model: nn.Module, groups: Sequence[str] | None) -> list[str]:
    if groups is None:
        return default_groups(model)
    if isinstance(groups, str):
        raise UsageError("groups: expected a list of module names, got a single string")
    out = []
    for g in groups:
        try:
            module = model.get_submodule(g)
        except AttributeError:
            raise UsageError(f"groups: model has no module named {g!r}") from None
        if next(module.parameters(), None) is None:
            raise UsageError(f"groups: module {g!r} has no parameters")
        out.append(g)
    return out


def randomization_layers(model: nn.Module, *, groups: Sequence[str] | None = None) -> list[str]:
    """Names of the steps :func:`cascading_randomization` will yield, top (output) first."""
    return _resolve_groups(model, groups)


def _derived_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])


def _reinit_direct(module: nn.Module) -> None:
    """Re-initialise the parameters ``module`` owns directly (its children are left alone)."""
    child_params = any(True for c in module.children() for _ in c.parameters())
    reset = getattr(module, "reset_parameters", None)
    if callable(reset) and not child_params:
        reset()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            flat = p.detach().float()
            std = float(flat.std()) if p.numel() > 1 else 0.0
            if not math.isfinite(std) or std == 0.0:
                std = 0.02
            p.normal_(float(flat.mean()), std)


def cascading_randomization(
    model: nn.Module, *, groups: Sequence[str] | None = None, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, NeurIPS).

    Yields ``(name, randomised_model)`` after each step, re-initialising the model cumulatively
    from the top (classifier) down: step k has the k last layer groups randomised. ``groups``
    lists the steps top first (e.g. ``["fc", "layer4", "layer3", "layer2", "layer1", "conv1"]``),
    each randomising every parameter below it; by default :func:`default_groups`.

    Re-initialisation uses the module's ``reset_parameters()`` (its own initial distribution;
    BatchNorm goes to weight 1, bias 0 and reset running statistics), otherwise
    ``N(mean, std)`` of the current values (std 0.02 when undefined). Step k is seeded from
    ``(seed, k)`` inside ``torch.random.fork_rng``: deterministic, the global RNG is untouched.

    The input model is never modified: it is deep-copied once, and every yielded model is an
    independent deep copy (keep or drop it as you like).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed: expected a non-negative integer, got {seed!r}")
    names = _resolve_groups(model, groups)
    work = copy.deepcopy(model)
    cuda_ids = sorted({p.device.index or 0 for p in work.parameters() if p.device.type == "cuda"})
    for step, name in enumerate(names):
        target = work.get_submodule(name)
        owners = [m for m in target.modules() if _owns_parameters(m)]
        s = _derived_seed(int(seed), step)
        with torch.random.fork_rng(devices=cuda_ids):
            torch.default_generator.manual_seed(s)
            for i in cuda_ids:
                with torch.cuda.device(i):
                    torch.cuda.manual_seed(s)
            for m in owners:
                _reinit_direct(m)
        label = name or type(model).__name__
        logger.debug("randomised %s (step %d of %d)", label, step + 1, len(names))
        yield label, copy.deepcopy(work)


def ssim(a: MapLike, b: MapLike) -> float:
    """Structural similarity of two [0, 1] maps (``skimage.metrics.structural_similarity``,
    ``data_range=1``; 7x7 window, smaller odd window for maps under 7 pixels)."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise UsageError("ssim needs scikit-image (pip install scikit-image)") from None
    x, y = as_map(a, "a"), as_map(b, "b")
    if x.shape != y.shape:
        raise UsageError(f"maps have different shapes {x.shape} and {y.shape}")
    for name, m in (("a", x), ("b", y)):
        if m.min() < -1e-6 or m.max() > 1 + 1e-6:
            raise UsageError(f"{name}: ssim expects maps in [0, 1]")
    win = min(7, min(x.shape))
    win -= 1 - win % 2  # largest odd size that fits
    if win < 3:
        raise UsageError(f"ssim needs maps of at least 3x3 pixels, got {x.shape}")
    return float(
        structural_similarity(np.clip(x, 0, 1), np.clip(y, 0, 1), data_range=1.0, win_size=win)
    )


def compare_maps(original: MapLike, randomized: MapLike) -> dict[str, float]:
    """Similarity of a map before/after randomisation, as in Adebayo et al. 2018:
    ``spearman`` (signed rank correlation), ``spearman_abs`` (rank correlation of absolute
    values; equal to ``spearman`` for non-negative CAMs) and ``ssim``."""
    x, y = as_map(original, "original"), as_map(randomized, "randomized")
    return {
        "spearman": spearman(x, y),
        "spearman_abs": spearman(np.abs(x), np.abs(y)),
        "ssim": ssim(x, y),
    }


def sanity_verdict(similarities: Sequence[float], *, threshold: float = 0.5) -> bool:
    """True if the method passes the parameter-randomisation check.

    ``similarities`` are rank correlations between original and randomised maps along the
    cascade (top layer first); the last one is the fully randomised model. The method *fails*
    if that last correlation stays above ``threshold`` (0.5): its maps barely depend on the
    learned weights. A NaN last value (a map turned constant) counts as "changed", i.e. a pass;
    flag constant maps separately with :func:`camscope.metrics.is_degenerate`.
    """
    values = [float(v) for v in similarities]
    if not values:
        raise UsageError("similarities: empty sequence")
    if not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold: expected a value in [-1, 1], got {threshold}")
    last = values[-1]
    if math.isnan(last):
        return True
    return last <= threshold
