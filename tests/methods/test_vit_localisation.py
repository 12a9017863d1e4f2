"""The small ViT on the synthetic scenes: every method localises on the committed model.

A torchvision ``VisionTransformer`` (conv stem, 8x8 tokens + class token, 2 blocks) trained with
the mask terms of :mod:`camscope.studies.synthetic_vit` is committed as ``tests/fixtures/smallvit-*``
(the same weights on every machine: a model trained at test time differs from one CPU to the
next, and its pointing rates by up to 30 points — issue 19). On 100 held-out scenes each method
explains the true class at the default layer (the last block's first LayerNorm, tokens read as
an 8x8 map) and must reach the pointing-game floor below: the fixture's own rate less 8 points
(maps of a fixed model move only by rounding across CPUs, thread counts and oneDNN on/off; CI
checks the latter two). The rates are far below the CNN's 90 %: transformer CAMs localise worse
here, and over training seeds they spread widely (README, ``camscope bench synthetic --model vit
--seeds 5``). For scale: a map peaking at a random pixel hits 5 % (the objects' area), one
peaking at the image centre 13 % of these scenes.

Training the ViT is tested here too, against an accuracy floor that holds over seeds.
"""

from __future__ import annotations

import pytest
import torch

from camscope.core.layers import default_layer
from camscope.core.runtime import SpeedSettings
from camscope.engine import CamEngine
from camscope.methods.registry import METHODS, method_names
from camscope.studies import synthetic as S
from camscope.studies import synthetic_vit as V
from camscope.studies.benchmark import run_synthetic_benchmark, score_maps
from tests.conftest import TRAIN_SEED

pytestmark = pytest.mark.usefixtures("one_thread")

N_SCENES = 100
#: Pointing-game floors (fraction of scenes whose map peaks inside the object): the committed
#: model's own rate less 8 points (measured at 1 thread, and at 2 threads with oneDNN off; the
#: same to the scene). Over training seeds the rates spread far wider (README).
MIN_POINTING = {
    "gradcam": 0.44 - 0.08,
    "gradcampp": 0.43 - 0.08,
    "xgradcam": 0.35 - 0.08,
    "hirescam": 0.72 - 0.08,
    "layercam": 0.71 - 0.08,
    "eigencam": 0.58 - 0.08,
    "ablationcam": 0.20 - 0.08,
    "scorecam": 0.58 - 0.08,
    "scorecam-logit-softmax": 0.62 - 0.08,
    "gradcam-elementwise": 0.80 - 0.08,
    "shapleycam": 0.21 - 0.08,
    "finercam": 0.24 - 0.08,
    "smoothgradcampp": 0.42 - 0.08,
    "eigengradcam": 0.70 - 0.08,
    "kpcacam": 0.57 - 0.08,
    "guidedbackprop": 0.59 - 0.08,
    "guidedgradcam": 0.61 - 0.08,
    "fullgrad": 0.62 - 0.08,
    "layercam-fusion": 0.65 - 0.08,
    "refinecam": 0.49 - 0.08,
    "rollout": 0.73 - 0.08,
    "chefer": 0.56 - 0.08,
    "legrad": 0.79 - 0.08,
}
MIN_ENERGY_RATIO = 1.5
#: Methods held to a floor here (every registered one that can explain the ViT, less the
#: control and the slow ones).
FLOORED = [m for m in method_names() if m not in ("random", "sscam", "iscam")
           and METHODS[m].refusal(V.small_vit()) is None]


#: Held-out accuracy every training seed reaches (seeds 0-5 measured: see docs/models.md).
MIN_TRAINED_ACCURACY = 0.9


@pytest.fixture(scope="module")
def vit(synthetic_vit):
    return synthetic_vit


@pytest.fixture(scope="module")
def held_out():
    return S.make_scenes(N_SCENES, seed=1000)


@pytest.fixture(scope="module")
def maps(vit, held_out):
    engine = CamEngine(vit, methods=FLOORED, speed=SpeedSettings(batch_size=64), input_size=(64, 64))
    assert engine.layer == V.VIT_TARGET_LAYER
    res = engine(S.normalize(held_out.images), targets=[[int(c)] for c in held_out.labels])
    assert engine.reshape.describe() == "tokens:8x8:skip=1"
    return {m: v[:, 0] for m, v in res.maps.items()}


def test_the_vit_learned_the_task(vit, held_out) -> None:
    assert S.evaluate(vit, held_out) >= MIN_TRAINED_ACCURACY
    assert default_layer(vit, input_size=(1, 3, 64, 64)) == V.VIT_TARGET_LAYER


@pytest.mark.training
def test_training_reaches_its_accuracy(tmp_path) -> None:
    """Training on this machine (seed ``CAMSCOPE_TEST_TRAIN_SEED``) still solves the task."""
    model = V.load_or_train_vit(tmp_path, seed=TRAIN_SEED)
    acc = S.evaluate(model, S.make_scenes(1000, seed=1001))
    assert acc >= MIN_TRAINED_ACCURACY, f"held-out accuracy {acc:.3f} (training seed {TRAIN_SEED})"


def test_registry_methods_all_have_floors() -> None:
    """Every method that can explain the ViT has a floor, except the random control and the
    slow ones (SS-CAM, IS-CAM: 35 K / 10 K full forwards per image)."""
    assert set(MIN_POINTING) == set(FLOORED)


@pytest.mark.parametrize("method", FLOORED)
def test_method_localises_on_the_vit(maps, held_out, method: str, record_property) -> None:
    hits, energy, area = score_maps(maps[method], held_out.masks)
    pointing, ratio = float(hits.mean()), float(energy.mean() / area.mean())
    record_property("pointing_rate", pointing)
    record_property("energy_ratio", ratio)
    assert pointing >= MIN_POINTING[method], f"{method}: peak inside the shape in {pointing:.0%} of scenes"
    assert ratio >= MIN_ENERGY_RATIO, f"{method}: energy in mask {ratio:.2f}x the area"


def test_transposed_maps_miss(maps, held_out) -> None:
    """The token grid's orientation matters: the best maps, transposed, point inside far less."""
    for method in ("hirescam", "layercam"):
        straight = S.cam_points_inside(maps[method], held_out.masks).float().mean()
        transposed = S.cam_points_inside(maps[method].transpose(1, 2), held_out.masks).float().mean()
        assert float(transposed) < 0.5 * float(straight), method


def test_block_output_gives_blank_gradient_maps(vit, held_out) -> None:
    """Why the default is the last block's ln_1 and not its output: the class token alone is
    classified, so the patch tokens of the last block's output get zero gradient (and ablating
    one of their features changes nothing): gradient and ablation maps are blank there."""
    x = S.normalize(held_out.images[:8])
    engine = CamEngine(vit, "encoder.layers.encoder_layer_1", methods=["gradcam", "hirescam", "ablationcam"])
    res = engine(x, targets=[[int(c)] for c in held_out.labels[:8]])
    for method, m in res.maps.items():
        assert torch.all(m == 0), method


def test_bench_synthetic_vit(vit) -> None:
    table = run_synthetic_benchmark(n_scenes=20, methods=["hirescam"], model=vit, model_kind="vit")
    (row,) = table.rows
    assert table.layer == V.VIT_TARGET_LAYER and row.n == 20 and 0.0 <= row.pointing <= 1.0
    assert table.accuracy >= 0.8
