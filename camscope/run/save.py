"""A :class:`~camscope.engine.CamMaps` (``CamResult.save``) written as the run folder
``camscope explain`` writes, through the same writer, so that ``camscope report DIR`` reads it."""

from __future__ import annotations

import logging
from pathlib import Path

from camscope.core.smoothing import Smoothing
from camscope.engine import CamMaps
from camscope.errors import UsageError
from camscope.io.rundir import RunDir, output_stems
from camscope.models import LoadedModel, Preprocess
from camscope.names import PYTHON_MODEL
from camscope.render.draw import png_bytes
from camscope.render.notebook import result_photo
from camscope.run.manifest import new_manifest, record_outcome, run_settings
from camscope.run.options import ExplainOptions, RunResult
from camscope.run.outputs import write_image
from camscope.run.records import Explained, Outcome, PlannedImage

__all__ = ["save_result"]

logger = logging.getLogger(__name__)


def save_result(
    result: CamMaps,
    out: str | Path,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    figures: bool = True,
    force: bool = False,
) -> Path:
    """Write a :class:`~camscope.engine.CamResult` as the run folder ``camscope explain``
    writes (through :func:`write_image`), so that ``camscope report DIR`` reads it.

    Photos given from files keep their path as the source; photos and tensors given in memory
    are written to ``DIR/inputs/<name>.png`` (tensors de-normalised to 8 bits) and become the
    source, which the report's faithfulness metrics reload. Images already in a folder made
    with the same settings are replaced; other settings are refused unless ``force``.
    """
    rundir = RunDir(out)
    opts = ExplainOptions(alpha=alpha, colormap=colormap, figures=figures)
    opts.check()
    rundir.check_writable("save")
    loaded = result.model
    if loaded is None:  # a CamEngine result: the model is only known by its inputs
        h, w = result.inputs.shape[-2:]
        mean, std = result.normalization or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        loaded = LoadedModel(None, "model", PYTHON_MODEL, None, Preprocess("classic", (int(h), int(w)), None, tuple(mean), tuple(std)))
    n, k = result.targets.shape
    names = result.names or [f"image{i}.png" for i in range(n)]
    sources = result.sources or [None] * n
    variants = [Smoothing.of(parts) for parts in result.smoothing]
    task = None if result.explained is None or result.task in (None, "classify") else result.task
    settings = run_settings(
        loaded, layer=str(result.layer), methods=result.methods, variants=variants, top_k=int(k),
        precision=result.speed.precision if result.speed is not None else "fp32", colormap=colormap, alpha=alpha,
        task=task,
    )
    previous = None if force else rundir.read_manifest(hint="use force=True or another folder")
    if previous is not None and settings.differences(previous.settings):
        raise UsageError(
            f"{out} holds a run with other settings ({', '.join(settings.differences(previous.settings))}); "
            "pass force=True to write into it, or choose another folder"
        )
    rundir.create("save")
    manifest = new_manifest(
        settings, device=str(result.inputs.device) if result.inputs is not None else "cpu", methods=result.methods,
        variants=result.smoothing, output_kinds=opts.outputs, images={} if previous is None else dict(previous.images),
    )
    stems = output_stems(names)
    done = RunResult(Path(out), loaded)
    for i, name in enumerate(names):
        photo = result_photo(result, i) if result.photos is None else result.photos[i]
        source = sources[i]
        if source is None:  # kept in the folder, so that the report can reload it
            source_rel = f"inputs/{name}" if name.lower().endswith(".png") else f"inputs/{name}.png"
            rundir.write_png(source_rel, png_bytes(photo))
            source = str(rundir.path(source_rel).resolve())
        explained = Explained(
            photo,
            result.inputs[i] if result.inputs is not None else None,
            result.probabilities[i],
            result.targets[i].tolist(),
            {v: m[i].numpy() for v, m in result.maps.items()},
        )
        if task is not None:
            assert result.explained is not None
            n_i = len(result.explained[i])
            explained.task, explained.explained = task, list(result.explained[i])
            explained.targets = explained.targets[:n_i]
            explained.scores = [] if result.scores is None else [float(v) for v in result.scores[i, :n_i].tolist()]
            if result.target_probabilities is not None:
                explained.probabilities = [float(v) for v in result.target_probabilities[i, :n_i].tolist()]
        item = PlannedImage(Path(source), name, stems[name])
        record = write_image(
            rundir, item, explained, loaded, variants, result.methods, opts.outputs, alpha=opts.alpha, colormap=opts.colormap
        )
        record_outcome(manifest, Outcome(item, record), done)
    rundir.write_manifest(manifest)
    logger.info("saved %d images -> %s", n, out)
    return Path(out)
