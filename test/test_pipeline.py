"""nmr.pipeline without ROS: the parameter table and its YAML, the fused depth resampling, PairProcessor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nmr.errors import ConfigError, NmrUserError
from nmr.pipeline.fused import FUSED_TOPICS, depth_in_lwir_frame, depth_metres, fuse
from nmr.pipeline.settings import PARAMS, defaults, read_params_file, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'register.yaml'


# -- settings -------------------------------------------------------------------------------------
def test_shipped_config_lists_every_parameter_with_its_default() -> None:
    assert read_params_file(CONFIG) == defaults()


def test_defaults_follow_the_spec() -> None:
    s = validate({})
    assert s.inputs['rgb'].topic == '/camera/camera/color/image_raw'
    assert s.inputs['depth'].topic == '/camera/camera/depth/image_rect_raw'
    assert s.inputs['lwir'].topic == '/flir_boson/image_raw'
    assert all(i.reliability == 'best_available' for i in s.inputs.values())  # matches what drivers offer
    assert all(i.transport == 'raw' and i.subscribed_topic == i.topic for i in s.inputs.values())
    assert s.inputs['lwir'].camera_info_topic == '/flir_boson/camera_info'
    assert s.inputs['depth'].camera_info_topic == '/camera/camera/depth/camera_info'
    assert s.pairs == ('rgb_lwir', 'rgb_depth')
    assert s.fused and s.pair_outputs == ('registered', 'flow', 'flow_viz', 'overlay')


@pytest.mark.parametrize(('name', 'value', 'words'), [
    ('backend', 'cuda', 'backend'),
    ('sync.slop_s', -0.1, 'sync.slop_s'),
    ('sync.slop_s', 'fast', 'expected a number'),
    ('sync.queue_size', 2.5, 'expected an integer'),
    ('pairs', ['rgb_thermal'], 'rgb_thermal'),
    ('pairs', [], 'pairs'),
    ('outputs', ['registered', 'registered'], 'duplicate'),
    ('overlay_alpha', 1.5, 'overlay_alpha'),
    ('qos.lwir.reliability', 'sometimes', 'qos.lwir.reliability'),
    ('qos.rgb.history_depth', 0, 'qos.rgb.history_depth'),
    ('device', 'gpu', 'device'),
    ('net_height', 64, 'net_width'),
    ('topics.lwir', '/camera/camera/color/image_raw', 'topics'),
    ('sync.slopp_s', 0.1, 'sync.slopp_s'),
    ('transport.rgb', 'compressedDepth', 'transport.rgb'),
    ('transport.lwir', 'theora', 'transport.lwir'),
])
def test_bad_values_name_the_parameter(name: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace('.', r'\.')):
        validate({name: value})


def test_compressed_transports_subscribe_beside_the_image_topic() -> None:
    s = validate({'transport.rgb': 'compressed', 'transport.depth': 'compressedDepth'})
    assert s.inputs['rgb'].subscribed_topic == '/camera/camera/color/image_raw/compressed'
    assert s.inputs['depth'].subscribed_topic == '/camera/camera/depth/image_rect_raw/compressedDepth'
    assert s.inputs['rgb'].camera_info_topic == '/camera/camera/color/camera_info'


@pytest.mark.parametrize(('backend', 'suffix'), [('torch', '.pt'), ('onnxruntime', '.onnx'), ('auto', '.onnx')])
def test_the_default_model_follows_the_backend(backend: str, suffix: str) -> None:
    """Regression: `backend:=torch` was handed the shipped .onnx file and left both pairs idle."""
    from nmr.pipeline.settings import model_path

    settings = validate({'backend': backend})
    for pair in ('rgb_lwir', 'rgb_depth'):
        path = model_path(settings, pair)
        assert path.suffix == suffix and path.is_file() and path.parent.name == 'models'
    assert model_path(validate({'backend': 'torch', 'models.rgb_lwir': '/m/x.onnx'}), 'rgb_lwir') == Path('/m/x.onnx')


def test_the_torch_backend_runs_its_default_model() -> None:
    from nmr.pipeline.settings import create_registrar, model_path

    settings = validate({'backend': 'torch', 'device': 'cpu'})
    registrar = create_registrar(model_path(settings, 'rgb_lwir'), settings, 'rgb_lwir', log=lambda _t: None)
    assert getattr(registrar, 'backend', None) == 'torch'


def test_ints_are_accepted_for_floats_and_topics_may_repeat_for_unused_streams() -> None:
    s = validate({'sync.slop_s': 1, 'pairs': ['rgb_lwir'], 'topics.depth': '/flir_boson/image_raw'})
    assert s.sync_slop_ns == 1_000_000_000 and not s.fused


def test_params_file_sections_apply_by_node_name(tmp_path: Path) -> None:
    f = tmp_path / 'p.yaml'
    f.write_text('/**:\n  ros__parameters:\n    backend: torch\n    use_sim_time: true\n'
                 'other_node:\n  ros__parameters:\n    backend: onnxruntime\n'
                 '/ns/register_node:\n  ros__parameters:\n    sync: {slop_s: 0.05}\n')
    assert read_params_file(f) == {'backend': 'torch', 'sync.slop_s': 0.05}
    with pytest.raises(ConfigError, match='does not exist'):
        read_params_file(tmp_path / 'missing.yaml')
    f.write_text('register_node: [1, 2]\n')
    with pytest.raises(ConfigError, match='ros__parameters'):
        read_params_file(f)


def test_every_parameter_is_documented() -> None:
    assert all(p.description for p in PARAMS)
    assert len({p.name for p in PARAMS}) == len(PARAMS)


# -- fused ----------------------------------------------------------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def test_depth_reaches_the_lwir_frame_through_the_rgb_image() -> None:
    hl, wl, hr, wr, hd, wd = 40, 50, 60, 80, 30, 40
    gx, gy = _grid(hl, wl)
    lwir_flow = np.stack([0.5 * gx + 3, 0.5 * gy + 2], -1)          # LWIR v -> RGB 1.5 v + (3, 2)
    dx, dy = _grid(hd, wd)
    depth_flow = np.stack([dx + 1.5 + 0.3 * np.sin(dy / 5), dy + 0.5], -1).astype(np.float32)  # nonlinear
    depth = (1 + dx + 100 * dy).astype(np.float32)
    out = depth_in_lwir_frame(lwir_flow, depth_flow, depth, (hr, wr))
    # exact inverse: RGB m = 2 d + (1.5 + 0.3 sin(dy / 5), 0.5)
    my, mx = 1.5 * gy + 2, 1.5 * gx + 3
    ey = (my - 0.5) / 2
    ex = (mx - 1.5 - 0.3 * np.sin(ey / 5)) / 2
    expected = 1 + np.round(ex) + 100 * np.round(ey)
    inside = (ex > -0.5) & (ex < wd - 0.5) & (ey > -0.5) & (ey < hd - 0.5)
    assert np.array_equal(np.isfinite(out), inside)
    assert 0.9 < inside.mean() < 1.0
    np.testing.assert_array_equal(out[inside], expected[inside])


def test_fold_over_and_missing_depth_become_nan() -> None:
    h, w = 20, 20
    zero = np.zeros((h, w, 2), np.float32)
    depth_mm = np.full((h, w), 1500, np.uint16)
    depth_mm[5, :] = 0
    fold = zero.copy()
    fold[:, 10:, 0] = -8.0  # columns 10.. sample the same RGB pixels as columns 2..: no unique inverse
    out = fuse(np.zeros((h, w), np.uint16), 'mono16', zero, np.zeros((h, w, 3), np.uint8), depth_mm, '16UC1',
               fold, (h, w))
    assert set(out) == set(FUSED_TOPICS)
    depth, enc = out['fused/depth']
    assert enc == '32FC1' and depth.dtype == np.float32
    assert np.isnan(depth[5]).all()
    assert np.allclose(depth[0, :2], 1.5)
    assert np.isnan(depth[0]).sum() > 2  # the folded columns found no consistent depth pixel


def test_depth_metres_marks_no_data() -> None:
    m = depth_metres(np.array([[0, 2500]], np.uint16), '16UC1')
    assert np.isnan(m[0, 0]) and m[0, 1] == pytest.approx(2.5)
    f = depth_metres(np.array([[np.inf, 0.0, 3.0, np.nan]], np.float32), '32FC1')
    assert np.isnan(f[0, :2]).all() and f[0, 2] == 3.0 and np.isnan(f[0, 3])


# -- PairProcessor --------------------------------------------------------------------------------
class ShiftRegistrar:
    """A stand-in Registrar with a known constant flow (the real ones are tested in their own layer)."""

    pair = 'rgb_lwir'
    backend = 'fake'

    def __init__(self, dx: float) -> None:
        self.dx = dx
        self.calls = 0

    def register(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str):
        from nmr import flow as nmr_flow
        from nmr.inference.registrar import Registration

        self.calls += 1
        h, w = fixed_raw.shape
        flow = np.zeros((h, w, 2), np.float32)
        flow[..., 0] = self.dx
        registered, valid = nmr_flow.warp(moving_rgb, flow)
        return Registration(flow=flow, registered=registered, valid=valid, timings_ms={'total': 1.0})


def test_pair_processor_outputs_are_on_the_fixed_grid() -> None:
    pytest.importorskip('nmr.data.preprocess')
    from nmr.pipeline.outputs import PairProcessor

    rng = np.random.default_rng(0)
    moving = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    fixed = rng.integers(0, 65535, (12, 16), dtype=np.uint16)
    proc = PairProcessor(ShiftRegistrar(2.0), overlay_alpha=0.5)
    out = proc.process(moving, fixed, 'mono16')
    assert {k: (v[0].shape, v[0].dtype, v[1]) for k, v in out.items()} == {
        'registered': ((12, 16, 3), np.uint8, 'rgb8'),
        'flow': ((12, 16, 2), np.float32, '32FC2'),
        'flow_viz': ((12, 16, 3), np.uint8, 'rgb8'),
        'overlay': ((12, 16, 3), np.uint8, 'rgb8'),
    }
    assert np.all(out['flow'][0][..., 0] == 2.0)
    only = proc.process(moving, fixed, 'mono16', wanted=['flow'])
    assert set(only) == {'flow'}


@pytest.mark.parametrize(('fixed', 'encoding', 'words'), [
    (np.zeros((8, 8), np.uint16), '16UC1', 'encoding'),
    (np.zeros((0, 8), np.uint16), 'mono16', 'shape'),
    (np.zeros((8, 8, 3), np.uint8), 'mono8', 'shape'),
])
def test_pair_processor_rejects_bad_fixed_images(fixed: np.ndarray, encoding: str, words: str) -> None:
    from nmr.pipeline.outputs import PairProcessor

    reg = ShiftRegistrar(0.0)
    with pytest.raises(NmrUserError, match=words):
        PairProcessor(reg).process(np.zeros((8, 8, 3), np.uint8), fixed, encoding)
    assert reg.calls == 0


def test_non_finite_depth_is_no_data_before_the_registrar_sees_it() -> None:
    from nmr.pipeline.outputs import check_fixed

    depth = np.array([[np.inf, -np.inf, np.nan, 2.0]], np.float32)
    clean = check_fixed('depth', depth, '32FC1')
    assert np.isnan(clean[0, :3]).all() and clean[0, 3] == 2.0
    assert np.isinf(depth[0, 0])  # the caller's array is untouched
