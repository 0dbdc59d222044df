"""Subscription QoS for camera inputs: what the publisher offers by default, reliability configurable.

Why not best effort by default: a best-effort subscription to a reliable camera driver (the ROS default
QoS, which realsense-ros and flir_boson_usb use) lost 50-85 % of full-size frames, because Fast DDS's
default shared-memory segment (~512 KB) is smaller than one frame and nothing is resent. A reliable
subscription to the same driver receives nearly every frame. `best_available` (rclpy) resolves to reliable
when every publisher known at subscription time is reliable (or none is known yet) and to best effort
otherwise; a best-effort driver that appears later is caught by the incompatible-QoS event (see the node).
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from nmr.pipeline.settings import InputSettings

_RELIABILITY = {'best_available': ReliabilityPolicy.BEST_AVAILABLE, 'reliable': ReliabilityPolicy.RELIABLE,
                'best_effort': ReliabilityPolicy.BEST_EFFORT}


def input_qos(settings: InputSettings, reliability: str | None = None) -> QoSProfile:
    """QoS profile of one input subscription (keep last `history_depth`, volatile).

    `reliability` overrides the setting (the node falls back to best effort for a best-effort driver).
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=settings.history_depth,
        reliability=_RELIABILITY[reliability or settings.reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


def camera_info_qos(reliability: str = 'best_available') -> QoSProfile:
    """camera_info is small: keep the newest only; reliability as the image input's (and followed alike)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=_RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int = 2) -> QoSProfile:
    """Outputs are published reliable (matches every subscriber) with a short queue: newest wins."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
