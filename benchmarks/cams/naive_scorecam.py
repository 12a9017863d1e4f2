"""A naive Score-CAM to check camscope's fast one against: camscope's reference implementation
(``reference_maps("scorecam", ...)``, written independently of the fast one) unless
``--reference-impl local`` or it is absent; the local one here also takes over if that fails
(e.g. on a GPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import camscope_api as cs
from .common import Measurement, fmt_seconds, log

if TYPE_CHECKING:
    from .context import Bench, Photo

LOCAL = (
    "local naive Score-CAM in benchmarks/cams/naive_scorecam.py (official normalisation: "
    "align_corners=False upsampling, min-max, constant channels skipped, softmax "
    "probability of the class; independent masked forwards stacked into batches)"
)


def reference_scorecam(bench: Bench, photo: Photo, layer: str = "layer4") -> Measurement:
    """The naive Score-CAM map of ``photo`` (cached), timed once; says which one in the summary."""
    key = ("reference-scorecam", layer, photo.name)
    if key not in bench.cache:
        log(f"naive Score-CAM reference, {photo.name} - minutes per photo")
        fn, desc = implementation(bench)
        t0 = time.perf_counter()
        out = fn(photo, layer)
        dt = time.perf_counter() - t0
        bench.cache[key] = Measurement(dt, [dt], [], out)
        bench.summary["scorecam_reference"] = desc
        log(f"  -> {fmt_seconds(dt)} s")
    return bench.cache[key]


def implementation(bench: Bench) -> tuple[Callable[[Photo, str], np.ndarray], str]:
    """The naive Score-CAM to use and its description."""
    found = None if bench.args.reference_impl == "local" else cs.reference_maps()
    if found is None:
        return lambda photo, layer: local_scorecam(bench, photo, layer), LOCAL
    reference_maps, where = found
    chunk = bench.camscope_forward_batch()

    def call(photo: Photo, layer: str) -> np.ndarray:
        try:
            maps = reference_maps(
                "scorecam", bench.model, bench.layer_names[layer], photo.tensor, [photo.target], chunk=chunk
            )
            return maps.detach().cpu().numpy().reshape(photo.tensor.shape[-2:])
        except Exception as exc:  # say so, and use the local one
            log(f"{where} failed ({type(exc).__name__}: {exc}); using the local reference")
            bench.summary["scorecam_reference_fallback"] = LOCAL
            return local_scorecam(bench, photo, layer)

    return call, (
        f"{where}.reference_maps('scorecam', ..., chunk={chunk}): naive "
        f"Score-CAM, full model, one masked input per channel ({chunk} such forwards stacked per batch)"
    )


def local_scorecam(bench: Bench, photo: Photo, layer: str) -> np.ndarray:
    """Score-CAM as the official implementation (haofanwang/Score-CAM) computes it, one
    channel at a time; only the masked forwards are grouped into batches."""
    model, x, c = bench.model, photo.tensor, photo.target
    got: dict[str, torch.Tensor] = {}
    h = bench.layers[layer].register_forward_hook(lambda _m, _i, o: got.__setitem__("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    acts = got["a"].float()
    size = x.shape[-2:]
    sal = torch.zeros(size, dtype=torch.float64, device=x.device)
    pending: list[tuple[int, torch.Tensor]] = []
    ups: dict[int, torch.Tensor] = {}
    chunk = bench.camscope_forward_batch()

    def flush() -> None:
        if not pending:
            return
        masks = torch.stack([m for _, m in pending])
        with torch.no_grad():
            probs = torch.softmax(model(x * masks[:, None]), dim=1)[:, c]
        for (k, _), p in zip(pending, probs.tolist(), strict=True):
            sal.add_(ups.pop(k).double(), alpha=p)
        pending.clear()

    for k in range(acts.shape[1]):
        up = F.interpolate(acts[:, k : k + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        lo, hi = up.min(), up.max()
        if hi == lo:
            continue
        ups[k] = up
        pending.append((k, (up - lo) / (hi - lo)))
        if len(pending) == chunk:
            flush()
    flush()
    sal = torch.relu(sal)
    lo, hi = sal.min(), sal.max()
    sal = (sal - lo) / (hi - lo) if hi > lo else torch.zeros_like(sal)
    return sal.float().cpu().numpy()
