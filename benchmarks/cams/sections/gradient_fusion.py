"""gradient-fusion: camscope's five gradient methods in one call vs Grad-CAM alone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..common import (
    Measurement,
    Table,
    Target,
    fmt_num,
    fmt_seconds,
    log,
    measure_interleaved,
    safe_div,
    summarise,
)
from . import section

if TYPE_CHECKING:
    from ..context import Bench, Photo

GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")
#: the same five under their pytorch-grad-cam benchmark names
PGC_GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
TARGETS = (Target("fusion_factor", "five gradient methods / Grad-CAM alone (time)", "<=", 1.3),)


def fused_vs_single(bench: Bench, photos: Sequence[Photo]) -> tuple[dict[int, Measurement], dict[int, Measurement]]:
    """camscope Grad-CAM alone and the five gradient methods in one call, runs interleaved."""
    engines = {}
    setup = {}
    for key, methods in (("one", ["gradcam"]), ("five", list(GRADIENT_METHODS))):
        t0 = time.perf_counter()
        engines[key] = bench.engine(methods, "layer4")
        setup[key] = time.perf_counter() - t0
    one, five = {}, {}
    for i, p in enumerate(photos):
        log(f"camscope gradcam alone vs five gradient methods (interleaved), photo {i + 1}/{len(photos)} ({p.name})")
        ms = measure_interleaved(
            {key: (lambda p=p, e=e: bench.explain(e, p)) for key, e in engines.items()}, **bench.budget()
        )
        for key in ms:
            ms[key].setup_s = setup[key]
        one[i], five[i] = ms["one"], ms["five"]
        log(f"  -> {fmt_seconds(one[i].seconds)} s vs {fmt_seconds(five[i].seconds)} s ({len(one[i].times)} run(s) each)")
    return one, five


@section("gradient-fusion", order=40, needs_photos=True, targets=TARGETS)
def gradient_fusion(bench: Bench) -> None:
    photos = bench.photos
    one, five = fused_vs_single(bench, photos)
    pgc_five: dict[int, float] = {}
    if not bench.args.skip_reference:
        per = [bench.reference(n, "layer4", photos) for n in PGC_GRADIENT_METHODS]
        pgc_five = {i: sum(m[i].seconds for m in per) for i in range(len(photos))}
    table = Table(
        "gradient-fusion: camscope's five gradient methods in one call vs Grad-CAM alone",
        [
            ("photo", "photo", str),
            ("one_s", "camscope gradcam s", fmt_seconds),
            ("five_s", "camscope 5 methods s", fmt_seconds),
            ("factor", "time factor", lambda v: fmt_num(v, ".3f")),
            ("pgc_five_s", "pytorch-grad-cam 5 calls s", fmt_seconds),
            ("same", "gradcam map equal", lambda v: fmt_num(v, ".1e")),
        ],
    )
    for i, p in enumerate(photos):
        a, b = one[i], five[i]
        table.add(
            photo=p.name,
            one_s=a.seconds,
            five_s=b.seconds,
            factor=safe_div(b.seconds, a.seconds),
            pgc_five_s=pgc_five.get(i),
            same=float(np.abs(a.output["gradcam"] - b.output["gradcam"]).max()),
        )
    table.add(
        photo="median",
        **summarise(table.rows, medians=("one_s", "five_s", "factor", "pgc_five_s"), maximums=("same",)),
    )
    table.notes += [
        "time factor = 5 methods / gradcam alone (target <= 1.3); 'gradcam map equal' = max |diff| "
        "between the gradcam map of the fused call and of the single call",
        "pytorch-grad-cam 5 calls = sum of its five per-method medians (one forward+backward each)",
        "the two camscope calls alternate run by run (a, b, a, b, ...) so that load changes hit both",
    ]
    bench.summary["fusion_factor"] = table.rows[-1]["factor"]
    bench.tables.append(table)
