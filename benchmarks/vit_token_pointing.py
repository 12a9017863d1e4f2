#!/usr/bin/env python
"""Why a method misses the pointing game on the small synthetic ViT: token-level analysis.

For the small ViT of ``camscope.synthetic_vit`` (``--seed``, ``--guidance``) on the 200
held-out scenes of ``camscope bench synthetic``: per method, the fraction of scenes where the
token with the largest raw value (before upsampling) touches the object, and where its
upsampling peak (the token centre's pixels, ``camscope.synthetic.node_masks``) lies inside it;
and the oracle: an 8x8 map holding each token's object fraction, upsampled and scored like the
methods' maps. Not part of the test suite.

    python benchmarks/vit_token_pointing.py --seed 0 --guidance 1.0
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--methods", default="rollout,chefer,legrad,hirescam,layercam")
    args = p.parse_args()

    from camscope.core.capture import capture
    from camscope.core.postprocess import finalize
    from camscope.engine import CamEngine
    from camscope.methods.registry import METHODS
    from camscope.studies import synthetic as S
    from camscope.studies import synthetic_vit as V
    from camscope.studies.benchmark import DEFAULT_SEED, score_maps

    scenes = S.make_scenes(200, seed=DEFAULT_SEED)
    cells = torch.nn.functional.adaptive_avg_pool2d(scenes.masks.float()[:, None], 8)[:, 0]
    hits, energy, area = score_maps(finalize(cells, (64, 64)), scenes.masks)
    print(f"oracle 8x8 map (token object fraction): pointing {100 * hits.mean():.1f} %, energy/area {(energy / area).mean():.2f}x")
    model = V.load_or_train_vit(None, seed=args.seed, guidance=args.guidance)
    x = S.normalize(scenes.images)
    labels = scenes.labels.tolist()
    nodes = S.node_masks(scenes.masks, 8, 8).flatten(1)
    touch = torch.nn.functional.adaptive_max_pool2d(scenes.masks.float()[:, None], 8)[:, 0].flatten(1)
    methods = args.methods.split(",")
    engine = CamEngine(model, V.VIT_TARGET_LAYER, methods=methods, normalization=(S.SYNTH_MEAN, S.SYNTH_STD))
    raw: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for s in range(0, 200, 50):
        cap = capture(engine.split, x[s : s + 50], targets_of_view=[[t] for t in labels[s : s + 50]], need_gradients=True)
        for m in methods:
            out = METHODS[m].fn(cap, engine.runtime)
            if METHODS[m].output != "map":
                out = (out * cap.activations).sum(1)
            raw[m].append(out.detach().clamp_min(0))
    rows = torch.arange(200)
    print(f"small ViT seed {args.seed}, guidance {args.guidance}: accuracy {100 * S.evaluate(model, scenes):.1f} %")
    for m in methods:
        top = torch.cat(raw[m]).reshape(200, -1).argmax(1)
        print(f"  {m:10s} peak token touches the object {100 * (touch[rows, top] > 0).float().mean():.1f} %, "
              f"its centre lies inside {100 * (nodes[rows, top] >= 1).float().mean():.1f} %")


if __name__ == "__main__":
    main()
