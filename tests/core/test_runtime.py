"""The Runtime's private model copy (channels-last, optionally compiled) and the batch defaults.

- the plain copy is made per call, so it never goes stale; the compiled copy is reused between
  calls and rebuilt whenever the model changes, by any route (in-place under no_grad, an
  optimizer step, ``.data`` edits, ``load_state_dict``, attributes, hooks, patched methods);
- ``compile=True`` gives the maps of the uncompiled run, pads short batches so that one shape
  is compiled, and falls back to uncompiled forwards, with a warning, when compiling fails;
- the TorchScript-frozen copy (default on CPU at fp32, and at bf16 on CPUs with bf16
  instructions, for models of any source) gives the eager maps, is kept while the model
  is unchanged and rebuilt when it changes, is not used for models with hooks or bf16 on CPUs
  without bf16 instructions, and falls back to eager forwards, with a warning, when tracing
  fails or its logits disagree (first batch, or the first batch of a later call);
- per-device batch defaults; the warning for bf16 on a CPU without bf16 instructions.
"""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch

from camscope.core.runtime import Runtime, SpeedSettings, model_state_key
from camscope.engine import CamEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def _scorecam(model, x, **speed) -> torch.Tensor:
    return CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(**speed))(x).maps["scorecam"]


def _changes():
    def in_place(m):
        with torch.no_grad():
            m.features[3].weight.mul_(-1.5)

    def via_data(m):
        m.features[3].weight.data.mul_(-1.5)

    def optimizer_step(m):
        opt = torch.optim.SGD(m.parameters(), lr=5.0)
        loss = m(torch.randn(2, 3, 32, 32)).pow(2).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def load_state(m):
        other = copy.deepcopy(m)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.3 * torch.randn_like(p))
        m.load_state_dict(other.state_dict())

    return {"in_place": in_place, "via_data": via_data, "optimizer_step": optimizer_step, "load_state": load_state}


@pytest.mark.parametrize("change", list(_changes()))
def test_plain_copy_never_goes_stale(change, make_tiny_cnn, images) -> None:
    """The channels-last copy is made per engine call: a weight change shows in the next call."""
    model = make_tiny_cnn(seed=3)
    x = images(2, seed=7)
    engine = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(channels_last=True, freeze=False))
    before = engine(x).maps["scorecam"]
    copy_made = engine.runtime.forward_mode
    assert copy_made.name == "channels_last"
    _changes()[change](model)
    model.eval()
    after = engine(x).maps["scorecam"]
    assert engine.runtime.forward_mode is not copy_made  # made per call, never kept
    torch.testing.assert_close(after, _scorecam(model, x, channels_last=False), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)


def _more_changes():
    def plain_attribute(m):
        m.features[0].padding = (2, 2)

    def new_hook(m):
        m.features[0].register_forward_hook(lambda mod, inp, out: out * 2)

    def patched_forward(m):
        m.features[1].forward = lambda x: x.abs()

    return {"plain_attribute": plain_attribute, "new_hook": new_hook, "patched_forward": patched_forward}


@pytest.mark.parametrize("change", [*_changes(), *_more_changes()])
def test_state_key_sees_every_change(change, make_tiny_cnn) -> None:
    """What decides whether the compiled copy is rebuilt: stable while nothing changes, different
    after any change to weights, buffers, plain attributes, hooks or patched methods."""
    model = make_tiny_cnn(seed=3)
    key = model_state_key(model)
    assert key is not None
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert model_state_key(model) == key
    {**_changes(), **_more_changes()}[change](model)
    model.eval()
    assert model_state_key(model) != key


def test_user_model_is_never_converted(make_tiny_cnn, images) -> None:
    model = make_tiny_cnn()
    _scorecam(model, images(1), channels_last=True)
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
    reason="torch.compile on CPU needs a C++ compiler",
)
def test_compiled_equals_uncompiled_with_padding(tiny_cnn_dead, images) -> None:
    """9 live channels in batches of 4: the last batch (1 mask) is padded to the compiled 4."""
    x = images(2, seed=11)
    eager = _scorecam(tiny_cnn_dead, x, batch_size=4)
    engine = CamEngine(tiny_cnn_dead, "features", methods=["scorecam"], speed=SpeedSettings(batch_size=4, compile=True))
    compiled = engine(x).maps["scorecam"]
    assert engine.runtime.compiled
    kept = engine.runtime.forward_mode
    assert kept.name == "compiled" and kept.batch == 4
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(engine(x).maps["scorecam"], compiled)
    assert engine.runtime.forward_mode is kept  # unchanged model: not compiled again
    # A batch longer than the compiled one is split, a shorter one padded: same logits.
    rt = engine.runtime
    with torch.inference_mode():
        xs = images(9, seed=3)
        torch.testing.assert_close(rt.forward(xs), tiny_cnn_dead(xs), atol=1e-5, rtol=1e-4)


def test_compile_failure_falls_back(monkeypatch, tiny_cnn_dead, images, caplog) -> None:
    def broken_compile(model, **_kw):
        def fail(*_a, **_k):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = images(2, seed=4)
    engine = CamEngine(tiny_cnn_dead, "features", methods=["scorecam"], speed=SpeedSettings(compile=True))
    with caplog.at_level(logging.WARNING, logger="camscope.core.runtime"):
        maps = engine(x).maps["scorecam"]
    assert not engine.runtime.compiled
    assert any("torch.compile failed" in r.getMessage() and "no C++ compiler" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(maps, _scorecam(tiny_cnn_dead, x), atol=1e-6, rtol=1e-5)


def test_compile_does_not_swallow_out_of_memory(monkeypatch, tiny_cnn_dead, images) -> None:
    def oom_compile(model, **_kw):
        def fail(*_a, **_k):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return fail

    monkeypatch.setattr(torch, "compile", oom_compile)
    with pytest.raises(torch.OutOfMemoryError):
        _scorecam(tiny_cnn_dead, images(1), compile=True)


def test_batch_defaults_per_device(tiny_cnn) -> None:
    rt = Runtime(tiny_cnn, split=None)
    assert rt.batch({"cpu": 8, "cuda": 128}) == 8
    assert rt.batch(5) == 5
    rt = Runtime(tiny_cnn, split=None, device=torch.device("cuda"))  # device type only; nothing runs
    assert rt.batch({"cpu": 8, "cuda": 128}) == 128
    assert rt.batch({"cpu": 8}) == 8
    assert Runtime(tiny_cnn, split=None, speed=SpeedSettings(batch_size=3)).batch({"cpu": 8}) == 3


# --------------------------------------------------------------------------- frozen copy


def _sequential(seed: int = 0) -> torch.nn.Module:
    """Built from torch.nn modules only (so frozen by default); target layer ``features``."""
    nn = torch.nn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential()
        model.add_module(
            "features",
            nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
            ),
        )
        model.add_module("pool", nn.AdaptiveAvgPool2d(1))
        model.add_module("flat", nn.Flatten())
        model.add_module("fc", nn.Linear(6, 4))
        with torch.no_grad():  # non-trivial batch-norm statistics, so that folding them matters
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
            model.fc.weight.mul_(4.0)
    return model.eval()


def test_frozen_by_default_equals_eager_and_is_kept(images) -> None:
    model = _sequential()
    x = images(2, seed=5)
    eager = _scorecam(model, x, freeze=False)
    engine = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(batch_size=4))
    frozen = engine(x).maps["scorecam"]
    rt = engine.runtime
    kept = rt.forward_mode
    assert kept.name == "frozen" and isinstance(kept.module, torch.jit.ScriptModule)
    assert kept.batch == 4
    torch.testing.assert_close(frozen, eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(engine(x).maps["scorecam"], frozen)
    assert rt.forward_mode is kept  # unchanged model: not traced again
    # Longer and shorter batches than the traced one: the frozen graph takes them (checked
    # against the model once), same logits.
    with torch.inference_mode():
        for n in (9, 1):
            xs = images(n, seed=n)
            torch.testing.assert_close(rt.forward(xs), model(xs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change", ["weights", "bn_stats"])
def test_frozen_copy_follows_model_changes(change, images) -> None:
    model = _sequential()
    x = images(2, seed=6)
    engine = CamEngine(model, "features", methods=["scorecam"])
    before = engine(x).maps["scorecam"]
    kept = engine.runtime.forward_mode
    assert kept.name == "frozen"
    with torch.no_grad():
        if change == "weights":
            model.fc.weight.mul_(-1.0)
        else:
            model.features[4].running_mean.add_(0.7)
    after = engine(x).maps["scorecam"]
    assert engine.runtime.forward_mode is not kept
    torch.testing.assert_close(after, _scorecam(model, x, freeze=False), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)


def test_not_frozen_with_hooks_but_frozen_for_any_model_source(tiny_cnn_dead, images) -> None:
    x = images(1, seed=2)
    hooked = _sequential()
    handle = hooked.features[0].register_forward_hook(lambda m, i, out: out * 0.5)
    try:
        engine = CamEngine(hooked, "features", methods=["scorecam"])
        maps = engine(x).maps["scorecam"]
        assert engine.runtime.mode == "channels_last"
        # The hook acts in every forward, so the maps are those of the hooked model.
        torch.testing.assert_close(maps, _scorecam(hooked, x, freeze=False, channels_last=False))
    finally:
        handle.remove()
    # A model of custom modules (TinyCNN, a test class: as timm, Hugging Face or an import
    # path) and a model without an fx split are frozen by default too (logits checked).
    custom = CamEngine(tiny_cnn_dead, "features", methods=["scorecam"])
    frozen = custom(x).maps["scorecam"]
    assert custom.runtime.mode == "frozen"
    eager = CamEngine(tiny_cnn_dead, "features", methods=["scorecam"], speed=SpeedSettings(freeze=False))
    torch.testing.assert_close(frozen, eager(x).maps["scorecam"], atol=1e-5, rtol=1e-4)
    assert eager.runtime.mode == "channels_last"
    untraced = CamEngine(_sequential(), "features", methods=["scorecam"], allow_trace=False)
    untraced(x)
    assert untraced.runtime.mode == "frozen"


def test_kept_frozen_copy_is_checked_at_every_call(images, caplog) -> None:
    """A kept frozen copy that disagrees with the model on a later call's first batch (here: made
    wrong on purpose) is given up with a warning; the maps are the eager ones."""
    model = _sequential()
    x = images(2, seed=9)
    engine = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(batch_size=4))
    engine(x)
    kept = engine.runtime.forward_mode
    assert kept.name == "frozen"
    kept.module = _wrong_freeze(kept.module)
    with caplog.at_level(logging.WARNING, logger="camscope.core.runtime"):
        maps = engine(x).maps["scorecam"]
    assert engine.runtime.failed == {"frozen"} and engine.runtime.mode == "channels_last"
    assert any("differ from eager ones on a later batch" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(maps, _scorecam(model, x, freeze=False), atol=1e-6, rtol=1e-5)


def test_bf16_frozen_only_where_the_cpu_has_bf16(monkeypatch, images) -> None:
    import camscope.core.runtime as runtime_mod

    x = images(2, seed=3)
    fp32 = _scorecam(_sequential(), x, freeze=False)
    maps = {}
    for native in (False, True):
        monkeypatch.setattr(runtime_mod, "cpu_has_native", lambda precision, n=native: n)
        engine = CamEngine(_sequential(), "features", methods=["scorecam"], speed=SpeedSettings(precision="bf16"))
        maps[native] = engine(x).maps["scorecam"]
        assert engine.runtime.mode == ("frozen" if native else "channels_last")
    # Traced under autocast: the frozen graph computes in bf16 as the eager one does.
    for m in maps.values():
        assert torch.corrcoef(torch.stack([m.flatten(), fp32.flatten()]))[0, 1] > 0.99
    torch.testing.assert_close(maps[True], maps[False], atol=3e-2, rtol=0)


def _wrong_freeze(module):
    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-2

    return Off(module)


@pytest.mark.parametrize("failure", ["trace_raises", "wrong_logits"])
def test_freeze_failure_falls_back(failure, monkeypatch, images, caplog) -> None:
    if failure == "trace_raises":
        def broken(*_a, **_k):
            raise RuntimeError("Tracer cannot infer type of output\nmore")

        monkeypatch.setattr(torch.jit, "trace", broken)
        expected = "Tracer cannot infer type"
    else:
        monkeypatch.setattr(torch.jit, "optimize_for_inference", _wrong_freeze)
        expected = "frozen logits differ from eager ones"
    model = _sequential()
    x = images(2, seed=8)
    engine = CamEngine(model, "features", methods=["scorecam"])
    with caplog.at_level(logging.WARNING, logger="camscope.core.runtime"):
        maps = engine(x).maps["scorecam"]
    assert engine.runtime.mode == "channels_last" and engine.runtime.failed == {"frozen"}
    assert any("freezing the model failed" in r.getMessage() and expected in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    torch.testing.assert_close(maps, _scorecam(model, x, freeze=False), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(engine(x).maps["scorecam"], maps, atol=1e-6, rtol=1e-5)


def test_bf16_on_cpu_without_bf16_instructions_warns(monkeypatch, tiny_cnn, caplog) -> None:
    import camscope.core.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "cpu_has_native", lambda precision: False)
    with caplog.at_level(logging.WARNING, logger="camscope.core.runtime"):
        Runtime(tiny_cnn, split=None, speed=SpeedSettings(precision="bf16"))
        Runtime(tiny_cnn, split=None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "emulated and slower than fp32" in messages[0]
