#!/usr/bin/env python3
"""Inference-time variants of one model on manifests with ground truth (issue 19; only `tiles` is in the pipeline).

- `once`: the network once (what the pipeline does);
- `iterate-K`: pre-warp the moving image by the flow so far (borders replicated, so no wedge appears),
  register what is left, compose (nmr.flow.compose); K passes in all;
- `flips`: the mean of the flows of the pair as is, flipped left-right, upside-down and both (4x cost);
- `hflip`: the mean of the flows of the pair as is and flipped left-right (2x cost; left-right flips are a
  training augmentation, upside-down ones are not);
- `tiles`: nmr.inference.tiles (the network again on a 2x2 grid of overlapping tiles of the pair pre-warped by
  the first flow, each `--tile` of the height and width; 5x cost); on in the pipeline for rgb_depth;
- `homography` / `blend`: a homography fitted (RANSAC, every 8th pixel) to the network's flow / the mean of it
  and the flow.
EPE as % of the unregistered EPE per variant and manifest (the reference of `nmr evaluate`).

    .venv/bin/python benchmarks/inference_variants.py --model models/rgb_lwir.onnx \
        --manifest runs/val_lwir/manifest.csv runs/eval/sets/roadscene_nonrigid/manifest.csv
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import cv2
import numpy as np
from homography_oracle import homography_flow  # the sibling benchmark: the same fit

from nmr import flow as nmr_flow
from nmr.data.pairs import read_manifest
from nmr.evaluation.baselines import identity_flow
from nmr.evaluation.metrics import PairResult, evaluate_pair, summarise
from nmr.inference.model_file import read_model_info
from nmr.inference.select import create_registrar
from nmr.inference.tiles import TileRefinedRegistrar

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def flipped(predict: Predict, moving: np.ndarray, fixed: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The flow of the pair flipped along `axes` (0 = upside-down, 1 = left-right), flipped back."""
    flow = predict(np.ascontiguousarray(np.flip(moving, axes)), np.ascontiguousarray(np.flip(fixed, axes)))
    flow = np.flip(flow, axes).copy()
    for axis in axes:  # v' = S_f - 1 - v and m' = S_m - 1 - m give phi = (S_m - S_f) - phi' (sizes may differ)
        channel = 0 if axis == 1 else 1
        flow[..., channel] = (moving.shape[axis] - fixed.shape[axis]) - flow[..., channel]
    return flow


def iterate(
    predict: Predict, moving: np.ndarray, fixed: np.ndarray, passes: int, first: np.ndarray
) -> list[np.ndarray]:
    """The composed flow after each of `passes` passes (`first`: the flow of the first)."""
    flow = first
    out = [flow]
    for _ in range(passes - 1):
        map_x, map_y = nmr_flow.sample_maps(flow)
        prewarped = cv2.remap(moving, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        flow = nmr_flow.compose(predict(prewarped, fixed), flow)
        out.append(flow)
    return out


def fitted_homography(flow: np.ndarray, step: int = 8) -> np.ndarray:
    """A homography fitted (RANSAC, 3 px) to every `step`-th pixel's flow."""
    every = np.zeros(flow.shape[:2], bool)
    every[::step, ::step] = True
    return homography_flow(flow, every, method=cv2.RANSAC, threshold=3.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True)
    parser.add_argument('--manifest', nargs='+', required=True)
    parser.add_argument('--passes', type=int, default=3, help='iterate up to this many passes')
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--tile', type=float, default=0.6, help='tile side as a fraction of the image (tiles)')
    parser.add_argument('--only', nargs='+', default=None,
                        choices=('iterate', 'flips', 'hflip', 'homography', 'blend', 'tiles'),
                        help='compute only these variants (and once)')
    args = parser.parse_args()
    meta = read_model_info(args.model).metadata
    registrar = create_registrar(args.model, backend=args.backend, device='cpu', net_hw=None,
                                 log=lambda *_: None, expected_pair=meta.pair)
    tiles = TileRefinedRegistrar(registrar, args.tile)  # type: ignore[arg-type]
    table = {}
    for manifest in args.manifest:
        rows = read_manifest(manifest, fixed_kind=meta.fixed_kind)
        results: dict[str, list[PairResult]] = {}
        for i in range(len(rows)):
            fp = rows[i]

            def predict(moving: np.ndarray, fixed: np.ndarray, fp=fp) -> np.ndarray:
                return registrar.register(moving, fixed, fp.fixed_encoding).flow

            wanted = set(args.only or ['once', 'iterate', 'flips', 'hflip', 'homography', 'blend', 'tiles'])
            first = predict(fp.moving, fp.fixed)
            variants = {'once': first}
            if 'iterate' in wanted:
                passes = iterate(predict, fp.moving, fp.fixed, args.passes, first)
                variants.update({f'iterate-{k + 1}': f for k, f in enumerate(passes) if k > 0})
            if wanted & {'flips', 'hflip'}:
                flips = [first] + [flipped(predict, fp.moving, fp.fixed, axes)
                                   for axes in ((1,), (0,), (0, 1))[:3 if 'flips' in wanted else 1]]
                if 'flips' in wanted:
                    variants['flips'] = np.mean(flips, axis=0).astype(np.float32)
                variants['hflip'] = np.mean(flips[:2], axis=0).astype(np.float32)
            if wanted & {'homography', 'blend'}:
                homography = fitted_homography(first)
                variants['homography'] = homography
                variants['blend'] = (0.5 * (first + homography)).astype(np.float32)
            if 'tiles' in wanted:
                variants['tiles'] = tiles.refine(fp.moving, fp.fixed, fp.fixed_encoding, first)
            ident = identity_flow(fp.fixed.shape[:2], fp.moving.shape[:2])
            valid = None if fp.valid is None else np.asarray(fp.valid).astype(bool)
            for name, flow in variants.items():
                results.setdefault(name, []).append(evaluate_pair(
                    fp.name, flow, ident, fp.gt_flow, valid, fp.landmarks, fp.moving.shape[:2], 0.0, {}))
        table[manifest] = {name: round(summarise(r)['epe_ratio'], 1) for name, r in results.items()}
        print(manifest, json.dumps(table[manifest]), flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
