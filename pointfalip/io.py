"""Point clouds and meshes from files, arrays and tensors; validation, normalisation and a one-line summary.

Every loader returns an ``(N, 3)`` float32 array in the file's own coordinates. Meshes are sampled
uniformly on their surface (seeded); point files give all their points, subsampled (seeded, uniformly,
without replacement) when larger than ``max_points``. Anything wrong with the user's input raises
:class:`pointfalip.errors.InputError` with one line saying what is wrong and what to do.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

MESH_EXTENSIONS = (".off", ".obj", ".stl", ".ply", ".glb")  # .ply may be a mesh or a point cloud: decided by content
POINT_EXTENSIONS = (".ply", ".pcd", ".xyz", ".txt", ".pts", ".npy", ".npz")
SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(MESH_EXTENSIONS + POINT_EXTENSIONS))

NPZ_KEYS = ("points", "data", "xyz")  # keys tried in order in a .npz; otherwise its single array
UP_AXES = ("x", "y", "z", "-x", "-y", "-z")

# Proper rotations (det +1) taking the named up axis to +y, the frame of the references
# (PointCLIP's projections see y-up clouds). Row-vector convention: rotated = points @ R.T
_UP_ROTATIONS = {
    "y": np.eye(3),
    # -90 degrees about x: (x, y, z) -> (x, z, -y), so +z -> +y
    "z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    # +90 degrees about z: (x, y, z) -> (-y, x, z), so +x -> +y
    "x": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    # 180 degrees about z: (x, y, z) -> (-x, -y, z), so -y -> +y (camera frames: y points down)
    "-y": np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
    # +90 degrees about x: (x, y, z) -> (x, -z, y), so -z -> +y
    "-z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    # -90 degrees about z: (x, y, z) -> (y, -x, z), so -x -> +y
    "-x": np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}

_DISTINCT_PROBE_ROWS = 4096  # distinct points are counted on this many rows first, on all rows only if needed
_MAX_REASON_CHARS = 200  # a third-party error's text is cut to this length in our one-line messages


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
        num_points: points sampled uniformly on a mesh's surface. A mesh without surface area falls back
            to its vertices (at most ``num_points`` of them).
        seed: seed of the surface sampling and of the subsampling; the same seed gives the same points.
        max_points: a point cloud (file or array) with more points is subsampled to exactly this many,
            uniformly at random without replacement, keeping file order; ``None`` keeps all points.
        drop_nonfinite: drop points with NaN / infinite coordinates (sensor frames mark missing returns so)
            instead of refusing the cloud.

    Raises:
        InputError: missing, empty, corrupt or unsupported file; NaN / infinite coordinates; fewer than
            8 distinct points.
    """
    num_points = _positive_int(num_points, "num_points")
    if max_points is not None:
        max_points = _positive_int(max_points, "max_points")
    rng = np.random.default_rng(seed)

    if isinstance(source, (str, os.PathLike)):
        path = _check_file(source)
        ext = path.suffix.lower()
        name = str(path)
        if ext in MESH_EXTENSIONS:
            vertices, faces = _read_geometry(path, ext)
            if faces is None:  # a point cloud (a .ply without faces)
                points = xyz_columns(vertices, name)
                points = _subsample(points, max_points, rng)
            else:
                points = _sample_mesh(vertices, faces, num_points, seed, rng, name)
        else:
            points = _POINT_READERS[ext](path, max_points, rng)
        return validate(_finite_rows(points) if drop_nonfinite else points, name=name)

    points = xyz_columns(as_array(source, "points"), "points")
    points = _finite_rows(points) if drop_nonfinite else points
    points = validate(_subsample(points, max_points, rng), name="points")
    return points.copy() if points is source else points  # never the caller's own array


def _finite_rows(points: np.ndarray) -> np.ndarray:
    return points[np.isfinite(points).all(axis=1)]


def validate(points: Any, min_points: int = 8, name: str = "points") -> np.ndarray:
    """Check a cloud and return it as a C-contiguous ``(N, 3)`` float32 array.

    Args:
        points: ``(N, 3)`` array-like or tensor.
        min_points: the fewest distinct points accepted.
        name: how messages refer to the cloud (a file name, ``"points"``).

    Raises:
        InputError: wrong shape or dtype, no points, NaN / infinite coordinates (saying how many points),
            fewer than ``min_points`` distinct points.
    """
    arr = as_array(points, name)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{name}: expected points of shape (N, 3), got {tuple(arr.shape)}; "
                         "pass x, y, z columns only (load_points drops extra columns)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    n = len(arr)
    if n == 0:
        raise InputError(f"{name}: contains no points; give a non-empty point cloud or mesh")
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = ~finite.all(axis=1)
        n_nan = int(np.isnan(arr).any(axis=1).sum())
        n_inf = int(bad_rows.sum()) - n_nan
        raise InputError(f"{name}: {int(bad_rows.sum())} of {n} points have non-finite coordinates "
                         f"({n_nan} NaN, {n_inf} infinite); remove those points and try again")
    distinct = _count_distinct(arr, min_points)
    if distinct < min_points:
        raise InputError(f"{name}: only {distinct} distinct point(s), at least {min_points} are needed; "
                         "give a denser point cloud or a mesh")
    return arr


def normalize(points: Any, up_axis: str = "y") -> np.ndarray:
    """Centre on the centroid, scale to the unit sphere and rotate the up axis to +y.

    The centring (mean) and scaling (largest norm becomes 1) are those of ModelNet40's h5 release; the
    rotation is proper (det +1): ``"z"`` maps (x, y, z) to (x, z, -y), ``"x"`` maps (x, y, z) to (-y, x, z).

    Args:
        points: ``(N, 3)`` or a batch ``(B, N, 3)``, array-like or tensor; each cloud is normalised alone.
        up_axis: the source's up axis, one of ``"x"``, ``"y"``, ``"z"`` or their negatives (``"-y"`` for
            camera frames, whose y points down).

    Returns:
        float32 array of the input's shape.
    """
    axis = str(up_axis).strip().lower()
    if axis not in _UP_ROTATIONS:
        raise InputError(f"unknown up axis {up_axis!r}; use one of {', '.join(UP_AXES)}")
    arr = as_array(points, "points")
    if arr.ndim not in (2, 3) or arr.shape[-1] != 3 or arr.shape[-2] == 0:
        raise InputError(f"points: expected shape (N, 3) or (B, N, 3) with N > 0, got {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError("points: NaN or infinite coordinates; remove those points before normalising")
    centred = arr - arr.mean(axis=-2, keepdims=True)
    scale = np.linalg.norm(centred, axis=-1).max(axis=-1)[..., None, None]
    if np.any(scale == 0):
        raise InputError("points: all points coincide, so the cloud cannot be scaled to the unit sphere")
    return ((centred / scale) @ _UP_ROTATIONS[axis].T).astype(np.float32)


def describe(points: Any) -> str:
    """One line about a cloud: number of points, bounding-box extents and centroid."""
    arr = as_array(points, "points").reshape(-1, 3).astype(np.float64)
    if len(arr) == 0:
        return "0 points"
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    ext = hi - lo
    c = arr.mean(axis=0)
    return (f"{len(arr)} points, bbox extent {ext[0]:.4g} x {ext[1]:.4g} x {ext[2]:.4g} "
            f"(min {_fmt(lo)}, max {_fmt(hi)}), centroid {_fmt(c)}")


# --------------------------------------------------------------------------------------------------
# helpers: arguments, arrays
# --------------------------------------------------------------------------------------------------

def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def as_array(obj: Any, name: str) -> np.ndarray:
    """An ndarray view of an array, tensor or nested list (tensors: detached, on the CPU, float32)."""
    torch = sys.modules.get("torch")  # if torch is not imported, obj cannot be a tensor
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.is_complex() or obj.dtype == torch.bool:
            raise InputError(f"{name}: tensor of dtype {obj.dtype} is not coordinates; give real numbers")
        return obj.detach().to(device="cpu", dtype=torch.float32).numpy()
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError) as e:
        raise InputError(f"{name}: not an array of coordinates ({_reason(e)})") from e
    if arr.dtype.kind not in "fiu":  # float, signed and unsigned integers
        raise InputError(f"{name}: array of dtype {arr.dtype} is not coordinates; give real numbers")
    return arr


def xyz_columns(arr: np.ndarray, name: str) -> np.ndarray:
    """First three columns of an ``(N, C)`` or ``(1, N, C)`` array (not copied yet)."""
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: data of dtype {arr.dtype} is not coordinates; give real numbers")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise InputError(f"{name}: expected points of shape (N, 3+) or (1, N, 3+), got {tuple(arr.shape)}")
    return arr[:, :3]


def _subsample_index(n: int, max_points: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row indices of a uniform subsample without replacement, or None when all rows are kept."""
    if max_points is None or n <= max_points:
        return None
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _subsample(points: np.ndarray, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    idx = _subsample_index(len(points), max_points, rng)
    return points if idx is None else points[idx]


def _count_distinct(arr: np.ndarray, at_least: int) -> int:
    """Number of distinct rows, counted exactly only when the first rows hold fewer than ``at_least``."""
    probe = arr[:_DISTINCT_PROBE_ROWS] + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0
    count = len(np.unique(probe, axis=0))
    if count >= at_least or len(arr) <= _DISTINCT_PROBE_ROWS:
        return count
    return len(np.unique(arr + np.float32(0.0), axis=0))


def _reason(e: BaseException) -> str:
    """A third-party exception as a short single line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


# --------------------------------------------------------------------------------------------------
# helpers: files
# --------------------------------------------------------------------------------------------------

def _check_file(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a file; give a point-cloud or mesh file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(f"{path}: unsupported file type {ext or '(no extension)'!r}; "
                         f"supported: {' '.join(SUPPORTED_EXTENSIONS)}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({_reason(e)})") from e
    if size == 0:
        raise InputError(f"{path}: the file is empty; give a file with points or a mesh")
    return path


def _corrupt(path: Path, what: str, e: BaseException) -> InputError:
    return InputError(f"{path}: could not read it as {what} ({_reason(e)}); check that the file is valid")


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


def _trimesh_load(path: Path, ext: str) -> Any:
    import trimesh

    try:
        return trimesh.load(str(path), file_type=ext[1:], process=False)
    except Exception as first:  # noqa: BLE001 - trimesh raises many types for bad files
        if ext != ".off":
            raise _corrupt(path, f"a {ext} file", first) from first
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read the file ({_reason(e)})") from e
        try:
            loaded = trimesh.load(io.BytesIO(_clean_off_text(data)), file_type="off", process=False)
        except Exception as e:  # noqa: BLE001
            raise _corrupt(path, "an OFF mesh", first) from e
        logger.info("%s: repaired OFF quirks (%s)", path, _reason(first))
        return loaded


def _read_geometry(path: Path, ext: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertices and triangle faces of a mesh file; faces is None for a point cloud (a .ply without faces)."""
    import trimesh

    loaded = _trimesh_load(path, ext)
    geoms = loaded.dump() if isinstance(loaded, trimesh.Scene) else [loaded]  # dump applies the scene's transforms
    vertices, faces, offset, clouds = [], [], 0, []
    for g in geoms:
        if isinstance(g, trimesh.Trimesh):
            v = np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3)
            f = np.asarray(g.faces, dtype=np.int64).reshape(-1, 3)
            vertices.append(v)
            faces.append(f + offset)
            offset += len(v)
        elif hasattr(g, "vertices"):  # PointCloud, paths: their vertices
            clouds.append(np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3))
    if faces and sum(len(f) for f in faces) > 0:
        v, f = np.concatenate(vertices), np.concatenate(faces)
        if f.min() < 0 or f.max() >= len(v):
            raise InputError(f"{path}: a face refers to a vertex that does not exist; the mesh is corrupt")
        return v, f
    points = vertices + clouds
    if not points or sum(len(p) for p in points) == 0:
        raise InputError(f"{path}: no vertices found; the file is corrupt or holds no mesh or point cloud")
    v = np.concatenate(points)
    if ext == ".ply":
        return v, None  # a .ply point cloud
    return v, np.zeros((0, 3), dtype=np.int64)  # a mesh without faces: falls back to its vertices


def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int,
                 rng: np.random.Generator, name: str) -> np.ndarray:
    """``num_points`` points uniform on the surface; a mesh without area gives (at most that many of) its vertices."""
    import trimesh

    used = vertices[np.unique(faces)] if len(faces) else vertices
    validate(used, min_points=1, name=name)  # NaN / inf vertices: say so before sampling
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
    area = float(mesh.area) if len(faces) else 0.0
    if not area > 0.0:
        logger.warning("%s: the mesh has no surface area; using its %d vertices", name, len(vertices))
        return _subsample(vertices, num_points, rng)
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points)


# ---- point files ----------------------------------------------------------------------------------

def _read_pcd(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    import open3d as o3d

    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        cloud = o3d.io.read_point_cloud(str(path), format="pcd")
    points = np.asarray(cloud.points)
    if len(points) == 0:
        raise InputError(f"{path}: no points could be read; the PCD file is empty or corrupt "
                         "(ascii, binary and binary_compressed PCD with x y z fields are supported)")
    return _subsample(points, max_points, rng)


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
    """Whitespace, comma or semicolon separated numbers; leading lines that are not rows of at least
    three numbers (headers, a count line) are skipped; ``#`` starts a comment."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            first = None
            for skipped, line in enumerate(f):
                if _numeric_row(line.split("#", 1)[0]):
                    first = line
                    break
            if first is None:
                raise InputError(f"{path}: no rows of at least 3 numbers (x y z) found; "
                                 "give whitespace- or comma-separated coordinates")
            delimiter = next((d for d in (",", ";") if d in first.split("#", 1)[0]), None)
            try:
                data = np.loadtxt(itertools.chain([first], f), dtype=np.float64, comments="#",
                                  delimiter=delimiter, usecols=(0, 1, 2), ndmin=2)  # extra columns dropped
            except ValueError as e:
                raise InputError(f"{path}: unreadable numbers after line {skipped + 1} ({_reason(e)}); "
                                 "every row must start with x y z as numbers") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({_reason(e)})") from e
    return _subsample(xyz_columns(data, str(path)), max_points, rng)


def _read_npy(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: only chosen rows are read
    except (ValueError, OSError, EOFError) as e:
        raise _corrupt(path, "a .npy array", e) from e
    xyz = xyz_columns(arr, str(path))
    idx = _subsample_index(len(xyz), max_points, rng)
    return np.array(xyz if idx is None else xyz[idx], dtype=np.float64)


def _read_npz(path: Path, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise InputError(f"{path}: cannot tell which array holds the points among {keys}; "
                                 f"name it one of {', '.join(NPZ_KEYS)}")
            arr = npz[key]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile and numpy raise many types for bad archives
        raise _corrupt(path, "a .npz archive", e) from e
    return _subsample(xyz_columns(arr, f"{path}[{key}]"), max_points, rng)


_POINT_READERS: dict[str, Callable[[Path, int | None, np.random.Generator], np.ndarray]] = {
    ".pcd": _read_pcd,
    ".xyz": _read_text,
    ".txt": _read_text,
    ".pts": _read_text,
    ".npy": _read_npy,
    ".npz": _read_npz,
}
