"""What every section shares: the arguments, the model and its two target layers, the photos,
a weights file for the CLI runs, the temp folder, the cache of measurements and the tables.

The two tools are run through :class:`~cams.pgc.PytorchGradCam` and
:class:`~cams.runner.CamscopeRunner`, which :class:`Bench` combines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import camscope_api as cs
from .common import REPO, Measurement, Table, log, sync
from .pgc import PytorchGradCam
from .runner import CamscopeRunner


@dataclass
class Photo:
    name: str
    path: Path
    tensor: torch.Tensor  # (1,3,224,224), normalised, on the device
    target: int = -1
    prob: float = float("nan")
    live_l4: float = float("nan")  # fraction of layer4[-1] channels not zero everywhere
    live_l3: float = float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "target": self.target, "prob": self.prob,
            "live_layer4": self.live_l4, "live_layer3": self.live_l3,
        }


def list_photos(folder: Path, prog: str = "bench_cams") -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    if not folder.is_dir():
        raise SystemExit(f"{prog}: error: --images {folder}: not a folder")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not photos:
        raise SystemExit(f"{prog}: error: --images {folder}: no photos found")
    return photos


def build_model(
    name: str, *, seed: int, device: str, weights: str | None = None, prog: str = "bench_cams"
) -> tuple[torch.nn.Module, str]:
    """A torchvision ResNet in eval mode on ``device``: random weights after
    ``torch.manual_seed(seed)``, or a state dict file; and how it was made, in words."""
    import torchvision

    if weights:
        model = torchvision.models.get_model(name, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        desc = f"{name}, weights from {weights}"
    else:
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
        desc = (
            f"{name}(weights=None), torch.manual_seed({seed}): random weights "
            "(pretrained weights cannot be downloaded here)"
        )
    for attr in ("layer3", "layer4"):
        if not hasattr(model, attr):
            raise SystemExit(f"{prog}: error: --model {name} has no {attr}; use a ResNet")
    return model.to(device).eval(), desc


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LookupError("module not in model")


class Bench(PytorchGradCam, CamscopeRunner):
    """The state of one benchmark run; sections read it and append their tables to ``tables``
    and their headline numbers (see the targets) to ``summary``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.model, self.model_desc = build_model(args.model, seed=args.seed, device=args.device, weights=args.weights)
        self.layers = {
            "layer4": self.model.layer4[-1],
            "layer3": self.model.layer3[-1],
        }
        self.layer_names = {k: module_name(self.model, m) for k, m in self.layers.items()}
        self.tmp = Path(tempfile.mkdtemp(prefix="camscope-bench-"))
        self.cache: dict[tuple, Measurement] = {}
        self.batch_rows: list[dict[str, Any]] = []
        self.tables: list[Table] = []
        self.summary: dict[str, Any] = {}
        self.photo_paths = list_photos(Path(args.images))
        self.photos: list[Photo] = []
        self._weights_file: Path | None = Path(args.weights) if args.weights else None

    def load_photos(self, n: int) -> None:
        """The first ``n`` photos, preprocessed once, with the predicted class and the fraction
        of live channels at both layers."""
        pre = cs.classic_preprocess()
        paths = self.photo_paths[:n]
        if len(paths) < n:
            log(f"only {len(paths)} photos in {self.args.images}; using them all")
        acts: dict[str, torch.Tensor] = {}
        hooks = [
            self.layers[k].register_forward_hook(lambda _m, _i, o, k=k: acts.__setitem__(k, o.detach()))
            for k in ("layer4", "layer3")
        ]
        try:
            for p in paths:
                x = pre.to_tensor(cs.load_image(p))[None].to(self.device)
                with torch.no_grad():
                    logits = self.model(x)
                prob, cls = torch.softmax(logits, 1).max(1)
                live = {k: float((a[0].flatten(1) != 0).any(1).float().mean()) for k, a in acts.items()}
                self.photos.append(Photo(p.stem, p, x, int(cls), float(prob), live["layer4"], live["layer3"]))
        finally:
            for h in hooks:
                h.remove()

    def warmup(self) -> None:
        """A few untimed forwards so that thread pools and oneDNN primitives exist."""
        x = self.photos[0].tensor
        with torch.no_grad():
            for _ in range(2):
                self.model(x)
            self.model(x.expand(8, -1, -1, -1).contiguous())
        sync(self.device)

    def weights_file(self) -> Path:
        """The model's state dict as a file, for the CLI runs (study, memory)."""
        if self._weights_file is None:
            path = self.tmp / f"{self.args.model}-seed{self.args.seed}.pt"
            torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, path)
            self._weights_file = path
        return self._weights_file

    def slow_photos(self) -> list[Photo]:
        return self.photos[: self.args.slow_images]

    def budget(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~cams.common.measure` from the command line."""
        return {"repeats": self.args.repeats, "budget_s": self.args.time_budget, "device": self.device}

    def cli_command(self, *cli_args: str) -> list[str]:
        """``python -m camscope <cli_args>`` with this interpreter."""
        return [sys.executable, "-m", cs.CLI_MODULE, *cli_args]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
            env["MKL_NUM_THREADS"] = str(self.args.threads)
        return env

    def report_tables(self) -> None:
        """Print the tables not printed yet (each section's, as soon as it is done)."""
        self.flush_batch_table()
        for t in self.tables:
            if not t.printed:
                print(t.text() + "\n", flush=True)
                t.printed = True


def run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run a command in the repository root; return its exit code."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        raise
