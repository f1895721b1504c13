"""Point clouds as arrays: validation, normalisation, column selection, subsampling and a one-line summary.

Everything here works on in-memory clouds (arrays, tensors, nested lists); reading files is `pointfalip.io`'s,
which returns what `validate` accepts. A cloud is an ``(N, 3)`` float32 array (or a batch ``(B, N, 3)`` where
said); anything wrong with the user's input raises :class:`pointfalip.errors.InputError` with one line saying
what is wrong and what to do.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import InputError, one_line

__all__ = ["MIN_POINTS", "UP_AXES", "UP_ROTATIONS", "as_array", "describe", "finite_rows", "normalize",
           "subsample", "subsample_index", "validate", "xyz_columns"]

UP_AXES = ("x", "y", "z", "-x", "-y", "-z")

# Proper rotations (det +1) taking the named up axis to +y, the frame of the references
# (PointCLIP's projections see y-up clouds). Row-vector convention: rotated = points @ R.T
UP_ROTATIONS = {
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

MIN_POINTS = 8  # the fewest distinct points a cloud may have (and the smallest num_points / max_points)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DISTINCT_PROBE_ROWS = 4096  # distinct points are counted on this many rows first, on all rows only if needed


def validate(points: Any, min_points: int = MIN_POINTS, name: str = "points") -> np.ndarray:
    """Check a cloud and return it as a C-contiguous ``(N, 3)`` float32 array.

    Args:
        points: ``(N, 3)`` array-like or tensor.
        min_points: the fewest distinct points accepted.
        name: how messages refer to the cloud (a file name, ``"points"``).

    Raises:
        InputError: wrong shape or dtype, no points, NaN / infinite coordinates (saying how many points),
            finite coordinates too large for float32, fewer than ``min_points`` distinct points.
    """
    arr = as_array(points, name)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{name}: expected points of shape (N, 3), got {tuple(arr.shape)}; "
                         "pass x, y, z columns only (load_points drops extra columns)")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        largest = float(np.abs(np.where(np.isfinite(arr), arr, 0.0)).max())
        if largest > _FLOAT32_MAX:
            raise InputError(f"{name}: coordinates up to {largest:.3g} overflow float32 (largest "
                             f"{_FLOAT32_MAX:.3g}); scale the points down (e.g. to metres)")
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
    if axis not in UP_ROTATIONS:
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
    return ((centred / scale) @ UP_ROTATIONS[axis].T).astype(np.float32)


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


def as_array(obj: Any, name: str) -> np.ndarray:
    """An ndarray view of an array, tensor or nested list (tensors: detached, on the CPU, float32; float64 stays)."""
    torch = sys.modules.get("torch")  # if torch is not imported, obj cannot be a tensor
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.is_complex() or obj.dtype == torch.bool:
            raise InputError(f"{name}: tensor of dtype {obj.dtype} is not coordinates; give real numbers")
        dtype = torch.float64 if obj.dtype == torch.float64 else torch.float32  # float64 keeps its range
        return obj.detach().to(device="cpu", dtype=dtype).numpy()
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError) as e:
        raise InputError(f"{name}: not an array of coordinates ({one_line(e)})") from e
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


def finite_rows(points: np.ndarray) -> np.ndarray:
    """The rows of an ``(N, 3)`` cloud whose coordinates are all finite."""
    return points[np.isfinite(points).all(axis=1)]


def subsample_index(n: int, max_points: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row indices of a uniform subsample without replacement, or None when all rows are kept."""
    if max_points is None or n <= max_points:
        return None
    return np.sort(rng.choice(n, size=max_points, replace=False))


def subsample(points: np.ndarray, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` rows of ``points``: a uniform draw without replacement, in row order."""
    idx = subsample_index(len(points), max_points, rng)
    return points if idx is None else points[idx]


def _count_distinct(arr: np.ndarray, at_least: int) -> int:
    """Number of distinct rows, counted exactly only when the first rows hold fewer than ``at_least``."""
    probe = arr[:_DISTINCT_PROBE_ROWS] + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0
    count = len(np.unique(probe, axis=0))
    if count >= at_least or len(arr) <= _DISTINCT_PROBE_ROWS:
        return count
    return len(np.unique(arr + np.float32(0.0), axis=0))


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
