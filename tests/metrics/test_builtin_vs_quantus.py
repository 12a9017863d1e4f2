"""The registered localisation metrics against Quantus (0.6) on the same maps and masks.

Conventions: Quantus's PointingGame has no tolerance and hits when *any* maximum lies in the
mask; camscope's registered ``pointing_game`` uses the paper's 15 px tolerance and every
maximum, so the equality is checked with ``tolerance=0`` on maps with a single maximum, and
with ``ties="any"`` on the per-map function. ``energy_pg`` is Quantus's RelevanceMassAccuracy
on a non-negative map (``abs=False``, ``normalise=False``: camscope does not rescale)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from camscope.metrics import METRICS, MetricInputs, pointing_game
from camscope.metrics.registry import call_metric

quantus = pytest.importorskip("quantus", reason="the Quantus equality tests need quantus (the test extra)")


def _batch(seed: int, n: int = 6, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((n, 1, size, size)).astype(np.float32) ** 3
    s = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, size // 2, 2)
        s[i, :, y0 : y0 + size // 2, x0 : x0 + size // 3] = 1
    return a, s


def _quantus(metric: object, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    x = np.zeros((n, 3, *a.shape[-2:]), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=a, s_batch=s,
                                 channel_first=True), dtype=np.float64)


def _camscope(name: str, a: np.ndarray, s: np.ndarray, **params: object) -> list[float]:
    spec = METRICS[name]
    out = []
    for i in range(a.shape[0]):
        inputs = MetricInputs(target=0, region=torch.from_numpy(s[i, 0] > 0), params=spec.resolved(params))
        out.append(call_metric(spec, inputs, torch.from_numpy(a[i, :1]).double())[spec.keys[0]][0])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_pointing_game_equals_relevance_mass_accuracy(seed: int) -> None:
    a, s = _batch(seed)
    q = _quantus(quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True,
                                               display_progressbar=False), a, s)
    assert _camscope("energy_pg", a, s) == pytest.approx(q.tolist(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pointing_game_equals_quantus_without_tolerance(seed: int) -> None:
    a, s = _batch(seed, n=12)
    q = _quantus(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True,
                                      display_progressbar=False), a, s)
    assert 0 < q.sum() < len(q)  # both hits and misses
    assert _camscope("pointing_game", a, s, tolerance=0) == q.tolist()  # one maximum per random map
    # Ties: a map whose two maxima lie one inside, one outside the mask. Quantus: any maximum.
    a2, s2 = a.copy(), s.copy()
    a2[0, 0] = 0.0
    inside = np.argwhere(s2[0, 0] > 0)[0]
    outside = np.argwhere(s2[0, 0] == 0)[0]
    a2[0, 0, inside[0], inside[1]] = a2[0, 0, outside[0], outside[1]] = 1.0
    q2 = _quantus(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True,
                                       display_progressbar=False), a2[:1], s2[:1])
    assert q2.tolist() == [1.0]
    assert pointing_game(a2[0, 0], s2[0, 0] > 0, tolerance=0, ties="any") is True
    assert pointing_game(a2[0, 0], s2[0, 0] > 0, tolerance=0, ties="all") is False  # camscope's default
