"""What calibration hands back: the rig file from the parameters, their spread, the overlay figure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from nmr.atomic import write_bytes
from nmr.calibration.objective import UNITS, Cameras, grids, rotvec_of
from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import matrix_to_rotvec, rotvec_to_matrix
from nmr.geometry.rig import Rig, RigCamera


def rig_from_params(cams: Cameras, params: Mapping[str, Sequence[float]], streams: Mapping[str, Any]) -> Rig:
    """The rig file's content: camera_info intrinsics (LWIR focal scaled), poses, LWIR time offset."""
    fid = {k: getattr(v, 'frame_id', None) for k, v in streams.items()}
    out = {'rgb': RigCamera('rgb', cams.rgb, frame_id=fid.get('rgb'))}
    if cams.depth is not None:
        out['depth'] = RigCamera('depth', cams.depth, _rot(params, 'depth'),
                                 _vec(params['depth_trans'], UNITS['trans']), 0.0, frame_id=fid.get('depth'))
    if cams.lwir is not None:
        m = cams.lwir
        s = math.exp(params['lwir_logf'][0] * UNITS['logf'])
        lwir = CameraModel(m.width, m.height, m.fx * s, m.fy * s, m.cx, m.cy, m.dist)
        out['lwir'] = RigCamera('lwir', lwir, _rot(params, 'lwir'),
                                _vec(params['lwir_trans'], UNITS['trans']), params['lwir_dt'][0] * UNITS['dt'],
                                frame_id=fid.get('lwir'))
    return Rig(out, description='estimated by nmr calibrate from ' + ', '.join(
        f'{k}: {v.topic}' for k, v in streams.items()))


def _rot(params: Mapping[str, Sequence[float]], cam: str) -> tuple[float, float, float]:
    r = rotvec_of(torch.tensor(params[f'{cam}_rot'], dtype=torch.float64),
                  torch.tensor(params[f'{cam}_trans'], dtype=torch.float64))
    return _vec(r.tolist(), 1.0)


def _vec(v: Sequence[float], unit: float) -> tuple[float, float, float]:
    return (float(v[0]) * unit, float(v[1]) * unit, float(v[2]) * unit)


def spread(blocks: Sequence[Mapping[str, Sequence[float]]], cams: Cameras) -> dict[str, dict[str, float]]:
    """Per camera the standard deviation across blocks: rotation (deg, RMS angle from the mean rotation),
    translation (mm, RMS distance from the mean), focal (%), time offset (ms)."""
    out: dict[str, dict[str, float]] = {}
    for cam in ('depth', 'lwir'):
        if getattr(cams, cam) is None or len(blocks) < 2:
            continue
        Rs = [rotvec_to_matrix(np.asarray(_rot(b, cam))) for b in blocks]
        mean_rv = np.mean([matrix_to_rotvec(R) for R in Rs], axis=0)
        Rm = rotvec_to_matrix(mean_rv)
        ang = [np.degrees(np.linalg.norm(matrix_to_rotvec(Rm.T @ R))) for R in Rs]
        ts = np.array([np.asarray(b[f'{cam}_trans']) * UNITS['trans'] for b in blocks])
        d = np.linalg.norm(ts - ts.mean(axis=0), axis=1)
        sp = {'rotation_deg': float(np.sqrt(np.mean(np.square(ang)) * len(Rs) / (len(Rs) - 1))),
              'translation_mm': float(1000 * np.sqrt(np.sum(d * d) / (len(d) - 1)))}
        if cam == 'lwir':
            sp['focal_pct'] = float(np.std([b['lwir_logf'][0] for b in blocks], ddof=1) * UNITS['logf'] * 100)
            sp['time_offset_ms'] = float(np.std([b['lwir_dt'][0] for b in blocks], ddof=1) * UNITS['dt'] * 1000)
        out[cam] = sp
    return out


def _to_u8(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = img[mask]
    if v.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(v, [2, 98])
    out = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.where(mask, out, 0).astype(np.uint8)


def _panel(g: Mapping[str, Any], title: str) -> np.ndarray:
    """RGB camera in green, LWIR in magenta (grey where they agree), depth edges in red, on the grid."""
    fixed, fok = (x.numpy() for x in g['fixed'])
    H, W = fixed.shape
    img = np.zeros((H, W, 3), np.uint8)
    if 'rgb' in g:
        img[..., 1] = _to_u8(*(x.numpy() for x in g['rgb']))
    if 'lwir' in g:
        lw = _to_u8(*(x.numpy() for x in g['lwir']))
        img[..., 0] = lw
        img[..., 2] = lw
    elif 'fixed' in g:  # plane mode: the grid image is the LWIR frame
        lw = _to_u8(fixed, fok)
        img[..., 0] = lw
        img[..., 2] = lw
    if 'lwir' in g or 'rgb' in g:
        inv = np.where(fok, fixed, 0).astype(np.float32)
        gx = cv2.Sobel(inv, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(inv, cv2.CV_32F, 0, 1)
        mag = np.hypot(gx, gy)
        if 'lwir' in g and mag[fok].size:
            edges = mag > np.percentile(mag[fok], 95)
            img[edges] = (255, 40, 40)
    scale = max(1, 480 // max(W, 1))
    img = cv2.resize(img, (W * scale, H * scale), interpolation=cv2.INTER_NEAREST)
    cv2.putText(img, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def overlay_figure(solver: Any, before: Mapping[str, Sequence[float]], after: Mapping[str, Sequence[float]],
                   path: Path, rows: int = 3) -> None:
    """A PNG with, for a few moments, the images sampled on the depth (or LWIR) grid before and after."""
    kept = solver.pb.kept
    ids = [kept[i] for i in np.linspace(0, len(kept) - 1, min(rows, len(kept))).round().astype(int)]
    lms = solver.level(1.0, ids)
    lines = []
    for lm in lms:
        panels = []
        for params, title in ((before, 'before'), (after, 'after')):
            p = {k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()}
            with torch.no_grad():
                g = grids(lm, solver.pb.cams, p, ['rgb', 'lwir'])
            panels.append(_panel(g, f'{title}: RGB green, LWIR magenta, depth edges red'))
        lines.append(np.concatenate(panels, axis=1))
    fig = np.concatenate(lines, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode('.png', cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
    if ok:
        write_bytes(path, png.tobytes())
