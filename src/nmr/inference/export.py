"""Checkpoint -> ONNX (R_Phi), with the model's metadata embedded and a parity check against PyTorch.

The graph is R_Phi on network inputs: `moving` 1x3xhxw and `fixed` 1x1xhxw (float32 in [-1, 1]) ->
`flow` 1x2xhxw (pixels of that grid). Pre-processing is deliberately NOT folded into the graph: LWIR
normalisation takes image percentiles (a full sort, slow and TensorRT-unfriendly in ONNX) and the
native -> net resize would make the engine's input shapes the cameras' native sizes (one optimisation
profile per camera mode). Both run as a few torch ops on the same device instead (nmr.inference.registrar).

The parity check runs the export in ONNX Runtime (CPU) and the module in PyTorch on random and
"real-ish" (smooth, structured, cross-modal) inputs at every exported size (and at an extra size for
dynamic exports); the largest flow difference must stay within tolerance (1e-3 px in fp32) or the
export fails with ModelFileError and no ONNX file is left behind.
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmr.errors import ModelFileError
from nmr.inference.engine_cache import atomic_write_bytes, format_size, sha256_file
from nmr.inference.model_file import ONNX_EXPORT_KEY, ONNX_METADATA_KEY, ModelInfo

OPSET = 17
FP32_TOL_PX = 1e-3
INPUT_NAMES = ['moving', 'fixed']
OUTPUT_NAMES = ['flow']


@dataclass
class ExportReport:
    onnx_path: Path
    sizes: list[tuple[int, int]]
    dynamic: bool
    precision: str
    parity: list[dict[str, Any]] = field(default_factory=list)  # per (size, input kind): max_abs_diff_px
    max_diff_px: float = 0.0
    tolerance_px: float = FP32_TOL_PX
    seconds: float = 0.0
    engine_path: Path | None = None


class _RPhi(torch.nn.Module):
    """R_Phi with fixed input/output dtypes: fp32 at the boundary, fp16 inside when asked."""

    def __init__(self, net: torch.nn.Module, fp16: bool) -> None:
        super().__init__()
        self.net = net.half() if fp16 else net
        self.fp16 = fp16

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            moving, fixed = moving.half(), fixed.half()
        return self.net(moving, fixed).float()


def size_multiple(net: torch.nn.Module, info: ModelInfo | None = None) -> int:
    """The stride the network's input sizes must be a multiple of (from the model, else 1)."""
    for source in (net, getattr(net, 'config', None)):
        for name in ('size_multiple', 'input_multiple', 'stride_multiple'):
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    if info is not None:
        for name in ('size_multiple', 'input_multiple'):
            if isinstance(info.registration.get(name), int):
                return int(info.registration[name])
    return 1


def realistic_inputs(hw: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth structured RGB and a cross-modal (inverted, shifted, blurred grey) fixed image in [-1, 1].

    Random noise alone exercises arithmetic but not what a trained net sees; this gives edges, gradients
    and flat regions, and a fixed image that is a displaced, photometrically different copy.
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.zeros((3, h, w), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * math.pi)
        base[c] = 0.4 * np.sin(2 * math.pi * (fx * xx / w + fy * yy / h) + ph)
    for _ in range(6):  # rectangles with hard edges
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = (
            min(w, x0 + rng.integers(w // 8 + 1, w // 2 + 2)),
            min(h, y0 + rng.integers(h // 8 + 1, h // 2 + 2)),
        )
        base[:, y0:y1, x0:x1] += rng.uniform(-0.6, 0.6, size=(3, 1, 1)).astype(np.float32)
    moving = np.clip(base, -1, 1)
    grey = moving.mean(axis=0)
    shift = (max(1, h // 20), max(1, w // 16))
    fixed = -np.roll(grey, shift, axis=(0, 1))
    fixed = 0.5 * fixed + 0.25 * (np.roll(fixed, 1, 0) + np.roll(fixed, 1, 1))
    return moving[None].astype(np.float32), np.clip(fixed, -1, 1)[None, None].astype(np.float32)


def parity_sizes(sizes: Sequence[tuple[int, int]], dynamic: bool, multiple: int) -> list[tuple[int, int]]:
    """The exported sizes, plus (dynamic) one size that was never traced, to prove the axes are dynamic."""
    out = list(dict.fromkeys((int(s[0]), int(s[1])) for s in sizes))
    if dynamic:
        h, w = out[0]

        def rnd(v: int) -> int:
            return max(multiple, (v // multiple) * multiple)

        extra = (rnd(h * 3 // 4 + multiple), rnd(w * 5 // 4 + multiple))
        if extra not in out:
            out.append(extra)
    return out


@contextmanager
def torchscript_export_warnings_silenced() -> Iterator[None]:
    """Silence the warnings the TorchScript exporter always gives for R_Phi, and nothing else.

    Why the TorchScript exporter and not torch.export's (dynamo=True): measured on R_Phi (torch 2.13, CPU)
    the new one does export both architectures with dynamic H/W and parity (2e-5 px), but it needs
    onnxscript (not a dependency), takes ~25 s per export instead of ~1 s (checkpoints are exported on
    first use, e.g. by `nmr demo`), writes opset >= 18 where OPSET pins 17 for TensorRT, and specialises
    the network's internal padding so that exported H and W must be multiples of 16. What is silenced:
    - its DeprecationWarnings (the legacy exporter itself, and its logging helper);
    - TracerWarnings from InstanceNorm's Python-side channel-count checks: the channel count is fixed by
      the architecture, so the traced constant is right for every input size (dynamic H/W are proven
      by the parity check at an untraced size);
    - "operator 'instance_norm' is set to train=True": InstanceNorm without running statistics always
      normalises with the input's statistics, in eval too, so exporting it that way is what we want.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'You are using the legacy TorchScript-based ONNX export', DeprecationWarning)
        warnings.filterwarnings('ignore', 'The feature will be removed', DeprecationWarning, r'torch\.onnx\.')
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning,
                                module=r'torch\.nn\.(modules\.instancenorm|functional)$')
        warnings.filterwarnings('ignore', r'ONNX export mode is set to TrainingMode\.EVAL, but operator '
                                "'instance_norm'", UserWarning)
        yield


def _trace_to_onnx(module: torch.nn.Module, hw: tuple[int, int], dynamic: bool, opset: int) -> bytes:
    h, w = hw
    moving = torch.zeros(1, 3, h, w)
    fixed = torch.zeros(1, 1, h, w)
    axes = {2: 'height', 3: 'width', 0: 'batch'}
    buf = io.BytesIO()
    with torchscript_export_warnings_silenced():
        torch.onnx.export(
            module,
            (moving, fixed),
            buf,  # type: ignore[arg-type]
            opset_version=opset,
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            do_constant_folding=True,
            dynamic_axes={n: axes for n in INPUT_NAMES + OUTPUT_NAMES} if dynamic else None,
        )
    return buf.getvalue()


def check_parity(
    module: torch.nn.Module,
    onnx_bytes: bytes,
    sizes: Sequence[tuple[int, int]],
    tolerance: float,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Max |flow_onnx - flow_torch| per size and input kind (random, realistic); raises if over tolerance."""
    import onnxruntime as ort

    from nmr.inference.onnx_backend import session_options

    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(threads), providers=['CPUExecutionProvider']
    )
    rng = np.random.default_rng(1234)
    results: list[dict[str, Any]] = []
    for hw in sizes:
        cases = {
            'random': (
                rng.uniform(-1, 1, (1, 3, *hw)).astype(np.float32),
                rng.uniform(-1, 1, (1, 1, *hw)).astype(np.float32),
            ),
            'realistic': realistic_inputs(hw, seed=len(results)),
        }
        for name, (moving, fixed) in cases.items():
            with torch.inference_mode():
                ref = module(torch.from_numpy(moving), torch.from_numpy(fixed)).float().numpy()
            got = session.run(OUTPUT_NAMES, {'moving': moving, 'fixed': fixed})[0]
            if got.shape != ref.shape:
                raise ModelFileError(
                    f'ONNX export gives flow of shape {got.shape} at {format_size(hw)}, PyTorch '
                    f'{ref.shape}; the export is broken (is the size a multiple of the stride?)'
                )
            diff = float(np.abs(got - ref).max())
            results.append(
                {
                    'size': format_size(hw),
                    'inputs': name,
                    'max_abs_diff_px': diff,
                    'max_abs_flow_px': float(np.abs(ref).max()),
                }
            )
    return results


def export_onnx(
    net: torch.nn.Module,
    info: ModelInfo,
    out: str | Path,
    sizes: Sequence[tuple[int, int]] | None = None,
    dynamic: bool = True,
    fp16: bool = False,
    opset: int = OPSET,
    log: Callable[[str], None] = print,
    source_sha256: str | None = None,
) -> ExportReport:
    """Export R_Phi to `out` (atomic), embed metadata, and check parity; returns what was measured."""
    if opset < 17:
        raise ValueError(f'opset {opset} < 17: nmr exports need opset 17 or newer')
    t0 = time.perf_counter()
    out = Path(out)
    sizes = [tuple(s) for s in (sizes or [info.net_hw])]  # type: ignore[misc]
    multiple = size_multiple(net, info)
    for hw in sizes:
        if hw[0] % multiple or hw[1] % multiple:
            raise ModelFileError(
                f'size {format_size(hw)} is not a multiple of the network stride {multiple}; '
                f'pick sizes divisible by {multiple}'
            )
    net = net.float().eval().cpu()
    module = _RPhi(net, fp16).eval()
    onnx_bytes = _trace_to_onnx(module, sizes[0], dynamic, opset)  # type: ignore[arg-type]
    precision = 'fp16' if fp16 else 'fp32'
    check_sizes = parity_sizes(sizes, dynamic, multiple)  # type: ignore[arg-type]
    parity = check_parity(module, onnx_bytes, check_sizes, FP32_TOL_PX)
    flow_scale = max(p['max_abs_flow_px'] for p in parity)
    tolerance = FP32_TOL_PX if not fp16 else 0.05 + 1e-2 * flow_scale
    worst = max(parity, key=lambda p: p['max_abs_diff_px'])
    for p in parity:
        log(
            f'nmr export: parity {p["size"]} {p["inputs"]:9s} max |flow diff| = '
            f'{p["max_abs_diff_px"]:.2e} px '
            f'(flow up to {p["max_abs_flow_px"]:.2f} px)'
        )
    if not worst['max_abs_diff_px'] <= tolerance:  # also catches NaN
        raise ModelFileError(
            f'ONNX export of {info.path.name} differs from PyTorch by {worst["max_abs_diff_px"]:.3g} '
            f'px at {worst["size"]} ({worst["inputs"]} inputs), over the {tolerance:.3g} px '
            f'tolerance ({precision}); not written'
        )
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    export_info = {
        'opset': opset,
        'dynamic': dynamic,
        'sizes': [list(s) for s in sizes],
        'precision': precision,
        'inputs': INPUT_NAMES,
        'outputs': OUTPUT_NAMES,
        'size_multiple': multiple,
        'parity_max_abs_diff_px': worst['max_abs_diff_px'],
        'parity_tolerance_px': tolerance,
        'torch_version': torch.__version__,
        'source_sha256': source_sha256,
        'layout': 'moving 1x3xhxw, fixed 1x1xhxw in [-1,1] -> flow 1x2xhxw (px, ch0 = dx)',
    }
    onnx.helper.set_model_props(
        model,
        {
            ONNX_METADATA_KEY: json.dumps(info.metadata.to_dict(), sort_keys=True),
            ONNX_EXPORT_KEY: json.dumps(export_info, sort_keys=True),
        },
    )
    model.producer_name = 'nmr'
    onnx.checker.check_model(model)
    atomic_write_bytes(out, model.SerializeToString())
    report = ExportReport(
        onnx_path=out,
        sizes=sizes,
        dynamic=dynamic,
        precision=precision,  # type: ignore[arg-type]
        parity=parity,
        max_diff_px=worst['max_abs_diff_px'],
        tolerance_px=tolerance,
        seconds=time.perf_counter() - t0,
    )
    log(
        f'nmr export: wrote {out} ({precision}, opset {opset}, '
        f'{"dynamic H/W" if dynamic else "sizes " + ",".join(format_size(s) for s in sizes)}); '
        f'max parity diff {report.max_diff_px:.2e} px <= {tolerance:.1e} px'
    )
    return report


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    dynamic: bool = False,
    fp16: bool = False,
    engine: bool = False,
    workspace_bytes: int | None = None,
    device: str = 'cuda',
    log: Callable[[str], None] = print,
) -> ExportReport:
    """`nmr export`: checkpoint -> ONNX (+ TensorRT engine next to it when asked and possible)."""
    from nmr.inference.model_file import model_kind, read_checkpoint

    checkpoint = Path(checkpoint)
    if model_kind(checkpoint) != 'checkpoint':
        raise ModelFileError(
            f'{checkpoint} is not a checkpoint (.pt); `nmr export` turns a checkpoint into ONNX'
        )
    net, info = read_checkpoint(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix('.fp16.onnx' if fp16 else '.onnx')
    # one ONNX serves several sizes only with dynamic axes; --dynamic then only widens the engine profile
    onnx_dynamic = dynamic or not sizes or len(sizes) > 1
    report = export_onnx(
        net,
        info,
        out,
        sizes=sizes,
        dynamic=onnx_dynamic,
        fp16=fp16,
        log=log,
        source_sha256=sha256_file(checkpoint),
    )
    if engine:
        report.engine_path = build_engine_for_export(out, report, dynamic, device, workspace_bytes, log)
    return report


def build_engine_for_export(
    onnx_path: Path,
    report: ExportReport,
    dynamic_profile: bool,
    device: str,
    workspace_bytes: int | None,
    log: Callable[[str], None],
) -> Path:
    """The TensorRT engine for an export (cached when current); ModelFileError if TensorRT is absent."""
    from nmr.inference import tensorrt_backend as trtb
    from nmr.inference.engine_cache import shape_profiles
    from nmr.inference.model_file import read_onnx_info

    ok, why = trtb.tensorrt_status()
    if not ok:
        raise ModelFileError(
            f'cannot build a TensorRT engine: {why}; the ONNX {onnx_path} was written and '
            'runs with --backend onnxruntime'
        )
    info = read_onnx_info(onnx_path)
    profiles = shape_profiles(
        report.sizes, dynamic=dynamic_profile, multiple=int(info.export.get('size_multiple', 1))
    )
    dev = torch.device(device if device.startswith('cuda') else 'cuda')
    return trtb.engine_for(
        onnx_path,
        info,
        dev,
        report.precision,
        profiles,
        workspace_bytes=workspace_bytes or trtb.DEFAULT_WORKSPACE_BYTES,
        log=log,
    )
