"""``camscope sanity``: the model-parameter randomisation test of Adebayo et al. 2018 ("Sanity
Checks for Saliency Maps", NeurIPS 2018), run for every requested CAM method.

The maps of the trained model are compared with the maps of copies whose weights are
re-initialised cumulatively from the classifier down (cascading randomisation,
:func:`camscope.metrics.sanity.cascading_randomization`). A method that explains the *model*
must produce different maps once the model is destroyed; a method whose maps barely change
(high rank correlation with the originals after every layer is randomised) is explaining the
input, not the model, and fails.

    result = run_sanity(model, images, methods=["gradcam", "scorecam"])
    result.passed["gradcam"]       # True
    result.summary["gradcam"]      # "Grad-CAM passes: after randomising every layer ..."
    result.save("runs/sanity")     # sanity.json, sanity.csv, sanity.png

The explained class of each image is the *original* model's prediction and stays fixed along the
cascade (a randomised model predicts arbitrary classes; following them would compare maps of
different classes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from camscope.core.capture import model_state_guard
from camscope.core.runtime import SpeedSettings
from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.io.atomic import atomic_write_bytes, atomic_write_text
from camscope.methods.registry import get_method
from camscope.metrics.sanity import (
    cascading_randomization,
    compare_maps,
    default_groups,
    sanity_verdict,
)
from camscope.render.draw import new_figure

__all__ = [
    "DEFAULT_METHODS",
    "METRICS",
    "THRESHOLD",
    "SanityResult",
    "default_groups",
    "run_sanity",
    "SANITY_JSON",
    "SANITY_CSV",
    "SANITY_PNG",
]

logger = logging.getLogger(__name__)

DEFAULT_METHODS: tuple[str, ...] = ("gradcam", "ablationcam", "scorecam")
METRICS: tuple[str, ...] = ("spearman", "spearman_abs", "ssim")
THRESHOLD = 0.5
"""A method fails when the mean Spearman rank correlation between its original maps and the maps
of the fully randomised model (last cascade step) stays above this value
(:func:`camscope.metrics.sanity.sanity_verdict`). 0.5 means the randomised maps still rank pixels
mostly like the originals; a method that explains the model drops close to 0 (or below)."""

SANITY_JSON = "sanity.json"
SANITY_CSV = "sanity.csv"
SANITY_PNG = "sanity.png"


class _Engine(Protocol):
    def __call__(self, images: Tensor, targets: Sequence[Sequence[int]] | None = ...) -> Any: ...


EngineFactory = Callable[[nn.Module, "str | None", Sequence[str]], _Engine]
"""``factory(model, layer, methods) -> engine``; ``engine(images, targets).maps[name]`` is
(B,1,H,W). The default builds a :class:`camscope.engine.CamEngine`."""


# --------------------------------------------------------------------------------------------
# Layer groups
# --------------------------------------------------------------------------------------------


def _covers_all(model: nn.Module, groups: Sequence[str]) -> bool:
    """True when randomising every group re-initialises every parameter of the model."""
    covered = {id(p) for g in groups for p in model.get_submodule(g).parameters()}
    return all(id(p) in covered for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class SanityResult:
    """Outcome of :func:`run_sanity`.

    Attributes:
        methods: method names, in request order.
        titles: method name -> display title ("Grad-CAM").
        steps: randomised group of each cascade step, top first (step k has groups 0..k
            randomised).
        layer: target layer of the CAMs.
        targets: the explained class of each image (the original prediction).
        per_image: method -> metric -> (n_steps, n_images) similarities to the original maps;
            NaN where the original map is constant (the image is left out of the means).
        similarity: method -> metric -> per-step mean over images.
        constant: method -> per-step count of images whose randomised map became constant
            (counted as rank correlation 0: no information left).
        passed: method -> verdict (see :data:`THRESHOLD`).
        summary: method -> one sentence stating the verdict.
        covers_all: whether the last step has every parameter of the model randomised.
    """

    methods: list[str]
    titles: dict[str, str]
    steps: list[str]
    layer: str
    targets: list[int]
    per_image: dict[str, dict[str, np.ndarray]]
    similarity: dict[str, dict[str, list[float]]]
    constant: dict[str, list[int]]
    passed: dict[str, bool]
    summary: dict[str, str]
    covers_all: bool
    threshold: float = THRESHOLD
    seed: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def final(self, method: str, metric: str = "spearman") -> float:
        """Mean similarity after the last cascade step."""
        return self.similarity[method][metric][-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no per-image arrays beyond nested lists)."""

        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else round(float(v), 6)

        return {
            "test": "model-parameter randomisation, cascading (Adebayo et al. 2018)",
            "layer": self.layer,
            "steps": self.steps,
            "covers_all": self.covers_all,
            "threshold": self.threshold,
            "criterion": "fail if mean Spearman rank correlation with the original maps after the "
            f"last step > {self.threshold}",
            "seed": self.seed,
            "n_images": len(self.targets),
            "targets": self.targets,
            "seconds": round(self.seconds, 3),
            **({"info": self.info} if self.info else {}),
            "methods": {
                m: {
                    "title": self.titles[m],
                    "passed": self.passed[m],
                    "summary": self.summary[m],
                    "similarity": {
                        k: [clean(v) for v in vals] for k, vals in self.similarity[m].items()
                    },
                    "constant_maps": self.constant[m],
                    "per_image": {
                        k: [[clean(v) for v in row] for row in arr.tolist()]
                        for k, arr in self.per_image[m].items()
                    },
                }
                for m in self.methods
            },
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per method and cascade step (mean similarities)."""
        rows = []
        for m in self.methods:
            for i, step in enumerate(self.steps):
                row: dict[str, Any] = {"method": m, "step": i + 1, "randomized": step}
                for k in METRICS:
                    v = self.similarity[m][k][i]
                    row[k] = "" if not math.isfinite(v) else f"{v:.6f}"
                row["constant_maps"] = self.constant[m][i]
                row["passed"] = int(self.passed[m])
                rows.append(row)
        return rows

    def text(self) -> str:
        """The summary lines, one per method."""
        return "\n".join(self.summary[m] for m in self.methods)

    def save(self, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
        """Write ``sanity.json``, ``sanity.csv`` and (``plot``) ``sanity.png`` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / SANITY_JSON, "csv": out / SANITY_CSV}
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        buf = io.StringIO()
        fields = ["method", "step", "randomized", *METRICS, "constant_maps", "passed"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.csv_rows())
        atomic_write_text(paths["csv"], buf.getvalue())
        if plot:
            paths["png"] = out / SANITY_PNG
            atomic_write_bytes(paths["png"], plot_sanity(self))
        return paths


def plot_sanity(result: SanityResult) -> bytes:
    """PNG bytes: similarity to the original maps vs. randomisation depth, one line per method,
    rank correlation and SSIM side by side (as Fig. 2 of Adebayo et al. 2018)."""
    labels = ["original", *result.steps]
    x = np.arange(len(labels))
    ncol = min(4, len(result.methods) + 1)
    legend_rows = math.ceil((len(result.methods) + 1) / ncol)
    legend_h = 0.25 * legend_rows + 0.2
    width = max(8.0, 0.55 * len(labels) * 2 + 2)
    fig = new_figure(figsize=(width, 4.2 + legend_h), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("spearman", "Rank correlation (Spearman)"), ("ssim", "SSIM"))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for m in result.methods:
            y = [1.0, *result.similarity[m][metric]]
            style = "-" if result.passed[m] else "--"
            verdict = "pass" if result.passed[m] else "FAIL"
            ax.plot(x, y, style, marker="o", ms=3, label=f"{result.titles[m]} ({verdict})")
        if metric == "spearman":
            ax.axhline(result.threshold, color="grey", lw=0.8, ls=":", label="fail threshold")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("randomised down to (cascading, top first)", fontsize=8)
        ax.set_ylim(-0.5, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the original maps")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(
        f"Model-parameter randomisation test (Adebayo et al. 2018), layer {result.layer}, "
        f"{len(result.targets)} images",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def _default_factory(
    speed: SpeedSettings | None, reshape: str = "auto", input_size: Sequence[int] | None = None
) -> EngineFactory:
    def make(model: nn.Module, layer: str | None, methods: Sequence[str]) -> _Engine:
        return CamEngine(
            model, layer, methods=list(methods), speed=speed, reshape=reshape, input_size=input_size
        )

    return make


def _maps(
    engine: _Engine, images: Tensor, targets: list[int], methods: Sequence[str], chunk: int
) -> dict[str, np.ndarray]:
    """(N,H,W) float64 maps per method, images processed ``chunk`` at a time."""
    device = _device_of(getattr(engine, "model", None))
    parts: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk]
        if device is not None:
            x = x.to(device)
        res = engine(x, [[t] for t in targets[start : start + chunk]])
        for m in methods:
            parts[m].append(res.maps[m][:, 0].detach().cpu().double().numpy())
    return {m: np.concatenate(v) for m, v in parts.items()}


def _device_of(model: nn.Module | None) -> torch.device | None:
    if model is None:
        return None
    p = next(model.parameters(), None)
    return p.device if p is not None else None


def _similarities(
    orig: np.ndarray, rand: np.ndarray, valid: np.ndarray
) -> tuple[dict[str, np.ndarray], int]:
    """Per-image similarities (metric -> (N,)); NaN where the original is constant. A constant
    randomised map gets rank correlation 0. Also returns how many randomised maps are constant."""
    out = {k: np.full(orig.shape[0], np.nan) for k in METRICS}
    n_const = 0
    for i in range(orig.shape[0]):
        if not valid[i]:
            continue
        sim = compare_maps(orig[i], np.clip(rand[i], 0.0, 1.0))
        if np.ptp(rand[i]) == 0:
            n_const += 1
            sim["spearman"] = sim["spearman_abs"] = 0.0
        for k in METRICS:
            out[k][i] = sim[k]
    return out, n_const


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _summary(
    title: str, passed: bool, values: Sequence[float], threshold: float, scope: str, first: str
) -> str:
    final = values[-1]
    value = "undefined (no usable maps)" if not math.isfinite(final) else f"{final:.2f}"
    extra = ""
    if len(values) > 1 and math.isfinite(values[0]):
        extra = f" ({values[0]:.2f} with only {first} randomised)"
    if passed:
        return (
            f"{title} passes: after randomising {scope} the maps' rank correlation with the "
            f"originals is {value}{extra}"
        )
    return (
        f"{title} FAILS: after randomising {scope} the maps' rank correlation with the "
        f"originals is still {value}{extra}, above {threshold:g}: its maps barely depend on the "
        "learned weights"
    )


def run_sanity(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    groups: Sequence[str] | None = None,
    targets: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = False,
    speed: SpeedSettings | None = None,
    threshold: float = THRESHOLD,
    images_per_batch: int = 8,
    engine_factory: EngineFactory | None = None,
    reshape: str = "auto",
) -> SanityResult:
    """Model-parameter randomisation test (Adebayo et al. 2018, NeurIPS) for CAM methods.

    Args:
        model: the trained classifier (never modified: the cascade works on deep copies).
        images: (N,3,H,W), normalised for the model.
        layer: target layer (default: per architecture); the same name on every copy.
        methods: registered method names or aliases.
        groups: cascade steps, top first (default: :func:`default_groups`); each step
            re-initialises every parameter of its module.
        targets: class per image; default the model's prediction. Kept fixed along the cascade.
        seed: seed of the re-initialisation (deterministic per step).
        speed: speed settings of the perturbation methods (rows per pass, precision, ...).
        threshold: verdict threshold on the final mean rank correlation (:data:`THRESHOLD`).
        images_per_batch: images per engine call.
        engine_factory: ``factory(model, layer, methods) -> engine`` replacing
            :class:`~camscope.engine.CamEngine` (tests, custom explainers).
        reshape: how the layer's output becomes a map (``CamEngine``'s ``reshape``).

    Returns:
        A :class:`SanityResult`: per method and step the mean Spearman rank correlation (plain
        and of absolute values) and SSIM between original and randomised maps, a pass/fail
        verdict and a one-line summary.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UsageError(f"images: expected a non-empty (N,3,H,W) tensor, got {shape}")
    if images_per_batch < 1:
        raise UsageError(f"images_per_batch must be at least 1, not {images_per_batch}")
    if engine_factory is None:
        names = list(dict.fromkeys(get_method(m).name for m in methods))
        titles = {m: get_method(m).title for m in names}
        factory = _default_factory(speed, reshape, (1, *images.shape[1:]))
    else:
        names = list(dict.fromkeys(methods))
        titles = {m: m for m in names}
        factory = engine_factory
    if not names:
        raise UsageError("no method given")
    steps = default_groups(model) if groups is None else list(groups)
    if not steps:
        raise UsageError("groups: no cascade step given")
    n = images.shape[0]

    engine = factory(model, layer, names)
    layer_name = str(getattr(engine, "layer", layer or ""))
    if targets is None:
        device = _device_of(model)
        with model_state_guard(model), torch.inference_mode():
            logits = torch.cat(
                [
                    model(images[i : i + images_per_batch].to(device)).float().cpu()
                    for i in range(0, n, images_per_batch)
                ]
            )
        fixed = [int(t) for t in logits.argmax(dim=1)]
    else:
        fixed = [int(t) for t in targets]
        if len(fixed) != n:
            raise UsageError(f"targets: {len(fixed)} classes given for {n} images")
    original = _maps(engine, images, fixed, names, images_per_batch)
    valid = {m: np.ptp(original[m].reshape(n, -1), axis=1) > 0 for m in names}
    for m in names:
        bad = int((~valid[m]).sum())
        if bad:
            logger.warning(
                "%s: %d of %d original maps are constant; those images are left out", m, bad, n
            )

    per_step: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in METRICS} for m in names}
    constant: dict[str, list[int]] = {m: [] for m in names}
    cascade = cascading_randomization(model, groups=steps, seed=seed)
    bar = tqdm(total=len(steps), desc="randomisation steps", disable=not progress)
    labels: list[str] = []
    try:
        for label, randomized in cascade:
            labels.append(label)
            rand_engine = factory(randomized, layer_name or layer, names)
            maps = _maps(rand_engine, images, fixed, names, images_per_batch)
            for m in names:
                sims, n_const = _similarities(original[m], maps[m], valid[m])
                for k in METRICS:
                    per_step[m][k].append(sims[k])
                constant[m].append(n_const)
            logger.debug(
                "randomised down to %s: %s",
                label,
                ", ".join(f"{m} {_mean(per_step[m]['spearman'][-1]):.3f}" for m in names),
            )
            del randomized, rand_engine
            bar.update(1)
    finally:
        bar.close()

    covers_all = _covers_all(model, steps)
    scope = "every layer" if covers_all else (
        f"{labels[0]}" if len(labels) == 1 else f"{labels[0]} down to {labels[-1]}"
    )
    per_image = {m: {k: np.stack(per_step[m][k]) for k in METRICS} for m in names}
    similarity = {
        m: {k: [_mean(row) for row in per_image[m][k]] for k in METRICS} for m in names
    }
    passed = {m: sanity_verdict(similarity[m]["spearman"], threshold=threshold) for m in names}
    summary = {
        m: _summary(titles[m], passed[m], similarity[m]["spearman"], threshold, scope, labels[0])
        for m in names
    }
    for m in names:
        logger.debug("%s", summary[m])
    return SanityResult(
        methods=names,
        titles=titles,
        steps=labels,
        layer=layer_name,
        targets=fixed,
        per_image=per_image,
        similarity=similarity,
        constant=constant,
        passed=passed,
        summary=summary,
        covers_all=covers_all,
        threshold=threshold,
        seed=seed,
        seconds=time.perf_counter() - t_start,
    )
