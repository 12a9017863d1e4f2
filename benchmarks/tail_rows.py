#!/usr/bin/env python
"""Cost per Ablation-CAM row: the traced split's tail against the hook path (a full forward).

Ablation-CAM runs one tail per live channel (768 for a ViT-B/16), so the per-row ratio is its
speed-up. Interleaved repeats; the split's own build time is printed too.

    python benchmarks/tail_rows.py --model hf/FOLDER --weights-tag none --rows 8 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights-tag", default="IMAGENET1K_V1")
    p.add_argument("--layer", default=None)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from camscope.core.layers import default_layer
    from camscope.core.reshape import model_input_size
    from camscope.core.split import split_model
    from camscope.models import load_model

    model = load_model(args.model, weights_tag=args.weights_tag).model
    layer = args.layer or default_layer(model)
    x = torch.randn(1, 3, *(model_input_size(model) or (224, 224)))
    t0 = time.perf_counter()
    fast = split_model(model, layer)
    print(f"split at {layer}: traced={fast.traced}, built in {time.perf_counter() - t0:.1f} s")
    slow = split_model(model, layer, allow_trace=False)
    ratios = []
    with torch.inference_mode():
        acts, carry = fast.head(x)
        acts_h, carry_h = slow.head(x)
        rows = acts.expand(args.rows, *acts.shape[1:]).clone()
        index = torch.zeros(args.rows, dtype=torch.long)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ref = slow.tail(rows, carry_h, index)
            t_hook = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = fast.tail(rows, carry, index)
            t_fast = time.perf_counter() - t0
            ratios.append(t_hook / t_fast)
            print(f"hook {1e3 * t_hook / args.rows:.0f} ms/row, traced {1e3 * t_fast / args.rows:.0f} ms/row, "
                  f"ratio {ratios[-1]:.1f}x, max |difference| {float((out - ref).abs().max()):.1e}")
    print(f"ratio per row: {min(ratios):.1f}-{max(ratios):.1f}x")


if __name__ == "__main__":
    main()
