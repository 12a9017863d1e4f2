"""pytorch-grad-cam, as the benchmark runs it: one CAM object per method and layer, timed per
photo, at each batch size of ``--pgc-batch-sizes`` for its Ablation-/Score-CAM."""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .common import Measurement, Table, fmt_seconds, log, measure

if TYPE_CHECKING:
    from .context import Photo

#: benchmark name -> (pytorch-grad-cam class, camscope method)
SHARED_METHODS: dict[str, tuple[str, str]] = {
    "gradcam": ("GradCAM", "gradcam"),
    "gradcam++": ("GradCAMPlusPlus", "gradcampp"),
    "xgradcam": ("XGradCAM", "xgradcam"),
    "hirescam": ("HiResCAM", "hirescam"),
    "layercam": ("LayerCAM", "layercam"),
    "eigencam": ("EigenCAM", "eigencam"),
    "ablationcam": ("AblationCAM", "ablationcam"),
    "scorecam": ("ScoreCAM", "scorecam"),
}
#: pytorch-grad-cam needs minutes per image for these (one full forward per channel).
SLOW_METHODS = ("ablationcam", "scorecam")
#: pytorch-grad-cam's own batch sizes (AblationCAM's argument, ScoreCAM's fallback).
PGC_DEFAULT_BATCH = {"ablationcam": 32, "scorecam": 16}


class PytorchGradCam:
    """Mixin of :class:`~cams.context.Bench`: its pytorch-grad-cam runs."""

    def pgc_class(self, name: str):
        try:
            module = importlib.import_module("pytorch_grad_cam")
        except ImportError:
            raise SystemExit(
                "bench_cams: error: pytorch-grad-cam is not installed: pip install -e '.[bench]' "
                "(or pass --skip-reference)"
            ) from None
        return getattr(module, SHARED_METHODS[name][0])

    def pgc_batches(self, method: str) -> list[int | None]:
        """The batch sizes pytorch-grad-cam is timed with (--pgc-batch-sizes) for ``method``."""
        if method not in SLOW_METHODS:
            return [None]
        out: list[int | None] = []
        for spec in self.args.pgc_batch_sizes:
            b = {"same": self.camscope_forward_batch(), "default": PGC_DEFAULT_BATCH[method]}.get(spec) or int(spec)
            if b not in out:
                out.append(b)
        return out

    def pgc_label(self, method: str) -> str:
        bs = self.pgc_batches(method)
        if bs == [None]:
            return "-"
        return ", ".join(
            f"{b}{' (its default)' if b == PGC_DEFAULT_BATCH[method] else ''}" for b in bs if b is not None
        )

    def reference(self, method: str, layer: str, photos: Sequence[Photo]) -> dict[int, Measurement]:
        """pytorch-grad-cam's time per photo: the fastest over the batch sizes it is timed with
        (each one's times go to a table of their own when there are several)."""
        if self.args.skip_reference:
            return {}
        per_batch = {b: self.run_pgc(method, layer, photos, b) for b in self.pgc_batches(method)}
        best = {i: min((r[i] for r in per_batch.values()), key=lambda m: m.seconds) for i in range(len(photos))}
        if len(per_batch) > 1:
            for i, p in enumerate(photos):
                for b, r in per_batch.items():
                    row = dict(
                        method=method, layer=self.layer_names[layer], photo=p.name, batch=b,
                        seconds=r[i].seconds, used="yes" if r[i] is best[i] else "", runs_s=r[i].times,
                    )
                    if row not in self.batch_rows:
                        self.batch_rows.append(row)
        return best

    def run_pgc(
        self, method: str, layer: str, photos: Sequence[Photo], batch: int | None = None
    ) -> dict[int, Measurement]:
        """pytorch-grad-cam: one CAM object (``with`` block) for all photos, timed per call."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        todo = [p for p in photos if ("pgc", method, layer, batch, p.name) not in self.cache]
        if todo:
            cls = self.pgc_class(method)
            kwargs: dict[str, Any] = {"model": self.model, "target_layers": [self.layers[layer]]}
            if method == "ablationcam" and batch is not None:
                kwargs["batch_size"] = batch
            t0 = time.perf_counter()
            with cls(**kwargs) as cam:
                setup = time.perf_counter() - t0
                if method == "scorecam" and batch is not None:
                    cam.batch_size = batch
                for i, p in enumerate(todo, 1):
                    slow = method in SLOW_METHODS
                    log(
                        f"pytorch-grad-cam {cls.__name__} at {self.layer_names[layer]}"
                        f"{f' batch {batch}' if batch else ''}, photo {i}/{len(todo)} "
                        f"({p.name}){' - minutes per photo' if slow else ''}"
                    )
                    targets = [ClassifierOutputTarget(p.target)]

                    def call(p=p, targets=targets, cam=cam):
                        return cam(input_tensor=p.tensor, targets=targets)[0]

                    m = measure(call, **self.budget())
                    m.setup_s = setup
                    m.batch = batch
                    self.cache[("pgc", method, layer, batch, p.name)] = m
                    log(f"  -> {fmt_seconds(m.seconds)} s ({len(m.times)} run(s))")
            self.model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills .grad
        return {i: self.cache[("pgc", method, layer, batch, p.name)] for i, p in enumerate(photos)}

    def flush_batch_table(self) -> None:
        """A table of pytorch-grad-cam's times per batch size, for what the last section measured."""
        if not self.batch_rows:
            return
        table = Table(
            "pytorch-grad-cam batch sizes (the faster per photo is the one compared)",
            [
                ("method", "method", str),
                ("layer", "layer", str),
                ("photo", "photo", str),
                ("batch", "batch", str),
                ("seconds", "seconds", fmt_seconds),
                ("used", "used", str),
            ],
        )
        for row in self.batch_rows:
            table.add(**row)
        self.batch_rows = []
        self.tables.append(table)
