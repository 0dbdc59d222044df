"""The figure code shared by `nmr evaluate --figures` and `nmr demo`, on synthetic frames with known answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr.evaluation import figures as F

HW = (96, 128)


def _scene(hw: tuple[int, int] = HW, shift: int = 0) -> np.ndarray:
    """An RGB frame: a bright square on a dark ground, moved `shift` px right."""
    img = np.full((*hw, 3), 40, np.uint8)
    img[30:70, 40 + shift : 80 + shift] = (220, 200, 180)
    return img


def _depth(hw: tuple[int, int] = HW) -> np.ndarray:
    """16UC1 depth: a ramp 2 m (left) .. 20 m (right), a near box at 1 m, a band of holes (0)."""
    depth = np.tile(np.linspace(2000, 20000, hw[1]).astype(np.uint16), (hw[0], 1))
    depth[30:70, 40:80] = 1000
    depth[:10] = 0
    return depth


def _row(fixed_kind: str = 'lwir', registered_shift: int = 0, gt: bool = True) -> F.FigureRow:
    moving = _scene(shift=4)
    fixed = cv2.cvtColor(_scene(), cv2.COLOR_RGB2GRAY).astype(np.uint16) * 100
    flow = np.zeros((*HW, 2), np.float32)
    flow[..., 0] = 4.0 - registered_shift
    registered = _scene(shift=registered_shift)
    raw, enc = (fixed, 'mono16') if fixed_kind == 'lwir' else (_depth(), '16UC1')
    return F.FigureRow(moving, raw, fixed_kind, enc, registered, flow, label='cam @ 1.500 s',
                       epe_before=4.0 if gt else None, epe_after=1.0 if gt else None)


def test_depth_is_a_colour_map_stretched_over_valid_pixels_with_grey_holes() -> None:
    rgb = F.depth_colour(_depth(), '16UC1')
    holes = _depth() == 0
    assert (rgb[holes] == F.HOLE_COLOUR).all()
    valid = rgb[~holes]
    assert np.percentile(valid.max(axis=1), 99) > 200  # bright, not the old near-black inverse-depth stretch
    assert not (valid == F.HOLE_COLOUR).all(axis=1).any()  # no valid pixel looks like a hole
    near, far = rgb[50, 60], rgb[50, 126]
    assert near[0] > near[2] and far[2] > far[0]  # near red, far blue
    metres = np.where(_depth() == 0, np.nan, _depth() / 1000.0).astype(np.float32)
    assert np.array_equal(F.depth_colour(metres, '32FC1'), rgb)  # 32FC1 metres: the same picture


def test_row_has_eight_titled_panels_flow_scale_and_epe_header() -> None:
    row = _row()
    panels = F.row_panels(row, 100)
    assert len(panels) == 8 and all(p.shape[0] == 100 for _, p in panels)
    titles = [t for t, _ in panels]
    assert titles[0].startswith('moving') and titles[1].startswith('fixed') and titles[2].startswith('registered')
    assert 'max 4.0 px' in titles[3]
    assert titles[4].startswith('before') and titles[5].startswith('after')
    assert titles[6].startswith('zoom x') and 'before' in titles[6] and titles[7].endswith('after')
    assert F.row_header(row) == 'cam @ 1.500 s   EPE 4.00 -> 1.00 px (25 % of unregistered)'
    assert F.row_header(_row(gt=False)) == 'cam @ 1.500 s'
    # the flow panel carries the colour-wheel legend in its lower right corner: many hues, white around it
    flow = panels[3][1]
    corner = flow[-29:-4, -29:-4].reshape(-1, 3)
    assert len({tuple(c // 32) for c in corner}) > 10


def test_titles_are_above_the_panels_on_white() -> None:
    sheet = F.contact_sheet([_row(), _row('depth')], 'nmr test   pair rgb_lwir   model m.pt   backend torch-cpu')
    assert sheet.ndim == 3 and sheet.dtype == np.uint8
    band = F._text_band('registered', 200, 0.5)
    assert (band == 255).mean() > 0.8 and (band < 100).any()  # black text on white, not on the image
    rendered = F.render_row(_row(), 100)
    first = F.row_panels(_row(), 100)[0][1]
    assert np.array_equal(rendered[-100:, : first.shape[1]], first)  # the panels, untouched by any text
    top = rendered[:-100]  # header line and panel titles, above the panels
    assert top.shape[0] > 30 and (top == 255).mean() > 0.8 and (top < 100).any()
    assert sheet.shape[0] > 2 * rendered.shape[0]  # a title line, then one such row per frame pair


def test_edges_before_and_after_show_misalignment() -> None:
    """Fixed edges land on the registered image's edges when aligned, beside them when not."""

    def on_edges(registered_shift: int) -> float:
        row = _row(registered_shift=registered_shift)
        after = F.row_panels(row, HW[0])[5][1]
        magenta = (after == F.EDGE_COLOUR).all(axis=2)
        image_edges = cv2.dilate(F.edges(cv2.cvtColor(row.registered, cv2.COLOR_RGB2GRAY)).astype(np.uint8),
                                 np.ones((3, 3), np.uint8)) > 0
        return float(image_edges[magenta].mean())

    assert on_edges(0) > 0.9 and on_edges(6) < 0.6


def test_flicker_gif_alternates_fixed_and_registered(tmp_path: Path) -> None:
    path = F.write_flicker_gif(tmp_path / 'f.gif', _row('depth'), height=96)
    ok, anim = cv2.imreadanimation(str(path))
    assert ok and len(anim.frames) == 2 and anim.loop_count == 0
    assert anim.frames[0].shape == anim.frames[1].shape
    assert np.abs(anim.frames[0].astype(int) - anim.frames[1].astype(int)).mean() > 5


def test_evaluate_figures_use_the_same_code(tmp_path: Path) -> None:
    from nmr.cli.main import main

    cv2.imwrite(str(tmp_path / 'm.png'), _scene((120, 160)))
    cv2.imwrite(str(tmp_path / 'f.png'), cv2.cvtColor(_scene((120, 160), 3), cv2.COLOR_RGB2GRAY).astype(np.uint16))
    np.save(tmp_path / 'flow.npy', np.zeros((120, 160, 2), np.float32))
    manifest = tmp_path / 'manifest.csv'
    manifest.write_text('name,moving,fixed,flow\nscene/0,m.png,f.png,flow.npy\n')
    figs = tmp_path / 'figs'
    assert main(['evaluate', '--model', 'identity', '--manifest', str(manifest), '--fixed-kind', 'lwir',
                 '--figures', str(figs)]) == 0
    sheet = cv2.imread(str(figs / 'scene_0.png'))
    ok, anim = cv2.imreadanimation(str(figs / 'scene_0.gif'))
    assert sheet is not None and ok and len(anim.frames) == 2
    expected = F.contact_sheet([F.FigureRow(np.zeros((120, 160, 3), np.uint8), np.zeros((120, 160), np.uint16),
                                            'lwir', 'mono16', np.zeros((120, 160, 3), np.uint8),
                                            np.zeros((120, 160, 2), np.float32), 'scene/0', 1.0, 1.0)], 't')
    assert sheet.shape == expected.shape  # one row, same layout as the demo's sheets


@pytest.mark.parametrize('kind', ['lwir', 'depth', 'other'])
def test_fixed_views_for_every_kind(kind: str) -> None:
    raw, enc = (_depth(), '16UC1') if kind == 'depth' else (np.arange(HW[0] * HW[1]).reshape(HW).astype(np.uint16),
                                                            'mono16')
    panel, grey, holes = F.fixed_views(kind, raw, enc)
    assert panel.shape == (*HW, 3) and grey.shape == HW and holes.shape == HW
    assert grey.max() > 200


def test_the_zoom_magnifies_the_window_where_the_error_shows_at_edges() -> None:
    """Issue 23 (11): at full-sheet size a few pixels of misalignment did not show; the zoom panels magnify
    the window of largest error (at the fixed image's edges), outlined in yellow on the edge panels."""
    row = _row()
    error = np.full(HW, 0.5, np.float32)
    error[25:45, 70:90] = 6.0  # a hot spot on the square's right edge (x = 80)
    error[:, :10] = 50.0       # larger, but where the fixed image has no edge: nothing would show there
    row.error_map = error
    y0, x0, h, w = F.zoom_window(row, *F.fixed_views('lwir', row.fixed_raw, 'mono16')[1:])
    assert (h, w) == (HW[0] // 4, HW[1] // 4)
    assert y0 <= 35 <= y0 + h and x0 <= 80 <= x0 + w, (y0, x0, h, w)
    panels = dict(F.row_panels(row, 96))
    before = panels['before: fixed edges on moving']
    box = (before == F.ZOOM_COLOUR).all(axis=2)
    ys, xs = np.nonzero(box)
    assert abs(ys.min() - y0) <= 1 and abs(xs.min() - x0) <= 1  # the outline is the window (panel = fixed grid)
    zoom_before, zoom_after = (p for t, p in panels.items() if t.startswith('zoom x'))
    magenta = [(z == F.EDGE_COLOUR).all(axis=2) for z in (zoom_before, zoom_after)]
    assert all(m.any() for m in magenta)  # the edges are there, magnified


def test_outside_the_rgb_view_is_hatched_and_labelled_not_black() -> None:
    """Issue 23 (11): the registered panel had unlabelled black bars where it samples outside the RGB image."""
    row = _row()
    row.flow[:, :20, 0] = -50.0  # the first 20 columns sample left of the moving image
    row.registered[:, :20] = 0
    title, panel = F.row_panels(row, HW[0])[2]
    assert 'hatched: outside the RGB view' in title
    left = panel[:, :20].reshape(-1, 3)
    assert not (left == 0).all(axis=1).any()  # no black
    assert {tuple(c) for c in left} <= set(F.HATCH_COLOURS)
    assert 'hatched' not in F.row_panels(_row(registered_shift=4), HW[0])[2][0]  # zero flow: nothing outside


def test_demo_picks_rows_with_depth_content_spread_over_the_run() -> None:
    """Issue 23 (11): the demo drew the first frames; a depth frame with mostly no data made a grey sheet."""
    from nmr.demo import pick_rows

    rows = []
    for i in range(10):
        depth = _depth()
        if i in (0, 1, 2, 7):
            depth[: HW[0] * 3 // 4] = 0  # mostly no data
        rows.append(F.FigureRow(_scene(), depth, 'depth', '16UC1', _scene(), np.zeros((*HW, 2), np.float32),
                                label=str(i)))
    assert [r.label for r in pick_rows(rows, 3)] == ['3', '5', '9']
    assert [r.label for r in pick_rows(rows, 10)] == ['3', '4', '5', '6', '8', '9']
