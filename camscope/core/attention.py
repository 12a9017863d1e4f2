"""Every block's attention probabilities, read during a forward without changing its output.

The attention methods (rollout, Chefer et al.'s rule, LeGrad; :mod:`camscope.methods.attention`)
need, for every transformer block ``l``, the post-softmax attention probabilities
``P_l = softmax(Q K^T * scale + bias)`` (B, heads, N, N) and, for some, their gradients. Models
rarely keep them: torchvision's ``nn.MultiheadAttention`` is called with ``need_weights=False``
(a fused kernel), timm's ``Attention`` and Hugging Face's ``sdpa`` attention call
``F.scaled_dot_product_attention``, which never materialises ``P``.

:func:`attention_capture` reads them in one place for all three families, without knowing any
of their classes, with a ``TorchFunctionMode`` active during the forward:

* ``F.scaled_dot_product_attention(q, k, v, attn_mask, ..., scale)`` (timm fused, Hugging Face
  sdpa, and what ``nn.MultiheadAttention`` runs): ``P`` is computed from ``q`` and ``k`` (with
  the same mask / relative-position bias and scale);
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``): ``P`` per head from the same
  call with ``need_weights=True, average_attn_weights=False``;
* ``softmax`` inside an attention module (timm with ``fused_attn=False``, Hugging Face
  ``eager``): its output is ``P`` itself.

The model's output is unchanged *exactly*: the call's own result is returned (computed as the
model computes it). When gradients are enabled, the result is ``out + (e - e.detach())`` where
``e = P @ V`` (the same attention, explicitly from ``P``): forward value ``out`` bit for bit,
while the backward runs through ``P``, so ``d y / d P_l`` is well defined. Prefix tokens
(class, distillation, register tokens) stay in ``P``; :func:`token_grid` says how many there
are and the patch grid, as :class:`camscope.core.reshape.Reshape` reads them for a layer.

Hooks (to know which calls happen inside an attention module, and to read block outputs) are
registered on entry and removed in ``finally``; the model is never modified.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camscope.errors import UsageError

__all__ = [
    "AttentionRecord",
    "attention_capture",
    "attention_modules",
    "attention_refusal",
    "readout",
    "readout_refusal",
    "token_grid",
]

_SOFTMAX = (F.softmax, torch.softmax, Tensor.softmax)


def _is_attention(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return isinstance(m, nn.MultiheadAttention) or ("attention" in name and "pool" not in name)


def _is_windowed(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return "window" in name or "swin" in name


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost attention modules of ``model`` in registration order, (name, module):
    ``nn.MultiheadAttention`` and modules whose class name says ``Attention`` (not pooling),
    leaving out those nested in another one (Hugging Face's ``ViTAttention`` around its self
    attention)."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if not name or not _is_attention(m):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, m))
    return found


def attention_refusal(model: nn.Module) -> str | None:
    """Why the attention methods cannot explain ``model`` (one line), or None when they can: it
    needs self-attention over all tokens (a ViT, DeiT, BEiT...), not windows (Swin)."""
    mods = attention_modules(model)
    label = type(model).__name__
    if not mods:
        return f"it needs a vision transformer's attention blocks and {label} has none"
    windowed = [n for n, m in mods if _is_windowed(m)]
    if windowed:
        return (
            f"it needs attention between all tokens and {label} attends within windows "
            f"({type(dict(mods)[windowed[0]]).__name__})"
        )
    return None


@dataclass
class AttentionRecord:
    """What :func:`attention_capture` read during the forwards in its context.

    Attributes:
        probs: per attention call, in call order, (B, heads, N, N) post-softmax probabilities;
            part of the autograd graph of the output when gradients were enabled.
        blocks: per attention call, the output tokens (B, N, C) of the block around it (when
            ``blocks=True``), also in the graph.
        modules: the attention module of each entry of ``probs``.
    """

    probs: list[Tensor] = field(default_factory=list)
    blocks: list[Tensor] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)


def _explicit_probs(q: Tensor, k: Tensor, mask: Any, is_causal: bool, scale: float | None) -> Tensor:
    """softmax(q k^T * scale + mask) as ``F.scaled_dot_product_attention`` defines it."""
    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        n, m = s.shape[-2:]
        causal = torch.ones(n, m, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~causal, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, dim=-1)


def _through(out: Tensor, explicit: Tensor) -> Tensor:
    """``out`` exactly, with the gradient of ``explicit`` (the same value computed another way)."""
    return out.detach() + (explicit - explicit.detach())


class _Mode(TorchFunctionMode):
    def __init__(self, record: AttentionRecord, state: dict[str, Any]) -> None:
        super().__init__()
        self.record = record
        self.state = state

    def _take(self, probs: Tensor) -> None:
        st = self.state
        if st["depth"] > 0 and st["taken"]:
            return  # one per attention module call (the first)
        self.record.probs.append(probs)
        self.record.modules.append(st["module"] or "<attention>")
        st["taken"] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(func, args, kwargs)
        if func is F.multi_head_attention_forward:
            return self._mha(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX and self.state["depth"] > 0 and isinstance(out, Tensor) and out.dim() == 4:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                self._take(out)
        return out

    def _sdpa(self, func, args, kwargs):  # noqa: ANN001
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, args, strict=False)) | kwargs
        q, k, v = bound["query"], bound["key"], bound["value"]
        if bound.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        with torch.no_grad():
            out = func(*args, **kwargs)
        with torch.set_grad_enabled(grad):
            p = _explicit_probs(q, k, bound.get("attn_mask"), bool(bound.get("is_causal")), bound.get("scale"))
            self._take(p)
            if not grad:
                return out
            return _through(out, p.to(v.dtype) @ v)

    def _mha(self, func, args, kwargs):  # noqa: ANN001
        grad = torch.is_grad_enabled()
        with torch.no_grad():
            out, weights = func(*args, **kwargs)
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        a.update(need_weights=True, average_attn_weights=False)
        with torch.set_grad_enabled(grad):
            _, p = func(*bound.args, **bound.kwargs)
            if p.dim() == 3:  # unbatched call: (heads, N, N)
                p = p[None]
            self._take(p)
            if not grad:
                return out, weights
            return _through(out, _mha_from_probs(p, a)), weights


def _mha_from_probs(p: Tensor, a: dict[str, Any]) -> Tensor:
    """``F.multi_head_attention_forward``'s output (L, B, E) (or (L, E) unbatched) recomputed
    from its per-head probabilities ``p`` (B, heads, L, S): out_proj(P V)."""
    from camscope.errors import UsageError

    if a["bias_k"] is not None or a["bias_v"] is not None or a["add_zero_attn"] or a.get("static_v") is not None:
        raise UsageError("attention capture: nn.MultiheadAttention with bias_k/bias_v/add_zero_attn is not supported")
    value = a["value"]
    unbatched = value.dim() == 2
    if unbatched:
        value = value[:, None]
    e = a["embed_dim_to_check"]
    if a["use_separate_proj_weight"]:
        w_v, b_v = a["v_proj_weight"], None if a["in_proj_bias"] is None else a["in_proj_bias"][2 * e :]
    else:
        w_v = a["in_proj_weight"][2 * e :]
        b_v = None if a["in_proj_bias"] is None else a["in_proj_bias"][2 * e :]
    s_len, b, _ = value.shape
    heads = a["num_heads"]
    v = F.linear(value, w_v, b_v).reshape(s_len, b * heads, e // heads).transpose(0, 1)
    l_len = p.shape[-2]
    x = (p.reshape(b * heads, l_len, s_len).to(v.dtype) @ v).transpose(0, 1).reshape(l_len, b, e)
    x = F.linear(x, a["out_proj_weight"], a["out_proj_bias"])
    return x[:, 0] if unbatched else x


@contextlib.contextmanager
def attention_capture(model: nn.Module, *, blocks: bool = False) -> Iterator[AttentionRecord]:
    """Record every attention block's probabilities during the forwards run inside the context.

    ``blocks``: also record the output tokens of the block around each attention module (its
    parent module), for LeGrad's per-layer read-out. Forwards run with gradients enabled give
    probabilities (and block outputs) in the graph of the output; the output itself is the
    model's, exactly (module docstring). Raises UsageError (one line) for a model without
    attention modules. Hooks are removed in ``finally``.
    """
    why = attention_refusal(model)
    if why:
        raise UsageError(f"attention capture: {why}")
    mods = attention_modules(model)
    record = AttentionRecord()
    state: dict[str, Any] = {"depth": 0, "taken": False, "module": None}
    handles = []

    def pre(name: str) -> None:
        if state["depth"] == 0:
            state["taken"], state["module"] = False, name
        state["depth"] += 1

    def post(name: str) -> None:
        state["depth"] -= 1
        if state["depth"] == 0 and not state["taken"]:
            raise UsageError(
                f"attention capture: {name} ({type(dict(mods)[name]).__name__}) computed no attention "
                "camscope can read (scaled_dot_product_attention, nn.MultiheadAttention or a softmax)"
            )

    def block_out(_m: nn.Module, _i: Any, out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(t, Tensor):
            record.blocks.append(t)

    try:
        for name, m in mods:
            handles.append(m.register_forward_pre_hook(lambda _m, _i, _n=name: pre(_n)))
            handles.append(m.register_forward_hook(lambda _m, _i, _o, _n=name: post(_n)))
            if blocks:
                parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                handles.append(parent.register_forward_hook(block_out))
        with _Mode(record, state):
            yield record
    finally:
        for h in handles:
            h.remove()


def token_grid(model: nn.Module, n_tokens: int, input_size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, (h, w) patch grid) of ``n_tokens`` attention tokens for an input of
    ``input_size``, read as :class:`camscope.core.reshape.Reshape` reads a layer's tokens (the
    model's patch size and prefix count, else a guess from the token count)."""
    from camscope.core.reshape import Reshape

    probe = torch.empty(1, n_tokens, 1)
    rs = Reshape("tokens").resolve(probe, input_size, model, "the attention", batch=1, quiet=True)
    assert rs.grid is not None and rs.skip is not None
    return rs.skip, rs.grid


# --------------------------------------------------------------------------- read-out (LeGrad)


def _readout_parts(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]] | str:
    """(norms applied in order, heads averaged) of the model's classifier read-out, or why not."""
    from torch.nn import Identity

    cls = type(model)
    if cls.__name__ == "VisionTransformer" and cls.__module__.startswith("torchvision."):
        return [model.encoder.ln], [model.heads]
    hf = getattr(model, "hf", None)
    if isinstance(hf, nn.Module) and hasattr(hf, "config"):
        base = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
        norms = [getattr(base, "layernorm", None), getattr(getattr(base, "pooler", None), "layernorm", None)]
        heads = [getattr(hf, n, None) for n in ("classifier", "cls_classifier", "distillation_classifier")]
        norms = [n for n in norms if isinstance(n, nn.Module)]
        heads = [h for h in heads if isinstance(h, nn.Module)]
        if heads:
            return norms, heads
        return f"{type(hf).__name__} has no classifier head camscope knows"
    if hasattr(model, "forward_head") and isinstance(getattr(model, "head", None), nn.Module):  # timm
        norms = [getattr(model, n, None) for n in ("norm", "fc_norm")]
        heads = [getattr(model, n, None) for n in ("head", "head_dist")]
        return (
            [n for n in norms if isinstance(n, nn.Module) and not isinstance(n, Identity)],
            [h for h in heads if isinstance(h, nn.Module)],
        )
    return f"camscope knows no classifier read-out of {cls.__name__} (torchvision / timm ViTs, Hugging Face ViT/DeiT/BEiT)"


def readout_refusal(model: nn.Module) -> str | None:
    """Why LeGrad cannot explain ``model`` (attention, or a known read-out missing), or None."""
    why = attention_refusal(model)
    if why:
        return why
    parts = _readout_parts(model)
    return parts if isinstance(parts, str) else None


def readout(model: nn.Module, tokens: Tensor) -> Tensor:
    """The classifier applied to intermediate ``tokens`` (B, N, C) as LeGrad does (Bousselham et
    al. 2024, reference code, and torch-cam's ``LeGrad``): mean over all tokens, the model's final
    norm(s), its head (the mean of both heads for a distilled DeiT) -> (B, classes)."""
    parts = _readout_parts(model)
    if isinstance(parts, str):
        raise UsageError(f"LeGrad: {parts}")
    norms, heads = parts
    x = tokens.mean(dim=1)
    for norm in norms:
        x = norm(x)
    outs = [h(x) for h in heads]
    return outs[0] if len(outs) == 1 else torch.stack(outs).mean(dim=0)
