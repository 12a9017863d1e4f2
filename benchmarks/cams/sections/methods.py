"""methods: every method both tools have, per photo: seconds, ratio, map correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..common import (
    Column,
    Measurement,
    Table,
    Target,
    fmt_corr,
    fmt_ratio,
    fmt_seconds,
    median,
    pearson,
    safe_div,
    summarise,
)
from ..naive_scorecam import reference_scorecam
from ..pgc import SHARED_METHODS, SLOW_METHODS
from . import section

if TYPE_CHECKING:
    from ..context import Bench, Photo

TARGETS = (
    Target("ablation_l4_speedup", "Ablation-CAM layer4[-1]: speed-up vs pytorch-grad-cam", ">=", 300.0),
    Target("ablation_l4_corr", "Ablation-CAM layer4[-1]: map correlation (min over images)", ">=", 0.999),
)

PER_PHOTO: list[Column] = [
    ("method", "method", str),
    ("photo", "photo", str),
    ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
    ("camscope_s", "camscope s", fmt_seconds),
    ("ratio", "speed-up", fmt_ratio),
    ("corr", "corr", fmt_corr),
    ("corr_with", "corr against", str),
    ("runs", "runs pgc/cs", str),
]
MEDIANS: list[Column] = [
    ("method", "method", str),
    ("n", "photos", str),
    ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
    ("camscope_s", "camscope s", fmt_seconds),
    ("ratio", "speed-up", fmt_ratio),
    ("corr_min", "corr (min)", fmt_corr),
    ("corr_with", "corr against", str),
    ("setup_s", "camscope engine build s", fmt_seconds),
]


@section("methods", order=10, needs_photos=True, targets=TARGETS)
def methods(bench: Bench) -> None:
    args = bench.args
    table = Table(f"methods: per photo, {bench.model_desc.split(',')[0]} at {bench.layer_names['layer4']}", PER_PHOTO)
    summary = Table("methods: medians over photos", MEDIANS)
    for name in args.methods:
        cs_name = SHARED_METHODS[name][1]
        photos = bench.slow_photos() if name in SLOW_METHODS else bench.photos
        ref = bench.reference(name, "layer4", photos)
        ours = bench.run_camscope([cs_name], "layer4", photos)
        rows = []
        for i, p in enumerate(photos):
            r, cs_map = ref.get(i), ours[i].output[cs_name]
            if name == "scorecam":
                corr, against = float("nan"), "-"
                if i < args.reference_images:
                    corr = pearson(cs_map, reference_scorecam(bench, p).output)
                    against = "naive Score-CAM reference"
            else:
                corr = pearson(cs_map, r.output) if r else float("nan")
                against = "pytorch-grad-cam" if r else "-"
            rows.append(compare(name, p, r, ours[i], corr, against))
        add_rows(table, summary, name, rows, ours)
        if name == "ablationcam":
            bench.summary["ablation_l4_speedup"] = median([r["ratio"] for r in rows])
            bench.summary["ablation_l4_corr"] = summary.rows[-1]["corr_min"]
        if name == "scorecam":
            bench.summary["scorecam_fp32_speedup"] = median([r["ratio"] for r in rows])
            scorecam_pgc_equivalent(bench, photos, ref, table, summary)
    table.notes += [
        f"same input tensors (classic 224x224 resize + ImageNet normalisation), same model "
        f"object, target = predicted class; Ablation-/Score-CAM on the first {args.slow_images} "
        f"photo(s) (--slow-images); their batch: camscope {bench.camscope_batch_label()}, pytorch-grad-cam "
        f"Ablation-CAM {bench.pgc_label('ablationcam')}, Score-CAM {bench.pgc_label('scorecam')} "
        "(with several, the faster one per photo is used)",
        "speed-up = pytorch-grad-cam s / camscope s; corr = Pearson of the two 224x224 maps",
        "Score-CAM: pytorch-grad-cam computes another weighting (target logit + softmax across "
        "channels); camscope's scorecam is checked against a naive Score-CAM, and camscope's "
        "scorecam-logit-softmax against pytorch-grad-cam",
        "Eigen-CAM: pytorch-grad-cam leaves the sign of the principal component to the SVD; "
        "camscope fixes it to agree with the channel sum, so a low correlation there can be a sign flip",
        f"Score-CAM reference: {bench.summary.get('scorecam_reference', 'not run')}",
        f"live channels (not zero everywhere) at {bench.layer_names['layer4']}: "
        f"{median([p.live_l4 for p in bench.photos]):.1%} (median over photos); both tools' "
        "Ablation-CAM and camscope's Score-CAM skip the dead ones, so the weights change the speed",
    ]
    bench.tables += [table, summary]


def compare(
    method: str, photo: Photo, r: Measurement | None, o: Measurement, corr: float, against: str
) -> dict[str, Any]:
    """One photo's row: both tools' times, the speed-up and the correlation of the maps."""
    return dict(
        method=method,
        photo=photo.name,
        pgc_s=r.seconds if r else None,
        camscope_s=o.seconds,
        ratio=safe_div(r.seconds if r else None, o.seconds),
        corr=corr,
        corr_with=against,
        runs=f"{len(r.times) if r else 0}/{len(o.times)}",
        pgc_runs_s=r.times if r else None,
        camscope_runs_s=o.times,
        camscope_setup_s=o.setup_s,
    )


def add_rows(
    table: Table, summary: Table, method: str, rows: Sequence[dict[str, Any]], ours: dict[int, Measurement]
) -> None:
    """A method's rows to the per-photo table, and their medians to the summary."""
    for row in rows:
        table.add(**row)
    s = summarise(rows, medians=("pgc_s", "camscope_s", "ratio"), minimums=("corr",))
    summary.add(
        method=method,
        n=str(len(rows)),
        pgc_s=s["pgc_s"],
        camscope_s=s["camscope_s"],
        ratio=s["ratio"],
        corr_min=s["corr"],
        corr_with=rows[0]["corr_with"] if rows else "-",
        setup_s=ours[0].setup_s if ours else None,
    )


def scorecam_pgc_equivalent(
    bench: Bench, photos: Sequence[Photo], ref: dict[int, Measurement], table: Table, summary: Table
) -> None:
    """camscope's scorecam-logit-softmax (pytorch-grad-cam's weighting) against its ScoreCAM."""
    if bench.args.skip_logit_softmax:
        return
    name = "scorecam-logit-softmax"
    ours = bench.run_camscope([name], "layer4", photos)
    rows = []
    for i, p in enumerate(photos):
        o, r = ours[i], ref.get(i)
        corr = pearson(o.output[name], r.output) if r else math.nan
        rows.append(compare(name, p, r, o, corr, "pytorch-grad-cam ScoreCAM" if r else "-"))
    add_rows(table, summary, name, rows, ours)
