"""``python -m pointfalip.ros2 [--ros-args ...]``: the rclpy node (see :mod:`pointfalip.ros2.rclpy_node`)."""
import sys

from .rclpy_node import main

sys.exit(main())
