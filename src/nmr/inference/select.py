"""`create_registrar`: pick the fastest backend that can run this model here, and say why.

Preference: tensorrt > onnxruntime-gpu > torch-cuda > onnxruntime-cpu > torch-cpu. With backend='auto'
every candidate is probed in that order; the first that is available AND constructs is used, and each
one passed over gets one log line with the reason (package missing, no CUDA, wrong model format, build
failure...). Asking for a specific backend that cannot run is a ConfigError naming the reason.
Model-file problems (missing, corrupt, wrong pair) are never "fallen back" from: they are raised.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmr.domain import BACKEND_CHOICES
from nmr.errors import ConfigError, ModelFileError
from nmr.inference.model_file import ModelInfo, model_kind, read_checkpoint, read_model_info
from nmr.inference.registrar import Registrar, resolve_device

ORDER = (
    ('tensorrt', 'cuda'),
    ('onnxruntime', 'cuda'),
    ('torch', 'cuda'),
    ('onnxruntime', 'cpu'),
    ('torch', 'cpu'),
)


@dataclass
class Candidate:
    backend: str
    device: str  # 'cuda' | 'cpu'

    @property
    def label(self) -> str:
        if self.backend == 'tensorrt':
            return 'tensorrt'
        gpu = self.backend == 'onnxruntime' and self.device == 'cuda'
        return f'{self.backend}-{"gpu" if gpu else self.device}'


def cache_dir() -> Path:
    """Where on-the-fly ONNX exports and their engines go: $NMR_CACHE_DIR or ~/.cache/nmr."""
    root = os.environ.get('NMR_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'nmr')
    return Path(root)


def _onnxruntime_status(cuda: bool) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except Exception as err:
        return False, f'onnxruntime is not importable ({type(err).__name__})'
    if not cuda:
        return True, 'onnxruntime CPU'
    providers = ort.get_available_providers()
    if 'CUDAExecutionProvider' not in providers and 'TensorrtExecutionProvider' not in providers:
        return False, f'this onnxruntime build has no CUDA provider (has {", ".join(providers)})'
    if not torch.cuda.is_available():
        return False, 'onnxruntime has a CUDA provider but torch sees no CUDA device'
    return True, 'onnxruntime CUDA'


def probe(candidate: Candidate, kind: str, device_request: str) -> str | None:
    """None if `candidate` can run a model of file `kind` on this machine, else the reason it cannot."""
    if device_request not in ('auto', '') and not device_request.startswith(candidate.device):
        return f'device {device_request} requested'
    if candidate.device == 'cuda' and not torch.cuda.is_available():
        if candidate.backend == 'tensorrt':
            from nmr.inference.tensorrt_backend import tensorrt_status

            ok, why = tensorrt_status()
            return why if not ok else 'CUDA is not available (torch.cuda.is_available() is False)'
        return 'CUDA is not available (torch.cuda.is_available() is False)'
    if candidate.backend == 'tensorrt':
        from nmr.inference.tensorrt_backend import tensorrt_status

        ok, why = tensorrt_status()
        return None if ok else why
    if candidate.backend == 'onnxruntime':
        if kind == 'engine':
            return 'a TensorRT engine runs only on the tensorrt backend'
        ok, why = _onnxruntime_status(candidate.device == 'cuda')
        return None if ok else why
    if kind != 'checkpoint':
        return f'the torch backend needs a .pt checkpoint, not an {kind} file'
    return None


def onnx_for_checkpoint(path: Path, net: Any, info: ModelInfo, log: Callable[[str], None]) -> Path:
    """Export a checkpoint to ONNX once (dynamic H/W, parity-checked) into the cache, keyed by its content."""
    from nmr.inference.export import export_onnx

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out = cache_dir() / 'onnx' / f'{path.stem}.{digest}.onnx'
    if out.is_file():
        return out
    log(f'nmr: exporting {path.name} to ONNX for onnxruntime/tensorrt (cached as {out})')
    export_onnx(net, info, out, sizes=[info.net_hw], dynamic=True, log=lambda _msg: None)
    return out


def _build(
    candidate: Candidate,
    path: Path,
    kind: str,
    device: torch.device,
    net_hw: tuple[int, int] | None,
    expected_pair: str | None,
    log: Callable[[str], None],
    options: dict[str, Any],
) -> Registrar:
    if candidate.backend == 'torch':
        from nmr.inference.torch_backend import TorchRegistrar

        net, info = read_checkpoint(path, expected_pair)
        return TorchRegistrar(
            info,
            net,
            device,
            net_hw,
            precision=options.get('precision', 'fp32'),
            channels_last=options.get('channels_last'),
            cuda_graph=bool(options.get('cuda_graph', False)),
        )
    if kind == 'checkpoint':
        net, info = read_checkpoint(path, expected_pair)
        onnx_path = onnx_for_checkpoint(path, net, info, log)
        info_onnx = read_model_info(onnx_path)
        info_onnx.path = path
    else:
        onnx_path = path
        info_onnx = read_model_info(path)
        info_onnx.metadata.check_pair(expected_pair, path)
    if candidate.backend == 'onnxruntime':
        from nmr.inference.onnx_backend import OnnxRuntimeRegistrar

        return OnnxRuntimeRegistrar(info_onnx, onnx_path, device, net_hw, threads=options.get('threads'))
    from nmr.inference import tensorrt_backend as trtb

    run_hw = tuple(net_hw) if net_hw else info_onnx.net_hw
    if kind == 'engine':
        if not trtb.engine_is_current(path, device):
            source = trtb.engine_sidecar_onnx(path)
            if source is None:
                raise ModelFileError(
                    f'TensorRT engine {path} was built for another TensorRT/GPU/ONNX and its '
                    'ONNX is not beside it; rebuild it with `nmr export --engine`'
                )
            log(f'nmr: {path.name} is stale for this GPU/TensorRT; rebuilding from {source.name}')
            onnx_path = source
        else:
            return trtb.TensorRTRegistrar(info_onnx, path, device, net_hw)
    precision = options.get('precision') or info_onnx.export.get('precision') or 'fp32'
    engine = trtb.find_current_engine(onnx_path, device, precision, run_hw)  # type: ignore[arg-type]
    if engine is None:
        profiles = trtb.profiles_from_export(info_onnx, run_hw)  # type: ignore[arg-type]
        engine = trtb.engine_for(onnx_path, info_onnx, device, precision, profiles, log=log)
    return trtb.TensorRTRegistrar(info_onnx, engine, device, net_hw)


def create_registrar(
    model_path: str | os.PathLike[str],
    backend: str = 'auto',
    device: str = 'auto',
    net_hw: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
    expected_pair: str | None = None,
    **options: Any,
) -> Registrar:
    """A Registrar for `model_path` (.pt, .onnx or .engine) on the requested or fastest backend.

    options: precision (torch: fp32|fp16|bf16, default fp32; tensorrt: fp32|fp16, default the ONNX's),
    channels_last,
    cuda_graph (torch), threads (onnxruntime).
    """
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f'backend {backend!r} is not one of {", ".join(BACKEND_CHOICES)}')
    path = Path(model_path)
    kind = model_kind(path)
    device = str(device or 'auto')
    if device != 'auto':
        resolve_device(device)  # a CUDA request without CUDA is a ConfigError right here
    candidates = [Candidate(b, d) for b, d in ORDER if backend in ('auto', b)]
    reasons: list[str] = []
    for candidate in candidates:
        why = probe(candidate, kind, device)
        if why is None:
            dev = (
                torch.device(device)
                if device.startswith(candidate.device)
                else torch.device(candidate.device)
            )
            try:
                registrar = _build(candidate, path, kind, dev, net_hw, expected_pair, log, options)
            except ModelFileError:
                raise
            except Exception as err:  # a backend that is present but broken: fall back, say why
                if backend != 'auto':
                    raise
                first = str(err).splitlines()[0][:160] if str(err) else ''
                why = f'failed to start ({type(err).__name__}: {first})'
            else:
                for line in reasons:
                    log(line)
                log(f'nmr: backend {candidate.label} chosen: {registrar.describe()}')
                return registrar
        reasons.append(f'nmr: backend {candidate.label} skipped: {why}')
    for line in reasons:
        log(line)
    if backend == 'auto':
        raise ConfigError(f'no backend can run {path}; see the reasons above')
    raise ConfigError(f'backend {backend} cannot run {path} here: {reasons[-1].split(": ", 2)[-1]}')
