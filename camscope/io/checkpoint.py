"""Loading model checkpoints safely: ``torch.load(weights_only=True)``, refusing pickles.

A checkpoint that needs arbitrary unpickling (custom classes, functions, numpy objects...)
could run code when loaded; it is refused with `UnsafeCheckpointError` unless the caller
explicitly trusts it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from camscope.errors import UnsafeCheckpointError, WeightsError

logger = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the state dict, tried in this order.
_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
)
# Prefixes added by wrappers: DataParallel/DistributedDataParallel, torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def load_checkpoint(
    path: str | Path,
    *,
    trust: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load a state dict from a checkpoint file.

    Uses ``torch.load(weights_only=True)``; a file needing arbitrary unpickling raises
    `UnsafeCheckpointError` (nothing in it runs). With ``trust=True`` such a file is then
    unpickled fully (a warning is logged) - only for files from a trusted source; files that
    load safely never take that path. A dict wrapping the state
    dict (``{"state_dict": ...}``, ``{"model": ...}``, ...) is unwrapped, a pickled
    ``nn.Module`` (trusted only) gives its ``state_dict()``, and a prefix ``module.`` or
    ``_orig_mod.`` shared by all keys is stripped. Non-tensor entries are dropped with a
    warning. Safetensors files (``.safetensors``, or any file whose header is a safetensors
    header) are loaded with the `safetensors` package, never unpickled.

    Raises `WeightsError` (one line naming the file) when the file is missing, unreadable,
    not a checkpoint, corrupt, or holds no state dict.
    """
    p = Path(path)
    _check_file(p)
    if p.suffix.lower() == ".safetensors" or _looks_safetensors(p):
        obj: Any = _load_safetensors(p, map_location)
    else:
        obj = _torch_load(p, trust=trust, map_location=map_location)
    return _extract_state_dict(obj, p)


def _check_file(p: Path) -> None:
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        raise WeightsError(f"{p}: checkpoint file not found") from e
    except OSError as e:
        raise WeightsError(f"{p}: cannot read the checkpoint file ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"{p}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise WeightsError(f"{p}: empty file (0 bytes), not a checkpoint")


def _torch_load(p: Path, *, trust: bool, map_location: str | torch.device) -> Any:
    try:
        return _guarded_load(p, weights_only=True, map_location=map_location)
    except UnsafeCheckpointError:
        if not trust:
            raise
    # Only reached with trust=True for a file that the safe loader refused.
    logger.warning(
        "%s: loading with full unpickling (--trust-checkpoint); this can run code from the file",
        p,
    )
    return _guarded_load(p, weights_only=False, map_location=map_location)


def _guarded_load(p: Path, *, weights_only: bool, map_location: str | torch.device) -> Any:
    """`torch.load` with every failure turned into a one-line `WeightsError`."""
    try:
        return torch.load(p, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        message = str(e)
        if weights_only and "Weights only load failed" in message:
            reason = _unsafe_reason(message)
            if reason is not None or _is_zip(p):
                raise UnsafeCheckpointError(
                    f"{p}: refused to load: the file needs arbitrary unpickling "
                    f"({reason or 'an unsupported pickle instruction'}), which can run code; "
                    "re-save it as a plain state dict, or pass --trust-checkpoint "
                    "if you trust its source"
                ) from None
        raise WeightsError(f"{p}: {_corrupt_reason(p, e)}") from None
    except PermissionError as e:
        raise WeightsError(f"{p}: permission denied (cannot read the checkpoint file)") from e
    except MemoryError as e:
        raise WeightsError(f"{p}: not enough memory to load the checkpoint") from e
    except RuntimeError as e:
        if "deserialize object on" in str(e):  # e.g. CUDA tensors, no CUDA here
            raise WeightsError(
                f"{p}: cannot place the tensors on {map_location} ({_short(str(e))})"
            ) from e
        raise WeightsError(f"{p}: {_corrupt_reason(p, e)}") from e
    except Exception as e:
        raise WeightsError(f"{p}: {_corrupt_reason(p, e)}") from e


def _unsafe_reason(message: str) -> str | None:
    """What the weights-only unpickler refused, from torch's (long, multi-line) message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return f"it wants the global '{m.group(1)}'"
    m = re.search(
        r"(Trying to call reduce for unrecognized function [^\s]+|Can only build [^\n]*)", message
    )
    if m:
        return _short(m.group(1))
    return None


def _corrupt_reason(p: Path, e: BaseException) -> str:
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if not head.startswith((b"PK\x03\x04", b"\x80")) and not _is_zip(p):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)"
    detail = (
        "" if isinstance(e, pickle.UnpicklingError) else f" ({type(e).__name__}: {_short(str(e))})"
    )
    return f"cannot load the checkpoint: the file may be truncated or corrupt{detail}"


def _is_zip(p: Path) -> bool:
    try:
        return zipfile.is_zipfile(p)
    except OSError:
        return False


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_safetensors(p: Path) -> bool:
    """A safetensors file starts with the 8-byte little-endian length of a JSON header."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(10)
        size = os.stat(p).st_size
    except OSError:
        return False
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:10] in (b"{}", b'{"')


def _load_safetensors(p: Path, map_location: str | torch.device) -> Any:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise WeightsError(
            f"{p}: is a safetensors file; install the 'safetensors' package to load it "
            '(pip install safetensors, or pip install "camscope[timm]")'
        ) from e
    try:
        return load_file(str(p), device=str(map_location))
    except Exception as e:
        raise WeightsError(f"{p}: cannot load the safetensors file ({_short(str(e))})") from e


def _extract_state_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):  # nested wrappers, e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj), None)
        if not isinstance(inner, (Mapping, torch.nn.Module)):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{p}: does not contain a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8])) or "none"
        raise WeightsError(
            f"{p}: does not contain a state dict of tensors (top-level keys: {keys})"
        )
    dropped = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        logger.warning(
            "%s: ignoring %d non-tensor entries: %s", p, len(dropped), ", ".join(dropped[:8])
        )
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                stripped = True
    return tensors
