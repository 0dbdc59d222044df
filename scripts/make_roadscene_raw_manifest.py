#!/usr/bin/env python3
"""A REAL misalignment with exact ground truth, from no generator of ours: roadscene's raw thermal frames
against their RGB crops (issue 19's "never validate only on the generator you train with").

roadscene gives, per scene, the raw 640x512 thermal frame (`infrared/`), the authors' crop of it
(`cropinfrared/`, ~500x330, resampled: anisotropic scale ~1.13 x 1.26 and a slight shear) and the RGB image
pre-aligned to that crop (`crop_LR_visible/`). The crop's position in the raw frame is not given; it is
recovered here mono-modally (thermal vs thermal: template matching, then OpenCV's ECC with an affine
model, correlation 0.99+), which makes the raw thermal frame vs the RGB crop a pair with an exact affine
ground truth: phi(v) = W^-1(v) - v on the raw frame's grid, valid where W^-1(v) falls inside the RGB image.
The cameras' fields of view differ (the RGB covers the centre of the thermal frame), the thermal frame is
the raw one (not the denoised crop the models trained on), and the misalignment (a zoom of ~1.3x / 1.6x
against the plain rescale, tens of px) is larger than the training families' (5-30 px mean).

By default only the trainer's held-out scenes (`--split val`, its hash and val_fraction) are written;
`--split train` writes the training scenes instead (a real selection set that never overlaps the
evaluation).
Images are not copied: the manifest names the dataset's files; only flows and valid masks are written under
--out.

    .venv/bin/python scripts/make_roadscene_raw_manifest.py --data ../shared/data/roadscene \
        --out runs/eval/sets/roadscene_raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from nmr.data.pairs import SPLITS, FolderPairDataset, write_manifest

MIN_ECC = 0.98  # below this the recovered crop is not trusted and the scene is left out (reported)


def crop_in_raw(raw: np.ndarray, crop: np.ndarray) -> tuple[np.ndarray, float]:
    """The affine W (2x3, crop pixel -> raw pixel) with raw(W(x)) ~ crop(x), and ECC's correlation."""
    raw_f, crop_f = raw.astype(np.float32), crop.astype(np.float32)
    match = cv2.matchTemplate(raw_f, crop_f, cv2.TM_CCOEFF_NORMED)
    best = cv2.minMaxLoc(match)[3]
    # the crop is resampled (scale ~1.13 x 1.26); start ECC from the template position at the typical scale,
    # and from scale 1 as well, and keep the better
    starts = [np.array([[1, 0, best[0]], [0, 1, best[1]]], np.float32)]
    h_r, w_r = raw.shape[:2]
    h_c, w_c = crop.shape[:2]
    sx, sy = 1.13, 1.26
    cx, cy = (w_r - sx * w_c) / 2, (h_r - sy * h_c) / 2
    starts.append(np.array([[sx, 0, cx], [0, sy, cy]], np.float32))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 300, 1e-7)
    result = (np.full((2, 3), np.nan, np.float32), -1.0)
    for start in starts:
        try:
            ecc, warp = cv2.findTransformECC(crop_f, raw_f, start.copy(), cv2.MOTION_AFFINE, criteria,
                                                None, 5)  # type: ignore[call-overload]
        except cv2.error:
            continue
        if ecc > result[1]:
            result = (warp, float(ecc))
    return result


def ground_truth(warp: np.ndarray, raw_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(flow HxWx2 on the raw grid into the crop's pixels, valid HxW) for crop -> raw affine `warp`."""
    inverse = cv2.invertAffineTransform(warp)
    h, w = raw_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    cy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    flow = np.stack([cx - xs, cy - ys], axis=2).astype(np.float32)
    valid = (cx >= 0) & (cx <= crop_hw[1] - 1) & (cy >= 0) & (cy <= crop_hw[0] - 1)
    return flow, valid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, required=True, help='the roadscene folder')
    parser.add_argument('--out', type=Path, required=True, help='folder for flows, valid masks and manifest.csv')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='as data.val_fraction in training')
    parser.add_argument('--split', choices=SPLITS, default='val',
                        help='val: held-out scenes; select / report: their partition (choosing / reporting)')
    args = parser.parse_args()

    data = FolderPairDataset(args.data / 'crop_LR_visible', args.data / 'cropinfrared', 'lwir',
                             split=args.split, val_fraction=args.val_fraction)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str | Path]] = []
    left_out: list[str] = []
    magnitudes = []
    for name, _, _ in data.items:
        raw_path = args.data / 'infrared' / f'{name}.png'
        rgb_path = args.data / 'crop_LR_visible' / f'{name}.jpg'
        raw = cv2.imread(str(raw_path), cv2.IMREAD_UNCHANGED)
        crop = cv2.imread(str(args.data / 'cropinfrared' / f'{name}.jpg'), cv2.IMREAD_GRAYSCALE)
        rgb = cv2.imread(str(rgb_path), cv2.IMREAD_COLOR)
        if raw is None or crop is None or rgb is None or rgb.shape[:2] != crop.shape[:2]:
            left_out.append(f'{name} (missing or mismatched files)')
            continue
        warp, ecc = crop_in_raw(raw, crop)
        if ecc < MIN_ECC:
            left_out.append(f'{name} (ECC {ecc:.3f})')
            continue
        flow, valid = ground_truth(warp, raw.shape[:2], crop.shape[:2])
        stem = args.out / name
        np.save(f'{stem}_flow.npy', flow)
        cv2.imwrite(f'{stem}_valid.png', valid.astype(np.uint8) * 255)
        # the unregistered reference: the RGB rescaled onto the raw grid (nmr.evaluation.baselines.identity_flow)
        sx, sy = crop.shape[1] / raw.shape[1], crop.shape[0] / raw.shape[0]
        ys, xs = np.mgrid[0:raw.shape[0], 0:raw.shape[1]].astype(np.float32)
        rescale = np.stack([(xs + 0.5) * sx - 0.5 - xs, (ys + 0.5) * sy - 0.5 - ys], axis=2)
        magnitudes.append(float(np.linalg.norm(flow - rescale, axis=2)[valid].mean()))
        rows.append({'name': name, 'moving': rgb_path.resolve(), 'fixed': raw_path.resolve(),
                     'flow': f'{stem}_flow.npy', 'valid': f'{stem}_valid.png', 'fixed_kind': 'lwir',
                     'family': 'real_fov'})
    write_manifest(args.out / 'manifest.csv', rows)
    print(f'{len(rows)} {args.split}-split scenes -> {args.out / "manifest.csv"} (raw thermal vs RGB crop, affine '
          f'ground truth; unregistered error {np.mean(magnitudes):.1f} px mean, {np.min(magnitudes):.1f}-'
          f'{np.max(magnitudes):.1f} px); left out: {", ".join(left_out) or "none"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
