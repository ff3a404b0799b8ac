"""Output files that never clobber an input, never replace a file unasked, and never show half-written.

Every file a command writes goes through here:

* :func:`check_output` runs before any work: it refuses an output that is one of the inputs (same
  resolved path, or the same inode through another name or a link), an output that exists unless
  ``force``, an output that is a directory, and an output whose folder is missing;
* :func:`atomic_write` and :func:`atomic_path` write to a temporary file in the output's own
  folder, flush it to disk (``fsync``), and only then ``os.replace`` it over the output, so a
  crash or an error leaves either the old file or the new one, never a torn one;
* the file written has the permissions of the file it replaces, or, for a new file, those the
  process's umask gives any new file (a temporary file is created private).

Trained policies (directories) are written by :mod:`budgetctl.learn._artifact`, which switches
them over in one rename of their ``policy.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

__all__ = [
    "OutputError",
    "check_output",
    "check_outputs",
    "check_output_directory",
    "atomic_write",
    "atomic_path",
    "umask",
]


class OutputError(ValueError):
    """An output path that would destroy something (an input, an existing file) or cannot be written."""


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
    flag: str = "output",
) -> str:
    """Return ``path`` if a command may write it; raise :class:`OutputError` naming ``flag`` if not.

    An input is never overwritten, even with ``force``: inputs are compared by resolved path and by
    inode, so ``./pool.jsonl``, an absolute path and a hard or symbolic link all count as the same.
    """
    name = os.fspath(path)
    for source in inputs:
        if _same(name, os.fspath(source)):
            raise OutputError(
                f"{flag} {name} is an input of this command ({os.fspath(source)}); refusing to overwrite it"
            )
    folder = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {name}: folder {folder} does not exist")
    if os.path.isdir(name):
        raise OutputError(f"{flag} {name} is a directory; give a file name")
    if os.path.lexists(name) and not force:
        raise OutputError(f"{flag} {name} exists; pass --force to replace it")
    return name


def check_outputs(
    outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
) -> None:
    """:func:`check_output` for each ``(flag, path)`` (``None`` and ``-``, stdout, pass); no two may be the same."""
    sources = [os.fspath(p) for p in inputs]
    seen: list[tuple[str, str]] = []
    for flag, path in outputs:
        if path is None or os.fspath(path) == "-":
            continue
        name = check_output(path, inputs=sources, force=force, flag=flag)
        for other_flag, other in seen:
            if os.path.realpath(other) == os.path.realpath(name):
                raise OutputError(f"{flag} and {other_flag} name the same file {name}")
        seen.append((flag, name))


def check_output_directory(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
    flag: str = "output",
) -> str:
    """Return ``path`` if a command may (re)place a directory there; raise :class:`OutputError` if not.

    Refused: an existing path unless ``force``, an existing file, a missing parent folder, and a
    directory that is or holds one of the inputs (replacing it would delete them).
    """
    name = os.fspath(path)
    real = os.path.realpath(name)
    for source in inputs:
        source_real = os.path.realpath(os.fspath(source))
        if source_real == real or source_real.startswith(real.rstrip(os.sep) + os.sep):
            raise OutputError(f"{flag} {name} is or holds an input of this command ({os.fspath(source)}); refusing")
    folder = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {name}: folder {folder} does not exist")
    if os.path.lexists(name):
        if not os.path.isdir(name):
            raise OutputError(f"{flag} {name} exists and is not a directory")
        if not force:
            raise OutputError(f"{flag} {name} exists; pass --force to replace it")
    return name


def umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc`` on Linux)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and put back (not thread-safe; only where /proc is missing)
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    # The replaced file's permissions, or a new file's: a temporary file is created 0600.
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


def _fsync_folder(folder: str) -> None:
    # Make the rename itself durable; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension); on success, fsync it and move it over ``path``.

    For writers that take a file name (``savefig``). If the block raises, the temporary file is
    removed and ``path`` is left as it was.
    """
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    base = os.path.basename(name)
    stem, ext = os.path.splitext(base)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=f".part{ext}")
    os.close(fd)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fchmod(stream.fileno(), _mode_for(name))
            os.fsync(stream.fileno())
        os.replace(temporary, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically: readers see the old file or the whole new one."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(payload)


def atomic_directory(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``path``; on success, swap it in as ``path``.

    Write (and check, e.g. by loading it back) the directory's contents inside the block. An existing
    ``path`` is refused unless ``force``; with ``force`` it is moved aside, the new directory renamed
    in, and only then the old one deleted: at every moment one complete directory sits at ``path``
    or beside it (as ``.NAME.old-*``). If the block raises, ``path`` is untouched.
    """
    name = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(name)
    if not os.path.isdir(folder):
        raise OutputError(f"output {os.fspath(path)}: folder {folder} does not exist")
    if os.path.lexists(name) and not force:
        raise OutputError(f"output {os.fspath(path)} exists; pass --force to replace it")
    if os.path.lexists(name) and not os.path.isdir(name):
        raise OutputError(f"output {os.fspath(path)} exists and is not a directory")
    base = os.path.basename(name)
    temporary = tempfile.mkdtemp(dir=folder, prefix=f".{base}.part-")
    try:
        yield temporary
        for entry in os.scandir(temporary):
            if entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb+") as stream:
                    os.fsync(stream.fileno())
        _fsync_folder(temporary)
        old = None
        if os.path.lexists(name):
            old = tempfile.mkdtemp(dir=folder, prefix=f".{base}.old-")
            os.rmdir(old)
            os.replace(name, old)
        try:
            os.replace(temporary, name)
        except BaseException:
            if old is not None:
                os.replace(old, name)
            raise
        _fsync_folder(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
