"""The rig's geometry: camera models with plumb-bob distortion, rigid poses, flow and depth through depth maps.

numpy (and OpenCV where it helps) only: no torch, no rclpy, so every layer above can use it.
"""

from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import Pose
from nmr.geometry.reproject import flow_through_depth, reproject_depth

__all__ = ['CameraModel', 'Pose', 'flow_through_depth', 'reproject_depth']
