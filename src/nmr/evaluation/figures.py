"""Figures that show the alignment: Figure-4 style contact sheets and flicker GIFs (OpenCV only).

One code path for `nmr evaluate --figures` and `nmr demo`. A sheet has a title line (model, backend,
pair) and one row per frame pair; each row has a header (frame id / stamp, EPE before -> after where
ground truth exists) and eight panels, each with its title ABOVE it on white (text drawn on the image is
unreadable on bright panels):

    moving | fixed | registered | flow | edges before | edges after | zoom before | zoom after

- Depth is shown as depth viewers do: inverse depth stretched over the VALID pixels (1st-99th
  percentile) through the Turbo colour map, near = red, far = blue, holes in grey (a colour Turbo never
  uses). LWIR is percentile-stretched and histogram-equalised grey (as
  a thermal camera's gain control shows it).
- The two alignment panels draw the fixed image's edges (magenta) over the moving image rescaled onto the
  fixed grid (before) and over the registered image (after). The images are of different modalities,
  so a blend or colour composite of intensities shows colour everywhere; edges are what both share, and
  misalignment shows as magenta lines beside the structures they belong to. (A 50 % grey blend hid it:
  before and after differed by 2/255 on average.)
- The flow panel has a Middlebury colour-wheel legend and states its maximum magnitude in pixels.
- The two zoom panels magnify the same window of the before / after edge panels (outlined in yellow
  there) where the unregistered error is largest (ground truth), or where the flow moved the image most
  (without ground truth): at full-sheet size a few pixels of misalignment are invisible.
- Invalid regions are marked, not left black: where the registered image samples outside the RGB
  image (zeros by the flow convention) the panels are hatched and their title says so.

`write_flicker_gif` writes an animated GIF that alternates fixed and moving (before) / fixed and
registered (after), side by side: people judge alignment by flicking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nmr import atomic
from nmr.flow import flow_to_rgb, warp

HOLE_COLOUR = (128, 128, 128)   # depth without data: grey, which Turbo never produces
EDGE_COLOUR = (255, 0, 255)     # fixed-image edges: magenta
ZOOM_COLOUR = (255, 210, 0)     # the zoom window's outline: yellow
HATCH_COLOURS = ((235, 235, 235), (175, 175, 175))   # outside the RGB view: light grey diagonal stripes
ZOOM_FRACTION = 4               # the zoom window is 1/4 of the fixed image's width and height
BACKGROUND = 255
GAP = 6
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class FigureRow:
    """One frame pair of a sheet: the inputs, the model's output and what to write above it."""

    moving_rgb: np.ndarray        # HmxWmx3 uint8
    fixed_raw: np.ndarray         # HfxWf, as received (mono8/mono16 LWIR, 16UC1/32FC1 depth)
    fixed_kind: str               # 'lwir' | 'depth' (anything else: grey stretch)
    fixed_encoding: str
    registered: np.ndarray        # HfxWfx3 uint8: moving warped by `flow`
    flow: np.ndarray              # HfxWfx2
    label: str = ''               # frame id and stamp, or the manifest name
    epe_before: float | None = None   # px, vs ground truth, when there is one
    epe_after: float | None = None
    error_map: np.ndarray | None = None
    """HfxWf unregistered error per pixel (px, NaN = no ground truth there): where to zoom. None: zoom
    where the flow beyond the plain rescale is largest."""


# -- fixed image display ---------------------------------------------------------------------------
def depth_metres(raw: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1 millimetres or 32FC1 metres -> float32 metres, NaN where there is no data."""
    if encoding == '16UC1' or raw.dtype == np.uint16:
        metres = raw.astype(np.float32) / np.float32(1000.0)
        metres[raw == 0] = np.nan
        return metres
    metres = np.array(raw, dtype=np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def _stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values -> float32 in [0, 1] by the 1st-99th percentile of the valid ones (0 elsewhere)."""
    out = np.zeros(values.shape, np.float32)
    if valid.any():
        lo, hi = np.percentile(values[valid], (1.0, 99.0))
        out[valid] = np.clip((values[valid] - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return out


def depth_levels(raw: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(inverse depth stretched over the valid pixels as HxW uint8, valid HxW bool)."""
    metres = depth_metres(raw, encoding)
    valid = np.isfinite(metres)
    return (_stretch(1.0 / np.where(valid, metres, 1.0), valid) * 255).astype(np.uint8), valid


def depth_colour(raw: np.ndarray, encoding: str) -> np.ndarray:
    """Depth as HxWx3 RGB: Turbo over inverse depth of the valid pixels (near red, far blue), holes grey."""
    level, valid = depth_levels(raw, encoding)
    rgb = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~valid] = HOLE_COLOUR
    return rgb


def grey_stretch(raw: np.ndarray) -> np.ndarray:
    """Any single-channel or RGB image -> HxW uint8 stretched over its finite, non-zero pixels."""
    a = np.asarray(raw)
    a = a.astype(np.float32).mean(axis=2) if a.ndim == 3 else a.astype(np.float32)
    valid = np.isfinite(a) & (a != 0)
    return (_stretch(np.where(np.isfinite(a), a, 0.0), valid) * 255).astype(np.uint8)


def fixed_views(kind: str, raw: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(panel RGB, grey for edge detection, holes) of a fixed image. Depth edges come from inverse depth."""
    if kind == 'depth':
        grey, valid = depth_levels(raw, encoding)
        return depth_colour(raw, encoding), grey, ~valid
    grey = grey_stretch(raw)
    if kind == 'lwir':  # as a thermal camera's automatic gain control: equalised, structure everywhere
        grey = np.asarray(cv2.equalizeHist(grey), dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), grey, np.zeros(grey.shape, bool)


# -- panels ----------------------------------------------------------------------------------------
def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.uint8)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])


def _resize(img: np.ndarray, height: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    w = max(1, round(img.shape[1] * height / img.shape[0]))
    return cv2.resize(img, (w, height), interpolation=interpolation)


def edges(grey: np.ndarray, holes: np.ndarray | None = None) -> np.ndarray:
    """Bool edge map of a uint8 image, for any modality: Canny with Otsu's threshold as the high one.

    `holes` (depth without data) are filled from their surroundings first, so that the speckle of
    missing depth does not turn into edges.
    """
    if holes is not None and holes.any():
        grey = cv2.inpaint(grey, holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    blurred = cv2.medianBlur(cv2.GaussianBlur(grey, (3, 3), 0), 5)
    high, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = max(float(high), 40.0)
    return cv2.Canny(blurred, 0.5 * high, high) > 0


def edge_composite(fixed_edges: np.ndarray, image_rgb: np.ndarray) -> np.ndarray:
    """The fixed image's edges in magenta over a dimmed grey copy of `image_rgb` (same size)."""
    grey = cv2.cvtColor(_rgb(image_rgb), cv2.COLOR_RGB2GRAY)
    out = np.repeat((grey.astype(np.float32) * 0.7 + 20).astype(np.uint8)[:, :, None], 3, axis=2)
    out[fixed_edges] = EDGE_COLOUR
    return out


def wheel_legend(size: int) -> np.ndarray:
    """A Middlebury colour wheel (size x size RGB) on white: the colour of each direction at full length."""
    r = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([(x - r) / r, (y - r) / r], axis=2)
    wheel = flow_to_rgb(flow, max_magnitude=1.0)
    wheel[np.hypot(flow[..., 0], flow[..., 1]) > 1.0] = BACKGROUND
    return wheel


def flow_panel(flow: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    """(flow colour panel at `height` with a wheel legend in its corner, max magnitude in px)."""
    finite = np.isfinite(flow).all(axis=2)
    mags = np.hypot(flow[..., 0], flow[..., 1])[finite]
    max_px = float(mags.max()) if mags.size else 0.0
    panel = _resize(flow_to_rgb(flow, max_magnitude=max(max_px, 1e-3)), height)
    size = max(16, height // 4)
    if panel.shape[1] > size + 8:
        y0, x0 = panel.shape[0] - size - 4, panel.shape[1] - size - 4
        cv2.rectangle(panel, (x0 - 2, y0 - 2), (x0 + size + 1, y0 + size + 1), (255, 255, 255), -1)
        panel[y0 : y0 + size, x0 : x0 + size] = wheel_legend(size)
    return panel, max_px


def hatch(shape: tuple[int, int], period: int = 8) -> np.ndarray:
    """HxWx3 diagonal stripes (HATCH_COLOURS): the mark of pixels the registered image cannot show."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    light = ((x + y) // max(period // 2, 1)) % 2 == 0
    return np.where(light[..., None], np.array(HATCH_COLOURS[0], np.uint8), np.array(HATCH_COLOURS[1], np.uint8))


def _hatched(panel: np.ndarray, outside: np.ndarray) -> np.ndarray:
    out = panel.copy()
    out[outside] = hatch(panel.shape[:2])[outside]
    return out


def zoom_window(row: FigureRow, fixed_grey: np.ndarray, holes: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) on the fixed grid: the 1/ZOOM_FRACTION window where the misalignment shows most.

    The error is the ground-truth unregistered error where the row has one, else the flow's magnitude
    beyond the plain rescale (where the registration moved the image most). It is summed over the fixed
    image's edge pixels only: misalignment is visible at edges, and a window of large error on a
    featureless wall (or on speckle of sparse depth) showed nothing.
    """
    from nmr.evaluation.baselines import identity_flow

    hf, wf = row.fixed_raw.shape[:2]
    h, w = max(8, hf // ZOOM_FRACTION), max(8, wf // ZOOM_FRACTION)
    h, w = min(h, hf), min(w, wf)
    if row.error_map is not None:
        score = np.asarray(row.error_map, np.float32)
    else:
        beyond = row.flow - identity_flow((hf, wf), tuple(row.moving_rgb.shape[:2]))  # type: ignore[arg-type]
        score = np.hypot(beyond[..., 0], beyond[..., 1]).astype(np.float32)
    at_edges = edges(fixed_grey, holes) & np.isfinite(score)
    mean = cv2.boxFilter(np.where(at_edges, score, 0).astype(np.float32), -1, (w, h), normalize=True,
                         borderType=cv2.BORDER_CONSTANT)
    # centres whose window lies inside the image (boxFilter's anchor is the window centre)
    inside = np.full(mean.shape, -1.0, np.float32)
    cy0, cx0 = h // 2, w // 2
    rows, cols = slice(cy0, hf - (h - cy0) + 1), slice(cx0, wf - (w - cx0) + 1)
    inside[rows, cols] = mean[rows, cols]
    cy, cx = np.unravel_index(int(np.argmax(inside)), inside.shape)
    return int(cy) - cy0, int(cx) - cx0, h, w


def _zoomed(img: np.ndarray, window: tuple[int, int, int, int], height: int, nearest: bool = False) -> np.ndarray:
    y0, x0, h, w = window
    crop = img[y0 : y0 + h, x0 : x0 + w]
    return _resize(crop, height, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _outline(panel: np.ndarray, window: tuple[int, int, int, int], fixed_hw: tuple[int, int]) -> np.ndarray:
    """`panel` (the fixed grid scaled to its size) with the zoom window outlined."""
    y0, x0, h, w = window
    sy, sx = panel.shape[0] / fixed_hw[0], panel.shape[1] / fixed_hw[1]
    out = panel.copy()
    cv2.rectangle(out, (round(x0 * sx), round(y0 * sy)), (round((x0 + w) * sx) - 1, round((y0 + h) * sy) - 1),
                  ZOOM_COLOUR, 2)
    return out


def row_panels(row: FigureRow, height: int) -> list[tuple[str, np.ndarray]]:
    """The eight (title, panel) pairs of a row, every panel scaled to `height` pixels."""
    from nmr.evaluation.baselines import identity_flow

    fixed_hw = tuple(row.fixed_raw.shape[:2])
    before, _ = warp(row.moving_rgb, identity_flow(fixed_hw, tuple(row.moving_rgb.shape[:2])))  # type: ignore[arg-type]
    fixed_rgb, fixed_grey, holes = fixed_views(row.fixed_kind, row.fixed_raw, row.fixed_encoding)
    small_holes = _resize(holes.astype(np.uint8), height, cv2.INTER_NEAREST) > 0
    fixed_edges = edges(_resize(fixed_grey, height), small_holes)
    flow, max_px = flow_panel(row.flow - identity_flow(fixed_hw, tuple(row.moving_rgb.shape[:2])), height)  # type: ignore[arg-type]
    _, in_view = warp(np.zeros(row.moving_rgb.shape[:2], np.uint8), np.asarray(row.flow, np.float32))
    outside = ~in_view
    small_outside = _resize(outside.astype(np.uint8), height, cv2.INTER_NEAREST) > 0
    after = _hatched(_resize(_rgb(row.registered), height), small_outside)
    hatched = ' (hatched: outside the RGB view)' if outside.any() else ''
    fixed_title = 'fixed: depth (near red, far blue, grey = no data)' if row.fixed_kind == 'depth' else \
        f'fixed: {"LWIR (equalised)" if row.fixed_kind == "lwir" else row.fixed_kind}'
    # the zoom: the same window of both edge panels, edges found on the magnified fixed image
    window = zoom_window(row, fixed_grey, holes)
    zoom_edges = edges(_zoomed(fixed_grey, window, height), _zoomed(holes.astype(np.uint8), window, height, True) > 0)
    zoom_outside = _zoomed(outside.astype(np.uint8), window, height, True) > 0
    zoom_before = edge_composite(zoom_edges, _zoomed(_rgb(before), window, height))
    zoom_after = _hatched(edge_composite(zoom_edges, _zoomed(_rgb(row.registered), window, height)), zoom_outside)
    factor = height / window[2]
    where = 'largest error' if row.error_map is not None else 'largest flow'
    return [
        ('moving (RGB)', _resize(_rgb(row.moving_rgb), height)),
        (fixed_title, _resize(fixed_rgb, height)),
        ('registered' + hatched, after),
        (f'flow beyond the plain rescale, max {max_px:.1f} px', flow),
        ('before: fixed edges on moving', _outline(edge_composite(fixed_edges, _resize(_rgb(before), height)),
                                                   window, fixed_hw)),  # type: ignore[arg-type]
        ('after: fixed edges on registered', _outline(_hatched(edge_composite(fixed_edges, after), small_outside),
                                                      window, fixed_hw)),  # type: ignore[arg-type]
        (f'zoom x{factor:.0f} before: {where}', zoom_before),
        (f'zoom x{factor:.0f} after', zoom_after),
    ]


# -- text and layout -------------------------------------------------------------------------------
def _text_band(text: str, width: int, scale: float, bold: bool = False) -> np.ndarray:
    """A white band `width` wide with `text` in black, shrunk to fit."""
    thick = 2 if bold else 1
    (_, th), base = cv2.getTextSize('Ag', _FONT, scale, thick)  # the band's height: not the text's
    tw = cv2.getTextSize(text, _FONT, scale, thick)[0][0]
    fit = scale * 0.97 * (width - 8) / tw if tw > width - 8 and tw > 0 else scale
    band = np.full((th + base + 10, max(width, 1), 3), BACKGROUND, np.uint8)
    cv2.putText(band, text, (4, th + 5), _FONT, fit, (0, 0, 0), thick, cv2.LINE_AA)
    return band


def _hstack(parts: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    height = max(p.shape[0] for p in parts)
    out = []
    for i, p in enumerate(parts):
        if i:
            out.append(np.full((height, gap, 3), BACKGROUND, np.uint8))
        out.append(np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=BACKGROUND))
    return np.concatenate(out, axis=1)


def _vstack(parts: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    out = []
    for i, p in enumerate(parts):
        if i and gap:
            out.append(np.full((gap, width, 3), BACKGROUND, np.uint8))
        out.append(np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=BACKGROUND))
    return np.concatenate(out, axis=0)


def row_header(row: FigureRow) -> str:
    """'<label>   EPE 5.51 -> 4.80 px (87 % of unregistered)', or the label alone without ground truth."""
    text = row.label
    if row.epe_before is not None and row.epe_after is not None and np.isfinite(row.epe_before):
        ratio = f' ({100 * row.epe_after / row.epe_before:.0f} % of unregistered)' if row.epe_before > 0 else ''
        text += f'   EPE {row.epe_before:.2f} -> {row.epe_after:.2f} px{ratio}'
    return text


def render_row(row: FigureRow, height: int = 200) -> np.ndarray:
    """Header line, then each panel with its title above it."""
    scale = max(0.4, height / 450)
    columns = [_vstack([_text_band(title, panel.shape[1], scale), panel]) for title, panel in row_panels(row, height)]
    body = _hstack(columns)
    return _vstack([_text_band(row_header(row), body.shape[1], scale * 1.1, bold=True), body])


def contact_sheet(rows: Sequence[FigureRow], title: str, height: int = 200) -> np.ndarray:
    """The whole sheet: a title line (model, backend, pair), then one rendered row per frame pair."""
    if not rows:
        raise ValueError('contact_sheet needs at least one row')
    body = _vstack([render_row(r, height) for r in rows], gap=2 * GAP)
    sheet = _vstack([_text_band(title, body.shape[1], max(0.5, height / 350), bold=True), body], gap=GAP)
    return np.pad(sheet, ((GAP, GAP), (GAP, GAP), (0, 0)), constant_values=BACKGROUND)


def flicker_frames(row: FigureRow, height: int = 240) -> list[np.ndarray]:
    """Two frames, side by side in each: [fixed | fixed] then [moving (before) | registered (after)]."""
    from nmr.evaluation.baselines import identity_flow

    fixed_hw = tuple(row.fixed_raw.shape[:2])
    before, _ = warp(row.moving_rgb, identity_flow(fixed_hw, tuple(row.moving_rgb.shape[:2])))  # type: ignore[arg-type]
    fixed = _resize(fixed_views(row.fixed_kind, row.fixed_raw, row.fixed_encoding)[0], height)
    scale = max(0.45, height / 450)
    frames = []
    for left, right, what in ((fixed, fixed, 'fixed'), (_resize(_rgb(before), height),
                                                        _resize(_rgb(row.registered), height), 'RGB')):
        cols = [_vstack([_text_band(f'{side}: {name}', img.shape[1], scale), img])
                for side, name, img in (('before', what if what == 'fixed' else 'moving', left),
                                        ('after', what if what == 'fixed' else 'registered', right))]
        body = _hstack(cols)
        frames.append(_vstack([_text_band(row_header(row), body.shape[1], scale, bold=True), body]))
    return frames


# -- files -----------------------------------------------------------------------------------------
def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    return atomic.write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_flicker_gif(path: str | Path, row: FigureRow, height: int = 240, period_ms: int = 600) -> Path:
    """An endlessly looping GIF flicking between `flicker_frames` (OpenCV's GIF encoder, no extra package)."""
    animation = cv2.Animation()
    animation.frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in flicker_frames(row, height)]
    animation.durations = [period_ms] * len(animation.frames)
    animation.loop_count = 0
    return atomic.write_with(path, lambda tmp: bool(cv2.imwriteanimation(str(tmp), animation)))
