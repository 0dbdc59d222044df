"""Model files: tensors plus plain metadata, written atomically, read only with `weights_only=True`.

A checkpoint is a dict `{'format': 'nmr-checkpoint', 'format_version': 1, 'metadata': {...},
'state': {module_name: state_dict}, 'extra': {...}}` holding only tensors, numbers, strings, bools, None,
lists, tuples and dicts, so `torch.load(path, weights_only=True)` opens it and an untrusted file cannot run
code. `state['registration']` is R_Phi (the only part inference needs); training adds 'translation',
'discriminator' and, in `extra`, optimiser/scheduler/scaler states and the epoch for `--resume`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmr.atomic import WriteError, staged_path
from nmr.errors import ModelFileError
from nmr.models.metadata import ModelMetadata
from nmr.models.registration import RegistrationConfig, build_registration

__all__ = ['LoadedCheckpoint', 'ModelMetadata', 'load_checkpoint', 'load_registration_net', 'read_checkpoint',
           'save_checkpoint']

FORMAT = 'nmr-checkpoint'
FORMAT_VERSION = 1


def _plain(obj: Any) -> Any:
    """Deep copy of training extras into types that `weights_only` unpickling accepts (tensors stay)."""
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor | str | int | float | bool) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, 'item') and hasattr(obj, 'dtype'):  # numpy scalar
        return obj.item()
    if hasattr(obj, 'tolist'):  # numpy array
        return obj.tolist()
    raise TypeError(f'checkpoint value of type {type(obj).__name__} is not plain data')


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Mapping[str, torch.Tensor]],
    metadata: ModelMetadata,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write atomically: a temporary file in the same directory, fsync, then os.replace.

    A crash mid-write leaves the previous file intact. `state` maps module names to state_dicts (moved to
    CPU); `extra` is plain data (optimiser state_dicts are fine: tensors, numbers, lists, dicts).
    """
    path = Path(path)
    payload = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'metadata': metadata.to_dict(),
        'state': {name: {k: v.detach().cpu() for k, v in sd.items()} for name, sd in state.items()},
        'extra': _plain(_to_cpu(dict(extra or {}))),
    }
    try:
        with staged_path(path, durable=True) as tmp, open(tmp, 'wb') as f:
            torch.save(payload, f)
    except WriteError as err:  # disk full (torch says RuntimeError), quota, read-only: the previous file is whole
        raise ModelFileError(f'cannot write checkpoint {path} ({err.reason}); the previous one is '
                             'unchanged: free disk space or write elsewhere') from None
    # staged copies left by trainers killed mid-write are cleared by staged_path (durable writes)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclass
class LoadedCheckpoint:
    """Everything in a checkpoint: per-module state_dicts, metadata, and training extras (resume)."""

    state: dict[str, dict[str, torch.Tensor]]
    metadata: ModelMetadata
    extra: dict[str, Any]


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = 'cpu'
) -> LoadedCheckpoint:
    """Load with weights_only=True; every failure is a one-line ModelFileError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f'model file {path} does not exist; give a checkpoint written by `nmr train`')
    if path.is_dir():
        raise ModelFileError(f'model path {path} is a directory; give a checkpoint file (.pt)')
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'unsupported global' in str(err).lower():
            raise ModelFileError(
                f'{path} contains objects other than tensors and plain data; refusing to '
                'load it (untrusted pickle). Give a checkpoint written by `nmr train`'
            ) from None
        raise ModelFileError(
            f'{path} is corrupt or not a PyTorch file; give a checkpoint written by `nmr train`'
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError):
        raise ModelFileError(
            f'{path} is corrupt or not a PyTorch file; give a checkpoint written by `nmr train`'
        ) from None
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        raise ModelFileError(
            f'{path} is a PyTorch file but not an nmr checkpoint; give a checkpoint written by `nmr train`'
        )
    version = payload.get('format_version')
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f'{path} has checkpoint format version {version!r}, newer than this nmr '
            f'({FORMAT_VERSION}); upgrade nmr'
        )
    state = payload.get('state')
    if not isinstance(state, dict):
        raise ModelFileError(f'{path} has no weights; give a checkpoint written by `nmr train`')
    metadata = ModelMetadata.from_dict(payload.get('metadata') or {}, source=path)
    check_finite_state(path, state)
    return LoadedCheckpoint(state=state, metadata=metadata, extra=dict(payload.get('extra') or {}))


def check_finite_state(path: Path, state: Mapping[str, Any]) -> None:
    """ModelFileError naming the first weight tensor with NaN / inf values: such a model returns NaN flows,
    which warp to black images that look like a result."""
    for module, tensors in state.items():
        if not isinstance(tensors, Mapping):
            raise ModelFileError(f'{path}: weights of {module!r} are not a state_dict; give a checkpoint '
                                 'written by `nmr train`')
        for name, tensor in tensors.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                bad = int((~tensor.isfinite()).sum())
                raise ModelFileError(f'{path}: weight {module}.{name} has {bad} of {tensor.numel()} values NaN or '
                                     'infinite (a diverged training run?); refused: use an earlier checkpoint')


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = 'cpu'
) -> tuple[dict[str, dict[str, torch.Tensor]], ModelMetadata]:
    """(state_dicts by module name, metadata); see `read_checkpoint` for the training extras."""
    ckpt = read_checkpoint(path, map_location)
    return ckpt.state, ckpt.metadata


def load_registration_net(
    path: str | os.PathLike[str], expected_pair: str | None = None, map_location: str | torch.device = 'cpu'
) -> tuple[torch.nn.Module, ModelMetadata]:
    """R_Phi from a checkpoint, in eval mode; ModelFileError if missing, corrupt or for another pair."""
    state, metadata = load_checkpoint(path, map_location)
    metadata.check_pair(expected_pair, path)
    if 'registration' not in state:
        raise ModelFileError(
            f'{path} has no registration network weights; give a checkpoint written by `nmr train`'
        )
    try:
        net = build_registration(RegistrationConfig.from_dict(metadata.registration))
        net.load_state_dict(state['registration'])
    except (ValueError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ModelFileError(
            f'{path}: registration weights do not match its architecture ({first}); '
            're-create the model with `nmr train`'
        ) from None
    net.to(map_location)
    net.eval()
    return net, metadata
