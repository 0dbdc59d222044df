"""What a model file is and what it says about itself, with one-line `ModelFileError`s for bad files.

The registrars accept a `.pt` checkpoint (nmr.models.checkpoint), an `.onnx` export (metadata in
`metadata_props`) or a TensorRT `.engine` (metadata in its sidecar JSON). All three carry the same
`ModelMetadata` record, parsed by its one validator (`ModelMetadata.from_dict`), so that pre- and
post-processing never depend on which file the model came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmr.errors import ModelFileError
from nmr.models.metadata import NET_SIDE_RANGE, ModelMetadata

ONNX_METADATA_KEY = 'nmr.metadata'  # JSON of nmr.models.metadata.ModelMetadata
ONNX_EXPORT_KEY = 'nmr.export'  # JSON: opset, sizes, dynamic, precision, parity, source checksum


@dataclass
class ModelInfo:
    """A model file: where it is, which kind of file, its metadata record and (ONNX/engine) export facts."""

    path: Path
    kind: str  # 'checkpoint' | 'onnx' | 'engine'
    metadata: ModelMetadata
    export: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: Path, kind: str, meta: Any, export: Mapping[str, Any] | None = None) -> ModelInfo:
        """From the file's metadata as stored (a dict); ModelFileError naming the file if it is invalid."""
        return cls(Path(path), kind, ModelMetadata.from_dict(meta, source=path), dict(export or {}))

    @property
    def pair(self) -> str:
        return self.metadata.pair

    @property
    def fixed_kind(self) -> str:
        return self.metadata.fixed_kind

    @property
    def net_hw(self) -> tuple[int, int]:
        return self.metadata.net_hw

    @property
    def normalisation(self) -> dict[str, Any]:
        return self.metadata.normalisation

    @property
    def registration(self) -> dict[str, Any]:
        return self.metadata.registration


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


def read_onnx_info(path: str | Path) -> ModelInfo:
    """Metadata of an nmr ONNX export, with the `onnx` package (weights not loaded) or, where it is not
    installed (it has no rosdep key, so a robot may lack it), with onnxruntime's own model metadata."""
    path = Path(path)
    try:
        props, model = _onnx_header(path)
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
    info = ModelInfo.parse(path, 'onnx', meta, export)
    if model is not None:  # without the onnx package ONNX Runtime has read the file (and checks it itself)
        check_external_data(model, path)
        check_onnx_interface(model, info)
        check_finite_initialisers(model, path)
    return info


#: What every registrar feeds R_Phi and expects back: name -> (element type, channels). The pre-processing
#: (nmr.data.preprocess) makes RGB 3 channels and LWIR / depth 1 channel, float32 in [-1, 1].
EXPECTED_IO = {'moving': 3, 'fixed': 1, 'flow': 2}


def _tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initialisers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField('t'):
                yield attr.t
            yield from attr.tensors
            if attr.HasField('g'):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(model: Any, path: Path) -> None:
    """Refuse external-data references that leave the model's folder (absolute, `..`, or via a link).

    ONNX tensors may live in side files named by a path inside the model; a downloaded model must not make
    the runtime read `/etc/...` or another user's files, so only files inside its own folder are allowed.
    """
    import onnx

    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get('location', '')
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelFileError(
                f'{path}: tensor {tensor.name!r} refers to external data {location!r} outside the model\'s '
                'folder; refused (untrusted model): re-export it with `nmr export`'
            )


IO_TEXT = 'moving 1x3xHxW, fixed 1x1xHxW float32 -> flow 1x2xHxW'


def check_channels(info: ModelInfo) -> None:
    """The model's metadata asks for the channels the pre-processing makes (3 RGB, 1 fixed)."""
    meta = info.metadata
    if meta.moving_channels != EXPECTED_IO['moving'] or meta.fixed_channels != EXPECTED_IO['fixed']:
        raise ModelFileError(
            f'{info.path}: metadata says {meta.moving_channels} moving / {meta.fixed_channels} fixed channels, '
            f'the registrar feeds {IO_TEXT}; use a model trained and exported by nmr'
        )


def _dims(value_info: Any) -> list[int | None]:
    """A graph input/output's shape: an int per fixed dimension, None per symbolic one."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField('dim_value') else None for d in shape.dim]


def check_onnx_interface(model: Any, info: ModelInfo) -> None:
    """The graph's inputs and outputs are R_Phi's (names, float32, NCHW with the expected channels), and
    its metadata's channels agree: refused at load time with one line, not at the first frame."""
    import onnx

    initialisers = {t.name for t in model.graph.initializer}
    ios = {v.name: v for v in [*model.graph.input, *model.graph.output] if v.name not in initialisers}
    want = IO_TEXT
    check_channels(info)
    for name, channels in EXPECTED_IO.items():
        value = ios.get(name)
        if value is None:
            raise ModelFileError(
                f'{info.path} has inputs/outputs {sorted(ios)}, not the nmr R_Phi interface ({want}); '
                'export it with `nmr export`'
            )
        dims = _dims(value)
        elem = value.type.tensor_type.elem_type
        shape = 'x'.join('?' if d is None else str(d) for d in dims)
        if elem != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] not in (None, channels):
            raise ModelFileError(
                f'{info.path}: {name!r} is {onnx.TensorProto.DataType.Name(elem).lower()} {shape or "scalar"}, '
                f'the registrar expects {want}; export it with `nmr export`'
            )
        check_static_dims(info, name, dims, shape)


def check_static_dims(info: ModelInfo, name: str, dims: list[int | None], shape: str) -> None:
    """A fixed batch must be 1 and a fixed H x W must be the metadata's net_hw, a multiple of the network
    stride: otherwise ONNX Runtime fails at the first frame (InvalidArgument), or the registrar feeds a
    size the network was not exported for."""
    if dims[0] not in (None, 1):
        raise ModelFileError(f'{info.path}: {name!r} has a fixed batch of {dims[0]} ({shape}); the registrar '
                             'feeds one pair at a time: export it with `nmr export`')
    hw = dims[2:]
    if any(d is not None for d in hw):
        multiple = int(info.export.get('size_multiple', 1) or 1)
        exported = {tuple(info.net_hw)} | {tuple(s) for s in info.export.get('sizes', []) if isinstance(s, list)}
        low, high = NET_SIDE_RANGE
        if (any(d is None or not low <= d <= high or d % multiple for d in hw)
                or tuple(hw) not in exported):
            raise ModelFileError(
                f'{info.path}: {name!r} has a fixed size {shape}, which is not a size it was exported for '
                f'(metadata net_hw {list(info.net_hw)}, {low}..{high} px, stride {multiple}); refused: '
                're-export it with `nmr export`')


def check_finite_initialisers(model: Any, path: Path) -> None:
    """Refuse weights with NaN / inf values (those stored inside the file; external data is not loaded
    here): such a model returns NaN flows, which warp to black images that look like a result."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == 'f' and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ModelFileError(f'{path}: weight {tensor.name!r} has {bad} of {array.size} values NaN or '
                                 'infinite (a diverged training run?); refused: export an earlier checkpoint')


def _onnx_header(path: Path) -> tuple[dict[str, str], Any]:
    """(metadata_props, ModelProto without external data) with onnx if installed; else (metadata_props from
    onnxruntime, which loads the weights, None): onnx has no rosdep key, so a robot may lack it."""
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return dict(session.get_modelmeta().custom_metadata_map), None
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}, model


def read_checkpoint(path: str | Path, expected_pair: str | None = None) -> tuple[Any, ModelInfo]:
    """(RegistrationNet in eval mode on CPU, ModelInfo); weights_only loading via nmr.models.checkpoint."""
    from nmr.models.checkpoint import load_registration_net
    from nmr.models.registration import RegistrationConfig

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
    if not metadata.registration:  # no architecture recorded: the default one it was just built with
        metadata.registration = RegistrationConfig.from_dict({}).to_dict()
    info = ModelInfo(path, 'checkpoint', metadata)
    check_channels(info)
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
    return ModelInfo.parse(Path(path), 'engine', side['metadata'], side.get('export'))
