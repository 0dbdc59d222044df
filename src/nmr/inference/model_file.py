"""What a model file is and what it says about itself, with one-line `ModelFileError`s for bad files.

The registrars accept a `.pt` checkpoint (nmr.models.checkpoint), an `.onnx` export (metadata in
`metadata_props`) or a TensorRT `.engine` (metadata in its sidecar JSON). All three describe the same
`ModelInfo`, so that pre- and post-processing never depend on which file the model came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from nmr.errors import ModelFileError

ONNX_METADATA_KEY = 'nmr.metadata'  # JSON of nmr.models.checkpoint.ModelMetadata
ONNX_EXPORT_KEY = 'nmr.export'  # JSON: opset, sizes, dynamic, precision, parity, source checksum
FIXED_KIND = {'rgb_lwir': 'lwir', 'rgb_depth': 'depth'}


@dataclass
class ModelInfo:
    """The parts of a model's metadata that inference needs, plus the full record for reports."""

    path: Path
    kind: str  # 'checkpoint' | 'onnx' | 'engine'
    pair: str
    net_hw: tuple[int, int]
    normalisation: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)

    @property
    def fixed_kind(self) -> str:
        return FIXED_KIND[self.pair]

    @property
    def moving_channels(self) -> int:
        return int(self.registration.get('moving_channels', 3))

    @property
    def fixed_channels(self) -> int:
        return int(self.registration.get('fixed_channels', 1))


def metadata_dict(metadata: Any) -> dict[str, Any]:
    """ModelMetadata (dataclass), a mapping or an object with __dict__ -> a JSON-able dict."""
    if is_dataclass(metadata) and not isinstance(metadata, type):
        d = asdict(metadata)
    elif isinstance(metadata, Mapping):
        d = dict(metadata)
    else:
        d = dict(vars(metadata))
    return json.loads(json.dumps(d, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, 'tolist'):
        return obj.tolist()
    return str(obj)


def info_from_metadata(
    path: Path, kind: str, meta: Mapping[str, Any], export: Mapping | None = None
) -> ModelInfo:
    """Build ModelInfo from a metadata dict; names the missing field when the metadata is incomplete."""
    pair = meta.get('pair')
    if pair not in FIXED_KIND:
        raise ModelFileError(
            f'{path}: metadata has pair {pair!r}, expected one of {sorted(FIXED_KIND)}; '
            're-export or re-train the model'
        )
    net_hw = meta.get('net_hw')
    if not (isinstance(net_hw, list | tuple) and len(net_hw) == 2):
        raise ModelFileError(f'{path}: metadata lacks net_hw (network input size); re-export the model')
    registration = meta.get('registration') or meta.get('registration_config') or meta.get('config') or {}
    return ModelInfo(
        path=path,
        kind=kind,
        pair=str(pair),
        net_hw=(int(net_hw[0]), int(net_hw[1])),
        normalisation=dict(meta.get('normalisation') or {}),
        registration=dict(registration) if isinstance(registration, Mapping) else {},
        metadata=dict(meta),
        export=dict(export or {}),
    )


def model_kind(path: str | Path) -> str:
    """'checkpoint' | 'onnx' | 'engine' from the file's suffix; ModelFileError for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f'model file {path} does not exist; give a .pt checkpoint, .onnx or .engine')
    if path.is_dir():
        raise ModelFileError(
            f'model path {path} is a directory; give a .pt checkpoint, .onnx or .engine file'
        )
    suffix = path.suffix.lower()
    if suffix in ('.pt', '.pth', '.ckpt'):
        return 'checkpoint'
    if suffix == '.onnx':
        return 'onnx'
    if suffix in ('.engine', '.plan', '.trt'):
        return 'engine'
    raise ModelFileError(
        f'model file {path} is neither a checkpoint (.pt) nor ONNX (.onnx) nor a TensorRT '
        'engine (.engine); give one of those'
    )


def check_pair(info: ModelInfo, expected_pair: str | None) -> None:
    if expected_pair is not None and info.pair != expected_pair:
        raise ModelFileError(
            f'model {info.path} is for pair {info.pair}, not {expected_pair}; give the {expected_pair} model'
        )


def read_onnx_info(path: str | Path) -> ModelInfo:
    """Metadata of an nmr ONNX export, with the `onnx` package (weights not loaded) or, where it is not
    installed (it has no rosdep key, so a robot may lack it), with onnxruntime's own model metadata."""
    path = Path(path)
    try:
        props = _onnx_metadata_props(path)
    except Exception as err:  # onnx raises DecodeError, ValueError, google.protobuf errors; ORT its own
        raise ModelFileError(
            f'{path} is not a readable ONNX file ({type(err).__name__}); re-export it with `nmr export`'
        ) from None
    if ONNX_METADATA_KEY not in props:
        raise ModelFileError(
            f'{path} has no nmr metadata (metadata_props[{ONNX_METADATA_KEY!r}]); export it with `nmr export`'
        )
    try:
        meta = json.loads(props[ONNX_METADATA_KEY])
        export = json.loads(props.get(ONNX_EXPORT_KEY, '{}'))
    except ValueError:
        raise ModelFileError(f'{path}: nmr metadata is not valid JSON; re-export with `nmr export`') from None
    return info_from_metadata(path, 'onnx', meta, export)


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file: onnx if installed, else onnxruntime (which loads the weights)."""
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return dict(session.get_modelmeta().custom_metadata_map)
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_checkpoint(path: str | Path, expected_pair: str | None = None) -> tuple[Any, ModelInfo]:
    """(RegistrationNet in eval mode on CPU, ModelInfo); weights_only loading via nmr.models.checkpoint."""
    from nmr.models.checkpoint import load_registration_net

    path = Path(path)
    try:
        net, metadata = load_registration_net(path, expected_pair=expected_pair)
    except ModelFileError:
        raise
    except Exception as err:
        raise ModelFileError(
            f'{path} is not a loadable nmr checkpoint ({type(err).__name__}: '
            f'{str(err).splitlines()[0][:120] if str(err) else ""}); give a checkpoint '
            'written by `nmr train`'
        ) from None
    info = info_from_metadata(path, 'checkpoint', metadata_dict(metadata))
    if not info.registration:
        cfg = getattr(net, 'config', None)
        if cfg is not None:
            info.registration = metadata_dict(cfg)
    net.eval()
    return net, info


def read_model_info(path: str | Path) -> ModelInfo:
    """Metadata of any supported model file (loads a checkpoint's tensors; ONNX/engine only their headers)."""
    kind = model_kind(path)
    if kind == 'onnx':
        return read_onnx_info(path)
    if kind == 'checkpoint':
        return read_checkpoint(path)[1]
    from nmr.inference.engine_cache import read_sidecar

    side = read_sidecar(path)
    if not side or 'metadata' not in side:
        raise ModelFileError(
            f'TensorRT engine {path} has no readable sidecar {Path(path).name}.json; '
            'rebuild it with `nmr export --engine`'
        )
    return info_from_metadata(Path(path), 'engine', side['metadata'], side.get('export'))
