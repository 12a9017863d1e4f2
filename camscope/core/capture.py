"""One capture serves every method: activations, gradients, logits and targets for a batch.

The network is split at the target layer (``core.tail``): the head runs once without autograd;
the tail runs on activations that require grad, so the backward pass stops at the target layer
(``torch.autograd.grad`` with respect to the activations, never through the parameters).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camscope.core import batching

__all__ = ["Capture", "Runtime", "capture", "model_state_guard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capture:
    """Everything a CAM method may read, for R rows (one row = one view of an image and a class).

    Attributes:
        views: (V,3,H,W) model inputs (images, or augmented views of them).
        view_activations: (V,K,h,w) target-layer activations of each view.
        view_logits: (V,C) model outputs of each view.
        carry: values the tail needs besides the activations (see ``LayerSplit.tail``).
        view_index: (R,) the view of each row.
        targets: (R,) the target class of each row.
        gradients: (R,K,h,w) d logit_target / d A, or None when no method needs them.
    """

    views: Tensor
    view_activations: Tensor
    view_logits: Tensor
    carry: Any
    view_index: Tensor
    targets: Tensor
    gradients: Tensor | None = None

    @property
    def activations(self) -> Tensor:
        """(R,K,h,w) activations of each row."""
        return self.view_activations[self.view_index]

    @property
    def logits(self) -> Tensor:
        """(R,C) logits of each row's view."""
        return self.view_logits[self.view_index]

    @property
    def scores(self) -> Tensor:
        """(R,) target logit y_c of each row."""
        return self.logits.gather(1, self.targets[:, None])[:, 0]

    def rows_by_view(self) -> Iterator[tuple[int, Tensor]]:
        """Yield (view, row indices) for every view that has rows."""
        views = self.view_index.tolist()
        groups: dict[int, list[int]] = {}
        for r, v in enumerate(views):
            groups.setdefault(v, []).append(r)
        for v, rows in groups.items():
            yield v, torch.tensor(rows, device=self.view_index.device)


@dataclass
class Runtime:
    """How methods may run the network: the full model, or the tail from the target layer.

    ``forward`` and ``tail`` run under ``torch.inference_mode`` and, when ``precision`` is
    ``"bf16"``/``"fp16"``, under autocast; outputs are always returned as float32.

    Full forwards (Score-CAM's masked images) may run through a private copy of the model; the
    user's model is never converted. The copy is

    * **frozen** (``freeze``; default on CPU at fp32, and at bf16 on CPUs with bf16
      instructions, for models built from torch / torchvision modules only, without hooks,
      whose split traced): traced (under autocast at bf16), frozen and optimised for inference
      by TorchScript (batch norm folded into the convolutions, weights prepacked for oneDNN;
      ReLU and residual adds stay separate ops, ~6 % of the time on an AVX2 CPU): 1.07-1.26x faster per ResNet-50 forward than eager at fp32 in
      ``benchmarks/batch_sweep.py --forward-only`` on an AVX2 CPU, 1.07-1.23x at fp32 and
      1.23-1.30x at bf16 on an AVX-512 one. The first batch is also run eagerly and the frozen
      copy is used only if its logits agree (relative error below 1e-4; 3e-2 at bf16); any
      failure falls back to eager with a warning;
    * **compiled** (``compile=True``) by ``torch.compile`` (inductor, freezing);
    * otherwise **plain**: channels-last (``channels_last``; default on CPU).

    The plain copy is made afresh for every engine call (cheap next to the forwards). Frozen
    and compiled copies cost seconds to build, so they are kept between calls and rebuilt when
    the model changed: a parameter or buffer replaced or modified (identity, version counter,
    sum), or a module's plain attribute, hooks or instance attributes changed. Rebuild the
    engine after other edits to the model's code.
    """

    model: nn.Module
    split: Any
    batch_size: int | None = None
    precision: str = "fp32"
    progress: bool = False
    channels_last: bool | None = None
    compile: bool = False
    freeze: bool | None = None
    _device: torch.device | None = field(default=None, repr=False)
    _fast: tuple[Any, nn.Module] | None = field(default=None, repr=False)
    _fast_mode: str = field(default="plain", repr=False)
    _freeze_failed: bool = field(default=False, repr=False)
    _fast_checked: bool = field(default=False, repr=False)
    _compiled_batch: int | None = field(default=None, repr=False)
    _compile_failed: bool = field(default=False, repr=False)
    _tuners: dict[Any, batching.BatchTuner] = field(default_factory=dict, repr=False)
    _any_batch: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.precision != "fp32" and self.device.type == "cpu" and not _cpu_has_reduced_precision(self.precision):
            logger.warning(
                "precision %s: this CPU has no %s matrix instructions (%s), so %s is emulated and "
                "slower than fp32 here",
                self.precision,
                self.precision,
                "avx512_bf16 / AMX" if self.precision == "bf16" else "AMX-FP16",
                self.precision,
            )

    @property
    def device(self) -> torch.device:
        if self._device is None:
            p = next(iter(self.model.parameters()), None)
            self._device = p.device if p is not None else torch.device("cpu")
        return self._device

    def batch(self, default: int | Mapping[str, int]) -> int:
        """Rows per forward pass: the user's ``batch_size``, else the method's measured default
        (one number, or one per device type such as ``{"cpu": 8, "cuda": 128}``; devices not
        listed use the ``"cpu"`` entry)."""
        if self.batch_size:
            return self.batch_size
        if isinstance(default, Mapping):
            return default.get(self.device.type, default["cpu"])
        return default

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
        if self.batch_size or self.device.type != "cpu" or self.compile:
            size = self.batch(default)
        else:
            # Precision and copy are fixed per Runtime, so the key need not name them.
            if key not in self._tuners:
                self._tuners[key] = batching.BatchTuner(batching.CPU_FORWARD_CANDIDATES)
            tuner = self._tuners[key]
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

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the chosen precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def uses_channels_last(self) -> bool:
        return self.device.type == "cpu" if self.channels_last is None else self.channels_last

    @property
    def compiled(self) -> bool:
        """Whether full forwards run through a ``torch.compile``d copy of the model."""
        return self.compile and not self._compile_failed

    def _freeze_wanted(self) -> bool:
        """Whether the private copy should be frozen (before looking at the model's modules)."""
        if self.freeze is False or self.compile or self._freeze_failed:
            return False
        if self.freeze is None:
            native = self.precision == "fp32" or (
                self.precision == "bf16" and _cpu_has_reduced_precision("bf16")
            )
            return self.device.type == "cpu" and native and bool(getattr(self.split, "traced", False))
        return True

    @property
    def _cl_input(self) -> bool:
        """Full-forward inputs in channels-last: for the plain copy, and for a frozen one at
        bf16/fp16 (whose convolutions stay aten ones; at fp32 TorchScript hands them to oneDNN
        in its own layout, and the input format made no difference)."""
        mode = self._fast_mode
        return self.uses_channels_last and (mode == "plain" or (mode == "frozen" and self.precision != "fp32"))

    def forward(self, x: Tensor) -> Tensor:
        """Full-model logits of a batch, float32.

        Compiled forwards always see the same batch size (the first one seen): a shorter batch
        is padded with zeros and a longer one split. Frozen ones take any batch size."""
        if x.dim() != 4 or not (self.uses_channels_last or self.compile or self._freeze_wanted()):
            with torch.inference_mode(), self.autocast():
                return self.model(x).float()
        model = self._fast_model()
        if self._cl_input:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            if self._fast_mode == "plain":
                return model(x).float()
            return self._fixed_batches(model, x).float()

    @property
    def _tolerance(self) -> float:
        """Relative error allowed between frozen and eager logits: rounding only at fp32; at
        bf16 the two round differently (3.5e-3 on ResNet-50, as far as bf16 is from fp32),
        while a wrong trace is off by order 1."""
        return 1e-4 if self.precision == "fp32" else 3e-2

    def _fast_model(self) -> nn.Module:
        """The private copy for full forwards, rebuilt when the model changed since it was made."""
        if self._fast is not None and self._fast_checked:
            return self._fast[1]
        kept = self.compiled or self._freeze_wanted()
        key = _state_key(self.model) if kept else None
        if self._fast is None or key is None or self._fast[0] != key:
            freeze = self._freeze_wanted() and self._freezable()  # never with compile=True
            cl = self.uses_channels_last and (not freeze or self.precision != "fp32")
            fmt = torch.channels_last if cl else torch.contiguous_format
            fast = copy.deepcopy(self.model).to(memory_format=fmt)
            self._fast_mode = "plain"
            if self.compiled:
                logger.info("compiling the model for full forwards (torch.compile, once per model state)")
                fast = torch.compile(fast, dynamic=False, options={"freezing": True})
                self._fast_mode = "compiled"
            elif freeze:
                self._fast_mode = "frozen"  # traced on the first batch, in _fixed_batches
            self._compiled_batch = None
            self._fast = (key, fast)
        self._fast_checked = True
        return self._fast[1]

    def _freezable(self) -> bool:
        """No hooks anywhere (tracing would bake them in) and, unless ``freeze=True``, only
        torch / torchvision modules (whose forward has no Python side effects to lose)."""
        hooked = [name or "<model>" for name, m in self.model.named_modules() if _has_hooks(m)]
        if hooked or _global_hooks():
            logger.debug("not freezing the model: forward hooks on %s", ", ".join(hooked) or "all modules")
            return False
        if self.freeze is None:
            modules = {type(m).__module__ for m in self.model.modules()}
            foreign = {mod for mod in modules if not mod.startswith(("torch.", "torchvision."))}
            if foreign:
                logger.debug("not freezing the model (freeze=True to force): modules from %s", ", ".join(sorted(foreign)))
                return False
        return True

    def _freeze_first(self, model: nn.Module, x: Tensor) -> Tensor:
        """Trace, freeze and check the private copy on its first batch; eager logits of ``x``."""
        ref = model(x)
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
                traced = torch.jit.trace(model, x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                out = frozen(x)
            if not isinstance(out, Tensor) or out.shape != ref.shape:
                raise TypeError("the traced model returns something else than the model")
            err = _relative_error(out, ref)
            if not err <= self._tolerance:
                raise ValueError(f"frozen logits differ from eager ones (relative error {err:.1e})")
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any tracing failure: run eagerly instead
            _warn_fallback("freezing the model", e, "running it eagerly")
            self._freeze_failed = True
            self._fast_mode = "plain"
            return ref
        logger.info("model frozen for full forwards (TorchScript, batch %d) in %.1f s", x.shape[0], time.perf_counter() - t0)
        self._fast = (self._fast[0], frozen)  # _fast_model made the eager copy this replaces
        self._compiled_batch = x.shape[0]
        self._any_batch = None
        return ref

    def _compile_first(self, model: nn.Module, x: Tensor) -> Tensor:
        """Run (and so compile) the compiled copy on its first batch; uncompiled if that fails."""
        try:
            t0 = time.perf_counter()
            out = model(x)
            logger.info("torch.compile: first batch of %d took %.1f s", x.shape[0], time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure: run uncompiled instead
            _warn_fallback("torch.compile", e, "running uncompiled")
            self._compile_failed = True
            self._fast = None
            return self._fast_model()(x)
        self._compiled_batch = x.shape[0]
        return out

    def _fixed_batches(self, model: nn.Module, x: Tensor) -> Tensor:
        """Frozen or compiled forwards, built on the first batch seen. A frozen graph takes any
        batch size; a compiled one always gets the first batch's size (padded or split), as
        another size would compile again."""
        if self._compiled_batch is None:
            first = self._freeze_first if self._fast_mode == "frozen" else self._compile_first
            return first(model, x)
        if self._fast_mode == "frozen" and self._any_batch is not False:
            if self._any_batch or x.shape[0] == self._compiled_batch:
                return model(x)
            return self._check_any_batch(model, x)
        n = x.shape[0]
        b = self._compiled_batch
        if n == b:
            return model(x)
        outs = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            m = chunk.shape[0]
            if m < b:
                pad = chunk.new_zeros(b - m, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad]).contiguous(memory_format=_format_of(x))
            outs.append(model(chunk)[:m])
        return torch.cat(outs)

    def _check_any_batch(self, model: nn.Module, x: Tensor) -> Tensor:
        """First batch of a new size through the frozen copy: checked against the model once, as
        a trace may have kept the first batch's size; if it did, batches are padded or split
        to that size from then on."""
        ref = self.model(x)
        try:
            out = model(x)
            self._any_batch = isinstance(out, Tensor) and _relative_error(out, ref) <= self._tolerance
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - e.g. a reshape with the traced batch size
            self._any_batch = False
        if not self._any_batch:
            logger.debug("frozen copy: batch size fixed at %d (traced)", self._compiled_batch)
            return ref
        return out

    def reset(self) -> None:
        """End of an engine call: the plain private copy is dropped; a frozen or compiled one is
        checked against the model again before its next use (kept while the model is unchanged)."""
        if self._fast_mode == "plain":
            self._fast = None
        self._fast_checked = False

    def tail(self, acts: Tensor, carry: Any, index: Tensor | None = None) -> Tensor:
        """Logits from (possibly modified) target-layer activations, float32."""
        with torch.inference_mode(), self.autocast():
            return self.split.tail(acts, carry, index).float()


def _warn_fallback(what: str, exc: Exception, instead: str) -> None:
    """One warning line: what failed, the exception's type and first line, what runs instead."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    logger.warning("%s failed (%s: %s); %s", what, type(exc).__name__, first, instead)


def _relative_error(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| (inf when the shapes differ)."""
    if out.shape != ref.shape:
        return float("inf")
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def _cpu_has_reduced_precision(precision: str) -> bool:
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


def _state_key(model: nn.Module) -> tuple | None:
    """What the compiled copy depends on: identity, version and sum of every parameter and
    buffer (changes when one is replaced or modified in place: optimizer steps,
    ``load_state_dict``, BatchNorm statistics, and edits through ``.data``, which bypass the
    version counter but not the sum), and every module's non-tensor state (:func:`_module_key`).
    None when it cannot be computed (inference tensors keep no version counter): the copy is
    then made every call."""
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


@contextlib.contextmanager
def model_state_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration; restore every module's training flag and
    every parameter's ``.grad`` afterwards, also when an exception escapes.

    ``.grad`` is set to None for the duration, so that a backward through the parameters (e.g.
    by a user-registered method) accumulates into new tensors, not into the caller's."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.grad = None
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        for p, g in grads:
            p.grad = g


def capture(
    split: Any,
    views: Tensor,
    *,
    targets_of_view: Sequence[Sequence[int]] | None = None,
    top_k: int = 1,
    plain_view_of: Sequence[int] | None = None,
    need_gradients: bool = True,
) -> Capture:
    """Run one forward (and, if needed, one backward per target rank) for a batch of views.

    Args:
        split: a ``LayerSplit`` of the model at the target layer.
        views: (V,3,H,W) inputs.
        targets_of_view: explicit target classes per view; by default the ``top_k`` predicted
            classes of the view's plain view (``plain_view_of[v]``, itself by default).
        top_k: number of predicted classes explained when targets are not given.
        plain_view_of: for augmented views, the index of the un-augmented view of the same image:
            targets come from its prediction so that every view explains the same class.
        need_gradients: compute d y_c / d A for every row.
    """
    with torch.no_grad():
        acts, carry = split.head(views)
    if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
        from camscope.errors import UsageError

        got = f"shape {tuple(acts.shape)}" if isinstance(acts, torch.Tensor) else f"a {type(acts).__name__}"
        raise UsageError(
            f"layer {split.layer!r} gives {got}, not a 4-D (N, C, h, w) feature map "
            f"(reshape {getattr(split, 'reshape', 'none')}); choose a convolutional stage or a "
            "transformer block's norm, or pass --reshape auto / tokens:HxW[:skip=T] / nhwc"
        )
    acts = acts.detach()
    with torch.enable_grad() if need_gradients else torch.no_grad():
        a = acts.clone().requires_grad_(need_gradients)
        logits = split.tail(a, carry, None)
    n_views = views.shape[0]
    if targets_of_view is None:
        plain = list(range(n_views)) if plain_view_of is None else list(plain_view_of)
        k = min(top_k, logits.shape[1])
        top = logits.detach().topk(k, dim=1).indices.tolist()
        targets_of_view = [top[plain[v]] for v in range(n_views)]
    ranks = len(targets_of_view[0])
    if any(len(t) != ranks for t in targets_of_view):
        raise ValueError("every view needs the same number of target classes")
    tv = torch.tensor(targets_of_view, dtype=torch.long, device=logits.device)  # (V, ranks)

    gradients = None
    if need_gradients:
        per_rank = []
        for j in range(ranks):
            score = logits.gather(1, tv[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(score, a, retain_graph=j < ranks - 1)
            per_rank.append(g)
        gradients = torch.stack(per_rank, dim=1).reshape(n_views * ranks, *acts.shape[1:])
    view_index = torch.arange(n_views, device=logits.device).repeat_interleave(ranks)
    return Capture(
        views=views,
        view_activations=acts,
        view_logits=logits.detach().float(),
        carry=carry,
        view_index=view_index,
        targets=tv.reshape(-1),
        gradients=None if gradients is None else gradients.detach(),
    )
