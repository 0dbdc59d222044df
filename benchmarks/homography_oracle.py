"""The best global homography, fitted to the ground truth: the bar a dense registration must beat.

For every manifest row with a ground-truth flow, fit the homography H that maps fixed pixels v to their
true moving positions v + phi(v) (least squares over the valid pixels, cv2.findHomography without
RANSAC) and score its flow like `nmr evaluate` scores a model: EPE over valid pixels, as % of the
unregistered EPE (the moving image rescaled onto the fixed grid). A learned model below this number
recovers non-rigid (parallax, elastic) motion that no single global transform can.

    .venv/bin/python benchmarks/homography_oracle.py --manifest runs/eval/roadscene_val/manifest.csv --kind lwir
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np

from nmr.data.pairs import ManifestDataset
from nmr.evaluation.baselines import identity_flow
from nmr.evaluation.metrics import endpoint_error, ratio_percent


def homography_flow(gt: np.ndarray, valid: np.ndarray | None, max_points: int = 20000, method: int = 0,
                    threshold: float = 3.0) -> np.ndarray:
    """The flow of the homography through the correspondences v -> v + gt(v) (HxWx2): least squares, or
    `method=cv2.RANSAC` with `threshold` px (benchmarks/inference_variants.py fits it to a network's flow)."""
    h, w = gt.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    mask = np.ones((h, w), bool) if valid is None else valid.astype(bool)
    src = np.stack((xs[mask], ys[mask]), axis=-1)
    dst = src + gt[mask].astype(np.float64)
    if len(src) > max_points:
        pick = np.random.default_rng(0).choice(len(src), max_points, replace=False)
        src, dst = src[pick], dst[pick]
    H, _ = cv2.findHomography(src, dst, method, threshold)
    grid = np.stack((xs, ys), axis=-1).reshape(-1, 1, 2)
    mapped = cv2.perspectiveTransform(grid, H).reshape(h, w, 2)
    return (mapped - np.stack((xs, ys), axis=-1)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--manifest', required=True)
    ap.add_argument('--kind', choices=['lwir', 'depth'], required=True)
    args = ap.parse_args()
    data = ManifestDataset(args.manifest, args.kind)
    errs, idents = [], []
    for i in range(len(data)):
        fp = data[i]
        if fp.gt_flow is None:
            continue
        ident = identity_flow(fp.fixed.shape[:2], fp.moving.shape[:2])
        errs.append(endpoint_error(homography_flow(fp.gt_flow, fp.valid), fp.gt_flow, fp.valid))
        idents.append(endpoint_error(ident, fp.gt_flow, fp.valid))
    epe, epe_id = float(np.mean(errs)), float(np.mean(idents))
    print(json.dumps({'manifest': args.manifest, 'pairs': len(errs), 'epe': round(epe, 3),
                      'epe_identity': round(epe_id, 3), 'epe_ratio': round(ratio_percent(epe, epe_id), 2)}))


if __name__ == '__main__':
    main()
