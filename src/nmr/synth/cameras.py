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

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from nmr.geometry.camera import CameraModel, cached_rays, fold_radius
from nmr.geometry.pose import Pose, rotvec_to_matrix, rpy_deg_to_matrix


def rotation_xyz(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """``Rx(roll) @ Ry(pitch) @ Rz(yaw)`` (degrees, about the optical axes x, y, z)."""
    return rpy_deg_to_matrix(roll_deg, pitch_deg, yaw_deg)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with plumb-bob distortion (``dist``, default none) mounted on the rig."""

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
    dist: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # plumb_bob k1 k2 p1 p2 k3

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the standard name)
        """3x3 intrinsic matrix (OpenCV / ROS convention)."""
        return self.model.K

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
        """The camera as the geometry layer sees it (intrinsics, distortion, size)."""
        return CameraModel(self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.dist)

    @property
    def pose(self) -> Pose:
        """``T_ref_cam`` (= ``rgb_from_cam``, the rig file's direction)."""
        return Pose(self.R_ref_cam, self.t_ref_cam)

    def rays(self) -> np.ndarray:
        """``HxWx3`` float32 ray directions in the camera frame with z = 1 (so ray parameter = depth)."""
        return self.model.pixel_rays()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(u, v, z)`` of camera-frame points ``...x3`` (u, v undefined where z <= 0).

        With distortion, points beyond the radius where the plumb-bob polynomial stops growing get NaN:
        past it the polynomial folds far-off points back into the image, which the lens never does.
        """
        z = points[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            x = points[..., 0] / z
            y = points[..., 1] / z
            if any(self.dist):
                far = x * x + y * y > fold_radius(self.dist) ** 2
                x, y = self.model.distort_normalized(x, y)
                x = np.where(far, np.nan, x)
            u = self.fx * x + self.cx
            v = self.fy * y + self.cy
        return u, v, z

    def ray_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per column the min/max undistorted ray x, per row the min/max ray y (for conservative
        screen rectangles of a distorted camera, :func:`nmr.synth.render.screen_rect`)."""
        return _ray_bounds(self.model)


@functools.lru_cache(maxsize=16)
def _ray_bounds(model: CameraModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rays = cached_rays(model)
    return (
        np.nanmin(rays[..., 0], axis=0),
        np.nanmax(rays[..., 0], axis=0),
        np.nanmin(rays[..., 1], axis=1),
        np.nanmax(rays[..., 1], axis=1),
    )


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


@dataclass(frozen=True)
class DrawnRig:
    """A rig drawn by :func:`random_rig`: its true geometry plus what the drivers would publish.

    ``lwir_time_offset_s``: an LWIR frame stamped ``s`` was exposed at ``s + lwir_time_offset_s`` (the rig
    file's convention). ``info``: per camera the model its ``camera_info`` carries. RGB and depth publish
    their true intrinsics (RealSense factory calibration); the LWIR camera_info has the true distortion and
    principal point but a focal length off by ``lwir_info_focal_factor`` (a lab calibration made at
    another focus setting, or the datasheet's focal length): ``nmr calibrate --refine-intrinsics``
    recovers it.
    """

    rig: Rig
    lwir_time_offset_s: float
    lwir_info_focal_factor: float

    def info(self, name: str) -> CameraModel:
        cam = self.rig.cameras()[name]
        m = cam.model
        if name != 'lwir':
            return m
        f = self.lwir_info_focal_factor
        return CameraModel(m.width, m.height, m.fx * f, m.fy * f, m.cx, m.cy, m.dist)


def _random_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A baseline of 2-15 cm in a random direction (mostly sideways / vertical, as cameras are mounted
    side by side) and a rotation of 0.2-3 degrees about a random axis."""
    d = rng.normal(0.0, 1.0, 3) * np.array([1.0, 0.7, 0.3])
    t = d / np.linalg.norm(d) * rng.uniform(0.02, 0.15)
    axis = rng.normal(0.0, 1.0, 3)
    angle = math.radians(rng.uniform(0.2, 3.0))
    return rotvec_to_matrix(axis / np.linalg.norm(axis) * angle), t


def _random_camera(
    rng: np.random.Generator, name: str, frame_id: str, size: tuple[int, int], hfov_deg: tuple[float, float],
    k1: tuple[float, float], k2: tuple[float, float], p: float, pp_px: float,
) -> Camera:
    """A camera of the given size with a drawn field of view, principal point and distortion whose
    polynomial stays monotonic well past the image corners (redrawn until it does)."""
    w, h = size
    while True:
        fx = (w / 2) / math.tan(math.radians(rng.uniform(*hfov_deg)) / 2)
        fy = fx * rng.uniform(0.995, 1.005)
        cx = (w - 1) / 2 + rng.uniform(-pp_px, pp_px)
        cy = (h - 1) / 2 + rng.uniform(-pp_px, pp_px)
        dist = (float(rng.uniform(*k1)), float(rng.uniform(*k2)), float(rng.uniform(-p, p)),
                float(rng.uniform(-p, p)), 0.0)
        cam = Camera(name, w, h, fx, fy, cx, cy, frame_id, dist=dist)
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
        und = cam.model.undistort_points(corners)
        if np.all(np.isfinite(und)) and float(np.max(np.hypot(und[:, 0], und[:, 1]))) * 1.3 < fold_radius(dist):
            return cam


def random_rig(rig_seed: int, size_scale: float = 1.0) -> DrawnRig:
    """A rig drawn from ``rig_seed`` (``nmr synth --rig-seed``): the same sensors as :func:`default_rig`
    with drawn lenses (RGB 60-75 deg, LWIR 50-70 deg, depth 75-90 deg horizontal field of view, principal
    points off centre, distortion: LWIR barrel k1 -0.25..-0.02, RGB and depth mild), poses (baselines
    2-15 cm, rotations 0.2-3 deg), an LWIR time offset of -30..+30 ms and an LWIR camera_info focal length
    off by -3..+3 %. A pure function of ``rig_seed`` (not of the scene seed)."""
    rng = np.random.default_rng([int(rig_seed), 20_005])
    rgb = _random_camera(rng, 'rgb', 'camera_color_optical_frame', (640, 480), (60.0, 75.0),
                         (-0.08, 0.08), (-0.04, 0.04), 5e-4, 8.0)
    lwir = _random_camera(rng, 'lwir', 'flir_boson_optical_frame', (640, 512), (50.0, 70.0),
                          (-0.25, -0.02), (0.0, 0.08), 1e-3, 12.0)
    depth = _random_camera(rng, 'depth', 'camera_depth_optical_frame', (848, 480), (75.0, 90.0),
                           (-0.04, 0.04), (-0.02, 0.02), 3e-4, 6.0)
    R, t = _random_pose(rng)
    lwir = replace(lwir, R_ref_cam=R, t_ref_cam=t)
    R, t = _random_pose(rng)
    depth = replace(depth, R_ref_cam=R, t_ref_cam=t)
    offset = float(rng.uniform(-0.03, 0.03))
    focal = float(rng.uniform(0.97, 1.03))
    return DrawnRig(Rig(rgb, lwir, depth).scaled(size_scale), offset, focal)


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
