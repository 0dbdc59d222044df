"""Every file nmr writes goes through here: a temporary file in the same folder, then a rename.

A full disk, a file-size limit, a read-only folder, Ctrl-C or a kill in the middle of a write must never
leave a truncated `.npy`, `.png`, `.gif`, `.json` or `.pt` that a later step reads as whole: the file at its
final path is either the previous one, the new one complete, or absent. A failed write is one
`WriteError` line naming the path and what to do (the CLI prints it), never a traceback. Bags are staged
the same way as a folder (nmr.data.bag_writer.BagWriter); checkpoints add an fsync (`durable=True`) so that
the rename is not undone by a power loss.

Torch-free and OpenCV-free at import: the image helpers import cv2 when called.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from nmr.errors import DISK_FULL, NmrUserError


class WriteError(NmrUserError, OSError):
    """A file could not be written (disk full, read-only, no permission); nothing truncated was left."""

    reason = ''



def _default_file_mode() -> int:
    """0666 less the process umask: the mode `open()` would have given the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_DEFAULT_FILE_MODE = _default_file_mode()

def write_error(path: Path, err: BaseException) -> WriteError:
    """The one line for a failed write of `path`."""
    reason = getattr(err, 'strerror', None) or str(err).splitlines()[0][:120] or type(err).__name__
    if is_disk_full(err):
        reason = reason if getattr(err, 'strerror', None) else f'No space left on device: {reason}'
        todo = 'free disk space (or raise the file-size limit) or write elsewhere'
    else:
        todo = 'choose a writable folder'
    error = WriteError(f'cannot write {path} ({reason}); nothing was left there: {todo}')
    error.reason = reason
    return error


def is_disk_full(err: BaseException) -> bool:
    """torch's C++ zip writer reports a full disk as RuntimeError ('enforce fail at inline_container.cc',
    'file write failed'), not as OSError."""
    text = str(err).lower()
    if isinstance(err, OSError):  # numpy's tofile: "6528 requested and 6112 written", no errno
        return err.errno in DISK_FULL or (err.errno is None and 'requested and' in text and 'written' in text)
    return isinstance(err, RuntimeError) and any(
        k in text for k in ('no space left', 'file too large', 'disk quota', 'file write failed',
                            'inline_container'))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform / file system
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_stages(folder: Path, prefix: str) -> None:
    """Remove the `PREFIX<pid>-...` staging files and folders in `folder` whose writer process is gone.

    A run killed with SIGKILL or by a power loss cannot remove its own staging file; its name carries its
    process id, so the next writer of the same path clears it. Stages of live writers (and names without a
    process id) are left alone.
    """
    with contextlib.suppress(OSError):
        for stage in folder.iterdir():
            pid_text = stage.name[len(prefix):].split('-', 1)[0] if stage.name.startswith(prefix) else ''
            if pid_text.isdigit() and not _process_alive(int(pid_text)):
                if stage.is_dir() and not stage.is_symlink():
                    shutil.rmtree(stage, ignore_errors=True)
                else:
                    stage.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def staged_path(path: str | os.PathLike[str], durable: bool = False, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path next to `path` (`.NAME.PID-XXXX.tmp`; `keep_suffix` appends the path's suffix, for
    writers that pick the format from it) that replaces `path` when the block ends without error; removed
    otherwise. OSError and torch's disk-full RuntimeError become one WriteError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = f'.tmp{path.suffix}' if keep_suffix else '.tmp'
        prefix = f'.{path.name}.{os.getpid()}-'
        if durable:  # checkpoints: a killed trainer's staged copy is megabytes; clear it on the next save
            remove_stale_stages(path.parent, f'.{path.name}.')
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.close(fd)
        os.chmod(name, _DEFAULT_FILE_MODE)  # mkstemp's 0600 would make every output private to its writer
    except OSError as err:
        raise write_error(path, err) from None
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, WriteError):
            raise
        if isinstance(err, OSError) or is_disk_full(err):
            raise write_error(path, err) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = 'w', durable: bool = False,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """`open(path, mode)` of a temporary file that replaces `path` when the block ends without error."""
    with staged_path(path, durable) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    with atomic_open(path, 'wb', durable) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, durable: bool = False) -> Path:
    with atomic_open(path, 'w', durable, encoding='utf-8') as f:
        f.write(text)
    return Path(path)


def save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    import numpy as np

    with atomic_open(path, 'wb') as f:
        np.save(f, array)
    return Path(path)


def write_image(path: str | os.PathLike[str], image: Any) -> Path:
    """An image (BGR / mono, as cv2.imwrite takes it) encoded by its path's suffix (.png, .jpg)."""
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise WriteError(f'cannot encode an image of shape {image.shape} as {path.suffix} for {path}')
    return write_bytes(path, buf.tobytes())


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], bool]) -> Path:
    """Files that only a path-taking writer makes (cv2.imwriteanimation): `writer(tmp)` -> success."""
    with staged_path(path, keep_suffix=True) as tmp:
        if not writer(tmp):
            raise write_error(Path(path), OSError(f'the encoder could not write {Path(path).suffix}'))
    return Path(path)
