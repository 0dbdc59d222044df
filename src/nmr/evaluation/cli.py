"""`nmr evaluate --model M --manifest CSV [--save-flows DIR] [--out JSON] [--figures DIR] [--backend B]`.

M is a checkpoint / ONNX / engine, or a baseline name: `identity` (no registration: the reference a
learned model must beat; its ratio is 100 %), `dis` (OpenCV DIS on gradients) or `sitk-mi`.
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

from nmr.data.pairs import read_manifest
from nmr.domain import FIXED_KINDS
from nmr.errors import ConfigError
from nmr.evaluation.baselines import create_baseline, identity_flow
from nmr.evaluation.figures import FigureRow, contact_sheet, write_flicker_gif, write_png
from nmr.evaluation.metrics import evaluate_pair, format_table, summarise
from nmr.inference.engine_cache import parse_sizes
from nmr.inference.model_file import read_model_info
from nmr.inference.protocol import RegistrarProtocol

BASELINE_NAMES = ('identity', 'dis', 'sitk-mi')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--model',
        required=True,
        help='model file (.pt / .onnx / .engine), or a baseline: identity, dis, sitk-mi',
    )
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
    parser.add_argument(
        '--fixed-kind',
        choices=FIXED_KINDS,
        help="kind of the fixed images (default: the model's pair; for baselines a guess per file)",
    )


def safe_name(name: str) -> str:
    """A manifest name as a file name (no path separators or odd characters)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._') or 'pair'


def make_registrar(
    model: str, backend: str, device: str, net_size: str | None, pair: str | None, log: Any
) -> RegistrarProtocol:
    if model in BASELINE_NAMES:
        return create_baseline(model)
    from nmr.inference.select import create_registrar  # torch: not for `nmr evaluate --help`

    net_hw = None
    if net_size:
        net_hw = parse_sizes(net_size)[0]
    return create_registrar(model, backend=backend, device=device, net_hw=net_hw, log=log, expected_pair=pair)


def evaluate(
    model: str,
    manifest: str | Path,
    backend: str = 'auto',
    device: str = 'auto',
    save_flows: str | Path | None = None,
    figures: str | Path | None = None,
    net_size: str | None = None,
    limit: int | None = None,
    fixed_kind: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the model over every manifest row -> {'model', 'backend', 'pairs': [...], 'summary': {...}}."""
    pair = None
    if model not in BASELINE_NAMES:  # the model's pair decides how the fixed images are read
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
    registrar = make_registrar(model, backend, device, net_size, pair, log)
    flows_dir = Path(save_flows) if save_flows else None
    figs_dir = Path(figures) if figures else None
    if flows_dir:
        flows_dir.mkdir(parents=True, exist_ok=True)
    results = []
    describe = registrar.describe()
    pair_text = pair or f'fixed kind {fixed_kind or "guessed per file"}'
    sheet_title = f'nmr evaluate   {pair_text}   model {model}   backend {describe}'
    warmed = False
    for i in range(n):
        fp = rows[i]
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
        results.append(res)
        if flows_dir:
            np.save(flows_dir / f'{safe_name(fp.name)}.npy', reg.flow.astype(np.float32))
        if figs_dir:
            _figure(figs_dir, fp, reg, res, sheet_title)
    summary = summarise(results)
    log(format_table(results, summary))
    return {
        'model': str(model),
        'backend': describe,
        'manifest': str(manifest),
        'pairs': [r.as_json() for r in results],
        'summary': summary,
    }


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
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2, allow_nan=False, default=_nan_safe)
        print(f'nmr evaluate: wrote {args.out}', file=sys.stderr)
    return 0


def _nan_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
