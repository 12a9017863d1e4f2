"""Explaining a batch of images and writing each image's files: :class:`Explainer`, the one
code path for "explain one image and write its files" (the local run, a Ray worker, the same).

One bad image costs that image only: it becomes an :class:`~camscope.run.records.Outcome` with
a one-line reason; a batch that fails as a whole is retried image by image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from camscope.engine import CamEngine
from camscope.errors import ImageLoadError, first_line
from camscope.io.images import load_image
from camscope.io.rundir import RunDir
from camscope.models import LoadedModel
from camscope.run.options import ExplainOptions
from camscope.run.outputs import write_image
from camscope.run.plan import build_engine, device_of
from camscope.run.records import Explained, Outcome, PlannedImage
from camscope.run.tasks import TaskSetup

__all__ = ["Explainer", "short_reason"]


class Explainer:
    """Explains batches of images and writes each image's files into a run folder.

    Built once per process (the local run, or one remote worker): it owns the model's engine.
    ``layer``, ``target`` and ``k`` come from the plan, so that every process explains the same;
    the local run also hands over the plan's ``engine`` (the model is split once). ``task``: the
    plan's checked task of a run other than a classifier's (its targets, boxes, concept).
    """

    def __init__(
        self,
        opts: ExplainOptions,
        loaded: LoadedModel,
        rundir: RunDir,
        *,
        layer: str | None,
        target: int | None,
        k: int,
        engine: CamEngine | None = None,
        task: TaskSetup | None = None,
    ) -> None:
        self.opts = opts
        self.loaded = loaded
        self.rundir = rundir
        self.engine = engine or build_engine(opts, loaded, layer)
        self.methods = [m.name for m in self.engine.methods]
        self.variants = self.engine.variants
        self.target = target
        self.k = k
        self.task = task
        self.device = device_of(loaded.model)

    def explain(self, items: Sequence[PlannedImage]) -> Iterator[Outcome]:
        """Load, explain and write every image of ``items``; one :class:`Outcome` each (those that
        failed to load first). Exceptions of one image never escape: they become its reason."""
        prepared: list[tuple[PlannedImage, Explained]] = []
        for item in items:
            t0 = time.perf_counter()
            try:
                prepared.append((item, self._prepare(item)))
            except Exception as exc:  # any failure costs this image only
                reason = exc.reason if isinstance(exc, ImageLoadError) else None
                yield Outcome(item, reason=reason or short_reason(exc, "loading the image", "lower --max-pixels"), seconds=time.perf_counter() - t0)
        if not prepared:
            return
        t0 = time.perf_counter()
        done = list(self._compute(prepared))
        share = (time.perf_counter() - t0) / len(prepared)
        del prepared
        for i, (item, explained, error) in enumerate(done):
            done[i] = (item, None, None)  # each image's data is released once written
            t1 = time.perf_counter()
            if error is None:
                try:
                    record = write_image(
                        self.rundir, item, explained, self.loaded, self.variants, self.methods, self.opts.outputs,
                        alpha=self.opts.alpha, colormap=self.opts.colormap,
                    )
                except Exception as exc:
                    error = short_reason(exc, "writing the outputs")
            del explained
            seconds = share + time.perf_counter() - t1
            yield Outcome(item, record=None, reason=error, seconds=seconds) if error else Outcome(item, record, seconds=seconds)

    def _prepare(self, item: PlannedImage) -> Explained:
        photo = load_image(item.path, max_pixels=self.opts.max_pixels)
        return Explained(photo, self.loaded.preprocess.to_tensor(photo))

    def _compute(
        self, items: list[tuple[PlannedImage, Explained]]
    ) -> Iterator[tuple[PlannedImage, Explained | None, str | None]]:
        """(item, explained, error) per image; a failing batch is retried image by image."""
        x = torch.stack([e.tensor for _, e in items]).to(self.device)
        try:
            if self.task is None:
                targets = None if self.target is None else [[self.target]] * len(items)
                res, error = self.engine(x, targets, top_k=self.k), None
            else:
                targets = self.task.targets_for([e.photo.size for _, e in items], self.loaded.preprocess)
                res, error = self.engine(x, targets, None, self.task.task), None
        except Exception as exc:  # out of memory, a model that raises on one input, ...
            res, error = None, short_reason(exc, "computing the maps")
        if res is None:  # outside the except block, so the traceback's tensors are already freed
            del x
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                yield items[0][0], None, error
                return
            for one in items:  # retried image by image: only the culprit fails
                yield from self._compute([one])
            return
        for i, (item, e) in enumerate(items):
            probs = res.probabilities[i]
            if not torch.isfinite(probs).all():
                yield item, None, "model output is not finite (NaN or inf scores)"
                continue
            maps = {name: m[i].numpy() for name, m in res.maps.items()}
            if any(not np.isfinite(m).all() for m in maps.values()):
                yield item, None, "a map is not finite (NaN or inf)"
                continue
            e.probs, e.targets, e.maps = probs, res.targets[i].tolist(), maps
            if self.task is not None:
                assert res.explained is not None and res.scores is not None
                n = len(res.explained[i])
                e.task, e.explained = self.task.name, list(res.explained[i])
                e.targets, e.scores = e.targets[:n], [float(v) for v in res.scores[i, :n].tolist()]
                if res.target_probabilities is not None:
                    e.probabilities = [float(v) for v in res.target_probabilities[i, :n].tolist()]
            yield item, e, None


def short_reason(exc: BaseException, during: str, oom_hint: str = "try a smaller --batch-size or --images-per-batch") -> str:
    """One-line reason for an unexpected exception raised while ``during`` one image."""
    first = first_line(exc)
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        return f"out of memory while {during} ({oom_hint}; see docs/limits.md)"
    return f"{type(exc).__name__} while {during}: {first[:200]}"
