"""`nmr evaluate --model M --manifest CSV [--save-flows DIR] [--out JSON] [--figures DIR] [--backend B]`.

M is a checkpoint / ONNX / engine, or a baseline name: `identity` (no registration: the reference a
learned model must beat; its ratio is 100 %), `dis` (OpenCV DIS on gradients) or `sitk-mi`.

`--rig RIG.yaml`: registration through the rig's geometry (nmr.pipeline.geometric) with each row's depth
frame (manifest column `depth`; rows without one use the plane model); `--model` is then optional: without
it the geometric flow alone is scored, with it the model's residual on the pre-warped pair is composed on
top (the node's `rig` + `residual` path). The ratio stays relative to the unregistered reference.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nmr import atomic
from nmr.data.pairs import read_manifest
from nmr.domain import FIXED_KINDS, REFINE_TILES_PAIRS
from nmr.errors import ConfigError
from nmr.evaluation.baselines import create_baseline, identity_flow
from nmr.evaluation.figures import FigureRow, contact_sheet, write_flicker_gif, write_png
from nmr.evaluation.metrics import endpoint_error, evaluate_pair, format_table, summarise
from nmr.inference.engine_cache import parse_sizes
from nmr.inference.model_file import read_model_info
from nmr.inference.protocol import RegistrarProtocol, Registration

BASELINE_NAMES = ('identity', 'dis', 'sitk-mi')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--model',
        default=None,
        help='model file (.pt / .onnx / .engine), or a baseline: identity, dis, sitk-mi (required without --rig; '
             'with --rig: the residual model)',
    )
    parser.add_argument('--rig', metavar='RIG.yaml', default=None,
                        help='register through this rig file and each row\'s depth frame (manifest column depth)')
    parser.add_argument('--plane-distance', type=float, default=10.0, metavar='M',
                        help='with --rig: distance of the plane model for rows without depth (default 10 m)')
    parser.add_argument(
        '--manifest',
        required=True,
        help='CSV with columns name,moving,fixed[,flow,valid,landmarks] (paths relative to it)',
    )
    parser.add_argument('--save-flows', metavar='DIR', help='write DIR/<name>.npy (HxWx2 float32) per row')
    parser.add_argument('--out', metavar='JSON', help='write per-pair results and the summary as JSON')
    parser.add_argument('--figures', metavar='DIR',
                        help='write DIR/<name>.png (Figure-4 style contact sheet) and DIR/<name>.gif '
                             '(flicking between fixed and registered) per row')
    parser.add_argument('--backend', default='auto', help='auto (default), tensorrt, onnxruntime or torch')
    parser.add_argument('--device', default='auto', help='auto (default), cpu, cuda[:N]')
    parser.add_argument('--net-size', metavar='WxH', help="network size (default: the model's)")
    parser.add_argument('--limit', type=int, help='evaluate only the first N rows')
    parser.add_argument('--refine-tiles', choices=('auto', 'on', 'off'), default='auto',
                        help="refine the network's flow on 2x2 overlapping tiles (nmr.inference.tiles; 5 network "
                             "passes): auto (default) = as the node does for the model's pair (on for "
                             f"{', '.join(REFINE_TILES_PAIRS)})")
    parser.add_argument(
        '--fixed-kind',
        choices=FIXED_KINDS,
        help="kind of the fixed images (default: the model's pair; for baselines a guess per file)",
    )


def safe_name(name: str) -> str:
    """A manifest name as a file name (no path separators or odd characters)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._') or 'pair'


def make_registrar(
    model: str, backend: str, device: str, net_size: str | None, pair: str | None, log: Any,
    refine_tiles: str = 'auto',
) -> RegistrarProtocol:
    if model in BASELINE_NAMES:
        return create_baseline(model)
    from nmr.inference.select import create_registrar  # torch: not for `nmr evaluate --help`

    net_hw = None
    if net_size:
        net_hw = parse_sizes(net_size)[0]
    registrar = create_registrar(model, backend=backend, device=device, net_hw=net_hw, log=log, expected_pair=pair)
    if refine_tiles == 'on' or (refine_tiles == 'auto' and pair in REFINE_TILES_PAIRS):
        from nmr.inference.tiles import TileRefinedRegistrar

        return TileRefinedRegistrar(registrar)
    return registrar


def evaluate(
    model: str | None,
    manifest: str | Path,
    backend: str = 'auto',
    device: str = 'auto',
    save_flows: str | Path | None = None,
    figures: str | Path | None = None,
    net_size: str | None = None,
    limit: int | None = None,
    fixed_kind: str | None = None,
    log: Any = print,
    rig: str | Path | None = None,
    plane_distance_m: float = 10.0,
    refine_tiles: str = 'auto',
) -> dict[str, Any]:
    """Run the model over every manifest row -> {'model', 'backend', 'pairs': [...], 'summary': {...}}."""
    if model is None and rig is None:
        raise ConfigError('nmr evaluate: give --model (and/or --rig for registration through the rig)')
    pair = None
    if model is not None and model not in BASELINE_NAMES:  # the model's pair decides how the fixed images are read
        meta = read_model_info(model).metadata
        pair = meta.pair
        if fixed_kind is not None and fixed_kind != meta.fixed_kind:
            raise ConfigError(f'model {model} is for {pair} ({meta.fixed_kind} fixed images), not '
                              f'--fixed-kind {fixed_kind}: give a {fixed_kind} model or leave out --fixed-kind')
        fixed_kind = meta.fixed_kind
    # with a kind, the manifest refuses fixed images that are certainly of the other kind (nmr.data.pairs)
    rows = read_manifest(manifest, fixed_kind=fixed_kind)
    n = len(rows) if limit is None else min(limit, len(rows))
    if n == 0:
        raise ConfigError(f'manifest {manifest} has no rows; add name,moving,fixed rows')
    if rig is not None and fixed_kind is None:  # the pair decides the geometry: from the rows' fixed_kind
        fixed_kind = rows.rows[0].fixed_kind if hasattr(rows, 'rows') and rows.rows else None
        if fixed_kind is None:
            raise ConfigError(f'manifest {manifest} has no fixed_kind column: pass --fixed-kind lwir or depth')
    registrar = (make_registrar(model, backend, device, net_size, pair, log, refine_tiles)
                 if model is not None else None)
    geometric = _geometric(rig, plane_distance_m, registrar, fixed_kind, log) if rig is not None else None
    flows_dir = Path(save_flows) if save_flows else None
    figs_dir = Path(figures) if figures else None
    if flows_dir:
        flows_dir.mkdir(parents=True, exist_ok=True)
    results = []
    describe = registrar.describe() if registrar is not None else 'none'
    if geometric is not None:
        describe = f'rig {rig} + residual {describe}' if registrar is not None else f'rig {rig} (geometry only)'
    pair_text = pair or f'fixed kind {fixed_kind or "guessed per file"}'
    sheet_title = f'nmr evaluate   {pair_text}   model {model}   backend {describe}'
    warmed = False
    sources: dict[str, int] = {}
    rig_scores: list[tuple[int, float, float]] = []  # (row, EPE where the rig's flow is valid, that fraction)
    for i in range(n):
        fp = rows[i]
        if geometric is not None:
            reg, source = _register_geometric(geometric, fp, warm=not warmed)
            sources[source] = sources.get(source, 0) + 1
            warmed = True
            runtime_ms = float(sum(reg.timings_ms.values()))
        else:
            assert registrar is not None
            if (
                not warmed
            ):  # one untimed run: lazy initialisation (ORT sessions, cuDNN) is not the model's run time
                registrar.register(fp.moving, fp.fixed, fp.fixed_encoding)
                warmed = True
            t0 = time.perf_counter()
            reg = registrar.register(fp.moving, fp.fixed, fp.fixed_encoding)
            runtime_ms = (time.perf_counter() - t0) * 1e3
        fixed_hw = tuple(fp.fixed.shape[:2])
        moving_hw = tuple(fp.moving.shape[:2])
        ident = identity_flow(fixed_hw, moving_hw)  # type: ignore[arg-type]
        valid = None if fp.valid is None else np.asarray(fp.valid).astype(bool)
        res = evaluate_pair(
            fp.name,
            reg.flow,
            ident,
            fp.gt_flow,
            valid,
            fp.landmarks,
            moving_hw,  # type: ignore[arg-type]
            runtime_ms,
            reg.timings_ms,
        )
        res.family = rows.family(i)
        results.append(res)
        if geometric is not None and fp.gt_flow is not None:  # where the geometry says the flow is trusted
            gt_valid = np.ones(fixed_hw, bool) if valid is None else valid
            both = gt_valid & reg.valid
            rig_scores.append((i, endpoint_error(reg.flow, fp.gt_flow, both) if both.any() else math.nan,
                               float(both.sum()) / max(1, int(gt_valid.sum()))))
        if flows_dir:
            atomic.save_npy(flows_dir / f'{safe_name(fp.name)}.npy', reg.flow.astype(np.float32))
        if figs_dir:
            _figure(figs_dir, fp, reg, res, sheet_title)
    summary = summarise(results)
    log(format_table(results, summary))
    if sources:
        words = {'depth': 'through depth', 'plane': 'plane model (row without depth)'}
        log('nmr: rig: ' + ', '.join(f'{n} rows {words.get(k, k)}' for k, n in sorted(sources.items())))
    if rig_scores:
        epes = [e for _, e, _ in rig_scores if math.isfinite(e)]
        summary['epe_where_rig_valid'] = round(float(np.mean(epes)), 6) if epes else None
        summary['rig_valid_fraction'] = round(float(np.mean([f for _, _, f in rig_scores])), 6)
        log(f'rig-valid pixels (depth, not occluded; {100 * summary["rig_valid_fraction"]:.1f} % of the '
            f'ground truth\'s valid pixels): EPE {summary["epe_where_rig_valid"]} px')
    return {
        'rig': None if rig is None else str(rig),
        'geometric_sources': sources,
        'model': str(model),
        'backend': describe,
        'manifest': str(manifest),
        'pairs': [{**r.as_json(), **_rig_fields(rig_scores, i)} for i, r in enumerate(results)],
        'summary': summary,
    }


def _rig_fields(rig_scores: list[tuple[int, float, float]], row: int) -> dict[str, Any]:
    """A row's EPE where the rig's flow is valid (and that fraction of the truth's valid pixels), if scored."""
    for i, epe, fraction in rig_scores:
        if i == row:
            return {'epe_where_rig_valid': epe if math.isfinite(epe) else None, 'rig_valid_fraction': fraction}
    return {}


def _geometric(rig: str | Path, plane_distance_m: float, registrar: RegistrarProtocol | None,
               fixed_kind: str | None, log: Any) -> _RigRegistrar:
    """Registration through the rig (and the residual model, when one is given)."""
    from nmr.domain import FIXED_KIND_PAIR
    from nmr.geometry.registration import GeometricStage
    from nmr.geometry.rig import Rig

    assert fixed_kind is not None
    pair = FIXED_KIND_PAIR[fixed_kind]
    stage = GeometricStage(Rig.load(rig), plane_distance_m, log=lambda text: log(f'nmr: {text}'))
    stage.check_pairs([pair])
    return _RigRegistrar(stage, pair, registrar)


class _RigRegistrar:
    """The node's rig path for one manifest row (nmr.pipeline.outputs does the same with its own stages):
    the geometric flow g; with a residual model, the model on the pair pre-warped by g and
    ``phi = r + g o (id + r)`` (nmr.flow.compose); registered is 0 where the flow is not valid."""

    def __init__(self, stage: Any, pair: str, residual: RegistrarProtocol | None) -> None:
        self.stage, self.pair, self.residual = stage, pair, residual

    def register(self, fp: Any) -> tuple[Registration, str]:
        from nmr import flow as nmr_flow

        t0 = time.perf_counter()
        depth = fp.fixed if self.pair == 'rgb_depth' else fp.depth
        encoding = fp.fixed_encoding if self.pair == 'rgb_depth' else '32FC1'
        geo = self.stage.flow(self.pair, fp.moving.shape[:2], fp.fixed.shape[:2], depth, encoding)
        timings = {'geometry': (time.perf_counter() - t0) * 1e3}
        flow, valid = geo.flow, geo.valid
        if self.residual is not None:
            prewarped, _ = nmr_flow.warp(fp.moving, flow)
            t1 = time.perf_counter()
            result = self.residual.register(prewarped, fp.fixed, fp.fixed_encoding)
            timings['residual'] = (time.perf_counter() - t1) * 1e3
            positions = nmr_flow.identity_positions(result.flow) + result.flow
            flow = nmr_flow.compose(result.flow, geo.flow, positions)
            valid = nmr_flow.sample_mask(geo.valid, positions)
        registered, _ = nmr_flow.warp(fp.moving, flow)
        registered[~valid] = 0
        return Registration(flow, registered, valid, timings), geo.source


def _register_geometric(processor: _RigRegistrar, fp: Any, warm: bool) -> tuple[Registration, str]:
    """One manifest row through the rig: (its Registration, 'depth' | 'plane')."""
    if warm and processor.residual is not None:  # lazy initialisation is not the model's run time
        processor.register(fp)
    return processor.register(fp)


def _figure(figs_dir: Path, fp: Any, reg: Any, result: Any, title: str) -> None:
    """`<name>.png` (contact sheet, one row) and `<name>.gif` (flicker) for one manifest row."""
    has_gt = math.isfinite(result.epe)
    error_map = None  # the zoom panels go where the unregistered error is largest (ground truth)
    if fp.gt_flow is not None:
        ident = identity_flow(fp.gt_flow.shape[:2], fp.moving.shape[:2])
        error_map = np.hypot(*(ident - fp.gt_flow).transpose(2, 0, 1)).astype(np.float32)
        if fp.valid is not None:
            error_map[~fp.valid] = np.nan
    row = FigureRow(fp.moving, fp.fixed, fp.fixed_kind, fp.fixed_encoding, reg.registered, reg.flow,
                    label=fp.name, epe_before=result.epe_identity if has_gt else None,
                    epe_after=result.epe if has_gt else None, error_map=error_map)
    write_png(figs_dir / f'{safe_name(fp.name)}.png', contact_sheet([row], title))
    write_flicker_gif(figs_dir / f'{safe_name(fp.name)}.gif', row)


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr if msg.startswith('nmr:') else sys.stdout)

    report = evaluate(
        args.model,
        args.manifest,
        backend=args.backend,
        device=args.device,
        save_flows=args.save_flows,
        figures=args.figures,
        net_size=args.net_size,
        limit=args.limit,
        fixed_kind=args.fixed_kind,
        log=log,
        rig=args.rig,
        plane_distance_m=args.plane_distance,
        refine_tiles=args.refine_tiles,
    )
    if args.out:
        with atomic.atomic_open(args.out, 'w') as f:
            json.dump(report, f, indent=2, allow_nan=False, default=_nan_safe)
        print(f'nmr evaluate: wrote {args.out}', file=sys.stderr)
    return 0


def _nan_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
