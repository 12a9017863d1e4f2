"""The run folder of ``camscope explain``: every file name, record and format, in one place.

    DIR/
      <variant>/<stem>.png, <variant>/<stem>.npy    overlay and float32 map per method variant
      figures/<stem>.png                            comparison figure
      regions/<stem>.png                            a segment target's region mask (task runs)
      manifest.json                                 settings, versions, per-image records
      predictions.csv, failures.csv                 derived from the manifest
      metrics/<rel>.json, report.html, metrics.csv, summary.json, report_assets/   (report)

A *variant* is a method under a smoothing (``gradcam``, ``gradcam+eigen+aug``); a *stem* is an
image's output name (its relative path without the extension, plus ``.topN`` for the N-th
explained class when several are; in a run of another task than ``classify``,
``__<target>_<NN>`` for each target: ``photo__dog_03``). Writers and readers go through :class:`RunDir` and the typed
records below; nothing else builds these names or reads these keys. The manifest carries a
format version: a newer one is refused with a clear message; older files without one load as
version 1. This module imports neither torch nor matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from camscope.errors import UsageError
from camscope.io.atomic import atomic_write_bytes, atomic_write_text, cleanup_temp_files
from camscope.names import (  # the names the run folder records (re-exported)
    PYTHON_MODEL,
    RANDOM_WEIGHTS,
    is_random_weights,
    parse_variant,
    smoothing_label,
    smoothing_parts,
    variant_name,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "PREDICTIONS",
    "FAILURES",
    "FIGURES",
    "METRICS_DIR",
    "REPORT",
    "METRICS_CSV",
    "SUMMARY_JSON",
    "ASSETS",
    "RANDOM_WEIGHTS",
    "PYTHON_MODEL",
    "is_random_weights",
    "BUILTIN_OUTPUT_KINDS",
    "OUTPUT_KINDS",
    "variant_name",
    "parse_variant",
    "smoothing_label",
    "smoothing_parts",
    "output_stems",
    "target_stem",
    "target_slug",
    "region_file",
    "REGIONS",
    "CLASSIFY",
    "ExplainedTarget",
    "ClassScore",
    "ImageRecord",
    "Failure",
    "RunSettings",
    "Manifest",
    "RunDir",
]

FORMAT_VERSION = 1
"""Version of ``manifest.json`` written by this camscope (key ``manifest_version``)."""

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.csv"
FAILURES = "failures.csv"
FIGURES = "figures"
METRICS_DIR = "metrics"
REPORT = "report.html"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
ASSETS = "report_assets"
REGIONS = "regions"
CLASSIFY = "classify"
"""The task of a classifier run (the default; older manifests, which record none, are one)."""
COMPLETE = "complete"

BUILTIN_OUTPUT_KINDS: tuple[str, ...] = ("maps", "overlays", "figures")
"""The built-in output kinds: ``.npy`` maps and overlay PNGs (``<variant>/<stem>``, listed in a
record's ``files``) and comparison figures (``figures/<stem>.png``, in ``figures``). Kinds
registered in :mod:`camscope.run.outputs` besides these are listed per kind in ``outputs``."""
OUTPUT_KINDS = BUILTIN_OUTPUT_KINDS
"""Former name of :data:`BUILTIN_OUTPUT_KINDS`."""

_WRITE_PROBE = ".camscope-write-test"


def output_stems(rels: Sequence[str]) -> dict[str, str]:
    """Output base name of each input: its relative path without the extension
    (``sub/cat.jpg`` -> ``sub/cat``), or with it where two inputs would otherwise collide."""

    def strip(rel: str) -> str:
        head, _, name = rel.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        return f"{head}/{stem}" if head else stem

    counts: dict[str, int] = {}
    for rel in rels:
        key = strip(rel).casefold()
        counts[key] = counts.get(key, 0) + 1
    return {rel: strip(rel) if counts[strip(rel).casefold()] == 1 else rel for rel in rels}


def target_stem(base: str, rank: int, k: int, name: str | None = None) -> str:
    """Stem of the ``rank``-th (0-based) of ``k`` explained targets of an image.

    A classifier run (``name`` None) keeps its historical names: ``base`` for one class,
    ``base.topN`` for several. A run of another task names each target after what it is, so a
    folder listing reads: ``base__dog_03`` (the third target of the image, a dog detection),
    ``base__person_01`` (a segment), ``base__a-dog_01`` (an embedding concept)."""
    if name is None:
        return base if k == 1 else f"{base}.top{rank + 1}"
    return f"{base}__{target_slug(name)}_{rank + 1:02d}"


def target_slug(name: str, limit: int = 40) -> str:
    """A target's name as part of a file name: lower case, runs of anything but letters, digits
    and ``.`` as one ``-`` (``"traffic light"`` -> ``traffic-light``), at most ``limit`` characters."""
    out, dash = [], False
    for ch in name.strip().lower():
        if ch.isalnum() and ch.isascii() or ch == ".":
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    slug = "".join(out).strip("-.")[:limit].rstrip("-.")
    return slug or "target"


def region_file(stem: str) -> str:
    """Relative path of a target's region mask (a segment target's mask, PNG, map frame)."""
    return f"{REGIONS}/{stem}.png"


def map_file(variant: str, stem: str) -> str:
    """Relative path of a variant's float32 map."""
    return f"{variant}/{stem}.npy"


def overlay_file(variant: str, stem: str) -> str:
    """Relative path of a variant's overlay."""
    return f"{variant}/{stem}.png"


def figure_file(stem: str) -> str:
    """Relative path of a comparison figure."""
    return f"{FIGURES}/{stem}.png"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScore:
    """A class with its name and probability (a top-5 entry or an explained class)."""

    index: int
    name: str
    prob: float

    def to_json(self) -> dict[str, Any]:
        return {"class": self.index, "name": self.name, "prob": self.prob}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassScore:
        return cls(int(d["class"]), str(d.get("name", "")), float(d.get("prob", float("nan"))))


@dataclass(frozen=True)
class ExplainedTarget:
    """One explained target of an image, as the manifest records it (runs of a task other than
    ``classify``): its kind, readable name, class (-1 without one), score on the photo, what
    :meth:`camscope.targets.Target.describe` says of it (box in the map's frame, region,
    concept...), the box in the photo's pixels, its region mask file and the stem of its files."""

    kind: str
    name: str
    index: int
    score: float
    stem: str
    details: dict[str, Any] = field(default_factory=dict)
    box_photo: tuple[float, float, float, float] | None = None
    mask: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The target's box in the map's (model input's) frame, when it has one."""
        b = self.details.get("box")
        return None if b is None else (float(b[0]), float(b[1]), float(b[2]), float(b[3]))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "class": self.index, "score": self.score, "stem": self.stem}
        d.update({k: v for k, v in self.details.items() if k not in d})
        if self.box_photo is not None:
            d["box_photo"] = list(self.box_photo)
        if self.mask is not None:
            d["mask"] = self.mask
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExplainedTarget:
        known = {"kind", "name", "class", "score", "stem", "box_photo", "mask"}
        bp = d.get("box_photo")
        return cls(
            kind=str(d.get("kind", "")), name=str(d.get("name", "")), index=int(d.get("class", -1)),
            score=float(d.get("score", float("nan"))), stem=str(d.get("stem", "")),
            details={k: v for k, v in d.items() if k not in known},
            box_photo=None if bp is None else (float(bp[0]), float(bp[1]), float(bp[2]), float(bp[3])),
            mask=d.get("mask"),
        )


@dataclass
class ImageRecord:
    """What the manifest says of one finished image."""

    source: str
    size: tuple[int, int] | None
    top5: list[ClassScore]
    targets: list[ClassScore]
    true_class: int | None = None
    true_name: str | None = None
    correct: bool | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    status: str = COMPLETE
    outputs: dict[str, list[str]] = field(default_factory=dict)
    """Files of the registered output kinds other than the built-in ones, per kind."""
    explained: list[ExplainedTarget] | None = None
    """Each explained target (runs of a task other than ``classify``; None for classifiers,
    whose ``targets`` say it all). Empty for a photo explained with no target (a detector
    that found nothing above the threshold)."""

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def predicted(self) -> ClassScore | None:
        return self.top5[0] if self.top5 else None

    def file(self, variant: str, rank: int, suffix: str) -> str | None:
        """Relative path of a variant's ``suffix`` file (``.npy`` or ``.png``) for the
        ``rank``-th explained class, as listed in the record."""
        listed = [f for f in self.files.get(variant, []) if f.endswith(suffix)]
        return listed[rank] if rank < len(listed) else None

    def paths(self) -> list[str]:
        """Every file the image wrote, relative to the run folder."""
        masks = [t.mask for t in self.explained or () if t.mask]
        return ([f for v in self.files.values() for f in v] + list(self.figures)
                + [f for v in self.outputs.values() for f in v] + masks)

    def kinds(self, wanted: Iterable[str] = ()) -> set[str]:
        """The output kinds this image wrote: of ``files``, ``.npy`` are maps and ``.png``
        overlays (the only two kinds listed there); ``figures``; every kind in ``outputs``. An
        image explained with no target wrote nothing and counts as having written ``wanted``."""
        if self.explained is not None and not self.explained and not self.targets:
            return set(wanted)
        listed = [f for v in self.files.values() for f in v]
        found = {"maps"} if any(f.endswith(".npy") for f in listed) else set()
        if any(f.endswith(".png") for f in listed):
            found.add("overlays")
        if self.figures:
            found.add("figures")
        return found | {kind for kind, files in self.outputs.items() if files}

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "size": None if self.size is None else list(self.size),
            "top5": [t.to_json() for t in self.top5],
            "targets": [t.to_json() for t in self.targets],
            "true_class": self.true_class,
            "true_name": self.true_name,
            "correct": self.correct,
            "files": self.files,
            "figure": self.figures[0] if self.figures else None,
            "figures": self.figures,
            **({"outputs": self.outputs} if self.outputs else {}),
            **({"explained": [t.to_json() for t in self.explained]} if self.explained is not None else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        size = d.get("size")
        figures = d.get("figures")
        if figures is None:
            figures = [d["figure"]] if d.get("figure") else []
        return cls(
            source=str(d.get("source", "")),
            size=None if not size else (int(size[0]), int(size[1])),
            top5=[ClassScore.from_json(t) for t in d.get("top5") or []],
            targets=[ClassScore.from_json(t) for t in d.get("targets") or []],
            true_class=d.get("true_class"),
            true_name=d.get("true_name"),
            correct=d.get("correct"),
            files={str(k): list(v) for k, v in (d.get("files") or {}).items()},
            figures=list(figures),
            status=str(d.get("status", "")),
            outputs={str(k): list(v) for k, v in (d.get("outputs") or {}).items()},
            explained=None if d.get("explained") is None else [ExplainedTarget.from_json(t) for t in d["explained"]],
        )


@dataclass(frozen=True)
class Failure:
    """An input that could not be explained, and why (one line)."""

    source: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Failure:
        return cls(str(d.get("source", "")), str(d.get("reason", "")))


@dataclass(frozen=True)
class RunSettings:
    """The settings that determine a run's outputs; a resumed run must match them."""

    model: str
    weights: str
    layer: str
    methods: tuple[str, ...]
    smoothing: tuple[str, ...]
    """Smoothed variants as labels (``"eigen"``, ``"eigen+aug"``); the plain one is implied."""
    preprocess: dict[str, Any]
    target_class: str | None = None
    top_k: int = 1
    precision: str = "fp32"
    colormap: str = "jet"
    alpha: float = 0.5
    reshape: str | None = None
    """How the layer's output became a map (``tokens:14x14:skip=1``, ``nhwc``); None (and left
    out of the file) when it already was one."""
    task: str | None = None
    """The task (``segment``, ``detect``, ``embed``...); None (and left out of the file) for
    ``classify``, so classifier runs keep their settings and resume."""
    task_options: dict[str, Any] | None = None
    """What chose the targets besides ``target_class`` and ``top_k`` (``boxes``,
    ``score_threshold``, ``concept``, ``contrast``, ``prompts``); None (left out) when nothing."""

    @property
    def random_weights(self) -> bool:
        """Whether the model had no trained weights (its maps say nothing about a trained model)."""
        return is_random_weights(self.weights)

    @property
    def task_name(self) -> str:
        """The run's task (``classify`` when none is recorded)."""
        return self.task or CLASSIFY

    @property
    def variants(self) -> list[tuple[str, ...]]:
        """Smoothing variants, plain first."""
        return [(), *(smoothing_parts(s) for s in self.smoothing)]

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["methods"], d["smoothing"] = list(self.methods), list(self.smoothing)
        for key in ("reshape", "task", "task_options"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSettings:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["methods"] = tuple(kw.get("methods") or ())
        kw["smoothing"] = tuple(kw.get("smoothing") or ())
        kw.setdefault("weights", "")
        kw.setdefault("layer", "")
        kw.setdefault("preprocess", {})
        return cls(**kw)

    def differences(self, other: RunSettings) -> list[str]:
        """Names of the settings that differ from ``other``'s."""
        mine, theirs = self.to_json(), other.to_json()
        return sorted(k for k in {**mine, **theirs} if mine.get(k) != theirs.get(k))


@dataclass
class Manifest:
    """``manifest.json``: how the run was made and what each image produced."""

    settings: RunSettings
    versions: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    methods: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per method: ``title``, ``paper``, ``equation``."""
    outputs: list[str] = field(default_factory=list)
    """Every variant name, plain variants first."""
    images: dict[str, ImageRecord] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    seconds: float | None = None
    version: int = FORMAT_VERSION
    output_kinds: tuple[str, ...] | None = None
    """What the last run wrote per image (:data:`OUTPUT_KINDS`; None in older manifests)."""
    cluster: dict[str, Any] | None = None
    """How a distributed (``--ray``) run ran: Ray version, address, workers, resources per
    worker. None for a local run."""

    def complete(self) -> dict[str, ImageRecord]:
        """The finished images, sorted by relative name."""
        return {rel: rec for rel, rec in sorted(self.images.items()) if rec.complete}

    def title(self, method: str) -> str:
        return (self.methods.get(method) or {}).get("title") or method

    def label(self, variant: str) -> str:
        """Human label of a variant: ``Grad-CAM +eigen+aug``."""
        method, smoothing = parse_variant(variant)
        return f"{self.title(method)} +{smoothing_label(smoothing)}" if smoothing else self.title(method)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "manifest_version": self.version,
            "versions": self.versions,
            "settings": self.settings.to_json(),
            "device": self.device,
            "methods": self.methods,
            "outputs": self.outputs,
        }
        if self.output_kinds is not None:
            d["output_kinds"] = list(self.output_kinds)
        d["images"] = {rel: rec.to_json() for rel, rec in self.images.items()}
        d["failures"] = {rel: f.to_json() for rel, f in self.failures.items()}
        if self.seconds is not None:
            d["seconds"] = self.seconds
        if self.cluster is not None:
            d["cluster"] = self.cluster
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = MANIFEST) -> Manifest:
        if not isinstance(d, dict) or not isinstance(d.get("settings"), dict) or not isinstance(d.get("images"), dict):
            raise UsageError(f"{where}: not a camscope manifest (no settings/images)")
        version = d.get("manifest_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UsageError(
                f"{where}: manifest format {version!r} is newer than this camscope reads "
                f"(up to {FORMAT_VERSION}); upgrade camscope to read this run"
            )
        try:
            return cls(
                settings=RunSettings.from_json(d["settings"]),
                versions=dict(d.get("versions") or {}),
                device=str(d.get("device", "cpu")),
                methods=dict(d.get("methods") or {}),
                outputs=list(d.get("outputs") or []),
                images={str(rel): ImageRecord.from_json(rec) for rel, rec in d["images"].items()},
                failures={str(rel): Failure.from_json(f) for rel, f in (d.get("failures") or {}).items()},
                seconds=d.get("seconds"),
                version=version,
                output_kinds=None if d.get("output_kinds") is None else tuple(map(str, d["output_kinds"])),
                cluster=None if d.get("cluster") is None else dict(d["cluster"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UsageError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# predictions.csv / failures.csv
# --------------------------------------------------------------------------------------------

PREDICTION_COLUMNS: tuple[str, ...] = (
    "file",
    "source",
    *(f"top{i}_{part}" for i in range(1, 6) for part in ("class", "name", "prob")),
    "target_class",
    "target_name",
    "target_prob",
    "true_class",
    "true_name",
    "correct",
)


def prediction_row(rel: str, rec: ImageRecord) -> list[Any]:
    """The ``predictions.csv`` row of a finished image (first explained class)."""
    row: list[Any] = [rel, rec.source]
    for i in range(5):
        t = rec.top5[i] if i < len(rec.top5) else None
        row += ["", "", ""] if t is None else [t.index, t.name, t.prob]
    tg = rec.targets[0]
    correct = "" if rec.correct is None else ("yes" if rec.correct else "no")
    row += [tg.index, tg.name, tg.prob, _blank(rec.true_class), _blank(rec.true_name), correct]
    return row


TASK_PREDICTION_COLUMNS: tuple[str, ...] = (
    "file", "source", "rank", "kind", "class", "name", "score", "prob",
    "box_x0", "box_y0", "box_x1", "box_y1", "mask", "concept", "stem",
)
"""``predictions.csv`` of a run of another task than ``classify``: one row per explained target
(``score``: what the maps explain; ``prob``: the class's softmax probability, a detection's
confidence, a label's sigmoid, a segment's mean softmax over its region, empty for similarities;
box in the photo's pixels); a photo explained
with no target has one row with no rank."""


_PROBABILITY_KINDS = ("logit", "probability", "contrast", "multilabel", "detection", "segment")
"""Target kinds whose recorded ``prob`` is a probability (softmax, sigmoid, a detection's
confidence, a segment's mean softmax over its region); the others (a cosine, a user's own score)
leave the column empty."""


def task_prediction_rows(rel: str, rec: ImageRecord) -> list[list[Any]]:
    """The ``predictions.csv`` rows of a finished image of a task run: one per target."""
    if not rec.explained:
        return [[rel, rec.source, "", "none", "", "(no target)", "", "", "", "", "", "", "", "", ""]]
    rows = []
    for rank, t in enumerate(rec.explained):
        box = list(t.box_photo) if t.box_photo is not None else ["", "", "", ""]
        concept = t.details.get("concept", "")
        prob = rec.targets[rank].prob if rank < len(rec.targets) and t.kind in _PROBABILITY_KINDS else ""
        rows.append([rel, rec.source, rank + 1, t.kind, t.index if t.index >= 0 else "", t.name, t.score, prob,
                     *box, t.mask or "", concept, t.stem])
    return rows


def _blank(v: Any) -> Any:
    return "" if v is None else v


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


class RunDir:
    """A run folder: reads and writes its manifest, tables, maps and images.

    Every file is written through a temporary name and a rename (:mod:`camscope.io.atomic`),
    so a reader or a resumed run never sees a half-written file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def path(self, rel: str) -> Path:
        return self.root / rel

    # ---- creation -----------------------------------------------------------------------

    def check_writable(self, what: str = "--out") -> None:
        """Check, without creating anything, that the folder is writable or can be created."""
        path = Path(os.path.abspath(self.root))
        if os.path.lexists(path) and not path.is_dir():
            kind = "a broken symbolic link" if path.is_symlink() and not path.exists() else "not a directory"
            raise UsageError(f"{what} {self.root}: output path exists and is {kind}")
        existing = path
        while not os.path.lexists(existing) and existing.parent != existing:
            existing = existing.parent  # nearest existing ancestor: where mkdir would start
        if not existing.is_dir():
            raise UsageError(f"{what} {self.root}: cannot create the output directory: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {self.root}: output directory is not writable (permission denied on {existing})")

    def create(self, what: str = "--out") -> None:
        """Create the folder, prove it writable with a probe file, and remove temporary files
        an interrupted run left behind."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / _WRITE_PROBE
            atomic_write_bytes(probe, b"")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"{what} {self.root}: output directory is not writable ({exc.strerror or exc})") from None
        removed = cleanup_temp_files(self.root)
        if removed:
            import logging

            logging.getLogger(__name__).info("removed %d temporary files left by an interrupted run", removed)

    # ---- manifest -----------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self, hint: str = "") -> Manifest | None:
        """The manifest, or None when the folder holds none; a one-line error (ending with
        ``hint``) when it is unreadable, malformed or of a newer format."""
        path = self.manifest_path
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Manifest.from_json(data, str(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: unreadable manifest ({exc}){'; ' + hint if hint else ''}") from None
        except UsageError as exc:
            raise UsageError(f"{exc}; {hint}" if hint else str(exc)) from None

    def load(self) -> Manifest:
        """The manifest of a finished (or partial) run; a one-line error when there is none."""
        manifest = self.read_manifest()
        if manifest is None:
            raise UsageError(f"{self.root}: no {MANIFEST}; is this the --out folder of `camscope explain`?")
        return manifest

    def write_manifest(self, manifest: Manifest) -> None:
        """Rewrite ``manifest.json``, ``predictions.csv`` and (when there are failures, or were)
        ``failures.csv`` from the manifest."""
        atomic_write_text(self.manifest_path, json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n")
        if manifest.settings.task is None:
            rows = (prediction_row(rel, rec) for rel, rec in sorted(manifest.images.items()))
            atomic_write_text(self.root / PREDICTIONS, _csv(PREDICTION_COLUMNS, rows))
        else:
            rows = (r for rel, rec in sorted(manifest.images.items()) for r in task_prediction_rows(rel, rec))
            atomic_write_text(self.root / PREDICTIONS, _csv(TASK_PREDICTION_COLUMNS, rows))
        if manifest.failures or (self.root / FAILURES).exists():
            failed = ([rel, f.source, f.reason] for rel, f in sorted(manifest.failures.items()))
            atomic_write_text(self.root / FAILURES, _csv(("file", "source", "reason"), failed))

    def is_complete(self, rec: ImageRecord | None, kinds: Iterable[str] = ()) -> bool:
        """Whether an image's record says complete, wrote each of ``kinds`` (see
        :data:`OUTPUT_KINDS`) and every file it lists exists."""
        if rec is None or not rec.complete or not set(kinds) <= rec.kinds(kinds):
            return False
        return all(self.path(p).exists() for p in rec.paths())

    # ---- files --------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        atomic_write_bytes(self.path(rel), data)

    def write_png(self, rel: str, data: bytes) -> None:
        self.write_bytes(rel, data)

    def write_map(self, rel: str, arr: Any) -> None:
        """A map as float32 ``.npy``."""
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(arr, dtype=np.float32))
        self.write_bytes(rel, buf.getvalue())

    def read_map(self, rel: str) -> Any:
        """A saved map (no pickles)."""
        import numpy as np

        return np.load(self.path(rel), allow_pickle=False)

    def metrics_file(self, rel: str) -> Path:
        """The report's cached measurements of one image."""
        return self.root / METRICS_DIR / f"{rel}.json"
