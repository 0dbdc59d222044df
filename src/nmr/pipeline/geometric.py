"""The frame-set core's options for a rig: depth as an auxiliary input, time offsets, depth age.

The geometric stage itself is nmr.geometry.registration (below the pipeline, so that `nmr evaluate --rig`
uses it too).
"""

from __future__ import annotations

from typing import Any

from nmr.geometry.registration import GeometricStage


def core_rig_options(geometry: GeometricStage | None, settings: Any) -> dict[str, Any]:
    """FrameSetCore's keyword arguments for a rig (none without one): depth as an auxiliary input of
    rgb_lwir, each stream's time offset (ns, RGB clock) and the depth frame's maximum age."""
    if geometry is None:
        return {}
    rig = geometry.rig
    offsets = {name: round(rig.time_offset_s(name) * 1e9) for name in rig.names()}
    # depth is an auxiliary input of rgb_lwir only when that pair goes through the rig
    return {'depth_aux': 'depth' in rig.cameras and 'lwir' in rig.cameras, 'offsets_ns': offsets,
            'depth_max_age_ns': settings.rig_depth_max_age_ns}
