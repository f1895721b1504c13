"""pointfalip.io: every format round-trips a cloud the test writes; meshes sample their surface; bad input
raises InputError with one line; normalize is a centring, a scaling and a proper rotation."""
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import raises_one_line as _raises_one_line
import torch
import trimesh

from pointfalip import io as pio
from pointfalip.io import describe, load_points, normalize, validate

MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
REAL_MESHES = ["airplane_0001", "bathtub_0002", "bed_0001", "chair_0001", "chair_0002", "stool_0002", "toilet_0001"]


@pytest.fixture
def cloud() -> np.ndarray:
    """An off-centre cloud in its own coordinates, with distinct points."""
    rng = np.random.default_rng(42)
    return (rng.normal(size=(500, 3)) * [1.0, 2.0, 0.5] + [10.0, -3.0, 7.0]).astype(np.float64)


def _off_text(mesh: trimesh.Trimesh, header: str = "OFF\n") -> str:
    lines = [f"{len(mesh.vertices)} {len(mesh.faces)} 0"]
    lines += [" ".join(repr(float(c)) for c in v) for v in mesh.vertices]
    lines += ["3 " + " ".join(str(int(i)) for i in f) for f in mesh.faces]
    return header + "\n".join(lines) + "\n"


def _assert_on_box(points: np.ndarray, half: float = 0.5) -> None:
    """Every point of a sample of the axis-aligned box [-half, half]^3's surface has its largest |coordinate|
    equal to half."""
    np.testing.assert_allclose(np.abs(points).max(axis=1), half, atol=1e-6)


def _assert_on_mesh(points: np.ndarray, mesh: trimesh.Trimesh, tol: float = 1e-5) -> None:
    """Every point lies in some triangle: its projection on the triangle's plane is inside it (barycentric
    coordinates >= 0) and its distance to that plane is below tol. Brute force over all triangles."""
    tri = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    tri = tri[np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) > 1e-12]
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    n = np.cross(e1, e2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    d11, d12, d22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    den = d11 * d22 - d12 * d12
    for p in points.astype(np.float64):
        w = p - a
        plane = np.abs((w * n).sum(1))
        w1, w2 = (w * e1).sum(1), (w * e2).sum(1)
        u, v = (d22 * w1 - d12 * w2) / den, (d11 * w2 - d12 * w1) / den
        inside = (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1 + 1e-6)
        assert inside.any() and plane[inside].min() < tol, (p, plane[inside].min() if inside.any() else None)


# --------------------------------------------------------------------------------------------------
# point files round-trip
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_ply_point_cloud_round_trips(tmp_path, cloud, encoding):
    path = tmp_path / "cloud.ply"
    colours = np.random.default_rng(0).integers(0, 255, size=(len(cloud), 4), dtype=np.uint8)
    trimesh.PointCloud(cloud, colors=colours).export(path, encoding=encoding)
    out = load_points(path, num_points=64)  # a point cloud: all its points, not num_points
    assert out.shape == cloud.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, cloud, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_pcd_round_trips(tmp_path, cloud, kind):
    import open3d as o3d

    path = tmp_path / f"cloud_{kind}.pcd"
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud))
    assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=kind == "ascii",
                                    compressed=kind == "binary_compressed")
    header = path.read_bytes().split(b"DATA ", 1)[1].split(b"\n", 1)[0]
    assert header.decode() == kind  # the test really wrote this flavour
    out = load_points(path)
    assert out.shape == cloud.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, cloud, rtol=1e-6, atol=1e-5)


def _write_text(path: Path, table: np.ndarray, header: list[str], sep: str) -> None:
    rows = [sep.join(f"{v:.10g}" for v in row) for row in table]
    path.write_text("\n".join(header + rows) + "\n")


@pytest.mark.parametrize("ext, header, sep", [
    (".xyz", [], " "),
    (".xyz", ["x y z nx ny nz"], "\t"),
    (".txt", ["# exported by a scanner", "x,y,z,nx,ny,nz"], ","),
    (".txt", ["x, y, z, nx, ny, nz"], ", "),
    (".pts", ["500"], " "),  # Leica-style count line, then x y z intensity r g
])
def test_text_round_trips_with_headers_and_extra_columns(tmp_path, cloud, ext, header, sep):
    extra = np.random.default_rng(1).random((len(cloud), 3))
    path = tmp_path / f"cloud{ext}"
    _write_text(path, np.hstack([cloud, extra]), header, sep)
    out = load_points(path)
    assert out.shape == cloud.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, cloud, rtol=1e-6, atol=1e-5)


def test_npy_round_trips_and_drops_extra_columns(tmp_path, cloud):
    path = tmp_path / "cloud.npy"
    np.save(path, np.hstack([cloud, np.ones((len(cloud), 3))]))
    np.testing.assert_allclose(load_points(path), cloud, rtol=1e-6)
    np.save(path, cloud[None].astype(np.float32))  # (1, N, 3)
    np.testing.assert_allclose(load_points(path), cloud, rtol=1e-6)
    np.save(path, np.round(cloud * 100).astype(np.int32))  # integer coordinates are coordinates too
    np.testing.assert_array_equal(load_points(path), np.round(cloud * 100).astype(np.float32))


@pytest.mark.parametrize("arrays, key", [
    ({"points": 0, "labels": None}, "points"),
    ({"data": 0, "label": None}, "data"),
    ({"xyz": 0, "normals": None}, "xyz"),
    ({"whatever": 0}, "whatever"),
])
def test_npz_picks_the_points_array(tmp_path, cloud, arrays, key):
    path = tmp_path / "cloud.npz"
    payload = {k: (cloud if v == 0 else np.zeros((len(cloud), 3))) for k, v in arrays.items()}
    np.savez(path, **payload)
    np.testing.assert_allclose(load_points(path), cloud, rtol=1e-6)


def test_npz_accepts_a_batch_of_one(tmp_path, cloud):
    path = tmp_path / "cloud.npz"
    np.savez_compressed(path, data=cloud[None])
    np.testing.assert_allclose(load_points(path), cloud, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_tensor_input_any_float_dtype(cloud, dtype):
    t = torch.from_numpy(np.hstack([cloud, np.zeros((len(cloud), 2))])).to(dtype)
    out = load_points(t)
    assert out.shape == cloud.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, t[:, :3].float().numpy())


def test_array_input_and_batch_of_one(cloud):
    np.testing.assert_allclose(load_points(cloud), cloud, rtol=1e-6)
    np.testing.assert_allclose(load_points(cloud[None].astype(np.float16)), cloud.astype(np.float16), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# meshes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".off", ".obj", ".stl", ".ply", ".glb"])
def test_box_meshes_sample_exactly_num_points_on_the_surface(tmp_path, ext):
    path = tmp_path / f"box{ext}"
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(path)
    out = load_points(path, num_points=777)
    assert out.shape == (777, 3) and out.dtype == np.float32
    _assert_on_box(out)
    # all six faces are hit: the sample is spread over the surface, not over a few triangles
    faces_hit = {(axis, sign) for p in out for axis in range(3) for sign in (-1, 1)
                 if abs(p[axis] - sign * 0.5) < 1e-6}
    assert len(faces_hit) == 6


@pytest.mark.parametrize("ext", [".obj", ".glb", ".ply"])
def test_sphere_meshes_sample_on_the_surface(tmp_path, ext):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=2.0)
    sphere.apply_translation([1.0, 2.0, 3.0])
    path = tmp_path / f"sphere{ext}"
    sphere.export(path)
    out = load_points(path, num_points=512, seed=3)
    assert out.shape == (512, 3)
    _assert_on_mesh(out, sphere)


def test_mesh_sampling_is_seeded(tmp_path):
    path = tmp_path / "box.off"
    trimesh.creation.box().export(path)
    a = load_points(path, num_points=256, seed=7)
    b = load_points(path, num_points=256, seed=7)
    c = load_points(path, num_points=256, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_off_with_header_glued_to_counts(tmp_path):
    """ModelNet40's `OFF490 518 0`: the same mesh with and without the glued header gives the same points."""
    src = MESHES / "chair_0001.off"
    text = src.read_text() if src.is_file() else _off_text(trimesh.creation.box())
    assert text.startswith("OFF\n")
    plain, glued = tmp_path / "plain.off", tmp_path / "glued.off"
    plain.write_text(text)
    glued.write_text("OFF" + text[len("OFF\n"):])
    assert glued.read_text().splitlines()[0].startswith("OFF") and glued.read_text().splitlines()[0][3].isdigit()
    np.testing.assert_array_equal(load_points(glued, num_points=300), load_points(plain, num_points=300))


def test_off_quirks_repaired_in_memory(tmp_path):
    """Lower-case glued header, comments and blank lines (trimesh alone refuses the lower-case header)."""
    box = trimesh.creation.box()
    body = _off_text(box, header="").splitlines()
    text = "# exported by an old tool\n\noff" + body[0] + "\n\n# vertices\n" + "\n".join(body[1:]) + "\n\n"
    path = tmp_path / "quirky.off"
    path.write_text(text)
    out = load_points(path, num_points=200)
    assert out.shape == (200, 3)
    _assert_on_box(out)


def test_off_with_degenerate_faces(tmp_path):
    """Zero-area faces (a repeated vertex, collinear vertices) load and are never sampled."""
    box = trimesh.creation.box()
    v = np.vstack([box.vertices, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]])  # 8, 9, 10: on a line
    faces = np.vstack([box.faces, [[0, 0, 1], [3, 3, 3], [8, 9, 10], [2, 5, 2]]])
    path = tmp_path / "degenerate.off"
    path.write_text(_off_text(trimesh.Trimesh(v, faces, process=False)))
    out = load_points(path, num_points=1000)
    assert out.shape == (1000, 3)
    _assert_on_box(out)  # nothing from the collinear triangle, which lies partly outside the box


def test_mesh_without_area_falls_back_to_its_vertices(tmp_path):
    v = np.array([[i, i * i, 0.0] for i in range(12)]) * 0.1
    path = tmp_path / "flat.off"
    path.write_text("OFF\n12 3 0\n" + "\n".join(" ".join(map(str, r)) for r in v) + "\n3 0 0 1\n3 2 2 2\n3 4 5 4\n")
    out = load_points(path, num_points=2048)
    np.testing.assert_allclose(np.sort(out, axis=0), np.sort(v, axis=0).astype(np.float32))
    few = load_points(path, num_points=9, seed=1)  # more vertices than num_points: a subset of them
    assert few.shape == (9, 3)
    assert all(np.isclose(v, p, atol=1e-7).all(axis=1).any() for p in few)


def test_ply_mesh_is_sampled_and_ply_cloud_is_read(tmp_path):
    mesh_path, cloud_path = tmp_path / "mesh.ply", tmp_path / "cloud.ply"
    box = trimesh.creation.box()
    box.export(mesh_path)
    trimesh.PointCloud(box.vertices).export(cloud_path)
    assert load_points(mesh_path, num_points=100).shape == (100, 3)
    np.testing.assert_allclose(load_points(cloud_path, num_points=100), box.vertices)


@pytest.mark.parametrize("name", REAL_MESHES)
def test_real_modelnet_meshes_load(name):
    path = MESHES / f"{name}.off"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    out = load_points(path, num_points=1024)
    assert out.shape == (1024, 3) and np.isfinite(out).all()
    mesh = trimesh.load(path, process=False)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    if name == "chair_0001":
        _assert_on_mesh(out, mesh)


# --------------------------------------------------------------------------------------------------
# huge clouds
# --------------------------------------------------------------------------------------------------

def _big(n: int = 20_000) -> np.ndarray:
    return np.random.default_rng(5).random((n, 4))


def _write_big(path: Path, table: np.ndarray) -> None:
    ext = path.suffix
    if ext == ".npy":
        np.save(path, table)
    elif ext == ".npz":
        np.savez(path, points=table)
    elif ext == ".xyz":
        np.savetxt(path, table, fmt="%.17g")
    elif ext == ".ply":
        trimesh.PointCloud(table[:, :3]).export(path)
    elif ext == ".pcd":
        import open3d as o3d

        o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(table[:, :3])))


@pytest.mark.parametrize("ext", [".npy", ".npz", ".xyz", ".ply", ".pcd"])
def test_max_points_subsamples_seeded_rows_of_the_file(tmp_path, ext):
    table = _big()
    path = tmp_path / f"big{ext}"
    _write_big(path, table)
    a = load_points(path, max_points=1000, seed=0)
    assert a.shape == (1000, 3)
    rows = {tuple(r) for r in table[:, :3].astype(np.float32)}
    assert all(tuple(r) in rows for r in a)  # rows of the file, untouched
    assert len(np.unique(a, axis=0)) == 1000  # without replacement
    np.testing.assert_array_equal(a, load_points(path, max_points=1000, seed=0))
    assert not np.array_equal(a, load_points(path, max_points=1000, seed=1))
    assert load_points(path, max_points=None).shape == (len(table), 3)


def test_max_points_applies_to_arrays_and_tensors():
    table = _big(5000)
    assert load_points(table, max_points=100).shape == (100, 3)
    assert load_points(torch.from_numpy(table), max_points=100).shape == (100, 3)
    assert load_points(table, max_points=5000).shape == (5000, 3)


def test_npy_is_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.save(path, _big())
    seen = []
    real_load = np.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pio.np, "load", spy)
    assert load_points(path, max_points=10).shape == (10, 3)
    assert seen == ["r"]


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    _raises_one_line(load_points, tmp_path / "nope.ply", match="no such file")


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.ply").mkdir()
    _raises_one_line(load_points, tmp_path / "dir.ply", match="is a folder")


@pytest.mark.parametrize("ext", sorted(set(pio.MESH_EXTENSIONS + pio.POINT_EXTENSIONS)))
def test_empty_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.touch()
    _raises_one_line(load_points, path, match="empty")


def test_unknown_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "cloud.las"
    path.write_text("1 2 3\n")
    msg = _raises_one_line(load_points, path, match="unsupported")
    for ext in (".off", ".obj", ".stl", ".ply", ".glb", ".pcd", ".xyz", ".txt", ".pts", ".npy", ".npz"):
        assert ext in msg


@pytest.mark.parametrize("ext, content", [
    (".off", b"OFF\n8 12 0\n0 0 0\n1 1\n"),
    (".off", b"\x00\xff\xfe garbage"),
    (".obj", b"\x00\xff\xfe garbage"),
    (".stl", b"\x00\xff\xfe garbage"),
    (".ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\nfoo\n"),
    (".ply", b"\x00\xff\xfe garbage"),
    (".glb", b"\x00\xff\xfe garbage"),
    (".pcd", b"\x00\xff\xfe garbage"),
    (".pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
             b"WIDTH 0\nHEIGHT 1\nPOINTS 0\nDATA ascii\n"),  # a valid header, no points
    (".xyz", b"1 2 3\n4 5\n6 7 8\n"),
    (".txt", b"hello world\nno numbers here\n"),
    (".pts", b"\x00\xff\xfe garbage"),
    (".npy", b"\x93NUMPY garbage"),
    (".npz", b"PK\x03\x04 garbage"),
])
def test_corrupt_files(tmp_path, ext, content):
    path = tmp_path / f"bad{ext}"
    path.write_bytes(content)
    _raises_one_line(load_points, path)


def test_off_face_refers_to_missing_vertex(tmp_path):
    path = tmp_path / "bad.off"
    path.write_text(_off_text(trimesh.creation.box()) + "")
    text = path.read_text().replace("\n3 0 ", "\n3 99 ", 1)
    path.write_text(text)
    _raises_one_line(load_points, path)


def test_npy_of_objects_or_wrong_shape(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises_one_line(load_points, path)
    np.save(path, np.zeros((10, 2)))
    _raises_one_line(load_points, path, match=r"shape")


def test_npz_with_ambiguous_keys(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, a=np.zeros((10, 3)), b=np.zeros((10, 3)))
    _raises_one_line(load_points, path, match="points, data, xyz")


def test_nan_and_inf_are_counted(cloud, tmp_path):
    bad = cloud.copy()
    bad[[1, 5, 9], 0] = np.nan
    bad[[2, 3], 2] = np.inf
    msg = _raises_one_line(load_points, bad)
    assert "5 of 500" in msg and "3 NaN" in msg and "2 infinite" in msg
    path = tmp_path / "nan.xyz"
    _write_text(path, bad, [], " ")
    msg = _raises_one_line(load_points, path)
    assert "5 of 500" in msg and str(path) in msg


def test_nan_in_a_pcd_file(tmp_path, cloud):
    import open3d as o3d

    bad = cloud.copy()
    bad[4] = np.nan
    path = tmp_path / "nan.pcd"
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(bad)), write_ascii=True)
    _raises_one_line(load_points, path, match="1 of 500")


def test_nan_vertices_in_a_mesh(tmp_path):
    box = trimesh.creation.box()
    text = _off_text(box).splitlines()
    text[2] = "nan nan nan"
    path = tmp_path / "nan.off"
    path.write_text("\n".join(text) + "\n")
    _raises_one_line(load_points, path, match="NaN")


def test_too_few_points(tmp_path):
    _raises_one_line(load_points, np.random.rand(5, 3), match="only 5 distinct")
    _raises_one_line(load_points, np.ones((100, 3)), match="only 1 distinct")
    path = tmp_path / "few.xyz"
    path.write_text("0 0 0\n1 0 0\n0 1 0\n")
    _raises_one_line(load_points, path, match="only 3 distinct")
    assert validate(np.random.rand(5, 3), min_points=5).shape == (5, 3)


def test_bad_arrays_and_arguments():
    _raises_one_line(load_points, np.zeros((0, 3)), match="no points")
    _raises_one_line(load_points, np.random.rand(10, 2), match="shape")
    _raises_one_line(load_points, np.array(["a", "b", "c"]), match="dtype")
    _raises_one_line(load_points, np.random.rand(10, 3), num_points=0, match="num_points")
    _raises_one_line(validate, np.random.rand(10, 4), match=r"\(N, 3\)")
    _raises_one_line(normalize, np.random.rand(10, 3), up_axis="w", match="up axis")
    _raises_one_line(normalize, np.ones((10, 3)), match="coincide")


# --------------------------------------------------------------------------------------------------
# validate, normalize, describe
# --------------------------------------------------------------------------------------------------

def test_validate_returns_contiguous_float32(cloud):
    out = validate(torch.from_numpy(cloud), name="x")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == cloud.shape
    np.testing.assert_allclose(out, cloud, rtol=1e-6)


def test_normalize_centres_and_scales_to_the_unit_sphere(cloud):
    out = normalize(cloud, up_axis="y")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-6)
    assert np.isclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-6)
    # a similarity: distances keep their ratios (y-up: no rotation at all)
    centred = cloud - cloud.mean(axis=0)
    np.testing.assert_allclose(out, centred / np.linalg.norm(centred, axis=1).max(), atol=1e-6)


def _axes_cloud(scale: float = 3.0, shift=(5.0, -2.0, 1.0)) -> np.ndarray:
    """+x, +y, +z, -x, -y, -z scaled and shifted: centroid `shift`, every norm `scale` about it."""
    return np.vstack([np.eye(3), -np.eye(3)]) * scale + np.asarray(shift)


@pytest.mark.parametrize("up, image_of_xyz", [
    ("y", np.eye(3)),
    ("z", np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])),  # (x, y, z) -> (x, z, -y)
    ("x", None),
])
def test_normalize_maps_the_up_axis_to_plus_y_with_a_proper_rotation(up, image_of_xyz):
    out = normalize(_axes_cloud(), up_axis=up).astype(np.float64)
    m = out[:3]  # rows: the images of +x, +y, +z
    np.testing.assert_allclose(out[3:], -m, atol=1e-6)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)  # orthonormal
    assert np.isclose(np.linalg.det(m), 1.0, atol=1e-6)  # proper: no reflection
    np.testing.assert_allclose(m["xyz".index(up)], [0.0, 1.0, 0.0], atol=1e-6)  # the up axis becomes +y
    if image_of_xyz is not None:
        np.testing.assert_allclose(m, image_of_xyz, atol=1e-6)


def test_normalize_z_up_chair_stands_on_y():
    """A hand-made z-up 'pole': tall along z, after normalize it is tall along +y with its top up."""
    z = np.linspace(0.0, 10.0, 50)
    pole = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)
    pole[-1, 0] = 0.1  # break symmetry, keep the top the last point
    out = normalize(pole, up_axis="Z")
    assert np.ptp(out[:, 1]) > 1.9 and np.ptp(out[:, 2]) < 1e-6
    assert out[-1, 1] == out[:, 1].max()


def test_normalize_batches_each_cloud_alone(cloud):
    batch = np.stack([cloud, cloud * 2.0 + 1.0])
    out = normalize(torch.from_numpy(batch), up_axis="z")
    np.testing.assert_allclose(out[0], normalize(cloud, up_axis="z"), atol=1e-6)
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)


def test_describe_is_one_line_with_count_extents_and_centroid():
    pts = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 6.0]])
    text = describe(pts)
    assert "\n" not in text
    assert text.startswith("4 points")
    assert "2 x 4 x 6" in text and "centroid (0.5, 1, 1.5)" in text


@pytest.mark.parametrize("axis,up", [("-x", [-1, 0, 0]), ("-y", [0, -1, 0]), ("-z", [0, 0, -1])])
def test_negative_up_axes_are_proper_rotations(axis, up):
    from pointfalip.clouds import UP_ROTATIONS as _UP_ROTATIONS

    rot = _UP_ROTATIONS[axis]
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot @ np.array(up, float), [0, 1, 0], atol=1e-12)


def test_drop_nonfinite_keeps_the_finite_points():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(50, 3)).astype(np.float32)
    cloud[[3, 7]] = np.nan
    cloud[9, 1] = np.inf
    out = load_points(cloud, drop_nonfinite=True)
    np.testing.assert_array_equal(out, np.delete(cloud, [3, 7, 9], axis=0))


# --------------------------------------------------------------------------------------------------
# headers that lie, content that is not what the extension says, sizes, warnings
# --------------------------------------------------------------------------------------------------

def _o3d_pcd(path: Path, cloud: np.ndarray, kind: str) -> bytes:
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud))
    assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=kind == "ascii", compressed=kind == "binary_compressed")
    return path.read_bytes()


def _claim_points(data: bytes, n: int) -> bytes:
    """The same PCD with its WIDTH and POINTS lines claiming n points."""
    head, body = data.split(b"DATA ", 1)
    head = re.sub(rb"\nWIDTH \d+", b"\nWIDTH %d" % n, head)
    head = re.sub(rb"\nPOINTS \d+", b"\nPOINTS %d" % n, head)
    return head + b"DATA " + body


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_pcd_header_claiming_more_points_than_the_body_fails(tmp_path, cloud, kind):
    """open3d fills the missing points from uninitialised memory (or zeros); the header check refuses first."""
    path = tmp_path / f"lying_{kind}.pcd"
    data = _o3d_pcd(path, cloud[:100], kind)
    path.write_bytes(_claim_points(data, 5000))
    msg = _raises_one_line(load_points, path, match="5000")
    assert "truncated or corrupt" in msg
    path.write_bytes(_claim_points(data, 50))  # fewer: points would be dropped silently
    _raises_one_line(load_points, path, match="50 points")


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_pcd_header_without_data_fails_the_same_way_every_time(tmp_path, cloud, kind):
    path = tmp_path / f"header_{kind}.pcd"
    data = _o3d_pcd(path, cloud, kind)
    path.write_bytes(data[: data.index(b"DATA ")] + f"DATA {kind}\n".encode())
    messages = {_raises_one_line(load_points, path) for _ in range(3)}
    assert len(messages) == 1 and "500 points" in messages.pop()


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_ply_header_counts_must_match_the_body(tmp_path, cloud, encoding):
    path = tmp_path / f"cloud_{encoding}.ply"
    trimesh.PointCloud(cloud).export(path, encoding=encoding)
    data = path.read_bytes()
    assert b"element vertex 500\n" in data
    for claimed in (5000, 499):
        path.write_bytes(data.replace(b"element vertex 500\n", b"element vertex %d\n" % claimed, 1))
        _raises_one_line(load_points, path, match=str(claimed))
    body_start = data.index(b"end_header\n") + len(b"end_header\n")
    path.write_bytes(data[:body_start])  # a header and nothing else
    _raises_one_line(load_points, path, match="500 'vertex' elements")


def test_stl_ascii_and_binary_with_a_solid_header_still_load(tmp_path):
    box = trimesh.creation.box()
    ascii_path, solid_path = tmp_path / "ascii.stl", tmp_path / "solid.stl"
    box.export(ascii_path, file_type="stl_ascii")
    assert ascii_path.read_bytes().startswith(b"solid")
    binary = box.export(file_type="stl")
    solid_path.write_bytes(b"solid exported by a CAD tool".ljust(80, b" ") + binary[80:])  # a binary STL quirk
    for path in (ascii_path, solid_path):
        _assert_on_box(load_points(path, num_points=100))


@pytest.mark.parametrize("ext", [".npy", ".npz", ".ply", ".pcd", ".glb", ".xyz"])
def test_content_of_another_format_names_what_it_is(tmp_path, cloud, ext):
    writers = {".npy": lambda p: np.save(p, cloud), ".npz": lambda p: np.savez(p, points=cloud),
               ".ply": lambda p: trimesh.PointCloud(cloud).export(p), ".pcd": lambda p: _o3d_pcd(p, cloud, "binary"),
               ".glb": lambda p: trimesh.creation.box().export(p), ".xyz": lambda p: np.savetxt(p, cloud)}
    names = {".npy": "NumPy .npy", ".npz": "ZIP archive", ".ply": "PLY file", ".pcd": "PCD", ".glb": "glTF",
             ".xyz": "text file"}
    real = tmp_path / f"real{ext}"
    writers[ext](real)
    for other in (".npy", ".npz", ".ply", ".pcd", ".glb"):
        if other == ext:
            continue
        wrong = tmp_path / f"wrong{other}"
        wrong.write_bytes(real.read_bytes())
        if ext == ".xyz" and other == ".pcd":  # text may be a PCD header: its check speaks
            _raises_one_line(load_points, wrong, match="not a valid PCD file")
            continue
        msg = _raises_one_line(load_points, wrong, match=f"not a valid \\{other} file")
        assert names[ext] in msg and "allow_pickle" not in msg


def test_utf8_bom_is_skipped_and_other_encodings_are_refused(tmp_path, cloud):
    text = "\n".join(" ".join(repr(float(v)) for v in row) for row in cloud) + "\n"
    path = tmp_path / "bom.xyz"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    np.testing.assert_array_equal(load_points(path), cloud.astype(np.float32))  # the first point is kept
    path.write_bytes(("# scann\xe9\n" + text).encode("latin-1"))
    _raises_one_line(load_points, path, match="not UTF-8")
    path.write_bytes(text.encode("utf-16"))
    _raises_one_line(load_points, path, match="UTF-16")


def test_pts_count_line_must_match_the_rows(tmp_path, cloud):
    path = tmp_path / "cloud.pts"
    _write_text(path, cloud, ["500"], " ")
    assert load_points(path).shape == (500, 3)
    _write_text(path, cloud, ["5000"], " ")
    _raises_one_line(load_points, path, match="count line declares 5000 points")


def test_npy_header_shape_must_match_the_data(tmp_path, cloud):
    path = tmp_path / "cloud.npy"
    np.save(path, cloud)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(500, 3)", b"(900, 3)", 1))
    _raises_one_line(load_points, path, match=r"\(900, 3\)")
    path.write_bytes(data + data[-240:])  # ten more rows than the header says
    _raises_one_line(load_points, path, match=r"\(500, 3\)")


def test_float64_beyond_float32_says_so():
    big = np.random.default_rng(0).normal(size=(50, 3)) * 1e39
    for source in (big, torch.from_numpy(big)):
        msg = _raises_one_line(load_points, source, match="overflow float32")
        assert "infinite" not in msg
    assert load_points(big / 1e10).dtype == np.float32


@pytest.mark.parametrize("value", [100_000_000_000, 10_000_001, 7, 0, -1, 2.5, True, "2048"])
def test_num_points_outside_its_range_is_refused_before_sampling(tmp_path, monkeypatch, value):
    path = tmp_path / "box.off"
    trimesh.creation.box().export(path)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking num_points")

    monkeypatch.setattr(trimesh.sample, "sample_surface", no_sampling)
    msg = _raises_one_line(load_points, path, num_points=value)
    assert msg.startswith("num_points") and f"from {pio.MIN_POINTS} to {pio.MAX_NUM_POINTS}" in msg


def test_max_points_and_seed_are_checked(cloud):
    _raises_one_line(load_points, cloud, max_points=3, match="max_points")
    _raises_one_line(load_points, cloud, seed=-1, match="seed")
    _raises_one_line(load_points, cloud, seed="0", match="seed")
    assert load_points(cloud, max_points=pio.MIN_POINTS).shape == (pio.MIN_POINTS, 3)


def test_reader_warnings_never_escape(tmp_path, cloud, recwarn):
    """With every warning turned into an error, hostile reads still end in InputError (never a warning)."""
    import warnings

    path = tmp_path / "big.xyz"
    _write_text(path, cloud * 1e300, [], " ")
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing\n# but comments\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _raises_one_line(load_points, path, match="float32")
        _raises_one_line(load_points, comments, match="no rows")
        _raises_one_line(load_points, cloud * 1e300, match="float32")
    assert len(recwarn) == 0


def test_npz_arrays_too_large_to_decompress_are_refused(tmp_path, cloud, monkeypatch):
    path = tmp_path / "cloud.npz"
    np.savez_compressed(path, points=cloud)
    monkeypatch.setattr(pio, "MAX_ARCHIVE_ARRAY_BYTES", 1000)
    _raises_one_line(load_points, path, match="save the points as .npy")


# ---------------------------------------------------------------------------------------------- read_geometry

def _ply_text(vertices, colors=None, faces=None, extra: str = "") -> str:
    props = "property float x\nproperty float y\nproperty float z\n"
    if colors is not None:
        props += "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
    head = f"ply\nformat ascii 1.0\nelement vertex {len(vertices)}\n{props}{extra}"
    if faces is not None:
        head += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
    rows = [" ".join(str(c) for c in v) + ("" if colors is None else " " + " ".join(str(c) for c in colors[i]) + " 255")
            for i, v in enumerate(vertices)]
    rows += [f"3 {a} {b} {c}" for a, b, c in (faces or [])]
    return head + "end_header\n" + "\n".join(rows) + "\n"


def test_read_geometry_gives_vertices_colours_and_faces_as_stored(tmp_path):
    vertices = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    colors = [(10, 20, 30), (40, 50, 60), (70, 80, 90), (200, 210, 220)]
    faces = [(0, 1, 2), (0, 1, 3)]
    mesh = tmp_path / "scan.ply"
    mesh.write_text(_ply_text(vertices, colors, faces))
    geometry = pio.read_geometry(mesh)
    np.testing.assert_array_equal(geometry.vertices, vertices)
    np.testing.assert_array_equal(geometry.faces, faces)
    assert geometry.colors.dtype == np.uint8
    np.testing.assert_array_equal(geometry.colors, colors)
    cloud = tmp_path / "cloud.ply"  # no face element: a point cloud, its colours kept
    cloud.write_text(_ply_text(vertices, colors))
    geometry = pio.read_geometry(cloud)
    assert geometry.faces is None
    np.testing.assert_array_equal(geometry.colors, colors)
    plain = tmp_path / "plain.ply"  # no colour properties
    plain.write_text(_ply_text(vertices, faces=faces))
    assert pio.read_geometry(plain).colors is None


def test_read_geometry_of_an_off_mesh_and_of_point_files(tmp_path):
    box = trimesh.creation.box(extents=(1, 1, 1))
    path = tmp_path / "box.off"
    path.write_text(_off_text(box))
    geometry = pio.read_geometry(path)
    np.testing.assert_allclose(geometry.vertices, box.vertices)
    np.testing.assert_array_equal(geometry.faces, box.faces)
    assert geometry.colors is None
    np.save(tmp_path / "cloud.npy", np.zeros((10, 3)))
    _raises_one_line(pio.read_geometry, tmp_path / "cloud.npy", match="load_points")
    bad = tmp_path / "bad.ply"
    bad.write_text(_ply_text([(0, 0, 0), (1, 0, 0), (0, 1, 0)], faces=[(0, 1, 7)]))
    _raises_one_line(pio.read_geometry, bad, match="vertex")
