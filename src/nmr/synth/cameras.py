"""The synthetic rig: three pinhole cameras (RGB, LWIR, depth) with their own intrinsics, sizes and poses.

Why three different cameras: on a real rig the cameras sit a few centimetres apart, point in slightly
different directions and have different lenses and sensors, so after calibration and resizing there is
still a residual, depth-dependent misalignment (parallax). Reproducing exactly that is the point of the
synthetic rig.

Frames: the rig reference is the RGB camera's optical frame (x right, y down, z forward). Each camera's
pose is ``R_ref_cam`` (its axes expressed in the reference frame) and ``t_ref_cam`` (its centre in the
reference frame, metres). Pixel ``(x, y)`` is the centre of column x, row y, as in OpenCV, ROS
``camera_info`` and the SPEC flow convention: ``u = fx * X / Z + cx``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import Pose, rpy_deg_to_matrix


def rotation_xyz(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """``Rx(roll) @ Ry(pitch) @ Rz(yaw)`` (degrees, about the optical axes x, y, z)."""
    return rpy_deg_to_matrix(roll_deg, pitch_deg, yaw_deg)


@dataclass(frozen=True)
class Camera:
    """A distortion-free pinhole camera mounted on the rig."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    frame_id: str
    R_ref_cam: np.ndarray = field(default_factory=lambda: np.eye(3))
    t_ref_cam: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the standard name)
        """3x3 intrinsic matrix (OpenCV / ROS convention)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def scaled(self, factor: float) -> Camera:
        """The same lens on a sensor resized by ``factor`` (pixel centres stay consistent)."""
        if factor == 1.0:
            return self
        w = max(8, round(self.width * factor))
        h = max(8, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return replace(
            self,
            width=w,
            height=h,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    @property
    def model(self) -> CameraModel:
        """The camera as the geometry layer sees it (no distortion: the synthetic lenses are ideal)."""
        return CameraModel(self.width, self.height, self.fx, self.fy, self.cx, self.cy)

    @property
    def pose(self) -> Pose:
        """``T_ref_cam`` (= ``rgb_from_cam``, the rig file's direction)."""
        return Pose(self.R_ref_cam, self.t_ref_cam)

    def rays(self) -> np.ndarray:
        """``HxWx3`` float32 ray directions in the camera frame with z = 1 (so ray parameter = depth)."""
        return self.model.pixel_rays()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(u, v, z)`` of camera-frame points ``...x3`` (u, v undefined where z <= 0)."""
        z = points[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            u = self.fx * points[..., 0] / z + self.cx
            v = self.fy * points[..., 1] / z + self.cy
        return u, v, z


@dataclass(frozen=True)
class Rig:
    """The three cameras; ``rgb`` is the reference (moving image of both pairs)."""

    rgb: Camera
    lwir: Camera
    depth: Camera

    def cameras(self) -> dict[str, Camera]:
        return {'rgb': self.rgb, 'lwir': self.lwir, 'depth': self.depth}

    def scaled(self, factor: float) -> Rig:
        return Rig(self.rgb.scaled(factor), self.lwir.scaled(factor), self.depth.scaled(factor))


def default_rig(size_scale: float = 1.0) -> Rig:
    """Realistic sizes and lenses, coarsely pre-aligned (similar fields of view), a few cm apart.

    - RGB 640x480, ~69 deg horizontal field of view (RealSense-like colour camera), the reference.
    - LWIR 640x512 (FLIR Boson 640), ~67 deg: a little narrower than the RGB, 6 cm to the right and
      4 cm above it, rotated by under a degree, principal point off centre.
    - Depth 848x480 (RealSense depth stream), ~77 deg x 47 deg: its aspect ratio differs from the RGB's,
      so after resizing to a common grid a linear residual remains; 3.5 cm to the left.
    """
    rgb = Camera('rgb', 640, 480, 466.0, 466.0, 319.5, 239.5, 'camera_color_optical_frame')
    lwir = Camera(
        'lwir',
        640,
        512,
        480.0,
        480.0,
        323.0,
        252.5,
        'flir_boson_optical_frame',
        R_ref_cam=rotation_xyz(0.6, -0.8, 0.3),
        t_ref_cam=np.array([0.06, -0.04, 0.01]),
    )
    depth = Camera(
        'depth',
        848,
        480,
        545.0,
        545.0,
        421.0,
        241.0,
        'camera_depth_optical_frame',
        R_ref_cam=rotation_xyz(-0.3, 0.5, -0.2),
        t_ref_cam=np.array([-0.035, 0.004, 0.0]),
    )
    return Rig(rgb, lwir, depth).scaled(size_scale)
