"""The ``dds`` transport: the node on ROS 2's wire with Eclipse Cyclone DDS, no ROS installation needed.

    pip install 'pointfalip[ros2]'
    ROS_DOMAIN_ID=7 pointfalip ros2 --transport dds --labels mug,bowl --input-topic /camera/depth/points

ROS 2 talks standard DDS: a topic ``/a/b`` is the DDS topic ``rt/a/b``, a message type the DDS type
``<package>::msg::dds_::<Name>_`` (:mod:`pointfalip.ros2.messages`), serialised as CDR (XCDR1). One
DomainParticipant in the domain ``ROS_DOMAIN_ID`` (0 when unset) reads the clouds and writes the answers; Cyclone
reads its network configuration from ``CYCLONEDDS_URI`` as usual (e.g. to keep to one interface).

QoS as ROS 2 users expect: the clouds are read best-effort, keep-last 1 (matching both a sensor-data publisher and a
default, reliable one; only the newest cloud matters); detections and markers are written reliable, volatile,
keep-last 10 (ROS 2's default, what ``ros2 topic echo``, RViz and a default subscriber ask for).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import threading
from typing import Any, Callable, Optional

from ..errors import InputError
from . import (CLOUD_QUEUE_DEPTH, OUTPUT_QUEUE_DEPTH, MessageSink, NodeLoop, NodeSettings, build_scene_recognizer,
               detection_array_message, marker_array_message)

logger = logging.getLogger(__name__)

__all__ = ["DdsEndpoint", "INSTALL", "cloud_qos", "domain_id", "dds_topic", "missing", "output_qos", "serve"]

INSTALL = "pip install 'pointfalip[ros2]' (or pip install cyclonedds)"
ROS_TOPIC_PREFIX = "rt/"  # ROS 2's prefix of a topic's DDS name
MAX_DOMAIN_ID = 232  # the highest domain id whose ports fit below 65536 with the standard port mapping
_MAX_BLOCKING_MS = 100  # a reliable write waits at most this long for room in a slow reader's history
_WAKE_S = 0.5  # the receive thread wakes this often without data (stop is also signalled at once)
_ROS_NAME = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")  # a fully qualified or relative name


def missing() -> Optional[str]:
    """Why this transport cannot run here (one line saying how to install Cyclone DDS), None when it can."""
    try:
        importlib.import_module("cyclonedds.domain")
        importlib.import_module(".messages", __package__)
    except ImportError as e:
        return f"Cyclone DDS is not installed ({e}); install it: {INSTALL}"
    return None


def domain_id(environ: Optional[dict] = None) -> int:
    """The DDS domain of ``ROS_DOMAIN_ID`` (0 when unset or empty), as ROS 2 reads it.

    Raises:
        InputError: not an integer in [0, 232].
    """
    text = (os.environ if environ is None else environ).get("ROS_DOMAIN_ID", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise InputError(f"ROS_DOMAIN_ID={text!r} is not a domain id: give an integer from 0 to {MAX_DOMAIN_ID}")
    return value


def dds_topic(name: str) -> str:
    """The DDS topic of a ROS 2 topic name: ``points`` and ``/points`` are ``rt/points`` (a node in the root
    namespace resolves relative names from ``/``).

    Raises:
        InputError: not a ROS 2 topic name (letters, digits, ``_`` and ``/`` separators; ``~`` and substitutions
            belong to a ROS node, which this transport is not).
    """
    if not _ROS_NAME.match(name or "") or "__" in name:
        raise InputError(f"{name!r} is not a ROS 2 topic name: use letters, digits and _ between / separators, "
                         "e.g. /camera/depth/points")
    return ROS_TOPIC_PREFIX + name.lstrip("/")


def cloud_qos() -> Any:
    """QoS of the cloud reader: best-effort, volatile, keep-last 1; plain CDR or XCDR2 accepted."""
    from cyclonedds.qos import Policy, Qos

    return Qos(Policy.Reliability.BestEffort, Policy.Durability.Volatile, Policy.History.KeepLast(CLOUD_QUEUE_DEPTH),
               Policy.DataRepresentation(use_cdrv0_representation=True, use_xcdrv2_representation=True))


def output_qos() -> Any:
    """QoS of the detection and marker writers: reliable, volatile, keep-last 10, plain CDR (ROS 2's encoding)."""
    from cyclonedds.qos import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=_MAX_BLOCKING_MS)), Policy.Durability.Volatile,
               Policy.History.KeepLast(OUTPUT_QUEUE_DEPTH), Policy.DataRepresentation(use_cdrv0_representation=True))


_PLAIN_CDR_LE = b"\x00\x01"  # the encapsulation of a sample in plain CDR, little endian: what ROS 2 publishers send


@functools.lru_cache(maxsize=1)
def cloud_reader_type() -> type:
    """The reader's PointCloud2 type: :class:`~pointfalip.ros2.messages.PointCloud2`'s DDS type name and members (the
    same type information, so it matches every PointCloud2 writer), whose samples in plain little-endian CDR are read
    by rosbags (:func:`pointfalip.sources.pointcloud2_from_cdr`): a cloud's data then stays one numpy view instead of
    a list of Python ints (~10 ms less a 50k-point cloud). Samples in any other encoding are read by Cyclone."""
    import dataclasses
    import types

    from cyclonedds.idl import IdlStruct

    from ..sources import pointcloud2_from_cdr
    from .messages import PointCloud2

    def deserialize(cls, data, has_header: bool = True, use_version_2: Optional[bool] = None):
        if has_header and use_version_2 is None and bytes(data[:2]) == _PLAIN_CDR_LE:
            return pointcloud2_from_cdr(data)
        return PointCloud2.__idl__.deserialize(data, has_header=has_header, use_version_2=use_version_2)

    def body(ns: dict) -> None:
        ns.update({f.name: f.default if f.default is not dataclasses.MISSING else dataclasses.field(
            default_factory=f.default_factory) for f in dataclasses.fields(PointCloud2)})
        ns.update(__annotations__=dict(PointCloud2.__annotations__), __module__=PointCloud2.__module__,
                  deserialize=classmethod(deserialize))

    return dataclasses.dataclass(types.new_class("PointCloud2", (IdlStruct,),
                                                 {"typename": PointCloud2.__idl_typename__}, body))


class DdsEndpoint:
    """The node's DDS side: one DomainParticipant with the detection and marker writers and, after
    :meth:`listen`, the PointCloud2 reader, whose thread hands every cloud to the node. :meth:`close` stops it and
    deletes the participant (with its readers and writers).

    Args:
        settings: the topics (``input_topic``, ``detections_topic``, ``markers_topic``, ROS 2 names).
        warn: where a sample that could not be read is reported (one line).
        domain: the DDS domain (default: :func:`domain_id` of the environment).

    Raises:
        InputError: a topic is not a ROS 2 name, ``ROS_DOMAIN_ID`` is not a domain id, or Cyclone cannot join the
            domain (its configuration, ``CYCLONEDDS_URI``, is wrong).
    """

    def __init__(self, settings: NodeSettings, warn: Callable[[str], None] = logger.warning,
                 domain: Optional[int] = None):
        from cyclonedds.core import DDSException
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.topic import Topic

        from . import messages

        names = [dds_topic(n) for n in (settings.input_topic, settings.detections_topic, settings.markers_topic)]
        self.topics = dict(zip(("input", "detections", "markers"), names))
        self.domain = domain_id() if domain is None else domain
        self.warn = warn
        try:
            self.participant = DomainParticipant(self.domain)
        except DDSException as e:
            raise InputError(f"Cyclone DDS could not join domain {self.domain} ({' '.join(str(e).split())}); check "
                             f"CYCLONEDDS_URI ({os.environ.get('CYCLONEDDS_URI') or 'unset'})") from e
        p = self.participant
        self.detections = DataWriter(p, Topic(p, names[1], messages.Detection3DArray), qos=output_qos())
        self.markers = DataWriter(p, Topic(p, names[2], messages.MarkerArray), qos=output_qos())
        self.reader = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    def publish_detections(self, header: dict, detections: list[dict]) -> None:
        from . import messages

        self.detections.write(detection_array_message(messages, header, detections))

    def publish_markers(self, markers: list[dict]) -> None:
        from . import messages

        self.markers.write(marker_array_message(messages, markers))

    def listen(self, on_cloud: Callable[[Any], None]) -> None:
        """Subscribe to the clouds: ``on_cloud`` gets each :class:`~pointfalip.ros2.messages.PointCloud2`, in a
        thread of its own."""
        from cyclonedds.core import GuardCondition, InstanceState, ReadCondition, SampleState, ViewState, WaitSet
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        p = self.participant
        self.reader = DataReader(p, Topic(p, self.topics["input"], cloud_reader_type()), qos=cloud_qos())
        new = ReadCondition(self.reader, SampleState.NotRead | ViewState.Any | InstanceState.Any)
        self._wake = GuardCondition(p)
        waitset = WaitSet(p)
        waitset.attach(new)
        waitset.attach(self._wake)
        self._thread = threading.Thread(target=self._receive, args=(waitset, new, on_cloud), name="pointfalip-dds",
                                        daemon=True)
        self._thread.start()

    def _receive(self, waitset: Any, new: Any, on_cloud: Callable[[Any], None]) -> None:
        from cyclonedds.util import duration

        while not self._stopping.is_set():
            waitset.wait(duration(seconds=_WAKE_S))
            while not self._stopping.is_set():
                try:
                    samples = self.reader.take(N=1, condition=new)
                except Exception as e:  # noqa: BLE001 - a sample Cyclone cannot read must not stop the node
                    self.warn(f"a PointCloud2 sample could not be read ({' '.join(str(e).split())}); skipped")
                    continue
                if not samples:
                    break
                if not samples[0].sample_info.valid_data:  # a writer left or disposed: no message
                    continue
                try:
                    on_cloud(samples[0])
                except Exception as e:  # noqa: BLE001 - one message must not stop the subscription
                    logger.exception("a PointCloud2 message failed")
                    self.warn(f"a PointCloud2 message failed ({' '.join(str(e).split())}); skipped")

    def close(self) -> None:
        """Stop receiving and leave the domain (the participant, its readers and writers are deleted)."""
        self._stopping.set()
        if self._thread is not None:
            self._wake.set(True)
            self._thread.join(timeout=5.0)
            self._thread = self._wake = None
        self.reader = self.detections = self.markers = None
        self.participant = None  # the last reference: Cyclone deletes it and its children


def serve(settings: NodeSettings, *, stop: threading.Event, model: Any = None,
          info: Callable[[str], None] = logger.info, warn: Callable[[str], None] = logger.warning) -> int:
    """Run the node over DDS until ``stop`` is set; the number of frames it answered."""
    endpoint = DdsEndpoint(settings, warn=warn)  # names, domain and network checked before the model loads
    loop: Optional[NodeLoop] = None
    try:
        scene = build_scene_recognizer(settings, model=model)
        labels = list(scene.recognizer.labels)
        sink = MessageSink(endpoint.publish_detections, endpoint.publish_markers, labels)
        loop = NodeLoop(scene, [sink], warn=warn, info=info)
        endpoint.listen(loop.push)
        info(f"recognising {len(labels)} labels on {endpoint.topics['input']} (DDS domain {endpoint.domain}); "
             f"publishing {endpoint.topics['detections']} and {endpoint.topics['markers']}; tracking "
             f"{'on' if settings.track else 'off'}")
        while not stop.wait(_WAKE_S):
            pass
    finally:
        if loop is not None:
            loop.stop(timeout=5.0)  # the frames taken are answered; later clouds are ignored
        endpoint.close()
    return loop.processed
