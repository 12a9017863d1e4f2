"""The registrations of camscope's original metrics (deletion/insertion, Average Drop / Increase
in Confidence, ROAD, the pointing games, concentration, agreement with the other maps).

Each is one function of the registry's contract (:mod:`camscope.metrics.inputs`) around the
per-map implementation in :mod:`~camscope.metrics.faithfulness`,
:mod:`~camscope.metrics.localisation` or :mod:`~camscope.metrics.maps`. Their defaults are the
report's: 25 deletion/insertion steps, ROAD at five fractions, class probability as the score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from camscope.metrics.faithfulness import average_drop_increase, deletion_insertion, road
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.localisation import energy_pointing_game, pointing_game
from camscope.metrics.maps import concentration
from camscope.metrics.registry import register_metric

__all__ = [
    "DEFAULT_STEPS",
    "ROAD_FRACTIONS",
    "adi_metric",
    "agreement_metric",
    "concentration_metric",
    "deletion_insertion_metric",
    "energy_pg_metric",
    "pointing_game_metric",
    "road_metric",
]

DEFAULT_STEPS = 25
"""Deletion/insertion curve steps: ``ceil(H*W/25)`` pixels (4 %) switched per step."""
ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Fractions of removed pixels for ROAD (five points: half the cost of the paper's nine)."""


def _r(x: float) -> float:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else float("nan")


def _model(inputs: MetricInputs, name: str) -> tuple:
    if inputs.image is None or inputs.forward is None:
        raise ValueError(f"metric {name!r} needs the model and the image (MetricInputs.image, .forward)")
    return inputs.image, inputs.forward


def _np_maps(maps: Tensor) -> list[np.ndarray]:
    return [m for m in maps.detach().to("cpu", torch.float64).numpy()]


@register_metric(
    "deletion_insertion",
    title="Deletion / insertion AUC",
    category="faithfulness",
    direction="lower",
    paper="Petsiuk et al., RISE, BMVC 2018",
    url="https://arxiv.org/abs/1806.07421",
    equation="AUC of the class score as the top-k pixels are deleted (to the mean) / inserted (into a blur)",
    keys=("deletion_auc", "insertion_auc", "gap"),
    columns={
        "deletion_auc": {"title": "Deletion AUC", "direction": "lower"},
        "insertion_auc": {"title": "Insertion AUC", "direction": "higher"},
        "gap": {"title": "Insertion - deletion", "direction": "higher", "ranked": False},
    },
    extras=("curves",),
    needs=("model",),
    cost="2 (steps + 1) forwards",
    params={"steps": DEFAULT_STEPS, "score": "prob", "delete": "zero", "insert": "blur"},
    sweep=("steps", (12, 50)),
    default=True,
)
def deletion_insertion_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """Deletion and insertion AUC and their gap, with the curves (as the report plots them)."""
    image, forward = _model(inputs, "deletion_insertion")
    p = inputs.params
    out: dict = {"deletion_auc": [], "insertion_auc": [], "gap": [], "curves": []}
    for sal in _np_maps(maps):
        cr = deletion_insertion(
            forward, image, sal, inputs.target, steps=int(p.get("steps", DEFAULT_STEPS)),
            baseline_delete=p.get("delete", "zero"), baseline_insert=p.get("insert", "blur"),
            batch_size=inputs.batch_size, score=p.get("score", "prob"),
        )
        out["deletion_auc"].append(_r(cr.deletion_auc))
        out["insertion_auc"].append(_r(cr.insertion_auc))
        out["gap"].append(_r(cr.insertion_auc) - _r(cr.deletion_auc))
        out["curves"].append({
            "fractions": [_r(v) for v in cr.fractions],
            "deletion": [_r(v) for v in cr.deletion_curve],
            "insertion": [_r(v) for v in cr.insertion_curve],
        })
    return {**{k: torch.tensor(out[k], dtype=torch.float64) for k in ("deletion_auc", "insertion_auc", "gap")},
            "curves": out["curves"]}


@register_metric(
    "average_drop",
    title="Average Drop / Increase in Confidence",
    category="faithfulness",
    direction="lower",
    paper="Chattopadhyay et al., Grad-CAM++, WACV 2018",
    url="https://arxiv.org/abs/1710.11063",
    equation="Drop = max(0, Y - O) / Y, Increase = 1[Y < O], O = score(image * map) (pixel space)",
    keys=("average_drop", "increase_in_confidence"),
    columns={
        "average_drop": {"title": "Average Drop %", "direction": "lower", "unit": "percent"},
        "increase_in_confidence": {"title": "Increase in Confidence %", "direction": "higher", "unit": "percent"},
    },
    extras=("base_score", "explanation_score"),
    needs=("model",),
    cost="2 forwards",
    params={"score": "prob"},
    default=True,
)
def adi_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """Per map: the drop in % (0-100) and the increase as 100 or 0 (their means over photos
    are the paper's Average Drop % and Increase in Confidence %)."""
    image, forward = _model(inputs, "average_drop")
    m = maps.shape[0]
    adi = average_drop_increase(
        forward, image.unsqueeze(0).expand(m, -1, -1, -1), maps.detach().to("cpu", torch.float64).numpy(),
        [inputs.target] * m, score=inputs.params.get("score", "prob"), mean=inputs.mean, std=inputs.std,
        batch_size=inputs.batch_size,
    )
    per = adi.per_image
    return {
        "average_drop": torch.tensor([_r(100.0 * d) for d in per.drops], dtype=torch.float64),
        "increase_in_confidence": torch.tensor([100.0 if bool(i) else 0.0 for i in per.increased], dtype=torch.float64),
        "base_score": [_r(v) for v in per.base_scores],
        "explanation_score": [_r(v) for v in per.explanation_scores],
    }


@register_metric(
    "road",
    title="ROAD MoRF / LeRF",
    category="faithfulness",
    direction="lower",
    paper="Rong et al., ROAD, ICML 2022",
    url="https://arxiv.org/abs/2202.00449",
    equation="mean class score after removing the most / least relevant pixels (noisy linear imputation)",
    keys=("road_morf", "road_lerf"),
    columns={
        "road_morf": {"title": "ROAD MoRF", "direction": "lower"},
        "road_lerf": {"title": "ROAD LeRF", "direction": "higher"},
    },
    extras=("road_curves",),
    needs=("model",),
    cost="2 len(fractions) + 2 forwards and 2 len(fractions) sparse solves (CPU)",
    params={"fractions": ROAD_FRACTIONS, "noise": 0.01, "score": "prob"},
    seeded=True,
    sweep=("noise", (0.005, 0.02)),
    default=True,
)
def road_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """ROAD most- and least-relevant-first AUC (mean score over the removed fractions)."""
    image, forward = _model(inputs, "road")
    p = inputs.params
    fractions = tuple(p.get("fractions", ROAD_FRACTIONS))
    out: dict = {"road_morf": [], "road_lerf": [], "road_curves": []}
    for sal in _np_maps(maps):
        kw = dict(fractions=fractions, noise=float(p.get("noise", 0.01)), seed=inputs.seed,
                  batch_size=inputs.batch_size, score=p.get("score", "prob"))
        morf = road(forward, image, sal, inputs.target, order="morf", **kw)
        lerf = road(forward, image, sal, inputs.target, order="lerf", **kw)
        out["road_morf"].append(_r(morf.auc))
        out["road_lerf"].append(_r(lerf.auc))
        out["road_curves"].append({
            "fractions": list(fractions),
            "morf": [_r(v) for v in morf.scores],
            "lerf": [_r(v) for v in lerf.scores],
        })
    return {"road_morf": torch.tensor(out["road_morf"], dtype=torch.float64),
            "road_lerf": torch.tensor(out["road_lerf"], dtype=torch.float64),
            "road_curves": out["road_curves"]}


def _region(inputs: MetricInputs) -> np.ndarray:
    if inputs.region is None:
        raise ValueError("this metric needs a ground-truth region (MetricInputs.region)")
    return np.asarray(inputs.region.detach().cpu().numpy(), dtype=bool)


@register_metric(
    "pointing_game",
    title="Pointing game",
    category="localisation",
    direction="higher",
    paper="Zhang et al., Top-down neural attention by excitation backprop, ECCV 2016",
    url="https://arxiv.org/abs/1608.00507",
    equation="hit iff dist(argmax S, box) <= 15 px (every maximum)",
    columns={"pointing_game": {"unit": "bool"}},
    needs=("region",),
    params={"tolerance": 15},
    default=True,
)
def pointing_game_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """1.0 for a hit, 0.0 for a miss (15 px tolerance in the model input's frame)."""
    region = _region(inputs)
    tol = float(inputs.params.get("tolerance", 15))
    hits = [float(pointing_game(sal, region, tolerance=tol)) for sal in _np_maps(maps)]
    return {"pointing_game": torch.tensor(hits, dtype=torch.float64)}


@register_metric(
    "energy_pg",
    title="Energy pointing game",
    category="localisation",
    direction="higher",
    paper="Wang et al., Score-CAM, CVPR-W 2020 (Sec. 4.3)",
    url="https://arxiv.org/abs/1910.01279",
    equation="sum(S * box) / sum(S)",
    columns={"energy_pg": {"unit": "fraction"}},
    needs=("region",),
    default=True,
)
def energy_pg_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """Share of the (non-negative part of the) map's energy inside the box."""
    region = _region(inputs)
    vals = [_r(energy_pointing_game(np.clip(sal, 0, None), region)) for sal in _np_maps(maps)]
    return {"energy_pg": torch.tensor(vals, dtype=torch.float64)}


@register_metric(
    "concentration",
    title="Concentration",
    category="complexity",
    direction="higher",
    paper="camscope (energy share of the top pixels; Shannon entropy as in Bhatt et al., IJCAI 2020)",
    url="https://arxiv.org/abs/2005.00631",
    equation="top-q energy = sum of the top ceil(qN) pixels / sum(S); H = -sum p log p / log N",
    keys=("top5_energy", "top10_energy", "entropy"),
    columns={
        "top5_energy": {"title": "Top-5% energy", "direction": "higher", "unit": "fraction"},
        "top10_energy": {"title": "Top-10% energy", "direction": "higher", "unit": "fraction"},
        "entropy": {"title": "Normalised entropy", "direction": "lower"},
    },
    default=True,
)
def concentration_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """Share of the energy in the top 5 % / 10 % pixels and the normalised entropy."""
    rows = [concentration(np.clip(sal, 0, None)) for sal in _np_maps(maps)]
    return {k: torch.tensor([_r(r[k]) for r in rows], dtype=torch.float64)
            for k in ("top5_energy", "top10_energy", "entropy")}


@register_metric(
    "agreement",
    title="Agreement with the other maps",
    category="agreement",
    direction="higher",
    paper="Spearman rank correlation over pixels (as in Adebayo et al., NeurIPS 2018)",
    url="https://arxiv.org/abs/1810.03292",
    equation="mean over the other maps m' of the photo of spearman(S_m, S_m')",
    keys=("mean_spearman",),
    columns={"mean_spearman": {"title": "Mean Spearman to the other maps"}},
    default=True,
)
def agreement_metric(inputs: MetricInputs, maps: Tensor) -> dict:
    """How much a map agrees with the photo's other maps (NaN with a single map or where every
    correlation is undefined). Each map is ranked once (average ranks for ties) and every pair's
    Spearman correlation comes from one matrix product: the same values as
    :func:`camscope.metrics.spearman` for each pair, M rankings instead of M (M - 1)."""
    from scipy.stats import rankdata

    arr = _np_maps(maps)
    m = len(arr)
    ranks = np.stack([rankdata(a.ravel()) for a in arr]) if m else np.zeros((0, 0))
    ranks -= ranks.mean(axis=1, keepdims=True)
    gram = ranks @ ranks.T
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    out = []
    for i in range(m):
        rhos = [float(np.clip(gram[i, j] / (norms[i] * norms[j]), -1.0, 1.0))
                for j in range(m) if j != i and norms[i] * norms[j] > 0]
        out.append(_r(float(np.mean(rhos))) if rhos else float("nan"))
    return {"mean_spearman": torch.tensor(out, dtype=torch.float64)}
