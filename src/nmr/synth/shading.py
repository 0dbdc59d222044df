"""Materials and procedural textures, and the RGB camera's image formation.

Why procedural: texture detail (road markings, tile joints, windows, grilles, noise) gives the
registration something to lock on to, and because every texture is a function of object-local
coordinates it moves exactly with its object, so all three cameras see the same surface pattern where
their geometry says so. The same texture masks also change temperature (windows reflect the cold sky,
grilles are hot) and the depth camera's return (glass and black rubber give holes), so the modalities
share structure without sharing intensities -- the situation NeMAR is built for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from nmr.synth.render import Geometry
from nmr.synth.scene import (
    CURB_Y,
    ROAD_HALF,
    TEX_CABIN,
    TEX_CLOTH,
    TEX_ENGINE,
    TEX_FACADE,
    TEX_SKIN,
    Scene,
)


@dataclass
class Surface:
    """Per-pixel material of a view (values on sky pixels are unused)."""

    albedo: np.ndarray  # HxWx3 float32 linear RGB
    temp_c: np.ndarray  # HxW float32 surface temperature before sun load
    sun_gain: np.ndarray  # HxW float32 kelvin per unit of direct sun
    ir_return: np.ndarray  # HxW float32 0..1


@lru_cache(maxsize=8)
def radial2(h: int, w: int) -> np.ndarray:
    """Squared normalised distance from the image centre (1 at the corners), for lens fall-off."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (w * w / 4 + h * h / 4)
    r2.setflags(write=False)
    return r2


def sample_noise(tile: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the wrapping noise tile at continuous texel coordinates."""
    n = tile.shape[0]
    u0f, v0f = np.floor(u), np.floor(v)
    fu, fv = (u - u0f).astype(np.float32), (v - v0f).astype(np.float32)
    u0, v0 = u0f.astype(np.int64) % n, v0f.astype(np.int64) % n
    u1, v1 = (u0 + 1) % n, (v0 + 1) % n
    top = tile[v0, u0] * (1 - fu) + tile[v0, u1] * fu
    bot = tile[v1, u0] * (1 - fu) + tile[v1, u1] * fu
    return top * (1 - fv) + bot * fv


def _hash01(ids: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer id (per object, per window...)."""
    x = (ids.astype(np.int64) * 73856093 + salt * 19349663) & 0xFFFFFFFF
    x = ((x ^ (x >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((x ^ (x >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _ground(scene: Scene, x: np.ndarray, y: np.ndarray, ambient: float) -> tuple[np.ndarray, ...]:
    """Road surface: asphalt, parking strips, lane paint, zebra crossings, paved sidewalks."""
    tile = scene.noise
    fine = sample_noise(tile, x * 20.0, y * 20.0)
    coarse = sample_noise(tile, x * 1.3 + 91.0, y * 1.3 + 17.0)
    ay = np.abs(y)
    albedo = 0.085 + 0.018 * fine + 0.02 * coarse
    temp = ambient + 4.0 + 1.5 * coarse
    gain = np.full_like(x, 14.0)
    ir = np.full_like(x, 0.85)
    parking = (ay > ROAD_HALF) & (ay < CURB_Y)
    albedo = np.where(parking, albedo * 0.85, albedo)
    sidewalk = ay >= CURB_Y
    joints = (np.mod(x, 1.5) < 0.035) | (np.mod(y, 1.5) < 0.035)
    pave = 0.32 + 0.05 * coarse + 0.03 * fine - np.where(joints, 0.14, 0.0)
    albedo = np.where(sidewalk, pave, albedo)
    temp = np.where(sidewalk, ambient + 2.0 + coarse, temp)
    gain = np.where(sidewalk, 8.0, gain)
    paint = (ay < 0.07) & (np.mod(x, 9.0) < 3.0)
    paint |= (ay > ROAD_HALF - 0.17) & (ay < ROAD_HALF - 0.05)
    paint |= (ay > ROAD_HALF) & (ay < CURB_Y) & (np.mod(x, 6.5) < 0.12)
    for cx in scene.crosswalks:
        paint |= (x > cx) & (x < cx + 3.5) & (ay < ROAD_HALF) & (np.mod(y, 1.0) < 0.5)
    albedo = np.where(paint, 0.6 + 0.05 * fine, albedo)
    temp = np.where(paint, temp - 2.5, temp)
    gain = np.where(paint, 6.0, gain)
    rgb = np.repeat(albedo[:, None], 3, axis=1) * np.array([1.0, 1.0, 1.03], dtype=np.float32)
    return rgb, temp, gain, ir


def surface(scene: Scene, geom: Geometry) -> Surface:
    """Gather per-primitive materials and apply the textures, for every surface pixel of ``geom``."""
    H, W = geom.prim.shape
    frame = geom.frame
    albedo = np.zeros((H, W, 3), dtype=np.float32)
    temp = np.zeros((H, W), dtype=np.float32)
    gain = np.zeros((H, W), dtype=np.float32)
    ir = np.zeros((H, W), dtype=np.float32)
    flat_prim = geom.prim.reshape(-1)
    gsel = np.flatnonzero(flat_prim == 0)
    if gsel.size:
        gl = geom.plocal.reshape(-1, 3)[gsel]
        ga, gt, gg, gi = _ground(scene, gl[:, 0], gl[:, 1], scene.ambient_c)
        albedo.reshape(-1, 3)[gsel] = ga
        temp.reshape(-1)[gsel] = gt
        gain.reshape(-1)[gsel] = gg
        ir.reshape(-1)[gsel] = gi
    sel = np.flatnonzero(flat_prim > 0)
    if sel.size == 0:
        return Surface(albedo, temp, gain, ir)
    pid = flat_prim[sel]
    oid = geom.obj.reshape(-1)[sel]
    tex = frame.table('texture', 1)[pid].astype(np.int64)
    a = frame.table('albedo', (0.0, 0.0, 0.0))[pid]
    tc = frame.table('temp_c', scene.ambient_c)[pid]
    sg = frame.table('sun_gain', 0.0)[pid]
    ir_r = frame.table('ir_return', 1.0)[pid]
    pl = geom.plocal.reshape(-1, 3)[sel]
    half = np.asarray([(0.0, 0.0, 0.0)] + [p.size for p in frame.prims[1:]], dtype=np.float32)[pid]
    n_local = geom.pnormal.reshape(-1, 3)[sel]

    # per-object tint and fine noise everywhere (keeps flat surfaces from being featureless)
    tint = 0.9 + 0.2 * _hash01(oid, 1)
    grain = sample_noise(
        scene.noise, pl[:, 0] * 9.0 + pl[:, 2] * 7.0 + oid * 13.0, pl[:, 1] * 9.0 + pl[:, 2] * 5.0
    )
    a = a * (tint * (1.0 + 0.08 * grain))[:, None]

    f = tex == TEX_FACADE
    if f.any():
        p, n, h = pl[f], n_local[f], half[f]
        side_x = np.abs(n[:, 0]) > 0.5
        u = np.where(side_x, p[:, 1], p[:, 0]) + 100.0
        v = p[:, 2] + h[:, 2]
        roof = n[:, 2] > 0.5
        upper = (
            (v > 3.2)
            & (np.mod(v, 3.2) > 1.0)
            & (np.mod(v, 3.2) < 2.5)
            & (np.mod(u, 2.6) > 0.7)
            & (np.mod(u, 2.6) < 1.9)
        )
        shop = (v > 0.5) & (v < 2.7) & (np.mod(u, 5.0) > 0.6) & (np.mod(u, 5.0) < 4.2)
        window = (upper | shop) & ~roof
        win_id = (np.floor(u / 2.6) * 1000 + np.floor(v / 3.2)).astype(np.int64) + oid[f] * 7919
        lit = _hash01(win_id, 3) < 0.25
        fa = a[f]
        fa = np.where(roof[:, None], fa * 0.5, fa)
        glass = np.array([0.03, 0.04, 0.055], dtype=np.float32) + 0.05 * lit[:, None].astype(
            np.float32
        ) * np.array([1.0, 0.8, 0.4], dtype=np.float32)
        a[f] = np.where(window[:, None], glass, fa)
        ft = tc[f]
        tc[f] = np.where(window, np.where(lit, scene.ambient_c + 4.0, scene.ambient_c - 5.0), ft)
        sg[f] = np.where(window, 1.0, sg[f])
        ir_r[f] = np.where(window, 0.08, ir_r[f])

    e = tex == TEX_ENGINE
    if e.any():
        p, n, h = pl[e], n_local[e], half[e]
        front = n[:, 0] > 0.5
        grille = front & (np.abs(p[:, 1]) < 0.55 * h[:, 1]) & (p[:, 2] < 0.1 * h[:, 2])
        lamp = (
            front
            & (np.abs(p[:, 1]) > 0.62 * h[:, 1])
            & (np.abs(p[:, 1]) < 0.92 * h[:, 1])
            & (p[:, 2] > 0.2 * h[:, 2])
        )
        ea = a[e]
        ea = np.where(grille[:, None], np.float32(0.03), ea)
        ea = np.where(lamp[:, None], np.float32(0.85), ea)
        a[e] = ea
        # warmer towards the front and in the grille
        tc[e] = tc[e] + 6.0 * (p[:, 0] / np.maximum(h[:, 0], 1e-3) - 1.0) + np.where(grille, 8.0, 0.0)
        ir_r[e] = np.where(grille, 0.2, ir_r[e])

    cab = tex == TEX_CABIN
    if cab.any():
        roof = n_local[cab, 2] > 0.5
        glass = np.array([0.025, 0.03, 0.04], dtype=np.float32)
        a[cab] = np.where(roof[:, None], a[cab], glass)
        tc[cab] = np.where(roof, scene.ambient_c + 1.0, tc[cab])
        sg[cab] = np.where(roof, 8.0, sg[cab])
        ir_r[cab] = np.where(roof, ir_r[cab], 0.08)

    c = tex == TEX_CLOTH
    if c.any():
        folds = sample_noise(scene.noise, pl[c, 2] * 25.0, np.arctan2(pl[c, 1], pl[c, 0]) * 8.0 + oid[c])
        a[c] = a[c] * (1.0 + 0.15 * folds)[:, None]
        tc[c] = tc[c] + 0.8 * folds

    s = tex == TEX_SKIN
    if s.any():
        hair = pl[s, 2] > 0.45 * half[s, 2]  # top of the head
        a[s] = np.where(hair[:, None], np.float32(0.04), a[s])
        tc[s] = np.where(hair, tc[s] - 4.0, tc[s])

    albedo.reshape(-1, 3)[sel] = np.clip(a, 0.0, 1.0)
    temp.reshape(-1)[sel] = tc
    gain.reshape(-1)[sel] = sg
    ir.reshape(-1)[sel] = ir_r
    return Surface(albedo, temp, gain, ir)


def sun_cosine(scene: Scene, geom: Geometry) -> np.ndarray:
    """``max(0, n . sun)`` per pixel (0 on sky)."""
    cos = geom.normal @ scene.sun_dir.astype(np.float32)
    return np.clip(cos, 0.0, None)


def _sky_rgb(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    elev = np.clip(dirs[..., 2], 0.0, 1.0)[..., None]
    horizon = np.array([0.78, 0.82, 0.9], dtype=np.float32)
    zenith = np.array([0.22, 0.38, 0.72], dtype=np.float32)
    sky = horizon + (zenith - horizon) * np.sqrt(elev)
    glow = np.clip(dirs @ scene.sun_dir.astype(np.float32), 0.0, 1.0)[..., None] ** 24
    return sky + 0.6 * glow * np.array([1.0, 0.95, 0.8], dtype=np.float32)


def render_rgb(scene: Scene, geom: Geometry, surf: Surface, rng: np.random.Generator) -> np.ndarray:
    """``HxWx3`` uint8 RGB: Lambert sun + sky light, aerial perspective, sky, tone curve, blur, noise."""
    cos = sun_cosine(scene, geom)
    nz = geom.normal[..., 2]
    ambient = (0.35 + 0.15 * nz)[..., None] * np.array([0.75, 0.82, 1.0], dtype=np.float32)
    sun = (2.2 * scene.sun_strength * cos)[..., None] * np.array([1.0, 0.96, 0.88], dtype=np.float32)
    radiance = surf.albedo * (ambient + sun)
    dirs = geom.ray_dirs_world()
    sky = _sky_rgb(scene, dirs)
    with np.errstate(invalid='ignore'):
        haze = (1.0 - np.exp(-np.where(geom.surface, geom.depth, 0.0) / 250.0))[..., None]
    horizon = np.array([0.78, 0.82, 0.9], dtype=np.float32)
    img = np.where(geom.surface[..., None], radiance * (1 - haze) + horizon * haze, sky)
    tone = 1.0 - np.exp(-1.6 * img)
    h, w = geom.prim.shape
    tone *= (1.0 - 0.18 * radial2(h, w))[..., None]
    encoded = (np.power(np.clip(tone, 0.0, 1.0), 1 / 2.2) * 255.0).astype(np.float32)
    out: np.ndarray = cv2.GaussianBlur(encoded, (0, 0), 0.5 * max(w / 640, 0.5))
    out += rng.normal(0.0, 1.8, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
