"""Procedural road scenes: ground plane, buildings, vehicles, people, poles, moving over time.

Why analytic primitives: boxes, vertical cylinders and one ground plane can be ray cast exactly and fast
with numpy, and every surface point has an exact identity (object id + object-local coordinates), which
is what exact ground-truth flow needs. Objects are rigid: a point fixed in an object's frame moves with
the object's pose, so the same point can be found again at any other time and in any other camera.

World frame (ROS convention): x forward along the road, y left, z up; the ground is ``z = 0``. Lanes are
at ``y = -1.75`` (the rig's, traffic along +x) and ``y = +1.75`` (oncoming), parking strips up to
``|y| = 5.7``, curbs, sidewalks to ``|y| = 8.3``, buildings beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

BOX = 0
CYLINDER = 1  # axis = the primitive's local z

# texture codes (see nmr.synth.shading)
TEX_PLAIN = 0
TEX_GROUND = 1
TEX_FACADE = 2
TEX_ENGINE = 3
TEX_CABIN = 4
TEX_SKIN = 5
TEX_CLOTH = 6

GROUND_ID = 0

LANE_Y = 1.75
ROAD_HALF = 3.5
CURB_Y = 5.7
SIDEWALK_Y = 8.3


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)


@dataclass
class Primitive:
    """A box (half extents ``size``) or a cylinder (``size = (r, r, half height)``, axis local z).

    ``center``/``rotation`` place it in its object's frame. The material fields drive the three
    modalities: ``albedo`` (linear RGB) the colour camera, ``temp_c`` and ``sun_gain`` (kelvin per unit
    of direct sun) the thermal camera, ``ir_return`` (0..1) the depth camera's chance of a valid return.
    """

    kind: int
    size: tuple[float, float, float]
    center: tuple[float, float, float]
    albedo: tuple[float, float, float]
    temp_c: float
    sun_gain: float = 6.0
    texture: int = TEX_PLAIN
    ir_return: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def local_corners(self) -> np.ndarray:
        """8x3 corners of the bounding box in the primitive frame (bit i of the index: sign of axis 2-i)."""
        return _SIGNS * np.array(self.size, dtype=np.float64)

    def corners(self) -> np.ndarray:
        """8x3 corners of the bounding box in the object frame."""
        return self.local_corners() @ self.rotation.T + np.array(self.center)


@dataclass
class SceneObject:
    """A rigid object moving at constant speed along its heading (yaw about world z)."""

    obj_id: int
    kind: str
    position: np.ndarray
    yaw: float
    speed: float
    primitives: list[Primitive]

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(R_world_obj, p_world_obj)`` at time ``t`` seconds."""
        heading = np.array([math.cos(self.yaw), math.sin(self.yaw), 0.0])
        return rot_z(self.yaw), self.position + self.speed * t * heading


#: base (x forward, y left, z up) <- optical (x right, y down, z forward)
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass
class RigMotion:
    """The rig drives along its lane, swaying a little sideways and bouncing in pitch (suspension).

    The rig reference (RGB optical centre) is at height ``height``; rotations change between frames, so
    stamps matter for the ground truth.
    """

    speed: float = 6.0
    height: float = 1.35
    lane_y: float = -LANE_Y
    sway_amp: float = 0.12
    sway_period: float = 7.0
    pitch_amp_deg: float = 0.3
    pitch_period: float = 1.1
    phase: float = 0.0
    # the speed varies by this fraction of ``speed`` (0: constant) with this period: without it a camera's
    # time offset is indistinguishable from a shift of that camera along the motion (nmr calibrate)
    speed_amp: float = 0.0
    speed_period: float = 6.0

    def base_pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(R_world_base, p_world_base)`` of the rig base at the reference camera's centre."""
        w = 2 * math.pi / self.sway_period
        y = self.lane_y + self.sway_amp * math.sin(w * t + self.phase)
        dy = self.sway_amp * w * math.cos(w * t + self.phase)
        x, vx = self.speed * t, self.speed
        if self.speed_amp:
            ws = 2 * math.pi / self.speed_period
            x += self.speed * self.speed_amp / ws * math.sin(ws * t)
            vx += self.speed * self.speed_amp * math.cos(ws * t)
        yaw = math.atan2(dy, vx)
        pitch = math.radians(self.pitch_amp_deg) * math.sin(2 * math.pi * t / self.pitch_period + self.phase)
        z = self.height + 0.01 * math.sin(2 * math.pi * t / self.pitch_period)
        return rot_z(yaw) @ rot_y(pitch), np.array([x, y, z])

    def camera_pose(
        self, R_ref_cam: np.ndarray, t_ref_cam: np.ndarray, t: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(R_world_cam, c_world)`` of a camera mounted at ``(R_ref_cam, t_ref_cam)`` at time ``t``."""
        R_wb, p = self.base_pose(t)
        R_wref = R_wb @ R_BASE_OPTICAL
        return R_wref @ R_ref_cam, p + R_wref @ t_ref_cam


@dataclass
class Scene:
    """Everything needed to render any camera at any time, fully determined by the seed."""

    seed: int
    objects: list[SceneObject]
    motion: RigMotion
    sun_dir: np.ndarray  # unit vector towards the sun (world)
    ambient_c: float
    sun_strength: float  # 0..1 (cloud cover)
    crosswalks: np.ndarray  # x positions of zebra crossings
    noise: np.ndarray  # 256x256 float32 value-noise tile in [-1, 1], for textures
    view_distance: float = 160.0
    by_id: dict[int, SceneObject] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {o.obj_id: o for o in self.objects}

    @property
    def max_id(self) -> int:
        return max([GROUND_ID, *self.by_id])

    def object_poses(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Poses of all objects by id at ``t``: ``(R[max_id+1,3,3], p[max_id+1,3])`` (ground: identity)."""
        n = self.max_id + 1
        R = np.tile(np.eye(3), (n, 1, 1))
        p = np.zeros((n, 3))
        for o in self.objects:
            R[o.obj_id], p[o.obj_id] = o.pose(t)
        return R, p


def _value_noise(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Tileable smooth noise in [-1, 1]: sum of octaves of bilinearly up-sampled random grids."""
    out = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for cells in (8, 16, 32, 64, 256):
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        grid = np.pad(grid, ((0, 1), (0, 1)), mode='wrap')
        up = cv2.resize(
            grid, (size * (cells + 1) // cells, size * (cells + 1) // cells), interpolation=cv2.INTER_CUBIC
        )
        out += amp * up[:size, :size]
        total += amp
        amp *= 0.6
    out /= total
    return (out / max(float(np.abs(out).max()), 1e-6)).astype(np.float32)


_CAR_COLOURS = [
    (0.6, 0.6, 0.62),
    (0.05, 0.05, 0.06),
    (0.75, 0.75, 0.78),
    (0.45, 0.04, 0.03),
    (0.05, 0.12, 0.35),
    (0.15, 0.17, 0.18),
    (0.7, 0.62, 0.2),
    (0.1, 0.3, 0.15),
    (0.85, 0.85, 0.85),
]
_CLOTH_COLOURS = [
    (0.05, 0.05, 0.08),
    (0.1, 0.15, 0.35),
    (0.5, 0.1, 0.08),
    (0.3, 0.3, 0.3),
    (0.55, 0.5, 0.4),
    (0.1, 0.3, 0.12),
    (0.7, 0.6, 0.2),
    (0.6, 0.6, 0.62),
]
_FACADE_COLOURS = [
    (0.55, 0.45, 0.35),
    (0.6, 0.58, 0.52),
    (0.4, 0.22, 0.16),
    (0.7, 0.66, 0.55),
    (0.35, 0.36, 0.38),
    (0.62, 0.5, 0.38),
    (0.5, 0.52, 0.55),
]


def _vehicle(rng: np.random.Generator, ambient: float, running: bool, van: bool) -> list[Primitive]:
    """A car or van along its local +x (front): body, engine block (warm when running), cabin, wheels."""
    length = rng.uniform(4.9, 5.6) if van else rng.uniform(3.9, 4.8)
    width = rng.uniform(1.9, 2.05) if van else rng.uniform(1.7, 1.88)
    colour = _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]
    ir = 0.25 if max(colour) < 0.1 else 0.9  # black paint returns little IR pattern
    engine_len = 1.0 if van else 1.15
    z0, z1 = 0.3, 1.05 if not van else 1.1
    hot = ambient + (rng.uniform(25, 40) if running else rng.uniform(0, 3))
    tyre = ambient + (rng.uniform(10, 18) if running else 1.0)
    body_len = length - engine_len
    prims = [
        Primitive(
            BOX,
            (body_len / 2, width / 2, (z1 - z0) / 2),
            (-length / 2 + body_len / 2, 0.0, (z0 + z1) / 2),
            colour,
            ambient + 1.0,
            7.0,
            TEX_PLAIN,
            ir,
        ),
        Primitive(
            BOX,
            (engine_len / 2, width / 2 - 0.01, (z1 - z0) / 2 - 0.02),
            (length / 2 - engine_len / 2, 0.0, (z0 + z1) / 2 - 0.02),
            colour,
            hot,
            7.0,
            TEX_ENGINE,
            ir,
        ),
    ]
    if van:
        cab_len, cab_top = body_len - 0.1, rng.uniform(2.0, 2.4)
        cab_x = -length / 2 + 0.05 + cab_len / 2
    else:
        cab_len, cab_top = rng.uniform(1.9, 2.5), z1 + rng.uniform(0.4, 0.55)
        cab_x = -length / 2 + body_len - cab_len / 2 - 0.15
    prims.append(
        Primitive(
            BOX,
            (cab_len / 2, width / 2 - 0.08, (cab_top - z1) / 2),
            (cab_x, 0.0, (z1 + cab_top) / 2),
            colour,
            ambient - 4.0,
            4.0,
            TEX_CABIN,
            ir,
        )
    )
    radius, half_w = 0.33, 0.11
    for fx in (length / 2 - 0.8, -length / 2 + 0.85):
        for side in (-1, 1):
            prims.append(
                Primitive(
                    CYLINDER,
                    (radius, radius, half_w),
                    (fx, side * (width / 2 - 0.06), radius),
                    (0.03, 0.03, 0.03),
                    tyre,
                    3.0,
                    TEX_PLAIN,
                    0.15,
                    rotation=rot_x(math.pi / 2),
                )
            )
    exhaust = ambient + (rng.uniform(50, 80) if running else 0.5)
    prims.append(
        Primitive(
            CYLINDER,
            (0.045, 0.045, 0.08),
            (-length / 2 - 0.03, -width / 4, 0.3),
            (0.2, 0.2, 0.2),
            exhaust,
            2.0,
            TEX_PLAIN,
            0.5,
            rotation=rot_y(math.pi / 2),
        )
    )
    return prims


def _person(rng: np.random.Generator, ambient: float) -> list[Primitive]:
    """Legs, torso and head as vertical cylinders: clothes warm, face and hands warmer."""
    s = rng.uniform(0.88, 1.1)
    cloth_t = ambient + 0.55 * (33.0 - ambient)
    trousers = _CLOTH_COLOURS[int(rng.integers(len(_CLOTH_COLOURS)))]
    jacket = _CLOTH_COLOURS[int(rng.integers(len(_CLOTH_COLOURS)))]
    skin = [(0.55, 0.38, 0.3), (0.35, 0.22, 0.15), (0.68, 0.52, 0.42)][int(rng.integers(3))]
    return [
        Primitive(
            CYLINDER,
            (0.15, 0.15, 0.43 * s),
            (0.0, 0.0, 0.43 * s),
            trousers,
            cloth_t - 1.0,
            2.0,
            TEX_CLOTH,
            0.8,
        ),
        Primitive(
            CYLINDER, (0.21, 0.21, 0.31 * s), (0.0, 0.0, 1.17 * s), jacket, cloth_t, 2.0, TEX_CLOTH, 0.8
        ),
        Primitive(CYLINDER, (0.105, 0.105, 0.13 * s), (0.0, 0.0, 1.62 * s), skin, 33.5, 0.5, TEX_SKIN, 0.9),
    ]


def _pole(rng: np.random.Generator, ambient: float, side: int) -> list[Primitive]:
    """A street-light pole with an arm reaching over the road."""
    h = rng.uniform(6.0, 8.0)
    grey = (0.35, 0.36, 0.37)
    arm = rng.uniform(1.2, 2.0)
    return [
        Primitive(CYLINDER, (0.07, 0.07, h / 2), (0.0, 0.0, h / 2), grey, ambient, 8.0, TEX_PLAIN, 0.9),
        Primitive(
            BOX, (0.06, arm / 2, 0.05), (0.0, -side * arm / 2, h - 0.05), grey, ambient, 8.0, TEX_PLAIN, 0.9
        ),
        Primitive(
            BOX,
            (0.25, 0.15, 0.06),
            (0.0, -side * arm, h - 0.12),
            (0.8, 0.8, 0.75),
            ambient + 6.0,
            3.0,
            TEX_PLAIN,
            0.9,
        ),
    ]


def generate_scene(seed: int, duration_s: float, motion: RigMotion | None = None) -> Scene:
    """A random street for ``seed``, long enough for the rig to drive ``duration_s`` seconds."""
    rng = np.random.default_rng(seed)
    if motion is None:
        motion = RigMotion(speed=float(rng.uniform(4.5, 7.5)), phase=float(rng.uniform(0, 2 * math.pi)))
    ambient = float(rng.uniform(8, 24))
    elev = math.radians(rng.uniform(20, 55))
    azim = rng.uniform(-math.pi, math.pi)
    sun = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
    view = 160.0
    x_lo, x_hi = -25.0, motion.speed * duration_s + view
    objects: list[SceneObject] = []

    def add(
        kind: str, pos: tuple[float, float, float], yaw: float, speed: float, prims: list[Primitive]
    ) -> None:
        objects.append(
            SceneObject(len(objects) + 1, kind, np.array(pos, dtype=np.float64), yaw, speed, prims)
        )

    concrete = (0.5, 0.49, 0.46)
    for side in (-1, 1):
        # curb: one long low box per side
        half = (x_hi - x_lo) / 2
        add(
            'curb',
            ((x_lo + x_hi) / 2, side * (CURB_Y + 0.1), 0.0),
            0.0,
            0.0,
            [Primitive(BOX, (half, 0.12, 0.14), (0.0, 0.0, 0.0), concrete, ambient + 1, 8.0, TEX_PLAIN, 1.0)],
        )
        # buildings
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            length = rng.uniform(8, 26)
            depth = rng.uniform(8, 16)
            height = rng.uniform(5, 24)
            setback = SIDEWALK_Y + rng.uniform(0.0, 1.5)
            colour = _FACADE_COLOURS[int(rng.integers(len(_FACADE_COLOURS)))]
            add(
                'building',
                (x + length / 2, side * (setback + depth / 2), 0.0),
                0.0,
                0.0,
                [
                    Primitive(
                        BOX,
                        (length / 2, depth / 2, height / 2),
                        (0.0, 0.0, height / 2),
                        colour,
                        ambient + rng.uniform(1, 5),
                        6.0,
                        TEX_FACADE,
                        0.95,
                    )
                ],
            )
            x += length + (rng.uniform(1, 7) if rng.random() < 0.6 else 0.2)
        # poles
        x = x_lo + rng.uniform(0, 15)
        while x < x_hi:
            add('pole', (x, side * (CURB_Y + 0.45), 0.0), 0.0, 0.0, _pole(rng, ambient, side))
            x += rng.uniform(16, 30)
        # parked cars, in the parking strip, some gaps
        x = x_lo + rng.uniform(0, 8)
        while x < x_hi:
            if rng.random() < 0.7:
                van = rng.random() < 0.2
                yaw = 0.0 if side < 0 else math.pi
                add(
                    'vehicle',
                    (x, side * 4.6, 0.0),
                    yaw + rng.uniform(-0.03, 0.03),
                    0.0,
                    _vehicle(rng, ambient, running=False, van=van),
                )
            x += rng.uniform(5.5, 9.0)
        # pedestrians on the sidewalk, walking or standing
        for _ in range(int(rng.integers(5, 11))):
            px = rng.uniform(motion.speed * 0.0 + 3, x_hi - 60)
            walking = rng.random() < 0.75
            yaw = (0.0 if rng.random() < 0.5 else math.pi) if walking else rng.uniform(-math.pi, math.pi)
            add(
                'person',
                (px, side * rng.uniform(6.3, 7.9), 0.0),
                yaw,
                rng.uniform(0.8, 1.6) if walking else 0.0,
                _person(rng, ambient),
            )
        # bins
        for _ in range(int(rng.integers(1, 4))):
            add(
                'bin',
                (rng.uniform(0, x_hi - 60), side * (CURB_Y + 0.7), 0.0),
                0.0,
                0.0,
                [
                    Primitive(
                        CYLINDER,
                        (0.3, 0.3, 0.5),
                        (0.0, 0.0, 0.5),
                        (0.1, 0.25, 0.12),
                        ambient + 0.5,
                        5.0,
                        TEX_PLAIN,
                        0.9,
                    )
                ],
            )
    # traffic ahead in the rig's lane (faster than the rig, so never hit) and oncoming
    for _ in range(int(rng.integers(1, 3))):
        add(
            'vehicle',
            (rng.uniform(10, 45), -LANE_Y + rng.uniform(-0.2, 0.2), 0.0),
            0.0,
            motion.speed + rng.uniform(1.0, 4.0),
            _vehicle(rng, ambient, running=True, van=rng.random() < 0.25),
        )
    for _ in range(int(rng.integers(2, 5))):
        speed = rng.uniform(6.0, 12.0)
        add(
            'vehicle',
            (rng.uniform(8, x_hi - view + speed * duration_s + 50), LANE_Y + rng.uniform(-0.2, 0.2), 0.0),
            math.pi,
            speed,
            _vehicle(rng, ambient, running=True, van=rng.random() < 0.25),
        )
    # someone crossing the road well ahead of the rig
    if rng.random() < 0.8:
        cx = motion.speed * duration_s + rng.uniform(12, 30)
        add(
            'person',
            (cx, rng.uniform(-4, 4), 0.0),
            math.pi / 2 * (1 if rng.random() < 0.5 else -1),
            rng.uniform(1.0, 1.5),
            _person(rng, ambient),
        )
    crosswalks = np.array([motion.speed * duration_s + rng.uniform(15, 40)])
    return Scene(
        seed=seed,
        objects=objects,
        motion=motion,
        sun_dir=sun,
        ambient_c=ambient,
        sun_strength=float(rng.uniform(0.5, 1.0)),
        crosswalks=crosswalks,
        noise=_value_noise(rng),
        view_distance=view,
    )
