"""camscope, as the benchmark runs it: an engine built once per method set, layer and precision
(its build timed apart), then the realistic per-photo call, timed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import camscope_api as cs
from .common import Measurement, fmt_seconds, log, measure

if TYPE_CHECKING:
    from .context import Photo


class CamscopeRunner:
    """Mixin of :class:`~cams.context.Bench`: its camscope runs."""

    def camscope_forward_batch(self) -> int:
        """Images per full forward in camscope's Score-CAM: --batch-size, else camscope's fixed
        default (FORWARD_BATCH; on CPU camscope measures its own per run unless compiling)."""
        if self.args.batch_size:
            return self.args.batch_size
        return cs.forward_batch(self.device.type)

    def camscope_batch_label(self) -> str:
        if self.args.batch_size:
            return str(self.args.batch_size)
        kind = self.device.type
        tail, fwd = cs.batch_defaults(kind)
        if kind == "cpu" and cs.measures_forward_batches():
            fwd = "measured per run among 2/4/8/16"
        return f"its defaults (tail rows {tail}, full forwards {fwd})" if tail or fwd else "its default"

    def engine(self, methods: Sequence[str], layer: str, **kwargs: Any) -> Any:
        """A camscope engine at one of the two layers, with --batch-size (None: camscope's
        per-method defaults)."""
        return cs.cam_engine(
            self.model, self.layer_names[layer], methods=list(methods), batch_size=self.args.batch_size, **kwargs
        )

    @staticmethod
    def explain(engine: Any, photo: Photo) -> dict[str, np.ndarray]:
        """The realistic per-photo call: each method's map, on the CPU."""
        res = engine(photo.tensor, targets=[[photo.target]])
        return {name: maps[0, 0].numpy() for name, maps in res.maps.items()}

    def run_camscope(
        self,
        methods: Sequence[str],
        layer: str,
        photos: Sequence[Photo],
        precision: str = "fp32",
        compile: bool = False,
    ) -> dict[int, Measurement]:
        """camscope: engine built once (timed separately), then the per-photo call, timed.

        With ``compile``, the first call (which compiles) is timed on its own as the setup: it
        is reported as "compile s", and the timed runs are the compiled ones."""
        key = (*methods, "compiled") if compile else tuple(methods)
        todo = [p for p in photos if ("camscope", key, layer, precision, p.name) not in self.cache]
        if todo:
            t0 = time.perf_counter()
            engine = self.engine(methods, layer, precision=precision, compile=compile)
            if compile:
                log(f"camscope: compiling the model ({precision}), first call on {todo[0].name}")
                engine(todo[0].tensor, targets=[[todo[0].target]])
                if not engine.runtime.compiled:
                    log("  -> torch.compile failed: the compiled timings below are uncompiled")
            setup = time.perf_counter() - t0
            if compile:
                log(f"  -> engine build + compile + first call: {fmt_seconds(setup)} s")
            for i, p in enumerate(todo, 1):
                log(
                    f"camscope {'+'.join(key)} ({precision}) at {self.layer_names[layer]}, "
                    f"photo {i}/{len(todo)} ({p.name})"
                )
                m = measure(lambda p=p: self.explain(engine, p), **self.budget())
                m.setup_s = setup
                self.cache[("camscope", key, layer, precision, p.name)] = m
                log(f"  -> {fmt_seconds(m.seconds)} s ({len(m.times)} run(s))")
        return {i: self.cache[("camscope", key, layer, precision, p.name)] for i, p in enumerate(photos)}
