"""Localisation on the synthetic scenes as a segmentation task and as a detection task, per
method: pointing game and energy in the object's mask (and box), mean and min-max over heads
trained with different seeds. Prints a markdown table.

    python benchmarks/synthetic_tasks.py [--seeds 3] [--n 100] [--methods gradcam,...]

Models (:mod:`camscope.studies.synthetic_tasks`): the committed SmallCNN's trunk (frozen) with
a per-pixel head (segment) or an FCOS-style head (detect), each trained for a few seconds on
``make_scenes(2000, seed=s)`` for s in 0..seeds-1 (cached). Explained on ``n`` held-out scenes
(seed 1000) at layer ``features``: segment, the object's class over the model's predicted mask;
detect, the detection best matching the object's box and class (a ``--box`` target, IoU +
score). Scenes whose target the model misses are left out (``found``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from camscope.studies.synthetic_tasks import load_or_train_task, localisation_table

METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "ablationcam", "scorecam")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.0f} %"
    return f"{100 * statistics.mean(values):.0f} % ({100 * min(values):.0f}-{100 * max(values):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("camscope").setLevel(logging.ERROR)  # the detector's hook-path notice
    methods = [m.strip() for m in args.methods.split(",")]
    t0 = time.perf_counter()
    figs = {"segment": [], "detect": []}
    for seed in range(args.seeds):
        for task in figs:
            model = load_or_train_task(task, seed=seed)
            figs[task].append(localisation_table(task, methods, n=args.n, model=model))
    seg, det = figs["segment"], figs["detect"]
    print(f"{args.n} held-out scenes, heads trained with seeds 0..{args.seeds - 1}: mean (min-max); "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"found: segment {_cell([f.found for f in seg])}, detect {_cell([f.found for f in det])}; chance "
          f"(share of the image): mask {_cell([f.chance_pointing for f in seg])}, box {_cell([f.chance_energy_box for f in det])}")
    print("| method | segment: pointing | segment: energy in mask | detect: pointing | detect: energy in mask "
          "| detect: energy in box |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in methods:
        print(f"| {m} | {_cell([f.pointing[m] for f in seg])} | {_cell([f.energy[m] for f in seg])} | "
              f"{_cell([f.pointing[m] for f in det])} | {_cell([f.energy[m] for f in det])} | "
              f"{_cell([f.energy_box[m] for f in det])} |")


if __name__ == "__main__":
    main()
