"""scorecam-precision: camscope Score-CAM fp32 vs bf16 (--low-precision), and compiled
(--compile): speed, correlation, ratio vs pytorch-grad-cam, photo by photo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..common import (
    Column,
    Table,
    Target,
    fmt_corr,
    fmt_ratio,
    fmt_seconds,
    pearson,
    safe_div,
    summarise,
)
from . import section

if TYPE_CHECKING:
    from ..context import Bench

TARGETS = (
    Target("scorecam_fp32_speedup", "Score-CAM fp32: speed-up vs pytorch-grad-cam", ">=", 2.0),
    Target("scorecam_bf16_speedup", "Score-CAM bf16: speed-up vs pytorch-grad-cam", ">=", 6.0),
    Target("scorecam_bf16_corr", "Score-CAM bf16: correlation with fp32 (min over images)", ">=", 0.99),
)


@section("scorecam-precision", order=30, needs_photos=True, targets=TARGETS)
def scorecam_precision(bench: Bench) -> None:
    low = bench.args.low_precision
    photos = bench.slow_photos()
    # Photo by photo (pytorch-grad-cam, camscope fp32, camscope low precision), so that each
    # photo's ratios come from minutes apart: on shared machines the speed drifts by tens of
    # percent over tens of minutes (the same pytorch-grad-cam call took 58 s and 95 s).
    ref, fp32, lowp = {}, {}, {}
    runs = [
        (ref, lambda p: bench.reference("scorecam", "layer4", [p])),
        (fp32, lambda p: bench.run_camscope(["scorecam"], "layer4", [p], "fp32")),
    ]
    if low != "none":
        runs.append((lowp, lambda p: bench.run_camscope(["scorecam"], "layer4", [p], low)))
    for i, p in enumerate(photos):
        for out, run in runs:
            got = run(p).get(0)
            if got is not None:
                out[i] = got
    cp = bench.args.compile_precision or (low if lowp else "fp32")
    comp = bench.run_camscope(["scorecam"], "layer4", photos, cp, compile=True) if bench.args.compile else {}
    columns_low: list[Column] = [
        ("low_s", f"camscope {low} s", fmt_seconds),
        ("low_ratio", f"{low} speed-up", fmt_ratio),
        ("low_vs_fp32", f"{low}/fp32 speed", fmt_ratio),
        ("corr", f"corr {low} vs fp32", fmt_corr),
    ] if lowp else []
    columns_compiled: list[Column] = [
        ("comp_s", f"camscope {cp}+compile s", fmt_seconds),
        ("comp_ratio", f"{cp}+compile speed-up", fmt_ratio),
        ("comp_corr", f"corr {cp}+compile vs fp32", fmt_corr),
    ] if comp else []
    table = Table(
        f"scorecam-precision: camscope Score-CAM fp32 vs {low}" if lowp else "scorecam-precision: camscope Score-CAM fp32",
        [
            ("photo", "photo", str),
            ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
            ("fp32_s", "camscope fp32 s", fmt_seconds),
            ("fp32_ratio", "fp32 speed-up", fmt_ratio),
            *columns_low,
            *columns_compiled,
        ],
    )
    for i, p in enumerate(photos):
        r = ref.get(i)
        pgc_s = r.seconds if r else None
        a = fp32[i]
        row: dict[str, Any] = {
            "photo": p.name, "pgc_s": pgc_s, "fp32_s": a.seconds, "fp32_ratio": safe_div(pgc_s, a.seconds),
        }
        if lowp:
            b = lowp[i]
            row.update(
                low_s=b.seconds,
                low_ratio=safe_div(pgc_s, b.seconds),
                low_vs_fp32=safe_div(a.seconds, b.seconds),
                corr=pearson(a.output["scorecam"], b.output["scorecam"]),
            )
        if comp:
            c = comp[i]
            row.update(
                comp_s=c.seconds,
                comp_ratio=safe_div(pgc_s, c.seconds),
                comp_corr=pearson(a.output["scorecam"], c.output["scorecam"]),
            )
        table.add(**row)
    present = set(table.rows[0]) if table.rows else set()
    medians = ("pgc_s", "fp32_s", "fp32_ratio", "low_s", "low_ratio", "low_vs_fp32", "comp_s", "comp_ratio")
    minimums = ("corr", "comp_corr")
    table.add(
        photo="median",
        **summarise(
            table.rows,
            medians=[k for k in medians if k in present],
            minimums=[k for k in minimums if k in present],
        ),
    )
    table.notes.append("speed-ups are against pytorch-grad-cam's ScoreCAM (fp32); corr row: minimum")
    last = table.rows[-1]
    if comp:
        setup = next(iter(comp.values())).setup_s
        table.notes.append(
            f"{cp}+compile: torch.compile of the model, paid once per run (engine build + compile + "
            f"first photo: {fmt_seconds(setup)} s), not in the per-photo times"
        )
        bench.summary["scorecam_compiled_speedup"] = last["comp_ratio"]
        bench.summary["scorecam_compiled_corr"] = last["comp_corr"]
        bench.summary["scorecam_compile_setup_s"] = setup
    bench.summary["scorecam_fp32_speedup"] = last.get("fp32_ratio")
    if lowp:
        bench.summary["scorecam_bf16_speedup"] = last["low_ratio"]
        bench.summary["scorecam_bf16_corr"] = last["corr"]
    bench.tables.append(table)
