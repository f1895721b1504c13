"""Point clouds to multi-view depth images: PointCLIP's *simple* and PointCLIP V2's *realistic* projection.

Both methods take clouds ``(N, 3)`` or ``(B, N, 3)`` and return :class:`DepthViews` with images
``(B, V, 3, S, S)`` (the three channels are equal) and an occupancy mask ``(B, V, S, S)``.

Coordinate conventions
----------------------
A view is a rotation ``R`` (world to view frame): a point ``p`` (a row vector) becomes
``p' = p @ R.T``, then ``p'' = p' @ B.T`` with the view's *bias* rotation ``B`` (PointCLIP V2 tilts its
views with it; identity otherwise), then ``p'' - t`` with the method's translation ``t``. In the view frame
the image **row** grows with ``x''``, the **column** with ``y''``, and ``z''`` is the depth axis:

* ``simple``: perspective camera at the origin of the translated frame (``t = (0, 0, -1.6)``: the camera
  sits 1.6 in front of the object, looking along ``+z''``), one pixel a point, harmonic mean of the depths
  of the points in a pixel, 0 where no point lands.
* ``realistic``: orthographic along ``z''``; each view's cloud is re-centred and scaled into a
  112 x 112 x 8 voxel grid (so the translation only matters to float rounding), densified with a 7 x 7
  max-pool, smoothed with a 3 x 3 Gaussian, reduced with a max over depth (the largest ``z''`` of a pixel
  wins), divided by its maximum and inverted (background 1, the largest ``z''`` black).

Rotations from Euler angles follow PointCLIP's ``euler2mat``: ``R = Rx(a) @ Ry(b) @ Rz(c)`` for angles
``(a, b, c)``. Views given by azimuth/elevation (degrees) use ``R = Ry(-elevation) @ Rx(azimuth) @ Rz(90°)``:
the depth axis then points along ``d = (cos(el) sin(az), -sin(el), cos(el) cos(az))`` in world
coordinates, ``+y`` is the image's up (towards row 0), azimuth turns about ``y`` and ``az = el = 0`` is
PointCLIP's first view; ``elevation = +90`` is PointCLIP's top view (depth along ``-y``). PointCLIP V2's
ring views are exactly these with ``elevation = -20`` (its bias rotation ``Ry(20°)``).

Presets live in ``configs/views.yaml``. Each method is registered with :func:`register_projection` together
with its settings class (:class:`RealisticConfig`, :class:`SimpleConfig`; template ``configs/projection.yaml``,
one section a method); :func:`list_projection_methods` names them all. ``pointclip_v2_parts`` (PointCLIP V2's
part-segmentation projection) is registered by `pointfalip.parts`, imported with the package; its views are part of
its settings (``PartProjectionConfig``), and it fills each point's pixel and visibility.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from . import presets
from .errors import InputError

_CPU_CHUNK_FLOATS = 1 << 22  # work-buffer floats (16 MiB) an image chunk may use on the CPU: cache-sized chunks
_GPU_CHUNK_FLOATS = 1 << 28  # the same on other devices (1 GiB): bounds memory for large batches

__all__ = [
    "DepthViews",
    "ProjectionFn",
    "RealisticConfig",
    "SimpleConfig",
    "ViewSet",
    "euler_to_matrix",
    "list_projection_methods",
    "list_view_presets",
    "load_projection_config",
    "project",
    "projection_config",
    "register_projection",
    "view_preset",
]


class DepthViews(NamedTuple):
    """Projected views of a batch of clouds.

    ``point_pixels`` and ``visible`` tie each input point to the images; methods that track points (the part
    projection) fill them, the others leave them ``None``.
    """

    images: torch.Tensor  # (B, V, 3, S, S) float32: exactly what the reference feeds to CLIP's encoder
    occupancy: torch.Tensor  # (B, V, S, S) bool: pixels the object covers in the image the model sees
    point_pixels: torch.Tensor | None = None  # (B, V, N, 2) int64: (row, column) of each point in `images`
    visible: torch.Tensor | None = None  # (B, V, N) bool: the point is seen in that view (not hidden, in the image)


# ---------------------------------------------------------------------------------------------- settings

def _integer(owner: object, name: str, minimum: int) -> None:
    """Check that ``owner.name`` is an integer >= ``minimum`` and store it as an ``int``."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{type(owner).__name__}.{name} must be {need}, got {value!r}")
    object.__setattr__(owner, name, int(value))


def _real(owner: object, name: str) -> float:
    """Check that ``owner.name`` is a finite real number, store it as a ``float`` and return it."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise InputError(f"{type(owner).__name__}.{name} must be a finite number, got {value!r}")
    object.__setattr__(owner, name, float(value))
    return float(value)


@dataclass(frozen=True)
class RealisticConfig:
    """Settings of the *realistic* projection; the defaults are PointCLIP V2's."""

    voxel_side: int = 112  # rows and columns of the voxel grid (image: voxel_side + 2*pool_padding - pool_size + 1)
    voxel_depth: int = 8  # depth bins of the voxel grid; points land in bins 1 .. voxel_depth - 2
    pool_size: int = 7  # side of the max-pool window that densifies each depth slice
    pool_padding: int = 2  # padding of that max-pool (the reference's 2 makes a 110 x 110 image from 112)
    gaussian_size: int = 3  # side of the Gaussian smoothing window (odd; zero padding keeps the size)
    gaussian_sigma: float = 3.0  # standard deviation of the Gaussian, in pixels
    obj_ratio: float = 0.8  # share of the image the cloud's largest extent spans along rows and columns
    depth_bias: float = 0.2  # offset added to normalised depth before binning (keeps points off bin 0)
    translation: tuple[float, float, float] = (-0.5, -0.5, -1.5)  # subtracted in the view frame (rounding only)
    occupancy_tolerance: float = 1e-6  # a pixel is covered where its image value < 1 - this

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _integer(self, "voxel_side", 3)
        _integer(self, "voxel_depth", 3)
        _integer(self, "pool_size", 1)
        _integer(self, "pool_padding", 0)
        _integer(self, "gaussian_size", 1)
        if self.pool_padding > self.pool_size // 2:
            raise InputError(f"{owner}.pool_padding must be in [0, pool_size // 2], got {self.pool_padding}")
        if self.voxel_side + 2 * self.pool_padding < self.pool_size:
            raise InputError(f"{owner}.pool_size is larger than the padded voxel grid")
        if self.gaussian_size % 2 != 1:
            raise InputError(f"{owner}.gaussian_size must be odd, got {self.gaussian_size}")
        if not _real(self, "gaussian_sigma") > 0:
            raise InputError(f"{owner}.gaussian_sigma must be positive, got {self.gaussian_sigma}")
        if not 0 < _real(self, "obj_ratio") <= 1:
            raise InputError(f"{owner}.obj_ratio must be in (0, 1], got {self.obj_ratio}")
        if _real(self, "depth_bias") < 0:
            raise InputError(f"{owner}.depth_bias must be >= 0, got {self.depth_bias}")
        if not 0 <= _real(self, "occupancy_tolerance") < 1:
            raise InputError(f"{owner}.occupancy_tolerance must be in [0, 1), got {self.occupancy_tolerance}")
        object.__setattr__(self, "translation", check_translation(self.translation, owner))


@dataclass(frozen=True)
class SimpleConfig:
    """Settings of the *simple* projection; the defaults are PointCLIP's."""

    resolution: int = 128  # side of the splatted depth image before the resize
    camera_distance: float = 1.6  # the camera sits this far in front of the origin (translation (0, 0, -d))
    depth_epsilon: float = 1e-12  # added to depths before dividing by them, as in the reference

    def __post_init__(self) -> None:
        _integer(self, "resolution", 1)
        _real(self, "camera_distance")
        if _real(self, "depth_epsilon") < 0:
            raise InputError(f"{type(self).__name__}.depth_epsilon must be >= 0, got {self.depth_epsilon}")


# ---------------------------------------------------------------------------------------------- registry

ProjectionFn = Callable[[torch.Tensor, "ViewSet | None", int, Any], DepthViews]
"""``fn(points (B, N, 3) float32, views, image_size, config) -> DepthViews``; ``config`` is its method's class.
``views`` is ``None`` only for a method registered with ``default_views=None`` when the caller names no views."""

_Fn = TypeVar("_Fn", bound=Callable[..., DepthViews])


@dataclass(frozen=True)
class _Method:
    fn: ProjectionFn
    config_cls: type
    default_views: str | None = "pointclip_v2"  # view preset when the caller names none; None: the config's


_PROJECTIONS: dict[str, _Method] = {}
PART_METHOD = "pointclip_v2_parts"  # registered by pointfalip.parts (imported on first use: _register_parts)


def register_projection(name: str, config_cls: type, default_views: str | None = "pointclip_v2"
                        ) -> Callable[[_Fn], _Fn]:
    """Decorator that makes ``fn`` the projection ``method=name`` of :func:`project`, set up by ``config_cls``.

    ``fn(points, views, image_size, config) -> DepthViews`` receives validated clouds ``(B, N, 3)`` float32 on
    the caller's device, a :class:`ViewSet`, the output side ``S`` and an instance of ``config_cls`` (a frozen
    dataclass whose defaults are the method's reference settings). ``default_views``: the view preset used when
    the caller names none; ``None`` for a method whose settings hold its views (``fn`` then gets ``views=None``).
    The function is returned unchanged. Registering a taken name again raises ValueError (unless it is the same
    function, e.g. a module reload).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a projection name must be a non-empty string, got {name!r}")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"projection {name!r}: config_cls must be a dataclass, got {config_cls!r}")

    def register(fn: _Fn) -> _Fn:
        taken = _PROJECTIONS.get(name)
        if taken is not None and (taken.fn.__module__, taken.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"projection {name!r} is already registered by "
                             f"{taken.fn.__module__}.{taken.fn.__qualname__}")
        _PROJECTIONS[name] = _Method(fn, config_cls, default_views)
        return fn

    return register


def _register_parts() -> None:
    """Import `pointfalip.parts`, which registers the part projection (`PART_METHOD`), on its first use."""
    if PART_METHOD not in _PROJECTIONS:
        import importlib

        importlib.import_module(f"{__package__}.parts")


def list_projection_methods() -> list[str]:
    """Names accepted by ``project(method=...)``, sorted."""
    _register_parts()
    return sorted(_PROJECTIONS)


def default_views(method: str) -> str | None:
    """The view preset a projection uses when the caller names none (the method's reference's own: PointCLIP V2's
    10 views for ``realistic``, PointCLIP's 6 for ``simple``); None when its settings hold its views."""
    return _method(method).default_views


def view_count(method: str, views: str | ViewSet | dict | None = None) -> int | None:
    """How many views ``project(method=method, views=views)`` makes (None for a method whose settings hold its
    views and no ``views`` given)."""
    views = default_views(method) if views is None else views
    return None if views is None else len(_resolve_views(views))


def check_view_weights(weights, num_views: int | None = None, what: str = "view_weights") -> tuple[float, ...]:
    """The one rule of view weights (recognition, few-shot, parts): a non-empty list of finite numbers >= 0, not
    all 0, one a view when ``num_views`` is given; returned as floats. Anything else is a one-line InputError."""
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)) or not len(weights):
        raise InputError(f"{what} must be a non-empty list of numbers or null, got {weights!r}")
    try:
        values = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be numbers, got {weights!r}") from e
    if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise InputError(f"{what} must be finite, non-negative and not all zero, got {weights!r}")
    if num_views is not None and len(values) != num_views:
        raise InputError(f"{len(values)} view weights for {num_views} views")
    return tuple(float(v) for v in values)


def unit_view_weights(weights, num_views: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """β (V,) summing to one: ``weights`` (`check_view_weights`) divided by their sum, or uniform for None."""
    if weights is None:
        return torch.full((num_views,), 1.0 / num_views, device=device, dtype=dtype)
    w = torch.tensor(check_view_weights(weights, num_views), dtype=torch.float64)
    return (w / w.sum()).to(device, dtype)


def _method(method: str) -> _Method:
    if method == PART_METHOD:
        _register_parts()
    if not isinstance(method, str) or method not in _PROJECTIONS:
        raise InputError(f"unknown projection method {method!r}; choose one of {list_projection_methods()}")
    return _PROJECTIONS[method]


def _checked_config(method: str, config: Any) -> Any:
    """``config`` if it is an instance of the method's settings class, its defaults for ``None``."""
    cls = _method(method).config_cls
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise InputError(f"config of projection {method!r} must be a {cls.__name__}, got {type(config).__name__} "
                         f"(build one with projection_config({method!r}, {{...}}))")
    return config


def projection_config(method: str, values: Mapping[str, Any] | None = None) -> Any:
    """The settings of ``method`` (its config class) from a mapping of field values; ``None``: the defaults.

    Unknown keys and invalid values raise a one-line InputError naming the key; an instance of the method's
    class is returned as it is.
    """
    if values is None or (dataclasses.is_dataclass(values) and not isinstance(values, type)):
        return _checked_config(method, values)
    return presets.from_mapping(_method(method).config_cls, values, f"{method} projection settings")


def load_projection_config(method: str, path: str | Path | None = None) -> Any:
    """The settings in the ``method:`` section of a YAML file laid out like ``configs/projection.yaml``
    (``None``: the packaged file). An empty section gives the defaults; a user's file without the section is an
    InputError (the packaged file gives the defaults of a method it does not list).
    """
    cls = _method(method).config_cls
    source = presets.config_file("projection.yaml") if path is None else Path(path)
    data = presets.read_yaml(source)
    if method not in data and path is None:
        return cls()
    if method not in data:
        raise InputError(f"config file {source} has no '{method}:' section "
                         f"(one section a method, as in configs/projection.yaml)")
    return presets.from_mapping(cls, data[method], f"{source}: '{method}' settings")


@dataclass(frozen=True, eq=False)
class ViewSet:
    """V views as rotation matrices, float32 on the CPU (moved to the points' device when used).

    ``rotations[v]`` maps world to view coordinates (``p' = p @ R.T``); ``bias_rotations[v]`` is applied
    after it (identity for views without a bias).
    """

    name: str
    rotations: torch.Tensor  # (V, 3, 3) float32
    bias_rotations: torch.Tensor  # (V, 3, 3) float32

    def __post_init__(self) -> None:
        rot = torch.as_tensor(self.rotations, dtype=torch.float32).cpu()
        bias = torch.as_tensor(self.bias_rotations, dtype=torch.float32).cpu()
        object.__setattr__(self, "rotations", rot)
        object.__setattr__(self, "bias_rotations", bias)
        if rot.ndim != 3 or rot.shape[1:] != (3, 3) or rot.shape[0] < 1 or bias.shape != rot.shape:
            raise InputError(f"view set {self.name!r}: rotations must be (V, 3, 3) with V >= 1 for both tensors")

    def __len__(self) -> int:
        return self.rotations.shape[0]

    @classmethod
    def from_euler(cls, name: str, angles: Sequence, bias_angles: Sequence | None = None) -> "ViewSet":
        """Views from Euler angles in degrees, ``(V, 3)``: ``R = Rx(a) Ry(b) Rz(c)`` (PointCLIP's order)."""
        rot = euler_to_matrix(_degrees_to_radians(angles, f"{name}: euler"))
        if bias_angles is None:
            bias = torch.eye(3).expand_as(rot).clone()
        else:
            bias = euler_to_matrix(_degrees_to_radians(bias_angles, f"{name}: bias_euler"))
            if bias.shape != rot.shape:
                raise InputError(f"view set {name!r}: bias_euler needs one angle triple a view ({len(rot)})")
        return cls(name, rot, bias)

    @classmethod
    def from_azimuth_elevation(cls, name: str, azimuth: Sequence | float, elevation: Sequence | float = 0.0
                               ) -> "ViewSet":
        """Views from azimuths and elevations in degrees (lists of equal length, or one a single number).

        ``R = Ry(-elevation) Rx(azimuth) Rz(90°)``; see the module docstring for what the angles mean.
        """
        az = np.atleast_1d(np.asarray(azimuth, dtype=np.float64))
        el = np.atleast_1d(np.asarray(elevation, dtype=np.float64))
        if az.ndim != 1 or el.ndim != 1 or az.size == 0 or el.size == 0:
            raise InputError(f"view set {name!r}: azimuth and elevation must be numbers or flat lists")
        if az.size != el.size and 1 not in (az.size, el.size):
            raise InputError(f"view set {name!r}: {az.size} azimuths but {el.size} elevations")
        az, el = np.broadcast_arrays(az, el)
        if not (np.isfinite(az).all() and np.isfinite(el).all()):
            raise InputError(f"view set {name!r}: angles must be finite")
        az_rad = torch.tensor(np.radians(az), dtype=torch.float32)
        el_rad = torch.tensor(np.radians(el), dtype=torch.float32)
        quarter = torch.full_like(az_rad, math.pi / 2)
        rot = _rot_y(-el_rad) @ _rot_x(az_rad) @ _rot_z(quarter)
        return cls(name, rot, torch.eye(3).expand_as(rot).clone())


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``Rx(a) @ Ry(b) @ Rz(c)`` from angles ``(..., 3)`` in radians (PointCLIP's euler2mat)."""
    angles = torch.as_tensor(angles, dtype=torch.float32)
    return _rot_x(angles[..., 0]) @ _rot_y(angles[..., 1]) @ _rot_z(angles[..., 2])


def _rotation(angle: torch.Tensor, axes: tuple[int, int]) -> torch.Tensor:
    """Right-handed rotation by ``angle`` (any shape) in the plane ``axes``: ``angle.shape + (3, 3)``."""
    i, j = axes
    c, s = torch.cos(angle), torch.sin(angle)
    mat = torch.zeros(*angle.shape, 3, 3, dtype=angle.dtype)
    mat[..., 3 - i - j, 3 - i - j] = 1.0
    mat[..., i, i], mat[..., i, j] = c, -s
    mat[..., j, i], mat[..., j, j] = s, c
    return mat


def _rot_x(angle: torch.Tensor) -> torch.Tensor:
    return _rotation(angle, (1, 2))


def _rot_y(angle: torch.Tensor) -> torch.Tensor:
    return _rotation(angle, (2, 0))


def _rot_z(angle: torch.Tensor) -> torch.Tensor:
    return _rotation(angle, (0, 1))


def _degrees_to_radians(angles: Sequence, what: str) -> torch.Tensor:
    arr = np.asarray(angles, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{what} must be a list of [x, y, z] angle triples in degrees")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: angles must be finite")
    return torch.tensor(np.radians(arr), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- presets

def list_view_presets() -> list[str]:
    """Names of the view presets in ``configs/views.yaml``."""
    return presets.list_presets("views")


@functools.lru_cache(maxsize=None)
def view_preset(name: str) -> ViewSet:
    """The named preset of ``configs/views.yaml`` (``pointclip_v2``: 10 views, ``pointclip``: 6, ...)."""
    if name not in list_view_presets():
        raise InputError(f"unknown view preset {name!r}; choose one of {list_view_presets()} "
                         f"or give {{'azimuth': [...], 'elevation': [...]}} in degrees")
    return _views_from_spec(name, presets.load_preset("views", name))


def _views_from_spec(name: str, spec: dict) -> ViewSet:
    """A view set from ``{"euler": ..., "bias_euler": ...}`` or ``{"azimuth": ..., "elevation": ...}``."""
    if not isinstance(spec, dict):
        raise InputError(f"views {name!r} must be a mapping with 'euler' or 'azimuth' (+ 'elevation')")
    allowed = {"description", "euler", "bias_euler", "azimuth", "elevation"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(f"views {name!r}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    if ("euler" in spec) == ("azimuth" in spec):
        raise InputError(f"views {name!r} need exactly one of 'euler' or 'azimuth' (+ 'elevation'), in degrees")
    try:
        if "euler" in spec:
            if "elevation" in spec:
                raise InputError(f"views {name!r}: 'elevation' goes with 'azimuth', not with 'euler'")
            return ViewSet.from_euler(name, spec["euler"], spec.get("bias_euler"))
        if "bias_euler" in spec:
            raise InputError(f"views {name!r}: 'bias_euler' goes with 'euler', not with 'azimuth'")
        return ViewSet.from_azimuth_elevation(name, spec["azimuth"], spec.get("elevation", 0.0))
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        raise InputError(f"views {name!r}: angles must be numbers in degrees ({e})") from e


def _resolve_views(views: str | ViewSet | dict) -> ViewSet:
    if isinstance(views, ViewSet):
        return views
    if isinstance(views, str):
        return view_preset(views)
    if isinstance(views, dict):
        return _views_from_spec("custom", views)
    raise InputError(f"views must be a preset name, a ViewSet or a dict, got {type(views).__name__}")


# ---------------------------------------------------------------------------------------------- projection

def _as_points(points) -> torch.Tensor:
    """``(B, N, 3)`` float32 on the input's device (a single cloud gets ``B = 1``)."""
    if isinstance(points, torch.Tensor):
        pts = points.detach()
    else:
        try:
            pts = torch.from_numpy(np.asarray(points, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise InputError(f"points must be an array of numbers, shaped (N, 3) or (B, N, 3): {e}") from e
    if pts.ndim not in (2, 3) or pts.shape[-1] != 3:
        raise InputError(f"points must be shaped (N, 3) or (B, N, 3), got {tuple(pts.shape)}")
    if pts.shape[-2] == 0 or (pts.ndim == 3 and pts.shape[0] == 0):
        raise InputError("points must hold at least one cloud of at least one point")
    if not (pts.is_floating_point() or pts.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise InputError(f"points must be real numbers, got dtype {pts.dtype}")
    pts = pts.to(torch.float32)
    if not bool(torch.isfinite(pts).all()):
        raise InputError("points contain NaN or infinite coordinates")
    return pts.unsqueeze(0) if pts.ndim == 2 else pts


def view_frames(points: torch.Tensor, rotations: Sequence[torch.Tensor], translation: Sequence[float]
                ) -> torch.Tensor:
    """``(B, N, 3)`` -> ``(B*V, N, 3)`` view-frame coordinates, cloud-major (as the references order them): the
    ``(V, 3, 3)`` world-to-view rotations applied in order, then ``translation`` subtracted. Every projection
    (``realistic``, ``simple``, the part projection) turns clouds into its views with this."""
    b, n, _ = points.shape
    frames = points.unsqueeze(1)
    for rot in rotations:
        frames = frames @ rot.to(points.device).transpose(-1, -2)
    frames = frames - torch.tensor(translation, dtype=torch.float32, device=points.device)
    return frames.reshape(-1, n, 3)


def _to_view_frames(points: torch.Tensor, views: ViewSet, translation: Sequence[float]) -> torch.Tensor:
    return view_frames(points, (views.rotations, views.bias_rotations), translation)


def check_translation(value, owner: str) -> tuple[float, float, float]:
    """A preset's ``translation`` as three finite floats, else a one-line InputError naming ``owner``."""
    try:
        shift = tuple(float(t) for t in value)
    except (TypeError, ValueError):
        shift = ()
    if len(shift) != 3 or not all(math.isfinite(t) for t in shift):
        raise InputError(f"{owner}.translation must be 3 finite numbers, got {value!r}")
    return shift


def gaussian_taps(size: int, sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps of ``size`` (odd) and ``sigma``; the references' 2-D and 3-D kernels are
    their outer products (separable)."""
    offsets = np.arange(size, dtype=np.float64) - size // 2
    taps = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    return (taps / taps.sum()).tolist()


def voxel_coordinates(frames: torch.Tensor, side: int, depth: int, obj_ratio: float,
                      depth_bias: float) -> tuple[torch.Tensor, ...]:
    """PointCLIP V2's voxel of every point of ``(M, N, 3)`` view frames, as both of its projections compute it:
    row, column and depth bin (int64) and the depth value (float), each ``(M, N)``. Each frame is centred and its
    largest extent scaled to ``obj_ratio`` of a ``side``-cell grid; depth is offset by ``depth_bias`` and spread
    over bins 1 .. ``depth - 2`` (the bin is the unclipped value's ceiling, as in the reference)."""
    pmax, pmin = frames.amax(dim=1), frames.amin(dim=1)
    centre = (pmax + pmin) / 2
    extent = (pmax - pmin).amax(dim=-1)
    extent = torch.where(extent > 0, extent, torch.ones_like(extent))  # a single point: no scaling
    unit = (frames - centre[:, None, :]) / extent[:, None, None] * 2.0  # largest extent spans [-1, 1]
    row = ((unit[..., 0] * obj_ratio + 1) / 2 * side).ceil().clamp(1, side - 2)
    col = ((unit[..., 1] * obj_ratio + 1) / 2 * side).ceil().clamp(1, side - 2)
    value = ((unit[..., 2] + 1) / 2 + depth_bias) / (1 + depth_bias) * (depth - 2)
    level = value.ceil().clamp(0, depth - 1)
    return row.long(), col.long(), level.long(), value.clamp(1, depth - 2)


@register_projection("realistic", RealisticConfig)
def _project_realistic(points: torch.Tensor, views: ViewSet, size: int, cfg: RealisticConfig) -> DepthViews:
    frames = _to_view_frames(points, views, cfg.translation)
    row, col, level, value = voxel_coordinates(frames, cfg.voxel_side, cfg.voxel_depth, cfg.obj_ratio,
                                               cfg.depth_bias)
    # Empty depth slices stay 0 through pooling and smoothing and cannot raise the max over depth (all
    # values are >= 0), so only the occupied range of slices is built.
    lo, hi = (int(t) for t in torch.aminmax(level))
    level, slices = level - lo, hi - lo + 1
    side = cfg.voxel_side + 2 * cfg.pool_padding

    def render(part: slice) -> torch.Tensor:
        img = _grid_to_image(level[part], row[part], col[part], value[part], slices, cfg)
        img = img / img.amax(dim=(-2, -1), keepdim=True)
        return _resize(1 - img, size)

    images, occupancy = _assemble(frames.shape[0], size, points.device, slices * side * side, render,
                                  lambda img: img < 1 - cfg.occupancy_tolerance)
    return _split_views(images, occupancy, points.shape[0], len(views))


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """``(K, H, W)`` -> ``(K, 1, S, S)``, bilinear with ``align_corners=True`` as both references."""
    return F.interpolate(img.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True)


def _assemble(m: int, size: int, device: torch.device, work_floats: int, render: Callable[[slice], torch.Tensor],
              covered: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(M, 3, S, S)`` and occupancy ``(M, S, S)`` from ``render(part) -> (K, 1, S, S)``.

    On the CPU a few images at a time keep the dense passes in cache (several times faster than the whole
    batch at once); on a GPU large chunks. ``work_floats`` is the size of an image's work buffer.
    """
    images = torch.empty(m, 3, size, size, dtype=torch.float32, device=device)
    occupancy = torch.empty(m, size, size, dtype=torch.bool, device=device)
    budget = _CPU_CHUNK_FLOATS if device.type == "cpu" else _GPU_CHUNK_FLOATS
    step = max(1, budget // (work_floats + 4 * size * size))
    for start in range(0, m, step):
        part = slice(start, min(start + step, m))
        resized = render(part)
        images[part] = resized  # the three channels are equal
        occupancy[part] = covered(resized[:, 0])
    return images, occupancy


def _split_views(images: torch.Tensor, occupancy: torch.Tensor, b: int, v: int) -> DepthViews:
    size = images.shape[-1]
    return DepthViews(images.view(b, v, 3, size, size), occupancy.view(b, v, size, size))


def _grid_to_image(level: torch.Tensor, row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, slices: int,
                   cfg: RealisticConfig) -> torch.Tensor:
    """Voxel grid -> max-pooled, Gaussian-smoothed slices -> max over depth: ``(M, H, W)``.

    Equals the reference's MaxPool3d / Conv3d (kernels of depth 1) / max over depth, computed per slice
    with 1-D passes of shifted maxima and sums. The grid is allocated with the pool's padding around it:
    zeros pad as well as -inf there because every window holds grid cells and all values are >= 0.
    """
    m, res, pad, k = level.shape[0], cfg.voxel_side, cfg.pool_padding, cfg.pool_size
    side = res + 2 * pad
    grid = torch.zeros(m, slices * side * side, dtype=torch.float32, device=value.device)
    index = (level * side + (row + pad)) * side + (col + pad)
    grid.scatter_reduce_(1, index, value, reduce="amax", include_self=True)
    grid = grid.view(m, slices, side, side)
    dense = _sliding_max(_sliding_max(grid, k, dim=-1), k, dim=-2)  # (M, slices, H, W), H = side - k + 1
    taps = gaussian_taps(cfg.gaussian_size, cfg.gaussian_sigma)
    return _separable_filter(dense, taps).amax(dim=1)


def _sliding_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Max over windows of ``k`` consecutive entries along ``dim`` (no padding), by doubling spans."""
    length = x.shape[dim]
    span = 1
    while 2 * span <= k:
        x = torch.maximum(x.narrow(dim, 0, x.shape[dim] - span), x.narrow(dim, span, x.shape[dim] - span))
        span *= 2
    out = length - k + 1
    if span < k:  # windows [i, i + span) and [i + k - span, i + k) cover [i, i + k)
        x = torch.maximum(x.narrow(dim, 0, out), x.narrow(dim, k - span, out))
    return x


def _separable_filter(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Zero-padded 'same' correlation of the last two dims with ``outer(taps, taps)`` (odd ``len(taps)``)."""
    r = len(taps) // 2
    for dim in (-1, -2):
        n = x.shape[dim]
        out = x * taps[r]
        for j, tap in enumerate(taps):
            shift = j - r  # out[i] += tap * x[i + shift] where both exist; outside the image x is 0
            if shift == 0 or abs(shift) >= n:
                continue
            out.narrow(dim, max(0, -shift), n - abs(shift)).add_(x.narrow(dim, max(0, shift), n - abs(shift)),
                                                                 alpha=tap)
        x = out
    return x


@register_projection("simple", SimpleConfig, default_views="pointclip")
def _project_simple(points: torch.Tensor, views: ViewSet, size: int, cfg: SimpleConfig) -> DepthViews:
    res, eps = cfg.resolution, cfg.depth_epsilon
    frames = _to_view_frames(points, views, (0.0, 0.0, -cfg.camera_distance))
    depth = frames[..., 2]
    # pixel of each point: the reference's ceil(position - 0.5), i.e. rounding half down
    row = ((frames[..., 0] / (depth + eps) + 1) * res / 2 - 0.5).ceil()
    col = ((frames[..., 1] / (depth + eps) + 1) * res / 2 - 0.5).ceil()
    keep = (row >= 0) & (row <= res - 1) & (col >= 0) & (col <= res - 1) & (depth >= 0)
    weight = torch.where(keep, 1 / (depth + eps), torch.zeros_like(depth))
    index = torch.where(keep, row * res + col, torch.zeros_like(row)).long()  # dropped points add 0 to pixel 0
    m = frames.shape[0]
    weight_sum = torch.zeros(m, res * res, dtype=torch.float32, device=points.device)
    weight_sum.scatter_add_(1, index, weight)
    depth_sum = torch.zeros_like(weight_sum).scatter_add_(1, index, depth * weight)
    weight_sum += (weight_sum == 0).float()  # empty pixels: 0 / 1
    img = (depth_sum / weight_sum).view(m, res, res)  # harmonic mean of the depths in each pixel
    images, occupancy = _assemble(m, size, points.device, res * res, lambda part: _resize(img[part], size),
                                  lambda resized: resized > 0)
    return _split_views(images, occupancy, points.shape[0], len(views))


@torch.no_grad()
def project(points, method: str = "realistic", views: str | ViewSet | dict | None = None,
            image_size: int = 224, config: Any = None) -> DepthViews:
    """Project point clouds into depth images, one a view.

    Args:
        points: ``(N, 3)`` or ``(B, N, 3)`` coordinates, numpy array or torch tensor (any real dtype; computed
            in float32 on the tensor's device). A 2-D input gives ``B = 1``.
            ``realistic`` normalises each view's cloud itself (any scale works). ``simple`` does **not**
            normalise, as PointCLIP: give clouds centred and scaled into the unit sphere (ModelNet's h5
            data are), or the object leaves the camera's field of view.
        method: ``"realistic"`` (PointCLIP V2), ``"simple"`` (PointCLIP), ``"pointclip_v2_parts"`` (PointCLIP
            V2's part segmentation) or another name of :func:`list_projection_methods`.
        views: a preset name from ``configs/views.yaml`` (``"pointclip_v2"``: 10 views, ``"pointclip"``: 6),
            a :class:`ViewSet`, or a dict ``{"azimuth": [...], "elevation": [...]}`` in degrees (or
            ``{"euler": [[x, y, z], ...], "bias_euler": [...]}``). ``None``: the method's default
            (:func:`default_views`), ``"pointclip_v2"`` for ``realistic``, ``"pointclip"`` for ``simple``, the views
            of its settings for ``pointclip_v2_parts``.
        image_size: side ``S`` of the output images (bilinear resize with ``align_corners=True``).
        config: an instance of the method's settings class (:class:`RealisticConfig`, :class:`SimpleConfig`;
            see :func:`projection_config`); ``None`` uses its defaults, the references'.

    Returns:
        :class:`DepthViews`: ``images (B, V, 3, S, S)`` float32, the three channels equal, without CLIP's
        mean/std normalisation (both references feed these values to CLIP as they are).
        ``realistic``: values in ``[0, 1]``, background 1 (the reference's inverted, max-normalised image);
        with ``views="pointclip_v2"`` PointCLIP V2's images up to float rounding. ``simple``: raw depths
        (around the camera distance 1.6), background 0. ``occupancy (B, V, S, S)`` bool, the pixels the
        object covers in these images: realistic, value < ``1 - config.occupancy_tolerance``; simple, > 0.
        ``point_pixels`` and ``visible`` are ``None`` for both; ``pointclip_v2_parts`` fills them (see
        ``pointfalip.parts.project_parts``; its images are V2's cropped and resized views, background 1).

    Raises:
        InputError (a ValueError): unknown method or preset, malformed views, points or settings.
    """
    entry = _method(method)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    cfg = _checked_config(method, config)
    if views is None and entry.default_views is not None:
        views = entry.default_views
    view_set = None if views is None else _resolve_views(views)
    pts = _as_points(points)
    return entry.fn(pts, view_set, int(image_size), cfg)
