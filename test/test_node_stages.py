"""The node's stages (nmr.pipeline.outputs.PairProcessor.run, nmr.pipeline.native) against the reference path.

"Before" is what the node did until issue 21: `Registrar.register` (torch post-processing, float64
grid_sample) and `PairProcessor.outputs` (the fixed image normalised again for the overlay). "After" is
`PairProcessor.run`: the network grid, OpenCV up-sampling and remap, the overlay from the network's own
normalised fixed image. A recorded set (written to a bag and read back, as register-bag and the node
receive it) of the real camera sizes, scaled down, goes through both, with fresh `corr` models (the
shipped architecture) on torch and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nmr.pipeline.native import NativeGrid

PAIRS = {'rgb_lwir': ('lwir', 'mono16'), 'rgb_depth': ('depth', '16UC1')}
SIZES = {'rgb': (120, 160), 'lwir': (128, 160), 'depth': (120, 212)}  # FULL_SIZE / 4, aspect kept
NET_HW = (64, 80)


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nmr.bench.fresh import fresh_checkpoint

    folder = tmp_path_factory.mktemp('stage_models')
    return {p: fresh_checkpoint(folder / f'{p}.pt', 'corr', p, NET_HW, flow_scale=1.0, seed=i)
            for i, p in enumerate(PAIRS)}


@pytest.fixture(scope='module')
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, str]]:
    """One rig set written to a bag and read back (stream -> (array, encoding))."""
    from nmr.data.bag_reader import iter_images
    from nmr.data.bag_writer import BagWriter
    from nmr.ros.testing import make_frames

    frames = make_frames(7, SIZES['rgb'], SIZES['lwir'], SIZES['depth'])
    folder = tmp_path_factory.mktemp('recorded') / 'set'
    arrays = {'rgb': (frames.rgb, 'rgb8'), 'lwir': (frames.lwir, 'mono16'), 'depth': (frames.depth, '16UC1')}
    with BagWriter(folder) as writer:
        for i, (stream, (arr, enc)) in enumerate(arrays.items()):
            writer.write_image(f'/{stream}', 1_000_000_000 + i, stream, arr, enc)
    out = {}
    for topic, _rec, arr, enc, _header in iter_images(folder, [f'/{s}' for s in arrays]):
        out[topic.strip('/')] = (arr, enc)
    return out


def _processor(model: Path, backend: str, pair: str, monkeypatch: Any, cache: Path) -> Any:
    from nmr.pipeline.outputs import PairProcessor
    from nmr.pipeline.settings import create_registrar, validate

    monkeypatch.setenv('NMR_CACHE_DIR', str(cache))
    # the network-grid path is what is compared here; rgb_depth's tile refinement (on by default) takes the
    # registrar's own path (nmr.inference.tiles; test_tiles.py)
    settings = validate({'backend': backend, 'device': 'cpu', 'viz_max_rate_hz': 0.0,
                         'refine_tiles.rgb_depth': False})
    return PairProcessor(create_registrar(model, settings, pair, log=lambda _t: None), pair)


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
@pytest.mark.parametrize('pair', list(PAIRS))
def test_outputs_are_identical_before_and_after_on_a_recorded_set(
        backend: str, pair: str, models: dict[str, Path], recorded: dict[str, Any], monkeypatch: Any,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    proc = _processor(models[pair], backend, pair, monkeypatch, tmp_path_factory.getbasetemp() / 'cache')
    assert proc._fast, 'the CPU registrar takes the network-grid path'
    moving = recorded['rgb'][0]
    fixed, enc = recorded[PAIRS[pair][0]]
    before = proc.outputs(proc.register(moving, fixed, enc), fixed, enc)
    after = proc.run(moving, fixed, enc).outputs
    assert set(after) == set(before) == {'registered', 'flow', 'flow_viz', 'overlay'}
    for name, (arr, encoding) in before.items():
        assert after[name][1] == encoding and after[name][0].shape == arr.shape and after[name][0].dtype == arr.dtype
    flow_before, flow_after = before['flow'][0], after['flow'][0]
    assert np.abs(flow_before).max() > 0.5  # a real flow, not the trivial zero
    np.testing.assert_allclose(flow_after, flow_before, atol=1e-4)
    # smooth images: remap's 1/32-pixel positions and fixed-point weights move a grey level at most
    for name in ('registered', 'overlay', 'flow_viz'):
        diff = np.abs(after[name][0].astype(int) - before[name][0].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (name, diff.max(), diff.mean())
    assert {'preprocess', 'net', 'flow', 'warp', 'flow_viz', 'overlay'} <= set(proc.last_timings_ms)


def test_fused_output_is_identical_before_and_after(models: dict[str, Path], recorded: dict[str, Any],
                                                      monkeypatch: Any, tmp_path: Path) -> None:
    from nmr.pipeline.fused import fuse

    done = {}
    for pair, (stream, enc) in PAIRS.items():
        proc = _processor(models[pair], 'torch', pair, monkeypatch, tmp_path)
        fixed = recorded[stream][0]
        done[pair] = (proc.register(recorded['rgb'][0], fixed, enc), proc.run(recorded['rgb'][0], fixed, enc,
                                                                            ['flow'], need_registered=True))
    hw = recorded['rgb'][0].shape[:2]
    lwir, depth = recorded['lwir'], recorded['depth']
    ref, new = (fuse(lwir[0], lwir[1], done['rgb_lwir'][k].flow, done['rgb_lwir'][k].registered, depth[0],
                     depth[1], done['rgb_depth'][k].flow, hw)['fused/depth'][0] for k in (0, 1))
    same_nan = np.isnan(ref) == np.isnan(new)
    assert same_nan.mean() > 0.999 and np.isfinite(ref).mean() > 0.3
    both = np.isfinite(ref) & np.isfinite(new)
    assert (ref[both] == new[both]).mean() > 0.999  # nearest-neighbour depth: the same pixel almost always


def test_outputs_not_asked_for_are_not_computed(models: dict[str, Path], recorded: dict[str, Any],
                                               monkeypatch: Any, tmp_path: Path) -> None:
    proc = _processor(models['rgb_lwir'], 'torch', 'rgb_lwir', monkeypatch, tmp_path)
    result = proc.run(recorded['rgb'][0], *recorded['lwir'], ['flow'])
    assert set(result.outputs) == {'flow'} and result.registered is None
    assert not {'warp', 'flow_viz', 'overlay'} & set(proc.last_timings_ms)


def test_visualisations_follow_the_rate_limit_by_header_stamp(models: dict[str, Path], recorded: dict[str, Any],
                                                               monkeypatch: Any, tmp_path: Path) -> None:
    proc = _processor(models['rgb_lwir'], 'torch', 'rgb_lwir', monkeypatch, tmp_path)
    proc.viz_max_rate_hz = 10.0
    made = []
    for k in range(9):  # a 30 Hz camera with 1 ms of jitter
        stamp = 5_000_000_000 + k * 33_333_333 + (1_000_000 if k % 2 else -1_000_000)
        out = proc.run(recorded['rgb'][0], *recorded['lwir'], ['flow', 'flow_viz', 'overlay'], stamp)
        assert 'flow' in out.outputs
        if 'flow_viz' in out.outputs:
            assert 'overlay' in out.outputs
            made.append(k)
    assert made == [0, 3, 6]
    out = proc.run(recorded['rgb'][0], *recorded['lwir'], ['flow_viz'], 1_000_000_000)  # stamp went back
    assert 'flow_viz' in out.outputs


def test_flow_viz_at_a_reduced_size_stays_on_the_fixed_grid(models: dict[str, Path], recorded: dict[str, Any],
                                                            monkeypatch: Any, tmp_path: Path) -> None:
    proc = _processor(models['rgb_lwir'], 'torch', 'rgb_lwir', monkeypatch, tmp_path)
    full = proc.run(recorded['rgb'][0], *recorded['lwir'], ['flow_viz']).outputs['flow_viz'][0]
    proc.viz_scale = 0.5
    half = proc.run(recorded['rgb'][0], *recorded['lwir'], ['flow_viz']).outputs['flow_viz'][0]
    assert half.shape == full.shape == (*SIZES['lwir'], 3)
    assert np.abs(half.astype(int) - full.astype(int)).mean() < 8  # the same colours, coarser


def test_a_prior_flow_is_composed_with_the_residual(models: dict[str, Path], recorded: dict[str, Any],
                                                    monkeypatch: Any, tmp_path: Path) -> None:
    """The rig hook (issue 20): the moving image is pre-warped by the prior, the network's residual is
    composed with it. The prior "no misalignment" (the moving image rescaled onto the fixed grid) gives
    the plain result up to resampling; a prior that adds a shift is carried into the flow."""
    proc = _processor(models['rgb_depth'], 'torch', 'rgb_depth', monkeypatch, tmp_path)
    moving, (fixed, enc) = recorded['rgb'][0], recorded['depth']
    plain = proc.run(moving, fixed, enc, ['flow', 'registered'])
    rescale = NativeGrid().flow(np.zeros((4, 4, 2), np.float32), fixed.shape, moving.shape[:2])
    calls = []
    shift = np.zeros(2, np.float32)

    def prior(m: np.ndarray, f: np.ndarray, e: str) -> np.ndarray:
        calls.append((m.shape, f.shape, e))
        return rescale + shift

    proc.prior_flow = prior
    neutral = proc.run(moving, fixed, enc, ['flow', 'registered'])
    assert calls == [(moving.shape, fixed.shape, enc)]
    assert neutral.registered is not None and neutral.registered.shape == (*fixed.shape, 3)
    inner = (slice(8, -8), slice(8, -8))  # away from the borders, where pre-warping loses pixels
    assert np.abs(neutral.flow[inner] - plain.flow[inner]).mean() < 0.5
    shift = np.array([3.0, -2.0], np.float32)
    shifted = proc.run(moving, fixed, enc, ['flow'])
    assert np.abs((shifted.flow - shift)[inner] - neutral.flow[inner]).mean() < 0.5
    proc.prior_flow = None  # the same prior given with the set (a caller holding the depth frame)
    given = proc.run(moving, fixed, enc, ['flow'], prior=rescale + shift)
    np.testing.assert_array_equal(given.flow, shifted.flow)
    from nmr.errors import NmrUserError

    with pytest.raises(NmrUserError, match='prior flow has shape'):
        proc.run(moving, fixed, enc, ['flow'], prior=np.zeros((4, 4, 2), np.float32))


def test_native_grid_matches_the_torch_geometry() -> None:
    import torch

    from nmr.models.resampler import flow_to_native, warp

    rng = np.random.default_rng(0)
    flow_n = rng.normal(0, 2, (16, 20, 2)).astype(np.float32)
    grid = NativeGrid()
    for fixed_hw, moving_hw in (((64, 80), (48, 64)), ((61, 83), (70, 90)), ((16, 20), (16, 20))):
        ref = flow_to_native(torch.from_numpy(flow_n).permute(2, 0, 1)[None], fixed_hw, moving_hw)
        ref_np = ref[0].permute(1, 2, 0).numpy()
        ours = grid.flow(flow_n, fixed_hw, moving_hw)
        np.testing.assert_allclose(ours, ref_np, atol=1e-4)
        moving = rng.integers(0, 256, (*moving_hw, 3), dtype=np.uint8)
        warped, valid = warp(torch.from_numpy(moving).permute(2, 0, 1)[None].float(), ref)
        expected = warped[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
        diff = np.abs(grid.warp(moving, ours).astype(int) - expected.astype(int))
        # random noise has edges of up to 255 per pixel: 1/32-pixel positions can move a value by ~8
        assert diff.max() <= 255 // 32 + 1 and diff.mean() < 1.0
        assert (grid.valid(ours, moving_hw) == valid[0, 0].numpy()).mean() > 0.999
    zero = grid.flow(np.zeros((16, 20, 2), np.float32), (16, 20), (16, 20))
    moving = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    assert (grid.warp(moving, zero) == moving).all()  # zero flow is exactly the identity


def test_the_exported_cost_volume_has_fewer_ops_and_the_same_flow(tmp_path: Path) -> None:
    """The export-only cost volume (one Mul/ReduceSum per row of displacements) matches the torch one."""
    import onnx
    import onnxruntime as ort
    import torch

    from nmr.bench.fresh import fresh_checkpoint
    from nmr.inference.export import export_checkpoint
    from nmr.models.correlation import _cost_volume_by_rows, cost_volume

    rng = torch.Generator().manual_seed(0)
    fixed, moving = torch.randn(2, 8, 12, 16, generator=rng), torch.randn(2, 8, 12, 16, generator=rng)
    for radius in (1, 3):
        padded = torch.nn.functional.pad(moving, (radius,) * 4)
        by_rows = _cost_volume_by_rows(fixed, padded, 2 * radius + 1)
        torch.testing.assert_close(by_rows, cost_volume(fixed, moving, radius))
    model = fresh_checkpoint(tmp_path / 'corr.pt', 'corr', 'rgb_lwir', NET_HW, flow_scale=1.0)
    export_checkpoint(model, tmp_path / 'corr.onnx', sizes=[NET_HW], log=lambda _s: None)  # checks parity itself
    ops = [n.op_type for n in onnx.load(str(tmp_path / 'corr.onnx')).graph.node]
    radii = (2, 3, 4, 4)  # the corr defaults: one ReduceSum per row of displacements, not per displacement
    assert ops.count('ReduceSum') < sum((2 * r + 1) ** 2 for r in radii) // 2, ops.count('ReduceSum')
    sess = ort.InferenceSession(str(tmp_path / 'corr.onnx'), providers=['CPUExecutionProvider'])
    assert sess.get_inputs()[0].name == 'moving'


def _grid_bytes(grid: NativeGrid) -> int:
    return sum(a.nbytes for cache in (grid._offsets, grid._identities) for a in cache.values())


def test_native_grid_keeps_only_the_current_size() -> None:
    """Issue 22, item 4: a burst of large frames must not leave its grids (16 bytes per pixel) behind."""
    grid = NativeGrid()
    flow_n = np.zeros((16, 20, 2), np.float32)
    for hw in ((64, 80), (480, 640), (64, 80)):
        grid.positions(grid.flow(flow_n, hw, (hw[0] + 8, hw[1] + 8)))
        assert len(grid._offsets) == len(grid._identities) == 1
        assert _grid_bytes(grid) == 16 * hw[0] * hw[1]


def _rss_mb() -> float:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith('VmRSS:'))


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads VmRSS from /proc')
def test_memory_goes_back_after_a_burst_of_large_frames() -> None:
    """The resident memory, not just the cache: after 4096x3072 frames (200 MB of grids) and a drop back
    to 640x512, RSS is within 60 MB of where it was before the burst (it was +200 MB with a cache of 4).
    The heap is trimmed before each reading, as the node does after a size change (SizeChangeTrimmer):
    earlier tests in the same process (large freed arrays raise glibc's mmap threshold) otherwise leave
    freed grids on the heap, which says nothing about the cache (in the full suite: +112 MB untrimmed)."""
    from nmr.pipeline.memory import release_free_heap

    grid = NativeGrid()
    flow_n = np.zeros((16, 20, 2), np.float32)
    moving = np.zeros((64, 80, 3), np.uint8)

    def frame(hw: tuple[int, int]) -> None:
        flow = grid.flow(flow_n, hw, (64, 80))
        grid.warp(moving, flow)
        grid.valid(flow, (64, 80))

    frame((512, 640))
    release_free_heap()
    before = _rss_mb()
    frame((3072, 4096))
    assert _rss_mb() - before > 150  # the large grids were resident (so the check below means something)
    frame((512, 640))
    release_free_heap()  # frees only what nothing references: a cache that kept the large grids still fails
    assert _rss_mb() - before < 60


def test_heap_is_trimmed_only_after_a_size_change() -> None:
    """malloc_trim walks the heap: never in the steady state, twice after each size change (sets 1 and 4
    after it), not at the very first set."""
    from nmr.pipeline.memory import SizeChangeTrimmer, release_free_heap

    trims: list[int] = []
    sets = [(512, 640)] * 6 + [(3072, 4096)] * 2 + [(512, 640)] * 10
    seen: list[tuple[int, int]] = []
    trimmer = SizeChangeTrimmer(trim=lambda: trims.append(len(seen) - 1))
    for size in sets:
        seen.append(size)
        trimmer.observe(size)
    assert trims == [7, 9, 12]  # the large burst's 2nd set; the small size's 2nd and 5th; none in between
    assert isinstance(release_free_heap(), bool)  # glibc here; a no-op elsewhere
