"""Where the geometric RGB-LWIR flow's error comes from (issue 20), against a synthetic bag's ground truth.

Per LWIR frame, the node's path (nmr.pipeline.core: the depth frame nearest in time, the RGB frame nearest
in time and the one before it for the motion compensation) through ``GeometricStage``; the end-point error
over the ground truth's valid pixels is split by what the stage knew there:

- ``depth``: the stage's own ``valid`` (a reprojected depth, not occluded): projection error only;
- ``ground``: no depth, below each column's last depth pixel (the ground plane continued, ``extend_ground``);
- ``filled``: no depth elsewhere (the push-pull fill of the parallax).

Each with and without the motion compensation, and the mean |time gap| between the LWIR frame and its
depth frame. Run on the bag of ``nmr demo --rig true --mode offline --seed 777 --duration 1`` (its
``input_rig`` folder and ``rig_true.yaml``):

    PYTHONPATH=src .venv/bin/python benchmarks/rig_error_breakdown.py out/demo/input_rig out/demo/rig_true.yaml
"""

from __future__ import annotations

import argparse

import numpy as np
from rig_motion_compensation import read_rig_bag  # the sibling benchmark: the same bag, the same pairing

from nmr.data.encodings import to_rgb
from nmr.geometry.registration import GeometricStage, compensate_motion
from nmr.geometry.rig import Rig


def below_last_valid(valid: np.ndarray) -> np.ndarray:
    """Pixels below their column's last valid pixel (columns with any valid pixel): extend_ground's area."""
    h = valid.shape[0]
    last = h - 1 - np.argmax(valid[::-1], axis=0)
    return (np.arange(h)[:, None] > last[None, :]) & valid.any(axis=0)[None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag')
    parser.add_argument('rig')
    args = parser.parse_args()
    frames, rgb_stamps, depth_stamps = read_rig_bag(args.bag)
    stage = GeometricStage(Rig.load(args.rig), log=lambda _t: None)
    sums: dict[tuple[str, str], list[float]] = {}  # (compensation, region) -> [error sum, pixels]
    gaps: list[float] = []
    for stamp, (lwir, _enc) in sorted(frames['lwir'].items()):
        j = int(np.argmin(np.abs(rgb_stamps - stamp)))
        k = j - 1 if j > 0 else j + 1
        rgb = [to_rgb(*frames['rgb'][rgb_stamps[i]]) for i in (j, k)]
        alpha = float((stamp - rgb_stamps[j]) / (rgb_stamps[k] - rgb_stamps[j]))
        d = int(np.argmin(np.abs(depth_stamps - stamp)))
        gaps.append(abs(float(depth_stamps[d] - stamp)) / 1e6)
        geo = stage.flow('rgb_lwir', rgb[0].shape[:2], lwir.shape, *frames['depth'][depth_stamps[d]])
        gt, valid = frames['gt'][stamp][0], frames['valid'][stamp][0] > 0
        ground = below_last_valid(geo.valid) & ~geo.valid
        regions = {'all': valid, 'depth': valid & geo.valid, 'ground': valid & ground,
                   'filled': valid & ~geo.valid & ~ground}
        for comp in ('without', 'with'):
            if comp == 'with':
                compensate_motion(geo.flow, rgb[0], rgb[1], alpha)
            err = np.linalg.norm(geo.flow - gt, axis=-1)
            for name, mask in regions.items():
                acc = sums.setdefault((comp, name), [0.0, 0.0])
                acc[0] += float(err[mask].sum())
                acc[1] += float(mask.sum())
    n_valid = sums[('with', 'all')][1]
    print(f'{len(gaps)} LWIR frames; |LWIR - depth stamp| mean {np.mean(gaps):.2f} ms')
    print('| region | share of gt-valid pixels | EPE without motion compensation | EPE with |')
    print('|---|---|---|---|')
    for name in ('all', 'depth', 'ground', 'filled'):
        n = sums[('with', name)][1]
        row = [f'{sums[(c, name)][0] / max(n, 1):.3f} px' for c in ('without', 'with')]
        print(f'| {name} | {100 * n / n_valid:.1f} % | {row[0]} | {row[1]} |')


if __name__ == '__main__':
    main()
