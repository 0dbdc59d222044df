"""The static transforms a RealSense driver publishes on ``/tf_static``, for the synthetic rig's depth pose.

Why: on a real rig the RGB-depth extrinsics are not unknown. The realsense2_camera ROS 2 driver publishes
the factory calibration between its depth and colour streams as a small static tree (tf2 convention:
``header.frame_id`` = parent, ``child_frame_id`` = child, the transform is the child's pose in the parent)::

    camera_link -> camera_depth_frame -> camera_depth_optical_frame
    camera_link -> camera_color_frame -> camera_color_optical_frame

``camera_link`` coincides with ``camera_depth_frame``; the ``*_frame`` body frames are x forward, y left,
z up; the ``*_optical_frame`` frames are x right, y down, z forward (the camera_info frames). ``nmr synth``
writes the same tree, so `nmr calibrate` reads the depth pose the way it reads it from a real bag (through
a chain of four transforms, two of them the fixed optical rotation). The value is the synthetic rig's TRUE
depth pose: a RealSense's factory extrinsics are good to a fraction of a millimetre and of a degree,
much better than anything estimated from the scene here.
"""

from __future__ import annotations

import numpy as np

from nmr.geometry.pose import Pose, matrix_to_quaternion

#: ``body_from_optical``: the optical frame's axes (x right, y down, z forward) in the body frame (x forward,
#: y left, z up). Its quaternion is (-0.5, 0.5, -0.5, 0.5), the one realsense2_camera publishes.
BODY_FROM_OPTICAL = Pose(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), np.zeros(3))

Transform = tuple[str, str, tuple[float, float, float], tuple[float, float, float, float]]


def body_frame(optical_frame: str) -> str:
    """``camera_color_optical_frame`` -> ``camera_color_frame`` (realsense2_camera's naming)."""
    return optical_frame.replace('_optical_frame', '_frame') if optical_frame.endswith('_optical_frame') \
        else optical_frame + '_body'


def _transform(parent: str, child: str, pose: Pose) -> Transform:
    t = tuple(float(v) for v in pose.t)
    return parent, child, (t[0], t[1], t[2]), matrix_to_quaternion(pose.R)


def realsense_transforms(color_optical: str, depth_optical: str, rgb_from_depth: Pose,
                         base: str = 'camera_link') -> list[Transform]:
    """The four transforms of the RealSense tree for a depth camera at ``rgb_from_depth`` (``T_rgb_depth``,
    the rig file's direction) from the colour camera; frame names from the camera_info frame ids."""
    color_body, depth_body = body_frame(color_optical), body_frame(depth_optical)
    # base = depth body frame; colour body in it: body_from_optical @ depth_from_rgb @ optical_from_body
    link_from_color_body = BODY_FROM_OPTICAL @ rgb_from_depth.inverse() @ BODY_FROM_OPTICAL.inverse()
    return [
        _transform(base, depth_body, Pose.identity()),
        _transform(depth_body, depth_optical, BODY_FROM_OPTICAL),
        _transform(base, color_body, link_from_color_body),
        _transform(color_body, color_optical, BODY_FROM_OPTICAL),
    ]
