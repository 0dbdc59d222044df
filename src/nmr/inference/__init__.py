"""nmr.inference: run R_Phi on torch, ONNX Runtime or TensorRT behind one `Registrar` interface.

Names are imported lazily so that `nmr export --help` (and anything importing a submodule) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'Registration': 'nmr.inference.protocol',
    'Registrar': 'nmr.inference.registrar',
    'RegistrarProtocol': 'nmr.inference.protocol',
    'TorchRegistration': 'nmr.inference.registrar',
    'create_registrar': 'nmr.inference.select',
    'export_checkpoint': 'nmr.inference.export',
    'export_onnx': 'nmr.inference.export',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
