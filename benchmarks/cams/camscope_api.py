"""Every camscope name the benchmarks use, in one place.

camscope's internals move (``Runtime`` from ``camscope.core.capture`` to
``camscope.core.runtime``; the naive reference implementations from ``camscope.methods.reference``
to ``tests/reference.py``), so the benchmarks import camscope only through these functions, which
use public or module-level names and find what moved wherever it is. Imports are lazy:
``--help`` does not import camscope.
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
    import camscope.cli, camscope.pipeline, camscope.render  # noqa
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


def cam_engine(*args: Any, **kwargs: Any) -> Any:
    """``camscope.CamEngine(model, layer, methods=..., ...)``."""
    return _module("camscope").CamEngine(*args, **kwargs)


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


def runtime_class() -> Any:
    """``Runtime``: in ``camscope.core.runtime``, or where it was, ``camscope.core.capture``."""
    for name in ("camscope.core.runtime", "camscope.core.capture"):
        try:
            runtime = getattr(_module(name), "Runtime", None)
        except ImportError:
            continue
        if runtime is not None:
            return runtime
    raise ImportError("camscope has no Runtime in camscope.core.runtime or camscope.core.capture")


def measures_forward_batches() -> bool:
    """Whether camscope times its own images per full forward on CPU (``Runtime.forward_slices``)."""
    return hasattr(runtime_class(), "forward_slices")


def copy_used(runtime: Any) -> str:
    """Which copy of the model a ``Runtime`` runs full forwards through (frozen, compiled,
    plain). camscope has no public name for it; "?" where the attribute is gone."""
    mode = getattr(runtime, "_fast_mode", None)  # the one private read (batch_sweep's column)
    if mode is None:
        return "?"
    return mode if getattr(runtime, "_fast", None) is not None else "model"


def reference_maps() -> tuple[Callable[..., Any], str] | None:
    """camscope's naive reference ``reference_maps`` and the module it came from:
    ``tests/reference.py`` (where the parallel refactor moves it), else
    ``camscope.methods.reference`` (where it was); None when neither has it."""
    for name in ("tests.reference", "camscope.methods.reference"):
        try:
            module = _module(name)
        except ImportError:
            continue
        if name.startswith("tests.") and not str(getattr(module, "__file__", "")).startswith(str(REPO)):
            continue  # some other project's "tests" package
        fn = getattr(module, "reference_maps", None)
        if fn is not None:
            return fn, name
    return None
