"""Vectorised ray casting of a scene into one camera: depth, surface identity and normals per pixel.

Why this shape: each primitive is intersected only with the rays inside its projected bounding rectangle
(the box clipped to the near plane, then projected), in its own local frame, as whole numpy arrays. Ray
directions have z = 1 in the camera frame, so the ray parameter of a hit is the camera depth directly,
and all rays start at the camera centre, so the local ray origin is one vector per primitive. No
per-pixel Python loops; a few dozen array passes over small rectangles per frame.

Every visible pixel gets its surface identity: object id and the hit point in that object's frame,
which is what ``nmr.synth.groundtruth`` moves to another time and projects into another camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nmr.synth.cameras import Camera
from nmr.synth.scene import BOX, GROUND_ID, TEX_GROUND, Primitive, Scene

NEAR = 0.05
GROUND_MAX_DEPTH = 400.0
SKY = -1


@dataclass
class FramePrimitives:
    """All primitives near the camera at one time, posed in the world, index 0 = the ground."""

    prims: list[Primitive]
    obj_ids: np.ndarray  # P int32
    R_wp: np.ndarray  # P x 3 x 3 world <- primitive
    p_wp: np.ndarray  # P x 3 primitive centre (world)
    R_op: np.ndarray  # P x 3 x 3 object <- primitive
    t_op: np.ndarray  # P x 3 primitive centre (object frame)

    def table(self, name: str, default: float | tuple[float, ...] = 0.0) -> np.ndarray:
        """A per-primitive material property as an array (index 0 = ground gets ``default``)."""
        values = [default] + [getattr(p, name) for p in self.prims[1:]]
        return np.asarray(values, dtype=np.float32)


@dataclass
class Geometry:
    """One camera's view: per-pixel surface identity. Sky pixels: depth inf, prim/obj = -1."""

    camera: Camera
    t: float
    R_wc: np.ndarray  # world <- camera
    c: np.ndarray  # camera centre (world, float64)
    depth: np.ndarray  # HxW float32 metres along the optical axis, inf = no surface
    prim: np.ndarray  # HxW int32 index into frame.prims, -1 sky
    obj: np.ndarray  # HxW int32 object id, -1 sky
    local: np.ndarray  # HxWx3 float32 hit point in the object frame (ground: world x, y, 0)
    plocal: np.ndarray  # HxWx3 float32 hit point in the primitive frame (ground: world x, y, 0)
    normal: np.ndarray  # HxWx3 float32 unit normal (world)
    pnormal: np.ndarray  # HxWx3 float32 unit normal (primitive frame)
    frame: FramePrimitives
    rays: np.ndarray  # HxWx3 float32 camera-frame rays (z = 1) the view was cast with

    @property
    def surface(self) -> np.ndarray:
        return self.prim >= 0

    def ray_dirs_world(self) -> np.ndarray:
        """``HxWx3`` unit ray directions in the world frame (for sky shading)."""
        d = self.rays @ self.R_wc.T.astype(np.float32)
        d /= np.linalg.norm(d, axis=2, keepdims=True)
        return d


def frame_primitives(scene: Scene, t: float, x_min: float, x_max: float) -> FramePrimitives:
    """Pose every primitive whose object lies in ``[x_min, x_max]`` along the road at time ``t``."""
    ground = Primitive(
        BOX, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.3, 0.3, 0.3), scene.ambient_c, texture=TEX_GROUND
    )
    prims, ids, R_wp, p_wp, R_op, t_op = (
        [ground],
        [GROUND_ID],
        [np.eye(3)],
        [np.zeros(3)],
        [np.eye(3)],
        [np.zeros(3)],
    )
    for obj in scene.objects:
        R, p = obj.pose(t)
        reach = 30.0 if obj.kind in ('building', 'curb') else 4.0
        if obj.kind == 'curb':
            pass  # spans the whole road length
        elif p[0] + reach < x_min or p[0] - reach > x_max:
            continue
        for prim in obj.primitives:
            prims.append(prim)
            ids.append(obj.obj_id)
            R_wp.append(R @ prim.rotation)
            p_wp.append(R @ np.asarray(prim.center) + p)
            R_op.append(prim.rotation)
            t_op.append(np.asarray(prim.center, dtype=np.float64))
    return FramePrimitives(
        prims, np.asarray(ids, np.int32), np.array(R_wp), np.array(p_wp), np.array(R_op), np.array(t_op)
    )


_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count('1') == 1])


def screen_rect(camera: Camera, corners_cam: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel rectangle ``(y0, y1, x0, x1)`` covering a box (8 camera-frame corners), clipped to z >= NEAR.

    Corner order is that of ``Primitive.corners`` (bit i of the index = sign of axis 2-i), so edges join
    indices that differ in one bit. Returns None when the box is entirely behind the near plane or
    outside the image.
    """
    z = corners_cam[:, 2]
    if np.all(z < NEAR):
        return None
    pts = [corners_cam[z >= NEAR]]
    a, b = _EDGES[:, 0], _EDGES[:, 1]
    za, zb = z[a], z[b]
    cross = (za < NEAR) != (zb < NEAR)
    if np.any(cross):
        s = (NEAR - za[cross]) / (zb[cross] - za[cross])
        pts.append(corners_cam[a[cross]] + s[:, None] * (corners_cam[b[cross]] - corners_cam[a[cross]]))
    p = np.concatenate(pts)
    if any(camera.dist):
        # distorted: the pixels whose undistorted rays can fall in the box's normalised bounding box
        # (per column / row ray bounds; conservative, as the box's projection lies inside those bounds)
        xn, yn = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        col_lo, col_hi, row_lo, row_hi = camera.ray_bounds()
        cols = np.flatnonzero((col_hi >= xn.min()) & (col_lo <= xn.max()))
        rows = np.flatnonzero((row_hi >= yn.min()) & (row_lo <= yn.max()))
        if cols.size == 0 or rows.size == 0:
            return None
        x0, x1 = max(0, int(cols[0]) - 1), min(camera.width, int(cols[-1]) + 2)
        y0, y1 = max(0, int(rows[0]) - 1), min(camera.height, int(rows[-1]) + 2)
        return y0, y1, x0, x1
    u = camera.fx * p[:, 0] / p[:, 2] + camera.cx
    v = camera.fy * p[:, 1] / p[:, 2] + camera.cy
    x0 = max(0, int(np.floor(u.min())) - 1)
    x1 = min(camera.width, int(np.ceil(u.max())) + 2)
    y0 = max(0, int(np.floor(v.min())) - 1)
    y1 = min(camera.height, int(np.ceil(v.max())) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _local_dirs(rays: np.ndarray, R_cp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray directions (camera frame, z = 1) expressed in the primitive frame, one array per axis."""
    R = R_cp.astype(np.float32)
    x, y = rays[..., 0], rays[..., 1]
    return (
        x * R[0, 0] + y * R[1, 0] + R[2, 0],
        x * R[0, 1] + y * R[1, 1] + R[2, 1],
        x * R[0, 2] + y * R[1, 2] + R[2, 2],
    )


def intersect_box(o: np.ndarray, d: tuple[np.ndarray, ...], half: np.ndarray) -> np.ndarray:
    """Entry parameter of rays ``o + t d`` into the box ``|p_i| <= half_i`` (inf on a miss or t < NEAR)."""
    tmin = np.full(d[0].shape, -np.inf, dtype=np.float32)
    tmax = np.full(d[0].shape, np.inf, dtype=np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        for i in range(3):
            inv = np.float32(1.0) / d[i]
            t1 = (np.float32(-half[i] - o[i])) * inv
            t2 = (np.float32(half[i] - o[i])) * inv
            np.maximum(tmin, np.minimum(t1, t2), out=tmin)
            np.minimum(tmax, np.maximum(t1, t2), out=tmax)
    hit = (tmax >= tmin) & (tmin > NEAR)
    return np.where(hit, tmin, np.float32(np.inf))


def intersect_cylinder(o: np.ndarray, d: tuple[np.ndarray, ...], radius: float, half_h: float) -> np.ndarray:
    """Entry parameter into the closed cylinder ``x^2 + y^2 <= r^2, |z| <= h`` (camera outside it)."""
    dx, dy, dz = d
    ox, oy, oz = (np.float32(v) for v in o)
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = np.float32(ox * ox + oy * oy - radius * radius)
    disc = b * b - a * c
    out = np.full(dx.shape, np.inf, dtype=np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        if c > 0:  # outside the infinite cylinder: the side can be hit
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
            zs = oz + ts * dz
            side = (disc >= 0) & (a > 0) & (np.abs(zs) <= half_h) & (ts > NEAR)
            out = np.where(side, ts, out)
        if abs(oz) > half_h:  # above or below: the near cap can be hit
            cap_z = np.float32(half_h if oz > 0 else -half_h)
            tc = (cap_z - oz) / dz
            xc, yc = ox + tc * dx, oy + tc * dy
            cap = (xc * xc + yc * yc <= radius * radius) & (tc > NEAR) & (tc < out)
            out = np.where(cap, tc, out)
    return out


def _normals_box(p: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Local normals of box surface points ``Nx3``: the axis where the point is closest to a face."""
    rel = np.abs(p) / np.maximum(half, 1e-6).astype(np.float32)
    axis = np.argmax(rel, axis=1)
    n = np.zeros_like(p)
    n[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis])
    return n


def _normals_cylinder(p: np.ndarray, radius: float, half_h: float) -> np.ndarray:
    rad = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
    on_cap = np.abs(np.abs(p[:, 2]) - half_h) < np.abs(rad - radius)
    n = np.zeros_like(p)
    n[:, 0] = np.where(on_cap, 0.0, p[:, 0] / np.maximum(rad, 1e-6))
    n[:, 1] = np.where(on_cap, 0.0, p[:, 1] / np.maximum(rad, 1e-6))
    n[:, 2] = np.where(on_cap, np.sign(p[:, 2]), 0.0)
    return n


def render_geometry(scene: Scene, camera: Camera, t: float, rays: np.ndarray | None = None) -> Geometry:
    """Ray cast ``scene`` at time ``t`` (seconds) into ``camera`` (mounted on the rig)."""
    R_wc, c = scene.motion.camera_pose(camera.R_ref_cam, camera.t_ref_cam, t)
    if rays is None:
        rays = camera.rays()
    H, W = camera.height, camera.width
    frame = frame_primitives(scene, t, c[0] - 15.0, c[0] + scene.view_distance)

    depth = np.full((H, W), np.inf, dtype=np.float32)
    prim = np.full((H, W), SKY, dtype=np.int32)
    # ground plane z = 0: world z component of each ray is linear in (x, y) of the z=1 ray
    r = R_wc[2].astype(np.float32)
    dz = rays[..., 0] * r[0] + rays[..., 1] * r[1] + r[2]
    with np.errstate(divide='ignore'):
        tg = np.float32(-c[2]) / dz
    ground = (dz < 0) & (tg < GROUND_MAX_DEPTH) & (tg > NEAR)
    depth[ground] = tg[ground]
    prim[ground] = 0

    R_cw = R_wc.T
    rects: dict[int, tuple[int, int, int, int]] = {}
    locals_: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(1, len(frame.prims)):
        p = frame.prims[i]
        R_cp = R_cw @ frame.R_wp[i]
        t_cp = R_cw @ (frame.p_wp[i] - c)
        rect = screen_rect(camera, p.local_corners() @ R_cp.T + t_cp)
        if rect is None:
            continue
        y0, y1, x0, x1 = rect
        o = -(R_cp.T @ t_cp)
        d = _local_dirs(rays[y0:y1, x0:x1], R_cp)
        if p.kind == BOX:
            th = intersect_box(o, d, np.asarray(p.size))
        else:
            th = intersect_cylinder(o, d, p.size[0], p.size[2])
        sub = depth[y0:y1, x0:x1]
        closer = th < sub
        if not closer.any():
            continue
        sub[closer] = th[closer]
        prim[y0:y1, x0:x1][closer] = i
        rects[i] = rect
        locals_[i] = (R_cp, o)

    obj = np.where(prim >= 0, frame.obj_ids[np.maximum(prim, 0)], SKY).astype(np.int32)
    local = np.zeros((H, W, 3), dtype=np.float32)
    normal = np.zeros((H, W, 3), dtype=np.float32)
    # ground: world coordinates of the hit (c + t * world direction), computed for the whole image
    on_ground = prim == 0
    if on_ground.any():
        Rw = R_wc.astype(np.float32)
        for k in range(2):
            dk = rays[..., 0] * Rw[k, 0] + rays[..., 1] * Rw[k, 1] + Rw[k, 2]
            local[..., k] = np.where(on_ground, np.float32(c[k]) + depth * dk, 0.0)
        normal[..., 2] = on_ground
    plocal = local.copy()
    pnormal = normal.copy()
    flat_depth = depth.reshape(-1)
    flat_rays = rays.reshape(-1, 3)
    flat_local, flat_plocal, flat_normal = local.reshape(-1, 3), plocal.reshape(-1, 3), normal.reshape(-1, 3)
    flat_pnormal = pnormal.reshape(-1, 3)
    for i, (y0, y1, x0, x1) in rects.items():
        mask = prim[y0:y1, x0:x1] == i
        if not mask.any():
            continue
        yy, xx = np.nonzero(mask)
        idx = (yy + y0) * W + (xx + x0)
        R_cp, o = locals_[i]
        dl = flat_rays[idx] @ R_cp.astype(np.float32)
        pl = o.astype(np.float32) + flat_depth[idx][:, None] * dl
        p = frame.prims[i]
        if p.kind == BOX:
            nl = _normals_box(pl, np.asarray(p.size, dtype=np.float32))
        else:
            nl = _normals_cylinder(pl, p.size[0], p.size[2])
        flat_plocal[idx] = pl
        flat_local[idx] = pl @ frame.R_op[i].T.astype(np.float32) + frame.t_op[i].astype(np.float32)
        flat_pnormal[idx] = nl
        flat_normal[idx] = nl @ frame.R_wp[i].T.astype(np.float32)
    return Geometry(camera, t, R_wc, c, depth, prim, obj, local, plocal, normal, pnormal, frame, rays)
