"""Subscription QoS for camera inputs: sensor-data by default, reliability and depth configurable.

Best effort is the default because a best-effort subscriber matches both best-effort and reliable
publishers, and because a late frame is worthless to a real-time registration node.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from nmr.pipeline.settings import InputSettings

_RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT, 'reliable': ReliabilityPolicy.RELIABLE}


def input_qos(settings: InputSettings) -> QoSProfile:
    """QoS profile of one input subscription (keep last `history_depth`, volatile)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=settings.history_depth,
        reliability=_RELIABILITY[settings.reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


def output_qos(depth: int = 2) -> QoSProfile:
    """Outputs are published reliable (matches every subscriber) with a short queue: newest wins."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
