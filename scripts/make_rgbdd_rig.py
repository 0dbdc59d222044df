"""A real-depth rig from rgbdd: its depth (registered to the RGB) reprojected to a virtual depth camera.

Every frame's depth is moved to one virtual depth camera with a fixed pose and its own intrinsics, so the
pair (RGB, virtual depth) is a rig with real depth and a known geometry. Every 5th frame is held out for
validation; the others go into a bag for `nmr calibrate`. Then `--evaluate` scores a calibrated rig file
by the flow through depth on the held-out frames (EPE against the true rig's flow).

python scripts/make_rgbdd_rig.py --data ../shared/data/rgbdd --out /tmp/rgbdd_rig      # bag + rig_true.yaml
nmr calibrate --bag /tmp/rgbdd_rig/bag --out /tmp/rgbdd_rig/rig.yaml
python scripts/make_rgbdd_rig.py --data ../shared/data/rgbdd --out /tmp/rgbdd_rig --evaluate /tmp/rgbdd_rig/rig.yaml

rgbdd does not publish its intrinsics: the RGB camera is taken as a 512x384 pinhole with fx = fy = 460 px
and a centred principal point, which the depth's registration to it then defines (a self-consistent rig).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from nmr.data.bag_writer import BagWriter
from nmr.domain import DEFAULT_TOPICS
from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import Pose
from nmr.geometry.reproject import flow_through_depth, reproject_depth
from nmr.geometry.rig import Rig, RigCamera

RGB = CameraModel(512, 384, 460.0, 460.0, 255.5, 191.5)
DEPTH = CameraModel(448, 336, 372.0, 372.0, 226.0, 165.0, (0.02, -0.01, 0.0, 0.0, 0.0))
#: T_rgb_depth of the virtual depth camera: 5 cm to the left, 1 cm down, turned by about 1.5 degrees
T_RGB_DEPTH = Pose.from_rpy_deg(0.8, -1.2, 0.5, (-0.05, 0.01, 0.005))
VAL_EVERY = 5


def frames(data: Path) -> list[tuple[Path, Path]]:
    out = []
    for rgb in sorted((data / 'RGB').glob('*_RGB.jpg')):
        depth = data / 'Depth' / rgb.name.replace('_RGB.jpg', '_HR_gt.png')
        if depth.is_file():
            out.append((rgb, depth))
    if not out:
        raise SystemExit(f'no RGB/<stamp>_RGB.jpg with Depth/<stamp>_HR_gt.png in {data}')
    return out


def virtual_depth(depth_png: Path) -> np.ndarray:
    raw = cv2.imread(str(depth_png), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise SystemExit(f'cannot read {depth_png}')
    d = raw.astype(np.float32) / 1000.0
    if d.shape != RGB.hw:
        d = np.asarray(cv2.resize(d, (RGB.width, RGB.height), interpolation=cv2.INTER_NEAREST), dtype=np.float32)
    return reproject_depth(RGB, DEPTH, T_RGB_DEPTH.inverse(), d)


def true_rig() -> Rig:
    rv = T_RGB_DEPTH.rotvec()
    return Rig({'rgb': RigCamera('rgb', RGB),
                'depth': RigCamera('depth', DEPTH, tuple(float(v) for v in rv),  # type: ignore[arg-type]
                                   tuple(float(v) for v in T_RGB_DEPTH.t), 0.0)},  # type: ignore[arg-type]
               description='virtual depth camera of rgbdd (scripts/make_rgbdd_rig.py)')


def make(data: Path, out: Path) -> None:
    pairs = [p for i, p in enumerate(frames(data)) if i % VAL_EVERY != 0]
    out.mkdir(parents=True, exist_ok=True)
    rgb_topic, depth_topic = DEFAULT_TOPICS['rgb'], DEFAULT_TOPICS['depth']
    with BagWriter(out / 'bag', overwrite=True) as bw:
        for i, (rgb_path, depth_path) in enumerate(pairs):
            stamp = 1_700_000_000_000_000_000 + i * 33_333_333
            bgr = cv2.imread(str(rgb_path))
            if bgr is None:
                raise SystemExit(f'cannot read {rgb_path}')
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if rgb.shape[:2] != RGB.hw:
                rgb = cv2.resize(rgb, (RGB.width, RGB.height), interpolation=cv2.INTER_AREA)
            depth_mm = np.clip(np.rint(virtual_depth(depth_path) * 1000), 0, 65535).astype(np.uint16)
            for topic, img, enc, cam in ((rgb_topic, rgb, 'rgb8', RGB), (depth_topic, depth_mm, '16UC1', DEPTH)):
                bw.write_image(topic, stamp, 'cam', img, enc)
                bw.write_camera_info(topic.rsplit('/', 1)[0] + '/camera_info', stamp, 'cam', cam.K,
                                     (cam.width, cam.height), D=cam.dist)
    true_rig().save(out / 'rig_true.yaml')
    print(f'wrote {out / "bag"} ({len(pairs)} frames) and {out / "rig_true.yaml"}')


def evaluate(data: Path, rig_file: Path) -> None:
    est = Rig.load(rig_file)
    val = [p for i, p in enumerate(frames(data)) if i % VAL_EVERY == 0]
    errs = []
    for _, depth_path in val:
        d = virtual_depth(depth_path)
        f_true, v_true = flow_through_depth(DEPTH, RGB, T_RGB_DEPTH, d)
        f_est, v_est = flow_through_depth(est.camera('depth'), est.camera('rgb'), est.moving_from_fixed('depth'), d)
        both = v_true & v_est
        if both.any():
            errs.append(float(np.linalg.norm(f_true - f_est, axis=2)[both].mean()))
    print(f'{rig_file}: flow EPE through depth on {len(errs)} held-out rgbdd frames: mean {np.mean(errs):.2f} px, '
          f'median {np.median(errs):.2f} px, max {np.max(errs):.2f} px')


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', type=Path, default=Path('../shared/data/rgbdd'))
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--evaluate', type=Path, metavar='RIG.yaml', help='score this rig on the held-out frames')
    args = ap.parse_args(argv)
    if args.evaluate:
        evaluate(args.data, args.evaluate)
    else:
        make(args.data, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
