"""``camscope bench synthetic``: localisation ground truth that works offline, on any machine.

A small CNN (:class:`camscope.studies.synthetic.SmallCNN`), or with ``model_kind="vit"`` (``--model
vit``) a small vision transformer (:func:`camscope.studies.synthetic_vit.small_vit`), is trained on
generated scenes holding one shape each (or loaded from the cache), then every CAM method
explains the *true* class of held-out scenes at the model's target layer
(:data:`camscope.studies.synthetic.TARGET_LAYER`, :data:`camscope.studies.synthetic_vit.VIT_TARGET_LAYER`, or
``layer``), and its maps are scored against the known object masks:

- **pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016
  / IJCV 2018): a hit when the map's maximum lies inside the object mask. Tolerance 0 pixels, not
  the paper's 15: on 64x64 scenes a 15 px dilation of an object of 11-21 px covers most of the
  image, so nearly any map would hit. Ties: every maximum must be inside (a constant map misses).
- **energy-in-mask** (energy-based pointing game, Wang et al. 2020, Score-CAM): the share of the
  map's total mass that lies inside the mask, compared with the object's area fraction (what a
  uniform map would score): ``ratio = mean energy / mean area fraction``.

Targets (from the project's issue): pointing >= 95 % and ratio >= 2 for every method.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camscope.core.runtime import SpeedSettings
from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.io.atomic import atomic_write_text
from camscope.methods.registry import get_method, methods_for
from camscope.metrics import energy_pointing_game, pointing_game
from camscope.names import variant_name, variant_title
from camscope.studies import synthetic as S
from camscope.studies import synthetic_vit as V

__all__ = [
    "POINTING_TARGET",
    "RATIO_TARGET",
    "DEFAULT_SEED",
    "MethodScore",
    "BenchTable",
    "run_synthetic_benchmark",
    "SeedsTable",
    "run_synthetic_seeds",
]

logger = logging.getLogger(__name__)

POINTING_TARGET = 0.95
"""Minimum pointing-game accuracy (tolerance 0 px) for a method to pass."""
RATIO_TARGET = 2.0
"""Minimum energy-in-mask / area-fraction ratio for a method to pass."""
DEFAULT_SEED = 2024
"""Seed of the held-out scenes; the model is trained on scenes of another seed."""


@dataclass
class MethodScore:
    """Scores of one method (or smoothing variant) on the held-out scenes."""

    method: str
    title: str
    pointing: float
    energy: float
    area: float
    ratio: float
    passed: bool
    n: int
    seconds: float
    pointing_per_class: dict[str, float] = field(default_factory=dict)
    energy_ratio_median: float = float("nan")


class _TableOutput:
    """What both benchmark tables write: aligned text, the JSON and markdown files (from their
    ``_cells``, ``caption``, ``to_markdown`` and ``to_dict``)."""

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        raise NotImplementedError

    def caption(self) -> str:
        raise NotImplementedError

    def to_markdown(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_text(self) -> str:
        """A plain aligned table plus a one-line caption."""
        head, body = self._cells()
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        fmt = [str.ljust] + [str.rjust] * (len(head) - 1)
        lines = ["  ".join(f(c, w) for f, c, w in zip(fmt, row, widths, strict=True)) for row in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) + "\n" + self.caption() + "\n"

    def save_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``bench_synthetic.json`` and ``bench_synthetic.md`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "bench_synthetic.json", "markdown": out / "bench_synthetic.md"}
        self.save_json(paths["json"])
        atomic_write_text(paths["markdown"], self.to_markdown())
        return paths


@dataclass
class BenchTable(_TableOutput):
    """Result of :func:`run_synthetic_benchmark`: one :class:`MethodScore` per row."""

    rows: list[MethodScore]
    n_scenes: int
    seed: int
    layer: str
    accuracy: float
    model: str
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def all_passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def failing(self) -> list[str]:
        return [r.method for r in self.rows if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return round(v, 6) if np.isfinite(v) else None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {
            "benchmark": "synthetic scenes with known object masks (camscope.studies.synthetic)",
            "n_scenes": self.n_scenes,
            "seed": self.seed,
            "layer": self.layer,
            "model": self.model,
            "model_accuracy": round(self.accuracy, 6),
            "targets": {"pointing": POINTING_TARGET, "energy_over_area": RATIO_TARGET},
            "pointing_tolerance_px": 0,
            "seconds": round(self.seconds, 3),
            "all_passed": self.all_passed,
            **({"info": self.info} if self.info else {}),
            "methods": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows],
        }

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["method", "pointing game", "energy in mask", "object area", "energy / area", "pass"]
        body = [
            [
                r.method,
                f"{100 * r.pointing:.1f} %",
                f"{r.energy:.3f}",
                f"{r.area:.3f}",
                f"{r.ratio:.2f}x",
                "yes" if r.passed else "NO",
            ]
            for r in self.rows
        ]
        return head, body

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table plus a one-line caption."""
        head, body = self._cells()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 4 + [":---:"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines.append("")
        lines.append(self.caption())
        return "\n".join(lines) + "\n"


    def caption(self) -> str:
        verdict = (
            "every method passes"
            if self.all_passed
            else f"below target: {', '.join(self.failing())}"
        )
        return (
            f"{self.n_scenes} held-out scenes (seed {self.seed}), {self.model} at layer "
            f"{self.layer!r}, classification accuracy {100 * self.accuracy:.1f} %; targets: "
            f"pointing >= {100 * POINTING_TARGET:.0f} % (tolerance 0 px), energy/area >= "
            f"{RATIO_TARGET:g}x; {verdict}."
        )



def score_maps(
    maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-scene pointing hits (bool), energy in mask and area fraction of maps (n,H,W) in [0,1]
    against boolean masks (n,H,W)."""
    m = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    k = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    k = k.astype(bool)
    if m.shape != k.shape or m.ndim != 3:
        raise ValueError(f"maps {m.shape} and masks {k.shape} must both be (n,H,W)")
    hits = np.array([pointing_game(m[i], k[i], tolerance=0) for i in range(len(m))], dtype=bool)
    energy = np.array([energy_pointing_game(np.clip(m[i], 0, None), k[i]) for i in range(len(m))])
    area = k.reshape(len(k), -1).mean(axis=1)
    return hits, energy, area


def run_synthetic_benchmark(
    *,
    n_scenes: int = 200,
    seed: int = DEFAULT_SEED,
    methods: Sequence[str] | None = None,
    smoothing: Sequence[str] | str | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    speed: SpeedSettings | None = None,
    images_per_batch: int = 50,
    model: torch.nn.Module | None = None,
    model_kind: str = "cnn",
    layer: str | None = None,
    train_seed: int = 0,
) -> BenchTable:
    """Pointing game and energy-in-mask of every method on held-out synthetic scenes.

    Args:
        n_scenes: number of held-out scenes (balanced over the 4 shape classes).
        seed: seed of the held-out scenes; must differ from the training seed (0).
        methods: registered names or aliases (default: every registered method).
        smoothing: smoothing variants as for ``camscope explain --smooth`` (``"eigen"``,
            ``"aug"``, ``"eigen,aug"``); each adds a row per method.
        cache_dir: where the trained model is cached (default
            :func:`camscope.studies.synthetic.default_cache_dir`).
        speed: speed settings of the perturbation methods (rows per pass, precision, ...).
        images_per_batch: scenes per engine call.
        model: a trained model to measure instead of the cached default
            (:func:`camscope.studies.synthetic.load_or_train` with other training arguments, e.g.
            ``guidance=0``); it must have the target layer of ``model_kind`` (or ``layer``).
        model_kind: ``"cnn"`` (SmallCNN) or ``"vit"`` (the small ViT of
            :mod:`camscope.studies.synthetic_vit`).
        layer: target layer (default: the model kind's).
        train_seed: seed of the model's training (its scenes and initialisation); trained
            models differ with it, and so do their maps (:func:`run_synthetic_seeds`).

    Returns:
        A :class:`BenchTable`, rows in method order (plain, then each smoothing variant).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 1:
        raise UsageError(f"n_scenes: expected a positive integer, got {n_scenes!r}")
    if images_per_batch < 1:
        raise UsageError(f"images_per_batch must be at least 1, not {images_per_batch}")
    if seed == train_seed:
        raise UsageError(f"seed {seed} is the training seed; held-out scenes need another seed")
    device = torch.device(device)

    if model_kind not in ("cnn", "vit"):
        raise UsageError(f"unknown synthetic model {model_kind!r}; choose cnn or vit")
    model_given = model is not None
    if model_kind == "vit":
        description = f"small ViT v{V.VIT_VERSION} (training seed {train_seed})"
        layer = layer or V.VIT_TARGET_LAYER
        if model is None:
            model = V.load_or_train_vit(cache_dir, device=device, seed=train_seed, progress=progress)
    else:
        description = f"SmallCNN v{S.VERSION} (training seed {train_seed})"
        layer = layer or S.TARGET_LAYER
        if model is None:
            model = S.load_or_train(cache_dir, device=device, seed=train_seed, progress=progress)
    if model_given:
        model = model.to(device)
        description = type(model).__name__ + " (given)"
    # default: every method that can explain the model (no attention method for the CNN)
    names = list(dict.fromkeys(get_method(m).name for m in (methods or methods_for(model))))
    scenes = S.make_scenes(n_scenes, seed=seed)
    accuracy = S.evaluate(model, scenes)
    logger.info("synthetic model: held-out accuracy %.1f %% on %d scenes", 100 * accuracy, n_scenes)
    x = S.normalize(scenes.images)
    labels = [int(v) for v in scenes.labels]

    engine = CamEngine(
        model,
        layer,
        methods=names,
        smoothing=smoothing,
        normalization=(S.SYNTH_MEAN, S.SYNTH_STD),
        speed=speed,
    )
    outputs = engine.names
    maps: dict[str, list[torch.Tensor]] = {o: [] for o in outputs}
    seconds: dict[str, float] = {m: 0.0 for m in names}
    bar = tqdm(total=n_scenes, desc="synthetic scenes", unit="img", disable=not progress)
    try:
        for start in range(0, n_scenes, images_per_batch):
            xb = x[start : start + images_per_batch].to(device)
            tb = [[t] for t in labels[start : start + images_per_batch]]
            res = engine(xb, tb)
            for o in outputs:
                maps[o].append(res.maps[o][:, 0])
            for m in names:
                seconds[m] += res.seconds.get(m, 0.0) + res.seconds["capture"] / len(names)
            bar.update(xb.shape[0])
    finally:
        bar.close()

    rows = []
    label_arr = np.asarray(labels)
    for variant in engine.variants:
        for m in names:
            out = variant_name(m, variant.parts)
            hits, energy, area = score_maps(torch.cat(maps[out]), scenes.masks)
            spec = get_method(m)
            title = variant_title(spec.title, variant.parts)
            ratio = float(energy.mean() / area.mean())
            per_class = {
                S.SHAPES[c]: float(hits[label_arr == c].mean())
                for c in range(len(S.SHAPES))
                if (label_arr == c).any()
            }
            pointing = float(hits.mean())
            rows.append(
                MethodScore(
                    method=out,
                    title=title,
                    pointing=pointing,
                    energy=float(energy.mean()),
                    area=float(area.mean()),
                    ratio=ratio,
                    passed=pointing >= POINTING_TARGET and ratio >= RATIO_TARGET,
                    n=n_scenes,
                    seconds=seconds[m],
                    pointing_per_class=per_class,
                    energy_ratio_median=float(np.median(energy / area)),
                )
            )
            logger.debug("%s: pointing %.3f, energy %.3f, ratio %.2f", out, pointing, rows[-1].energy, ratio)
    return BenchTable(
        rows=rows,
        n_scenes=n_scenes,
        seed=seed,
        layer=engine.layer,
        accuracy=accuracy,
        model=description,
        seconds=time.perf_counter() - t_start,
    )


# ---------------------------------------------------------------------------------------------
# Over training seeds
# ---------------------------------------------------------------------------------------------


@dataclass
class SeedSpread:
    """One method over several trained models: mean, min and max of its scores."""

    method: str
    title: str
    pointing: tuple[float, float, float]
    ratio: tuple[float, float, float]
    passed: int
    n_models: int


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.min()), float(v.max())


@dataclass
class SeedsTable(_TableOutput):
    """:func:`run_synthetic_seeds`: the benchmark of one model trained with several seeds.

    A model trained on another machine differs in its last bits, and training amplifies them;
    the spread over training seeds is the range a user's own run falls in.
    """

    tables: list[BenchTable]
    seeds: list[int]
    command: str = ""

    @property
    def rows(self) -> list[SeedSpread]:
        out = []
        for i, first in enumerate(self.tables[0].rows):
            per_seed = [t.rows[i] for t in self.tables]
            out.append(
                SeedSpread(
                    method=first.method,
                    title=first.title,
                    pointing=_spread([r.pointing for r in per_seed]),
                    ratio=_spread([r.ratio for r in per_seed]),
                    passed=sum(r.passed for r in per_seed),
                    n_models=len(per_seed),
                )
            )
        return out

    @property
    def all_passed(self) -> bool:
        return all(t.all_passed for t in self.tables)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["method", "pointing game: mean (min-max)", "energy / area: mean (min-max)", "models passing"]
        body = [
            [
                r.method,
                f"{100 * r.pointing[0]:.1f} % ({100 * r.pointing[1]:.1f}-{100 * r.pointing[2]:.1f})",
                f"{r.ratio[0]:.2f}x ({r.ratio[1]:.2f}-{r.ratio[2]:.2f})",
                f"{r.passed}/{r.n_models}",
            ]
            for r in self.rows
        ]
        return head, body

    def caption(self) -> str:
        first = self.tables[0]
        acc = _spread([t.accuracy for t in self.tables])
        model = first.model.split(" (training seed")[0]
        text = (
            f"{first.n_scenes} held-out scenes (seed {first.seed}), {model} trained with seeds "
            f"{', '.join(map(str, self.seeds))}, layer {first.layer!r}; classification accuracy "
            f"{100 * acc[1]:.1f}-{100 * acc[2]:.1f} %; targets: pointing >= "
            f"{100 * POINTING_TARGET:.0f} % (tolerance 0 px), energy/area >= {RATIO_TARGET:g}x."
        )
        return text + (f" Command: `{self.command}`." if self.command else "")

    def to_markdown(self) -> str:
        head, body = self._cells()
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|:---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join([*lines, "", self.caption()]) + "\n"


    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "synthetic scenes with known object masks, over training seeds",
            "seeds": self.seeds,
            "command": self.command,
            "methods": [
                {"method": r.method, "title": r.title, "pointing": dict(zip(("mean", "min", "max"), r.pointing, strict=True)),
                 "energy_over_area": dict(zip(("mean", "min", "max"), r.ratio, strict=True)),
                 "models_passing": r.passed, "models": r.n_models}
                for r in self.rows
            ],
            "per_seed": [t.to_dict() for t in self.tables],
        }


def run_synthetic_seeds(seeds: Sequence[int], *, command: str = "", **kw: Any) -> SeedsTable:
    """:func:`run_synthetic_benchmark` for a model trained with each of ``seeds`` (each trained
    once and cached); ``kw`` as for it (not ``model`` or ``train_seed``)."""
    if "model" in kw or "train_seed" in kw:
        raise TypeError("run_synthetic_seeds trains its own models: no model= or train_seed=")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UsageError("--seeds: at least one training seed")
    held_out = kw.get("seed", DEFAULT_SEED)
    if held_out in seeds:
        raise UsageError(f"seed {held_out} of the held-out scenes is also a training seed")
    tables = [run_synthetic_benchmark(train_seed=s, **kw) for s in seeds]
    return SeedsTable(tables, seeds, command)
