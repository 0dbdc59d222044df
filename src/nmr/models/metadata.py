"""`ModelMetadata`: what a model file says about itself, with ONE parser and validator for every file kind.

A checkpoint (`nmr.models.checkpoint`), its ONNX export (`metadata_props['nmr.metadata']`, JSON) and a
TensorRT engine's sidecar all carry this record, and all are read through `ModelMetadata.from_dict`, so a
field means the same thing and fails with the same one-line `ModelFileError` whichever file it came
from. Torch-free: reading an ONNX file's metadata must not need torch.

The record is also how a model is matched to its data: `fixed_kind` (from nmr.domain) decides how the
fixed image is pre-processed, and `check_pair` refuses a model trained for the other pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from nmr import __version__
from nmr.domain import PAIR_FIXED_KIND, PAIRS
from nmr.errors import ModelFileError

DEFAULT_NET_HW = (256, 320)
#: Network input sides a model may declare: below 16 px the encoder has nothing left to see (a file that
#: says [1, 1] ran at 58 px EPE instead of 3 px); above 4096 px one frame needs tens of GB.
NET_SIDE_RANGE = (16, 4096)


@dataclass
class ModelMetadata:
    """The model's pair, R_Phi architecture, input normalisation, network size and training summary.

    `registration` is `RegistrationConfig.to_dict()` (kept as written, so that a newer architecture's keys
    survive a round trip); `normalisation` holds the keyword arguments of the fixed kind's pre-processing
    (e.g. `{'low_percentile': 1.0, 'high_percentile': 99.0}` for LWIR, `{'min_m': 0.3, 'max_m': 20.0}` for
    depth), as passed to `nmr.data.preprocess.fixed_input`; `net_hw` is the network input size (h, w) used
    in training; `train_data` a plain summary (sources, pair counts, resolution, epochs).
    """

    pair: str
    registration: dict[str, Any] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    net_hw: tuple[int, int] = DEFAULT_NET_HW
    train_data: dict[str, Any] = field(default_factory=dict)
    nmr_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec='seconds'))

    @property
    def fixed_kind(self) -> str:
        return PAIR_FIXED_KIND[self.pair]

    @property
    def moving_channels(self) -> int:
        return int(self.registration.get('moving_channels', 3))

    @property
    def fixed_channels(self) -> int:
        return int(self.registration.get('fixed_channels', 1))

    def check_pair(self, expected_pair: str | None, source: object) -> None:
        """ModelFileError (one line) when this model is for another pair than the caller's."""
        if expected_pair is not None and self.pair != expected_pair:
            raise ModelFileError(
                f'model {source} is for pair {self.pair}, not {expected_pair}; give the {expected_pair} model'
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples): what goes into a checkpoint, an ONNX file or a sidecar as JSON."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: Any, source: object = 'model file') -> ModelMetadata:
        """Parse and validate; every problem is a one-line ModelFileError naming `source`. Unknown keys are
        ignored (written by a newer nmr), missing optional ones take the defaults."""
        remedy = 're-create the model with `nmr train` (and `nmr export`)'
        if not isinstance(d, Mapping):
            raise ModelFileError(f'{source}: metadata is not a mapping; {remedy}')
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get('pair') not in PAIRS:
            raise ModelFileError(
                f'{source}: metadata pair {kw.get("pair")!r} is not one of {", ".join(PAIRS)}; {remedy}'
            )
        net_hw = kw.get('net_hw', DEFAULT_NET_HW)
        if not (isinstance(net_hw, list | tuple) and len(net_hw) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in net_hw)):
            raise ModelFileError(f'{source}: metadata net_hw {net_hw!r} is not (height, width); {remedy}')
        low, high = NET_SIDE_RANGE
        if not all(low <= v <= high for v in net_hw):
            raise ModelFileError(f'{source}: metadata net_hw {list(net_hw)} is outside {low}..{high} px per side '
                                 f'(not a size nmr trains at); refused: {remedy}')
        kw['net_hw'] = (int(net_hw[0]), int(net_hw[1]))
        for key in ('registration', 'normalisation', 'train_data'):
            value = kw.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ModelFileError(f'{source}: metadata {key} is not a mapping; {remedy}')
            kw[key] = dict(value or {})
        for key in ('nmr_version', 'created'):
            if key in kw:
                kw[key] = str(kw[key])
        return cls(**kw)


def _plain(obj: Any) -> Any:
    """Deep copy into JSON types (tuples become lists, paths strings, numpy scalars/arrays numbers/lists)."""
    if isinstance(obj, Mapping):
        return {k if isinstance(k, int) else str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, 'item') and hasattr(obj, 'dtype') and getattr(obj, 'ndim', 0) == 0:  # numpy scalar
        return obj.item()
    if hasattr(obj, 'tolist'):  # numpy array
        return obj.tolist()
    raise TypeError(f'model metadata value of type {type(obj).__name__} is not plain data')
