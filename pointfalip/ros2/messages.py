"""The ROS 2 messages the node reads and writes, as Cyclone DDS types: the one place they are defined.

Each class mirrors its ``.msg`` definition field by field, in order, with the same types (``sensor_msgs`` and
``visualization_msgs`` of ros2/common_interfaces, Humble and Jazzy alike; ``vision_msgs`` 4.x of
ros-perception/vision_msgs, the release in Humble and Jazzy), under the DDS type name ROS 2 gives it
(``<package>::msg::dds_::<Name>_``). Final structs without optional members: Cyclone writes them as XCDR1
(plain CDR), which is what ROS 2's middlewares put on the wire. The classes carry the fields' defaults of ROS
(zeros, empty strings and sequences, the identity quaternion), so that a message is built from the fields it sets.

Importing this module needs ``cyclonedds`` (``pip install 'pointfalip[ros2]'``). The classes are named as in ROS,
so :func:`pointfalip.ros2.detection_array_message` and :func:`pointfalip.ros2.marker_array_message` build them
exactly as they build rclpy's.
"""

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import array, float32, float64, int32, sequence, uint8, uint32

__all__ = [
    "BoundingBox3D", "ColorRGBA", "CompressedImage", "Detection3D", "Detection3DArray", "Duration", "Header",
    "Marker", "MarkerArray", "MeshFile", "ObjectHypothesis", "ObjectHypothesisWithPose", "Point", "PointCloud2",
    "PointField", "Pose", "PoseWithCovariance", "Quaternion", "Time", "UVCoordinate", "Vector3", "ros_type_name",
]

_COVARIANCE_SIZE = 36  # geometry_msgs/PoseWithCovariance: a row-major 6x6 matrix


def ros_type_name(cls: type) -> str:
    """The ROS 2 name of a message class (``sensor_msgs/msg/PointCloud2``), read from its DDS type name."""
    package, _, _, name = cls.__idl_typename__.split("::")
    return f"{package}/msg/{name.rstrip('_')}"


# ---- builtin_interfaces, std_msgs ----------------------------------------------------------------------
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Duration(IdlStruct, typename="builtin_interfaces::msg::dds_::Duration_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class ColorRGBA(IdlStruct, typename="std_msgs::msg::dds_::ColorRGBA_"):
    r: float32 = 0.0
    g: float32 = 0.0
    b: float32 = 0.0
    a: float32 = 0.0


# ---- geometry_msgs -----------------------------------------------------------------------------------
@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Pose(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseWithCovariance(IdlStruct, typename="geometry_msgs::msg::dds_::PoseWithCovariance_"):
    pose: Pose = field(default_factory=Pose)
    covariance: array[float64, _COVARIANCE_SIZE] = field(default_factory=lambda: [0.0] * _COVARIANCE_SIZE)


# ---- sensor_msgs -------------------------------------------------------------------------------------
@dataclass
class PointField(IdlStruct, typename="sensor_msgs::msg::dds_::PointField_"):
    name: str = ""
    offset: uint32 = 0
    datatype: uint8 = 0  # 1 INT8, 2 UINT8, 3 INT16, 4 UINT16, 5 INT32, 6 UINT32, 7 FLOAT32, 8 FLOAT64
    count: uint32 = 0


@dataclass
class PointCloud2(IdlStruct, typename="sensor_msgs::msg::dds_::PointCloud2_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    fields: sequence[PointField] = field(default_factory=list)
    is_bigendian: bool = False
    point_step: uint32 = 0
    row_step: uint32 = 0
    data: sequence[uint8] = field(default_factory=list)
    is_dense: bool = False


@dataclass
class CompressedImage(IdlStruct, typename="sensor_msgs::msg::dds_::CompressedImage_"):
    header: Header = field(default_factory=Header)
    format: str = ""
    data: sequence[uint8] = field(default_factory=list)


# ---- vision_msgs 4.x ---------------------------------------------------------------------------------
@dataclass
class ObjectHypothesis(IdlStruct, typename="vision_msgs::msg::dds_::ObjectHypothesis_"):
    class_id: str = ""
    score: float64 = 0.0


@dataclass
class ObjectHypothesisWithPose(IdlStruct, typename="vision_msgs::msg::dds_::ObjectHypothesisWithPose_"):
    hypothesis: ObjectHypothesis = field(default_factory=ObjectHypothesis)
    pose: PoseWithCovariance = field(default_factory=PoseWithCovariance)


@dataclass
class BoundingBox3D(IdlStruct, typename="vision_msgs::msg::dds_::BoundingBox3D_"):
    center: Pose = field(default_factory=Pose)
    size: Vector3 = field(default_factory=Vector3)


@dataclass
class Detection3D(IdlStruct, typename="vision_msgs::msg::dds_::Detection3D_"):
    header: Header = field(default_factory=Header)
    results: sequence[ObjectHypothesisWithPose] = field(default_factory=list)
    bbox: BoundingBox3D = field(default_factory=BoundingBox3D)
    id: str = ""


@dataclass
class Detection3DArray(IdlStruct, typename="vision_msgs::msg::dds_::Detection3DArray_"):
    header: Header = field(default_factory=Header)
    detections: sequence[Detection3D] = field(default_factory=list)


# ---- visualization_msgs ------------------------------------------------------------------------------
@dataclass
class UVCoordinate(IdlStruct, typename="visualization_msgs::msg::dds_::UVCoordinate_"):
    u: float32 = 0.0
    v: float32 = 0.0


@dataclass
class MeshFile(IdlStruct, typename="visualization_msgs::msg::dds_::MeshFile_"):
    filename: str = ""
    data: sequence[uint8] = field(default_factory=list)


@dataclass
class Marker(IdlStruct, typename="visualization_msgs::msg::dds_::Marker_"):
    header: Header = field(default_factory=Header)
    ns: str = ""
    id: int32 = 0
    type: int32 = 0
    action: int32 = 0
    pose: Pose = field(default_factory=Pose)
    scale: Vector3 = field(default_factory=Vector3)
    color: ColorRGBA = field(default_factory=ColorRGBA)
    lifetime: Duration = field(default_factory=Duration)
    frame_locked: bool = False
    points: sequence[Point] = field(default_factory=list)
    colors: sequence[ColorRGBA] = field(default_factory=list)
    texture_resource: str = ""
    texture: CompressedImage = field(default_factory=CompressedImage)
    uv_coordinates: sequence[UVCoordinate] = field(default_factory=list)
    text: str = ""
    mesh_resource: str = ""
    mesh_file: MeshFile = field(default_factory=MeshFile)
    mesh_use_embedded_materials: bool = False


@dataclass
class MarkerArray(IdlStruct, typename="visualization_msgs::msg::dds_::MarkerArray_"):
    markers: sequence[Marker] = field(default_factory=list)
