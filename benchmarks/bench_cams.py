#!/usr/bin/env python
"""camscope vs pytorch-grad-cam, side by side in one run: speed, agreement of the maps, memory.

Same photos, same model object, same target layer, same target class for both tools; every time
is a median over repeats of the realistic per-image call. Sections (``--sections``):

    methods             every method both tools have, per image: seconds, ratio, map correlation
    ablation-layer3     Ablation-CAM at layer3[-1] (camscope's tail = layer4 + head)
    scorecam-precision  camscope Score-CAM fp32 vs bf16: speed, correlation, ratio vs pytorch-grad-cam
    gradient-fusion     camscope's five gradient methods in one call vs Grad-CAM alone
    study               the classic study end to end (photos x 3 methods x plain + eigen+aug)
    memory              peak RSS of ``camscope explain`` over 10 vs 100 photos

The code is the package next to this file: ``cams/common.py`` (timing, tables, reports),
``cams/context.py`` (model, photos, both tools' runners), ``cams/sections/`` (one module per
section). Not part of the test suite. See benchmarks/README.md for commands, expected durations
and how to add a section.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the cams package next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cams.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__file__))
