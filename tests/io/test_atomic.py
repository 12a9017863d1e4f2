"""Tests for camscope.io.atomic: all-or-nothing writes and leftover cleanup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camscope.io.atomic import (
    atomic_open,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    cleanup_temp_files,
    is_temp_file,
)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_and_text_create_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(target, b"\x00\x01data")
    assert target.read_bytes() == b"\x00\x01data"
    text = tmp_path / "a" / "note.txt"
    atomic_write_text(text, "héllo\r\nworld\n")
    assert text.read_bytes() == "héllo\r\nworld\n".encode()
    atomic_write_text(text, "x", encoding="latin-1")
    assert text.read_text() == "x"
    assert _files(tmp_path / "a") == ["b", "note.txt"]
    assert _files(tmp_path / "a" / "b") == ["out.bin"]


def test_temp_file_lives_next_to_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "map.npy"
    with atomic_open(target) as fh:
        fh.write(b"partial")
        names = _files(target.parent)
        assert len(names) == 1 and is_temp_file(names[0]) and names[0].startswith(".map.npy.")
        assert not target.exists()
    assert _files(target.parent) == ["map.npy"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "new.png"
    with pytest.raises(type(exc)):
        with atomic_open(target) as fh:
            fh.write(b"half")
            raise exc
    assert _files(tmp_path) == []


def test_failed_overwrite_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    with pytest.raises(ValueError):
        with atomic_open(target, "w") as fh:
            fh.write('{"new": ')
            raise ValueError("serialisation failed")
    assert target.read_text() == '{"old": true}'
    with pytest.raises(ZeroDivisionError):
        atomic_save(target, lambda f: f.write(b"x" * (1 // 0)))
    assert target.read_text() == '{"old": true}'
    assert _files(tmp_path) == ["report.json"]


def test_replace_failure_removes_temp(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "child").write_text("x")
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "taken", b"data")  # cannot replace a folder
    assert _files(tmp_path) == ["taken"]


def test_atomic_save_numpy_and_pil(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save(tmp_path / "m.npy", lambda f: np.save(f, arr))
    assert np.array_equal(np.load(tmp_path / "m.npy"), arr)
    img = Image.new("RGB", (5, 4), (1, 2, 3))
    atomic_save(tmp_path / "o.png", lambda f: img.save(f, format="PNG"))
    with Image.open(tmp_path / "o.png") as back:
        assert back.format == "PNG" and back.getpixel((0, 0)) == (1, 2, 3)


def test_text_mode_and_bad_mode(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "t.csv", "w", newline="") as fh:
        fh.write("a,b\n1,ü\n")
    assert (tmp_path / "t.csv").read_bytes() == "a,b\n1,ü\n".encode()
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "ab"):
            pass
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_long_target_name(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250 + ".png")
    atomic_write_bytes(target, b"ok")
    assert target.read_bytes() == b"ok"


def test_cleanup_temp_files(tmp_path: Path) -> None:
    leftovers = [
        tmp_path / ".cat.jpg.png.0123abcd.tmp",
        tmp_path / "sub" / "deeper" / ".x.npy.deadbeef.tmp",
        tmp_path / "sub" / ".manifest.json.ffffffff.tmp",
    ]
    keep = [
        tmp_path / "cat.jpg.png",
        tmp_path / "user.tmp",
        tmp_path / ".notes.tmp",
        tmp_path / ".x.npy.NOTHEX00.tmp",
        tmp_path / "sub" / ".x.0123abcd.tmp.bak",
    ]
    for p in leftovers + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert cleanup_temp_files(tmp_path) == 3
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)
    assert cleanup_temp_files(tmp_path) == 0
    assert cleanup_temp_files(tmp_path / "missing") == 0


def test_interrupted_writer_leftover_is_cleaned(tmp_path: Path) -> None:
    """A process killed mid-write leaves a temp file that cleanup recognises."""
    target = tmp_path / "out" / "map.png"
    ctx = atomic_open(target)
    fh = ctx.__enter__()
    fh.write(b"half")
    fh.flush()  # simulate SIGKILL: the context is never exited
    assert cleanup_temp_files(tmp_path) == 1
    assert _files(target.parent) == []
    fh.close()
