"""Scene results for Foxglove: MCAP recordings and a live WebSocket view, with the ``foxglove-sdk`` package.

:class:`SceneChannels` turns one frame (its points and its :class:`~pointfalip.scene.SceneResult`) into
Foxglove's well-known messages, protobuf-encoded by the SDK, on three topics:

* ``/pointfalip/points`` (``foxglove.PointCloud``): the input cloud, x, y, z as float32 and a colour per
  point (uint8 red, green, blue, alpha): grey for the background, the colour of its object's label for the
  points of an object.
* ``/pointfalip/objects`` (``foxglove.SceneUpdate``): first a deletion of every earlier entity (objects that
  left the scene disappear), then one entity per object: a translucent cube (pose at the box centre, size the
  box extent, the label's colour) and a text ``"mug 0.82 #3"`` (the track's label when set, else the frame's;
  its probability in this frame; the track id) at the centre of the box's top face (+z), facing the viewer.
  The entity id is the track id when the object has one, so Foxglove follows an object across frames. A frame
  without objects gives an update with no entity.
* ``/pointfalip/transforms`` (``foxglove.FrameTransform``), only when the result names its frame: an
  identity transform from ``parent_frame`` (default ``"world"``) to the result's frame. It gives Foxglove's
  3D panel a fixed root frame to display in; the identity claims nothing about where the sensor is. Pass
  ``parent_frame=None`` when the recording is viewed together with the robot's own transforms (a frame has
  one parent: ours would contend with the real one).

Times are the frame's ``stamp_ns`` (the time now when it is None), used both as the messages' timestamps and
as their log time; the frame id is the result's ``frame_id`` or ``"pointfalip"``.

Sinks: :class:`McapRecording` (a file, written under a temporary name in the same folder and renamed when
complete) and :class:`LiveServer` (Foxglove's WebSocket server, for the Foxglove app's live connection);
:class:`RealtimePacer` replays a recording to a live view at the pace of its stamps.
Each :class:`SceneChannels` has its own ``foxglove.Context``; a recording and a live server given the same
``SceneChannels`` receive the same messages::

    scene = SceneChannels(labels=labels)
    with McapRecording("out.mcap", scene=scene), LiveServer(port=8765, scene=scene):
        for points, result in frames:
            scene.log_frame(points, result)

Results are read by duck typing: ``result.stamp_ns``, ``result.frame_id``, ``result.objects``; per object
``label``, ``probability``, ``predictions`` (items with ``label`` / ``probability``), ``bbox_min``,
``bbox_max``, ``num_points``, ``indices`` (rows of the frame's points) and, when set, ``id`` and
``track_label`` (see :mod:`pointfalip.tracking`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .colors import label_color
from .errors import InputError

try:
    import foxglove as _fg
    from foxglove.channels import FrameTransformChannel, PointCloudChannel, SceneUpdateChannel
    from foxglove.messages import (
        Color,
        CubePrimitive,
        FrameTransform,
        KeyValuePair,
        PackedElementField,
        PackedElementFieldNumericType,
        PointCloud,
        Pose,
        Quaternion,
        SceneEntity,
        SceneEntityDeletion,
        SceneEntityDeletionType,
        SceneUpdate,
        TextPrimitive,
        Timestamp,
        Vector3,
    )
except ImportError as _e:  # the package is optional: only recordings and the live view need it
    _fg = None
    _IMPORT_ERROR: ImportError | None = _e
else:
    _IMPORT_ERROR = None

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FRAME",
    "LiveServer",
    "McapRecording",
    "OBJECTS_TOPIC",
    "POINTS_TOPIC",
    "SceneChannels",
    "TRANSFORMS_TOPIC",
    "label_color",
    "record",
]

POINTS_TOPIC = "/pointfalip/points"
OBJECTS_TOPIC = "/pointfalip/objects"
TRANSFORMS_TOPIC = "/pointfalip/transforms"
DEFAULT_FRAME = "pointfalip"  # frame id of results that do not name their frame
DEFAULT_PARENT_FRAME = "world"

_NS_PER_S = 1_000_000_000
_BACKGROUND_RGBA = (170, 170, 170, 255)  # points that belong to no object
_CUBE_ALPHA = 0.35  # opacity of the object boxes (0-1): the points inside stay visible
_TEXT_RGBA = (1.0, 1.0, 1.0, 1.0)  # label texts (0-1)
_TEXT_SIZE_PX = 14.0  # label font size in screen pixels (scale-invariant texts)
# one point: x, y, z float32 then red, green, blue, alpha uint8 (16 bytes, little-endian as protobuf bytes)
_POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgba", "u1", (4,))])


def _require_sdk() -> None:
    if _IMPORT_ERROR is not None:
        raise InputError(f"Foxglove output needs the foxglove-sdk package ({_IMPORT_ERROR}); "
                         "install it with: pip install foxglove-sdk")


def _timestamp(stamp_ns: int) -> "Timestamp":
    sec, nsec = divmod(int(stamp_ns), _NS_PER_S)
    return Timestamp(sec, nsec)


def _vector(v: Sequence[float]) -> "Vector3":
    return Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _identity_pose(position: Sequence[float] = (0.0, 0.0, 0.0)) -> "Pose":
    return Pose(position=_vector(position), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))


class SceneChannels:
    """Foxglove channels for scene results, on a context of their own; :meth:`log_frame` writes one frame.

    Nothing is written until a sink (:class:`McapRecording`, :class:`LiveServer`, or any sink opened on
    :attr:`context`) is attached.

    Args:
        labels: the label set, in order: its labels get distinct colours (the first nine); others get a
            colour from a hash of their name.
        parent_frame: parent of the identity transform logged for results that name their frame;
            ``None``: no transform.
        topic_prefix: prefix of the three topics (``/pointfalip`` gives the module's topic names).
    """

    def __init__(self, *, labels: Sequence[str] | None = None, parent_frame: str | None = DEFAULT_PARENT_FRAME,
                 topic_prefix: str = "/pointfalip"):
        _require_sdk()
        self.labels = list(labels) if labels is not None else None
        self.parent_frame = parent_frame or None
        self.context = _fg.Context()
        prefix = "/" + topic_prefix.strip("/") if topic_prefix.strip("/") else ""
        self.points_topic = f"{prefix}/points"
        self.objects_topic = f"{prefix}/objects"
        self.transforms_topic = f"{prefix}/transforms"
        self._points = PointCloudChannel(self.points_topic, context=self.context)
        self._objects = SceneUpdateChannel(self.objects_topic, context=self.context)
        self._transforms = FrameTransformChannel(self.transforms_topic, context=self.context)
        self.frames_logged = 0

    def log_frame(self, points: Any, result: Any, *, stamp_ns: int | None = None) -> None:
        """Log one frame: its point cloud, its objects and (when the result names its frame) the transform.

        Args:
            points: ``(N, 3)`` array (float32 is logged as is; extra columns are ignored), metres, the cloud the
                result was computed on (objects' ``indices`` are rows of it). Rows with NaN / infinite
                coordinates are left out of the logged cloud.
            result: the frame's scene result (``stamp_ns``, ``frame_id``, ``objects``).
            stamp_ns: time to log the frame at instead of ``result.stamp_ns`` (e.g. the time now when a
                recording is replayed in a loop to a live view).

        Raises:
            InputError: ``points`` is not an ``(N, 3+)`` array of numbers.
            ValueError: an object's ``indices`` fall outside ``points``.
        """
        if stamp_ns is None:
            stamp_ns = getattr(result, "stamp_ns", None)
        if stamp_ns is None:
            stamp_ns = time.time_ns()
        stamp_ns = int(stamp_ns)
        frame_id = getattr(result, "frame_id", None) or DEFAULT_FRAME
        objects = list(getattr(result, "objects", None) or ())
        ts = _timestamp(stamp_ns)
        if getattr(result, "frame_id", None) and self.parent_frame and self.parent_frame != frame_id:
            self._transforms.log(FrameTransform(timestamp=ts, parent_frame_id=self.parent_frame,
                                                child_frame_id=frame_id, translation=_vector((0, 0, 0)),
                                                rotation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
                                 log_time=stamp_ns)
        self._points.log(self.point_cloud(points, objects, frame_id, ts), log_time=stamp_ns)
        self._objects.log(self.scene_update(objects, frame_id, ts), log_time=stamp_ns)
        self.frames_logged += 1

    def point_cloud(self, points: Any, objects: Sequence[Any], frame_id: str, ts: "Timestamp") -> "PointCloud":
        """The ``foxglove.PointCloud`` of a frame: x, y, z float32 and the RGBA colour of every point."""
        xyz = _as_points(points)
        rgba = np.empty((len(xyz), 4), dtype=np.uint8)
        rgba[:] = _BACKGROUND_RGBA
        for obj in objects:
            idx = np.asarray(obj.indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(xyz)):
                raise ValueError(f"object indices out of range for a frame of {len(xyz)} points")
            rgba[idx, :3] = label_color(obj.display_label, self.labels)
        finite = np.isfinite(xyz).all(axis=1)
        if not finite.all():
            xyz, rgba = xyz[finite], rgba[finite]
        packed = np.empty(len(xyz), dtype=_POINT_DTYPE)
        packed["x"], packed["y"], packed["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        packed["rgba"] = rgba
        f32, u8 = PackedElementFieldNumericType.Float32, PackedElementFieldNumericType.Uint8
        fields = [PackedElementField(name=name, offset=_POINT_DTYPE.fields[name][1], type=f32) for name in "xyz"]
        rgba_offset = _POINT_DTYPE.fields["rgba"][1]
        fields += [PackedElementField(name=name, offset=rgba_offset + i, type=u8)
                   for i, name in enumerate(("red", "green", "blue", "alpha"))]
        return PointCloud(timestamp=ts, frame_id=frame_id, pose=_identity_pose(), point_stride=_POINT_DTYPE.itemsize,
                          fields=fields, data=packed.tobytes())

    def scene_update(self, objects: Sequence[Any], frame_id: str, ts: "Timestamp") -> "SceneUpdate":
        """The ``foxglove.SceneUpdate`` of a frame: delete every earlier entity, then one entity per object."""
        entities = []
        for i, obj in enumerate(objects):
            lo = np.asarray(obj.bbox_min, dtype=np.float64).reshape(3)
            hi = np.asarray(obj.bbox_max, dtype=np.float64).reshape(3)
            centre, size = (lo + hi) / 2, hi - lo
            label = obj.display_label
            r, g, b = (c / 255.0 for c in label_color(label, self.labels))
            track_id = getattr(obj, "id", None)
            top = (centre[0], centre[1], hi[2])
            metadata = [KeyValuePair(key="label", value=str(obj.label)),
                        KeyValuePair(key="probability", value=f"{float(obj.probability):.4f}"),
                        KeyValuePair(key="num_points", value=str(int(obj.num_points))),
                        KeyValuePair(key="reused", value=str(bool(getattr(obj, "reused", False))).lower())]
            if getattr(obj, "track_label", None):
                metadata.append(KeyValuePair(key="track_label", value=str(obj.track_label)))
            entities.append(SceneEntity(
                timestamp=ts,
                frame_id=frame_id,
                id=str(int(track_id)) if track_id is not None else f"object-{i}",
                metadata=metadata,
                cubes=[CubePrimitive(pose=_identity_pose(centre), size=_vector(size),
                                     color=Color(r=r, g=g, b=b, a=_CUBE_ALPHA))],
                texts=[TextPrimitive(pose=_identity_pose(top), billboard=True, font_size=_TEXT_SIZE_PX,
                                     scale_invariant=True, color=Color(r=_TEXT_RGBA[0], g=_TEXT_RGBA[1],
                                                                       b=_TEXT_RGBA[2], a=_TEXT_RGBA[3]),
                                     text=obj.text)],
            ))
        deletion = SceneEntityDeletion(timestamp=ts, type=SceneEntityDeletionType.All)
        return SceneUpdate(deletions=[deletion], entities=entities)


def _as_points(points: Any) -> np.ndarray:
    arr = np.asarray(points)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] < 3:
        raise InputError(f"points: expected an (N, 3) array of numbers, got shape {tuple(arr.shape)} "
                         f"and dtype {arr.dtype}")
    return arr[:, :3].astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# MCAP recordings
# --------------------------------------------------------------------------------------------------

class McapRecording:
    """An MCAP file of scene frames; a context manager.

    The file is written as a hidden temporary in the destination folder (``.NAME.XXXXXXXX.part``) and renamed to
    ``path`` when the context ends normally. On an exception (``KeyboardInterrupt`` included) the writer is
    closed and the temporary removed: ``path`` never holds a half-written recording.

    Args:
        path: the ``.mcap`` file to create.
        scene: the channels to record (``None``: new :class:`SceneChannels` with ``channel_options``); a
            :class:`LiveServer` given the same object shows what is recorded.
        overwrite: replace an existing ``path`` (by default an existing file is an error; check first).
        metadata: strings stored in the file's ``pointfalip`` metadata record (model, labels, ...).
        **channel_options: :class:`SceneChannels` options when ``scene`` is None.

    Raises:
        InputError: ``path`` exists (without ``overwrite``), its folder does not exist or cannot be written.
    """

    def __init__(self, path: str | os.PathLike, *, scene: SceneChannels | None = None, overwrite: bool = False,
                 metadata: Mapping[str, str] | None = None, **channel_options: Any):
        _require_sdk()
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.scene = scene if scene is not None else SceneChannels(**channel_options)
        self._tmp: Path | None = None
        self._writer = None

    def log_frame(self, points: Any, result: Any, *, stamp_ns: int | None = None) -> None:
        """:meth:`SceneChannels.log_frame` on this recording's channels."""
        if self._writer is None:
            raise RuntimeError("the recording is not open; use it in a with statement")
        self.scene.log_frame(points, result, stamp_ns=stamp_ns)

    def __enter__(self) -> "McapRecording":
        folder = self.path.parent
        if not folder.is_dir():
            raise InputError(f"cannot write {self.path}: {folder} is not an existing folder")
        if self.path.exists() and not self.overwrite:
            raise InputError(f"{self.path} exists; choose another output file or remove it")
        self._tmp = folder / f".{self.path.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            self._writer = _fg.open_mcap(self._tmp, allow_overwrite=False, context=self.scene.context)
        except (OSError, RuntimeError) as e:
            self._tmp = None
            raise InputError(f"cannot write a recording in {folder} ({e}); choose a writable folder") from e
        if self.metadata:
            self._writer.write_metadata("pointfalip", self.metadata)
        logger.debug("recording to %s (temporary %s)", self.path, self._tmp)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._writer is None:  # closed or aborted inside the block
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> Path:
        """Finish the file and give it its name; returns ``path``."""
        tmp, writer = self._tmp, self._writer
        if writer is None or tmp is None:
            raise RuntimeError("the recording is not open")
        try:
            writer.close()
            _publish(tmp, self.path, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._writer, self._tmp = None, None
        logger.info("wrote %s (%d frames)", self.path, self.scene.frames_logged)
        return self.path

    def abort(self) -> None:
        """Close the writer and remove the temporary file; ``path`` is not created."""
        writer, tmp = self._writer, self._tmp
        self._writer, self._tmp = None, None
        try:
            if writer is not None:
                writer.close()
        except Exception as e:  # a writer that failed may fail again closing; the temporary goes anyway
            logger.debug("closing the aborted recording failed: %s", e)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
                logger.info("recording to %s aborted; nothing written", self.path)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished temporary to ``path``; without ``overwrite``, never replace a file that appeared."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if path exists
    except FileExistsError as e:
        raise InputError(f"{path} appeared while recording; nothing overwritten, the recording is discarded") from e
    except OSError:  # hard links unsupported (some network and FAT file systems)
        if path.exists():
            raise InputError(f"{path} appeared while recording; nothing overwritten, the recording is discarded")
        os.replace(tmp, path)
        return
    tmp.unlink()


def record(path: str | os.PathLike, frames: Iterable[tuple[Any, Any]], *, overwrite: bool = False,
           metadata: Mapping[str, str] | None = None, **channel_options: Any) -> Path:
    """Write ``frames`` (pairs ``(points, result)``) to an MCAP file; returns its path.

    See :class:`McapRecording` for the arguments and the guarantees (complete file or no file).
    """
    with McapRecording(path, overwrite=overwrite, metadata=metadata, **channel_options) as rec:
        for points, result in frames:
            rec.log_frame(points, result)
    return rec.path


# --------------------------------------------------------------------------------------------------
# live view
# --------------------------------------------------------------------------------------------------

class _SubscriptionListener:
    """Counts the clients' subscriptions per topic (a ``foxglove.websocket.ServerListener``)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._subscribers: dict[str, int] = {}

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self._subscribers[channel.topic] = self._subscribers.get(channel.topic, 0) + 1
            self._lock.notify_all()

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self._subscribers[channel.topic] = max(0, self._subscribers.get(channel.topic, 0) - 1)

    def wait(self, topic: str | None, timeout: float | None) -> bool:
        def ready() -> bool:
            counts = self._subscribers if topic is None else {topic: self._subscribers.get(topic, 0)}
            return any(n > 0 for n in counts.values())

        with self._lock:
            return self._lock.wait_for(ready, timeout)


class LiveServer:
    """Foxglove's WebSocket server for a live view of scene frames; a context manager.

    Connect the Foxglove app to ``ws://HOST:PORT`` (:attr:`url`). Frames logged while no client is
    subscribed are dropped (a live view has no history).

    Args:
        port: TCP port (0: any free port; :attr:`port` tells which).
        host: address to listen on; the default, loopback, accepts connections from this machine only.
        scene: the channels to serve (``None``: new :class:`SceneChannels` with ``channel_options``).
        name: server name shown by the Foxglove app.

    Raises:
        InputError: the port is in use, or the server cannot listen on ``host:port``.
    """

    def __init__(self, port: int = 8765, host: str = "127.0.0.1", *, scene: SceneChannels | None = None,
                 name: str = "pointfalip", **channel_options: Any):
        _require_sdk()
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InputError(f"port must be an integer in 0-65535, got {port!r}")
        self.host = host
        self.requested_port = port
        self.name = name
        self.scene = scene if scene is not None else SceneChannels(**channel_options)
        self._listener = _SubscriptionListener()
        self._server = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return int(self._server.port)

    @property
    def url(self) -> str:
        """``ws://HOST:PORT``, for the Foxglove app's "Foxglove WebSocket" connection."""
        return f"ws://{self.host}:{self.port}"

    def start(self) -> "LiveServer":
        """Start listening (the context manager calls this)."""
        if self._server is not None:
            return self
        try:
            self._server = _fg.start_server(name=self.name, host=self.host, port=self.requested_port,
                                            context=self.scene.context, server_listener=self._listener)
        except (RuntimeError, OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            if "in use" in reason.lower():
                raise InputError(f"port {self.requested_port} on {self.host} is in use; choose another with "
                                 "--port or stop the program using it") from e
            raise InputError(f"cannot start the Foxglove server on {self.host}:{self.requested_port} "
                             f"({reason})") from e
        logger.info("Foxglove live view at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop the server and disconnect its clients (again: no effect)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            logger.debug("Foxglove server on %s:%d stopped", self.host, server.port)

    def wait_for_subscriber(self, topic: str | None = None, timeout: float | None = None) -> bool:
        """Block until a client subscribes to ``topic`` (any of the scene's topics when None); False on timeout."""
        return self._listener.wait(topic, timeout)

    def log_frame(self, points: Any, result: Any, *, stamp_ns: int | None = None) -> None:
        """:meth:`SceneChannels.log_frame` on this server's channels."""
        self.scene.log_frame(points, result, stamp_ns=stamp_ns)

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
