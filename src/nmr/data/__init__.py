"""nmr.data: Image messages <-> numpy, modality pre-processing, synchroniser, bags, pair datasets.

Submodules (import them directly; this package imports none eagerly, so that ``import nmr.data`` pulls in
neither torch nor rosbags):

- ``encodings``: ``sensor_msgs/Image`` <-> numpy for rclpy and rosbags messages.
- ``preprocess``: raw images -> network inputs in [-1, 1] (torch, CPU or CUDA), display images.
- ``sync``: ``ApproxTimeSynchronizer`` on header stamps.
- ``bag_reader`` / ``bag_writer``: rosbag2 (mcap, sqlite3) via rosbags; ``BagPairDataset``.
- ``pairs``: manifest CSV and folder pair datasets.
- ``types``: ``FramePair``.

The most used names are also reachable here, loaded on first use (``nmr.data.FramePair``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'FramePair': 'types',
    'image_to_numpy': 'encodings',
    'numpy_to_image_fields': 'encodings',
    'to_rgb': 'encodings',
    'stamp_ns': 'encodings',
    'ApproxTimeSynchronizer': 'sync',
    'BagWriter': 'bag_writer',
    'BagPairDataset': 'bag_reader',
    'list_topics': 'bag_reader',
    'iter_images': 'bag_reader',
    'read_manifest': 'pairs',
    'ManifestDataset': 'pairs',
    'FolderPairDataset': 'pairs',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'{__name__}.{module}'), name)
