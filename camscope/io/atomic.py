"""Atomic file writes: write a temp file in the target's folder, fsync, then `os.replace`.

A reader (or a resumed run) sees either the old file or the complete new one, never a partial
file. Temp files are named ``.<name>.<8 hex>.tmp``; an interrupted process (SIGKILL, power
loss) can leave some behind, which `cleanup_temp_files` removes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

logger = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$", re.DOTALL)
_MAX_TEMP_STEM = 100  # characters of the target name kept in the temp name (NAME_MAX safety)


def _temp_name(target: Path) -> Path:
    stem = target.name[:_MAX_TEMP_STEM]
    while len(stem.encode("utf-8", "surrogatepass")) > _MAX_TEMP_STEM * 2:
        stem = stem[:-1]
    return target.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")


def _create_temp(target: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temp_name(target)
        try:
            # mode 0o666 & ~umask, like a normally created file
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}: could not create a unique temporary file")


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); best effort elsewhere."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | Path,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temp file next to `path` for writing; on success it replaces `path` atomically.

    `mode` is "wb" or "w" (text, UTF-8 unless `encoding` is given). Parent folders are
    created. On any exception in the block (KeyboardInterrupt included) the temp file is
    removed, the exception propagates and an existing `path` is left untouched. An existing
    file's permission bits are kept.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        with contextlib.suppress(OSError):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace `path` with `text` (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save(path: str | Path, writer: Callable[[BinaryIO], object]) -> None:
    """Atomically write `path` with ``writer(binary_file)``.

    E.g. ``atomic_save(p, lambda f: np.save(f, arr))`` or
    ``atomic_save(p, lambda f: img.save(f, format="PNG"))`` (give the format explicitly: the
    temp file name has no meaningful extension).
    """
    with atomic_open(path, "wb") as fh:
        writer(fh)


def is_temp_file(name: str) -> bool:
    """True for names made by `atomic_open` (``.<name>.<8 hex>.tmp``)."""
    return bool(_TEMP_RE.match(name))


def cleanup_temp_files(root: str | Path) -> int:
    """Remove temp files left under `root` by an interrupted run; return how many.

    Only names matching ``.<name>.<8 hex>.tmp`` are removed; symlinked folders are not
    followed. A missing `root` counts as 0. Call it when no other writer uses `root`.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if is_temp_file(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as e:
                    logger.warning(
                        "%s: cannot remove leftover temp file (%s)", os.path.join(folder, name), e
                    )
    if removed:
        logger.info(
            "%s: removed %d leftover temporary file(s) from an interrupted run", root, removed
        )
    return removed
