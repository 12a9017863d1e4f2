"""Model sources: timm/NAME, hf/ORG/NAME or hf/PATH, package.module:callable, safetensors weights.

Nothing is downloaded: timm models are built with random weights (``--weights-tag none``) or from
a ``.safetensors`` file written here; Hugging Face models from a ``ViTConfig``, saved with
``save_pretrained`` into a temporary folder; the hub is put in offline mode with an empty cache
where the offline error is tested. Checked: weights load exactly, labels and preprocessing come
from the source's config, missing extras and remote code are refused in one line, the manifest
rebuilds the model, and the CLI explains a ViT end to end with maps of a late layer.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camscope.cli import main
from camscope.errors import UsageError, WeightsError
from camscope.io.rundir import RunSettings
from camscope.models import (
    Preprocess,
    list_models,
    load_from_settings,
    load_model,
    model_source,
    parse_channels,
    parse_input_size,
    preprocess_from_description,
)

pytestmark = pytest.mark.usefixtures("one_thread")

safetensors_torch = pytest.importorskip("safetensors.torch")

LABELS = ["square", "disk", "triangle", "cross", "star"]


def _equal_states(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub in offline mode with an empty cache: every hub access fails at once."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# ------------------------------------------------------------------------------ dispatch, parsing


@pytest.mark.parametrize(
    "name,source",
    [
        ("resnet50", "torchvision"),
        ("vit_b_16", "torchvision"),
        ("timm/deit_small_patch16_224", "timm"),
        ("hf/google/vit-base-patch16-224", "hf"),
        ("hf/./saved", "hf"),
        ("my_pkg.models:build", "import"),
        ("mod:Factory.create", "import"),
    ],
)
def test_model_source(name: str, source: str) -> None:
    assert model_source(name) == source


def test_parse_values() -> None:
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("384x288") == (384, 288)
    assert parse_input_size([96]) == (96, 96)
    assert parse_input_size(None) is None
    assert parse_channels("0.5,0.4,0.3", "--mean") == (0.5, 0.4, 0.3)
    assert parse_channels("0.5", "--std") == (0.5, 0.5, 0.5)
    for bad, fn in [("big", parse_input_size), ("0x3", parse_input_size)]:
        with pytest.raises(UsageError, match="--input-size"):
            fn(bad)
    with pytest.raises(UsageError, match="--mean"):
        parse_channels("1,2", "--mean")
    with pytest.raises(UsageError, match="--std.*positive"):
        parse_channels("0.5,0,0.5", "--std")


def test_preprocess_descriptions_round_trip() -> None:
    old = {  # a manifest written before interpolation existed
        "mode": "weights", "input_size": [224, 224], "resize_shorter_side": 256,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "map_covers": "centre crop",
    }  # fmt: skip
    pre = preprocess_from_description(old)
    assert pre.interpolation == "bilinear" and pre.describe() == old
    bicubic = Preprocess("weights", (224, 224), 248, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert bicubic.describe()["interpolation"] == "bicubic"
    assert preprocess_from_description(bicubic.describe()) == bicubic
    assert bicubic.crop_fraction == pytest.approx(224 / 248)
    moved = bicubic.with_overrides((112, 112), std=(0.25, 0.25, 0.25))
    assert moved.size == (112, 112) and moved.resize == 124 and moved.std == (0.25,) * 3
    # bicubic and bilinear resizing differ, and both keep the photo's values in range
    from PIL import Image

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    a = Preprocess("classic", (32, 32)).to_tensor(photo)
    b = Preprocess("classic", (32, 32), interpolation="bicubic").to_tensor(photo)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


# ------------------------------------------------------------------------------ missing extras


@pytest.mark.parametrize("module,name,extra", [("timm", "timm/resnet18", "timm"), ("transformers", "hf/org/model", "hf")])
def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, module: str, name: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # "import timm" now raises ImportError
    with pytest.raises(UsageError) as info:
        load_model(name)
    msg = str(info.value)
    assert "\n" not in msg and f'pip install "camscope[{extra}]"' in msg and name in msg


def test_missing_extra_cli_exit_2(monkeypatch: pytest.MonkeyPatch, photos, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    rc = main(["explain", str(photos.dir), "--out", str(tmp_path / "o"), "--model", "timm/resnet18", "--quiet"])
    (line,) = capsys.readouterr().err.splitlines()
    assert rc == 2 and 'pip install "camscope[timm]"' in line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ timm


TIMM_VIT = "timm/vit_tiny_patch16_224"


def test_timm_random_weights_config_and_names() -> None:
    pytest.importorskip("timm")
    loaded = load_model(TIMM_VIT, weights_tag="none")
    pre = loaded.preprocess
    assert loaded.weights == "random (no weights)" and loaded.name == TIMM_VIT
    # from the model's pretrained config: 224x224, bicubic, mean/std 0.5 (AugReg weights)
    assert (pre.mode, pre.size, pre.interpolation) == ("classic", (224, 224), "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    assert loaded.categories is not None and len(loaded.categories) == 1000
    assert loaded.categories[0] == "tench" and loaded.wnids is not None and loaded.wnids[21] == "n01608432"
    weights_pre = load_model(TIMM_VIT, weights_tag="none", preprocess="weights").preprocess
    assert (weights_pre.mode, weights_pre.size, weights_pre.resize) == ("weights", (224, 224), 248)  # crop 0.9


def test_timm_safetensors_weights(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    path = tmp_path / "deit.safetensors"
    safetensors_torch.save_file(ref.state_dict(), str(path))
    loaded = load_model(TIMM_VIT, weights_file=path)
    _equal_states(loaded.model, ref.state_dict())
    assert loaded.weights == f"file:{path}"
    assert loaded.categories is None  # a 5-class head is not ImageNet's
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref(x))


def test_timm_unknown_name() -> None:
    pytest.importorskip("timm")
    with pytest.raises(UsageError, match=r"'vit_tiny_patch16_22' is not a timm model; did you mean: .*timm/vit_tiny_patch16_224"):
        load_model("timm/vit_tiny_patch16_22", weights_tag="none")


def test_timm_pretrained_offline_is_one_line(offline_hub: Path) -> None:
    pytest.importorskip("timm")
    with pytest.raises(WeightsError) as info:
        load_model(TIMM_VIT)
    msg = str(info.value)
    assert "\n" not in msg
    assert "--weights FILE" in msg and str(offline_hub) in msg and "vit_tiny_patch16_224" in msg


def test_unreachable_hub_switches_to_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    from camscope.models import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with hub.hub_access() as online:
        assert online is False and constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False


# ------------------------------------------------------------------------------ Hugging Face


def _hf_vit(num_labels: int = 5, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, num_labels=num_labels,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT saved with save_pretrained (config + model.safetensors) and its image processor."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "vit"
    _hf_vit().save_pretrained(folder)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], resample=3
    ).save_pretrained(folder)
    return folder


def test_hf_local_folder(hf_dir: Path) -> None:
    from camscope.models.hf_source import HuggingFaceClassifier

    assert (hf_dir / "model.safetensors").is_file()
    loaded = load_model(f"hf/{hf_dir}")
    assert isinstance(loaded.model, HuggingFaceClassifier)
    assert loaded.categories == LABELS and loaded.weights == f"hf:{hf_dir}"
    pre = loaded.preprocess
    assert (pre.mode, pre.size, pre.interpolation) == ("classic", (32, 32), "bicubic")
    assert pre.mean == (0.4, 0.5, 0.6) and pre.std == (0.2, 0.25, 0.3)
    ref = _hf_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref(pixel_values=x).logits)
    assert (loaded.model.patch_size, loaded.model.num_prefix_tokens, loaded.model.image_size) == (8, 1, 32)
    random = load_model(f"hf/{hf_dir}", weights_tag="none")
    assert random.weights == "random (no weights)"
    with torch.no_grad():
        assert not torch.allclose(random.model(x), ref(pixel_values=x).logits)


def test_hf_prefers_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    _hf_vit(seed=0).save_pretrained(folder)
    torch.save(_hf_vit(seed=7).state_dict(), folder / "pytorch_model.bin")  # other weights, pickled
    loaded = load_model(f"hf/{folder}")
    _equal_states(loaded.model.hf, _hf_vit(seed=0).state_dict())


def test_hf_weights_file_and_no_processor(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "bare"
    _hf_vit(seed=0).save_pretrained(folder)  # no preprocessor_config.json
    weights = tmp_path / "other.safetensors"
    other = _hf_vit(seed=5)
    safetensors_torch.save_file(other.state_dict(), str(weights))
    loaded = load_model(f"hf/{folder}", weights_file=weights)
    _equal_states(loaded.model.hf, other.state_dict())
    assert loaded.weights == f"file:{weights}"
    assert loaded.preprocess.size == (32, 32) and "no image processor" in caplog.text


def test_hf_remote_code_is_refused(tmp_path: Path, hf_dir: Path, photos, capsys) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    config = json.loads((hf_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    with pytest.raises(UsageError) as info:
        load_model(f"hf/{folder}")
    assert "--trust-remote-code" in str(info.value) and "\n" not in str(info.value)
    rc = main(["explain", str(photos.dir), "--out", str(tmp_path / "o"), "--model", f"hf/{folder}", "--quiet"])
    (line,) = capsys.readouterr().err.splitlines()
    assert rc == 2 and "--trust-remote-code" in line
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_hf_hub_offline_is_one_line(offline_hub: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(WeightsError) as info:
        load_model("hf/some-org/some-vit")
    msg = str(info.value)
    assert "\n" not in msg and str(offline_hub) in msg and "hf/PATH" in msg and "some-org/some-vit" in msg


def test_hf_convnext_processor_settings() -> None:
    from camscope.models.hf_source import preprocess_from_processor

    proc = {
        "size": {"shortest_edge": 224}, "crop_pct": 0.875, "do_resize": True, "resample": 3,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    pre = preprocess_from_processor(proc, "weights")
    assert (pre.mode, pre.size, pre.resize, pre.interpolation) == ("weights", (224, 224), 256, "bicubic")
    assert preprocess_from_processor(proc, "classic").size == (224, 224)


# ------------------------------------------------------------------------------ import path


MODULE = '''
import torch
import torchvision


def build():
    """A tiny torchvision ViT for 32x32 inputs with a random head."""
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(11)
        m = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24, mlp_dim=48,
            num_classes=5)
        torch.nn.init.normal_(m.heads.head.weight, std=1.0)
    return m


def not_a_module():
    return 3


def broken():
    raise RuntimeError("no GPU here")


def with_transform():
    """A model that declares its own preprocessing (resize 40, centre crop 32, its statistics)."""
    from camscope.models import Preprocess

    m = build()
    m.camscope_preprocess = Preprocess("weights", (32, 32), 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    return m


def bad_transform():
    m = build()
    m.camscope_preprocess = {"mode": "weights"}
    return m
'''


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "camscope_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def _vit_weights(path: Path, seed: int = 4) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24, mlp_dim=48, num_classes=5
        )
        nn.init.normal_(m.heads.head.weight, std=1.0)
    state = m.state_dict()
    if path.suffix == ".safetensors" or path.name.endswith(".st.pt"):
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("file_name", ["vit.safetensors", "vit.pt", "vit.st.pt"])
def test_import_path_with_weights(user_module: str, tmp_path: Path, file_name: str) -> None:
    path = tmp_path / file_name  # vit.st.pt: a safetensors file under a .pt name (header sniffed)
    state = _vit_weights(path)
    loaded = load_model(f"{user_module}:build", weights_file=path, input_size=None, mean="0.5,0.5,0.5")
    _equal_states(loaded.model, state)
    assert loaded.preprocess.size == (32, 32)  # the model's image_size
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5)
    assert loaded.categories is None and loaded.info["source"] == "import"


def test_import_path_model_declares_its_preprocessing(user_module: str) -> None:
    classic = load_model(f"{user_module}:with_transform").preprocess
    assert (classic.mode, classic.size, classic.resize) == ("classic", (32, 32), None)
    assert classic.mean == (0.5, 0.5, 0.5) and classic.std == (0.25, 0.25, 0.25) and classic.interpolation == "bicubic"
    weights = load_model(f"{user_module}:with_transform", preprocess="weights").preprocess
    assert (weights.mode, weights.size, weights.resize, weights.crop_fraction) == ("weights", (32, 32), 40, 0.8)
    # --mean / --input-size still override what the model declares
    over = load_model(f"{user_module}:with_transform", preprocess="weights", mean="0.1,0.2,0.3", input_size="16").preprocess
    assert over.mean == (0.1, 0.2, 0.3) and over.size == (16, 16) and over.resize == 20
    with pytest.raises(UsageError, match="camscope_preprocess is a dict, not a camscope Preprocess"):
        load_model(f"{user_module}:bad_transform")


@pytest.mark.parametrize(
    "attr,words",
    [
        ("nothing", ["has no attribute 'nothing'"]),
        ("not_a_module", ["returned a int", "nn.Module"]),
        ("broken", ["calling it failed", "RuntimeError", "no GPU here"]),
    ],
)
def test_import_path_errors(user_module: str, attr: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        load_model(f"{user_module}:{attr}")
    for w in words:
        assert w in str(info.value)
    with pytest.raises(UsageError, match="cannot import 'no_such_pkg_xyz.models'.*PYTHONPATH"):
        load_model("no_such_pkg_xyz.models:build")


def test_import_path_weights_must_fit(user_module: str, tmp_path: Path) -> None:
    path = tmp_path / "wrong.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="does not fit"):
        load_model(f"{user_module}:build", weights_file=path)


def test_torchvision_safetensors_weights(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.safetensors"
    safetensors_torch.save_file(ref.state_dict(), str(path))
    _equal_states(load_model("resnet18", weights_tag="none", weights_file=path).model, ref.state_dict())


def test_trust_remote_code_only_for_hf() -> None:
    with pytest.raises(UsageError, match="Hugging Face"):
        load_model("resnet18", weights_tag="none", trust_remote_code=True)


# ------------------------------------------------------------------------------ manifests


def test_load_from_settings_rebuilds_every_source(user_module: str, tmp_path: Path, hf_dir: Path) -> None:
    pre = Preprocess("classic", (32, 32), mean=(0.5, 0.5, 0.5)).describe()
    path = tmp_path / "vit.safetensors"
    state = _vit_weights(path)
    again = load_from_settings(RunSettings.from_json({"model": f"{user_module}:build", "weights": f"file:{path}", "preprocess": pre}))
    _equal_states(again.model, state)
    assert again.preprocess.mean == (0.5, 0.5, 0.5)
    hf = load_from_settings(RunSettings.from_json({"model": f"hf/{hf_dir}", "weights": f"hf:{hf_dir}", "preprocess": pre}))
    _equal_states(hf.model.hf, _hf_vit().state_dict())
    pytest.importorskip("timm")
    timm_random = load_from_settings(RunSettings.from_json({"model": TIMM_VIT, "weights": "random (no weights)", "preprocess": pre}))
    assert timm_random.weights == "random (no weights)" and timm_random.preprocess.size == (32, 32)


# ------------------------------------------------------------------------------ CLI


def test_models_lists_timm(capsys) -> None:
    pytest.importorskip("timm")
    assert main(["models", "--source", "timm", "deit_small_*"]) == 0
    lines = capsys.readouterr().out.split()
    assert "timm/deit_small_patch16_224" in lines and all(n.startswith("timm/deit_small_") for n in lines)
    assert main(["models", "vit_b_*"]) == 0
    lines = capsys.readouterr().out.split()
    assert "vit_b_16" in lines and "timm/vit_b_16" not in lines
    assert "timm/deit_small_patch16_224" in list_models("all")


def _maps(out: Path, method: str) -> list[np.ndarray]:
    return [np.load(p) for p in sorted((out / method).glob("*.npy"))]


def test_cli_explains_an_imported_vit(user_module: str, tmp_path: Path, photos, capsys) -> None:
    weights = tmp_path / "vit.safetensors"
    _vit_weights(weights)
    out = tmp_path / "run"
    argv = ["explain", str(photos.dir), "--out", str(out), "--model", f"{user_module}:build",
            "--weights", str(weights), "--methods", "gradcam,ablationcam,scorecam,eigencam", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["layer"] == "encoder.layers.encoder_layer_1.ln_1"  # the last block, not conv_proj
    assert settings["reshape"] == "tokens:4x4:skip=1"
    assert settings["preprocess"]["input_size"] == [32, 32]
    for method in ("gradcam", "ablationcam", "scorecam", "eigencam"):
        maps = _maps(out, method)
        assert len(maps) == 3 and all(m.shape == (32, 32) and np.isfinite(m).all() for m in maps)
        # (with random weights a ReLU'd map may be blank for a flat photo, not for all three)
        assert any(m.max() > m.min() for m in maps), method
    # the same command resumes (settings, reshape included, match)
    assert main(argv) == 0
    assert "3 already complete" in capsys.readouterr().err
    # an explicit token layer with an explicit grid, and a grid that does not fit
    ok = ["explain", str(photos.dir), "--out", str(tmp_path / "l0"), "--model", f"{user_module}:build",
          "--layer", "encoder.layers.encoder_layer_0.ln_1", "--reshape", "tokens:4x4:skip=1",
          "--methods", "gradcam", "--quiet"]  # fmt: skip
    assert main(ok) == 0
    bad = ["explain", str(photos.dir), "--out", str(tmp_path / "bad"), "--model", f"{user_module}:build",
           "--layer", "encoder.layers.encoder_layer_0.ln_1", "--reshape", "tokens:3x3",
           "--methods", "gradcam", "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert main(bad) == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert "17 tokens" in line and "3x3" in line and not (tmp_path / "bad").exists()


def test_cli_explains_hf_folder_and_timm_file(hf_dir: Path, tmp_path: Path, photos, capsys) -> None:
    out = tmp_path / "hf"
    assert main(["explain", str(photos.dir), "--out", str(out), "--model", f"hf/{hf_dir}",
                 "--methods", "gradcam,eigencam", "--quiet"]) == 0, capsys.readouterr().err  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["layer"] == "hf.vit.layers.1.layernorm_before"
    assert manifest["settings"]["reshape"] == "tokens:4x4:skip=1"
    assert all(rec["top5"][0]["name"] in LABELS for rec in manifest["images"].values())
    assert any(m.max() > m.min() for m in _maps(out, "gradcam"))
    assert all(m.max() > m.min() for m in _maps(out, "eigencam"))
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    weights = tmp_path / "deit.safetensors"
    safetensors_torch.save_file(deit.state_dict(), str(weights))
    out = tmp_path / "timm"
    assert main(["explain", str(photos.dir), "--out", str(out), "--model", "timm/deit_tiny_patch16_224",
                 "--weights", str(weights), "--methods", "gradcam", "--quiet"]) == 0  # fmt: skip
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert (settings["layer"], settings["reshape"]) == ("blocks.11.norm1", "tokens:14x14:skip=1")
    assert settings["weights"] == f"file:{weights}"
    assert any(m.max() > m.min() for m in _maps(out, "gradcam"))
