"""Argument groups shared by the commands: model, methods, smoothing, speed, output.

Each option is declared here once; commands add the groups they need and turn the parsed values
into library objects (:func:`speed_from_args`, :func:`methods_arg`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from camscope.core.runtime import FREEZE_CHOICES, PRECISIONS, SpeedSettings
from camscope.core.smoothing import SMOOTHINGS
from camscope.models import ModelSpec

if TYPE_CHECKING:
    from camscope.scale import RayOptions

__all__ = [
    "DEFAULT_METHODS",
    "add_model_args",
    "add_methods_arg",
    "add_smooth_arg",
    "add_speed_args",
    "add_quiet_arg",
    "add_task_args",
    "add_ray_args",
    "methods_arg",
    "model_from_args",
    "speed_from_args",
    "ray_from_args",
]

DEFAULT_METHODS = "gradcam,ablationcam,scorecam"


def methods_arg(spec: str) -> list[str]:
    """``--methods``: comma-separated names, or ``all`` for every registered method."""
    from camscope.methods import method_names

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return method_names() if parts == ["all"] else parts


def model_from_args(args: argparse.Namespace) -> ModelSpec:
    """The model the :func:`add_model_args` options name."""
    return ModelSpec(
        name=args.model,
        weights_tag=args.weights_tag,
        weights_file=args.weights_file,
        preprocess=args.preprocess,
        labels=args.labels,
        trust_checkpoint=args.trust_checkpoint,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        trust_remote_code=args.trust_remote_code,
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights-tag``, ``--weights``, ``--trust-checkpoint``, ``--labels``,
    ``--layer``, ``--preprocess`` and ``--device`` (the device the model runs on)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="torchvision classifier (resnet50, vit_b_16, swin_t, ...; `camscope models`), "
                   "timm/NAME (camscope[timm]), hf/ORG/NAME or hf/FOLDER (Hugging Face, camscope[hf]), "
                   "or package.module:callable returning an nn.Module (default: resnet50)")
    g.add_argument(
        "--weights-tag",
        default="IMAGENET1K_V1",
        help="entry of the model's torchvision weights enum (IMAGENET1K_V1, DEFAULT, ...) or 'none' "
        "for random weights (default: IMAGENET1K_V1)",
    )
    g.add_argument("--weights", dest="weights_file", metavar="FILE",
                   help="local state dict: .safetensors, or .pt/.pth loaded with weights_only=True")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling (runs its code!)")
    g.add_argument("--labels", metavar="FILE", help="class names: one per line, or JSON; 'imagenet': the bundled "
                   "ImageNet-1k names and WordNet ids (photos named by WordNet id get their correct column); "
                   "zeroshot (CLIP): the prompts, one per line")
    g.add_argument("--layer", help="target layer as a dotted module path, e.g. layer4.2 (default: per architecture)")
    g.add_argument("--preprocess", choices=("classic", "weights"), default="classic",
                   help="classic: resize to 224x224, map covers the whole photo; weights: the weights' "
                   "resize + centre crop, map covers the crop (default: classic)")
    add_device_arg(g)
    g.add_argument("--reshape", default="auto", metavar="SPEC",
                   help="how the layer's output becomes a (N, C, h, w) map: auto (default: transformer "
                   "tokens and channels-last maps detected), none, nhwc, tokens:HxW[:skip=T]")
    g.add_argument("--input-size", metavar="N|HxW",
                   help="model input size (default: from the model's weights/config, else 224)")
    g.add_argument("--mean", metavar="R,G,B", help="normalisation mean (default: from the model, else ImageNet's)")
    g.add_argument("--std", metavar="R,G,B", help="normalisation std (default: from the model, else ImageNet's)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="Hugging Face models only: allow the model repository's own Python code to run")


def add_task_args(p: argparse.ArgumentParser) -> None:
    """What to explain: ``--task`` (choices from the target registry), ``--class``, ``--top-k``,
    ``--box``, ``--score-threshold``, ``--concept``, ``--contrast``."""
    from camscope.targets import task_names

    g = p.add_argument_group("targets (what each map explains)")
    g.add_argument("--task", choices=task_names(),
                   help="what the model's output is explained as (default: from the model: segment for torchvision "
                   "segmenters, detect for detectors, embed/zeroshot for CLIP with --concept/--labels, else classify)")
    g.add_argument("--class", dest="target_class", metavar="CLASS",
                   help="class to explain, index or name (classify, segment, multilabel, contrast, zeroshot; "
                   "default: the predicted class(es))")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="at most K targets per image: the K best classes, detections or labels (default: 1; "
                   "detect and multilabel: 10)")
    g.add_argument("--box", dest="target_boxes", action="append", default=[], metavar="x0,y0,x1,y1[:label]",
                   help="detect: explain the detection best matching this box (photo pixels; label: class index or "
                   "name) instead of every detection above --score-threshold (repeatable)")
    g.add_argument("--score-threshold", type=float, default=None, metavar="S",
                   help="detect: explain every detection scoring at least S; multilabel: every label whose sigmoid "
                   "is at least S (default: 0.5)")
    g.add_argument("--concept", metavar="TEXT|IMAGE",
                   help="embed: what the image embedding is compared with (cosine): a text prompt (needs a CLIP "
                   "model) or a reference image file")
    g.add_argument("--contrast", metavar="CLASS",
                   help="contrast: explain y_c - y_d, why the class rather than CLASS (index or name)")


def add_device_arg(g: Any, default: str | None = None) -> None:
    shown = default or "cuda when available"
    g.add_argument("--device", default=default, help=f"cpu, cuda, cuda:N (default: {shown})")


def add_methods_arg(g: Any, default: str = DEFAULT_METHODS) -> None:
    """``--methods a,b`` / ``all``, parsed into a list of names."""
    from camscope.methods import method_names

    g.add_argument(
        "--methods",
        type=methods_arg,
        default=methods_arg(default),
        help=f"comma-separated, or 'all' (choices: {', '.join(method_names())}; default: {default})",
    )


def add_smooth_arg(g: Any) -> None:
    """``--smooth SPEC`` (repeatable): smoothed variants next to the plain maps."""
    g.add_argument(
        "--smooth",
        dest="smoothing",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"add a smoothed variant next to the plain maps: {', '.join(SMOOTHINGS)} or a combination "
        "like 'eigen,aug' (repeatable)",
    )


def add_speed_args(g: Any, *, batch_only: bool = False) -> None:
    """The :class:`~camscope.core.runtime.SpeedSettings` options (``--batch-size`` only with
    ``batch_only``)."""
    g.add_argument("--batch-size", type=int, default=None,
                   help="rows per forward pass for Score-/Ablation-CAM (default on CPU: full forwards measured on "
                   "the first batches among 2/4/8/16 (8 with --compile), 256 tails; on CUDA: 128, 1024)")
    if batch_only:
        return
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="precision of the many-forward methods (Score-/Ablation-CAM); default fp32")
    g.add_argument("--compile", action="store_true",
                   help="run Score-CAM's masked forwards through torch.compile (pays seconds to a "
                   "minute once per run, then faster; needs a C++ compiler on CPU; falls back to "
                   "uncompiled with a warning)")
    g.add_argument("--freeze", choices=tuple(FREEZE_CHOICES), default="auto",
                   help="Score-CAM's masked forwards through a TorchScript-frozen copy of the model, "
                   "checked against eager logits (auto: on CPU at fp32, and at bf16 on CPUs with bf16 instructions, "
                   "for torch/torchvision models)")


def speed_from_args(args: argparse.Namespace) -> SpeedSettings:
    """The speed settings the parsed options ask for (defaults for options a command lacks)."""
    return SpeedSettings(
        batch_size=args.batch_size,
        precision=getattr(args, "precision", "fp32"),
        compile=getattr(args, "compile", False),
        freeze=FREEZE_CHOICES[getattr(args, "freeze", "auto")],
    )


def add_quiet_arg(p: Any) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


RAY_ARGS = ("workers", "gpus_per_worker", "cpus_per_worker")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``: run the
    per-image work on a Ray cluster (``pip install "camscope[ray]"``; docs/cluster.md)."""
    g = p.add_argument_group("cluster (Ray; docs/cluster.md)")
    g.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run on Ray: 'auto' joins the cluster this machine belongs to, ray://HOST:PORT or "
        "HOST:PORT a given one; without ADDRESS, a Ray started on this machine for the run (every "
        "core and GPU; listens on 127.0.0.1 only). Needs camscope[ray]; the run folder must be on storage every node mounts",
    )  # fmt: skip
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers, each with its own model (default: as many as the cluster's GPUs, "
                   "or else CPUs, allow at the resources below)")
    g.add_argument("--gpus-per-worker", type=float, default=None, metavar="F",
                   help="GPUs per worker, fractions share a GPU (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-worker", type=int, default=None, metavar="N",
                   help="CPUs per worker, also its torch thread count (default: 1 without GPUs; with GPUs, "
                   "a GPU node's CPUs divided among its workers)")


def ray_from_args(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`~camscope.scale.RayOptions` of ``--ray``, or None for a local run
    (where the other Ray options are refused)."""
    if getattr(args, "ray", None) is None:
        given = [f"--{name.replace('_', '-')}" for name in RAY_ARGS if getattr(args, name, None) is not None]
        if given:
            from camscope.errors import UsageError

            raise UsageError(f"{', '.join(given)} only apply with --ray")
        return None
    from camscope.scale import RayOptions

    return RayOptions(args.ray, args.workers, args.gpus_per_worker, args.cpus_per_worker)
