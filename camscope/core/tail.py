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
  activations for the target output. Hooks are removed in ``finally``.

A module called several times per forward (e.g. the ``relu`` that torchvision's Bottleneck reuses
three times) is split at its **last** call in both paths: the activations are that call's output
and the tail is everything after it. Control flow is fixed at trace time, so split after setting
``model.eval()`` / ``model.train()`` as wanted; the split never changes training flags.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from camscope.core.layers import canonical_layer_name, get_module
from camscope.core.reshape import Reshape
from camscope.errors import CamscopeError, UsageError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- carry


def _map_tensors(value: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples / lists / dicts; other leaves pass as is."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _clone(value: Any) -> Any:
    return _map_tensors(value, lambda t: t.clone())


def _leading_dim(value: Any) -> int:
    """Batch size of a tensor (or of the first tensor in a nested structure)."""
    found: list[int] = []
    _map_tensors(value, lambda t: found.append(t.shape[0] if t.dim() else 1))
    if not found:
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return found[0]


@dataclass
class Carry:
    """What the tail needs besides the activations, for a batch of ``batch_size`` images.

    ``values``: traced split: values computed before the target and used after it; hook fallback:
    ``(x,)``. ``batched[i]`` says whether ``values[i]`` is derived from the input: its tensors
    whose first dimension is ``batch_size`` are gathered by the tail's ``index``; everything else
    (constants, non-tensors, tensors of another length) is passed as is. ``acts_shape`` is the
    target map's shape without the batch dimension (checked by ``tail``); ``target_call`` is the
    1-based call of the target module whose output the hook fallback substitutes. ``reshape`` is
    how the layer's output became the map, and ``kept`` the prefix tokens it set aside (B, t, C),
    gathered by the tail's ``index`` like the batched values.
    """

    values: tuple[Any, ...]
    batch_size: int
    batched: tuple[bool, ...]
    acts_shape: tuple[int, ...] | None = None
    target_call: int = 1
    reshape: Reshape | None = None
    kept: Tensor | None = None

    def select(self, index: Tensor | None, n: int) -> tuple[Any, ...]:
        """Values for ``n`` tail rows; row ``i`` belongs to image ``index[i]``.

        ``index=None`` means row ``i`` is image ``i`` (``n == batch_size``), or, for a single
        image, that all rows belong to it. With one image the values are broadcast with
        ``expand`` (no copy), otherwise gathered with ``index_select``.
        """
        index = self._check_index(index, n)
        gather = self._gatherer(index, n)
        return tuple(
            _map_tensors(v, gather) if batched else v
            for v, batched in zip(self.values, self.batched, strict=True)
        )

    def select_kept(self, index: Tensor | None, n: int) -> Tensor | None:
        """The prefix tokens for ``n`` tail rows (as :meth:`select`)."""
        if self.kept is None:
            return None
        return self._gatherer(self._check_index(index, n), n)(self.kept)

    def _check_index(self, index: Tensor | None, n: int) -> Tensor | None:
        b = self.batch_size
        if index is None:
            if n != b and b != 1:
                raise ValueError(f"tail got {n} rows for a batch of {b} images; pass index")
        else:
            index = torch.as_tensor(index)
            if (
                index.dim() != 1
                or index.shape[0] != n
                or index.is_floating_point()
                or index.dtype == torch.bool
            ):
                raise ValueError(
                    f"index must be an integer tensor of shape ({n},), got {index.dtype} {tuple(index.shape)}"
                )
            index = index.long()
            if n and (int(index.min()) < 0 or int(index.max()) >= b):
                raise ValueError(
                    f"index values must be in [0, {b}), got [{int(index.min())}, {int(index.max())}]"
                )
        return index

    def _gatherer(self, index: Tensor | None, n: int) -> Callable[[Tensor], Tensor]:
        b = self.batch_size

        def gather(t: Tensor) -> Tensor:
            if t.dim() == 0 or t.shape[0] != b or (index is None and n == b):
                return t
            if b == 1:
                return t.expand(n, *t.shape[1:])
            assert index is not None
            return t.index_select(0, index.to(t.device))

        return gather


# --------------------------------------------------------------------------- split


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
            carry = Carry(tuple(values), _leading_dim(x), self.carried_batched)
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
        n = _leading_dim(acts)
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
            out = _clone(out)
        values = tuple(
            _clone(v) if mutated else v
            for v, mutated in zip(values, self.tail_mutates[1:], strict=True)
        )
        return self.tail_module(out, *values)

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
                out, tuple(x.shape[-2:]), self.model, self.layer, batch=_leading_dim(x)
            )
            if rs.kind != "none" or self.reshape.kind != "auto":
                logger.info("layer %r: output %s -> map by reshape %s", self.layer, tuple(out.shape), rs)
            self._resolved[key] = rs
        return rs

    def resolve_reshape(self, input_size: Sequence[int]) -> Reshape:
        """The concrete reshape for inputs of ``input_size`` ((B,3,H,W) or (H,W)): decided by
        one no-grad, eval-mode head run on zeros the first time (training flags restored)."""
        from camscope.core.capture import model_state_guard
        from camscope.core.layers import probe_input

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
            captured = _clone(out)  # later in-place ops of the model must not alter it

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if calls == 0:
            raise UsageError(f"layer {self.layer!r} is never called in the model's forward pass")
        carry = Carry((x,), _leading_dim(x), (True,), target_call=calls)
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
            return _clone(acts)  # the model may modify the layer output in place

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
                head_gm, tail_gm, batched, mutates = _fx_split(model, module, name)
        except _NoTrace as exc:
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


# --------------------------------------------------------------------------- fx split


class _NoTrace(Exception):
    """The traced split is not possible; the message says why."""


class _Root(nn.Module):
    """Wrapper traced instead of the model, so tracer-created constants land here, not on it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Any:
        return self.m(x)


class _SplitTracer(torch.fx.Tracer):
    """Keeps the target module as one ``call_module`` node and traces through its ancestors."""

    def __init__(self, target: nn.Module, ancestors: list[nn.Module]) -> None:
        super().__init__()
        self._target = target
        self._ancestors = ancestors

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m is self._target:
            return True
        if any(m is a for a in self._ancestors):
            return False
        return super().is_leaf_module(m, module_qualified_name)


_META_METHODS = {"size", "dim", "ndimension", "numel", "nelement"}
_META_ATTRS = {"shape", "ndim", "dtype", "device"}
_META_OPS = {
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.mod,
    operator.neg,
    operator.pow,
}


def _is_meta(node: Node, meta: set[Node]) -> bool:
    """Shape arithmetic: cheap, non-tensor, and recomputed in the tail rather than carried."""
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is builtins.getattr:
            return len(node.args) >= 2 and node.args[1] in _META_ATTRS
        if node.target in _META_OPS:
            inputs = node.all_input_nodes
            return bool(inputs) and all(a in meta for a in inputs)
    return False


class _restoring:
    """Context manager: every module's attributes as they were on entry, on exit."""

    def __init__(self, saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
        self.saved = saved

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for m, attrs in self.saved:
            for k in set(vars(m)) - set(attrs):
                delattr(m, k)
            for k, v in attrs.items():
                if vars(m).get(k, _MISSING) is not v:
                    object.__setattr__(m, k, v)


_MISSING = object()


def _concrete_split(model: nn.Module, module: nn.Module, name: str, rs: Reshape) -> LayerSplit | None:
    """The fx split by :class:`~camscope.core.concrete_trace.ConcreteSplitTracer` (control flow
    decided on zeros of the model's input size), used only if ``tail(head(x))`` equals
    ``model(x)`` on them (eval mode, flags restored); None otherwise."""
    from camscope.core.capture import model_state_guard
    from camscope.core.concrete_trace import ConcreteSplitTracer
    from camscope.core.layers import probe_input
    from camscope.core.reshape import model_input_size

    size = model_input_size(model) or (224, 224)
    example = probe_input(model, (1, 3, *size))
    # Tracing runs the ancestors' forward code with proxies: code that stores values on its
    # module (Hugging Face Swin sets self.window_size) must not leave them there.
    saved = [(m, dict(vars(m))) for m in model.modules()]
    try:
        with model_state_guard(model), torch.no_grad(), _restoring(saved):
            head_gm, tail_gm, batched, mutates = _fx_split(
                model, module, name, lambda target, ancestors: ConcreteSplitTracer(target, ancestors, example)
            )
            split = LayerSplit(name, True, model, module, head_gm, tail_gm, batched, mutates, rs)
            ref = model(example)
            out = split.tail(*split.head(example))
            err = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            if not err <= 1e-5:
                raise _NoTrace(f"the split differs from the model (relative error {err:.1e})")
            split._resolved.clear()  # decided again on the first real input
    except Exception as exc:  # noqa: BLE001 - any failure: the hook path
        logger.debug("layer %r: no concrete fx split: %s", name, exc)
        return None
    logger.info("layer %r: traced split (control flow of the model's forward decided on a %dx%d example)", name, *size)
    return split


def _fx_split(
    model: nn.Module, module: nn.Module, name: str, make_tracer: Callable[..., torch.fx.Tracer] | None = None
) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, tuple[bool, ...], tuple[bool, ...]]:
    ancestors: list[nn.Module] = [model]
    parts = name.split(".")
    for i in range(1, len(parts)):
        ancestors.append(model.get_submodule(".".join(parts[:i])))
    root = _Root(model)
    try:
        graph = (make_tracer or _SplitTracer)(module, ancestors).trace(root)
    except Exception as exc:  # any failure to trace means: use hooks
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _NoTrace(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {msg})"
        ) from exc

    nodes = list(graph.nodes)
    calls = [
        n for n in nodes if n.op == "call_module" and root.get_submodule(str(n.target)) is module
    ]
    if not calls:
        raise _NoTrace("the layer is not a separate call in the traced graph")
    if len(calls) > 1:
        logger.info(
            "layer %r is called %d times per forward; splitting at its last call", name, len(calls)
        )
    target = calls[-1]
    t_idx = nodes.index(target)
    pos = {n: i for i, n in enumerate(nodes)}

    meta: set[Node] = set()
    for n in nodes[:t_idx]:
        if _is_meta(n, meta):
            meta.add(n)
    carried_set: set[Node] = set()
    remat: set[Node] = set()

    def need(a: Node) -> None:
        if pos[a] >= t_idx or a in remat or a in carried_set:
            return
        if a in meta:
            remat.add(a)
            for b in a.all_input_nodes:
                need(b)
        else:
            carried_set.add(a)

    for n in nodes[t_idx + 1 :]:
        for a in n.all_input_nodes:
            need(a)
    carried = sorted(carried_set, key=pos.__getitem__)

    depends: set[Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in depends for a in n.all_input_nodes):
            depends.add(n)

    head = torch.fx.Graph()
    env: dict[Node, Node] = {}
    for n in nodes[: t_idx + 1]:
        env[n] = head.node_copy(n, env.__getitem__)
    head.output((env[target], *(env[c] for c in carried)))

    tail = torch.fx.Graph()
    env = {target: tail.placeholder("acts")}
    for i, c in enumerate(carried):
        env[c] = tail.placeholder(f"carry_{i}")
    for n in sorted(remat, key=pos.__getitem__) + nodes[t_idx + 1 :]:
        env[n] = tail.node_copy(n, env.__getitem__)
    try:
        head.lint()
        tail.lint()
        head_gm = torch.fx.GraphModule(root, head, class_name="CamscopeHead")
        tail_gm = torch.fx.GraphModule(root, tail, class_name="CamscopeTail")
    except Exception as exc:
        raise _NoTrace(f"cannot build the split graphs ({type(exc).__name__}: {exc})") from exc
    batched = tuple(c in depends for c in carried)
    return head_gm, tail_gm, batched, _mutated_inputs(tail_gm)


# --------------------------------------------------------------------------- in-place analysis

_ALIAS_METHODS = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "permute",
    "transpose",
    "t",
    "expand",
    "expand_as",
    "narrow",
    "select",
    "__getitem__",
    "detach",
    "as_strided",
    "unbind",
    "split",
    "chunk",
    "movedim",
    "swapaxes",
    "to",
    "type",
    "type_as",
    "float",
    "double",
    "half",
    "cpu",
    "cuda",
    "requires_grad_",
}
_ALIAS_FUNCTIONS: set[Any] = {
    operator.getitem,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.swapaxes,
    torch.movedim,
    torch.narrow,
    torch.select,
    torch.split,
    torch.chunk,
    torch.unbind,
    torch.t,
    torch.detach,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}
_ALIAS_MODULES = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_INPLACE_OPERATORS: set[Any] = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.imatmul,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.setitem,
}
_INPLACE_DUNDERS = {
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__ifloordiv__",
    "__imod__",
    "__ipow__",
    "__iand__",
    "__ior__",
    "__ixor__",
    "__setitem__",
}


def _first_arg(node: Node) -> list[Node]:
    first = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
    return [first] if isinstance(first, Node) else []


def _has_inplace_flag(node: Node) -> bool:
    if node.kwargs.get("inplace") is True:
        return True
    try:
        sig = inspect.signature(node.target)  # type: ignore[arg-type]
        if "inplace" not in sig.parameters:
            return False
        return sig.bind(*node.args, **node.kwargs).arguments.get("inplace") is True
    except (TypeError, ValueError):
        return False


def _mutated_args(node: Node, modules: dict[str, nn.Module]) -> list[Node]:
    """Nodes whose tensors ``node`` may modify in place (conservative)."""
    if node.op == "call_module":
        return (
            _first_arg(node)
            if getattr(modules.get(str(node.target)), "inplace", False) is True
            else []
        )
    if node.op == "call_method":
        name = str(node.target)
        inplace = (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS
        return _first_arg(node) if inplace and name != "requires_grad_" else []
    if node.op == "call_function":
        out = [v for k, v in node.kwargs.items() if k == "out" and isinstance(v, Node)]
        name = getattr(node.target, "__name__", "")
        if (
            node.target in _INPLACE_OPERATORS
            or (name.endswith("_") and not name.endswith("__"))
            or _has_inplace_flag(node)
        ):
            return _first_arg(node) + out
        return out
    return []


def _returns_alias(node: Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ALIAS_MODULES)
    if node.op == "call_method":
        return node.target in _ALIAS_METHODS
    if node.op == "call_function":
        return node.target in _ALIAS_FUNCTIONS
    return False


def _mutated_inputs(gm: torch.fx.GraphModule) -> tuple[bool, ...]:
    """Per placeholder of ``gm``: may the graph modify it (or a view of it) in place?"""
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    aliases: dict[Node, set[int]] = {p: {i} for i, p in enumerate(placeholders)}
    mutated = [False] * len(placeholders)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        written = _mutated_args(node, modules)
        for a in written:
            for i in aliases.get(a, ()):
                mutated[i] = True
        if written or _returns_alias(node, modules):  # in-place ops return their input too
            src = set().union(*(aliases.get(a, set()) for a in _first_arg(node)))
            if src:
                aliases[node] = src
    return tuple(mutated)
