"""ROS 2 bags and PointCloud2 decoding (bags written here with rosbags), depth-image back-projection."""
import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from pointfalip.errors import InputError
from pointfalip.sources import (
    BagFrame,
    decode_pointcloud2,
    depth_to_points,
    list_pointcloud_topics,
    read_bag,
    read_depth_image,
)
from pointfalip.scene import segment

TS = get_typestore(Stores.ROS2_HUMBLE)
PC2 = "sensor_msgs/msg/PointCloud2"
STRING = "std_msgs/msg/String"
PointCloud2 = TS.types[PC2]
PointField = TS.types["sensor_msgs/msg/PointField"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
FLOAT32, FLOAT64, UINT32 = 7, 8, 6

STORAGES = [pytest.param(p, id=p.name.lower()) for p in StoragePlugin]  # sqlite3 and mcap in rosbags 0.11


def make_cloud(points, stamp_ns=0, *, xyz="f4", bigendian=False, extra=True, intensity_first=False,
               height=1, row_padding=0, dense=None):
    """A PointCloud2 laid out like a driver's: x y z, then intensity (float32) and rgb (uint32), padded."""
    points = np.asarray(points, dtype=np.float64)
    order = ">" if bigendian else "<"
    size = np.dtype(xyz).itemsize
    names, formats, offsets, datatypes = [], [], [], []
    cursor = 0
    if extra and intensity_first:
        names, formats, offsets, datatypes, cursor = ["intensity"], [order + "f4"], [0], [FLOAT32], 8
    for name in ("x", "y", "z"):
        names.append(name)
        formats.append(order + xyz)
        offsets.append(cursor)
        datatypes.append(FLOAT32 if xyz == "f4" else FLOAT64)
        cursor += size
    if extra and not intensity_first:
        cursor = (cursor + 7) // 8 * 8 + 4  # a gap, as PCL's padding does
        for name, fmt, dt in (("intensity", "f4", FLOAT32), ("rgb", "u4", UINT32)):
            names.append(name)
            formats.append(order + fmt)
            offsets.append(cursor)
            datatypes.append(dt)
            cursor += 4
    point_step = (cursor + 15) // 16 * 16
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    records = np.zeros(len(points), dtype=dtype)
    for i, name in enumerate("xyz"):
        records[name] = points[:, i]
    if extra:
        records["intensity"] = np.arange(len(points)) % 255
    if extra and not intensity_first:
        records["rgb"] = 0x00FF8800
    width = len(points) // height
    rows = records.tobytes()
    row_bytes = width * point_step
    data = np.frombuffer(rows, dtype=np.uint8).reshape(height, row_bytes)
    data = np.concatenate([data, np.full((height, row_padding), 0xAB, dtype=np.uint8)], axis=1).reshape(-1)
    fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in zip(names, offsets, datatypes)]
    return PointCloud2(
        header=Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id="lidar"),
        height=height, width=width, fields=fields, is_bigendian=bigendian, point_step=point_step,
        row_step=row_bytes + row_padding, data=data,
        is_dense=bool(np.isfinite(points).all()) if dense is None else dense)


def write_bag(path, storage, messages):
    """messages: list of (topic, msgtype, bag_stamp_ns, message or None for a topic without messages)."""
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=storage) as writer:
        connections = {}
        for topic, msgtype, stamp, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            if msg is not None:
                writer.write(connections[topic], stamp, TS.serialize_cdr(msg, msgtype))
    return path


def _random_points(rng, n):
    return rng.uniform(-5, 5, size=(n, 3))


# ---------------------------------------------------------------------------------------------- PointCloud2

@pytest.mark.parametrize("bigendian", [False, True], ids=["little", "big"])
@pytest.mark.parametrize("xyz", ["f4", "f8"])
def test_decode_xyz_skipping_other_fields(bigendian, xyz):
    pts = _random_points(np.random.default_rng(0), 1000)
    msg = make_cloud(pts, xyz=xyz, bigendian=bigendian)
    assert msg.point_step > 3 * np.dtype(xyz).itemsize  # intensity, rgb and padding sit in every point
    out = decode_pointcloud2(msg)
    assert out.dtype == np.float32 and out.shape == (1000, 3)
    np.testing.assert_array_equal(out, pts.astype(np.float32))


def test_decode_honours_field_offsets_and_byte_order():
    pts = _random_points(np.random.default_rng(1), 10)
    msg = make_cloud(pts, intensity_first=True)
    assert [f.name for f in msg.fields] == ["intensity", "x", "y", "z"] and msg.fields[1].offset == 8
    np.testing.assert_array_equal(decode_pointcloud2(msg), pts.astype(np.float32))
    # the same bytes read with the wrong byte order are other numbers: the flag is used
    big = make_cloud(pts, bigendian=True)
    big.is_bigendian = False
    assert not np.allclose(decode_pointcloud2(big)[:3], pts[:3].astype(np.float32), equal_nan=True)


def test_decode_organised_cloud_with_row_padding():
    pts = _random_points(np.random.default_rng(2), 4 * 25)
    msg = make_cloud(pts, height=4, row_padding=12)
    assert msg.row_step == msg.width * msg.point_step + 12
    np.testing.assert_array_equal(decode_pointcloud2(msg), pts.astype(np.float32))


def test_decode_non_dense_cloud_drops_nan_points():
    pts = _random_points(np.random.default_rng(3), 200)
    bad = np.zeros(len(pts), dtype=bool)
    bad[::7] = True
    pts_nan = pts.copy()
    pts_nan[bad, 1] = np.nan
    pts_nan[3, 2] = np.inf
    bad[3] = True
    msg = make_cloud(pts_nan, height=10)
    assert not msg.is_dense
    np.testing.assert_array_equal(decode_pointcloud2(msg), pts[~bad].astype(np.float32))
    everything_nan = make_cloud(np.full((64, 3), np.nan))
    out = decode_pointcloud2(everything_nan)
    assert out.shape == (0, 3) and out.dtype == np.float32
    assert segment(out) == []  # an all-NaN frame has no objects, and nothing crashes


def test_decode_empty_message():
    out = decode_pointcloud2(make_cloud(np.zeros((0, 3))))
    assert out.shape == (0, 3) and out.dtype == np.float32


def test_decode_rejects_broken_messages():
    pts = _random_points(np.random.default_rng(4), 20)
    no_z = make_cloud(pts)
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    with pytest.raises(InputError, match="no field z"):
        decode_pointcloud2(no_z)
    short = make_cloud(pts)
    short.data = short.data[:-5]
    with pytest.raises(InputError, match="truncated"):
        decode_pointcloud2(short)
    outside = make_cloud(pts)
    outside.fields[2].offset = outside.point_step - 2
    with pytest.raises(InputError, match="does not fit"):
        decode_pointcloud2(outside)
    unknown = make_cloud(pts)
    unknown.fields[0].datatype = 42
    with pytest.raises(InputError, match="datatype"):
        decode_pointcloud2(unknown)
    with pytest.raises(InputError, match="not a PointCloud2"):
        decode_pointcloud2("a string")


def test_decode_accepts_plain_bytes():
    pts = _random_points(np.random.default_rng(5), 30)
    msg = make_cloud(pts)
    msg.data = bytes(msg.data)  # as rclpy gives it
    np.testing.assert_array_equal(decode_pointcloud2(msg), pts.astype(np.float32))


# ---------------------------------------------------------------------------------------------- bags

@pytest.fixture(params=STORAGES)
def bag(request, tmp_path):
    """A bag with five clouds on /points (float32 with extra fields, float64, big-endian, non-dense, and one
    whose header stamp is zero), a second cloud topic and a String topic."""
    rng = np.random.default_rng(6)
    frames = [_random_points(rng, n) for n in (500, 300, 400, 350, 100)]
    frames[3][::3] = np.nan
    variants = [{}, {"xyz": "f8"}, {"bigendian": True}, {"height": 7, "row_padding": 4}, {"extra": False}]
    header_ns = [1_700_000_000_000_000_000 + i * 100_000_000 + 123 for i in range(4)] + [0]
    bag_ns = [h + 5_000_000 for h in header_ns[:4]] + [1_700_000_001_000_000_000]
    messages = [("/chatter", STRING, 1_600_000_000_000_000_000, TS.types[STRING](data="hello"))]
    for pts, kw, h, b in zip(frames, variants, header_ns, bag_ns):
        messages.append(("/points", PC2, b, make_cloud(pts, h, **kw)))
        messages.append(("/camera/points", PC2, b + 1, make_cloud(pts[:10], h)))
    path = write_bag(tmp_path / "recording", request.param, messages)
    expected = [p[np.isfinite(p).all(axis=1)].astype(np.float32) for p in frames]
    return path, expected, header_ns, bag_ns


def test_read_bag_round_trips_stamps_and_points(bag):
    path, expected, header_ns, bag_ns = bag
    frames = list(read_bag(path, "/points"))
    assert len(frames) == len(expected)
    for frame, pts, h, b in zip(frames, expected, header_ns, bag_ns):
        assert isinstance(frame, BagFrame)
        stamp, points, frame_id = frame  # unpacks as (stamp_ns, points, frame_id)
        assert frame_id == "lidar"  # the message's header.frame_id, kept for Foxglove and ROS output
        assert stamp == (h or b)  # the header stamp; the bag's time where the header has none
        assert frame.stamp_s == pytest.approx(stamp * 1e-9)
        np.testing.assert_array_equal(points, pts)
    assert [f.stamp_ns for f in read_bag(path, "/points", stamp="bag")] == bag_ns


def test_read_bag_accepts_the_storage_file_and_a_topic_without_slash(bag):
    path, expected, _, _ = bag
    (storage_file,) = [p for p in path.iterdir() if p.suffix in (".db3", ".mcap")]
    frames = list(read_bag(storage_file, "points"))
    assert len(frames) == len(expected)
    np.testing.assert_array_equal(frames[0].points, expected[0])


def test_list_pointcloud_topics(bag):
    path = bag[0]
    assert list_pointcloud_topics(path) == ["/camera/points", "/points"]


def test_read_bag_wrong_topic_or_type(bag):
    path = bag[0]
    with pytest.raises(InputError, match=r"no topic '/lidar'.*PointCloud2 topics: /camera/points, /points"):
        read_bag(path, "/lidar")  # raised at the call, before iterating
    with pytest.raises(InputError, match=r"'/chatter' carries std_msgs/msg/String"):
        read_bag(path, "/chatter")
    with pytest.raises(InputError, match="choose a topic"):
        read_bag(path)  # two cloud topics: no guessing
    with pytest.raises(InputError, match="unknown stamp source"):
        read_bag(path, "/points", stamp="receive")


@pytest.mark.parametrize("storage", STORAGES)
def test_single_topic_is_the_default_and_an_empty_topic_is_an_error(tmp_path, storage):
    pts = _random_points(np.random.default_rng(7), 50)
    path = write_bag(tmp_path / "one", storage, [("/scan", PC2, 10, make_cloud(pts, 10)),
                                                 ("/silent", STRING, 0, None)])
    (frame,) = read_bag(path)
    assert frame.stamp_ns == 10
    empty = write_bag(tmp_path / "empty", storage, [("/points", PC2, 0, None)])
    with pytest.raises(InputError, match="holds no messages"):
        read_bag(empty, "/points")


def test_not_a_bag(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_bag(tmp_path / "missing", "/points")
    with pytest.raises(InputError, match="no metadata.yaml"):
        read_bag(tmp_path, "/points")
    text = tmp_path / "notes.txt"
    text.write_text("not a bag")
    with pytest.raises(InputError, match="could not read it as a ROS 2 bag"):
        read_bag(text, "/points")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 1}\n")
    with pytest.raises(InputError, match="could not read it as a ROS 2 bag"):
        list_pointcloud_topics(broken)
    fake_db = tmp_path / "x.db3"
    fake_db.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError):
        read_bag(fake_db, "/points")
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(InputError, match="ROS 1 bag"):
        read_bag(ros1, "/points")


@pytest.mark.parametrize("storage", STORAGES)
def test_bag_frames_segment_into_objects(tmp_path, storage):
    """A tabletop frame recorded in a bag comes out as its objects; an all-NaN frame as none."""
    rng = np.random.default_rng(8)
    table = np.c_[rng.uniform(-0.6, 0.6, 40000), rng.uniform(-0.4, 0.4, 40000), rng.normal(0, 0.002, 40000)]
    cubes = []
    for centre in ((-0.3, 0.0), (0.25, 0.15)):
        faces = rng.uniform(-0.05, 0.05, size=(3000, 3))
        axis = rng.integers(0, 3, 3000)
        faces[np.arange(3000), axis] = np.where(rng.random(3000) < 0.5, -0.05, 0.05)  # on the cube's faces
        cubes.append(faces + [centre[0], centre[1], 0.05])
    scene = np.concatenate([table] + cubes)
    path = write_bag(tmp_path / "table", storage, [
        ("/points", PC2, 1, make_cloud(scene, 1)),
        ("/points", PC2, 2, make_cloud(np.full((1000, 3), np.nan), 2)),
    ])
    first, nan_frame = read_bag(path, "/points")
    objects = segment(first.points)
    assert len(objects) == 2
    for obj in objects:
        cube = min(cubes, key=lambda c: np.linalg.norm(c.mean(axis=0) - obj.centroid))
        kept = cube[cube[:, 2] > 0.01]
        assert np.linalg.norm(obj.centroid - kept.mean(axis=0)) < 0.01
    assert nan_frame.points.shape == (0, 3)
    assert segment(nan_frame.points) == []


# ---------------------------------------------------------------------------------------------- depth images

FX, FY, CX, CY = 525.0, 520.0, 31.5, 23.5


def test_flat_wall_back_projects_to_z_equal_two():
    depth = np.full((48, 64), 2000, dtype=np.uint16)  # millimetres
    depth[0, :5] = 0  # no return
    pts = depth_to_points(depth, FX, FY, CX, CY)
    assert pts.dtype == np.float32 and pts.shape == (48 * 64 - 5, 3)
    np.testing.assert_allclose(pts[:, 2], 2.0)
    expected = []
    for v in range(48):  # written out pixel by pixel, row-major
        for u in range(64):
            if depth[v, u]:
                expected.append(((u - CX) * 2.0 / FX, (v - CY) * 2.0 / FY, 2.0))
    np.testing.assert_allclose(pts, np.array(expected), rtol=1e-6, atol=1e-7)


def test_known_points_project_and_come_back():
    """Points placed in front of the camera, projected by hand to pixels, are recovered from the depth."""
    depth = np.zeros((48, 64), dtype=np.float32)
    placed = []
    for u, v, z in ((5, 7, 0.8), (40, 30, 1.7), (63, 47, 3.25)):
        depth[v, u] = z
        placed.append(((u - CX) / FX * z, (v - CY) / FY * z, z))
    depth[10, 10] = np.nan
    depth[11, 11] = -1.0
    depth[12, 12] = np.inf
    pts = depth_to_points(depth, FX, FY, CX, CY)  # float: metres
    np.testing.assert_allclose(pts, np.array(placed), rtol=1e-6)
    for p in pts:  # and the pinhole model maps them back to their pixels
        u, v = FX * p[0] / p[2] + CX, FY * p[1] / p[2] + CY
        assert depth[int(round(v)), int(round(u))] == pytest.approx(p[2])


def test_depth_scale():
    depth = np.full((4, 4), 10000, dtype=np.uint16)
    np.testing.assert_allclose(depth_to_points(depth, FX, FY, 1.5, 1.5, depth_scale=5000)[:, 2], 2.0)  # TUM
    np.testing.assert_allclose(depth_to_points(depth.astype(np.float32), FX, FY, 1.5, 1.5)[:, 2], 10000.0)
    with pytest.raises(InputError, match="depth_scale"):
        depth_to_points(depth, FX, FY, 1.5, 1.5, depth_scale=0)


def test_depth_errors():
    with pytest.raises(InputError, match="shape"):
        depth_to_points(np.zeros((4, 4, 3)), FX, FY, CX, CY)
    with pytest.raises(InputError, match="focal"):
        depth_to_points(np.zeros((4, 4)), 0.0, FY, CX, CY)
    assert depth_to_points(np.zeros((4, 4), dtype=np.uint16), FX, FY, CX, CY).shape == (0, 3)


def test_16_bit_png_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    depth = rng.integers(0, 4000, size=(48, 64)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.1] = 0
    path = tmp_path / "depth.png"
    Image.fromarray(depth).save(path)
    with Image.open(path) as img:
        assert np.array_equal(np.array(img), depth)  # 16 bits survived
    pts = read_depth_image(path, (FX, FY, CX, CY))
    np.testing.assert_array_equal(pts, depth_to_points(depth, FX, FY, CX, CY))
    v, u = np.nonzero(depth)
    np.testing.assert_allclose(pts[:, 2], depth[v, u] / 1000.0, rtol=1e-6)


def test_float_tiff_and_npy_depth(tmp_path):
    depth = np.full((6, 8), 1.25, dtype=np.float32)
    Image.fromarray(depth).save(tmp_path / "depth.tiff")
    np.save(tmp_path / "depth.npy", depth)
    for name in ("depth.tiff", "depth.npy"):
        np.testing.assert_allclose(read_depth_image(tmp_path / name, (FX, FY, 3.5, 2.5))[:, 2], 1.25)


def test_depth_image_errors(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(InputError, match="not a depth map"):
        read_depth_image(tmp_path / "eight.png", (FX, FY, CX, CY))
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="not a depth map"):
        read_depth_image(tmp_path / "rgb.png", (FX, FY, CX, CY))
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="(could not|cannot) read"):
        read_depth_image(tmp_path / "junk.png", (FX, FY, CX, CY))
    with pytest.raises(InputError, match="no such file"):
        read_depth_image(tmp_path / "missing.png", (FX, FY, CX, CY))
    with pytest.raises(InputError, match="intrinsics"):
        read_depth_image(tmp_path / "eight.png", (FX, FY, CX))
