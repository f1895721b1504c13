"""Files the tool writes: atomic writes that keep the usual permissions, output paths checked before any work,
and the identity of a local file (for cache keys).

The rules here are the user's safety: an output never replaces an input of the same run, never lands in a
folder that is not there or under a regular file, and a file is either absent or whole.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what the tool's pictures (contact sheets, renders) are saved as


def _default_mode() -> int:
    """0o666 less the process umask: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable, mode: Optional[int] = None) -> Path:
    """``write(binary_file)`` to a temporary file beside ``path``, synced, then renamed over it: readers never see
    half a file. The result keeps the mode of the file it replaces, else the umask's (not mkstemp's 0600)."""
    path = Path(path)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = _default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def file_identity(path: PathLike):
    """``[absolute path, size, mtime_ns]`` of an existing file (a replaced file gets a new identity), else the
    value itself as a string (e.g. a pretrained tag)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    return str(path)


def check_output(path: PathLike, what: str = "output", inputs: Iterable[PathLike] = (),
                 suffixes: Optional[Sequence[str]] = None) -> Path:
    """``path`` if the tool may write it; else a one-line InputError, raised before any work is done.

    Refused: an existing folder, a folder that does not exist, a parent that is a regular file, a folder the
    process cannot write, a suffix outside ``suffixes``, and any path that is one of ``inputs`` (the same file
    under another name included).
    """
    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise InputError(f"{what}: the path is empty")
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise InputError(f"{what} {p}: unknown file type '{p.suffix}'; use one of {', '.join(suffixes)}")
    parent = p.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(f"{what} {p}: {ancestor} is a file, not a folder")
            break
    if not parent.is_dir():
        raise InputError(f"{what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p}: permission denied (cannot write in {parent})")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} {p}: permission denied")
    for source in inputs:
        s = Path(source).expanduser()
        same = os.path.realpath(s) == os.path.realpath(p)
        try:
            same = same or (s.exists() and p.exists() and os.path.samefile(s, p))
        except OSError:  # a link loop or an unreadable input: the name comparison stands
            pass
        if same:
            raise InputError(f"{what} {p} is an input of this run; choose another name so it is not overwritten")
    return p
