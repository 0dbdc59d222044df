"""Poses between the rig's cameras from the bag's ``/tf_static``: what the drivers already know.

Why: a RealSense publishes its factory depth-colour extrinsics on ``/tf_static`` (realsense2_camera:
``camera_link -> camera_depth_frame -> camera_depth_optical_frame`` and ``camera_link -> camera_color_frame
-> camera_color_optical_frame``), and a rig with a URDF or a hand calibration publishes its other cameras
there too. Such a pose is better than anything calibration can estimate from the scene (the RGB vs
inverse-depth similarity peaks away from the true depth pose, docs/results.md), so `nmr calibrate` takes
it and keeps it fixed unless asked to refine it.

Convention (tf2): a ``geometry_msgs/TransformStamped`` with ``header.frame_id`` = parent and
``child_frame_id`` = child is the child frame's pose in the parent frame, i.e. ``parent_from_child``:
``X_parent = R X_child + t``. The rig file's ``T_rgb_cam`` is therefore the transform from the RGB
camera's optical frame (parent) to the camera's optical frame (child), chained through the tree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmr.data.bag_reader import open_bag
from nmr.errors import BagError
from nmr.geometry.pose import Pose, quaternion_to_matrix

TF_STATIC_TOPIC = '/tf_static'
TF_MSGTYPE = 'tf2_msgs/msg/TFMessage'


def _norm(frame: str) -> str:
    """tf2 ignores a leading slash (a ROS 1 habit still found in bags)."""
    return frame.lstrip('/')


@dataclass
class StaticTree:
    """The static transforms of a recording: ``child -> (parent, parent_from_child)`` (tf2 keeps one parent
    per child; a later message for the same child replaces the earlier one, as in tf2's static buffer)."""

    edges: dict[str, tuple[str, Pose]] = field(default_factory=dict)

    def add(self, parent: str, child: str, parent_from_child: Pose) -> None:
        self.edges[_norm(child)] = (_norm(parent), parent_from_child)

    def __bool__(self) -> bool:
        return bool(self.edges)

    def frames(self) -> set[str]:
        return set(self.edges) | {p for p, _ in self.edges.values()}

    def lookup(self, target: str, source: str) -> tuple[Pose, list[str]] | None:
        """``target_from_source`` (the source frame's pose in the target frame) and the frames the chain
        passes through; None when the two frames are not connected."""
        target, source = _norm(target), _norm(source)
        if target == source:
            return Pose.identity(), [target]
        neighbours: dict[str, list[tuple[str, Pose]]] = {}
        for child, (parent, p_from_c) in self.edges.items():
            neighbours.setdefault(parent, []).append((child, p_from_c.inverse()))  # child_from_parent
            neighbours.setdefault(child, []).append((parent, p_from_c))  # parent_from_child
        # breadth first from the source: at each frame f we hold f_from_source
        seen: dict[str, tuple[Pose, list[str]]] = {source: (Pose.identity(), [source])}
        queue = deque([source])
        while queue:
            f = queue.popleft()
            f_from_src, path = seen[f]
            for g, g_from_f in neighbours.get(f, []):
                if g in seen:
                    continue
                seen[g] = (g_from_f @ f_from_src, [*path, g])
                if g == target:
                    pose, chain = seen[g]
                    return pose, chain[::-1]
                queue.append(g)
        return None


def _transform_pose(tf: Any) -> Pose:
    t, q = tf.translation, tf.rotation
    return Pose(quaternion_to_matrix(q.x, q.y, q.z, q.w), np.array([t.x, t.y, t.z], dtype=np.float64))


def read_static_tree(bags: Iterable[Path], topic: str = TF_STATIC_TOPIC) -> StaticTree:
    """Every transform on ``topic`` in the bags (empty when no bag has the topic); BagError (one line) for
    a topic of another type or a transform that is not a rigid motion."""
    tree = StaticTree()
    for bag in bags:
        with open_bag(bag) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            for c in conns:
                if c.msgtype != TF_MSGTYPE:
                    raise BagError(f'topic {topic} in {bag} is {c.msgtype}, not {TF_MSGTYPE}: rename or drop it')
            if not conns:  # (an empty connection list would read every message of the bag)
                continue
            for conn, _, raw in reader.messages(connections=conns):
                msg: Any = reader.deserialize(raw, conn.msgtype)
                for ts in msg.transforms:
                    try:
                        pose = _transform_pose(ts.transform)
                    except ValueError as err:
                        raise BagError(f'{topic} in {bag}: transform {ts.header.frame_id} -> {ts.child_frame_id} '
                                       f'is not a rigid motion ({err})') from None
                    tree.add(ts.header.frame_id, ts.child_frame_id, pose)
    return tree


def camera_poses(tree: StaticTree, frames: dict[str, str | None], reference: str = 'rgb',
                 cameras: Sequence[str] = ('depth', 'lwir')) -> dict[str, tuple[Pose, list[str]]]:
    """Per camera whose frame is connected to the reference camera's frame in ``tree``: ``T_ref_cam`` (the
    camera's optical frame in the reference's, the rig file's direction) and the chain of frames."""
    out: dict[str, tuple[Pose, list[str]]] = {}
    ref = frames.get(reference)
    if not tree or not ref:
        return out
    for cam in cameras:
        f = frames.get(cam)
        if not f or _norm(f) == _norm(ref):
            continue  # no frame id, or the same frame as RGB (an aligned stream): nothing to take
        found = tree.lookup(ref, f)
        if found is not None:
            out[cam] = found
    return out
