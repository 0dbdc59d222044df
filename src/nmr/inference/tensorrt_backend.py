"""R_Phi in TensorRT (10/11 API): engine building, the engine cache, and execution on a CUDA stream.

Build: ONNX parser -> network -> builder config (workspace limit, fp16 or fp32, one optimisation
profile per configured size) -> `build_serialized_network`, written next to the ONNX under a cache
key (nmr.inference.engine_cache). Run: deserialise once, bind the named I/O tensors with
`set_input_shape` / `set_tensor_address` to torch CUDA buffers allocated once per shape, and
`execute_async_v3` on torch's current CUDA stream, so pre-processing, the engine and post-processing
are ordered on one stream with no host copies or synchronisation between them.

TensorRT is not installable on the development machines; this module imports it lazily and everything
that does not need it (keys, profiles, selection, fallbacks) is tested without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nmr.errors import ModelFileError
from nmr.inference import engine_cache as ec
from nmr.inference.model_file import ModelInfo
from nmr.inference.registrar import Registrar

DEFAULT_WORKSPACE_BYTES = 2 << 30
INPUT_CHANNELS = {'moving': 3, 'fixed': 1}


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not): the Python package must import and a CUDA device must be visible."""
    try:
        import tensorrt as trt
    except Exception as err:  # ImportError, or a broken install raising OSError on its libraries
        return False, f'the tensorrt Python package is not importable ({type(err).__name__}: {err})'
    if not hasattr(trt, 'Builder') or not hasattr(trt, 'Runtime'):
        return False, 'the installed tensorrt package is a placeholder without Builder/Runtime'
    if not torch.cuda.is_available():
        return False, 'tensorrt imports but torch sees no CUDA device'
    return True, f'tensorrt {trt.__version__}'


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of `device`."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f'{major}.{minor}'


def key_inputs(
    onnx_path: Path,
    precision: str,
    profiles: Sequence[ec.ShapeProfile],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
) -> ec.EngineKeyInputs:
    return ec.EngineKeyInputs(
        onnx_sha256=ec.sha256_file(onnx_path),
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=precision,
        profiles=tuple(profiles),
    )


def _trt_logger() -> Any:
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def _is_fp16_onnx(onnx_path: Path) -> bool:
    """True when the export computes in fp16 (initialisers are fp16): build it strongly typed."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {init.data_type for init in model.graph.initializer}
    return onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types


def build_engine(
    onnx_path: Path,
    precision: str,
    profiles: Sequence[ec.ShapeProfile],
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """ONNX -> serialised engine (bytes). Raises ModelFileError with the parser's first error."""
    import tensorrt as trt

    logger = _trt_logger()
    builder = trt.Builder(logger)
    strongly_typed = precision == 'fp16' and _is_fp16_onnx(onnx_path)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelFileError(f'TensorRT cannot parse {onnx_path}: {errors[0] if errors else "unknown error"}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == 'fp16' and not strongly_typed:
        if not hasattr(trt.BuilderFlag, 'FP16'):
            raise ModelFileError(
                f'this TensorRT ({trt.__version__}) only builds strongly typed networks; '
                f'export an fp16 ONNX with `nmr export --fp16` and build from it'
            )
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == 'fp32' and hasattr(trt.BuilderFlag, 'TF32'):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: keep parity with PyTorch
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile_spec in profiles:
        profile = builder.create_optimization_profile()
        for name in names:
            ch = INPUT_CHANNELS.get(name)
            if ch is None:
                raise ModelFileError(
                    f'{onnx_path} has an unexpected input {name!r}; export it with `nmr export`'
                )
            profile.set_shape(
                name,
                (1, ch, *profile_spec.min_hw),
                (1, ch, *profile_spec.opt_hw),
                (1, ch, *profile_spec.max_hw),
            )
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelFileError(
            f'TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)'
        )
    return bytes(memoryview(serialized))


def engine_for(
    onnx_path: Path,
    info: ModelInfo,
    device: torch.device,
    precision: str,
    profiles: Sequence[ec.ShapeProfile],
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    log: Callable[[str], None] = print,
    builder: Callable[..., bytes] | None = None,
) -> Path:
    """The cached engine for this ONNX/TensorRT/GPU/precision/profiles, building it if absent or stale."""
    import tensorrt as trt

    name, cc = gpu_identity(device)
    inputs = key_inputs(onnx_path, precision, profiles, trt.__version__, name, cc)
    key = ec.engine_key(inputs)
    hit = ec.cached_engine(onnx_path, key, precision)
    if hit is not None:
        log(f'nmr: TensorRT engine {hit.name} (cached, key {key[: ec.SHORT_KEY_LEN]})')
        return hit
    path = ec.engine_path(onnx_path, key, precision)
    log(
        f'nmr: building TensorRT engine {path.name} ({precision}, {len(profiles)} profile(s), '
        f'{name} sm{cc}); '
        'this takes a minute or more, once'
    )
    data = (builder or build_engine)(onnx_path, precision, profiles, workspace_bytes)
    ec.atomic_write_bytes(path, data)
    ec.write_sidecar(
        path, key, inputs, extra={'metadata': info.metadata.to_dict(), 'export': info.export, 'onnx': onnx_path.name}
    )
    return path


_TORCH_DTYPES: dict[str, torch.dtype] = {
    'FLOAT': torch.float32,
    'HALF': torch.float16,
    'BF16': torch.bfloat16,
    'INT32': torch.int32,
    'INT8': torch.int8,
    'BOOL': torch.bool,
    'INT64': torch.int64,
    'UINT8': torch.uint8,
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = getattr(trt_dtype, 'name', str(trt_dtype)).split('.')[-1]
    if name not in _TORCH_DTYPES:
        raise ModelFileError(f'TensorRT engine uses an I/O type {name} that nmr does not bind')
    return _TORCH_DTYPES[name]


class TensorRTRegistrar(Registrar):
    backend = 'tensorrt'

    def __init__(
        self, info: ModelInfo, engine_path: Path, device: torch.device, net_hw: tuple[int, int] | None = None
    ) -> None:
        import tensorrt as trt

        super().__init__(info, device, net_hw)
        if device.type != 'cuda':
            raise ModelFileError('the TensorRT backend needs a CUDA device')
        self.engine_path = Path(engine_path)
        torch.cuda.set_device(device)
        self._runtime = trt.Runtime(_trt_logger())
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise ModelFileError(
                f'TensorRT cannot deserialise {self.engine_path} (built by another TensorRT or '
                'GPU?); delete it and rebuild with `nmr export --engine`'
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in self._names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in self._names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self._inputs) != sorted(INPUT_CHANNELS) or 'flow' not in self._outputs:
            raise ModelFileError(
                f'{self.engine_path} has I/O {self._names}, not nmr R_Phi (moving, fixed -> '
                'flow); rebuild it with `nmr export --engine`'
            )
        self._dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in self._names}
        self._profile = 0
        self._buffers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def describe(self) -> str:
        return f'{super().describe()} [{self.engine_path.name}]'

    def _profile_for(self, hw: tuple[int, int]) -> int:
        """Index of the first optimisation profile whose [min, max] range holds `hw`."""
        for index in range(self.engine.num_optimization_profiles):
            lo, _opt, hi = self.engine.get_tensor_profile_shape('moving', index)
            if all(int(lo[d]) <= hw[d - 2] <= int(hi[d]) for d in (2, 3)):
                return index
        raise ModelFileError(
            f'net size {ec.format_size(hw)} is outside every optimisation profile of '
            f'{self.engine_path.name}; rebuild with `nmr export --engine --sizes '
            f'{ec.format_size(hw)}`'
        )

    def _bind(self, hw: tuple[int, int], stream: int) -> dict[str, torch.Tensor]:
        """Device buffers for this shape (allocated once), profile selected, addresses and shapes set."""
        buffers = self._buffers.get(hw)
        profile = self._profile_for(hw)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, stream)
            self._profile = profile
        if buffers is None:
            buffers = {
                n: torch.empty((1, c, *hw), dtype=self._dtypes[n], device=self.device)
                for n, c in INPUT_CHANNELS.items()
            }
            for name in buffers:
                self.context.set_input_shape(name, tuple(buffers[name].shape))
            for name in self._outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self._buffers[hw] = buffers
        for name, t in buffers.items():
            if name in INPUT_CHANNELS:
                self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        return buffers

    def _infer(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream(self.device)
        hw = (int(moving_n.shape[-2]), int(moving_n.shape[-1]))
        buffers = self._bind(hw, stream.cuda_stream)
        buffers['moving'].copy_(moving_n)  # device-to-device, on the same stream
        buffers['fixed'].copy_(fixed_n)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f'TensorRT execute_async_v3 failed for {self.engine_path.name}')
        return buffers['flow'].float().clone()


def engine_sidecar_onnx(engine_path: Path) -> Path | None:
    """The ONNX an engine was built from (recorded in its sidecar), to rebuild a stale engine."""
    side = ec.read_sidecar(engine_path)
    if not side or 'onnx' not in side:
        return None
    candidate = engine_path.with_name(str(side['onnx']))
    return candidate if candidate.is_file() else None


def sidecar_profiles(side: dict) -> list[ec.ShapeProfile]:
    stored = side.get('inputs', {})
    out = []
    for p in stored.get('profiles', []):
        lo, opt, hi = ((int(x[0]), int(x[1])) for x in p)
        out.append(ec.ShapeProfile(lo, opt, hi))
    return out


def engine_is_current(engine_path: Path, device: torch.device) -> bool:
    """Does this engine's sidecar key match a key recomputed for this machine and its ONNX?"""
    import tensorrt as trt

    side = ec.read_sidecar(engine_path)
    onnx_path = engine_sidecar_onnx(engine_path)
    if not side or onnx_path is None:
        return False
    name, cc = gpu_identity(device)
    inputs = key_inputs(
        onnx_path,
        str(side.get('inputs', {}).get('precision')),
        sidecar_profiles(side),
        trt.__version__,
        name,
        cc,
    )
    return ec.engine_key(inputs) == side.get('key')


def find_current_engine(
    onnx_path: Path, device: torch.device, precision: str, hw: tuple[int, int]
) -> Path | None:
    """An engine already built beside `onnx_path` (e.g. by `nmr export --engine`) that is current for this
    machine and whose profiles hold `hw`; None when there is none (then one is built)."""
    for candidate in sorted(onnx_path.parent.glob(f'{onnx_path.stem}.{precision}.*.engine')):
        side = ec.read_sidecar(candidate)
        if not side or side.get('onnx') != onnx_path.name:
            continue
        if any(p.contains(hw) for p in sidecar_profiles(side)) and engine_is_current(candidate, device):
            return candidate
    return None


def profiles_from_export(info: ModelInfo, net_hw: tuple[int, int]) -> list[ec.ShapeProfile]:
    """Profiles for the sizes the ONNX was exported for (metadata), always including the run size."""
    export = info.export or {}
    sizes = [tuple(s) for s in export.get('sizes') or []]
    if net_hw not in sizes:
        sizes.insert(0, net_hw)
    # fixed-shape profiles: the fastest kernels for each size the node will actually run at
    return ec.shape_profiles(sizes, dynamic=False)
