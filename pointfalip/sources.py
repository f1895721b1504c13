"""Scene inputs as frames: ROS 2 bags of ``sensor_msgs/msg/PointCloud2``, depth images and point files.

* :func:`read_frames` dispatches on what the input is and returns its frames (:class:`FrameSource`), the
  iterable that :func:`pointfalip.stream.stream` reads.

* :func:`read_bag` reads a rosbag2 recording (a bag folder with ``metadata.yaml``, or its ``.db3`` /
  ``.mcap`` file; sqlite3 and mcap storage) with the ``rosbags`` library, no ROS installation needed,
  and yields one :class:`BagFrame` ``(stamp_ns, points)`` a message.
* :func:`pointcloud2_from_cdr` reads one PointCloud2 message from its CDR bytes (rosbags, no copy of the data);
  :func:`decode_pointcloud2` turns one PointCloud2 message into an ``(N, 3)`` float32 array, vectorised
  with a numpy structured dtype built from the message's ``fields`` / ``point_step`` / ``row_step`` /
  ``is_bigendian``; x, y, z may be float32 or float64 (any PointField datatype is accepted), other fields
  (intensity, rgb, ring, ...) are skipped, and NaN / infinite points are dropped.
* :func:`depth_to_points` back-projects a depth image through a pinhole camera, :func:`read_depth_image`
  reads one from a 16-bit PNG (millimetres), a float TIFF (metres) or a ``.npy`` file.

All points are in the sensor's frame, in metres. For a camera (depth images): x right, y down,
z forward (the optical frame of ROS' ``*_optical_frame``). Errors the user can fix raise
:class:`pointfalip.errors.InputError` with one line saying what is wrong and what to do.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from .errors import InputError, one_line

logger = logging.getLogger(__name__)

__all__ = [
    "BagFrame",
    "POINTCLOUD2",
    "bag_topic",
    "decode_pointcloud2",
    "depth_to_points",
    "list_pointcloud_topics",
    "pointcloud2_from_cdr",
    "read_bag",
    "read_depth_image",
]

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
STAMP_SOURCES = ("header", "bag")  # read_bag(stamp=...): the message header's stamp or the bag's receive time

# sensor_msgs/msg/PointField datatypes -> numpy element types (byte order added per message)
_POINTFIELD_DTYPES = {
    1: "i1",  # INT8
    2: "u1",  # UINT8
    3: "i2",  # INT16
    4: "u2",  # UINT16
    5: "i4",  # INT32
    6: "u4",  # UINT32
    7: "f4",  # FLOAT32
    8: "f8",  # FLOAT64
}
_XYZ = ("x", "y", "z")
_MILLIMETRES_PER_METRE = 1000.0  # integer depth images are in millimetres unless depth_scale says otherwise


class BagFrame(NamedTuple):
    """One frame of points: a PointCloud2 message of a bag, or a single file (``stamp_ns`` None)."""

    stamp_ns: Optional[int]  # nanoseconds since the epoch (see read_bag's ``stamp`` for which clock)
    points: np.ndarray  # (N, 3) float32, metres, in the message's frame; NaN / inf points dropped (N may be 0)
    frame_id: Optional[str] = None  # the message's header.frame_id (None when unknown)

    @property
    def stamp_s(self) -> float:
        """The stamp in seconds (float; nanoseconds lose precision beyond ~0.2 us at today's epoch)."""
        return self.stamp_ns * 1e-9


class FrameSource(NamedTuple):
    """What `read_frames` found: the frames, whether they are a sequence (a bag), and the input's up axis."""

    frames: Iterator[BagFrame]
    sequence: bool
    up_axis: str  # "z" for robot and lidar frames, "-y" for camera frames (depth images: y down)
    topic: Optional[str] = None  # the bag's PointCloud2 topic that is read (None: not a bag)


# --------------------------------------------------------------------------------------------------
# PointCloud2
# --------------------------------------------------------------------------------------------------

def decode_pointcloud2(msg: Any, min_points: int = 0) -> np.ndarray:
    """The x, y, z of a ``sensor_msgs/msg/PointCloud2`` message as an ``(N, 3)`` float32 array.

    Args:
        msg: a PointCloud2 message as deserialised by ``rosbags`` (or any object with the same attributes:
            ``height``, ``width``, ``fields`` (each with ``name``, ``offset``, ``datatype``), ``is_bigendian``,
            ``point_step``, ``row_step``, ``data`` (bytes-like or uint8 array)). Organised clouds
            (``height > 1``) are flattened row by row; bytes past ``width * point_step`` in a row (row
            padding) are ignored. Fields of any PointField datatype, in either byte order, are converted.
        min_points: the fewest finite points the caller can use: fewer raise InputError (a live node skips such
            a cloud; a bag keeps its empty frames with the default 0).

    Returns:
        float32 ``(N, 3)``, in the message's frame and order, without the points that have a NaN or infinite
        coordinate (non-dense clouds mark missing returns so). An empty or all-NaN message gives ``(0, 3)``.

    Raises:
        InputError: no x, y or z field, a field outside ``point_step``, an unknown datatype, fewer bytes
            than ``height``, ``width`` and ``row_step`` announce, or fewer finite points than ``min_points``.
    """
    try:
        height, width = int(msg.height), int(msg.width)
        point_step, row_step = int(msg.point_step), int(msg.row_step)
        fields = {str(f.name): f for f in msg.fields}
        bigendian = bool(msg.is_bigendian)
        raw = msg.data
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(f"not a PointCloud2 message ({type(msg).__name__}: {e}); "
                         "give a sensor_msgs/msg/PointCloud2") from e
    if height < 0 or width < 0:
        raise InputError(f"PointCloud2: negative size {height} x {width}; the message is corrupt")
    if height * width == 0:
        if min_points > 0:
            raise InputError(f"PointCloud2 is empty ({height} x {width} points); nothing to recognise")
        return np.zeros((0, 3), dtype=np.float32)
    missing = [name for name in _XYZ if name not in fields]
    if missing:
        raise InputError(f"PointCloud2 has no field {', '.join(missing)} (fields: {', '.join(fields) or 'none'}); "
                         "only clouds with x, y, z can be used")

    order = ">" if bigendian else "<"
    formats, offsets = [], []
    for name in _XYZ:
        f = fields[name]
        code = _POINTFIELD_DTYPES.get(int(f.datatype))
        if code is None:
            raise InputError(f"PointCloud2 field {name!r} has unknown datatype {f.datatype}; expected 1-8 "
                             "(FLOAT32 is 7, FLOAT64 is 8)")
        dt = np.dtype(order + code)
        offset = int(f.offset)
        if offset < 0 or offset + dt.itemsize > point_step:
            raise InputError(f"PointCloud2 field {name!r} (offset {offset}, {dt.itemsize} bytes) does not fit in "
                             f"point_step {point_step}; the message is corrupt")
        formats.append(dt)
        offsets.append(offset)
    row_bytes = width * point_step
    if height > 1 and row_step < row_bytes:
        raise InputError(f"PointCloud2 row_step {row_step} is smaller than width x point_step = {row_bytes}; "
                         "the message is corrupt")
    row_step = max(row_step, row_bytes)  # a single row may carry row_step 0 from sloppy publishers

    buf = _as_bytes(raw)
    needed = (height - 1) * row_step + row_bytes  # the last row's padding may be absent
    if buf.size < needed:
        raise InputError(f"PointCloud2 holds {buf.size} data bytes but {height} x {width} points of "
                         f"{point_step} bytes (row_step {row_step}) need {needed}; the message is truncated")
    if row_step == row_bytes:
        rows = buf[: height * row_bytes]
    else:  # drop the row padding: one strided copy, no Python loop over rows or points
        rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(row_step, 1),
                                               writeable=False)
        rows = np.ascontiguousarray(rows).reshape(-1)
    structured = np.dtype({"names": list(_XYZ), "formats": formats, "offsets": offsets, "itemsize": point_step})
    records = rows.view(structured)
    xyz = np.empty((len(records), 3), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range becomes inf: dropped below
        for i, name in enumerate(_XYZ):  # three columns, each one vectorised
            xyz[:, i] = records[name]
    keep = np.isfinite(xyz).all(axis=1)
    if not keep.all():
        logger.debug("PointCloud2: dropped %d of %d points with NaN / inf coordinates", int((~keep).sum()), len(xyz))
        xyz = xyz[keep]
    if len(xyz) < min_points:
        raise InputError(f"PointCloud2 holds {len(xyz)} points with finite x, y, z of {len(keep)} (the others are "
                         f"NaN or infinite); nothing to recognise")
    return xyz


def pointcloud2_from_cdr(data: bytes) -> Any:
    """A ``sensor_msgs/msg/PointCloud2`` from its CDR serialisation with its 4-byte encapsulation header (a bag's
    message, a DDS sample), read by ``rosbags``: ``data`` stays a numpy view of the bytes, no Python ints.

    Raises:
        InputError: the bytes are not a PointCloud2's CDR.
    """
    try:
        return _typestore().deserialize_cdr(data, POINTCLOUD2)
    except Exception as e:  # noqa: BLE001 - rosbags raises several types on bytes it cannot read
        raise InputError(f"not the CDR bytes of a PointCloud2 ({one_line(e)})") from e


def _as_bytes(raw: Any) -> np.ndarray:
    """A flat uint8 view of a message's data (numpy array, bytes, bytearray, memoryview, array.array, list)."""
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(raw, dtype=np.uint8)
    except TypeError:
        pass
    try:  # a list of ints (Cyclone DDS' sequence<uint8>): bytes() packs it in C, ~3x faster than numpy's conversion
        return np.frombuffer(bytes(raw), dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(raw, dtype=np.uint8).reshape(-1)


# --------------------------------------------------------------------------------------------------
# ROS 2 bags
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)  # PointCloud2 is the same message in every ROS 2 distribution


def _open_reader(path: str | os.PathLike):
    """An opened ``rosbags.rosbag2.Reader``; anything that is not a readable ROS 2 bag raises InputError."""
    from rosbags.rosbag2 import Reader

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; give a ROS 2 bag (its folder, or its .db3 / .mcap file)")
    if p.is_file() and p.suffix.lower() == ".bag":
        raise InputError(f"{p}: a ROS 1 bag; convert it with `rosbags-convert --src {p.name}` "
                         "or give a ROS 2 bag (folder, .db3 or .mcap)")
    if p.is_dir() and not (p / "metadata.yaml").is_file():
        raise InputError(f"{p}: not a ROS 2 bag (the folder has no metadata.yaml); "
                         "give a rosbag2 folder or its .db3 / .mcap file")
    try:
        reader = Reader(p)
        reader.open()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - rosbags raises ReaderError, KeyError, sqlite3 / mcap errors, ...
        raise InputError(f"{p}: could not read it as a ROS 2 bag ({one_line(e)}); "
                         "give a rosbag2 folder (sqlite3 or mcap storage) or its .db3 / .mcap file") from e
    return reader


def _topic_types(reader) -> dict[str, str | None]:
    """Topic name -> message type (None when a topic's connections disagree)."""
    return {name: info.msgtype for name, info in reader.topics.items()}


def list_pointcloud_topics(path: str | os.PathLike) -> list[str]:
    """Sorted names of the topics of a ROS 2 bag that carry ``sensor_msgs/msg/PointCloud2``.

    Raises:
        InputError: the path does not exist or is not a readable ROS 2 bag.
    """
    reader = _open_reader(path)
    try:
        return sorted(t for t, ty in _topic_types(reader).items() if ty == POINTCLOUD2)
    finally:
        reader.close()


def _resolve_topic(reader, path: Path, topic: str | None) -> str:
    types = _topic_types(reader)
    clouds = sorted(t for t, ty in types.items() if ty == POINTCLOUD2)
    available = ", ".join(clouds) if clouds else "none"
    if topic is None:
        if len(clouds) == 1:
            return clouds[0]
        raise InputError(f"{path}: choose a topic; PointCloud2 topics in the bag: {available}")
    if topic not in types and not topic.startswith("/") and "/" + topic in types:
        topic = "/" + topic  # "points" means "/points"
    if topic not in types:
        raise InputError(f"{path}: no topic {topic!r} in the bag; PointCloud2 topics: {available}")
    if types[topic] != POINTCLOUD2:
        raise InputError(f"{path}: topic {topic!r} carries {types[topic] or 'mixed message types'}, not "
                         f"{POINTCLOUD2}; PointCloud2 topics: {available}")
    return topic


def read_bag(path: str | os.PathLike, topic: str | None = None, stamp: str = "header") -> Iterator[BagFrame]:
    """The point clouds of one topic of a ROS 2 bag, one :class:`BagFrame` ``(stamp_ns, points)`` a message.

    The bag is checked when this is called (so a wrong path or topic fails at once); the messages are then
    read lazily, in the bag's time order, one at a time.

    Args:
        path: a rosbag2 folder (with ``metadata.yaml``; sqlite3 or mcap storage) or its ``.db3`` / ``.mcap`` file.
        topic: a ``sensor_msgs/msg/PointCloud2`` topic (``"points"`` also finds ``"/points"``); ``None``
            takes the bag's only PointCloud2 topic.
        stamp: ``"header"``: the message's ``header.stamp`` (the sensor's acquisition time), or the bag's
            receive time where the header stamp is zero; ``"bag"``: always the bag's receive time.

    Yields:
        ``BagFrame(stamp_ns, points)``; ``points`` as :func:`decode_pointcloud2` gives them, ``(0, 3)`` for an
        empty or all-NaN message (the frame is still yielded, so stamps stay aligned with the bag).

    Raises:
        InputError: not a ROS 2 bag; the topic is missing (the message lists the PointCloud2 topics) or carries
            another message type (named); the topic holds no messages; a message cannot be decoded.
    """
    if stamp not in STAMP_SOURCES:
        raise InputError(f"unknown stamp source {stamp!r}; use one of {', '.join(STAMP_SOURCES)}")
    p = Path(path).expanduser()
    return _iter_frames(p, bag_topic(p, topic), stamp)


def bag_topic(path: str | os.PathLike, topic: str | None = None) -> str:
    """The PointCloud2 topic of a bag that ``topic`` names (``None``: its only one), checked to hold messages.

    Raises:
        InputError: as :func:`read_bag`.
    """
    p = Path(path).expanduser()
    reader = _open_reader(p)
    try:
        topic = _resolve_topic(reader, p, topic)
        count = reader.topics[topic].msgcount
    finally:
        reader.close()
    if count == 0:
        raise InputError(f"{p}: topic {topic!r} holds no messages; nothing to read")
    return topic


def _iter_frames(path: Path, topic: str, stamp: str) -> Iterator[BagFrame]:
    store = _typestore()
    reader = _open_reader(path)
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, bag_ns, raw in _guarded(reader.messages(connections=connections), path, topic):
            try:
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except Exception as e:  # noqa: BLE001 - rosbags raises several types on corrupt data
                raise InputError(f"{path}: message on {topic!r} at {bag_ns} ns cannot be deserialised "
                                 f"({one_line(e)}); the bag is corrupt") from e
            points = decode_pointcloud2(msg)
            stamp_ns = int(bag_ns)
            if stamp == "header":
                header_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                stamp_ns = header_ns or stamp_ns
            yield BagFrame(stamp_ns, points, str(msg.header.frame_id) or None)
    finally:
        reader.close()


def _guarded(messages: Iterator, path: Path, topic: str) -> Iterator:
    """A bag's messages; damaged storage (a corrupt sqlite3 page, a broken mcap chunk) found on the way is a
    one-line InputError instead of the storage library's exception."""
    count = 0
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - sqlite3, mcap and rosbags raise many types on damaged storage
            raise InputError(f"{path}: the bag's storage is damaged after {count} message(s) on {topic!r} "
                             f"({one_line(e)}); repair or re-record the bag") from e
        count += 1
        yield item


# --------------------------------------------------------------------------------------------------
# depth images
# --------------------------------------------------------------------------------------------------

def depth_to_points(depth: Any, fx: float, fy: float, cx: float, cy: float,
                    depth_scale: float | None = None) -> np.ndarray:
    """Back-project a depth image through a pinhole camera: ``(N, 3)`` float32 points in the camera frame.

    Pixel ``(u, v)`` (column, row; integer coordinates at pixel centres, as in OpenCV and Open3D) with depth
    ``z`` metres becomes ``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``, ``z``: x right, y down,
    z forward. Points come in row-major pixel order.

    Args:
        depth: ``(H, W)`` (or ``(H, W, 1)``) array. Integer images (16-bit PNG) are millimetres, float
            images metres, unless ``depth_scale`` is given.
        fx, fy, cx, cy: the intrinsics in pixels.
        depth_scale: raw units per metre, as Open3D's ``depth_scale``: ``metres = raw / depth_scale``
            (1000 for millimetres). ``None``: 1000 for integer images, 1 for float images.

    Returns:
        float32 ``(N, 3)``; pixels with zero, negative, NaN or infinite depth (no return) are dropped.

    Raises:
        InputError: not a 2-D image, non-positive or non-finite focal lengths or depth scale.
    """
    arr = np.asarray(depth)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"depth image: expected shape (H, W), got {tuple(arr.shape)}; give a single-channel image")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"depth image: dtype {arr.dtype} is not a depth; give integer millimetres or float metres")
    intrinsics = _check_intrinsics((fx, fy, cx, cy))
    fx, fy, cx, cy = intrinsics
    if depth_scale is None:
        depth_scale = _MILLIMETRES_PER_METRE if arr.dtype.kind in "iu" else 1.0
    depth_scale = float(depth_scale)
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise InputError(f"depth_scale must be a positive number (raw units per metre), got {depth_scale}")

    z = arr.astype(np.float64) / depth_scale
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(z) & (z > 0)
    v, u = np.nonzero(valid)
    z = z[v, u]
    points = np.empty((len(z), 3), dtype=np.float64)
    points[:, 0] = (u - cx) * z / fx
    points[:, 1] = (v - cy) * z / fy
    points[:, 2] = z
    return points.astype(np.float32)


def _check_intrinsics(intrinsics: Sequence[float]) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(x) for x in intrinsics)
    except (TypeError, ValueError) as e:
        raise InputError(f"camera intrinsics must be four numbers fx, fy, cx, cy, got {intrinsics!r}") from e
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(f"camera intrinsics must be four finite numbers fx, fy, cx, cy, got {intrinsics!r}")
    if values[0] <= 0 or values[1] <= 0:
        raise InputError(f"focal lengths fx, fy must be positive (pixels), got {values[0]}, {values[1]}")
    return values  # type: ignore[return-value]


def read_depth_image(path: str | os.PathLike, intrinsics: Sequence[float],
                     depth_scale: float | None = None) -> np.ndarray:
    """Read a depth image and back-project it (see :func:`depth_to_points`).

    Args:
        path: a 16-bit single-channel PNG (millimetres, the ROS / RealSense / TUM convention up to the scale),
            a 32-bit float TIFF (metres), or a ``.npy`` array (integer: millimetres, float: metres).
        intrinsics: ``(fx, fy, cx, cy)`` in pixels.
        depth_scale: raw units per metre (``metres = raw / depth_scale``); ``None`` follows the dtype as above
            (TUM RGB-D's PNGs, for example, need ``depth_scale=5000``).

    Raises:
        InputError: missing or unreadable file, an 8-bit or colour image (not a depth map), bad intrinsics.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a 16-bit PNG, float TIFF or .npy depth image")
    if not p.is_file():
        raise InputError(f"{p}: no such file; give a 16-bit PNG, float TIFF or .npy depth image")
    _check_intrinsics(intrinsics)
    if p.suffix.lower() == ".npy":
        from .io import read_npy

        depth = np.asarray(read_npy(p))
    else:
        depth = _read_image_depth(p)
    return depth_to_points(depth, *intrinsics, depth_scale=depth_scale)


def _read_image_depth(path: Path) -> np.ndarray:
    """The raw values of a depth image (16-bit integers or 32-bit floats, never scaled)."""
    from .images import open_image

    img = open_image(path, "depth image")
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.array(img).astype(np.uint16)
    if mode == "I":  # some readers give 16-bit PNGs as 32-bit integers
        return np.array(img).astype(np.int64)
    if mode == "F":
        return np.array(img).astype(np.float32)
    raise InputError(f"{path}: a {mode} image is not a depth map; give a 16-bit single-channel PNG "
                     "(millimetres) or a 32-bit float TIFF (metres)")


BAG_SUFFIXES = (".db3", ".mcap")
DEPTH_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def read_frames(path: str | os.PathLike, topic: str | None = None, intrinsics: Sequence[float] | None = None,
                depth_scale: float | None = None, num_points: int = 2048) -> FrameSource:
    """The frames of a scene input, dispatched on what it is: a ROS 2 bag (folder, ``.db3``, ``.mcap``), a depth
    image (``.png``/``.tif``, or ``.npy`` when ``intrinsics`` are given) or a point file (`io.load_points`; a mesh
    is sampled with ``num_points`` points, a point file keeps all of its points).

    Everything is checked before the first frame is read (a wrong topic, missing intrinsics, bad intrinsics).
    """
    from . import io

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix in BAG_SUFFIXES:
        topic = bag_topic(p, topic)
        return FrameSource(read_bag(p, topic), True, "z", topic)
    if intrinsics is not None:
        intrinsics = _check_intrinsics(intrinsics)
    if suffix in DEPTH_IMAGE_SUFFIXES or (suffix == ".npy" and intrinsics is not None):
        if intrinsics is None:
            raise InputError(f"{p} is a depth image: give the camera's intrinsics fx,fy,cx,cy (--intrinsics)")
        points = read_depth_image(p, intrinsics, depth_scale=depth_scale)
        return FrameSource(iter([BagFrame(None, points)]), False, "-y")
    if intrinsics is not None or depth_scale is not None:
        raise InputError(f"{p} is a point file: --intrinsics and --depth-scale are for depth images "
                         f"({', '.join(DEPTH_IMAGE_SUFFIXES)}, .npy)")
    points = io.load_points(p, num_points=num_points, max_points=None, drop_nonfinite=True)
    return FrameSource(iter([BagFrame(None, points)]), False, "z")
