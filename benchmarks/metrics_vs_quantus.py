"""camscope's registered metrics vs Quantus 0.6: same photos, same maps, same model, one run.

ResNet-50 (random weights after ``torch.manual_seed(0)``: pretrained weights cannot be downloaded
here), photos from ``../shared/images/imagenet-samples`` and ``imagenet-100`` (first ``--photos``,
default 20), 4 maps per photo (Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM at ``layer4``, made once
by camscope and handed to both tools), target = the predicted class. The "ground-truth" region of
the localisation metrics is the centre square (half the side): the photos have no boxes here, and
both tools get the same region.

Metrics: those both tools define the same way (tests/metrics/test_quantus_equality.py):
Sparseness, Complexity, Effective Complexity, Relevance Mass / Rank Accuracy, Top-K Intersection,
Attribution Localisation, Avg-/Max-Sensitivity, Local Lipschitz Estimate, Relative Input Stability,
plus Faithfulness Correlation, Relative Output Stability and Random Logit (same work, different
RNG / denominator / SSIM convention, noted in the table). Sample counts are set by ``--samples``
(robustness) and ``--runs`` (faithfulness correlation), the same for both tools.

Re-explanations (robustness, Random Logit) use the same camscope engine for both tools: Quantus'
``explain_func`` explains one method per call (Quantus evaluates one method at a time); camscope's
explainers of the 4 maps share one engine call per perturbed batch (the 4 gradient methods come
from one capture), which is how ``camscope report`` builds them.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python benchmarks/metrics_vs_quantus.py --photos 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam")
LAYER = "layer4"
SAME = {
    "sparseness": ("Sparseness", {}, {}),
    "complexity": ("Complexity", {}, {}),
    "effective_complexity": ("EffectiveComplexity", {}, {}),
    "relevance_mass": ("RelevanceMassAccuracy", {}, {}),
    "relevance_rank": ("RelevanceRankAccuracy", {}, {}),
    "top_k_intersection": ("TopKIntersection", {"k": 1000}, {"k": 1000}),
    "attribution_localisation": ("AttributionLocalisation", {}, {}),
}


def robust_specs(samples: int, runs: int) -> dict[str, tuple[str, dict, dict, str]]:
    """camscope name -> (Quantus class, camscope params, Quantus kwargs, note)."""
    return {
        "faithfulness_correlation": ("FaithfulnessCorrelation", {"nr_runs": runs, "subset_size": 224},
                                     {"nr_runs": runs, "subset_size": 224}, "RNG/feature convention differs"),
        "avg_sensitivity": ("AvgSensitivity", {"nr_samples": samples}, {"nr_samples": samples}, "own random draws"),
        "max_sensitivity": ("MaxSensitivity", {"nr_samples": samples}, {"nr_samples": samples}, "own random draws"),
        "local_lipschitz": ("LocalLipschitzEstimate", {"nr_samples": samples}, {"nr_samples": samples}, "own random draws"),
        "relative_input_stability": ("RelativeInputStability", {"nr_samples": samples}, {"nr_samples": samples}, "own random draws"),
        "relative_output_stability": ("RelativeOutputStability", {"nr_samples": samples}, {"nr_samples": samples},
                                      "denominator convention differs"),
        "random_logit": ("RandomLogit", {"num_classes": 1000}, {"num_classes": 1000}, "SSIM 2-D vs 1-D"),
    }


def load_photos(root: Path, n: int):
    from camscope.io.images import collect_photos
    from camscope.models import Preprocess

    files: list[Path] = []
    for d in ("imagenet-samples", "imagenet-100"):
        files += sorted(p for p in (root / d).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = files[:n]
    pre = Preprocess()
    photos = collect_photos([str(f) for f in files])
    return torch.stack([pre.to_tensor(p.image) for p in photos]), [f.name for f in files]


class FusedExplainers:
    """One explainer per method; a batch is explained once for all methods (one engine call) and
    each explainer picks its method's maps from that call."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.key: tuple | None = None
        self.ref: torch.Tensor | None = None
        self.maps: dict[str, torch.Tensor] = {}
        self.calls = 0

    def _run(self, x: torch.Tensor, targets) -> None:
        # The batch is kept referenced while cached, so its memory cannot be reused by another
        # tensor with the same address, shape and strides.
        key = (x.data_ptr(), tuple(x.shape), x.stride(), tuple(targets))
        if key != self.key:
            res = self.engine(x, [[int(t)] for t in targets])
            self.maps = {m: res.maps[m][:, 0] for m in METHODS}
            self.key, self.ref = key, x
            self.calls += 1

    def explainer(self, method: str):
        def explain(x: torch.Tensor, targets) -> torch.Tensor:
            self._run(x, list(targets))
            return self.maps[method]

        return explain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "images"))
    p.add_argument("--photos", type=int, default=20)
    p.add_argument("--samples", type=int, default=10, help="robustness samples per map (both tools)")
    p.add_argument("--runs", type=int, default=100, help="faithfulness-correlation subsets (both tools)")
    p.add_argument("--metrics", default="all", help="comma-separated camscope names (default: all)")
    args = p.parse_args(argv)

    import quantus
    from torchvision.models import resnet50

    import camscope.metrics  # noqa: F401  (registers the metrics)
    from camscope.engine import CamEngine
    from camscope.metrics.inputs import MetricInputs
    from camscope.metrics.registry import METRICS

    root = Path(args.images)
    if not root.is_dir():
        root = Path("/work/shared/images")
    torch.manual_seed(0)
    model = resnet50(weights=None).eval()
    x, names = load_photos(root, args.photos)
    n = x.shape[0]
    engine = CamEngine(model, LAYER, methods=METHODS, input_size=(1, *x.shape[1:]))
    t0 = time.perf_counter()
    res = engine(x)
    targets = [int(t) for t in res.targets[:, 0]]
    maps = torch.stack([res.maps[m][:, 0] for m in METHODS], dim=1)  # (N, 4, H, W)
    print(f"{n} photos x {len(METHODS)} maps, ResNet-50 (random weights), maps in {time.perf_counter() - t0:.1f} s")
    h, w = maps.shape[-2:]
    region = torch.zeros(h, w, dtype=torch.bool)
    region[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    fused = FusedExplainers(engine)
    explainers = [fused.explainer(m) for m in METHODS]

    def q_explain_for(method: str):
        single = CamEngine(model, LAYER, methods=(method,), input_size=(1, *x.shape[1:]))

        def explain_func(model, inputs, targets, **kwargs):
            xt = torch.as_tensor(inputs, dtype=torch.float32)
            r = single(xt, [[int(t)] for t in np.atleast_1d(targets)])
            return r.maps[method][:, 0:1].numpy()

        return explain_func

    q_explain = {m: q_explain_for(m) for m in METHODS}
    # both tools' explainers give the same maps (the fused call changes the time, not the maps)
    probe = x[:2] + 0.01
    for m, e in zip(METHODS, explainers, strict=True):
        ref = q_explain[m](model, probe.numpy(), np.asarray(targets[:2]))[:, 0]
        assert np.allclose(e(probe, targets[:2]).numpy(), ref, atol=1e-5), m
    specs = {k: (v[0], v[1], v[2], "") for k, v in SAME.items()}
    specs.update(robust_specs(args.samples, args.runs))
    chosen = list(specs) if args.metrics == "all" else [s.strip() for s in args.metrics.split(",")]
    xn, yn = x.numpy(), np.asarray(targets)
    sn = np.repeat(region.numpy()[None, None], n, axis=0).astype(np.float32)
    rows = []
    for name in chosen:
        qcls, cparams, qkw, note = specs[name]
        # camscope: one call per photo, the 4 maps together
        t = time.perf_counter()
        ours = []
        for i in range(n):
            inp = MetricInputs(target=targets[i], image=x[i], forward=model, explainers=explainers,
                               region=region, seed=i, batch_size=16, params=cparams)
            ours.append(METRICS[name].fn(inp, maps[i])[name].cpu().numpy())
        t_ours = time.perf_counter() - t
        # Quantus: one call per method over all photos
        t = time.perf_counter()
        theirs = []
        for j, m in enumerate(METHODS):
            metric = getattr(quantus, qcls)(disable_warnings=True, **qkw)
            theirs.append(np.asarray(metric(
                model=model, x_batch=xn, y_batch=yn, a_batch=maps[:, j : j + 1].numpy(), s_batch=sn,
                device="cpu", explain_func=q_explain[m], batch_size=64,
            ), dtype=float))
        t_q = time.perf_counter() - t
        ours_a = np.stack(ours)  # (N, 4)
        theirs_a = np.stack(theirs, axis=1)
        diff = np.nanmax(np.abs(ours_a - theirs_a)) if not note else float("nan")
        rows.append((name, t_ours, t_q, diff, note))
        print(f"{name:27s} camscope {t_ours:8.2f} s   quantus {t_q:8.2f} s   x{t_q / t_ours:7.1f}   "
              f"max|diff| {diff:.1e}  {note}", flush=True)
    tot_o = sum(r[1] for r in rows)
    tot_q = sum(r[2] for r in rows)
    print(f"{'total':27s} camscope {tot_o:8.2f} s   quantus {tot_q:8.2f} s   x{tot_q / tot_o:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
