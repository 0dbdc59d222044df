"""Tile refinement (nmr.inference.tiles): the geometry of pre-warp + tiles + composition, and where it is on.

The composition is checked with a real estimator for pure translations (phase correlation, exact to a
fraction of a pixel) in place of the network, whose own error would hide a sign or offset mistake.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr.domain import REFINE_TILES_PAIRS
from nmr.errors import ConfigError
from nmr.inference.registrar import NetFlow
from nmr.inference.tiles import TileRefinedRegistrar, tile_boxes, tile_weights
from nmr.pipeline.settings import validate

MODELS = Path(__file__).resolve().parents[1] / 'models'


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)


def shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """img moved by (dx, dy): shifted(v) = img(v - d), so registering shifted onto img gives phi = d."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


class PhaseCorrelation:
    """A translation estimator with the `net_flow` interface of a model registrar; `bias` is added on the
    whole image only (a first pass that is off by a known amount; tiles are smaller than the image)."""

    pair = 'rgb_depth'
    backend = 'phase-correlation'
    device = 'cpu'

    def __init__(self, full_hw: tuple[int, int], bias: tuple[float, float]) -> None:
        self.full_hw, self.bias = full_hw, bias

    def describe(self) -> str:
        return 'phase correlation'

    def net_flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str) -> NetFlow:
        moving = cv2.cvtColor(moving_rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
        window = cv2.createHanningWindow(moving.shape[::-1], cv2.CV_64F)
        (dx, dy), _ = cv2.phaseCorrelate(fixed_raw.astype(np.float64), moving, window)
        if tuple(fixed_raw.shape) == self.full_hw:
            dx, dy = dx + self.bias[0], dy + self.bias[1]
        h, w = fixed_raw.shape
        flow = np.empty((h, w, 2), np.float32)
        flow[..., 0], flow[..., 1] = dx, dy
        return NetFlow(flow, None, (h, w), (h, w))  # type: ignore[arg-type]


def test_tiles_cover_the_image_and_weigh_their_centres_most() -> None:
    boxes = tile_boxes(128, 160, 0.6)
    covered = np.zeros((128, 160), int)
    for ys, xs in boxes:
        covered[ys, xs] += 1
    assert len(boxes) == 4 and covered.min() >= 1 and covered.max() == 4  # the middle is in all four
    wt = tile_weights(77, 96)
    assert wt.min() > 0 and wt[38, 47] == pytest.approx(wt.max(), rel=0.05) and wt[0, 0] < 0.01
    with pytest.raises(ConfigError, match='tile fraction'):
        TileRefinedRegistrar(PhaseCorrelation((8, 8), (0, 0)), tile=1.0)  # type: ignore[arg-type]


def test_the_tiles_correct_a_first_pass_that_is_off() -> None:
    """A first pass 2.5 px off is corrected by the tiles' residual: the sign of the pre-warp and the
    composition are right (a wrong one doubles the error instead)."""
    h, w = 128, 160
    fixed = texture(h, w)
    truth = (3.4, -2.2)
    moving = np.repeat(shifted(fixed, *truth)[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)
    fixed8 = fixed.clip(0, 255).astype(np.uint8)
    tiled = TileRefinedRegistrar(PhaseCorrelation((h, w), (2.5, -1.5)))  # type: ignore[arg-type]
    first = tiled.native_flow(moving, fixed8, 'mono8')
    result = tiled.register(moving, fixed8, 'mono8')
    inner = (slice(16, -16), slice(16, -16))  # away from the replicated borders
    err_first = np.abs(first[inner] - truth).mean()
    err_tiled = np.abs(result.flow[inner] - truth).mean()
    assert err_first > 1.9 and err_tiled < 0.3, (err_first, err_tiled)
    assert result.registered.shape == (h, w, 3) and result.valid.shape == (h, w)
    assert set(result.timings_ms) >= {'first', 'tiles', 'total'}


def test_tile_refinement_is_on_where_the_settings_say() -> None:
    assert validate({}).refine_tiles == REFINE_TILES_PAIRS == ('rgb_depth',)
    assert validate({'refine_tiles.rgb_depth': False}).refine_tiles == ()
    assert validate({'refine_tiles.rgb_lwir': True}).refine_tiles == ('rgb_lwir', 'rgb_depth')
    with pytest.raises(ConfigError, match=r'refine_tiles\.rgb_depth'):
        validate({'refine_tiles.rgb_depth': 'sometimes'})
    with pytest.raises(ConfigError, match=r'refine_tiles\.rgb_thermal'):
        validate({'refine_tiles.rgb_thermal': True})


@pytest.mark.parametrize(('pair', 'tiles'), [('rgb_depth', True), ('rgb_lwir', False)])
def test_the_node_and_evaluate_wrap_the_shipped_models_by_default(pair: str, tiles: bool) -> None:
    """The same default in the node's registrar factory and in `nmr evaluate` (one reference)."""
    from nmr.evaluation.cli import make_registrar
    from nmr.pipeline.settings import create_registrar

    model = MODELS / f'{pair}.onnx'
    node = create_registrar(model, validate({'backend': 'onnxruntime', 'device': 'cpu'}), pair, log=lambda _m: None)
    offline = make_registrar(str(model), 'onnxruntime', 'cpu', None, pair, lambda _m: None)
    assert isinstance(node, TileRefinedRegistrar) == tiles == isinstance(offline, TileRefinedRegistrar)
    forced = make_registrar(str(model), 'onnxruntime', 'cpu', None, pair, lambda _m: None, refine_tiles='on')
    assert isinstance(forced, TileRefinedRegistrar)
    rng = np.random.default_rng(1)
    moving = rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)
    fixed = (rng.integers(500, 4000, (90, 112), dtype=np.uint16) if pair == 'rgb_depth'
             else rng.integers(0, 255, (90, 112), dtype=np.uint8))
    out = forced.register(moving, fixed, '16UC1' if pair == 'rgb_depth' else 'mono8')
    assert out.flow.shape == (90, 112, 2) and np.isfinite(out.flow).all()
    assert out.registered.shape == (90, 112, 3) and out.registered.dtype == np.uint8
