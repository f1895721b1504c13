"""pointfalip.projection against PointCLIP V2's own output and against geometry worked out by hand.

Expected pixels are computed here from the references' formulas (numpy, hand-written rotations), never
from numbers the code printed.
"""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pointfalip import presets, projection
from pointfalip.errors import InputError
from pointfalip.projection import (
    DepthViews,
    RealisticConfig,
    SimpleConfig,
    ViewSet,
    list_projection_methods,
    list_view_presets,
    load_projection_config,
    project,
    projection_config,
    register_projection,
    view_preset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOLDEN = SHARED_DATA / "golden" / "pointclip_v2_realistic.npz"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IDENTITY_VIEW = {"euler": [[0, 0, 0]]}  # view frame = world frame: row <- x, column <- y, depth <- z

# PointCLIP V2 constants, restated: grid 112, pool 7 with padding 2 -> 110 x 110, Gaussian 3 x 3 sigma 3
GRID, POOLED = 112, 110


def _gaussian_1d() -> np.ndarray:
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 3.0 ** 2))
    return g / g.sum()


def _smoothed_cover(lo: int, hi: int, n: int = POOLED) -> np.ndarray:
    """Share of a 3-tap Gaussian window around each of ``n`` pixels that falls inside ``[lo, hi]``."""
    g = _gaussian_1d()
    inside = np.zeros(n + 2)
    inside[lo + 1:hi + 2] = 1.0  # padded by one zero on each side
    return np.array([g @ inside[i:i + 3] for i in range(n)])


def _pooled_range(cells_lo: int, cells_hi: int) -> tuple[int, int]:
    """Output pixels of a 7-wide max-pool with padding 2 that see grid cells ``[lo, hi]``: o-2 <= c <= o+4."""
    return cells_lo - 4, cells_hi + 2


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


# hand-derived: Rz(90) sends (x, y, z) to (-y, x, z)
_RZ90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
# PointCLIP's six views, worked out by hand: front, right, back, left, top, bottom
POINTCLIP_HAND = [
    _RZ90,                                                   # (x, y, z) -> (-y, x, z)
    np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float),    # -> (-y, -z, x)
    np.array([[0, -1, 0], [-1, 0, 0], [0, 0, -1]], float),   # -> (-y, -x, -z)
    np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float),    # -> (-y, z, -x)
    np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),    # -> (-z, x, -y)
    np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float),      # -> (z, x, y)
]
# PointCLIP V2: rings at azimuths 45, 135, 225, 315, 0, 90, 180, 270 tilted by Ry(20), top/bottom by Ry(12)
POINTCLIP_V2_HAND = ([_rot("y", 20) @ _rot("x", az) @ _RZ90 for az in (45, 135, 225, 315, 0, 90, 180, 270)]
                     + [_rot("y", 12) @ POINTCLIP_HAND[4], _rot("y", 12) @ POINTCLIP_HAND[5]])


# ----------------------------------------------------------------------------------------- realistic


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.skip("../shared/data/golden is absent")
    return np.load(GOLDEN)


def test_realistic_matches_pointclip_v2_golden(golden):
    views = project(golden["points"], "realistic", "pointclip_v2", image_size=224)
    assert views.images.shape == (3, 10, 3, 224, 224) and views.images.dtype == torch.float32
    assert views.occupancy.shape == (3, 10, 224, 224) and views.occupancy.dtype == torch.bool
    images = views.images.numpy()
    assert np.array_equal(images[:, :, 0], images[:, :, 1]) and np.array_equal(images[:, :, 0], images[:, :, 2])
    mismatched = int((np.abs(images[:, :, 0] - golden["images"]) > 1e-5).sum())
    assert mismatched <= 0.001 * golden["images"].size, f"{mismatched} pixels differ from PointCLIP V2"
    # the objects fill a fair part of every view, and the background is white
    cover = views.occupancy.float().mean(dim=(-2, -1))
    assert (cover > 0.05).all() and (cover < 0.9).all()
    assert images.min() >= 0 and images.max() == 1.0


def test_realistic_single_point_is_a_smoothed_7x7_block():
    # one point: no extent, so it sits at the centre: cell ceil((0 + 1) / 2 * 112) = 56 in rows and columns
    views = project(np.array([[0.3, -2.0, 5.0]]), "realistic", "pointclip_v2", image_size=POOLED)
    lo, hi = _pooled_range(56, 56)  # 52 .. 58
    cover = _smoothed_cover(lo, hi)
    expected = 1.0 - np.outer(cover, cover) / cover.max() ** 2
    images = views.images[0, :, 0].numpy()  # the resize from 110 to 110 with align_corners is the identity
    for image in images:
        np.testing.assert_allclose(image, expected, atol=1e-6)
    block = np.zeros((POOLED, POOLED), bool)
    block[lo - 1:hi + 2, lo - 1:hi + 2] = True  # the Gaussian reaches one pixel further: 51 .. 59
    assert (views.occupancy[0].numpy() == block).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_realistic_line_along_an_axis_is_a_bar(axis):
    # a line from -1 to 1 along x (rows) or y (columns), identity view: it spans the rows/columns
    # ceil((0.8 * -1 + 1) / 2 * 112) = ceil(11.2) = 12 .. ceil((0.8 + 1) / 2 * 112) = ceil(100.8) = 101
    pts = np.zeros((1001, 3), np.float32)
    pts[:, axis] = np.linspace(-1, 1, 1001)
    image = project(pts, "realistic", IDENTITY_VIEW, image_size=POOLED).images[0, 0, 0].numpy()
    along = _smoothed_cover(*_pooled_range(12, 101))
    across = _smoothed_cover(*_pooled_range(56, 56))
    rows, cols = (along, across) if axis == 0 else (across, along)
    expected = 1.0 - np.outer(rows, cols) / (rows.max() * cols.max())
    np.testing.assert_allclose(image, expected, atol=1e-6)


def _realistic_cells(points: np.ndarray, rotation: np.ndarray) -> list[tuple[int, int]]:
    """Grid cells (row, column) of points seen through a hand-derived rotation (PointCLIP V2's formulas)."""
    p = points @ rotation.T
    centre = (p.max(0) + p.min(0)) / 2
    unit = (p - centre) / (p.max(0) - p.min(0)).max() * 2
    pos = (unit[:, :2] * 0.8 + 1) / 2 * GRID
    assert (np.abs(pos - np.round(pos)) > 1e-3).all(), "test geometry too close to a cell boundary"
    return [tuple(int(c) for c in cell) for cell in np.ceil(pos)]


def test_realistic_view_order_and_rotation_sense():
    # an asymmetric cloud: origin, a point along +x, one along +y and +z
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.55, 0.3]])
    occupancy = project(pts, "realistic", "pointclip_v2", image_size=POOLED).occupancy[0].numpy()
    for v, rotation in enumerate(POINTCLIP_V2_HAND):
        expected = np.zeros((POOLED, POOLED), bool)
        for r, c in _realistic_cells(pts, rotation):
            (r0, r1), (c0, c1) = _pooled_range(r, r), _pooled_range(c, c)
            expected[max(r0 - 1, 0):r1 + 2, max(c0 - 1, 0):c1 + 2] = True
        assert (occupancy[v] == expected).all(), f"view {v}"


def test_realistic_images_are_in_unit_range_with_white_background():
    pts = torch.randn(2, 500, 3)
    views = project(pts)
    assert views.images.shape == (2, 10, 3, 224, 224)
    assert views.images.min() >= 0 and views.images.max() <= 1
    assert torch.equal(views.occupancy, views.images[:, :, 0] < 1 - RealisticConfig().occupancy_tolerance)
    assert (views.images[:, :, 0][~views.occupancy] > 1 - 1e-6).all()
    assert views.images[:, :, 0].amin(dim=(-2, -1)).max() < 1e-6  # each image's maximum becomes 0 (black)


# ----------------------------------------------------------------------------------------- simple


def _simple_pixel(p_view: np.ndarray, res: int = 128, distance: float = 1.6) -> tuple[int, int, float]:
    """PointCLIP's pixel of a view-frame point: depth z + 1.6, pixel ceil((x / depth + 1) * res / 2 - 0.5)."""
    depth = p_view[2] + distance
    pos = (p_view[:2] / depth + 1) * res / 2 - 0.5
    assert (np.abs(pos - np.round(pos)) > 1e-3).all(), "test geometry too close to a pixel boundary"
    return int(math.ceil(pos[0])), int(math.ceil(pos[1])), depth


def test_simple_single_point_lands_where_each_view_puts_it():
    point = np.array([0.3, 0.2, 0.1])
    views = project(point[None], "simple", "pointclip", image_size=128)
    assert views.images.shape == (1, 6, 3, 128, 128)
    for v, rotation in enumerate(POINTCLIP_HAND):
        row, col, depth = _simple_pixel(rotation @ point)
        image = views.images[0, v, 0].numpy()
        assert image[row, col] == pytest.approx(depth, rel=1e-6), f"view {v}"
        assert np.count_nonzero(image) == 1, f"view {v}"
        assert views.occupancy[0, v].nonzero().tolist() == [[row, col]]


def test_simple_plane_fills_a_square_of_pixels():
    # a plane z = 0 in front of the identity camera, one point at the centre of pixels 40 .. 88:
    # x = 1.6 * (k / 64 - 1) projects to (x / 1.6 + 1) * 64 - 0.5 = k - 0.5 -> ceil: pixel k
    k = np.arange(40, 89)
    coord = 1.6 * (k / 64 - 1)
    xs, ys = np.meshgrid(coord, coord, indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
    image = project(pts, "simple", IDENTITY_VIEW, image_size=128).images[0, 0, 0].numpy()
    expected = np.zeros((128, 128))
    expected[40:89, 40:89] = 1.6
    np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_simple_pixel_value_is_the_harmonic_mean_of_its_depths():
    # two points on the line of sight of pixel (70, 50), at depths 1.6 and 2.4
    depths = np.array([1.6, 2.4])
    pts = np.stack([depths * (70 / 64 - 1), depths * (50 / 64 - 1), depths - 1.6], axis=1)
    image = project(pts, "simple", IDENTITY_VIEW, image_size=128).images[0, 0, 0].numpy()
    assert image[70, 50] == pytest.approx(2 / (1 / 1.6 + 1 / 2.4), rel=1e-6)
    assert np.count_nonzero(image) == 1


def test_simple_behind_camera_and_outside_image_are_dropped():
    pts = np.array([[0.0, 0.0, -2.0],   # depth -0.4: behind the camera
                    [5.0, 0.0, 0.0],    # row (5 / 1.6 + 1) * 64 - 0.5 > 127
                    [0.0, -5.0, 0.0]])  # column < 0
    views = project(pts, "simple", IDENTITY_VIEW, image_size=128)
    assert not views.images.any() and not views.occupancy.any()


def test_simple_matches_a_point_by_point_loop():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 3)).astype(np.float32)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True).max()
    views = project(pts, "simple", "pointclip", image_size=128)
    for v, rotation in enumerate(POINTCLIP_HAND):
        num, den = np.zeros((128, 128)), np.zeros((128, 128))
        for p in pts.astype(np.float64):
            q = rotation @ p
            depth = q[2] + 1.6
            row, col = np.ceil((q[:2] / depth + 1) * 64 - 0.5).astype(int)
            if 0 <= row < 128 and 0 <= col < 128 and depth >= 0:
                num[row, col] += 1.0
                den[row, col] += 1.0 / depth
        expected = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        np.testing.assert_allclose(views.images[0, v, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert (views.occupancy[0, v].numpy() == (num > 0)).all()


def test_simple_resize_keeps_background_zero_and_occupancy_consistent():
    pts = torch.rand(2, 400, 3) - 0.5
    views = project(pts, "simple", "pointclip", image_size=224)
    assert views.images.shape == (2, 6, 3, 224, 224)
    assert torch.equal(views.occupancy, views.images[:, :, 0] > 0)
    assert torch.equal(views.images[:, :, 0], views.images[:, :, 2])
    assert views.occupancy.any(dim=(-2, -1)).all()
    assert views.images.max() < 1.6 + 0.5 * math.sqrt(3) + 1e-4  # no value beyond the farthest depth


# ----------------------------------------------------------------------------------------- both methods


@pytest.mark.parametrize("method", ["realistic", "simple"])
def test_batch_equals_loop_over_clouds(method):
    pts = torch.rand(3, 256, 3) - 0.5
    batch = project(pts, method, image_size=64)
    for i in range(3):
        one = project(pts[i], method, image_size=64)
        assert torch.equal(batch.images[i], one.images[0])
        assert torch.equal(batch.occupancy[i], one.occupancy[0])


@pytest.mark.parametrize("method", ["realistic", "simple"])
def test_deterministic_and_same_for_numpy_and_torch(method):
    pts = np.random.default_rng(1).uniform(-0.5, 0.5, size=(2, 300, 3)).astype(np.float32)
    a = project(pts, method)
    b = project(torch.from_numpy(pts), method)
    c = project(pts.astype(np.float64), method)
    for other in (b, c):
        assert torch.equal(a.images, other.images) and torch.equal(a.occupancy, other.occupancy)
    assert isinstance(a, DepthViews) and a.images.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["realistic", "simple"])
def test_cuda_keeps_device_and_matches_cpu(method):
    pts = torch.rand(2, 512, 3) - 0.5
    cpu = project(pts, method)
    gpu = project(pts.cuda(), method)
    assert gpu.images.is_cuda and gpu.occupancy.is_cuda
    torch.testing.assert_close(gpu.images.cpu(), cpu.images, atol=1e-5, rtol=0)
    assert (gpu.occupancy.cpu() != cpu.occupancy).float().mean() < 1e-3


# ----------------------------------------------------------------------------------------- views


def test_presets_reproduce_the_references_rotations():
    assert {"pointclip", "pointclip_v2"} <= set(list_view_presets())
    for name, hand in (("pointclip", POINTCLIP_HAND), ("pointclip_v2", POINTCLIP_V2_HAND)):
        views = view_preset(name)
        assert len(views) == len(hand)
        combined = (views.bias_rotations.double() @ views.rotations.double()).numpy()
        np.testing.assert_allclose(combined, np.stack(hand), atol=1e-6)
    # the V1 views have no bias; the V2 views keep the reference's two rotations apart
    assert torch.equal(view_preset("pointclip").bias_rotations, torch.eye(3).expand(6, 3, 3))


def test_azimuth_elevation_convention():
    # PointCLIP's views are azimuths 0, 90, 180, 270 level, then elevation +90 (top) and -90 (bottom)
    views = ViewSet.from_azimuth_elevation("v1", [0, 90, 180, 270, 0, 0], [0, 0, 0, 0, 90, -90])
    np.testing.assert_allclose(views.rotations.numpy(), np.stack(POINTCLIP_HAND), atol=1e-6)
    # PointCLIP V2's rings are elevation -20
    rings = ViewSet.from_azimuth_elevation("v2", [45, 135, 225, 315, 0, 90, 180, 270], -20)
    np.testing.assert_allclose(rings.rotations.numpy(), np.stack(POINTCLIP_V2_HAND[:8]), atol=1e-6)
    # depth axis d = (cos el sin az, -sin el, cos el cos az): the view frame's z is d . p
    az, el = 30.0, 40.0
    one = ViewSet.from_azimuth_elevation("one", az, el)
    a, e = math.radians(az), math.radians(el)
    d = np.array([math.cos(e) * math.sin(a), -math.sin(e), math.cos(e) * math.cos(a)])
    np.testing.assert_allclose(one.rotations[0, 2].numpy(), d, atol=1e-6)


@pytest.mark.parametrize("method", ["realistic", "simple"])
def test_custom_views_give_one_image_each(method):
    pts = torch.rand(1, 300, 3) - 0.5
    spec = {"azimuth": [0, 72, 144, 216, 288], "elevation": [10, 20, 30, 40, 50]}
    views = project(pts, method, spec, image_size=96)
    assert views.images.shape == (1, 5, 3, 96, 96) and views.occupancy.shape == (1, 5, 96, 96)
    assert views.occupancy.any(dim=(-2, -1)).all()
    assert project(pts, method, {"azimuth": [0, 90], "elevation": 30}).images.shape[1] == 2
    assert project(pts, method, "ring8", image_size=32).images.shape[1] == 8
    # a ViewSet built from matrices: the identity view
    identity = ViewSet("identity", np.eye(3)[None], np.eye(3)[None])
    assert torch.equal(project(pts, method, identity, image_size=32).images,
                       project(pts, method, IDENTITY_VIEW, image_size=32).images)
    # a preset given as a dict equals the preset
    same = project(pts, method, {"euler": [[0, 0, 90], [90, 0, 90]]}, image_size=32)
    assert torch.equal(same.images, project(pts, method, "pointclip", image_size=32).images[:, :2])


def test_every_yaml_preset_loads():
    for name in list_view_presets():
        views = view_preset(name)
        assert len(views) >= 1 and views.rotations.dtype == torch.float32
        eye = torch.eye(3).expand_as(views.rotations)
        torch.testing.assert_close(views.rotations @ views.rotations.transpose(1, 2), eye, atol=1e-6, rtol=0)


def test_projection_yaml_holds_the_defaults():
    assert {"realistic", "simple"} <= set(list_projection_methods())
    data = presets.read_yaml(CONFIGS / "projection.yaml")
    for method, cls in (("realistic", RealisticConfig), ("simple", SimpleConfig)):
        assert set(data[method]) == {f.name for f in dataclasses.fields(cls)}, method  # every setting, no other
        assert load_projection_config(method, CONFIGS / "projection.yaml") == cls()
        assert load_projection_config(method) == cls()  # the packaged copy
        assert projection_config(method) == cls() and projection_config(method, {}) == cls()


def test_load_projection_config_reads_one_section(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("realistic:\n  voxel_side: 64\n  translation: [0, 0, -2]\nsimple:\n")
    assert load_projection_config("realistic", path) == RealisticConfig(voxel_side=64, translation=(0.0, 0.0, -2.0))
    assert load_projection_config("simple", path) == SimpleConfig()  # an empty section: the defaults
    path.write_text("projection:\n  grid_size: 112\n")  # the former single-section layout
    with pytest.raises(InputError, match="no 'realistic:' section"):
        load_projection_config("realistic", path)
    path.write_text("simple:\n  simple_resolution: 64\n")
    with pytest.raises(InputError, match="unknown key simple_resolution"):
        load_projection_config("simple", path)


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "fancy"}, "unknown projection method 'fancy'"),
    ({"views": "pointclip_v3"}, "unknown view preset 'pointclip_v3'"),
    ({"views": {"azimuth": [0, 90], "elevation": [0, 10, 20]}}, "2 azimuths but 3 elevations"),
    ({"views": {"azimuth": [0], "roll": [0]}}, "unknown keys"),
    ({"views": {"euler": [[0, 0]]}}, "angle triples"),
    ({"views": {"elevation": [10]}}, "exactly one of 'euler' or 'azimuth'"),
    ({"image_size": 0}, "image_size must be a positive integer"),
])
def test_invalid_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        project(np.zeros((10, 3)), **kwargs)


@pytest.mark.parametrize("points, message", [
    (np.zeros((10, 2)), r"\(N, 3\) or \(B, N, 3\)"),
    (np.zeros((2, 3, 10, 3)), r"\(N, 3\) or \(B, N, 3\)"),
    (np.zeros((0, 3)), "at least one point"),
    (np.array([[0.0, np.nan, 0.0]]), "NaN or infinite"),
    ([["a", "b", "c"]], "array of numbers"),
])
def test_invalid_points_raise_value_error(points, message):
    with pytest.raises(ValueError, match=message):
        project(points)


def test_invalid_config_raises_value_error():
    with pytest.raises(ValueError, match="gaussian_size must be odd"):
        RealisticConfig(gaussian_size=4)
    with pytest.raises(ValueError, match="unknown key grid"):
        projection_config("realistic", {"grid": 64})


@pytest.mark.parametrize("method, values, message", [
    ("realistic", {"grid_size": 64}, "unknown key grid_size"),  # renamed voxel_side
    ("realistic", {"realistic_translation": [0, 0, 0]}, "unknown key realistic_translation"),
    ("simple", {"camera": 2.0, "simple_resolution": 64}, "unknown keys camera, simple_resolution"),
    ("realistic", {"resolution": 128}, "unknown key resolution"),  # a simple setting
    ("realistic", {"voxel_side": "big"}, "voxel_side must be an integer"),
    ("realistic", {"voxel_depth": 2}, "voxel_depth must be an integer >= 3"),
    ("realistic", {"pool_padding": 4}, r"pool_padding must be in \[0, pool_size // 2\]"),
    ("realistic", {"gaussian_sigma": 0}, "gaussian_sigma must be positive"),
    ("realistic", {"obj_ratio": 1.5}, r"obj_ratio must be in \(0, 1\]"),
    ("realistic", {"translation": [0, 0]}, "translation must be 3 finite numbers"),
    ("realistic", {"occupancy_tolerance": "small"}, "occupancy_tolerance must be a finite number"),
    ("simple", {"resolution": 0}, "resolution must be a positive integer"),
    ("simple", {"resolution": True}, "resolution must be a positive integer"),
    ("simple", {"camera_distance": float("nan")}, "camera_distance must be a finite number"),
    ("simple", {"depth_epsilon": -1.0}, "depth_epsilon must be >= 0"),
    ("simple", [1, 2], "must be a mapping of settings"),
])
def test_projection_config_rejects_bad_settings_in_one_line(method, values, message):
    with pytest.raises(InputError, match=message) as info:
        projection_config(method, values)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{method} projection settings")


def test_projection_config_builds_each_methods_class():
    realistic = projection_config("realistic", {"voxel_side": 56, "pool_padding": 1})
    assert isinstance(realistic, RealisticConfig) and (realistic.voxel_side, realistic.pool_padding) == (56, 1)
    simple = projection_config("simple", {"resolution": 64, "camera_distance": 2})
    assert simple == SimpleConfig(resolution=64, camera_distance=2.0)
    assert projection_config("simple", simple) is simple
    with pytest.raises(InputError, match="must be a SimpleConfig, got RealisticConfig"):
        projection_config("simple", realistic)
    with pytest.raises(InputError, match="unknown projection method 'fancy'; choose one of .*'realistic', 'simple'"):
        projection_config("fancy", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        realistic.voxel_side = 64


def test_project_uses_the_given_settings():
    # one point, a 64-pixel canvas and the camera 3.2 away: the pixel and depth of PointCLIP's formula
    point = np.array([0.3, -0.4, 0.1])
    config = SimpleConfig(resolution=64, camera_distance=3.2)
    image = project(point[None], "simple", IDENTITY_VIEW, image_size=64, config=config).images[0, 0, 0].numpy()
    row, col, depth = _simple_pixel(point, res=64, distance=3.2)
    assert image[row, col] == pytest.approx(depth, rel=1e-6) and np.count_nonzero(image) == 1
    # a coarser voxel grid gives a different image; the defaults passed explicitly give the same one
    pts = torch.rand(1, 300, 3) - 0.5
    default = project(pts, "realistic", "pointclip_v2", image_size=64)
    assert torch.equal(project(pts, "realistic", "pointclip_v2", 64, RealisticConfig()).images, default.images)
    coarse = project(pts, "realistic", "pointclip_v2", 64, projection_config("realistic", {"voxel_side": 56}))
    assert not torch.equal(coarse.images, default.images)


@pytest.mark.parametrize("method, config, expected", [
    ("realistic", SimpleConfig(), "must be a RealisticConfig, got SimpleConfig"),
    ("simple", RealisticConfig(), "must be a SimpleConfig, got RealisticConfig"),
    ("simple", {"resolution": 64}, "must be a SimpleConfig, got dict"),
])
def test_project_rejects_a_config_of_another_method(method, config, expected):
    with pytest.raises(InputError, match=expected):
        project(np.zeros((10, 3)), method, config=config)


# ----------------------------------------------------------------------------------------- registry


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry for the test, so that toy methods vanish afterwards."""
    monkeypatch.setattr(projection, "_PROJECTIONS", dict(projection._PROJECTIONS))


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    shade: float = 0.5  # value of every pixel

    def __post_init__(self):
        if not 0 <= self.shade <= 1:
            raise InputError(f"ToyConfig.shade must be in [0, 1], got {self.shade}")


def _toy(points: torch.Tensor, views: ViewSet, image_size: int, config: ToyConfig) -> DepthViews:
    """Flat images; each point at the pixel of its first two coordinates' signs, seen in even views."""
    assert points.ndim == 3 and points.dtype == torch.float32 and isinstance(views, ViewSet)
    b, n, _ = points.shape
    v = len(views)
    images = torch.full((b, v, 3, image_size, image_size), config.shade)
    pixels = ((points[..., :2] > 0).long() * (image_size - 1)).unsqueeze(1).expand(b, v, n, 2)
    visible = (torch.arange(v) % 2 == 0).view(1, v, 1).expand(b, v, n)
    return DepthViews(images, images[:, :, 0] > 0, pixels, visible)


def test_registry_round_trip(registry):
    assert register_projection("toy", ToyConfig)(_toy) is _toy  # the decorator returns the function
    assert "toy" in list_projection_methods() and {"realistic", "simple"} <= set(list_projection_methods())
    pts = np.array([[[1.0, -1.0, 0.0], [-2.0, 3.0, 1.0]]])
    out = project(pts, "toy", "pointclip", image_size=8)
    assert out.images.shape == (1, 6, 3, 8, 8) and (out.images == 0.5).all()  # ToyConfig's defaults
    assert out.point_pixels.tolist()[0][0] == [[7, 0], [0, 7]] and out.point_pixels.shape == (1, 6, 2, 2)
    assert out.visible[0, :, 0].tolist() == [True, False] * 3
    assert (project(pts, "toy", config=ToyConfig(0.25)).images == 0.25).all()
    assert projection_config("toy", {"shade": 0.1}) == ToyConfig(0.1)
    assert load_projection_config("toy") == ToyConfig()  # the packaged file has no section for it: defaults
    with pytest.raises(InputError, match="toy projection settings: ToyConfig.shade must be in"):
        projection_config("toy", {"shade": 2})
    with pytest.raises(InputError, match="toy projection settings: unknown key colour"):
        projection_config("toy", {"colour": 1})
    with pytest.raises(InputError, match="config of projection 'toy' must be a ToyConfig, got RealisticConfig"):
        project(pts, "toy", config=RealisticConfig())
    with pytest.raises(InputError, match="unknown projection method 'toys'; choose one of") as info:
        project(pts, "toys")
    assert all(repr(name) in str(info.value) for name in ("realistic", "simple", "toy"))


def test_register_projection_as_a_decorator_rejects_clashes(registry):
    @register_projection("toy", ToyConfig)
    def toy(points, views, image_size, config):
        return _toy(points, views, image_size, config)

    assert project(np.zeros((4, 3)), "toy", IDENTITY_VIEW, image_size=4).images.shape == (1, 1, 3, 4, 4)
    register_projection("toy", ToyConfig)(toy)  # the same function again (a module reload) is fine
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_projection("toy", ToyConfig)(_toy)
    with pytest.raises(ValueError, match="'realistic' is already registered"):
        register_projection("realistic", RealisticConfig)(_toy)
    with pytest.raises(TypeError, match="config_cls must be a dataclass"):
        register_projection("other", dict)
    with pytest.raises(ValueError, match="non-empty string"):
        register_projection("", ToyConfig)


@pytest.mark.parametrize("method", ["realistic", "simple"])
def test_reference_methods_leave_point_fields_unset(method):
    views = project(torch.rand(2, 50, 3) - 0.5, method, image_size=32)
    assert views.point_pixels is None and views.visible is None
    images, occupancy = torch.zeros(1, 1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    plain = DepthViews(images, occupancy)
    assert plain.point_pixels is None and plain.visible is None and len(plain) == 4
    assert DepthViews._fields == ("images", "occupancy", "point_pixels", "visible")
