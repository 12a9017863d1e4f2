"""CUDA: every method on the GPU equals the CPU; reduced precision; no per-channel host syncs.

Skipped where CUDA is not available (CI has no GPU); run on a GPU machine with
``python -m pytest tests/core/test_cuda.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from camscope.core.runtime import SpeedSettings
from camscope.engine import CamEngine
from camscope.methods.registry import methods_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_matmul():
    """TF32 off: the GPU must reproduce the CPU's float32 arithmetic to rounding."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(device)


@pytest.mark.parametrize("method", methods_for())
@pytest.mark.parametrize("layer", ["features", "block.conv2"])
def test_cuda_equals_cpu(method: str, layer: str, tiny_cnn_dead, residual_cnn, images) -> None:
    model = tiny_cnn_dead if layer == "features" else residual_cnn
    x = images(3, size=32, seed=5)
    kw = dict(methods=[method], smoothing=["eigen", "aug"])
    cpu = CamEngine(model, layer, **kw)(x, top_k=2)
    gpu_model = _copy_to(model, CUDA)
    gpu = CamEngine(gpu_model, layer, **kw)(x.to(CUDA), top_k=2)
    assert torch.equal(cpu.targets, gpu.targets)
    torch.testing.assert_close(gpu.probabilities, cpu.probabilities, atol=1e-5, rtol=1e-4)
    assert set(gpu.maps) == set(cpu.maps)
    for name, m in cpu.maps.items():
        assert gpu.maps[name].device.type == "cpu"  # results come back to the host
        torch.testing.assert_close(gpu.maps[name], m, atol=2e-4, rtol=1e-3, msg=name)
    # The model stays where it was, in the mode it was in.
    assert all(p.device.type == CUDA.type for p in gpu_model.parameters())
    assert not gpu_model.training


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_reduced_precision_close_to_fp32(method: str, precision: str, resnet18, images) -> None:
    model = _copy_to(resnet18, CUDA)
    x = images(2, size=96, seed=3).to(CUDA)
    fp32 = CamEngine(model, "layer4", methods=[method])(x).maps[method]
    low = CamEngine(model, "layer4", methods=[method], speed=SpeedSettings(precision=precision))(x).maps[method]
    for a, b in zip(fp32.flatten(1), low.flatten(1), strict=True):
        corr = float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
        assert corr >= 0.99, (method, precision, corr)
    # Reduced precision changes the numbers a little, not nothing: autocast is in effect.
    assert not torch.equal(fp32, low)


def _count_syncs(fn) -> int:
    """Number of host synchronisations ``fn`` makes, from torch's sync debug mode."""
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(old)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "scorecam-logit-softmax"])
def test_host_syncs_do_not_grow_with_channels(method: str, make_tiny_cnn, images) -> None:
    """Syncs are per view (finding live channels, distinct masks), never per channel or batch."""
    x = images(2, size=32, seed=2).to(CUDA)
    counts = {}
    for channels in (8, 64):
        model = make_tiny_cnn(channels=channels, dead=(0, 3)).to(CUDA)
        engine = CamEngine(model, "features", methods=[method], speed=SpeedSettings(batch_size=4))
        engine(x)  # warm-up: lazy initialisation may sync once
        counts[channels] = _count_syncs(lambda engine=engine: engine(x))
    assert counts[8] == counts[64], counts


def test_memory_returns_to_baseline(resnet18, images) -> None:
    """Nothing of a call stays on the GPU: the channels-last copy, captures and buffers go."""
    model = _copy_to(resnet18, CUDA)
    engine = CamEngine(model, "layer4", methods=["gradcam", "ablationcam", "scorecam"])
    x = images(2, size=64, seed=4).to(CUDA)
    engine(x)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        result = engine(x)
        del result
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= base + (1 << 20)


def test_cli_on_cuda_matches_cpu(tmp_path: Path, photos) -> None:
    import torchvision

    from camscope.cli import main

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        rc = main([
            "explain", str(photos.dir), "--out", str(out), "--model", "resnet18", "--weights",
            str(weights), "--methods", "gradcam,ablationcam,scorecam", "--device", device,
            "--quiet", "--no-figures",
        ])
        assert rc == 0
        outs[device] = out
    npys = sorted(p.relative_to(outs["cpu"]) for p in outs["cpu"].rglob("*.npy"))
    assert len(npys) == 3 * len(photos.sizes)
    for rel in npys:
        a, b = np.load(outs["cpu"] / rel), np.load(outs["cuda"] / rel)
        corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        assert corr > 0.9999, (rel, corr)
