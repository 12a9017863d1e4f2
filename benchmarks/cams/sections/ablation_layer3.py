"""ablation-layer3: Ablation-CAM at layer3[-1], where camscope's tail is layer4 + the head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import (
    Table,
    Target,
    fmt_corr,
    fmt_num,
    fmt_ratio,
    fmt_seconds,
    pearson,
    safe_div,
    summarise,
)
from . import section

if TYPE_CHECKING:
    from ..context import Bench

TARGETS = (Target("ablation_l3_speedup", "Ablation-CAM layer3[-1]: speed-up vs pytorch-grad-cam", ">=", 3.0),)


@section("ablation-layer3", order=20, needs_photos=True, targets=TARGETS)
def ablation_layer3(bench: Bench) -> None:
    photos = bench.slow_photos()
    ref = bench.reference("ablationcam", "layer3", photos)
    ours = bench.run_camscope(["ablationcam"], "layer3", photos)
    table = Table(
        f"ablation-layer3: Ablation-CAM at {bench.layer_names['layer3']} (camscope tail = layer4 + head)",
        [
            ("photo", "photo", str),
            ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
            ("camscope_s", "camscope s", fmt_seconds),
            ("ratio", "speed-up", fmt_ratio),
            ("corr", "corr", fmt_corr),
            ("live", "live channels", lambda v: fmt_num(v, ".1%")),
        ],
    )
    for i, p in enumerate(photos):
        r, o = ref.get(i), ours[i]
        table.add(
            photo=p.name,
            pgc_s=r.seconds if r else None,
            camscope_s=o.seconds,
            ratio=safe_div(r.seconds if r else None, o.seconds),
            corr=pearson(o.output["ablationcam"], r.output) if r else float("nan"),
            live=p.live_l3,
            pgc_runs_s=r.times if r else None,
            camscope_runs_s=o.times,
        )
    table.add(photo="median", **summarise(table.rows, medians=("pgc_s", "camscope_s", "ratio"), minimums=("corr",)))
    table.notes.append("median row: medians of the times and speed-ups; corr = minimum over photos")
    bench.summary["ablation_l3_speedup"] = table.rows[-1]["ratio"]
    bench.tables.append(table)
