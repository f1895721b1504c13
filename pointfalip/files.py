"""Files the tool reads and writes: inputs named for what they are (folder, device, named pipe, process
substitution) and read once with a bound, atomic writes that keep the usual permissions, output paths checked
before any work, the inputs of a run, and the identity of a local file or of a dataset's files (for cache keys).

The rules here are the user's safety: an output never replaces an input of the same run nor lands inside an input
folder, never lands in a folder that is not there or under a regular file, and a file is either absent or whole;
a pipe with no writer never hangs the tool. An existing file is replaced only when this tool wrote it (the mark it
leaves: `made_by_pointfalip`) or the user allowed it (`replacing`, the command line's --force); a default-named
output takes the next free name instead (`free_name`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import stat
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what the tool's pictures (contact sheets, renders) are saved as
PIPE_WAIT_S = 10.0  # a pipe silent this long (seconds) is given up on: a named pipe nobody writes to never hangs
MAX_TEXT_BYTES = 64 << 20  # labels, prompts and presets larger than this are not what they claim to be
# the options of the command line that name a file or folder the run reads (`run_inputs`)
INPUT_OPTIONS = ("files", "file", "cloud", "input", "image", "mask", "root", "train_root", "labels_file",
                 "prompt_file", "preset", "fewshot", "pretrained", "model", "annotations", "detections")


def path_text(path: PathLike) -> str:
    """A path as messages show it: as it is, or escaped (``ascii``) when it holds control characters."""
    text = os.fsdecode(path)
    return text if text.isprintable() else ascii(text)


def check_text(text: str, what: str) -> str:
    """``text`` if it is text UTF-8 can hold; else a one-line InputError (a name with undecodable bytes, which
    Python keeps as lone surrogates, or a JSON string with a lone ``\\ud800`` escape: no prompt, report or
    terminal can take it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {ascii(text)[1:-1]} is not valid UTF-8 text (undecodable bytes or a lone "
                         "surrogate); rename or fix it") from None
    return text


def input_kind(path: PathLike) -> str:
    """What a path is: "file", "folder", "device", "named pipe", "pipe" (a process substitution such as
    ``<(cmd)`` or ``/dev/fd/N``), "socket", "missing" or "unusable" (a link loop, a name too long)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "unusable"
    if stat.S_ISREG(info.st_mode):
        return "file"
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        return "device"
    if stat.S_ISSOCK(info.st_mode):
        return "socket"
    if stat.S_ISFIFO(info.st_mode):
        try:
            anonymous = os.readlink(path).startswith("pipe:")  # /dev/fd/N of `<(cmd)` links to pipe:[inode]
        except OSError:
            anonymous = False
        return "pipe" if anonymous else "named pipe"
    return "unusable"


_KIND_TEXT = {"folder": "is a folder, not a file", "device": "is a device, not a file",
              "named pipe": "is a named pipe (FIFO), not a regular file",
              "pipe": "is a pipe (a process substitution such as <(...)), not a regular file",
              "socket": "is a socket, not a file"}


def check_input_file(path: PathLike, what: str, pipes: bool = False) -> Path:
    """``path`` if it is a regular file (or, with ``pipes``, a pipe to be read once by `read_input`); else a
    one-line InputError that names what the path is."""
    p = Path(path).expanduser()
    name = f"{what} {path_text(path)}"
    kind = input_kind(p)
    if kind == "file" or pipes and kind in ("pipe", "named pipe"):
        return p
    if kind == "missing":
        raise InputError(f"{name} does not exist")
    if kind == "unusable":
        raise InputError(f"{name}: not a usable path (a link loop or a name too long?)")
    if kind == "folder":
        raise InputError(f"{name} {_KIND_TEXT[kind]}")
    reread = "" if kind == "device" or pipes else " (it is read more than once)"
    raise InputError(f"{name} {_KIND_TEXT[kind]}; give a regular file{reread}")


_pipes_read: dict = {}  # (path, device, inode) of a pipe -> its bytes: a pipe can be read once per command


def forget_pipes() -> None:
    """Drop the bytes of the pipes read so far (the command line calls it when a command ends)."""
    _pipes_read.clear()


def read_input(path: PathLike, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of an input: a regular file, or a pipe (``<(cmd)``, a named pipe) read until its writer closes
    it and kept, so that the steps of one command that read it again get the same bytes (`forget_pipes`); a pipe
    silent for `PIPE_WAIT_S` seconds (a named pipe nobody writes to) is an InputError, never a hang. More than
    ``limit`` bytes is an InputError."""
    p = check_input_file(path, what, pipes=True)
    name = f"{what} {path_text(path)}"
    try:
        if input_kind(p) == "file":
            with open(p, "rb") as f:
                data = f.read(limit + 1)
        else:
            info = os.stat(p)
            key = (os.path.abspath(p), info.st_dev, info.st_ino)
            if key not in _pipes_read:
                _pipes_read[key] = _read_pipe(p, name, limit)
            data = _pipes_read[key]
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as e:
        raise InputError(f"{name}: cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise InputError(f"{name} is larger than {limit >> 20} MiB; it is not what it claims to be")
    return data


def _read_pipe(path: Path, name: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe's open would wait for a writer: never block
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks, size, deadline = [], 0, time.monotonic() + PIPE_WAIT_S
        while size <= limit:
            events = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            if not events:
                if time.monotonic() >= deadline:
                    raise InputError(f"{name}: nothing came through the pipe within {PIPE_WAIT_S:g} s "
                                     "(a named pipe with no writer?)")
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                if any(ev & select.POLLHUP for _, ev in events):
                    break  # the writer closed the pipe: the end
                time.sleep(0.01)  # no writer has connected yet (a named pipe): wait for one, up to the deadline
                continue
            chunks.append(chunk)
            size += len(chunk)
            deadline = time.monotonic() + PIPE_WAIT_S
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_input_text(path: PathLike, what: str) -> str:
    """`read_input` decoded as UTF-8 (a byte-order mark dropped); InputError when it is not UTF-8 text."""
    try:
        return read_input(path, what).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path_text(path)} is not UTF-8 text") from None


def run_inputs(args) -> list[Path]:
    """The files and folders a parsed command line reads (`INPUT_OPTIONS`): what no output of the run may be or
    be inside. Options that are names or tags (a preset name, ``--pretrained openai``, ``--model ViT-B-16``) count
    only when a file of that name exists (a folder of that name is not what they read)."""
    found = []
    for option in INPUT_OPTIONS:
        value = getattr(args, option, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, (str, os.PathLike)) or not str(v).strip():
                continue
            if option in ("preset", "pretrained", "model") and input_kind(os.path.expanduser(v)) in (
                    "missing", "folder"):
                continue
            found.append(Path(v).expanduser())
    return found


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


IDENTITY_BLOCK = 4096  # bytes hashed at each sampled place of a data file (`data_identity`)
IDENTITY_SAMPLES = 3  # places sampled: the start, the middle and the end; a file this small is hashed whole


def _sampled_digest(path: PathLike, size: int) -> str:
    """sha256 of ``IDENTITY_SAMPLES`` blocks spread over the file (all of it when it is small)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= IDENTITY_BLOCK * IDENTITY_SAMPLES:
            digest.update(f.read())
        else:
            last = size - IDENTITY_BLOCK
            for k in range(IDENTITY_SAMPLES):
                f.seek(last * k // (IDENTITY_SAMPLES - 1))
                digest.update(f.read(IDENTITY_BLOCK))
    return digest.hexdigest()


def data_identity(paths: Iterable[PathLike]) -> dict:
    """The identity of the data files a run reads, for cache keys: ``{"files": count, "sha256": digest}`` over
    every file's path, size, mtime and a cheap content hash (a few blocks, `IDENTITY_SAMPLES`). A file repaired,
    replaced (even with its old mtime, as ``cp -p`` does) or touched gives another identity; a missing or
    unreadable file counts as such, so that the run itself reports it."""
    digest = hashlib.sha256()
    count = 0
    for path in paths:
        count += 1
        name = os.fsencode(os.path.abspath(path))
        try:
            st = os.stat(path)
            mark = f"{st.st_size}:{st.st_mtime_ns}:{_sampled_digest(path, st.st_size)}"
        except OSError as e:
            mark = f"unreadable:{type(e).__name__}"
        digest.update(name + b"\0" + mark.encode() + b"\n")
    return {"files": count, "sha256": digest.hexdigest()}


def check_output(path: PathLike, what: str = "output", inputs: Iterable[PathLike] = (),
                 suffixes: Optional[Sequence[str]] = None) -> Path:
    """``path`` if the tool may write it; else a one-line InputError, raised before any work is done.

    Refused: an existing folder, a folder that does not exist, a parent that is a regular file, a folder the
    process cannot write, a suffix outside ``suffixes``, any path that is one of ``inputs`` (the same file under
    another name included), and any path inside an input that is a folder (a rosbag2 folder, a dataset root:
    every file in it is the run's input). A device or pipe given as output is refused too. An existing file is
    refused unless this tool wrote it (`made_by_pointfalip`) or the caller allows replacing (`replacing`).
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
    kind = input_kind(p)
    if kind not in ("file", "missing"):
        raise InputError(f"{what} {path_text(p)} {_KIND_TEXT.get(kind, 'is not a usable path')}; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} {p}: permission denied")
    real = Path(os.path.realpath(p))
    for source in inputs:
        s = Path(source).expanduser()
        real_source = Path(os.path.realpath(s))
        same = real_source == real
        try:
            same = same or (s.exists() and p.exists() and os.path.samefile(s, p))
        except OSError:  # a link loop or an unreadable input: the name comparison stands
            pass
        if same:
            raise InputError(f"{what} {p} is an input of this run; choose another name so it is not overwritten")
        if s.is_dir() and real.is_relative_to(real_source):
            raise InputError(f"{what} {p} is inside {s}, an input folder of this run; write it elsewhere")
    if kind == "file" and not _replace_allowed.get() and not made_by_pointfalip(p):
        raise InputError(f"{what} {p} exists and was not written by pointfalip; add --force to replace it, or "
                         "choose another name")
    return p


# ---- replacing existing outputs ------------------------------------------------------------------------
MARK = "pointfalip"  # what the tool writes into its own files (PNG text, JPEG comment, PLY comment, .npy header)
_replace_allowed: ContextVar[bool] = ContextVar("pointfalip_replace_allowed", default=False)
_MCAP_MARK = re.compile(rb"\x0c.{8}\x0a\x00\x00\x00pointfalip", re.S)  # an MCAP metadata record named pointfalip
_MARK_SCAN_BYTES = 1 << 20  # marks sit in a file's first bytes


@contextlib.contextmanager
def replacing(allowed: bool = True) -> Iterator[None]:
    """Within the block, `check_output` lets outputs replace existing files the tool did not write (--force)."""
    token = _replace_allowed.set(bool(allowed))
    try:
        yield
    finally:
        _replace_allowed.reset(token)


def made_by_pointfalip(path: PathLike) -> bool:
    """Whether the file at ``path`` carries the mark this tool leaves in what it writes: a PNG ``Software`` text or
    JPEG comment starting with `MARK`, a PLY header comment, an ``.npy`` header comment, a JSON report (``task``
    and ``runs``), a few-shot cache's format name, an MCAP ``pointfalip`` metadata record, a part evaluation's
    predictions (``.npz`` holding ``indices``, ``categories`` and ``pred_*``). Anything unreadable: False."""
    suffix = Path(path).suffix.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(_MARK_SCAN_BYTES)
        if suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as image:
                text = image.info.get("Software" if suffix == ".png" else "comment", b"")
            return (text.decode("latin-1") if isinstance(text, bytes) else str(text)).startswith(MARK)
        if suffix == ".ply":
            header = head.split(b"end_header", 1)[0]
            return f"comment made by {MARK}".encode() in header
        if suffix == ".npy":
            return head.startswith(b"\x93NUMPY") and f"# {MARK}".encode() in head.split(b"\n", 1)[0]
        if suffix == ".json":
            import json

            value = json.loads(Path(path).read_text(encoding="utf-8"))
            return isinstance(value, dict) and isinstance(value.get("task"), str) and "runs" in value
        if suffix in (".fewshot", ".safetensors"):
            import json

            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                return json.loads((f.metadata() or {}).get("format", "null")) == f"{MARK}-fewshot"
        if suffix == ".mcap":
            return _MCAP_MARK.search(head) is not None
        if suffix == ".npz":
            import zipfile

            with zipfile.ZipFile(path) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
            return {"indices", "categories"} <= names and any(n.startswith("pred_") for n in names)
    except Exception:  # noqa: BLE001 - a damaged or foreign file is not ours
        return False
    return False


def free_name(path: PathLike) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ...: where a
    default-named output goes, so that it never replaces a file."""
    p = Path(path)
    n = 1
    while os.path.lexists(p):
        n += 1
        p = Path(path).with_name(f"{Path(path).stem}-{n}{Path(path).suffix}")
    return p


def image_save_options(fmt: str) -> dict:
    """Keywords of ``PIL.Image.save`` that mark a picture as this tool's (PNG text, JPEG comment)."""
    from . import __version__

    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", f"{MARK} {__version__}")
        return {"pnginfo": info}
    if fmt == "JPEG":
        return {"comment": f"{MARK} {__version__}".encode(), "quality": 92}
    return {}


def mark_ply(data: bytes) -> bytes:
    """A PLY file's bytes with the tool's comment right after the header's ``format`` line."""
    magic, fmt, rest = data.split(b"\n", 2)
    return b"\n".join((magic, fmt, f"comment made by {MARK}".encode(), rest))


def save_npy(f, array) -> None:
    """``np.save`` to the binary file ``f`` with the tool's mark as a comment in the header's padding (the header is
    a Python literal: numpy reads it with ``ast.literal_eval``, which skips comments)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    major = data[6]
    size_bytes = 2 if major == 1 else 4
    start = 8 + size_bytes
    length = int.from_bytes(data[8:start], "little")
    header = data[start:start + length]
    body = header.rstrip(b"\n").rstrip(b" ")
    comment = f" # {MARK}".encode()
    if len(body) + len(comment) + 1 <= length:  # numpy pads headers to 64 bytes: the comment fits in the padding
        header = body + comment + b" " * (length - len(body) - len(comment) - 1) + b"\n"
    f.write(data[:start] + header + data[start + length:])
