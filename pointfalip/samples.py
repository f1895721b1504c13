"""Sample inputs: every file and folder the README's Usage names, made by the project itself from primitives (the
demo objects of `pointfalip.demo`, a mug, a bowl, a guitar, drawn pictures), so that each Usage line runs as
written from the folder `write_samples` fills (``pointfalip samples DIR``).

Nothing here is real data: the clouds are surface samples of boxes, cylinders and cones, the pictures are drawn,
the dataset folders are tiny stand-ins with the releases' layouts (a few objects each), and the answers a model
gives on them show that the pipeline runs, not how well it recognises. Everything is seeded: two runs write the
same bytes.

The folder gets a `MARK_FILE` listing what was written; a folder holding one may be filled again (its files are
replaced), any other folder that is not empty only when the caller allows it (``force``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from .errors import InputError
from .files import atomic_write

MARK_FILE = ".pointfalip-samples"  # lists what `write_samples` wrote: the folder is the tool's to fill again
SEED = 0
OBJECT_POINTS = 2048  # points of each dataset object, as the h5 releases hold
SHOT_POINTS = 1024  # points of each labelled example (my_objects/, my_scans/)
TRAIN_POINTS = 512  # points of each ModelNet40 stand-in train cloud (40 of them: one a class)
IMAGE_SIZE = (320, 240)  # width, height of the drawn pictures
DEPTH_SIZE = (640, 480)
DEPTH_INTRINSICS = (525.0, 525.0, 319.5, 239.5)  # fx, fy, cx, cy of depth.png (the README's --intrinsics)
OBJECT_DENSITY, TABLE_DENSITY = 25_000, 12_000  # points per m² of surface in the scenes (a 5 mm voxel grid keeps them)
BAG_TOPIC = "/camera/points"
BAG_FRAMES = 3
BAG_STEP_NS = 200_000_000  # 5 Hz
BAG_START_NS = 1_700_000_000_000_000_000

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Sample:
    """One written file or folder: its path relative to the samples folder and what it is."""

    path: str
    what: str


# ---- shapes ------------------------------------------------------------------------------------------------
def _trimesh():
    import trimesh

    return trimesh


def _upright(mesh, center):
    from .demo import _upright as upright

    return upright(mesh, center)


def _sample(mesh, n: int, seed: int) -> np.ndarray:
    points, _ = _trimesh().sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points, dtype=np.float32)


def _mug_parts() -> dict:
    """A mug (y-up, metres) as ShapeNetPart names its parts: the handle and the cup."""
    t = _trimesh()
    cup = _upright(t.creation.cylinder(radius=0.04, height=0.1, sections=48), (0, 0.05, 0))
    handle = t.creation.torus(major_radius=0.028, minor_radius=0.007)  # in the xy plane: a vertical ring
    handle.apply_translation((0.055, 0.05, 0))
    return {"handle": handle, "cup": cup}


def _guitar_parts() -> dict:
    t = _trimesh()
    lower = t.creation.cylinder(radius=0.19, height=0.1, sections=48)
    upper = t.creation.cylinder(radius=0.14, height=0.1, sections=48)
    upper.apply_translation((0, 0.24, 0))
    body = t.util.concatenate([lower, upper])
    neck = t.creation.box(extents=(0.05, 0.5, 0.03), transform=t.transformations.translation_matrix((0, 0.6, 0)))
    head = t.creation.box(extents=(0.08, 0.16, 0.03), transform=t.transformations.translation_matrix((0, 0.93, 0)))
    return {"head or tuners": head, "neck": neck, "body": body}


def _chair_parts() -> dict:
    from .demo import _box, _legs

    t = _trimesh()
    arms = [_box((0.05, 0.04, 0.45), (x, 0.65, 0.0)) for x in (-0.27, 0.27)]
    return {"back": _box((0.5, 0.5, 0.05), (0, 0.72, -0.225)), "seat pad": _box((0.5, 0.05, 0.5), (0, 0.45, 0)),
            "leg": t.util.concatenate(_legs(0.44, 0.44, 0.43, radius=0.02)), "armrest": t.util.concatenate(arms)}


def _mug():
    return _trimesh().util.concatenate(list(_mug_parts().values()))


def _bowl_points(n: int, rng: np.random.Generator, radius: float = 0.07) -> np.ndarray:
    """A bowl (y-up): the lower half of a sphere's surface, opening up, resting on y = 0."""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[:, 1] = -np.abs(v[:, 1])
    return (v * radius + (0, radius, 0)).astype(np.float32)


def _parts_cloud(parts: dict, names: list, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the parts' surfaces (as many per part as its area's share) and each point's part index."""
    areas = np.array([parts[p].area for p in names])
    counts = np.floor(areas / areas.sum() * n).astype(int)
    counts[np.argmax(areas)] += n - counts.sum()
    points = np.concatenate([_sample(parts[p], int(c), seed + k) for k, (p, c) in enumerate(zip(names, counts))])
    index = np.repeat(np.arange(len(names)), counts)
    order = np.random.default_rng(seed).permutation(n)
    return points[order], index[order]


def _unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centred and scaled into the unit sphere, as the h5 releases store their clouds."""
    points = points - points.mean(axis=0)
    return (points / np.linalg.norm(points, axis=1).max()).astype(np.float32)


def _varied(points: np.ndarray, rng: np.random.Generator, noise: float = 0.005) -> np.ndarray:
    """A seeded variant: stretched a little per axis, turned about the up axis (y), with sensor noise."""
    a = rng.uniform(0, 2 * np.pi)
    turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    out = (points * rng.uniform(0.85, 1.15, 3)) @ turn.T
    return (out + rng.normal(0, noise, out.shape)).astype(np.float32)


Y_TO_Z = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)  # y-up object -> z-up scan (y becomes z)


def _z_up(points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) @ Y_TO_Z.T).astype(np.float32)


# ---- writers -----------------------------------------------------------------------------------------------
def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _write_pcd(path: Path, points: np.ndarray) -> None:
    """A binary PCD through open3d (the reader `io.load_points` uses)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        if not o3d.io.write_point_cloud(str(staged), cloud, write_ascii=False):
            raise OSError(f"open3d could not write {path}")
        os.replace(staged, path)


def _write_ply_points(path: Path, points: np.ndarray) -> None:
    data = _trimesh().PointCloud(points).export(file_type="ply")
    _write_bytes(path, data)


def _write_image(path: Path, image) -> None:
    fmt = {".png": "PNG", ".jpg": "JPEG"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: image.save(f, format=fmt, **({"quality": 92} if fmt == "JPEG" else {})))


def _write_h5(path: Path, arrays: dict) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f):
        with h5py.File(f, "w") as h5:
            for key, value in arrays.items():
                h5.create_dataset(key, data=value)
    atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


# ---- the samples --------------------------------------------------------------------------------------------
def _meshes_and_clouds(root: Path) -> list[Sample]:
    from .demo import OBJECTS, demo_clouds

    chair = OBJECTS["chair"]()
    _write_text(root / "chair.off", chair.export(file_type="off"))
    _write_bytes(root / "chair.ply", chair.export(file_type="ply"))
    _write_npy(root / "cloud.npy", demo_clouds()["bottle"])
    rng = np.random.default_rng(SEED)
    scan = _z_up(_varied(_sample(_mug(), 1500, SEED), rng, noise=0.001))
    _write_pcd(root / "scan.pcd", scan)
    mug, _ = _parts_cloud(_mug_parts(), ["handle", "cup"], OBJECT_POINTS, SEED)
    _write_pcd(root / "mug.pcd", mug)
    return [Sample("chair.off", "the demo chair, a mesh (OFF, y-up)"),
            Sample("chair.ply", "the same chair as a PLY mesh"),
            Sample("cloud.npy", "the demo bottle, 2048 points (y-up)"),
            Sample("scan.pcd", "a mug scanned z-up, 1500 points with sensor noise (PCD)"),
            Sample("mug.pcd", "a mug with a handle, 2048 points (PCD, y-up)")]


def _labelled_folders(root: Path) -> list[Sample]:
    from .demo import OBJECTS

    rng = np.random.default_rng(SEED + 1)
    mug = _sample(_mug(), SHOT_POINTS, SEED)
    for k in range(3):
        _write_npy(root / "my_objects" / "my_mug" / f"mug_{k + 1}.npy", _varied(mug, rng))
        _write_ply_points(root / "my_objects" / "my_bowl" / f"bowl_{k + 1}.ply", _varied(_bowl_points(SHOT_POINTS, rng),
                                                                                      rng))
    for name in ("chair", "lamp", "table"):
        cloud = _sample(OBJECTS[name](), SHOT_POINTS, SEED)
        _write_npy(root / "my_scans" / name / f"{name}_1.npy", _varied(cloud, rng))
        _write_ply_points(root / "my_scans" / name / f"{name}_2.ply", _varied(cloud, rng))
    return [Sample("my_objects/", "labelled examples: my_mug/ (3 .npy), my_bowl/ (3 .ply) - for fewshot build"),
            Sample("my_scans/", "a labelled folder dataset: chair/, lamp/, table/ (2 scans each) - evaluate "
                                "--dataset folder")]


def _tabletop(rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """A table top (z-up, metres, 1.2 x 0.8 m at z = 0) with a mug, a bowl, a bottle and a book on it; ``shift``
    moves the mug along x."""
    from .demo import OBJECTS

    t = _trimesh()
    n = int(TABLE_DENSITY * 1.2 * 0.8)
    table = np.c_[rng.uniform(-0.6, 0.6, n), rng.uniform(-0.4, 0.4, n), rng.normal(0, 0.001, n)]
    bottle = OBJECTS["bottle"]()
    bottle.apply_scale(0.45)  # 30 cm tall
    book = t.creation.box(extents=(0.15, 0.21, 0.03), transform=t.transformations.translation_matrix((0, 0.105, 0)))
    meshes = [(_mug(), (-0.25 + shift, 0.1)), (bottle, (0.25, 0.15)), (book, (0.3, -0.2))]
    objects = [(_sample(m, int(OBJECT_DENSITY * m.area), SEED), at) for m, at in meshes]
    objects.append((_bowl_points(int(OBJECT_DENSITY * 2 * np.pi * 0.07 ** 2), rng), (0.05, -0.15)))
    parts = [table] + [_z_up(points) + (x, y, 0.0) for points, (x, y) in objects]
    return np.concatenate(parts).astype(np.float32)


def _scenes(root: Path) -> list[Sample]:
    _write_pcd(root / "table.pcd", _tabletop(np.random.default_rng(SEED + 2)))
    _write_depth(root / "depth.png")
    _write_bag(root / "run_42")
    return [Sample("table.pcd", "a table top with a mug, a bowl, a bottle and a book (z-up, metres, PCD)"),
            Sample("depth.png", f"a depth image of a table with three objects (16-bit PNG, millimetres; "
                                f"--intrinsics {','.join(f'{v:g}' for v in DEPTH_INTRINSICS)})"),
            Sample("run_42/", f"a ROS 2 bag (rosbag2, sqlite3): {BAG_FRAMES} PointCloud2 frames of the table top on "
                              f"{BAG_TOPIC}, the mug moving 1 cm a frame")]


def depth_image() -> np.ndarray:
    """(H, W) uint16 millimetres: a camera 35 cm above a table, looking along it (y down, z forward), three upright
    cylinders on the table; 0 where no surface is hit. Each pixel's depth is the nearest ray hit, computed exactly."""
    fx, fy, cx, cy = DEPTH_INTRINSICS
    w, h = DEPTH_SIZE
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = (u - cx) / fx, (v - cy) / fy  # the ray through a pixel at depth z = t is (t dx, t dy, t)
    height = 0.35
    depth = np.full((h, w), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = height / dy  # the table plane y = height
        hit = (dy > 0) & (np.abs(t * dx) <= 0.6) & (t >= 0.4) & (t <= 1.6)
        depth[hit] = t[hit]
        for (ox, oz, radius, tall) in ((-0.2, 0.8, 0.045, 0.11), (0.05, 1.0, 0.07, 0.06), (0.25, 0.75, 0.04, 0.28)):
            a, b, c = dx * dx + 1, -2 * (dx * ox + oz), ox * ox + oz * oz - radius * radius
            disc = b * b - 4 * a * c
            t_side = (-b - np.sqrt(disc)) / (2 * a)
            side = (disc >= 0) & (t_side * dy >= height - tall) & (t_side * dy <= height)
            t_top = (height - tall) / dy
            top = (dy > 0) & ((t_top * dx - ox) ** 2 + (t_top - oz) ** 2 <= radius * radius)
            depth = np.where(side, np.minimum(depth, t_side), depth)
            depth = np.where(top, np.minimum(depth, t_top), depth)
    depth = np.where(np.isfinite(depth), np.round(depth * 1000), 0)
    return depth.astype(np.uint16)


def _write_depth(path: Path) -> None:
    from PIL import Image

    _write_image(path, Image.fromarray(depth_image()))


def _pointcloud2(store, points: np.ndarray, stamp_ns: int, frame_id: str):
    """A sensor_msgs/msg/PointCloud2 of x, y, z float32 (the layout of most drivers, without their extra fields)."""
    types = store.types
    field, header, time = types["sensor_msgs/msg/PointField"], types["std_msgs/msg/Header"], \
        types["builtin_interfaces/msg/Time"]
    points = np.ascontiguousarray(points, dtype="<f4")
    fields = [field(name=n, offset=4 * k, datatype=7, count=1) for k, n in enumerate("xyz")]  # 7: FLOAT32
    return types["sensor_msgs/msg/PointCloud2"](
        header=header(stamp=time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id),
        height=1, width=len(points), fields=fields, is_bigendian=False, point_step=12, row_step=12 * len(points),
        data=np.frombuffer(points.tobytes(), dtype=np.uint8), is_dense=True)


def _write_bag(path: Path) -> None:
    """A rosbag2 folder written with rosbags (staged beside ``path``, then renamed into place)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    msgtype = "sensor_msgs/msg/PointCloud2"
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        with Writer(staged, version=Writer.VERSION_LATEST) as writer:
            connection = writer.add_connection(BAG_TOPIC, msgtype, typestore=store)
            for k in range(BAG_FRAMES):
                stamp = BAG_START_NS + k * BAG_STEP_NS
                cloud = _tabletop(np.random.default_rng(SEED + 10 + k), shift=0.01 * k)
                message = _pointcloud2(store, cloud, stamp, "camera")
                writer.write(connection, stamp, store.serialize_cdr(message, msgtype))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)


def _primitive(k: int, rng: np.random.Generator):
    """A box, cylinder, sphere or cone (by ``k``) with seeded proportions: the stand-in of a class without a demo
    object."""
    t = _trimesh()
    size = rng.uniform(0.3, 1.0, 3)
    kind = k % 4
    if kind == 0:
        return t.creation.box(extents=size)
    if kind == 1:
        return _upright(t.creation.cylinder(radius=size[0] / 2, height=size[1]), (0, 0, 0))
    if kind == 2:
        sphere = t.creation.icosphere(subdivisions=2)
        sphere.apply_scale(size / 2)
        return sphere
    return _upright(t.creation.cone(radius=size[0] / 2, height=size[1]), (0, 0, 0))


def _modelnet40(root: Path) -> list[Sample]:
    """Test: a variant of each demo object under its ModelNet40 class. Train: one object of every class (the
    few-shot protocol draws from it), the demo object where there is one, else a primitive (`_primitive`)."""
    from .demo import OBJECTS
    from .presets import read_data_json

    names = read_data_json("classnames.json")["modelnet40"]["names"]
    folder = root / "DATA" / "modelnet40_ply_hdf5_2048"
    rng = np.random.default_rng(SEED + 3)
    demo = {name: _sample(OBJECTS[name](), OBJECT_POINTS, SEED) for name in OBJECTS}
    test = [(_unit_sphere(_varied(demo[name], rng)), names.index(name)) for name in OBJECTS]
    train = [(_unit_sphere(_varied(demo[name] if name in demo else _sample(_primitive(k, rng), TRAIN_POINTS, k),
                                   rng))[:TRAIN_POINTS], k) for k, name in enumerate(names)]
    for split, items in (("test", test), ("train", train)):
        _write_h5(folder / f"ply_data_{split}0.h5", {"data": np.stack([c for c, _ in items]),
                                                     "label": np.asarray([k for _, k in items], np.uint8)[:, None]})
        _write_text(folder / f"{split}_files.txt", f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n")
    _write_text(folder / "shape_names.txt", "\n".join(names) + "\n")
    return [Sample("DATA/modelnet40_ply_hdf5_2048/", f"a ModelNet40 h5 stand-in: test, the 5 demo objects; "
                                                      f"train, 1 of each of the 40 classes ({TRAIN_POINTS} points; "
                                                      "primitives where no demo object fits)")]


def _scanobjectnn(root: Path) -> list[Sample]:
    from .demo import OBJECTS
    from .presets import read_data_json

    t = _trimesh()
    names = read_data_json("classnames.json")["scanobjectnn"]["names"]
    shapes = {"chair": OBJECTS["chair"](), "table": OBJECTS["table"](),
              "box": t.creation.box(extents=(0.5, 0.4, 0.3)), "bin": _upright(t.creation.cylinder(0.2, 0.5), (0, 0.25, 0))}
    rng = np.random.default_rng(SEED + 5)
    base = {n: _sample(m, OBJECT_POINTS, SEED) for n, m in shapes.items()}
    files = {"main_split_nobg/test_objectdataset.h5": (0, False), "main_split/test_objectdataset.h5": (0.25, False),
             "main_split/test_objectdataset_augmentedrot_scale75.h5": (0.25, True)}
    for rel, (background, rotated) in files.items():
        clouds, labels = [], []
        for name, cloud in base.items():
            c = _varied(cloud, rng, noise=0.01)
            if rotated:
                c = _varied(c, rng, noise=0.0)
            if background:  # a patch of floor around the object, as the obj_bg and pb_t50_rs variants keep
                n = int(background * OBJECT_POINTS)
                c[:n] = np.c_[rng.uniform(-0.6, 0.6, n), np.full(n, c[:, 1].min()), rng.uniform(-0.6, 0.6, n)]
            clouds.append(_unit_sphere(c))
            labels.append(names.index(name))
        _write_h5(root / "DATA" / "h5_files" / rel, {"data": np.stack(clouds), "label": np.asarray(labels, np.int64)})
    return [Sample("DATA/h5_files/", "a ScanObjectNN h5 stand-in: obj_only, obj_bg and pb_t50_rs test files, 4 scans "
                                     "each")]


def _shapenetpart(root: Path) -> list[Sample]:
    from .presets import read_data_json

    categories = read_data_json("shapenetpart.json")["categories"]
    order = list(categories)
    folder = root / "shapenet_part_seg_hdf5_data"
    clouds, labels, pids = [], [], []
    for k, (name, build) in enumerate((("mug", _mug_parts), ("guitar", _guitar_parts), ("chair", _chair_parts))):
        parts = build()
        points, index = _parts_cloud(parts, list(categories[name]["parts"]), OBJECT_POINTS, SEED + k)
        clouds.append(_unit_sphere(_varied(points, np.random.default_rng(SEED + 10 * k), noise=0.002)))
        labels.append(order.index(name))
        pids.append(categories[name]["first_label"] + index)
    _write_h5(folder / "ply_data_test0.h5", {"data": np.stack(clouds), "label": np.asarray(labels, np.uint8)[:, None],
                                             "pid": np.stack(pids).astype(np.uint8)})
    _write_text(folder / "test_hdf5_file_list.txt", "ply_data_test0.h5\n")
    return [Sample("shapenet_part_seg_hdf5_data/", "a ShapeNetPart h5 stand-in: a mug, a guitar and a chair with a "
                                                   "part id per point")]


# ---- pictures -----------------------------------------------------------------------------------------------
def _sky_and_ground(horizon: int, sky=((120, 170, 230), (200, 225, 250)), ground=((95, 95, 100), (60, 60, 66))):
    w, h = IMAGE_SIZE
    rows = np.arange(h, dtype=np.float64)[:, None]
    top = np.clip(rows / max(horizon, 1), 0, 1)
    bottom = np.clip((rows - horizon) / max(h - horizon, 1), 0, 1)
    sky_rgb = np.array(sky[0]) + top * (np.array(sky[1]) - np.array(sky[0]))
    ground_rgb = np.array(ground[0]) + bottom * (np.array(ground[1]) - np.array(ground[0]))
    column = np.where(rows < horizon, sky_rgb, ground_rgb)
    return np.broadcast_to(column[:, None, :], (h, w, 3)).copy()


def _photo(pixels: np.ndarray, draw: Callable, seed: int):
    """A picture from a background and drawn shapes, softened and grained like a photo."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.fromarray(pixels.astype(np.uint8))
    draw(ImageDraw.Draw(image))
    image = image.filter(ImageFilter.GaussianBlur(0.8))
    grain = np.random.default_rng(seed).normal(0, 4, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float64) + grain, 0, 255).astype(np.uint8))


CAR_BOX, BUS_BOX = (40, 60, 200, 180), (210, 50, 312, 185)  # x0, y0, x1, y1 of the street's car and bus
DOG_BOXES = ((0, 0, 100, 120), (150, 30, 300, 200))


def _car_outline() -> list:
    x0, y0, x1, y1 = CAR_BOX
    return [(x0 + 5, y1 - 30), (x0 + 5, y0 + 60), (x0 + 40, y0 + 55), (x0 + 60, y0 + 20), (x1 - 45, y0 + 20),
            (x1 - 25, y0 + 55), (x1 - 5, y0 + 62), (x1 - 5, y1 - 30)]


def street():
    """A street: buildings, a road, a red car inside `CAR_BOX`, a yellow bus inside `BUS_BOX`."""
    def draw(d):
        for x, top, colour in ((0, 40, (150, 120, 100)), (70, 20, (170, 160, 150)), (150, 35, (130, 110, 120)),
                               (230, 10, (160, 150, 130))):
            d.rectangle([x, top, x + 78, 140], fill=colour)
            for wy in range(top + 8, 130, 18):
                for wx in range(x + 8, x + 70, 16):
                    d.rectangle([wx, wy, wx + 8, wy + 10], fill=(90, 110, 140))
        d.rectangle([0, 185, 320, 190], fill=(230, 230, 230))
        d.polygon(_car_outline(), fill=(200, 30, 35))
        x0, y0, x1, y1 = CAR_BOX
        d.polygon([(x0 + 65, y0 + 26), (x1 - 50, y0 + 26), (x1 - 33, y0 + 52), (x0 + 47, y0 + 52)], fill=(170, 200, 220))
        for wx in (x0 + 40, x1 - 40):
            d.ellipse([wx - 18, y1 - 48, wx + 18, y1 - 12], fill=(25, 25, 25))
            d.ellipse([wx - 8, y1 - 38, wx + 8, y1 - 22], fill=(160, 160, 160))
        bx0, by0, bx1, by1 = BUS_BOX
        d.rectangle([bx0, by0, bx1, by1 - 20], fill=(240, 190, 30))
        for wx in range(bx0 + 6, bx1 - 10, 24):
            d.rectangle([wx, by0 + 10, wx + 18, by0 + 45], fill=(120, 150, 180))
        for wx in (bx0 + 22, bx1 - 22):
            d.ellipse([wx - 14, by1 - 34, wx + 14, by1 - 6], fill=(25, 25, 25))
    return _photo(_sky_and_ground(140), draw, SEED)


def street_mask():
    """The car's region of `street` as a mask (255 inside)."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", IMAGE_SIZE, 0)
    ImageDraw.Draw(mask).polygon(_car_outline(), fill=255)
    return mask


def dogs():
    """A lawn with a small brown dog inside the first of `DOG_BOXES` and a larger grey one inside the second."""
    def dog(d, box, coat):
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        d.ellipse([x0 + 0.15 * w, y0 + 0.4 * h, x0 + 0.8 * w, y0 + 0.75 * h], fill=coat)  # body
        d.ellipse([x0 + 0.65 * w, y0 + 0.15 * h, x0 + 0.98 * w, y0 + 0.5 * h], fill=coat)  # head
        d.polygon([(x0 + 0.7 * w, y0 + 0.2 * h), (x0 + 0.74 * w, y0 + 0.02 * h), (x0 + 0.8 * w, y0 + 0.18 * h)],
                  fill=coat)  # ear
        d.ellipse([x0 + 0.86 * w, y0 + 0.28 * h, x0 + 0.9 * w, y0 + 0.32 * h], fill=(20, 20, 20))  # eye
        for lx in (0.22, 0.35, 0.6, 0.7):  # legs
            d.rectangle([x0 + lx * w, y0 + 0.65 * h, x0 + (lx + 0.06) * w, y0 + 0.98 * h], fill=coat)
        d.line([(x0 + 0.17 * w, y0 + 0.5 * h), (x0 + 0.02 * w, y0 + 0.3 * h)], fill=coat, width=max(2, int(w / 25)))
    pixels = _sky_and_ground(70, sky=((150, 190, 235), (205, 225, 245)), ground=((90, 150, 70), (60, 120, 50)))
    return _photo(pixels, lambda d: (dog(d, DOG_BOXES[0], (140, 90, 50)), dog(d, DOG_BOXES[1], (120, 120, 125))),
                  SEED + 1)


def _pictures(root: Path) -> list[Sample]:
    _write_image(root / "street.jpg", street())
    _write_image(root / "region.png", street_mask())
    _write_image(root / "photo.jpg", dogs())
    return [Sample("street.jpg", f"a drawn street photo: a car in {','.join(map(str, CAR_BOX))}, a bus in "
                                 f"{','.join(map(str, BUS_BOX))}"),
            Sample("region.png", "a mask of the street's car (white = region)"),
            Sample("photo.jpg", "two dogs on a lawn, in boxes 0,0,100,120 and 150,30,300,200")]


def _xywh(box) -> list:
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _refcoco(root: Path) -> list[Sample]:
    images = {1: ("street", street(), {11: (CAR_BOX, ("the red car", "car on the left")),
                                        12: (BUS_BOX, ("the yellow bus", "bus on the right"))}),
              2: ("dogs", dogs(), {21: (DOG_BOXES[0], ("the small brown dog", "dog on the left")),
                                   22: (DOG_BOXES[1], ("the big grey dog", "dog on the right"))})}
    for image_id, (_, picture, _) in images.items():
        _write_image(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg", picture)
    lines, detections = [], {}
    for image_id, (_, _, objects) in images.items():
        anns = [{"id": ann, "bbox": _xywh(box), "category_id": 1} for ann, (box, _) in objects.items()]
        detections[str(image_id)] = [a["bbox"] for a in anns]
        for ann, (_, sentences) in objects.items():
            lines.append({"file_name": f"COCO_train2014_{image_id:012d}_{ann}.jpg", "image_id": image_id,
                          "ann_id": ann, "anns": anns, "sentences": [{"raw": s} for s in sentences]})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    for name in ("refcoco_testa", "refcoco+_testa", "refcocog_val"):
        _write_text(root / f"{name}.jsonl", text)
    for name in ("refcoco", "refcoco+", "refcocog"):
        _write_text(root / f"{name}_dets_dict.json", json.dumps(detections))
    return [Sample("train2014/", "2 COCO-named pictures (the street and the dogs)"),
            Sample("refcoco_testa.jsonl", "4 referring expressions in ReCLIP's layout (also refcoco+_testa.jsonl, "
                                          "refcocog_val.jsonl)"),
            Sample("refcocog_dets_dict.json", "detector boxes in ReCLIP's layout (also refcoco_ and refcoco+_)")]


WRITERS: tuple[Callable[[Path], list[Sample]], ...] = (
    _meshes_and_clouds, _pictures, _labelled_folders, _scenes, _modelnet40, _scanobjectnn, _shapenetpart, _refcoco)


# ---- the folder ---------------------------------------------------------------------------------------------
def _written_before(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / MARK_FILE).read_text(encoding="utf-8"))["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def check_folder(folder: PathLike, force: bool = False) -> Path:
    """``folder`` if samples may be written there: absent (its parent exists), empty, holding the samples this tool
    wrote (`MARK_FILE`), or anything with ``force``; else a one-line InputError. A sample folder (``run_42/``) that
    is there but not the tool's is refused even with ``force``: it would have to be deleted."""
    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} is a file; give a folder for the samples")
    if not p.exists():
        if not p.parent.is_dir():
            raise InputError(f"{p}: folder {p.parent} does not exist")
        return p
    ours = (p / MARK_FILE).is_file()
    if not ours and not force and any(p.iterdir()):
        raise InputError(f"{p} is not empty and holds no samples pointfalip wrote; give a new or empty folder, or "
                         "add --force to write the samples into it (files of the same names are replaced)")
    before = _written_before(p)
    if (p / "run_42").exists() and "run_42/" not in before:
        raise InputError(f"{p / 'run_42'} exists and is not a bag pointfalip wrote; move it away first")
    return p


def write_samples(folder: PathLike, force: bool = False) -> list[Sample]:
    """Write every sample into ``folder`` (created if absent; see `check_folder`) and return what was written."""
    root = check_folder(folder, force)
    root.mkdir(exist_ok=True)
    written: list[Sample] = []
    for writer in WRITERS:
        written += writer(root)
    record = {"made_by": "pointfalip samples", "written": [s.path for s in written]}
    _write_text(root / MARK_FILE, json.dumps(record, indent=1) + "\n")
    return written
