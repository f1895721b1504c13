"""Point clouds and meshes from files (and `load_points` from arrays and tensors too), checked against their headers.

`load_points` returns an ``(N, 3)`` float32 array in the file's own coordinates, validated by
`pointfalip.clouds.validate`; `read_geometry` gives a mesh's or PLY's vertices, faces and per-vertex colours as
stored (nothing sampled or dropped). `load_points` samples meshes uniformly on their surface (seeded); point
files give all their points, subsampled (seeded, uniformly, without replacement) when larger than
``max_points``. Anything wrong with the user's input raises :class:`pointfalip.errors.InputError` with one line
saying what is wrong and what to do. The array half (validation, normalisation, the summary) is
`pointfalip.clouds`; its names stay importable from here.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

import numpy as np

from .clouds import MIN_POINTS, finite_rows, subsample, subsample_index, validate, xyz_columns
from .errors import InputError, one_line
from .files import check_input_file, path_text
# the array half of this module lives in pointfalip.clouds: re-exported for the old import paths
from .clouds import UP_AXES, as_array, describe, normalize

logger = logging.getLogger(__name__)

MESH_EXTENSIONS = (".off", ".obj", ".stl", ".ply", ".glb")  # .ply may be a mesh or a point cloud: decided by content
POINT_EXTENSIONS = (".ply", ".pcd", ".xyz", ".txt", ".pts", ".npy", ".npz")
SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(MESH_EXTENSIONS + POINT_EXTENSIONS))

NPZ_KEYS = ("points", "data", "xyz")  # keys tried in order in a .npz; otherwise its single array
MAX_NUM_POINTS = 10_000_000  # the most points sampled on a mesh (about 40 bytes each while sampling)
MAX_ARCHIVE_ARRAY_BYTES = 1 << 32  # an .npz array is decompressed into memory: 4 GiB at most

__all__ = ["Geometry", "MAX_NUM_POINTS", "MESH_EXTENSIONS", "MIN_POINTS", "NPZ_KEYS", "POINT_EXTENSIONS",
           "SUPPORTED_EXTENSIONS", "UP_AXES", "as_array", "describe", "load_points", "normalize", "read_geometry",
           "read_npy", "validate", "xyz_columns"]


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def load_points(source: Any, num_points: int = 2048, seed: int = 0, max_points: int | None = 200_000,
                drop_nonfinite: bool = False) -> np.ndarray:
    """Load a point cloud as a validated ``(N, 3)`` float32 array, in the source's own coordinates.

    Args:
        source: a path (``str`` / ``os.PathLike``) to a mesh (``.off .obj .stl .ply .glb``) or a point file
            (``.ply .pcd .xyz .txt .pts .npy .npz``); or an array / tensor of shape ``(N, C)`` or
            ``(1, N, C)`` with ``C >= 3`` (any real dtype). Columns after the first three (normals,
            colours, intensity) are dropped.
        num_points: points sampled uniformly on a mesh's surface, from ``MIN_POINTS`` to
            ``MAX_NUM_POINTS``. A mesh without surface area falls back to its vertices (at most
            ``num_points`` of them).
        seed: seed (an integer >= 0) of the surface sampling and of the subsampling; the same seed gives
            the same points.
        max_points: a point cloud (file or array) with more points is subsampled to exactly this many
            (at least ``MIN_POINTS``), uniformly at random without replacement, keeping file order;
            ``None`` keeps all points.
        drop_nonfinite: drop points with NaN / infinite coordinates (sensor frames mark missing returns so)
            instead of refusing the cloud.

    Files are checked against what they claim: the content must be the format the extension names, counts
    in headers (PLY, PCD, OFF, STL, GLB, ``.npy`` / ``.npz`` shapes, the count line of a text file) must
    match the data, and what trimesh / open3d return must hold those counts. Text files are UTF-8 (a
    byte-order mark is allowed). Warnings of the readers are not shown; what they warn about is an error.

    Raises:
        InputError: missing, empty, unreadable, corrupt, mislabelled or unsupported file; NaN / infinite
            coordinates, or coordinates beyond float32; fewer than ``MIN_POINTS`` distinct points; an
            argument outside its range.
    """
    num_points = _int_arg(num_points, "num_points", MIN_POINTS, MAX_NUM_POINTS,
                          f"at least {MIN_POINTS} points are needed to recognise a shape")
    if max_points is not None:
        max_points = _int_arg(max_points, "max_points", MIN_POINTS, None,
                              f"at least {MIN_POINTS} points are needed to recognise a shape")
    seed = _int_arg(seed, "seed", 0)
    rng = np.random.default_rng(seed)

    if isinstance(source, (str, os.PathLike)):
        path, head = _check_file(source)
        ext = path.suffix.lower()
        name = path_text(path)
        with _quiet():
            _check_content(path, head, ext)
            if ext in MESH_EXTENSIONS:
                vertices, faces, _ = _read_geometry(path, ext, head)
                if faces is None:  # a point cloud (a .ply without faces)
                    points = xyz_columns(vertices, name)
                    points = subsample(points, max_points, rng)
                else:
                    points = _sample_mesh(vertices, faces, num_points, seed, rng, name)
            else:
                points = _POINT_READERS[ext](path, max_points, rng)
            return validate(finite_rows(points) if drop_nonfinite else points, name=name)

    points = xyz_columns(as_array(source, "points"), "points")
    points = finite_rows(points) if drop_nonfinite else points
    points = validate(subsample(points, max_points, rng), name="points")
    return points.copy() if points is source else points  # never the caller's own array


# --------------------------------------------------------------------------------------------------
# helpers: arguments, messages
# --------------------------------------------------------------------------------------------------

def _int_arg(value: Any, what: str, lo: int, hi: int | None = None, why: str = "") -> int:
    """An integer argument in ``[lo, hi]`` (``hi`` None: no upper bound), checked before anything is allocated."""
    in_range = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
                and lo <= value and (hi is None or value <= hi))
    if not in_range:
        allowed = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise InputError(f"{what} must be an integer {allowed}{f' ({why})' if why else ''}, "
                         f"got {_short(repr(value))}")
    return int(value)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the readers' warnings (numpy, trimesh, PIL): the checks around them report what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------
# helpers: files
# --------------------------------------------------------------------------------------------------

_HEAD_BYTES = 4096  # bytes read first: magic numbers, the start of a header
_MAX_HEADER_BYTES = 1 << 20  # a PLY / PCD header must end within this many bytes


def _check_file(source: str | os.PathLike) -> tuple[Path, bytes]:
    """An existing, readable, non-empty regular file with a supported extension, and its first bytes."""
    path = Path(source)
    name = path_text(path)
    try:
        path = path.expanduser()
        info = path.stat()
    except FileNotFoundError as e:
        raise InputError(f"{name}: no such file; check the path") from e
    except PermissionError as e:
        raise InputError(f"{name}: permission denied (a folder on its path cannot be searched); "
                         "check the folder's permissions") from e
    except (OSError, ValueError, RuntimeError) as e:  # a link loop, a name too long, a NUL byte, an unknown ~user
        raise InputError(f"{name}: not a usable path ({getattr(e, 'strerror', None) or one_line(e)})") from e
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{name}: is a folder, not a file; give a point-cloud or mesh file")
    if not stat.S_ISREG(info.st_mode):
        check_input_file(path, "point file")  # names what it is: a device, a named pipe, a process substitution
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(f"{name}: unsupported file type {_short(ext) or '(no extension)'!r}; "
                         f"supported: {' '.join(SUPPORTED_EXTENSIONS)}")
    if info.st_size == 0:
        raise InputError(f"{name}: the file is empty; give a file with points or a mesh")
    return path, _read_bytes(path, _HEAD_BYTES)


def _read_bytes(path: Path, limit: int = -1, offset: int = 0) -> bytes:
    """Bytes of a file (at most ``limit`` from ``offset``); unreadable files are an InputError."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except PermissionError as e:
        raise InputError(f"{path_text(path)}: permission denied; make the file readable (chmod +r) "
                         "or give a copy you can read") from e
    except OSError as e:
        raise InputError(f"{path_text(path)}: cannot read the file ({one_line(e)})") from e


def _corrupt(path: Path, what: str, e: BaseException) -> InputError:
    return InputError(f"{path_text(path)}: could not read it as {what} ({one_line(e)}); check that the file is valid")


def _mismatch(path: Path | str, declared: str, found: str, source: str = "its header") -> InputError:
    name = path if isinstance(path, str) else path_text(path)
    return InputError(f"{name}: {source} declares {declared} but the file holds {found}; "
                      "the file is truncated or corrupt")


# ---- what a file really is ----------------------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x93NUMPY", "npy"), (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"glTF", "glb"),
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"\x89HDF\r\n\x1a\n", "hdf5"), (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"), (b"7z\xbc\xaf\x27\x1c", "7z"), (b"%PDF-", "pdf"), (b"#ROSBAG", "rosbag"),
    (b"\x89MCAP", "mcap"), (b"SQLite format 3\x00", "sqlite"),
    (b"\x80\x02", "pickle"), (b"\x80\x03", "pickle"), (b"\x80\x04", "pickle"), (b"\x80\x05", "pickle"),
    (b"\xff\xfe", "utf16"), (b"\xfe\xff", "utf16"),
)
_KINDS: dict[str, tuple[str, str | None]] = {  # kind -> (what it is, the extension it belongs to)
    "npy": ("a NumPy .npy array", ".npy"),
    "zip": ("a ZIP archive (as .npz files are)", ".npz"),
    "glb": ("a binary glTF scene", ".glb"),
    "ply": ("a PLY file", ".ply"),
    "pcd": ("a PCD point cloud", ".pcd"),
    "off": ("an OFF mesh", ".off"),
    "png": ("a PNG image", None), "jpeg": ("a JPEG image", None), "gif": ("a GIF image", None),
    "tiff": ("a TIFF image", None), "hdf5": ("an HDF5 file", None), "gzip": ("a gzip-compressed file", None),
    "xz": ("an xz-compressed file", None), "7z": ("a 7-Zip archive", None), "pdf": ("a PDF document", None),
    "rosbag": ("a ROS 1 bag", None), "mcap": ("an MCAP recording", None),
    "sqlite": ("an SQLite database (as ROS 2 bags are)", None),
    "pickle": ("Python pickle data (never loaded: it can run code)", None),
    "utf16": ("UTF-16 text (only UTF-8 is read)", None),
    "binary": ("binary data", None),
    "non-utf8": ("text that is not UTF-8", None),
    "text": ("a text file", None),
}
_ACCEPTED: dict[str, frozenset[str]] = {  # extension -> the kinds its reader takes; headers are checked later
    ".npy": frozenset({"npy"}), ".npz": frozenset({"zip"}), ".glb": frozenset({"glb"}), ".ply": frozenset({"ply"}),
    ".pcd": frozenset({"pcd", "text"}), ".stl": frozenset({"text", "binary", "non-utf8"}),
    ".off": frozenset({"off", "text", "non-utf8"}), ".obj": frozenset({"text", "non-utf8"}),
    ".xyz": frozenset({"text"}), ".txt": frozenset({"text"}), ".pts": frozenset({"text"}),
}
_TEXT_EXTENSIONS = (".xyz", ".txt", ".pts", ".off", ".obj", ".pcd")
_OFF_START = re.compile(rb"[CN]*OFF(\s|\d|$)", re.IGNORECASE)


def _sniff(head: bytes) -> str:
    """What the first bytes of a file say it is: a key of ``_KINDS``."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if re.match(rb"ply\r?\n", text):
        return "ply"
    lines = [ln.strip() for ln in text.split(b"\n")[:20]]
    first = next((ln for ln in lines if ln and not ln.startswith(b"#")), b"")
    if text.startswith(b"# .PCD") or first.startswith((b"VERSION ", b"FIELDS ")):
        return "pcd"
    if _OFF_START.match(first):
        return "off"
    if b"\x00" in head:
        return "binary"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.end < len(text) or len(head) < _HEAD_BYTES:  # not just a character cut at the end of the head
            return "non-utf8"
    return "text"


def _check_content(path: Path, head: bytes, ext: str) -> None:
    """Refuse a file whose content is not the format its extension names (an .npz named .npy, text named .ply)."""
    if ext == ".stl" and _binary_stl_triangles(path, head) is not None:
        return  # a binary STL's 80-byte header is free-form: its size decides
    kind = _sniff(head)
    if kind in _ACCEPTED[ext]:
        return
    what, home = _KINDS[kind]
    if home in SUPPORTED_EXTENSIONS and home != ext:
        hint = f"rename it to {home} if that is what it is"
    elif kind in ("utf16", "non-utf8") and ext in _TEXT_EXTENSIONS:
        hint = "save it as UTF-8 text"
    else:
        hint = f"give a valid {ext} file"
    raise InputError(f"{path_text(path)}: is {what}, not a valid {ext} file; {hint}")


# ---- meshes (and .ply point clouds) through trimesh --------------------------------------------------

_OFF_HEADER = re.compile(r"^\s*(C?N?OFF)\s*(.*)$", re.IGNORECASE)


def _clean_off_text(data: bytes) -> bytes:
    """Repair OFF quirks of ModelNet-style files: comments, blank lines, a lowercase header, and the
    header glued to the counts (``OFF490 518 0``), which becomes ``OFF`` and ``490 518 0`` on two lines."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return b""
    m = _OFF_HEADER.match(lines[0])
    if m:
        head = [m.group(1).upper()] + ([m.group(2)] if m.group(2) else [])
        lines = head + lines[1:]
    else:  # no header at all: the first line is the counts
        lines = ["OFF"] + lines
    return ("\n".join(lines) + "\n").encode()


def _check_off_counts(path: Path) -> None:
    """The vertex and face counts of an OFF header must match its rows (one vertex or face a row)."""
    lines = _clean_off_text(_read_bytes(path)).splitlines()
    counts = lines[1].split() if len(lines) > 1 else []
    try:
        nv, nf = int(counts[0]), int(counts[1])
    except (ValueError, IndexError):
        raise InputError(f"{path_text(path)}: is not a valid OFF mesh (no 'vertices faces edges' counts line); "
                         "check that the file is valid") from None
    if nv < 0 or nf < 0 or len(lines) - 2 != nv + nf:
        raise _mismatch(path, f"{nv} vertices and {nf} faces", f"{len(lines) - 2} data rows")


def _binary_stl_triangles(path: Path, head: bytes) -> int | None:
    """The triangle count of a binary STL whose size matches it; None when the file is not one."""
    if len(head) < 84:
        return None
    (n,) = struct.unpack("<I", head[80:84])
    return n if path.stat().st_size == 84 + 50 * n else None


def _check_stl(path: Path, head: bytes) -> None:
    if _binary_stl_triangles(path, head) is not None:
        return
    if head.lstrip()[:5].lower() == b"solid" and b"\x00" not in head:
        return  # ASCII STL: trimesh reads it
    if len(head) < 84:
        raise InputError(f"{path_text(path)}: is not a valid STL file (too short for a binary STL, "
                         "and not ASCII STL); check that the file is valid")
    (n,) = struct.unpack("<I", head[80:84])
    raise _mismatch(path, f"{n} triangles ({84 + 50 * n} bytes)", f"{path.stat().st_size} bytes")


def _check_glb(path: Path, head: bytes) -> None:
    if len(head) < 12:
        raise InputError(f"{path_text(path)}: is not a valid .glb file (shorter than its 12-byte header)")
    _, _, length = struct.unpack("<4sII", head[:12])
    size = path.stat().st_size
    if length != size:
        raise _mismatch(path, f"a length of {length} bytes", f"{size} bytes")


class _PlyElement(NamedTuple):
    name: str
    count: int
    properties: tuple[str, ...]  # property names
    row_bytes: int | None  # bytes of one binary row; None with a list property (or an unknown type)
    min_row_bytes: int  # the fewest bytes a binary row can take (a list's count, for an empty list)


_PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2,
                   "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
                   "double": 8, "float64": 8}
_PLY_END = re.compile(rb"^end_header[ \t]*\r?\n", re.MULTILINE)


def _ply_header(path: Path) -> tuple[str, list[_PlyElement], int]:
    """Format, elements and data offset of a PLY header (for count checks; trimesh reads the file)."""
    head = _read_bytes(path, _MAX_HEADER_BYTES)
    end = _PLY_END.search(head)
    if end is None:
        raise InputError(f"{path_text(path)}: is not a valid PLY file (no end_header line in its first "
                         f"{_MAX_HEADER_BYTES} bytes)")
    fmt, elements = None, []
    for line in head[:end.start()].decode("latin-1").splitlines()[1:]:
        tokens = line.split()
        if not tokens or tokens[0] in ("comment", "obj_info"):
            continue
        if tokens[0] == "format" and len(tokens) == 3:
            fmt = tokens[1]
        elif tokens[0] == "element" and len(tokens) == 3 and tokens[2].isascii() and tokens[2].isdigit():
            elements.append(_PlyElement(tokens[1], int(tokens[2]), (), 0, 0))
        elif tokens[0] == "property" and elements and len(tokens) >= 3:
            e = elements[-1]
            is_list = tokens[1] == "list"
            size = _PLY_TYPE_BYTES.get(tokens[2] if is_list else tokens[1])
            fixed = None if is_list or size is None or e.row_bytes is None else e.row_bytes + size
            elements[-1] = e._replace(properties=e.properties + (tokens[-1],), row_bytes=fixed,
                                      min_row_bytes=e.min_row_bytes + (size or 0))
        else:
            raise InputError(f"{path_text(path)}: is not a valid PLY file (header line {_short(line)!r})")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path_text(path)}: is not a valid PLY file (format {fmt!r}; "
                         "ascii, binary_little_endian or binary_big_endian expected)")
    return fmt, elements, end.end()


def _check_ply_counts(path: Path, fmt: str, elements: list[_PlyElement], offset: int) -> None:
    """The header's element counts must match the data: rows and values a row (ASCII) or bytes (binary)."""
    declared = " and ".join(f"{e.count} '{e.name}'" for e in elements) + " elements" if elements else "no elements"
    if fmt == "ascii":
        rows = [ln for ln in _read_bytes(path, offset=offset).split(b"\n") if ln.strip()]
        if len(rows) != sum(e.count for e in elements):
            raise _mismatch(path, declared, f"{len(rows)} data rows")
        start = 0
        for e in elements:
            if e.row_bytes is not None:  # no list property: a fixed number of values a row
                n = len(e.properties)
                bad = next((i for i in range(start, start + e.count) if len(rows[i].split()) != n), None)
                if bad is not None:
                    raise InputError(f"{path_text(path)}: data row {bad + 1} has {len(rows[bad].split())} values "
                                     f"but a '{e.name}' has {n}; the file is corrupt")
            start += e.count
        return
    actual = path.stat().st_size - offset
    if all(e.row_bytes is not None for e in elements):
        expected = sum(e.count * e.row_bytes for e in elements)
        if actual != expected:
            raise _mismatch(path, f"{declared} ({expected} bytes of data)", f"{actual} bytes of data")
    least = sum(e.count * e.min_row_bytes for e in elements)
    if actual < least:
        raise _mismatch(path, f"{declared} (at least {least} bytes of data)", f"{actual} bytes of data")


def _trimesh_load(path: Path, ext: str) -> Any:
    import trimesh

    try:
        return trimesh.load(str(path), file_type=ext[1:], process=False)
    except Exception as first:  # noqa: BLE001 - trimesh raises many types for bad files
        if ext != ".off":
            raise _corrupt(path, f"a {ext} file", first) from first
        try:
            loaded = trimesh.load(io.BytesIO(_clean_off_text(_read_bytes(path))), file_type="off", process=False)
        except Exception as e:  # noqa: BLE001
            raise _corrupt(path, "an OFF mesh", first) from e
        logger.info("%s: repaired OFF quirks (%s)", path, one_line(first))
        return loaded


class Geometry(NamedTuple):
    """What a mesh file or a PLY point cloud holds, in the file's own coordinates (a scene's transforms applied)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray | None  # (F, 3) int64 vertex indices of triangles; None for a point cloud (a .ply without faces)
    colors: np.ndarray | None = None  # (V, 3) uint8 RGB, where the file gives every vertex a colour (else None)


def read_geometry(source: str | os.PathLike) -> Geometry:
    """The vertices, triangle faces and per-vertex colours of a mesh file (``.off .obj .stl .ply .glb``) or a PLY
    point cloud, read by trimesh and checked as `load_points` checks a file (content, header counts, face indices);
    nothing is sampled, subsampled or dropped, so per-vertex data stays aligned with the file's vertices.

    A mesh file without faces gives ``faces`` of shape (0, 3); a PLY without faces gives ``faces`` None. Vertex
    coordinates are not checked for NaN (a scan may hold some): `pointfalip.clouds.validate` what you keep.
    """
    path, head = _check_file(source)
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise InputError(f"{path_text(path)}: read_geometry reads meshes and PLY files ({' '.join(MESH_EXTENSIONS)}); "
                         "use load_points for point files")
    with _quiet():
        _check_content(path, head, ext)
        return _read_geometry(path, ext, head, with_colors=True)


def _vertex_colors(geometry: Any, count: int) -> np.ndarray | None:
    """``(count, 3)`` uint8 RGB of a trimesh geometry's vertices, or None where it has no colour for each."""
    visual = getattr(geometry, "visual", None)
    if getattr(visual, "kind", None) != "vertex":
        return None
    colors = np.asarray(visual.vertex_colors)
    if colors.ndim != 2 or colors.shape[0] != count or colors.shape[1] < 3:
        return None
    return colors[:, :3].astype(np.uint8)


def _read_geometry(path: Path, ext: str, head: bytes, with_colors: bool = False) -> Geometry:
    """`Geometry` of a checked mesh file (colours only ``with_colors``); faces None for a .ply without faces."""
    import trimesh

    ply_vertices = None
    if ext == ".ply":
        fmt, elements, offset = _ply_header(path)
        vertex = next((e for e in elements if e.name == "vertex"), None)
        if vertex is None or not {"x", "y", "z"} <= set(vertex.properties):
            raise InputError(f"{path_text(path)}: has no vertex element with x y z properties; "
                             "give a point cloud or mesh with coordinates")
        _check_ply_counts(path, fmt, elements, offset)
        ply_vertices = sum(e.count for e in elements if e.name == "vertex")
    elif ext == ".off":
        _check_off_counts(path)
    elif ext == ".stl":
        _check_stl(path, head)
    elif ext == ".glb":
        _check_glb(path, head)
    loaded = _trimesh_load(path, ext)
    geoms = loaded.dump() if isinstance(loaded, trimesh.Scene) else [loaded]  # dump applies the scene's transforms
    vertices, faces, offset, clouds = [], [], 0, []
    mesh_colors, cloud_colors = [], []
    for g in geoms:
        if isinstance(g, trimesh.Trimesh):
            v = np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3)
            f = np.asarray(g.faces, dtype=np.int64).reshape(-1, 3)
            vertices.append(v)
            faces.append(f + offset)
            offset += len(v)
            mesh_colors.append(_vertex_colors(g, len(v)) if with_colors else None)
        elif hasattr(g, "vertices"):  # PointCloud, paths: their vertices
            clouds.append(np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3))
            cloud_colors.append(_vertex_colors(g, len(clouds[-1])) if with_colors else None)
    n_read = sum(len(v) for v in vertices + clouds)
    if ply_vertices is not None and n_read != ply_vertices:
        raise InputError(f"{path_text(path)}: trimesh read {n_read} vertices but the header declares "
                         f"{ply_vertices}; the file is corrupt")
    if faces and sum(len(f) for f in faces) > 0:
        v, f = np.concatenate(vertices), np.concatenate(faces)
        if f.min() < 0 or f.max() >= len(v):
            raise InputError(f"{path_text(path)}: a face refers to a vertex that does not exist; the mesh is corrupt")
        return Geometry(v, f, _joined(mesh_colors))
    points = vertices + clouds
    if not points or n_read == 0:
        raise InputError(f"{path_text(path)}: no vertices found; the file is corrupt or holds no mesh or point "
                         f"cloud (check that it is a valid {ext} file)")
    v, colors = np.concatenate(points), _joined(mesh_colors + cloud_colors)
    if ext == ".ply":
        return Geometry(v, None, colors)  # a .ply point cloud
    return Geometry(v, np.zeros((0, 3), dtype=np.int64), colors)  # a mesh without faces: falls back to its vertices


def _joined(parts: list) -> np.ndarray | None:
    """The parts' colours end to end, or None when one of them has none."""
    return np.concatenate(parts) if parts and all(c is not None for c in parts) else None


def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int,
                 rng: np.random.Generator, name: str) -> np.ndarray:
    """``num_points`` points uniform on the surface; a mesh without area gives (at most that many of) its vertices."""
    import trimesh

    used = vertices[np.unique(faces)] if len(faces) else vertices
    validate(used, min_points=1, name=name)  # NaN / inf / float32-overflowing vertices: say so before sampling
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
    area = float(mesh.area) if len(faces) else 0.0
    if not area > 0.0:
        logger.warning("%s: the mesh has no surface area; using its %d vertices", name, len(vertices))
        return subsample(vertices, num_points, rng)
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points)


# ---- point files ----------------------------------------------------------------------------------

_PCD_SIZES = {"F": (4, 8), "I": (1, 2, 4, 8), "U": (1, 2, 4, 8)}  # TYPE -> the SIZEs open3d reads


class _PcdHeader(NamedTuple):
    points: int
    columns: int  # values a point (the sum of COUNT)
    row_bytes: int  # bytes a point in binary data
    data: str  # ascii, binary or binary_compressed
    offset: int  # where the data starts


def _pcd_header(path: Path) -> _PcdHeader:
    """The counts of a PCD header, checked for consistency (open3d reads the file)."""
    name = path_text(path)
    head = _read_bytes(path, _MAX_HEADER_BYTES)
    keys: dict[str, list[str]] = {}
    offset, pos = None, 0
    for raw in head.splitlines(keepends=True):
        pos += len(raw)
        line = raw.decode("latin-1").strip()
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        keys[key.upper()] = values
        if key.upper() == "DATA":
            offset = pos
            break
    if offset is None:
        raise InputError(f"{name}: is not a valid PCD file (no DATA line in its header)")

    def ints(key: str, default: list[int] | None = None) -> list[int]:
        if key not in keys:
            if default is None:
                raise InputError(f"{name}: is not a valid PCD file (its header has no {key} line)")
            return default
        try:
            values = [int(v) for v in keys[key]]
        except ValueError:
            values = []
        if not values or min(values) < 0:
            raise InputError(f"{name}: is not a valid PCD file ({key} {_short(' '.join(keys[key]))!r})")
        return values

    fields = [f.lower() for f in keys.get("FIELDS", [])]
    if not {"x", "y", "z"} <= set(fields):
        raise InputError(f"{name}: has no x y z fields (FIELDS {_short(' '.join(fields))!r}); "
                         "give a point cloud with coordinates")
    sizes, counts, types = ints("SIZE"), ints("COUNT", [1] * len(fields)), [t.upper() for t in keys.get("TYPE", [])]
    if not len(fields) == len(sizes) == len(counts) == len(types):
        raise InputError(f"{name}: is not a valid PCD file (FIELDS, SIZE, TYPE and COUNT differ in length)")
    for field, kind, size in zip(fields, types, sizes):
        if size not in _PCD_SIZES.get(kind, ()):
            raise InputError(f"{name}: field {_short(field)!r} has TYPE {_short(kind)!r} SIZE {size}, which PCD "
                             "readers do not know (F 4/8, I or U 1/2/4/8); the file is corrupt")
    width, height = ints("WIDTH")[0], ints("HEIGHT", [1])[0]
    points = ints("POINTS", [width * height])[0]
    if points != width * height:
        raise InputError(f"{name}: its header declares POINTS {points} but WIDTH x HEIGHT = {width * height}; "
                         "the file is corrupt")
    if points == 0:
        raise InputError(f"{name}: holds no points (its header declares POINTS 0); give a non-empty point cloud")
    data = (keys["DATA"] or [""])[0].lower()
    if data not in ("ascii", "binary", "binary_compressed"):
        raise InputError(f"{name}: unsupported PCD data {_short(data)!r}; ascii, binary and binary_compressed are read")
    return _PcdHeader(points, sum(counts), sum(s * c for s, c in zip(sizes, counts)), data, offset)


def _check_pcd_data(path: Path, header: _PcdHeader) -> None:
    """The data must hold exactly the header's points: rows of numbers (ascii) or bytes (binary)."""
    declared = f"{header.points} points"
    body_size = path.stat().st_size - header.offset
    if header.data == "ascii":
        lines = [ln for ln in _read_bytes(path, offset=header.offset).decode("latin-1").split("\n") if ln.strip()]
        if len(lines) != header.points:
            raise _mismatch(path, declared, f"{len(lines)} data rows")
        bad = next((i for i, ln in enumerate(lines) if len(ln.split()) != header.columns), None)
        if bad is not None:
            raise InputError(f"{path_text(path)}: data row {bad + 1} has {len(lines[bad].split())} values but the "
                             f"header's fields need {header.columns}; the file is corrupt")
        try:
            np.loadtxt(lines, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise InputError(f"{path_text(path)}: unreadable numbers in the data rows ({one_line(e)}); "
                             "the file is corrupt") from e
    elif header.data == "binary":
        expected = header.points * header.row_bytes
        if body_size != expected:
            raise _mismatch(path, f"{declared} ({expected} bytes of data)", f"{body_size} bytes of data")
    else:
        sizes = _read_bytes(path, 8, header.offset)
        if len(sizes) < 8:
            raise _mismatch(path, declared, "no compressed data")
        compressed, uncompressed = struct.unpack("<II", sizes)
        expected = header.points * header.row_bytes
        if uncompressed != expected:
            raise _mismatch(path, f"{declared} ({expected} bytes of data)",
                            f"{uncompressed} bytes once uncompressed")
        if body_size - 8 != compressed:
            raise _mismatch(path, f"{compressed} bytes of compressed data", f"{body_size - 8}")


def _read_pcd(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    header = _pcd_header(path)
    _check_pcd_data(path, header)
    import open3d as o3d

    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        cloud = o3d.io.read_point_cloud(str(path), format="pcd")
    points = np.asarray(cloud.points)
    if len(points) != header.points:
        raise InputError(f"{path_text(path)}: open3d read {len(points)} of the header's {header.points} points; "
                         "the file is corrupt (ascii, binary and binary_compressed PCD with x y z fields are read)")
    return subsample(points, max_points, rng)


_TEXT_SPLIT = re.compile(r"[\s,;]+")


def _numeric_row(line: str) -> bool:
    tokens = [t for t in _TEXT_SPLIT.split(line.strip()) if t]
    if len(tokens) < 3:
        return False
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def _read_text(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """UTF-8 text (a byte-order mark is skipped) of whitespace, comma or semicolon separated numbers; leading
    lines that are not rows of at least three numbers (headers) are skipped, and a lone integer among them is
    a count that the rows must match; ``#`` starts a comment."""
    name = path_text(path)
    declared = None
    try:
        with open(path, "r", encoding="utf-8-sig", errors="strict") as f:
            first = None
            for skipped, line in enumerate(f):
                content = line.split("#", 1)[0]
                if _numeric_row(content):
                    first = line
                    break
                tokens = content.split()
                if len(tokens) == 1 and tokens[0].isascii() and tokens[0].isdigit():
                    declared = int(tokens[0])  # a count line (.pts)
            if first is None:
                raise InputError(f"{name}: no rows of at least 3 numbers (x y z) found; "
                                 "give whitespace- or comma-separated coordinates")
            delimiter = next((d for d in (",", ";") if d in first.split("#", 1)[0]), None)
            try:
                data = np.loadtxt(itertools.chain([first], f), dtype=np.float64, comments="#",
                                  delimiter=delimiter, usecols=(0, 1, 2), ndmin=2)  # extra columns dropped
            except UnicodeDecodeError:
                raise
            except ValueError as e:
                raise InputError(f"{name}: unreadable numbers after line {skipped + 1} ({one_line(e)}); "
                                 "every row must start with x y z as numbers") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                         "save it as UTF-8 or ASCII") from e
    except PermissionError as e:
        raise InputError(f"{name}: permission denied; make the file readable (chmod +r) "
                         "or give a copy you can read") from e
    except OSError as e:
        raise InputError(f"{name}: cannot read the file ({one_line(e)})") from e
    if declared is not None and declared != len(data):
        raise _mismatch(path, f"{declared} points", f"{len(data)} rows", source="its count line")
    return subsample(xyz_columns(data, name), max_points, rng)


def _npy_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a .npy stream, without reading its data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read")
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise InputError(f"{name}: is not a valid .npy array ({one_line(e)})") from e
    if dtype.hasobject:
        raise InputError(f"{name}: holds Python objects (pickled data, never loaded: it can run code), not "
                         "numbers; save the points as a numeric array with numpy.save")
    if dtype.kind not in "fiu":
        raise InputError(f"{name}: array of dtype {dtype} is not coordinates; give real numbers")
    return tuple(shape), dtype, f.tell()


def _check_npy_size(name: str, shape: tuple[int, ...], dtype: np.dtype, found: int) -> None:
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if found != expected:
        raise _mismatch(name, f"an array of shape {shape} ({expected} bytes of {dtype})", f"{found} bytes")


def read_npy(source: str | os.PathLike) -> np.ndarray:
    """The array of real numbers a ``.npy`` file holds, memory-mapped; its header checked against its size, its
    content against the extension; never unpickled. Any problem is a one-line InputError."""
    path, head = _check_file(source)
    _check_content(path, head, ".npy")
    return _load_npy(path)


def _load_npy(path: Path) -> np.ndarray:
    name = path_text(path)
    try:
        with open(path, "rb") as f:
            shape, dtype, offset = _npy_header(f, name)
    except OSError as e:
        raise _corrupt(path, "a .npy array", e) from e
    _check_npy_size(name, shape, dtype, path.stat().st_size - offset)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: only chosen rows are read
    except (ValueError, OSError, EOFError) as e:
        raise _corrupt(path, "a .npy array", e) from e


def _read_npy(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    name = path_text(path)
    xyz = xyz_columns(_load_npy(path), name)
    idx = subsample_index(len(xyz), max_points, rng)
    return np.array(xyz if idx is None else xyz[idx], dtype=np.float64)


def _read_npz(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    name = path_text(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if not members:
                raise InputError(f"{name}: holds no .npy arrays; save the points with numpy.savez")
            key = next((k for k in NPZ_KEYS if k in members), next(iter(members)) if len(members) == 1 else None)
            if key is None:
                raise InputError(f"{name}: cannot tell which array holds the points among "
                                 f"{_short(str(list(members)))}; name it one of {', '.join(NPZ_KEYS)}")
            label = f"{name}[{path_text(key)}]"
            info = members[key]
            with zf.open(info) as f:
                shape, dtype, offset = _npy_header(f, label)
            _check_npy_size(label, shape, dtype, info.file_size - offset)
            if info.file_size > MAX_ARCHIVE_ARRAY_BYTES:
                raise InputError(f"{label}: {info.file_size} bytes uncompressed, more than the "
                                 f"{MAX_ARCHIVE_ARRAY_BYTES} read from an archive; save the points as .npy "
                                 "(memory-mapped, so any size is read)")
            with zf.open(info) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy raise many types for bad archives
        raise _corrupt(path, "a .npz archive", e) from e
    return subsample(xyz_columns(arr, label), max_points, rng)


_POINT_READERS: dict[str, Callable[[Path, int | None, np.random.Generator], np.ndarray]] = {
    ".pcd": _read_pcd,
    ".xyz": _read_text,
    ".txt": _read_text,
    ".pts": _read_text,
    ".npy": _read_npy,
    ".npz": _read_npz,
}
