"""The rig as the camera drivers publish it: camera_info and ``/tf_static``, nothing estimated.

Why: a RealSense (realsense2_camera) publishes its factory-calibrated colour and depth intrinsics on the
camera_info topics and the depth-colour extrinsics on ``/tf_static``. That is the whole RGB-depth part of
the rig, exact to the factory calibration, with no calibration run and in a second; `depth_image_proc`
registers depth with the same two inputs. Cameras the drivers do not fully describe (typically the LWIR
camera: a nominal camera_info and no transform to the RealSense) are left out of the rig file; the node
and register-bag register their pair with its network (nmr.pipeline.settings.load_geometry) until
`nmr calibrate` has estimated them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from nmr.calibration import bagdata, tfstatic
from nmr.data.bag_reader import list_topics
from nmr.errors import BagError
from nmr.geometry.rig import Rig, RigCamera


def rig_from_drivers(bags: Sequence[Path], topics: Mapping[str, str]) -> tuple[Rig, list[str]]:
    """(the rig of the cameras with camera_info and a /tf_static pose to RGB, notes on the ones left out).

    `topics`: image topic per camera name (rgb, lwir, depth); topics not in the first bag are skipped with a
    note. BagError (one line) when RGB has no camera_info or no other camera is fully described.
    """
    available = list_topics(bags[0])
    present = {name: topic for name, topic in topics.items() if topic in available}
    if 'rgb' not in present:
        raise BagError(f'bag {bags[0]} has no rgb topic {topics.get("rgb")}: give the RGB image topic')
    notes = [f'no {name} topic {topic} in {bags[0]}' for name, topic in topics.items() if name not in present]
    streams = bagdata.index_bag(bags[0], present)
    rgb = streams['rgb']
    if rgb.info is None:
        raise BagError(f'{bagdata.info_topic(rgb.topic)} is missing or uncalibrated in {bags[0]}: the drivers\' '
                       'rig needs the RGB camera_info (or run nmr calibrate, which estimates without it)')
    tree = tfstatic.read_static_tree(bags)
    frames = {name: stream.frame_id for name, stream in streams.items()}
    others = [name for name in streams if name != 'rgb']
    poses = tfstatic.camera_poses(tree, frames, cameras=others)
    cameras = {'rgb': RigCamera('rgb', rgb.info, frame_id=rgb.frame_id)}
    for name in others:
        stream = streams[name]
        if stream.info is None:
            notes.append(f'{name}: no calibrated camera_info ({bagdata.info_topic(stream.topic)}): left out')
        elif name not in poses:
            notes.append(f'{name}: no {tfstatic.TF_STATIC_TOPIC} transform between {frames.get("rgb")} and '
                         f'{frames.get(name)}: left out')
        else:
            pose, chain = poses[name]
            cameras[name] = RigCamera(name, stream.info, tuple(float(v) for v in pose.rotvec()),  # type: ignore[arg-type]
                                      tuple(float(v) for v in pose.t), 0.0, stream.frame_id)  # type: ignore[arg-type]
            notes.append(f'{name}: camera_info and {tfstatic.TF_STATIC_TOPIC} ({" -> ".join(chain)})')
    if len(cameras) == 1:
        raise BagError(f'the drivers describe no camera besides RGB in {bags[0]} ({"; ".join(notes)}): '
                       'run nmr calibrate to estimate the rig from the images')
    names = ', '.join(n for n in cameras if n != 'rgb')
    return Rig(cameras=cameras, description=f'RGB and {names} as the drivers publish them (camera_info, '
                                            f'{tfstatic.TF_STATIC_TOPIC}); nothing estimated'), notes
