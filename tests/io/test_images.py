"""Tests for camscope.io.images: load_image on the bad-input corpus, find_images naming."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from camscope.errors import ImageLoadError, UsageError
from camscope.io import images
from camscope.io.images import IMAGE_EXTENSIONS, ImageInput, find_images, load_image

try:
    from tests import corpus
except ImportError:  # tests/ itself on sys.path (pytest's default "prepend" import mode)
    import corpus  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Path, str]]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, corpus.make_bad_input_corpus(root)


def _rgb(root: Path, name: str, **kwargs: object) -> np.ndarray:
    img = load_image(root / name, **kwargs)
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int32)


# --------------------------------------------------------------------------- corpus outcomes


def test_corpus_expected_outcomes(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    _, entries = corpus_dir
    assert len(entries) >= 30
    for path, expected in entries:
        if expected == corpus.OK:
            img = load_image(path)
            assert img.mode == "RGB", path
            assert img.width >= 1 and img.height >= 1
            img.tobytes()  # fully decoded, detached from the (closed) file
        else:
            with pytest.raises(ImageLoadError) as info:
                load_image(path)
            message = str(info.value)
            assert "\n" not in message and "\r" not in message
            assert message.startswith(f"{path}: "), message
            assert info.value.path == str(path)
            assert expected in info.value.reason, (path, message)


def test_sizes(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    sizes = {
        "photo.jpg": (64, 48),
        "photo.webp": (64, 48),
        "photo.ppm": (64, 48),
        "UPPER.JPG": (64, 48),
        "gray.png": (20, 30),
        "tiny_1x1.png": (1, 1),
        "tiny_3x2.bmp": (3, 2),
        "exif_rot6.jpg": (24, 40),  # stored 40x24, displayed rotated
        "animated.gif": (10, 8),
        "multipage.tif": (12, 9),
        corpus.UNICODE_NAME: (64, 48),
    }
    for name, size in sizes.items():
        assert load_image(root / name).size == size, name


def test_exact_rgb_and_lossless(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    photo = corpus.smooth_noise(48, 64, 3, seed=1).astype(np.int32)
    for name in ("photo.png", "photo.webp", "photo.ppm", "png_content.jpg", corpus.UNICODE_NAME):
        assert np.array_equal(_rgb(root, name), photo), name
    assert np.abs(_rgb(root, "photo.jpg") - photo).mean() < 3
    assert np.array_equal(_rgb(root, "tiny_1x1.png"), [[[7, 8, 9]]])
    assert np.array_equal(_rgb(root, "tiny_3x2.bmp"), corpus.smooth_noise(2, 3, 3, seed=4))


def test_grayscale_is_replicated(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    gray = corpus.smooth_noise(30, 20, 1, seed=2)[..., 0]
    rgb = _rgb(root, "gray.png")
    for c in range(3):
        assert np.array_equal(rgb[..., c], gray)
    bilevel = _rgb(root, "bilevel.png")
    expected = np.where(np.indices((6, 9)).sum(axis=0) % 2 == 0, 255, 0)
    assert np.array_equal(bilevel[..., 0], expected) and np.array_equal(bilevel[..., 2], expected)


def _composite(rgb: np.ndarray, alpha: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255.0
    return rgb.astype(np.float64) * a + np.array(bg, np.float64) * (1.0 - a)


def test_rgba_composited_on_background(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    src = corpus.rgba_array()
    got = _rgb(root, "rgba.png")
    assert np.all(got[:, 0:2] == 255)  # fully transparent -> white
    assert np.array_equal(got[:, 2:4], src[:, 2:4, :3])  # opaque -> unchanged
    assert np.abs(got - _composite(src[..., :3], src[..., 3], (255, 255, 255))).max() <= 1
    black = _rgb(root, "rgba.png", background=(0, 0, 0))
    assert np.all(black[:, 0:2] == 0)
    assert np.abs(black - _composite(src[..., :3], src[..., 3], (0, 0, 0))).max() <= 1
    # LA: gray + alpha
    la = Image.fromarray(src).convert("LA")
    gray, alpha = (np.asarray(ch) for ch in la.split())
    got_la = _rgb(root, "gray_alpha.png")
    expected = _composite(np.repeat(gray[..., None], 3, axis=-1), alpha, (255, 255, 255))
    assert np.abs(got_la - expected).max() <= 1


def test_palette_and_colour_key_transparency(
    corpus_dir: tuple[Path, list[tuple[Path, str]]],
) -> None:
    root, _ = corpus_dir
    idx = np.asarray(corpus.palette_image())
    palette = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [12, 34, 56]], np.float64)
    alpha = np.frombuffer(corpus.PALETTE_ALPHA, np.uint8)[idx]
    expected = _composite(palette[idx], alpha, (255, 255, 255))
    got = _rgb(root, "palette_trns.png")
    assert np.all(got[idx == 0] == 255)
    assert np.abs(got - expected).max() <= 1

    photo = corpus.smooth_noise(48, 64, 3, seed=1)
    key = np.all(photo == photo[0, 0], axis=-1)
    got = _rgb(root, "rgb_colorkey.png", background=(1, 2, 3))
    assert np.all(got[key] == (1, 2, 3))
    assert np.array_equal(got[~key], photo[~key])


def test_16bit_scaled_by_bit_depth(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    expected = np.rint(corpus.gray16_array() / 257.0)
    for name in ("gray16.png", "gray16.tif"):
        got = _rgb(root, name)
        assert np.array_equal(got[..., 1], expected), name
        assert got[0, 0, 0] == 0 and got[0, 1, 0] == 255


def test_32bit_and_float_modes(tmp_path: Path) -> None:
    small = np.array([[0, 100], [255, 7]], np.int32)
    Image.fromarray(small).save(tmp_path / "i8.tif")
    assert np.array_equal(_rgb(tmp_path, "i8.tif")[..., 0], small)  # 8-bit range kept
    wide = np.array([[0, 257 * 100], [65535, 514]], np.int32)
    Image.fromarray(wide).save(tmp_path / "i16.tif")
    assert np.array_equal(_rgb(tmp_path, "i16.tif")[..., 0], [[0, 100], [255, 2]])
    signed = np.array([[-1000, 0], [1000, 3000]], np.int32)
    Image.fromarray(signed).save(tmp_path / "signed.tif")
    assert np.array_equal(_rgb(tmp_path, "signed.tif")[..., 0], [[0, 64], [128, 255]])
    unit = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    assert np.array_equal(_rgb(tmp_path, "f.tif")[..., 0], [[0, 128], [255, 0]])


def test_cmyk_converted(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    with Image.open(root / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    photo = corpus.smooth_noise(48, 64, 3, seed=1).astype(np.int32)
    assert np.abs(_rgb(root, "cmyk.jpg") - photo).mean() < 6


def test_exif_orientation_applied(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    with Image.open(root / "exif_rot6.jpg") as raw:
        assert raw.size == (40, 24) and raw.getexif()[0x0112] == 6
    got = _rgb(root, "exif_rot6.jpg")
    expected = np.rot90(corpus.exif_stored_array(), k=-1)  # orientation 6: 90 deg clockwise
    assert got.shape == expected.shape == (40, 24, 3)
    # compare quadrant centres (JPEG blurs the edges)
    for y in (10, 30):
        for x in (6, 18):
            assert np.abs(got[y, x] - expected[y, x]).max() < 40, (y, x)
    assert got[10, 18, 0] > 200 and got[10, 18, 2] < 60  # stored top-left red -> top-right


def test_multi_frame_first_frame(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    assert np.all(_rgb(root, "animated.gif") == (255, 0, 0))
    assert np.all(_rgb(root, "multipage.tif") == (0, 0, 255))


# --------------------------------------------------------------------------- limits and errors


def test_size_checked_from_header_without_decoding(
    corpus_dir: tuple[Path, list[tuple[Path, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = corpus_dir
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(
        ImageLoadError, match=r"10000×10000 = 100000000 pixels, over the limit of 89478485"
    ):
        load_image(root / "big_header.png")
    with pytest.raises(ImageLoadError, match="decompression-bomb guard"):
        load_image(root / "huge_header.png", max_pixels=None)  # Pillow's own guard, same message
    with pytest.raises(ImageLoadError, match=r"64×48 = 3072 pixels, over the limit of 1000 pixels"):
        load_image(root / "photo.png", max_pixels=1000)
    assert decoded == []
    assert Image.MAX_IMAGE_PIXELS == before  # global setting untouched
    assert load_image(root / "photo.png", max_pixels=3072).size == (64, 48)
    assert decoded  # the spy does see real decoding


def test_pillow_guard_reported_and_its_warning_not_leaked(
    corpus_dir: tuple[Path, list[tuple[Path, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = corpus_dir
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # photo.png: 3072 px, warns only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(root / "photo.png", max_pixels=None).size == (64, 48)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # now over twice the limit: error
    with pytest.raises(
        ImageLoadError, match=r"image is 3072 pixels, over the limit of 2000 pixels"
    ):
        load_image(root / "photo.png", max_pixels=None)


def test_corrupted_bytes_never_escape_raw(
    corpus_dir: tuple[Path, list[tuple[Path, str]]], tmp_path: Path
) -> None:
    root, _ = corpus_dir
    rng = np.random.default_rng(0)
    for name in ("photo.png", "photo.jpg", "animated.gif", "multipage.tif", "tiny_3x2.bmp"):
        data = bytearray((root / name).read_bytes())
        for k in range(6):
            bad = bytearray(data)
            pos = rng.integers(0, len(bad), size=4)
            bad[pos[0] : pos[0] + 8] = rng.integers(
                0, 256, size=len(bad[pos[0] : pos[0] + 8]), dtype=np.uint8
            ).tobytes()
            for p in pos[1:]:
                bad[p] ^= 0xFF
            target = tmp_path / f"{k}_{name}"
            target.write_bytes(bytes(bad))
            try:
                img = load_image(target)
            except ImageLoadError as e:
                assert "\n" not in str(e) and str(e).startswith(str(target))
            else:
                assert img.mode == "RGB"
    (tmp_path / "random.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match="cannot identify image file"):
        load_image(tmp_path / "random.png")
    png = (root / "photo.png").read_bytes()
    (tmp_path / "bad_header.png").write_bytes(png[:16] + b"\xff" * 20 + png[36:])
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "bad_header.png")


def test_missing_and_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    target = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(target)

    def denied(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(ImageLoadError) as info:
        load_image(target)
    assert str(info.value) == f"{target}: permission denied (cannot read the file)"


def test_control_characters_in_name_stay_one_line(tmp_path: Path) -> None:
    target = tmp_path / "bad\nname\t.png"
    target.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(target)
    assert "\n" not in str(info.value) and "bad\\nname\\t.png" in str(info.value)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)


# --------------------------------------------------------------------------- find_images


def _rels(items: list[ImageInput]) -> list[str]:
    return [item.rel for item in items]


def test_find_images_on_corpus(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    found = find_images([root])
    rels = _rels(found)
    assert len({r.casefold() for r in rels}) == len(rels)  # unique, even case-insensitively
    assert found == find_images([str(root)]) == find_images(root)  # deterministic; str/Path ok
    assert rels == sorted(rels, key=lambda r: tuple(r.split("/")))
    for must in (
        "a.jpg",
        "a.png",
        "sub_a/cat.jpg",
        "sub_b/cat.jpg",
        corpus.UNICODE_NAME,
        "UPPER.JPG",
    ):
        assert must in rels, must
    assert "photo.png" in rels and "link_to_photo.jpg" not in rels  # same file once, real path wins
    assert "dangling.jpg" in rels  # kept so that it gets reported
    assert ".hidden.png" not in rels and "notes.txt" not in rels
    assert not any(r.startswith(("loop/", "folder.jpg")) for r in rels)
    for item in found:
        assert not item.rel.startswith("/") and ".." not in item.rel.split("/")
        assert Path(item.path).name == item.rel.split("/")[-1] or item.path.is_symlink()
        assert os.path.splitext(item.rel)[1].lower() in IMAGE_EXTENSIONS
    assert ".hidden.png" in _rels(find_images([root], include_hidden=True))
    no_links = _rels(find_images([root], follow_symlinks=False))
    assert "dangling.jpg" not in no_links and "link_to_photo.jpg" not in no_links


def test_explicit_files_and_duplicates(corpus_dir: tuple[Path, list[tuple[Path, str]]]) -> None:
    root, _ = corpus_dir
    found = find_images([root / "notes.txt", root / "sub_a", root / "sub_a" / "cat.jpg"])
    assert _rels(found) == ["notes.txt", "cat.jpg"]  # explicit files kept whatever the suffix
    assert found[1].path == root / "sub_a" / "cat.jpg"
    both = find_images([root / "sub_a", root / "sub_b", root / "a.jpg", root / "link_to_photo.jpg"])
    assert _rels(both) == ["sub_a/cat.jpg", "sub_b/cat.jpg", "a.jpg", "link_to_photo.jpg"]


def test_collisions_across_roots(tmp_path: Path) -> None:
    for folder in ("x1/imgs", "x2/imgs", "other"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(tmp_path / folder / "cat.jpg")
    Image.new("RGB", (2, 2)).save(tmp_path / "x1" / "imgs" / "dog.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "x2" / "imgs" / "Dog.PNG")
    found = find_images([tmp_path / "x1" / "imgs", tmp_path / "x2" / "imgs", tmp_path / "other"])
    assert _rels(found) == [
        "imgs/cat.jpg",
        "imgs/dog.png",
        "imgs~2/Dog.PNG",  # sorted by code point within a root
        "imgs~2/cat.jpg",
        "other/cat.jpg",
    ]


def test_unsafe_and_long_names(tmp_path: Path) -> None:
    long_a = "a" * 240 + "1.png"
    long_b = "a" * 240 + "2.png"
    for name in (long_a, long_b, "tab\there.png", "back\\slash.png"):
        Image.new("RGB", (2, 2)).save(tmp_path / name)
    rels = _rels(find_images([tmp_path]))
    assert "back_slash.png" in rels and "tab_here.png" in rels
    long_rels = [r for r in rels if r.startswith("aaaa")]
    assert len(long_rels) == 2 and long_rels[0] != long_rels[1]
    assert all(len(r.encode()) <= 200 and r.endswith(".png") for r in long_rels)


def test_symlink_loops_do_not_hang(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(tmp_path / "d" / "sub" / "img.png")
    try:
        os.symlink("..", tmp_path / "d" / "sub" / "up")
        os.symlink(".", tmp_path / "d" / "self")
        os.symlink(tmp_path / "d", tmp_path / "d" / "sub" / "abs")
    except OSError:
        pytest.skip("symlinks unsupported")
    result: list[list[ImageInput]] = []
    worker = threading.Thread(
        target=lambda: result.append(find_images([tmp_path / "d"])), daemon=True
    )
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "find_images hangs on a symlink loop"
    assert _rels(result[0]) == ["sub/img.png"]


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no-such-dir: no such file or directory"):
        find_images([tmp_path / "no-such-dir"])
    assert find_images([]) == []


def test_corrupt_exif_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "badexif.jpg"
    bad_exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x12\x01"
    Image.new("RGB", (8, 4), (9, 9, 9)).save(target, exif=bad_exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak as a Python warning
        with caplog.at_level(logging.WARNING, logger="camscope.io.images"):
            assert load_image(target).size == (8, 4)
    assert f"{target}: Corrupt EXIF data" in caplog.text
