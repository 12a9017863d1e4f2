"""Shared fixtures: tiny CNNs (with and without dead channels), resnet18, generated photos, the
committed synthetic models.

One fixture is autouse, for the whole session: :func:`synthetic_fixture_cache` points
``CAMSCOPE_SYNTHETIC_CACHE`` at a temporary folder holding the committed SmallCNN and small ViT
(``tests/fixtures/``), so every ``load_or_train()`` of the suite loads the same weights on every
machine instead of training its own (issue 19).

The configuration the suite runs under can be varied, to show that no floor holds only for one
machine's rounding (``.ci/run`` runs the trained-model tests a second time so):

* ``CAMSCOPE_TEST_THREADS=N``: torch's intra-op threads for the session (and for the modules
  that ask for ``one_thread``);
* ``CAMSCOPE_TEST_MKLDNN=0``: oneDNN (mkldnn) kernels off;
* ``CAMSCOPE_TEST_TRAIN_SEED=S``: the seed of the tests that train a model at test time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

#: ImageNet class 21 is 'kite' (the bird); its WordNet id is n01608432.
KITE_FILE = "n01608432_kite.JPEG"
KITE_CLASS = 21


class TinyCNN(nn.Module):
    """conv(3->8) ReLU maxpool conv(8->K) ReLU -> head; target layer ``features`` (K,h/2,w/2).

    ``head="gap"``: global average pooling + linear (gradients constant over positions);
    ``head="flat"``: 2x2 average pooling, flatten, linear (gradients vary over positions).
    Channels in ``dead`` get a bias of -100 before the last ReLU, so they are zero everywhere.
    """

    def __init__(
        self,
        *,
        channels: int = 12,
        classes: int = 5,
        head: str = "gap",
        size: int = 32,
        dead: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, channels, 3, padding=1),
            nn.ReLU(),
        )
        if head == "gap":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            n_in = channels
        elif head == "flat":
            self.pool = nn.AvgPool2d(2)
            n_in = channels * (size // 4) ** 2
        else:
            raise ValueError(head)
        self.classifier = nn.Linear(n_in, classes)
        with torch.no_grad():
            for ch in dead:
                self.features[3].bias[ch] = -100.0

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResBlock(nn.Module):
    """relu(conv2(relu(conv1(x))) + skip(x)): a target inside it needs the skip carried."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.skip(x))


class ResidualCNN(nn.Module):
    """conv(3->8) ReLU maxpool ResBlock(8->10) -> GAP -> linear(10->5). Targets inside the block
    ("block.conv2", "block.conv1") exercise the carried skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = ResBlock(8, 10)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(10, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.block(self.stem(x))), 1))


@pytest.fixture(scope="session")
def residual_cnn() -> ResidualCNN:
    """Shared (do not modify) ResidualCNN, seed 0, classifier weights x4, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResidualCNN()
    with torch.no_grad():
        model.classifier.weight.mul_(4.0)
    return model.eval()


def _tiny_cnn(seed: int = 0, **kw: object) -> TinyCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(**kw)  # type: ignore[arg-type]
        # Larger classifier weights: logits of order 1, well-conditioned Ablation-CAM ratios.
        with torch.no_grad():
            model.classifier.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_cnn() -> Callable[..., TinyCNN]:
    """Factory: ``make_tiny_cnn(seed=0, channels=12, head="gap", dead=())`` -> a fresh model."""
    return _tiny_cnn


@pytest.fixture(scope="session")
def tiny_cnn() -> TinyCNN:
    """Shared (do not modify) TinyCNN with a GAP head, 12 channels, 5 classes, 32x32 input."""
    return _tiny_cnn()


@pytest.fixture(scope="session")
def tiny_cnn_dead() -> TinyCNN:
    """Shared TinyCNN whose target-layer channels 1, 4 and 7 are dead (zero everywhere)."""
    return _tiny_cnn(dead=(1, 4, 7))


@functools.cache
def _resnet18() -> nn.Module:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    """Shared (do not modify) resnet18 with random weights (seed 0), eval mode."""
    return _resnet18()


def random_images(n: int, size: int = 32, seed: int = 1) -> Tensor:
    """Smooth random images (n,3,size,size): normal noise, blurred a little, roughly unit scale."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(2, size // 4), max(2, size // 4), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + 0.3 * torch.randn(n, 3, size, size, generator=g)).contiguous()


@pytest.fixture(scope="session")
def images() -> Callable[..., Tensor]:
    """Factory: ``images(n, size=32, seed=1)`` -> reproducible normalised-looking inputs."""
    return random_images


#: Threads the session runs with (``CAMSCOPE_TEST_THREADS``), None: torch's default.
TEST_THREADS = int(os.environ["CAMSCOPE_TEST_THREADS"]) if os.environ.get("CAMSCOPE_TEST_THREADS") else None
#: Seed of the models trained at test time (``CAMSCOPE_TEST_TRAIN_SEED``, default 0).
TRAIN_SEED = int(os.environ.get("CAMSCOPE_TEST_TRAIN_SEED") or 0)


def pytest_configure(config: pytest.Config) -> None:
    if TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
    if os.environ.get("CAMSCOPE_TEST_MKLDNN", "1") == "0":
        torch.backends.mkldnn.enabled = False


def pytest_report_header(config: pytest.Config) -> str:
    return (f"camscope: torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"mkldnn {'on' if torch.backends.mkldnn.enabled else 'off'}, train seed {TRAIN_SEED}")


@pytest.fixture(scope="session", autouse=True)
def synthetic_fixture_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The committed synthetic models as the session's model cache (see the module docstring)."""
    from camscope.studies import synthetic as S
    from camscope.studies import synthetic_vit as V
    from tests.fixtures.train_fixtures import load_fixture

    cache = tmp_path_factory.mktemp("synthetic-fixtures")
    with pytest.MonkeyPatch.context() as mp:
        # load_or_train's cache file names come from the default training arguments: "training"
        # here returns the fixture, and the cache keeps it under that name.
        mp.setattr(S, "train_small_cnn", lambda **_: load_fixture("smallcnn"))
        mp.setattr(V, "train_small_vit", lambda **_: load_fixture("smallvit"))
        S.load_or_train(cache)
        V.load_or_train_vit(cache)
    old = os.environ.get("CAMSCOPE_SYNTHETIC_CACHE")
    os.environ["CAMSCOPE_SYNTHETIC_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CAMSCOPE_SYNTHETIC_CACHE", None)
    else:
        os.environ["CAMSCOPE_SYNTHETIC_CACHE"] = old


@pytest.fixture(scope="session")
def synthetic_cnn(synthetic_fixture_cache: Path) -> nn.Module:
    """The committed SmallCNN (trained on the synthetic scenes, seed 0), in eval mode."""
    from tests.fixtures.train_fixtures import load_fixture

    return load_fixture("smallcnn")


@pytest.fixture(scope="session")
def synthetic_vit(synthetic_fixture_cache: Path) -> nn.Module:
    """The committed small ViT (trained on the synthetic scenes, seed 0), in eval mode."""
    from tests.fixtures.train_fixtures import load_fixture

    return load_fixture("smallvit")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small tensors only contend on a shared 2-core machine. Under ``CAMSCOPE_TEST_THREADS`` the
    module runs with that many instead."""
    n = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS or 1)
    yield
    torch.set_num_threads(n)


def photo_array(height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like uint8 (H,W,3): smooth colour gradients, a bright disk, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    grad = rng.uniform(-60, 60, size=(2, 3))
    img = base + (yy / height)[..., None] * grad[0] + (xx / width)[..., None] * grad[1]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    r = 0.2 * min(height, width)
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    img[disk] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


#: (file name, (width, height)) of the generated photos.
PHOTOS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("beach.jpg", (320, 240)),
    ("tall.png", (150, 260)),
    (KITE_FILE, (256, 256)),
)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A folder of generated photos of different sizes and formats, one WordNet-named.

    Attributes: ``dir`` (the folder), ``sizes`` (file name -> (width, height)), ``kite`` (the
    file named after ImageNet's WordNet id of class ``kite_class`` = 21, 'kite')."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, (name, (w, h)) in enumerate(PHOTOS):
        img = Image.fromarray(photo_array(h, w, seed=i))
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        img.save(root / name, format=fmt)
    return SimpleNamespace(dir=root, sizes=dict(PHOTOS), kite=KITE_FILE, kite_class=KITE_CLASS)
