"""Run a network from a target layer's output on: ``split_model(model, layer) -> LayerSplit``.

``head(x)`` runs the model up to and including the target layer and returns its output ``A`` as a
(B, C, h, w) map and a :class:`Carry`; ``tail(A', carry, index)`` runs the rest of the network on
(possibly modified) maps ``A'``, differentiably. A layer whose output is tokens (B, N, C) or
channels-last (B, h, w, C) is turned into a map here and only here (``reshape``, see
:mod:`camscope.core.reshape`): ``head`` keeps the prefix tokens (class, distillation, register)
in the carry, ``tail`` rebuilds the layer's output from the map and them. Two implementations:

* **traced** (fast): ``torch.fx`` traces the model with the target module as one leaf call and the
  graph is cut at that call. The head graph returns ``(A, *carried)``, where *carried* are the
  values computed before the target and used after it (e.g. a residual skip connection when the
  target is inside a block). Cheap shape arithmetic (``x.size(0)``, ``x.shape[-2:]`` ...) is
  recomputed in the tail from carried tensors instead of carried as numbers, so it follows the
  tail's batch size. Both graphs are ``GraphModule``s over the user's own submodules: parameters
  are shared, nothing is copied or mutated.
* **hook fallback** (slow; used when tracing fails or ``allow_trace=False``): ``head`` runs the
  full model with a forward hook capturing the target output and carries the input ``x``;
  ``tail`` re-runs the full model on ``x[index]`` with a forward hook that substitutes the given
  activations for the target output. Hooks are removed in ``finally``. For gradients,
  ``head_tail(x)`` does both in one forward (the capture's common case: one forward instead of
  two, as pytorch-grad-cam's hooks do).

A module called several times per forward (e.g. the ``relu`` that torchvision's Bottleneck reuses
three times) is split at its **last** call in both paths: the activations are that call's output
and the tail is everything after it. Control flow is fixed at trace time, so split after setting
``model.eval()`` / ``model.train()`` as wanted; the split never changes training flags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camscope.core.capture import model_state_guard
from camscope.core.layers import canonical_layer_name, get_module, probe_input
from camscope.core.reshape import Reshape
from camscope.core.split.carry import Carry, clone_tensors, leading_dim
from camscope.core.split.fx_graph import NoTrace, fx_split
from camscope.errors import CamscopeError, UsageError

__all__ = ["LayerSplit", "split_model"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class LayerSplit:
    """A model cut at ``layer`` (canonical dotted name); ``traced`` is False for the hook fallback.

    ``reshape`` is what was asked for (``"auto"`` by default); the concrete reshape is decided
    on the first ``head`` call for each input size (see :meth:`resolve_reshape`) and kept.
    """

    layer: str
    traced: bool
    model: nn.Module = field(repr=False)
    module: nn.Module = field(repr=False)
    head_module: torch.fx.GraphModule | None = field(default=None, repr=False)
    tail_module: torch.fx.GraphModule | None = field(default=None, repr=False)
    carried_batched: tuple[bool, ...] = field(default=(), repr=False)
    tail_mutates: tuple[bool, ...] = field(default=(), repr=False)  # (acts, *carried)
    reshape: Reshape = field(default_factory=Reshape)
    _resolved: dict[tuple, Reshape] = field(default_factory=dict, repr=False)

    def head(self, x: Tensor) -> tuple[Tensor, Carry]:
        """Run images ``x`` (B,3,H,W) up to the target; return its output as a (B,K,h,w) map
        and a Carry."""
        if self.head_module is None:
            out, carry = self._hook_head(x)
        else:
            out, *values = self.head_module(x)
            carry = Carry(tuple(values), leading_dim(x), self.carried_batched)
        rs = self._resolve(out, x)
        maps = rs.to_maps(out)
        carry.reshape, carry.kept, carry.acts_shape = rs, rs.prefix(out), _acts_shape(maps)
        return maps, carry

    def tail(self, acts: Tensor, carry: Carry, index: Tensor | None = None) -> Tensor:
        """Run maps ``acts`` (N,K,h,w) from the target on to the model's output.

        ``index`` (N,) says which image of the carry's batch each row belongs to (None: row ``i``
        is image ``i``, or every row is the single image). Differentiable w.r.t. ``acts``; neither
        ``acts`` nor the carry is modified.
        """
        n = leading_dim(acts)
        shape = _acts_shape(acts)
        if carry.acts_shape is not None and shape != carry.acts_shape:
            raise ValueError(
                f"activations for layer {self.layer!r} must have shape (N, {', '.join(map(str, carry.acts_shape))}), "
                f"got {tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__}"
            )
        values = carry.select(index, n)
        out = acts
        if carry.reshape is not None and carry.reshape.kind != "none":
            out = carry.reshape.to_layer(acts, carry.select_kept(index, n))
        if self.tail_module is None:
            return self._hook_tail(out, values[0], carry.target_call)
        # Clone only what the tail would modify in place (e.g. DenseNet's relu(inplace=True)).
        if self.tail_mutates[0]:
            out = clone_tensors(out)
        values = tuple(
            clone_tensors(v) if mutated else v
            for v, mutated in zip(values, self.tail_mutates[1:], strict=True)
        )
        return self.tail_module(out, *values)

    def head_tail(self, x: Tensor) -> tuple[Tensor, Carry, Tensor, Any] | None:
        """``head(x)`` and ``tail`` of its maps made a leaf that requires grad, in one pass:
        ``(maps, carry, leaf, output)``, for the gradient of a score with respect to the maps.

        The hook path runs the model once (instead of a head run and a tail run): every call of
        the target module returns a copy of its output rebuilt from a fresh leaf, the last one
        is kept (values unchanged, and nothing downstream of the last call depends on the
        earlier copies' history). None for the traced split (its head is a fraction of a
        forward: ``head`` then ``tail``) and when the layer's output is not one tensor.
        Call it with gradients enabled.
        """
        if self.head_module is not None:
            return None
        calls = 0
        kept: dict[str, Any] = {}

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            nonlocal calls
            calls += 1
            if not isinstance(out, Tensor) or "refused" in kept:
                kept["refused"] = True
                return None
            raw = out.detach().clone()  # later in-place ops of the model must not alter it
            rs = self._resolve(raw, x)
            leaf = rs.to_maps(raw).detach().clone().requires_grad_(True)
            prefix = rs.prefix(raw)
            kept.update(raw=raw, rs=rs, leaf=leaf, prefix=prefix)
            rebuilt = leaf if rs.kind == "none" else rs.to_layer(leaf, prefix)
            return rebuilt.clone()  # the model may modify the layer output in place

        handle = self.module.register_forward_hook(hook)
        try:
            output = self.model(x)
        finally:
            handle.remove()
        if calls == 0:
            raise UsageError(f"layer {self.layer!r} is never called in the model's forward pass")
        if "refused" in kept:
            return None
        leaf, rs = kept["leaf"], kept["rs"]
        maps = leaf.detach()
        carry = Carry((x,), leading_dim(x), (True,), target_call=calls)
        carry.reshape, carry.kept, carry.acts_shape = rs, kept["prefix"], _acts_shape(maps)
        return maps, carry, leaf, output

    def forward(self, x: Tensor) -> Tensor:
        """``tail(*head(x))``: equals ``model(x)``."""
        return self.tail(*self.head(x))

    __call__ = forward

    # ---- reshape

    def _resolve(self, out: Any, x: Tensor) -> Reshape:
        shape = tuple(out.shape[1:]) if isinstance(out, Tensor) else type(out).__name__
        key = (tuple(x.shape[-2:]), shape)
        rs = self._resolved.get(key)
        if rs is None:
            rs = self.reshape.resolve(
                out, tuple(x.shape[-2:]), self.model, self.layer, batch=leading_dim(x)
            )
            if rs.kind != "none" or self.reshape.kind != "auto":
                logger.info("layer %r: output %s -> map by reshape %s", self.layer, tuple(out.shape), rs)
            self._resolved[key] = rs
        return rs

    def resolve_reshape(self, input_size: Sequence[int]) -> Reshape:
        """The concrete reshape for inputs of ``input_size`` ((B,3,H,W) or (H,W)): decided by
        one no-grad, eval-mode head run on zeros the first time (training flags restored)."""
        size = tuple(int(s) for s in input_size)
        size = (1, 3, *size) if len(size) == 2 else (1, *size[1:])
        for (hw, _), rs in self._resolved.items():
            if hw == size[-2:]:
                return rs
        with model_state_guard(self.model), torch.no_grad():
            _, carry = self.head(probe_input(self.model, size))
        assert carry.reshape is not None
        return carry.reshape

    @property
    def reshape_used(self) -> Reshape | None:
        """The concrete reshape of the latest input size seen (None before any head run)."""
        return next(reversed(self._resolved.values()), None)

    # ---- hook fallback

    def _hook_head(self, x: Tensor) -> tuple[Tensor, Carry]:
        calls = 0
        captured: Any = None

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            nonlocal calls, captured
            calls += 1
            captured = clone_tensors(out)  # later in-place ops of the model must not alter it

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if calls == 0:
            raise UsageError(f"layer {self.layer!r} is never called in the model's forward pass")
        carry = Carry((x,), leading_dim(x), (True,), target_call=calls)
        return captured, carry

    def _hook_tail(self, acts: Any, x: Tensor, target_call: int) -> Tensor:
        calls = 0
        used = False

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            nonlocal calls, used
            calls += 1
            if calls != target_call:
                return None
            if isinstance(out, Tensor) and isinstance(acts, Tensor) and out.shape != acts.shape:
                raise ValueError(
                    f"activations of shape {tuple(acts.shape)} do not match layer {self.layer!r} "
                    f"output {tuple(out.shape)}"
                )
            used = True
            return clone_tensors(acts)  # the model may modify the layer output in place

        handle = self.module.register_forward_hook(hook)
        try:
            out = self.model(x)
        finally:
            handle.remove()
        if not used:
            raise CamscopeError(
                f"layer {self.layer!r} was called {calls} time(s) in the tail run, expected "
                f"{target_call}; the model's control flow depends on the batch"
            )
        return out


def _acts_shape(acts: Any) -> tuple[int, ...] | None:
    return tuple(acts.shape[1:]) if isinstance(acts, Tensor) else None


def split_model(
    model: nn.Module, layer: str, *, allow_trace: bool = True, reshape: str | Reshape = "auto"
) -> LayerSplit:
    """Split ``model`` at ``layer`` (any path :func:`camscope.core.layers.get_module` accepts).

    Uses a torch.fx split when the model traces, else (or with ``allow_trace=False``) the hook
    fallback, logging why. ``reshape`` (a :class:`~camscope.core.reshape.Reshape` or its spec
    string: ``auto``, ``none``, ``nhwc``, ``tokens:HxW[:skip=T]``) says how the layer's output
    becomes a (B, C, h, w) map. The model is neither copied nor modified.
    """
    rs = Reshape.parse(reshape)
    name = canonical_layer_name(model, layer)
    module = get_module(model, name)
    if allow_trace:
        try:
            with _restoring([(m, dict(vars(m))) for m in model.modules()]):
                head_gm, tail_gm, batched, mutates = fx_split(model, module, name)
        except NoTrace as exc:
            concrete = _concrete_split(model, module, name, rs)  # e.g. Hugging Face models
            if concrete is not None:
                return concrete
            logger.warning(
                "layer %r: using the slow hook path (a full forward per tail call): %s", name, exc
            )
        else:
            logger.debug("layer %r: traced split, %d carried value(s)", name, len(batched))
            return LayerSplit(name, True, model, module, head_gm, tail_gm, batched, mutates, rs)
    else:
        logger.info(
            "layer %r: tracing disabled (allow_trace=False); using the slow hook path", name
        )
    return LayerSplit(name, False, model, module, reshape=rs)


class _restoring:
    """Context manager: every module's attributes as they were on entry, on exit -- and the
    contents of its hook registries (``_forward_hooks``...), which code run while tracing may
    fill in place (transformers >= 5 installs its output-recording hooks on the first forward
    and marks the model with an attribute; without this the mark would go and the hooks stay,
    and the next forward would install them twice)."""

    def __init__(self, saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
        self.saved = saved
        self.hooks = [
            (m, {k: dict(v) for k, v in attrs.items() if "hooks" in k and isinstance(v, dict)})
            for m, attrs in saved
        ]

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for m, attrs in self.saved:
            for k in set(vars(m)) - set(attrs):
                delattr(m, k)
            for k, v in attrs.items():
                if vars(m).get(k, _MISSING) is not v:
                    object.__setattr__(m, k, v)
        for m, registries in self.hooks:
            for k, content in registries.items():
                registry = vars(m)[k]
                if registry.keys() != content.keys():
                    registry.clear()
                    registry.update(content)


_MISSING = object()


def _concrete_split(model: nn.Module, module: nn.Module, name: str, rs: Reshape) -> LayerSplit | None:
    """The fx split by :class:`~camscope.core.concrete_trace.ConcreteSplitTracer` (control flow
    decided on zeros of the model's input size), used only if ``tail(head(x))`` equals
    ``model(x)`` on them (eval mode, flags restored); None otherwise."""
    from camscope.core.concrete_trace import ConcreteSplitTracer
    from camscope.core.reshape import model_input_size

    size = model_input_size(model) or (224, 224)
    example = probe_input(model, (1, 3, *size))
    # Tracing runs the ancestors' forward code with proxies: code that stores values on its
    # module (Hugging Face Swin sets self.window_size) must not leave them there.
    saved = [(m, dict(vars(m))) for m in model.modules()]
    try:
        with model_state_guard(model), torch.no_grad(), _restoring(saved):
            head_gm, tail_gm, batched, mutates = fx_split(
                model, module, name, lambda target, ancestors: ConcreteSplitTracer(target, ancestors, example)
            )
            split = LayerSplit(name, True, model, module, head_gm, tail_gm, batched, mutates, rs)
            ref = model(example)
            out = split.tail(*split.head(example))
            err = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            if not err <= 1e-5:
                raise NoTrace(f"the split differs from the model (relative error {err:.1e})")
            split._resolved.clear()  # decided again on the first real input
    except Exception as exc:  # noqa: BLE001 - any failure: the hook path
        logger.debug("layer %r: no concrete fx split: %s", name, exc)
        return None
    logger.info("layer %r: traced split (control flow of the model's forward decided on a %dx%d example)", name, *size)
    return split


# --------------------------------------------------------------------------- fx split
