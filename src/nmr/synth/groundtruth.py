"""Exact ground-truth flow from geometry: fixed pixel -> surface point -> moved in time -> RGB pixel.

For each pixel ``v`` of the fixed view (LWIR or depth) at its own time, the ray caster gives the surface
point as (object id, object-local coordinates). That point is moved with its object to the time of the
paired RGB frame, transformed into the RGB camera (whose rig pose is also taken at that time) and
projected: ``phi(v) = m - v`` (SPEC convention, moving pixels minus fixed pixels, sizes may differ).

Pairing rule: a fixed frame's ground truth is against the RGB frame whose stamp is nearest to the fixed
frame's stamp (ties: the earlier one) -- the frame an approximate-time synchroniser pairs it with. The
GT messages carry the fixed frame's header; the RGB stamp is therefore implied by that rule (and is
reported by ``nearest_index``).

Validity: the fixed pixel sees a surface, its projection lies inside the RGB image (``0 <= m <= size-1``)
in front of the camera, and the RGB camera sees that same point: its inverse depth matches the RGB
view's inverse depth interpolated bilinearly at ``m`` (exact on planes; a mismatch means occluded or at
a silhouette). Sky pixels get the flow of a point at infinity (rotation only) but are not valid.
"""

from __future__ import annotations

import cv2
import numpy as np

from nmr.synth.render import BOX, Geometry
from nmr.synth.scene import Scene

VISIBILITY_TOLERANCE = 0.02  # relative inverse-depth mismatch still counted as the same surface


def nearest_index(stamps: np.ndarray, stamp: int) -> int:
    """Index of the stamp nearest to ``stamp`` in the sorted ``stamps`` (ties: the earlier)."""
    i = int(np.searchsorted(stamps, stamp))
    if i <= 0:
        return 0
    if i >= len(stamps):
        return len(stamps) - 1
    return i - 1 if stamp - stamps[i - 1] <= stamps[i] - stamp else i


def moving_points(scene: Scene, fixed: Geometry, moving: Geometry) -> np.ndarray:
    """``HfxWfx3`` float32: each fixed pixel's surface point in the moving camera's frame at its time.

    Sky pixels get a far point along the fixed ray's world direction (a direction, really).
    """
    R_o, p_o = scene.object_poses(moving.t)
    R_cw = moving.R_wc.T
    M = (R_cw @ R_o).astype(np.float32)  # object -> moving camera, per object id
    b = ((p_o - moving.c) @ R_cw.T).astype(np.float32)
    ids = np.maximum(fixed.obj, 0).reshape(-1)
    local = fixed.local.reshape(-1, 3)
    X = np.einsum('nij,nj->ni', M[ids], local) + b[ids]
    # sky: world direction of the fixed ray, rotated into the moving camera, pushed far away
    R_dir = (R_cw @ fixed.R_wc).astype(np.float32)
    sky = fixed.obj.reshape(-1) < 0
    if sky.any():
        X[sky] = (fixed.rays.reshape(-1, 3)[sky] @ R_dir.T) * np.float32(1e6)
    return X.reshape((*fixed.obj.shape, 3))


def gt_flow(scene: Scene, fixed: Geometry, moving: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(flow HfxWfx2 float32, valid HfxWf bool)`` for ``fixed`` against the RGB view ``moving``."""
    cam = moving.camera
    X = moving_points(scene, fixed, moving)
    u, v, z = cam.project(X)
    h, w = fixed.obj.shape
    front = z > 1e-3
    u = np.where(front, u, np.nan).astype(np.float32)
    v = np.where(front, v, np.nan).astype(np.float32)
    flow = np.empty((h, w, 2), dtype=np.float32)
    flow[..., 0] = u - np.arange(w, dtype=np.float32)[None, :]
    flow[..., 1] = v - np.arange(h, dtype=np.float32)[:, None]
    inside = front & (u >= 0) & (u <= cam.width - 1) & (v >= 0) & (v <= cam.height - 1)
    inv_m = np.where(moving.surface, 1.0 / np.where(moving.surface, moving.depth, 1.0), 0.0).astype(
        np.float32
    )
    map_x = np.where(inside, u, -1.0).astype(np.float32)
    map_y = np.where(inside, v, -1.0).astype(np.float32)
    seen = cv2.remap(
        inv_m, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    with np.errstate(invalid='ignore'):
        same = np.abs(seen * z - 1.0) <= VISIBILITY_TOLERANCE
    valid = fixed.surface & inside & same
    np.nan_to_num(flow, copy=False, nan=0.0)
    return flow, valid


def resize_flow_field(fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> np.ndarray:
    """The flow of plain resizing (what a coarse, calibration-free pre-alignment gives): pixel centres."""
    hf, wf = fixed_hw
    hm, wm = moving_hw
    out = np.empty((hf, wf, 2), dtype=np.float32)
    x = np.arange(wf, dtype=np.float32)
    y = np.arange(hf, dtype=np.float32)
    out[..., 0] = ((x + 0.5) * wm / wf - 0.5 - x)[None, :]
    out[..., 1] = ((y + 0.5) * hm / hf - 0.5 - y)[:, None]
    return out


def landmarks(fixed: Geometry, valid: np.ndarray, max_points: int = 64) -> np.ndarray:
    """``Nx2`` float (x, y) fixed-grid points near box corners (on a visible face, GT valid there).

    Each box face contributes its four corners pulled 12 % towards the face centre, so the point lies
    on that face (not on a silhouette, where the flow jumps) yet at a salient corner.
    """
    cam = fixed.camera
    frame = fixed.frame
    R_cw = fixed.R_wc.T
    pts, prim_idx = [], []
    grid = np.array([(a, b) for a in (-0.88, 0.88) for b in (-0.88, 0.88)])
    for i in range(1, len(frame.prims)):
        p = frame.prims[i]
        if p.kind != BOX:
            continue
        half = np.asarray(p.size, dtype=np.float64)
        for axis in range(3):
            others = [k for k in range(3) if k != axis]
            for sign in (-1.0, 1.0):
                local = np.zeros((4, 3))
                local[:, axis] = sign * half[axis]
                local[:, others[0]] = grid[:, 0] * half[others[0]]
                local[:, others[1]] = grid[:, 1] * half[others[1]]
                pts.append(local @ frame.R_wp[i].T + frame.p_wp[i])
                prim_idx.extend([i] * 4)
    if not pts:
        return np.zeros((0, 2), dtype=np.float32)
    Xw = np.concatenate(pts)
    Xc = (Xw - fixed.c) @ R_cw.T
    u, v, z = cam.project(Xc)
    ok = (z > 0.1) & (u >= 1) & (u <= cam.width - 2) & (v >= 1) & (v <= cam.height - 2)
    ui = np.clip(np.rint(np.nan_to_num(u)).astype(int), 0, cam.width - 1)
    vi = np.clip(np.rint(np.nan_to_num(v)).astype(int), 0, cam.height - 1)
    prim_idx_arr = np.asarray(prim_idx)
    ok &= fixed.prim[vi, ui] == prim_idx_arr
    ok &= np.abs(fixed.depth[vi, ui] - z) <= 0.02 * z + 0.01
    ok &= valid[vi, ui]
    out = np.stack([u[ok], v[ok]], axis=1).astype(np.float32)
    if len(out) > max_points:
        order = np.lexsort((out[:, 0], out[:, 1]))
        out = out[order[np.linspace(0, len(out) - 1, max_points).round().astype(int)]]
    return out
