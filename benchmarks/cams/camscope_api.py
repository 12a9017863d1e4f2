"""Every camscope name the benchmarks use, in one place.

The benchmarks import camscope only through these functions, which use public or module-level
names; the naive reference implementations come from the repository's ``tests/reference.py``.
Imports are lazy: ``--help`` does not import camscope.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from .common import REPO

#: ``python -m camscope ...``: how the study and the memory section run the CLI.
CLI_MODULE = "camscope"

#: Run in a fresh interpreter: ``sys.argv[1:]`` are camscope CLI arguments (none: imports only);
#: at the end the process writes its own peak RSS (VmHWM, KiB) to $CAMSCOPE_BENCH_PEAK_FILE.
#: Not ru_maxrss from os.wait4: Python starts children with vfork, and Linux then carries the
#: parent's peak RSS (this benchmark's, gigabytes after pytorch-grad-cam) into the child's.
PEAK_WRAPPER = """
import os, sys
if len(sys.argv) > 1:
    from camscope.cli import main
    rc = main(sys.argv[1:])
else:
    import matplotlib.pyplot, torch, torchvision  # noqa
    import camscope.cli, camscope.run, camscope.render.draw  # noqa
    rc = 0
try:
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
except (OSError, StopIteration):
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak // 1024 if sys.platform == "darwin" else peak
gpu = ""
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
    gpu = str(torch.cuda.max_memory_allocated() // 1024)
with open(os.environ["CAMSCOPE_BENCH_PEAK_FILE"], "w") as fh:
    fh.write(f"{peak} {gpu}")
sys.exit(rc)
"""


def _repo_on_path() -> None:
    """Run from a checkout without installing camscope; also makes ``tests`` importable."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _module(name: str) -> Any:
    _repo_on_path()
    return importlib.import_module(name)


def cam_engine(model: Any, layer: str, *, methods: Any, **speed: Any) -> Any:
    """``camscope.CamEngine(model, layer, methods=..., speed=SpeedSettings(**speed))``."""
    camscope = _module("camscope")
    return camscope.CamEngine(model, layer, methods=methods, speed=camscope.SpeedSettings(**speed))


def load_image(path: Any) -> Any:
    return _module("camscope.io.images").load_image(path)


def classic_preprocess() -> Any:
    """camscope's classic preprocessing: 224x224 resize + ImageNet normalisation."""
    return _module("camscope.models").Preprocess("classic")


def _per_device(value: Any, device_type: str) -> Any:
    return value.get(device_type, value["cpu"]) if isinstance(value, dict) else value


def forward_batch(device_type: str) -> int:
    """Score-CAM's fixed images per full forward (``FORWARD_BATCH``; 32 where it has none)."""
    default = getattr(_module("camscope.methods.perturbation"), "FORWARD_BATCH", 32)
    return int(_per_device(default, device_type))


def batch_defaults(device_type: str) -> tuple[Any, Any]:
    """``(TAIL_BATCH, FORWARD_BATCH)`` for the device type; None where camscope has none."""
    perturbation = _module("camscope.methods.perturbation")
    tail = getattr(perturbation, "TAIL_BATCH", None)
    fwd = getattr(perturbation, "FORWARD_BATCH", None)
    return _per_device(tail, device_type), _per_device(fwd, device_type)


def measures_forward_batches() -> bool:
    """Whether camscope times its own images per full forward on CPU (``Runtime.forward_slices``)."""
    return hasattr(_module("camscope.core.runtime").Runtime, "forward_slices")


def copy_used(runtime: Any) -> str:
    """The forward mode a ``Runtime`` ran its last full forward in (``eager``,
    ``channels_last``, ``frozen``, ``compiled``; "?" before any)."""
    return runtime.mode or "?"


def reference_maps() -> tuple[Callable[..., Any], str] | None:
    """camscope's naive reference ``reference_maps`` (``tests/reference.py`` of this checkout)
    and the module's name; None when the checkout has no tests."""
    try:
        module = _module("tests.reference")
    except ImportError:
        return None
    if not str(getattr(module, "__file__", "")).startswith(str(REPO)):
        return None  # some other project's "tests" package
    return module.reference_maps, "tests.reference"
