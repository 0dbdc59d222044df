"""The synthetic rig: geometry, exact ground truth, bag contents, determinism, CLI and pair export.

Everything runs at small sizes (size scale 0.25-0.5, a few frames) so the file stays fast on 2 cores.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr.data.pairs import read_manifest
from nmr.domain import DEFAULT_TOPICS as IMAGE_TOPICS
from nmr.domain import PAIR_FIXED_KIND as PAIRS
from nmr.errors import ConfigError
from nmr.synth.cameras import default_rig
from nmr.synth.depthsensor import render_depth
from nmr.synth.generator import SynthConfig, generate, gt_topics, info_topic
from nmr.synth.groundtruth import gt_flow, landmarks, nearest_index, resize_flow_field
from nmr.synth.render import intersect_box, intersect_cylinder, render_geometry
from nmr.synth.scene import generate_scene
from nmr.synth.shading import surface
from nmr.synth.thermal import MAX_COUNTS, render_lwir

SCALE = 0.25


def _sample_ids(ids: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Object ids of the moving view at ``v + phi(v)`` (nearest pixel: ids must not be blended)."""
    h, w = flow.shape[:2]
    mx = (flow[..., 0] + np.arange(w, dtype=np.float32)[None, :]).astype(np.float32)
    my = (flow[..., 1] + np.arange(h, dtype=np.float32)[:, None]).astype(np.float32)
    return cv2.remap(ids.astype(np.float32), mx, my, cv2.INTER_NEAREST, borderValue=-5.0).astype(np.int64)


@pytest.fixture(scope='module')
def views():
    """One scene; the RGB view at t and both fixed views 7 ms later (free-running cameras)."""
    scene = generate_scene(5, 1.0)  # a street with parked cars in front of buildings: depth edges
    rig = default_rig(0.5)
    moving = render_geometry(scene, rig.rgb, 0.5)
    fixed = {cam.name: render_geometry(scene, cam, 0.507) for cam in (rig.lwir, rig.depth)}
    return scene, rig, moving, fixed


def test_ray_intersections_are_exact() -> None:
    d = tuple(np.array([v], dtype=np.float32) for v in (0.0, 0.0, 1.0))
    # box |x|,|y|,|z| <= 1 seen from z = -5 along +z: entry at t = 4
    assert intersect_box(np.array([0.0, 0.0, -5.0]), d, np.array([1.0, 1.0, 1.0]))[0] == pytest.approx(4.0)
    # cylinder of radius 0.5 (axis z) seen from x = -3 along +x: side entry at t = 2.5
    dx = tuple(np.array([v], dtype=np.float32) for v in (1.0, 0.0, 0.0))
    assert intersect_cylinder(np.array([-3.0, 0.0, 0.0]), dx, 0.5, 1.0)[0] == pytest.approx(2.5)
    # from above: the top cap at t = 2
    down = tuple(np.array([v], dtype=np.float32) for v in (0.0, 0.0, -1.0))
    assert intersect_cylinder(np.array([0.1, 0.0, 3.0]), down, 0.5, 1.0)[0] == pytest.approx(2.0)
    # a miss is inf
    assert np.isinf(intersect_box(np.array([3.0, 0.0, -5.0]), d, np.array([1.0, 1.0, 1.0]))[0])


def test_ground_depth_matches_plane_geometry(views) -> None:
    """A ground pixel's depth equals the analytic ray/plane intersection for the camera's pose."""
    _, rig, moving, _ = views
    cam = rig.rgb
    y, x = cam.height - 1, cam.width // 2
    assert moving.obj[y, x] == 0
    ray_world = moving.R_wc @ np.array([(x - cam.cx) / cam.fx, (y - cam.cy) / cam.fy, 1.0])
    expected = -moving.c[2] / ray_world[2]
    assert moving.depth[y, x] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize('kind', ['lwir', 'depth'])
def test_gt_flow_carries_rgb_object_ids_onto_fixed_view(views, kind: str) -> None:
    """Warping the RGB view's object-id image with the GT reproduces the fixed view's ids; no GT doesn't."""
    scene, _, moving, fixed = views
    f = fixed[kind]
    flow, valid = gt_flow(scene, f, moving)
    assert flow.shape == (*f.obj.shape, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    assert 0.4 < valid.mean() < 0.98
    assert not valid[f.obj < 0].any()  # sky is never valid
    warped = _sample_ids(moving.obj, flow)
    agree_gt = (warped[valid] == f.obj[valid]).mean()
    coarse = resize_flow_field(f.obj.shape, moving.obj.shape)  # plain resizing, no registration
    agree_coarse = (_sample_ids(moving.obj, coarse)[valid] == f.obj[valid]).mean()
    assert agree_gt > 0.99
    assert agree_coarse < agree_gt - 0.04
    # parallax is real: several pixels left after plain resizing, more on near objects than far ones
    residual = np.linalg.norm(flow - coarse, axis=2)
    assert residual[valid].mean() > 2.0
    near = valid & (f.depth < 6.0) & (f.obj > 0)
    far = valid & (f.depth > 30.0)
    if near.any() and far.any():
        parallax = np.linalg.norm(flow - gt_flow_at_infinity(scene, f, moving), axis=2)
        assert parallax[near].mean() > 2 * parallax[far].mean()


def gt_flow_at_infinity(scene, fixed, moving) -> np.ndarray:
    """The flow that the same view would have if every point were infinitely far (rotation only)."""
    return gt_flow(scene, replace(fixed, obj=np.full_like(fixed.obj, -1)), moving)[0]


def test_depth_edges_coincide_with_warped_rgb_id_edges(views) -> None:
    """Silhouettes in the depth image (16UC1) fall where the warped RGB id image changes object."""
    scene, _, moving, fixed = views
    f = fixed['depth']
    img = render_depth(f, surface(scene, f), np.random.default_rng(0)).astype(np.float64)
    flow, valid = gt_flow(scene, f, moving)
    # depth edges: pixels K apart, both with data and valid GT, whose depths differ by > 15 % (the camera
    # itself drops the pixels right at an edge, so adjacent pairs are rare)
    K = 4
    both = (img[:, :-K] > 0) & (img[:, K:] > 0) & valid[:, :-K] & valid[:, K:]
    jump = both & (np.abs(img[:, K:] - img[:, :-K]) > 0.15 * np.minimum(img[:, K:], img[:, :-K]))
    assert jump.sum() >= 10

    def boundary_between(ids: np.ndarray) -> np.ndarray:
        return ids[:, K:] != ids[:, :-K]

    hit_gt = boundary_between(_sample_ids(moving.obj, flow))[jump].mean()
    coarse = resize_flow_field(f.obj.shape, moving.obj.shape)
    hit_coarse = boundary_between(_sample_ids(moving.obj, coarse))[jump].mean()
    assert hit_gt > 0.95
    assert hit_coarse < hit_gt - 0.2


def test_gt_at_a_3d_point_matches_its_projections(views) -> None:
    """Independent check: a vehicle point projected into both cameras by hand gives the GT flow there."""
    scene, _, moving, fixed = views
    f = fixed['lwir']
    flow, valid = gt_flow(scene, f, moving)
    checked = 0
    for obj in scene.objects:
        if obj.kind not in ('vehicle', 'building'):
            continue
        prim = obj.primitives[0]
        for face_point in (
            np.array([prim.size[0] * 0.3, -prim.size[1], 0.1]),
            np.array([-prim.size[0], 0.1, 0.0]),
        ):
            p_obj = prim.rotation @ face_point + np.asarray(prim.center)
            pts = []
            for cam, geom in ((f.camera, f), (moving.camera, moving)):
                R, p = obj.pose(geom.t)
                Xc = geom.R_wc.T @ (R @ p_obj + p - geom.c)
                pts.append(cam.K @ (Xc / Xc[2]))
            (uf, vf, _), (um, vm, _) = pts
            xi, yi = round(uf), round(vf)
            if not (0 <= xi < f.camera.width and 0 <= yi < f.camera.height) or not valid[yi, xi]:
                continue
            if f.obj[yi, xi] != obj.obj_id or np.linalg.norm(f.local[yi, xi] - p_obj) > 0.15:
                continue  # that pixel shows another point of the object (this face is hidden)
            gx = cv2.getRectSubPix(flow[..., 0], (1, 1), (uf, vf))[0, 0]
            gy = cv2.getRectSubPix(flow[..., 1], (1, 1), (uf, vf))[0, 0]
            assert gx == pytest.approx(um - uf, abs=0.05)
            assert gy == pytest.approx(vm - vf, abs=0.05)
            checked += 1
    assert checked >= 3


def test_landmarks_lie_on_valid_surfaces(views) -> None:
    scene, _, moving, fixed = views
    f = fixed['depth']
    _, valid = gt_flow(scene, f, moving)
    pts = landmarks(f, valid)
    assert pts.shape[1] == 2 and 5 <= len(pts) <= 64
    xi, yi = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    assert valid[yi, xi].all() and (f.obj[yi, xi] > 0).all()


def test_sensor_models_have_the_right_ranges(views) -> None:
    scene, _, _, fixed = views
    lwir = render_lwir(scene, fixed['lwir'], surface(scene, fixed['lwir']), np.random.default_rng(0))
    assert lwir.dtype == np.uint16 and lwir.max() <= MAX_COUNTS
    sky, road = fixed['lwir'].obj < 0, fixed['lwir'].obj == 0
    assert lwir[sky].mean() < lwir[road].mean()  # the sky is cold
    people = np.isin(fixed['lwir'].obj, [o.obj_id for o in scene.objects if o.kind == 'person'])
    if people.any():
        assert np.median(lwir[people]) > np.median(lwir[sky])
    depth = render_depth(fixed['depth'], surface(scene, fixed['depth']), np.random.default_rng(0))
    assert depth.dtype == np.uint16
    has = depth > 0
    assert 0.1 < has.mean() < 0.9  # holes: sky, far, edges, dark surfaces
    assert depth[has].max() <= 20000  # max range 16 m (+ noise)
    assert not has[fixed['depth'].obj < 0].any()


def test_nearest_index_pairs_like_a_synchroniser() -> None:
    stamps = np.array([0, 100, 200, 300])
    assert [nearest_index(stamps, s) for s in (-5, 49, 50, 51, 260, 999)] == [0, 0, 0, 1, 3, 3]


def _read_bag(path: Path) -> dict[str, list[tuple[int, object, str]]]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list[tuple[int, object, str]]] = {}
    with AnyReader([path]) as reader:
        for conn, stamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((stamp, msg, conn.msgtype))
    return out


@pytest.fixture(scope='module')
def bag(tmp_path_factory) -> tuple[Path, Path, SynthConfig]:
    root = tmp_path_factory.mktemp('synth')
    cfg = SynthConfig(
        out=root / 'bag', duration_s=9 / 30, seed=7, size_scale=SCALE, export_pairs=root / 'pairs'
    )
    generate(cfg)
    return cfg.out, root, cfg


def test_bag_has_all_topics_encodings_and_sizes(bag) -> None:
    path, _, _ = bag
    msgs = _read_bag(path)
    rig = default_rig(SCALE)
    expect = {'rgb': ('rgb8', rig.rgb), 'lwir': ('mono16', rig.lwir), 'depth': ('16UC1', rig.depth)}
    for name, (encoding, cam) in expect.items():
        topic = IMAGE_TOPICS[name]
        images = msgs[topic]
        assert len(images) >= 4
        for _, msg, msgtype in images:
            assert msgtype == 'sensor_msgs/msg/Image'
            assert (msg.encoding, msg.width, msg.height) == (encoding, cam.width, cam.height)
            assert msg.header.frame_id == cam.frame_id
        infos = msgs[info_topic(topic)]
        assert len(infos) == len(images)
        assert infos[0][1].k.reshape(3, 3) == pytest.approx(cam.K)
        assert (infos[0][1].width, infos[0][1].height) == (cam.width, cam.height)
    for pair, kind in PAIRS.items():
        flow_topic, valid_topic = gt_topics(pair)
        fixed_stamps = [m.header.stamp for _, m, _ in msgs[IMAGE_TOPICS[kind]]]
        for topic, encoding in ((flow_topic, '32FC2'), (valid_topic, 'mono8')):
            gt = msgs[topic]
            assert [m.header.stamp for _, m, _ in gt] == fixed_stamps  # the FIXED frame's stamps
            assert all(m.encoding == encoding for _, m, _ in gt)
            assert all(
                (m.width, m.height) == (expect[kind][1].width, expect[kind][1].height) for _, m, _ in gt
            )


def test_image_topics_synchronise(bag) -> None:
    from nmr.data.encodings import stamp_ns
    from nmr.data.sync import ApproxTimeSynchronizer

    msgs = _read_bag(bag[0])
    events = sorted(
        (stamp_ns(m.header), k)
        for k, name in enumerate(('rgb', 'lwir', 'depth'))
        for _, m, _ in msgs[IMAGE_TOPICS[name]]
    )
    sync = ApproxTimeSynchronizer(3, slop_ns=15_000_000, queue_size=10)
    sets = [s for stamp, k in events for s in sync.add(k, stamp, stamp)]
    assert len(sets) >= len(msgs[IMAGE_TOPICS['rgb']]) - 1
    for s in sets:
        assert max(s) - min(s) <= 15_000_000  # type: ignore[operator]


def test_same_seed_same_bag_and_sqlite3_storage(bag, tmp_path: Path) -> None:
    path, _, cfg = bag
    again = SynthConfig(
        out=tmp_path / 'again',
        duration_s=cfg.duration_s,
        seed=cfg.seed,
        size_scale=SCALE,
        storage='sqlite3',
        workers=2,  # two runs of frames render in parallel: not a byte may change
    )
    assert generate(again).workers == 2
    a, b = _read_bag(path), _read_bag(again.out)
    assert a.keys() == b.keys()
    for topic in a:
        assert [s for s, _, _ in a[topic]] == [s for s, _, _ in b[topic]]
        if a[topic][0][2] == 'sensor_msgs/msg/Image':
            for (_, ma, _), (_, mb, _) in zip(a[topic], b[topic]):
                assert np.array_equal(ma.data, mb.data), topic
    other = SynthConfig(out=tmp_path / 'other', duration_s=1 / 30, seed=cfg.seed + 1, size_scale=SCALE)
    generate(other)
    c = _read_bag(other.out)
    assert not np.array_equal(c[IMAGE_TOPICS['rgb']][0][1].data, a[IMAGE_TOPICS['rgb']][0][1].data)


def test_export_pairs_manifest(bag) -> None:
    from nmr.geometry.rig import Rig

    _, root, _ = bag
    assert Rig.load(root / 'pairs' / 'rig_true.yaml').names() == ['rgb', 'lwir', 'depth']  # for evaluate --rig
    for pair in PAIRS:
        manifest = root / 'pairs' / pair / 'manifest.csv'
        with manifest.open() as fh:
            rows = list(csv.DictReader(fh))
        assert rows and list(rows[0]) == ['name', 'moving', 'fixed', 'flow', 'valid', 'landmarks', 'fixed_kind',
                                          'depth']
        for row in rows:  # the depth frame of the same instant (nmr evaluate --rig): rgb_depth's is its fixed image
            assert (manifest.parent / row['depth']).is_file()
            assert row['depth'] == row['fixed'] if pair == 'rgb_depth' else row['depth'].startswith('depth/')
        assert {r['fixed_kind'] for r in rows} == {PAIRS[pair]}
        row = rows[0]
        base = manifest.parent
        moving = cv2.imread(str(base / row['moving']), cv2.IMREAD_UNCHANGED)
        fixed = cv2.imread(str(base / row['fixed']), cv2.IMREAD_UNCHANGED)
        flow = np.load(base / row['flow'])
        valid = cv2.imread(str(base / row['valid']), cv2.IMREAD_UNCHANGED)
        pts = np.asarray(json.loads((base / row['landmarks']).read_text()))
        assert moving.dtype == np.uint8 and moving.ndim == 3
        assert fixed.dtype == np.uint16 and fixed.ndim == 2
        assert flow.shape == (*fixed.shape, 2) and flow.dtype == np.float32
        assert valid.shape == fixed.shape and set(np.unique(valid)) <= {0, 255}
        assert pts.ndim == 2 and pts.shape[1] == 2
        # both kinds are 16-bit PNGs: the column is what lets a reader refuse the other pair's model
        other = next(k for k in PAIRS.values() if k != PAIRS[pair])
        with pytest.raises(ConfigError, match=f'fixed_kind column says {PAIRS[pair]}, not {other}') as exc:
            read_manifest(manifest, fixed_kind=other)
        assert '\n' not in str(exc.value)
        assert read_manifest(manifest, fixed_kind=PAIRS[pair])[0].fixed_kind == PAIRS[pair]


def test_cli_prints_summary_and_refuses_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmr.cli.main import main

    out = tmp_path / 'cli_bag'
    opts = ['--frames', '3', '--size-scale', '0.2', '--seed', '1', '--lwir-rate', '60', '--workers', '1']
    argv = ['synth', *opts, '--out', str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert '/nmr_gt/rgb_lwir/flow' in text and 'ms/frame' in text
    msgs = _read_bag(out)
    assert len(msgs[IMAGE_TOPICS['rgb']]) == 3
    assert len(msgs[IMAGE_TOPICS['lwir']]) == 6  # a 60 Hz Boson: two LWIR frames per RGB frame
    assert len(msgs[gt_topics('rgb_lwir')[0]]) == 6
    assert main(['synth', '--out', str(out), '--frames', '2', '--size-scale', '0.2']) == 2
    err = capsys.readouterr().err
    assert 'already exists' in err and '--overwrite' in err
    assert main(['synth', '--out', str(tmp_path / 'x'), '--frames', '0']) == 2


def test_mcap_suffix_names_the_file_not_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nmr.cli.main import main

    opts = ['--frames', '1', '--size-scale', '0.2', '--workers', '1']
    assert main(['synth', '--out', str(tmp_path / 'rig.mcap'), *opts]) == 0
    assert (tmp_path / 'rig' / 'metadata.yaml').is_file() and (tmp_path / 'rig' / 'rig.mcap').is_file()
    assert not (tmp_path / 'rig.mcap').exists()
    assert f'bag folder {tmp_path / "rig"}' in capsys.readouterr().out
    assert main(['synth', '--out', str(tmp_path / 'rig.mcap'), *opts]) == 2  # the same bag: refused...
    assert '--overwrite' in capsys.readouterr().err
    assert main(['synth', '--out', str(tmp_path / 'rig'), '--overwrite', *opts]) == 0  # ...unless asked
    assert len(_read_bag(tmp_path / 'rig')[IMAGE_TOPICS['rgb']]) == 1
    from nmr.data.bag_reader import list_topics

    assert IMAGE_TOPICS['rgb'] in list_topics(tmp_path / 'rig' / 'rig.mcap')  # the file opens as its bag


@pytest.mark.parametrize('pair', sorted(PAIRS))
def test_data_layer_pairs_each_fixed_frame_with_the_gt_rgb_frame(bag, pair: str) -> None:
    """The synchroniser of nmr.data picks the RGB frame the GT was computed against (nearest stamp)."""
    from nmr.data.bag_reader import BagPairDataset, synchronized_pairs

    path = bag[0]
    kind = PAIRS[pair]
    msgs = _read_bag(path)
    rgb_stamps = np.array([s for s, _, _ in msgs[IMAGE_TOPICS['rgb']]], dtype=np.int64)
    pairs = list(synchronized_pairs([path], IMAGE_TOPICS['rgb'], IMAGE_TOPICS[kind], slop_ns=20_000_000))
    assert len(pairs) >= len(rgb_stamps) - 1
    for p in pairs:
        assert p.moving_stamp_ns == rgb_stamps[nearest_index(rgb_stamps, p.fixed_stamp_ns)]
    topics = {'rgb': IMAGE_TOPICS['rgb'], kind: IMAGE_TOPICS[kind]}
    ds = BagPairDataset([path], pair, topics, split='all')
    item = ds[0]
    assert item.gt_flow is not None and item.gt_flow.shape == (*item.fixed.shape, 2)
    assert item.valid is not None and 0.3 < item.valid.mean() < 1.0
