"""The traced split: ``torch.fx`` traces the model with the target module as one leaf call and
cuts the graph at that call into a head graph (returning the layer's output and the values the
rest needs) and a tail graph; cheap shape arithmetic is recomputed in the tail, and the tail's
in-place writes to its inputs are found (the caller clones those inputs)."""

from __future__ import annotations

import builtins
import inspect
import logging
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from camscope.errors import first_line

__all__ = ["NoTrace", "fx_split"]

logger = logging.getLogger(__name__)


class NoTrace(Exception):
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


def fx_split(
    model: nn.Module, module: nn.Module, name: str, make_tracer: Any = None
) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, tuple[bool, ...], tuple[bool, ...]]:
    ancestors: list[nn.Module] = [model]
    parts = name.split(".")
    for i in range(1, len(parts)):
        ancestors.append(model.get_submodule(".".join(parts[:i])))
    root = _Root(model)
    try:
        graph = (make_tracer or _SplitTracer)(module, ancestors).trace(root)
    except Exception as exc:  # any failure to trace means: use hooks
        raise NoTrace(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {first_line(exc, default='').split('. ')[0]})"
        ) from exc

    nodes = list(graph.nodes)
    calls = [
        n for n in nodes if n.op == "call_module" and root.get_submodule(str(n.target)) is module
    ]
    if not calls:
        raise NoTrace("the layer is not a separate call in the traced graph")
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
        raise NoTrace(f"cannot build the split graphs ({type(exc).__name__}: {exc})") from exc
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
