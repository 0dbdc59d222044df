"""A rigid transform ``X_a = R @ X_b + t`` between two camera frames.

Naming: ``a_from_b`` (or ``T_a_b``) maps points given in frame b into frame a; equivalently it is frame b's
pose in frame a: ``R`` holds b's axes as columns expressed in a, ``t`` is b's origin in a. The rig file
stores each camera's ``T_rgb_cam``, which is therefore ``rgb_from_cam``: exactly the ``moving_from_fixed``
that :func:`nmr.geometry.reproject.flow_through_depth` needs when the RGB camera is the moving one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: how far from orthonormal (max |R^T R - I|) a rotation matrix may be
ORTHO_TOL = 1e-6


def rotvec_to_matrix(rotvec: Sequence[float] | np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (axis * angle, radians) -> 3x3 rotation matrix (float64)."""
    r = np.asarray(rotvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    kx, ky, kz = r
    Kx = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    if theta < 1e-8:  # series: sin(t)/t -> 1, (1-cos t)/t^2 -> 1/2
        return np.eye(3) + Kx + 0.5 * Kx @ Kx
    return np.eye(3) + math.sin(theta) / theta * Kx + (1.0 - math.cos(theta)) / theta**2 * Kx @ Kx


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rotvec_to_matrix`, angle in ``[0, pi]`` (robust near 0 and near pi)."""
    R = np.asarray(R, dtype=np.float64)
    cos = float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])  # 2 sin(theta) * axis
    sin = 0.5 * float(np.linalg.norm(w))
    theta = math.atan2(sin, cos)
    if theta < 1e-8:
        return 0.5 * w
    if math.pi - theta > 1e-4:
        return w * (theta / (2.0 * sin))
    # near pi: the axis from the symmetric part R + I = 2 a a^T (+ O(sin))
    B = (R + np.eye(3)) / 2.0
    i = int(np.argmax(np.diag(B)))
    axis = B[:, i] / math.sqrt(max(B[i, i], 1e-300))
    if np.dot(axis, w) < 0:
        axis = -axis
    return axis / np.linalg.norm(axis) * theta


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """A unit quaternion ``(x, y, z, w)`` (ROS ``geometry_msgs/Quaternion`` order) -> 3x3 rotation matrix.

    The quaternion is normalised first (messages carry float64 values that are unit only to rounding);
    ValueError for a zero or non-finite one."""
    q = np.array([x, y, z, w], dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f'quaternion {q.tolist()} is zero or not finite')
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """The inverse of :func:`quaternion_to_matrix`: ``(x, y, z, w)`` with ``w >= 0``."""
    rv = matrix_to_rotvec(R)
    theta = float(np.linalg.norm(rv))
    axis = rv / theta if theta > 0 else np.zeros(3)
    s = math.sin(theta / 2)
    return (float(axis[0] * s), float(axis[1] * s), float(axis[2] * s), math.cos(theta / 2))


def rpy_deg_to_matrix(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """``Rx(roll) @ Ry(pitch) @ Rz(yaw)``, degrees about the camera's x, y, z axes (the synth's convention)."""
    a, b, c = (math.radians(v) for v in (roll_deg, pitch_deg, yaw_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def rotation_problem(R: np.ndarray) -> str | None:
    """Why ``R`` is not a rotation matrix (one line), or None when it is one."""
    R = np.asarray(R)
    if R.shape != (3, 3):
        return f'shape {R.shape}, expected 3x3'
    if not np.all(np.isfinite(R)):
        return 'has non-finite entries'
    err = float(np.max(np.abs(R.T @ R - np.eye(3))))
    if err > ORTHO_TOL:
        return f'not orthonormal (max |R^T R - I| = {err:.3g})'
    if np.linalg.det(R) <= 0:
        return 'a reflection (det -1), not a rotation'
    return None


@dataclass(frozen=True, eq=False)
class Pose:
    """``a_from_b``: ``apply(X_b) = R @ X_b + t``. Immutable; R and t are read-only float64 copies."""

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        R = np.array(self.R, dtype=np.float64)
        t = np.array(self.t, dtype=np.float64).reshape(-1)
        problem = rotation_problem(R)
        if problem is not None:
            raise ValueError(f'Pose.R: {problem}')
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise ValueError(f'Pose.t: expected 3 finite numbers, got {np.asarray(self.t).tolist()}')
        R.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, 'R', R)
        object.__setattr__(self, 't', t)

    @classmethod
    def identity(cls) -> Pose:
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_rotvec(cls, rotvec: Sequence[float] | np.ndarray, t: Sequence[float] | np.ndarray = (0, 0, 0)) -> Pose:
        """Rotation vector (axis * angle, radians) and translation (metres)."""
        return cls(rotvec_to_matrix(rotvec), np.asarray(t, dtype=np.float64))

    @classmethod
    def from_rpy_deg(
        cls, roll_deg: float, pitch_deg: float, yaw_deg: float, t: Sequence[float] | np.ndarray = (0, 0, 0)
    ) -> Pose:
        """``R = Rx(roll) @ Ry(pitch) @ Rz(yaw)`` (degrees, camera axes) and translation (metres)."""
        return cls(rpy_deg_to_matrix(roll_deg, pitch_deg, yaw_deg), np.asarray(t, dtype=np.float64))

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> Pose:
        """From a 4x4 homogeneous matrix."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f'Pose.from_matrix: expected 4x4, got {T.shape}')
        return cls(T[:3, :3], T[:3, 3])

    def rotvec(self) -> np.ndarray:
        """The rotation as a rotation vector (radians, angle in [0, pi])."""
        return matrix_to_rotvec(self.R)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.t
        return T

    def compose(self, other: Pose) -> Pose:
        """``self ∘ other``: with ``self = a_from_b`` and ``other = b_from_c``, returns ``a_from_c``."""
        return Pose(self.R @ other.R, self.R @ other.t + self.t)

    def __matmul__(self, other: Pose) -> Pose:
        return self.compose(other)

    def inverse(self) -> Pose:
        """``b_from_a`` of ``a_from_b``."""
        return Pose(self.R.T, -(self.R.T @ self.t))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform ``(..., 3)`` points; float32 input stays float32 (for whole images)."""
        p = np.asarray(points)
        if p.shape[-1:] != (3,):
            raise ValueError(f'Pose.apply: points must have shape (..., 3), got {p.shape}')
        dtype = np.float32 if p.dtype == np.float32 else np.float64
        return (p @ self.R.T.astype(dtype) + self.t.astype(dtype)).astype(dtype, copy=False)

    def angle_deg(self) -> float:
        """The rotation angle in degrees."""
        return math.degrees(float(np.linalg.norm(self.rotvec())))

    def allclose(self, other: Pose, rtol: float = 0.0, atol: float = 1e-9) -> bool:
        return bool(np.allclose(self.R, other.R, rtol, atol) and np.allclose(self.t, other.t, rtol, atol))

    def __repr__(self) -> str:
        r = np.round(self.rotvec(), 6).tolist()
        return f'Pose(rotvec={r}, t={np.round(self.t, 6).tolist()})'
