"""How methods run the network again: the tail from the target layer, or the full model.

``SpeedSettings`` is the one declaration of the speed options (rows per pass, precision, the
private copy of the model); the CLI, the API, the engine and the ``Runtime`` all take it.

Full forwards (Score-CAM's masked images) run through one of four *forward modes*, each a small
object with the same interface (``mode(x) -> logits``):

* ``eager``: the user's model itself;
* ``channels_last``: a channels-last copy of the model, made afresh for every engine call
  (default on CPU);
* ``frozen`` (``freeze``; default on CPU at fp32, and at bf16 on CPUs with bf16 instructions,
  for models of any source without hooks: torchvision, timm, Hugging Face, import paths):
  a copy traced (under autocast at bf16), frozen and optimised for inference by TorchScript
  (batch norm folded into the convolutions, weights prepacked for oneDNN; ReLU and residual
  adds stay separate ops): 1.07-1.26x faster per ResNet-50 forward than eager at fp32 in
  ``benchmarks/batch_sweep.py --forward-only`` on an AVX2 CPU, 1.07-1.23x at fp32 and
  1.23-1.30x at bf16 on an AVX-512 one. Its first batch also runs eagerly and the frozen copy
  is used only if the logits agree (relative error below 1e-4; 3e-2 at bf16), and the first
  batch of every later engine call is checked again (a trace holds one control-flow path);
* ``compiled`` (``compile=True``): ``torch.compile`` (inductor, freezing), at one batch size.

A frozen or compiled copy costs seconds to build, so it is kept between engine calls and
rebuilt when the model changed (:func:`model_state_key`); when building it fails, a warning is
logged and the next mode down is used. The user's model is never converted.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camscope.core import batching
from camscope.errors import UsageError, first_line

__all__ = [
    "PRECISIONS",
    "SpeedSettings",
    "Runtime",
    "ForwardMode",
    "EagerForward",
    "ChannelsLastForward",
    "FrozenForward",
    "CompiledForward",
    "model_state_key",
    "cpu_has_native",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
FREEZE_CHOICES = {"auto": None, "on": True, "off": False}


@dataclass(frozen=True)
class SpeedSettings:
    """Speed options of the many-forward methods (Score-/Ablation-CAM); they change the time,
    not the maps beyond rounding.

    Attributes:
        batch_size: rows per pass of Score-/Ablation-CAM (default: per device, and on CPU
            Score-CAM's full forwards measure 2/4/8/16 rows on their first batches).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast) for those passes.
        compile: Score-CAM's full forwards through ``torch.compile``.
        freeze: through a TorchScript-frozen copy (None: automatic, see the module docstring).
        channels_last: through a channels-last copy (None: on CPU).
    """

    batch_size: int | None = None
    precision: str = "fp32"
    compile: bool = False
    freeze: bool | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose from: {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {self.batch_size}")


# --------------------------------------------------------------------------------------------
# Forward modes
# --------------------------------------------------------------------------------------------


class ForwardMode:
    """A way of running full forwards. ``mode(x)`` runs under the Runtime's inference mode and
    autocast and returns logits; ``failed`` is set when the mode gave up (its output for that
    batch is still right) and the Runtime should use the next mode down."""

    name: ClassVar[str] = "eager"
    kept: ClassVar[bool] = False
    """Kept between engine calls while the model is unchanged (else made per call)."""

    def __init__(self, model: nn.Module) -> None:
        self.module = model
        self.failed = False

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)


class EagerForward(ForwardMode):
    """The user's model itself."""


class ChannelsLastForward(ForwardMode):
    """A channels-last copy of the model, fed channels-last inputs."""

    name = "channels_last"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(copy.deepcopy(model).to(memory_format=torch.channels_last))

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))


class _FirstBatchForward(ForwardMode):
    """A copy built on its first batch, then run at that batch size or any (see subclasses)."""

    kept = True

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        super().__init__(copy.deepcopy(model).to(memory_format=fmt))
        self.model = model
        self.batch: int | None = None
        """Batch size of the first batch (the traced / compiled one)."""

    def _fixed(self, x: Tensor) -> Tensor:
        """Forwards at the first batch's size: a longer batch is split, a shorter one padded."""
        b = self.batch
        assert b is not None
        if x.shape[0] == b:
            return self.module(x)
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start : start + b]
            m = chunk.shape[0]
            if m < b:
                pad = chunk.new_zeros(b - m, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad]).contiguous(memory_format=_format_of(x))
            outs.append(self.module(chunk)[:m])
        return torch.cat(outs)


class FrozenForward(_FirstBatchForward):
    """TorchScript-traced, frozen and optimised copy, checked against eager logits on its
    first batch. The frozen graph takes any batch size; the first batch of a new size is
    checked against the model once, as a trace may have kept the first batch's size, and if it
    did, batches are padded or split to that size (``any_batch`` is then False)."""

    name = "frozen"

    def __init__(self, model: nn.Module, precision: str, channels_last: bool) -> None:
        # At fp32 TorchScript hands convolutions to oneDNN in its own layout (the input format
        # made no difference); at bf16/fp16 they stay aten ones, which prefer channels-last.
        self.cl_input = channels_last and precision != "fp32"
        super().__init__(model, self.cl_input)
        self.tolerance = 1e-4 if precision == "fp32" else 3e-2
        """Relative error allowed against eager logits: rounding only at fp32; at bf16 the two
        round differently (3.5e-3 on ResNet-50), while a wrong trace is off by order 1."""
        self.any_batch: bool | None = None
        self.verify = False
        """Check the next batch against the model (set by the Runtime at each engine call's
        first full forward: a trace holds one control-flow path, so every call checks one batch)."""

    def __call__(self, x: Tensor) -> Tensor:
        if self.cl_input:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.batch is None:
            self.verify = False
            return self._build(x)
        if self.verify:
            self.verify = False
            return self._verify(x)
        if self.any_batch is False:
            return self._fixed(x)
        if self.any_batch or x.shape[0] == self.batch:
            return self.module(x)
        return self._check_any_batch(x)

    def _build(self, x: Tensor) -> Tensor:
        ref = self.module(x)
        if not isinstance(ref, Tensor):  # dicts, detections: TorchScript's trace needs a tensor
            logger.debug("not freezing the model: its output is a %s, not a tensor", type(ref).__name__)
            self.failed = True
            return ref
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
                traced = torch.jit.trace(self.module, x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                out = frozen(x)
            if not isinstance(out, Tensor) or out.shape != ref.shape:
                raise TypeError("the traced model returns something else than the model")
            err = _relative_error(out, ref)
            if not err <= self.tolerance:
                raise ValueError(f"frozen logits differ from eager ones (relative error {err:.1e})")
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any tracing failure: run eagerly instead
            _warn_fallback("freezing the model", e, "running it eagerly")
            self.failed = True
            return ref
        logger.info("model frozen for full forwards (TorchScript, batch %d) in %.1f s", x.shape[0], time.perf_counter() - t0)
        self.module, self.batch = frozen, x.shape[0]
        return ref

    def _verify(self, x: Tensor) -> Tensor:
        """The eager logits of ``x``; the frozen copy is given up (``failed``) if its own differ."""
        ref = self.model(x)
        try:
            out = self(x)
            err = _relative_error(out, ref)
            if not err <= self.tolerance:
                raise ValueError(f"frozen logits differ from eager ones on a later batch (relative error {err:.1e})")
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any disagreement: run eagerly from now on
            _warn_fallback("the frozen copy of the model", e, "running it eagerly")
            self.failed = True
        return ref

    def _check_any_batch(self, x: Tensor) -> Tensor:
        ref = self.model(x)
        try:
            out = self.module(x)
            self.any_batch = isinstance(out, Tensor) and _relative_error(out, ref) <= self.tolerance
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - e.g. a reshape with the traced batch size
            self.any_batch = False
        if not self.any_batch:
            logger.debug("frozen copy: batch size fixed at %d (traced)", self.batch)
            return ref
        return out


class CompiledForward(_FirstBatchForward):
    """``torch.compile``d copy (inductor, freezing), always run at its first batch's size, as
    another size would compile again."""

    name = "compiled"

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        super().__init__(model, channels_last)
        self.eager = self.module
        logger.info("compiling the model for full forwards (torch.compile, once per model state)")
        self.module = torch.compile(self.eager, dynamic=False, options={"freezing": True})

    def __call__(self, x: Tensor) -> Tensor:
        if self.batch is not None:
            return self._fixed(x)
        try:
            t0 = time.perf_counter()
            out = self.module(x)
            logger.info("torch.compile: first batch of %d took %.1f s", x.shape[0], time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure: run uncompiled instead
            _warn_fallback("torch.compile", e, "running uncompiled")
            self.failed = True
            return self.eager(x)
        self.batch = x.shape[0]
        return out


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------


class Runtime:
    """The methods' only way to run the network again, with the engine's ``SpeedSettings``.

    ``tail`` (the network from the target layer on) and ``forward`` (the full model) run under
    ``torch.inference_mode`` and, at ``bf16``/``fp16``, under autocast; outputs are float32.
    ``forward`` picks its mode (module docstring) at the first 4-D batch of each engine call
    (a kept copy is checked against the model then); ``end_call`` ends the call.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Any,
        speed: SpeedSettings | None = None,
        *,
        progress: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.split = split
        self.speed = speed or SpeedSettings()
        self.progress = progress
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = device
        self.failed: set[str] = set()
        """Modes that failed to build and are not tried again (``"frozen"``, ``"compiled"``)."""
        self._mode: ForwardMode | None = None  # of the engine call in progress
        self._last: ForwardMode | None = None
        self._kept: tuple[Any, ForwardMode] | None = None
        self._tuners: dict[Any, batching.BatchTuner] = {}
        precision = self.speed.precision
        if precision != "fp32" and self.device.type == "cpu" and not cpu_has_native(precision):
            logger.warning(
                "precision %s: this CPU has no %s matrix instructions (%s), so %s is emulated and "
                "slower than fp32 here",
                precision,
                precision,
                "avx512_bf16 / AMX" if precision == "bf16" else "AMX-FP16",
                precision,
            )

    # ---- batch sizes --------------------------------------------------------------------

    def batch(self, default: int | Mapping[str, int]) -> int:
        """Rows per forward pass: the settings' ``batch_size``, else the method's measured default
        (one number, or one per device type such as ``{"cpu": 8, "cuda": 128}``; devices not
        listed use the ``"cpu"`` entry)."""
        if self.speed.batch_size:
            return self.speed.batch_size
        if isinstance(default, Mapping):
            return default.get(self.device.type, default["cpu"])
        return default

    @property
    def tuners(self) -> Mapping[Any, batching.BatchTuner]:
        """The batch-size measurements of ``forward_slices``, per key."""
        return MappingProxyType(self._tuners)

    def forward_slices(self, n: int, default: int | Mapping[str, int], key: Any = None) -> Iterator[slice]:
        """Slices of ``range(n)``, one per full forward the caller runs for them.

        With a ``batch_size`` set, on CUDA, or with ``compile`` (a new batch size would compile
        again), every slice has ``batch(default)`` rows. Otherwise the first slices try each of
        ``CPU_FORWARD_CANDIDATES`` and the rest use the fastest per row (``BatchTuner``): the
        time between two slices is the caller's work on the first one. The measurement and
        the choice are kept for later calls with the same ``key`` (e.g. the input shape), so a
        call with too few rows to try every candidate leaves the rest to the next one.
        """
        start = 0
        if self.speed.batch_size or self.device.type != "cpu" or self.speed.compile:
            size = self.batch(default)
        else:
            # Precision and mode are fixed per Runtime, so the key need not name them.
            tuner = self._tuners.setdefault(key, batching.BatchTuner(batching.CPU_FORWARD_CANDIDATES))
            while start < n and not tuner.done:  # goes on where an earlier call stopped
                stop = min(start + tuner.next_size(), n)
                t0 = time.perf_counter()
                yield slice(start, stop)
                tuner.record(stop - start, time.perf_counter() - t0)
                start = stop
                if tuner.done:
                    logger.info(
                        "full forwards: %d rows per pass (ms per row: %s)",
                        tuner.best,
                        ", ".join(f"{c}: {1e3 * t:.1f}" for c, t in tuner.costs().items()),
                    )
            size = tuner.next_size()
        for s in range(start, n, size):
            yield slice(s, min(s + size, n))

    # ---- running ------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the chosen precision (a no-op for fp32)."""
        if self.speed.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.speed.precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def tail(self, acts: Tensor, carry: Any, index: Tensor | None = None) -> Tensor:
        """Logits from (possibly modified) target-layer activations, float32."""
        with torch.inference_mode(), self.autocast():
            return as_float(self.split.tail(acts, carry, index))

    def forward(self, x: Tensor) -> Tensor:
        """Full-model logits of a batch, float32."""
        with torch.inference_mode(), self.autocast():
            if x.dim() != 4:
                return as_float(self.model(x))
            if self._mode is None:  # first full forward of this engine call
                self._mode = self._last = self._choose()
            mode = self._mode
            out = mode(x)
            if mode.failed:
                self.failed.add(mode.name)
                self._mode = self._kept = None
            return as_float(out)

    @property
    def forward_mode(self) -> ForwardMode | None:
        """The mode of the latest full forward (None before the first one)."""
        return self._mode or self._last

    @property
    def mode(self) -> str | None:
        """Name of the mode of the latest full forward: ``"eager"``, ``"channels_last"``,
        ``"frozen"`` or ``"compiled"`` (None before the first one)."""
        return None if self.forward_mode is None else self.forward_mode.name

    @property
    def compiled(self) -> bool:
        """Whether full forwards run through a ``torch.compile``d copy of the model."""
        return self.speed.compile and "compiled" not in self.failed

    def end_call(self) -> None:
        """End of an engine call: a per-call copy is dropped; a kept one is checked against the
        model again before its next use."""
        self._mode = None

    def _choose(self) -> ForwardMode:
        cl = self.speed.channels_last
        cl = self.device.type == "cpu" if cl is None else cl
        if self.compiled:
            return self._keep("compiled", lambda: CompiledForward(self.model, cl))
        if self._freeze_wanted() and self._freezable():
            mode = self._keep("frozen", lambda: FrozenForward(self.model, self.speed.precision, cl))
            if isinstance(mode, FrozenForward):
                mode.verify = True
            return mode
        return ChannelsLastForward(self.model) if cl else EagerForward(self.model)

    def _keep(self, name: str, build: Any) -> ForwardMode:
        """The kept copy of mode ``name`` if the model is unchanged since it was built, else a new one."""
        key = model_state_key(self.model)
        if key is None or self._kept is None or self._kept[0] != key or self._kept[1].name != name:
            self._kept = (key, build())
        return self._kept[1]

    def _freeze_wanted(self) -> bool:
        """Whether to freeze (before looking at the model's modules)."""
        freeze = self.speed.freeze
        if freeze is False or self.speed.compile or "frozen" in self.failed:
            return False
        if freeze is None:
            precision = self.speed.precision
            native = precision == "fp32" or (precision == "bf16" and cpu_has_native("bf16"))
            return self.device.type == "cpu" and native
        return True

    def _freezable(self) -> bool:
        """No hooks anywhere (tracing would bake them in). Any model source (torchvision, timm,
        Hugging Face, an import path): the frozen copy is a deep copy (the user's model never
        sees its Python side effects) and is checked against eager logits on its first batch,
        on the first batch of each new size and of every later engine call; any disagreement
        falls back to eager forwards with a warning."""
        hooked = [name or "<model>" for name, m in self.model.named_modules() if _has_hooks(m)]
        if hooked or _global_hooks():
            logger.debug("not freezing the model: forward hooks on %s", ", ".join(hooked) or "all modules")
            return False
        return True


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def as_float(output: Any) -> Any:
    """The model's output with floating tensors as float32: a tensor, or the tensors inside a
    dict (segmenters, Hugging Face outputs), list or tuple (detectors); integer tensors (labels)
    and everything else as they are."""
    if isinstance(output, Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, dict):
        return {k: as_float(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)) and not hasattr(output, "_fields"):
        return type(output)(as_float(v) for v in output)
    return output


def _warn_fallback(what: str, exc: Exception, instead: str) -> None:
    """One warning line: what failed, the exception's type and first line, what runs instead."""
    logger.warning("%s failed (%s: %s); %s", what, type(exc).__name__, first_line(exc), instead)


def _relative_error(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| (inf when the shapes differ)."""
    if out.shape != ref.shape:
        return float("inf")
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def cpu_has_native(precision: str) -> bool:
    """Whether oneDNN reports native ``bf16`` / ``fp16`` support on this CPU (True if unknown)."""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}.get(precision)
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError, TypeError):
        return True


def _has_hooks(m: nn.Module) -> bool:
    return any(
        getattr(m, name, None)
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m

    return any(getattr(_m, n, None) for n in ("_global_forward_hooks", "_global_forward_pre_hooks"))


def _format_of(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


_PLAIN = (bool, int, float, str, type(None))
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "training"})


def _module_key(module: nn.Module) -> tuple:
    """A module's own state that is not a tensor: plain attributes by value (``eps``, ``p``,
    ``inplace``, counters), other attributes (instance functions, hooks' callables) by identity,
    and which hooks are registered. ``training`` is left out: the engine sets it."""
    items = []
    for k, v in vars(module).items():
        if k in _MODULE_INTERNALS:
            continue
        if isinstance(v, _PLAIN):
            items.append((k, v))
        elif isinstance(v, dict) and k.endswith(("hooks", "pre_hooks")):
            items.append((k, tuple((hk, id(hv)) for hk, hv in v.items())))
        else:
            items.append((k, id(v)))
    return (type(module), tuple(items))


def model_state_key(model: nn.Module) -> tuple | None:
    """What a kept copy of the model depends on: identity, version and sum of every parameter
    and buffer (changes when one is replaced or modified in place: optimizer steps,
    ``load_state_dict``, BatchNorm statistics, and edits through ``.data``, which bypass the
    version counter but not the sum), and every module's non-tensor state (plain attributes by
    value, others by identity, registered hooks). None when it cannot be computed (inference
    tensors keep no version counter): the copy is then made every call."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    try:
        sums: list[float] = [0.0] * len(tensors)
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, t) in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        with torch.no_grad():
            for idx in by_device.values():  # one host transfer per device, not one per tensor
                totals = torch.stack([tensors[i][1].detach().sum(dtype=torch.float64) for i in idx])
                for i, total in zip(idx, totals.tolist(), strict=True):
                    sums[i] = total
        tensor_key = tuple(
            (name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape), total)
            for (name, t), total in zip(tensors, sums, strict=True)
        )
        return tensor_key, tuple((name, _module_key(m)) for name, m in model.named_modules())
    except (RuntimeError, TypeError):
        return None
