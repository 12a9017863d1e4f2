"""camscope: class activation maps that are correct, fast and measured.

    import camscope
    model = camscope.load_model("resnet50")        # or any nn.Module
    res = camscope.explain(model, "photos/", methods=["gradcam", "scorecam"])
    res                            # in a notebook: a grid of photos and overlays
    res.maps["gradcam"][0, 0]      # (224, 224) map in [0, 1] for the predicted class
    res.save("runs/x")             # the CLI's run folder; then camscope.report("runs/x")
    camscope.evaluate(res, metrics=["faithfulness", "complexity"])   # registered metrics, in memory

Heavy modules (torch, torchvision, matplotlib) load on first use, not on ``import camscope``.
"""

from __future__ import annotations

from typing import Any

from camscope import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (camscope.pipeline, ...) keep working, with a DeprecationWarning

__all__ = [
    "explain",
    "evaluate",
    "report",
    "CamEngine",
    "CamResult",
    "compute_cams",
    "load_model",
    "LoadedModel",
    "Preprocess",
    "run_explain",
    "ExplainOptions",
    "SpeedSettings",
    "METHODS",
    "method_names",
]

_LAZY = {
    "explain": "camscope.api",
    "report": "camscope.api",
    "evaluate": "camscope.api",
    "CamEngine": "camscope.api",
    "CamResult": "camscope.api",
    "compute_cams": "camscope.api",
    "load_model": "camscope.models",
    "LoadedModel": "camscope.models",
    "Preprocess": "camscope.models",
    "run_explain": "camscope.run",
    "ExplainOptions": "camscope.run",
    "SpeedSettings": "camscope.core.runtime",
    "METHODS": "camscope.methods",
    "method_names": "camscope.methods",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camscope' has no attribute {name!r}")
