"""The rig model: every camera's intrinsics, distortion, size, pose relative to RGB and time offset.

One YAML file (``config/rig.example.yaml`` documents every key)::

    format_version: 1
    cameras:
      rgb:   {width, height, fx, fy, cx, cy, distortion: [k1, k2, p1, p2, k3]}  # the reference
      lwir:  {..., rotation: [rx, ry, rz], translation: [tx, ty, tz], time_offset_s: dt}
      depth: {...}

Pose direction: ``rotation`` (a rotation vector, axis * angle in radians) and ``translation`` (metres) are
``T_rgb_cam``, the camera's pose in the RGB camera's optical frame: ``X_rgb = R @ X_cam + t``, so ``t`` is
the camera's optical centre in RGB coordinates (x right, y down, z forward) and ``R``'s columns are its
axes. That is exactly ``moving_from_fixed`` for the pair (fixed = that camera, moving = RGB), which
:meth:`Rig.moving_from_fixed` returns. The synthetic rig's ``R_ref_cam`` / ``t_ref_cam`` are the same.

Time: a frame of a stream stamped ``s`` was exposed at ``s + time_offset_s`` on the RGB stream's clock
(RGB's own offset is 0 by definition).

Why a rotation vector: it has no singularity near the identity (a rig's relative rotations are a few
degrees), three numbers with no convention to get wrong beyond "radians", and the file keeps exactly the
numbers it was given, so a rig file round-trips bit for bit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nmr.atomic import write_text
from nmr.errors import ConfigError
from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import Pose, matrix_to_rotvec

FORMAT_VERSION = 1
CAMERA_NAMES = ('rgb', 'lwir', 'depth')
REFERENCE = 'rgb'
INTRINSIC_KEYS = ('width', 'height', 'fx', 'fy', 'cx', 'cy', 'distortion')
POSE_KEYS = ('rotation', 'translation', 'time_offset_s')
OPTIONAL_KEYS = ('frame_id',)
CAMERA_KEYS = (*INTRINSIC_KEYS, *POSE_KEYS, *OPTIONAL_KEYS)
TOP_KEYS = ('format_version', 'description', 'cameras')

_NUMBER = re.compile(r'^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$')


def _show(value: Any) -> str:
    """A value for a one-line message: repr (escapes newlines), at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


@dataclass(frozen=True)
class RigCamera:
    """One camera of the rig: its model, its pose ``T_rgb_cam`` (as stored) and its time offset."""

    name: str
    model: CameraModel
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotation vector of T_rgb_cam, radians
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # T_rgb_cam translation, metres
    time_offset_s: float = 0.0  # exposure on the RGB clock = header stamp + time_offset_s
    frame_id: str | None = None

    @property
    def pose(self) -> Pose:
        """``T_rgb_cam`` (= ``rgb_from_cam``)."""
        return Pose.from_rotvec(self.rotation, self.translation)


@dataclass(frozen=True)
class Rig:
    """The rig: ``rgb`` (the reference, the moving image of every pair) and optionally ``lwir``, ``depth``."""

    cameras: dict[str, RigCamera] = field(default_factory=dict)
    description: str | None = None

    # ------------------------------------------------------------------ queries
    def names(self) -> list[str]:
        return [n for n in CAMERA_NAMES if n in self.cameras]

    def rig_camera(self, name: str) -> RigCamera:
        if name not in self.cameras:
            known = ', '.join(self.names()) or 'none'
            raise ConfigError(f"rig has no camera '{name}' (it has {known}); add it to the rig file")
        return self.cameras[name]

    def camera(self, name: str) -> CameraModel:
        """The camera model (intrinsics, distortion, size) of ``name``."""
        return self.rig_camera(name).model

    def pose(self, name: str) -> Pose:
        """``T_rgb_cam`` of ``name`` (identity for rgb)."""
        return self.rig_camera(name).pose

    def moving_from_fixed(self, fixed_name: str) -> Pose:
        """``rgb_from_fixed``: the pose :func:`flow_through_depth` takes for the pair (fixed, rgb)."""
        return self.pose(fixed_name)

    def between(self, dst: str, src: str) -> Pose:
        """``dst_from_src`` for any two cameras (e.g. depth -> lwir for :func:`reproject_depth`)."""
        return self.pose(dst).inverse() @ self.pose(src)

    def time_offset_s(self, name: str) -> float:
        return self.rig_camera(name).time_offset_s

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_synth(cls, synth_rig: Any, time_offsets: Mapping[str, float] | None = None) -> Rig:
        """The true rig of a synthetic rig (:class:`nmr.synth.cameras.Rig`): its cameras' intrinsics,
        ``R_ref_cam`` / ``t_ref_cam`` (the same direction as ``T_rgb_cam``), distortion (``dist``, none if
        the camera has no such field) and frame ids."""
        offsets = dict(time_offsets or {})
        cams: dict[str, RigCamera] = {}
        for name, cam in synth_rig.cameras().items():
            rot = (0.0, 0.0, 0.0) if name == REFERENCE else tuple(float(v) for v in matrix_to_rotvec(cam.R_ref_cam))
            trans = (0.0, 0.0, 0.0) if name == REFERENCE else tuple(float(v) for v in cam.t_ref_cam)
            cams[name] = RigCamera(
                name=name,
                model=CameraModel(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy,
                                  tuple(getattr(cam, 'dist', (0.0,) * 5))),
                rotation=rot,  # type: ignore[arg-type]
                translation=trans,  # type: ignore[arg-type]
                time_offset_s=0.0 if name == REFERENCE else float(offsets.get(name, 0.0)),
                frame_id=getattr(cam, 'frame_id', None),
            )
        return cls(cams, description='true rig of the synthetic rig (nmr.synth)')

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        cams: dict[str, Any] = {}
        for name in self.names():
            c = self.cameras[name]
            m = c.model
            entry: dict[str, Any] = {}
            if c.frame_id is not None:
                entry['frame_id'] = c.frame_id
            entry.update(
                width=m.width,
                height=m.height,
                fx=m.fx,
                fy=m.fy,
                cx=m.cx,
                cy=m.cy,
                distortion=list(m.dist),
            )
            if name != REFERENCE:
                entry.update(rotation=list(c.rotation), translation=list(c.translation), time_offset_s=c.time_offset_s)
            cams[name] = entry
        out: dict[str, Any] = {'format_version': FORMAT_VERSION}
        if self.description is not None:
            out['description'] = self.description
        out['cameras'] = cams
        return out

    def dumps(self) -> str:
        head = '# nmr rig model (format in config/rig.example.yaml; poses are T_rgb_cam, rotation vectors in rad)\n'
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=1000)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file in the same folder, then rename)."""
        write_text(path, self.dumps())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rig:
        """Read and validate a rig file; every problem is a one-line ConfigError naming file and field."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f'rig file {path} does not exist; give the path of a RIG.yaml') from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f'rig file {path} cannot be read: {str(err).splitlines()[0]}') from None
        return cls.loads(text, where=str(path))

    @classmethod
    def loads(cls, text: str, where: str = 'rig file') -> Rig:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = ' '.join(str(err).split())
            raise ConfigError(f'{where}: not valid YAML ({first}); fix the syntax') from None
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: Any, where: str = 'rig file') -> Rig:
        return _Parser(where).rig(doc)


class _Parser:
    """Validation with one-line errors: ``<file>: <field path>: <what is wrong>; <what to do>``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, fld: str, problem: str) -> ConfigError:
        return ConfigError(f'{self.where}: {fld}: {problem}')

    def rig(self, doc: Any) -> Rig:
        if not isinstance(doc, Mapping):
            raise ConfigError(
                f'{self.where}: expected a map with format_version and cameras; see config/rig.example.yaml'
            )
        self.unknown(doc, TOP_KEYS, '', 'format_version, description, cameras')
        if 'format_version' not in doc:
            raise self.fail('format_version', 'missing; add format_version: 1')
        version = doc['format_version']
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise self.fail('format_version', f'{_show(version)} is not supported; this nmr reads format_version: 1')
        description = doc.get('description')
        if description is not None and not isinstance(description, str):
            raise self.fail('description', f'must be text, got {_show(description)}')
        cams = doc.get('cameras')
        if cams is None:
            raise self.fail('cameras', 'missing; add a cameras map with at least rgb')
        if not isinstance(cams, Mapping):
            raise self.fail('cameras', f'must be a map of camera name to camera, got {_show(cams)}')
        for name in cams:
            if name not in CAMERA_NAMES:
                raise self.fail(f'cameras.{name}', f'unknown camera name; use {", ".join(CAMERA_NAMES)}')
        if REFERENCE not in cams:
            raise self.fail('cameras.rgb', 'missing; the RGB camera is the reference and must be described')
        out = {name: self.camera(name, cams[name]) for name in CAMERA_NAMES if name in cams}
        return Rig(out, description)

    def unknown(self, m: Mapping[Any, Any], allowed: tuple[str, ...], prefix: str, hint: str) -> None:
        for key in m:
            if key not in allowed:
                raise self.fail(f'{prefix}{key}', f'unknown key; allowed: {hint}')

    def number(self, value: Any, fld: str) -> float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(fld, f'must be a number, got {_show(value)}')
        f = float(value)
        if not math.isfinite(f):
            raise self.fail(fld, f'must be finite, got {_show(value)}')
        return f

    def vector(self, value: Any, n: int, fld: str, what: str) -> tuple[float, ...]:
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise self.fail(fld, f'must be a list of {n} numbers ({what}), got {_show(value)}')
        return tuple(self.number(v, f'{fld}[{i}]') for i, v in enumerate(value))

    def camera(self, name: str, c: Any) -> RigCamera:
        p = f'cameras.{name}.'
        if not isinstance(c, Mapping):
            raise self.fail(p[:-1], f'must be a map of camera fields, got {_show(c)}')
        self.unknown(c, CAMERA_KEYS, p, ', '.join(CAMERA_KEYS))
        required = INTRINSIC_KEYS if name == REFERENCE else (*INTRINSIC_KEYS, *POSE_KEYS)
        for key in required:
            if key not in c:
                raise self.fail(f'{p}{key}', 'missing; every camera needs ' + ', '.join(required))
        size = {}
        for key in ('width', 'height'):
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(f'{p}{key}', f'must be a whole number of pixels, got {_show(v)}')
            if v <= 0:
                raise self.fail(f'{p}{key}', f'must be positive, got {v}')
            size[key] = v
        vals = {key: self.number(c[key], f'{p}{key}') for key in ('fx', 'fy', 'cx', 'cy')}
        for key in ('fx', 'fy'):
            if vals[key] <= 0:
                raise self.fail(f'{p}{key}', f'focal length must be positive (pixels), got {_show(c[key])}')
        dist = self.vector(c['distortion'], 5, f'{p}distortion', 'plumb_bob k1, k2, p1, p2, k3')
        model = CameraModel(size['width'], size['height'], vals['fx'], vals['fy'], vals['cx'], vals['cy'], dist)  # type: ignore[arg-type]
        rot = self.vector(c.get('rotation', [0.0] * 3), 3, f'{p}rotation', 'rotation vector rx, ry, rz in radians')
        angle = float(np.linalg.norm(rot))
        if angle > math.pi + 1e-9:
            raise self.fail(
                f'{p}rotation',
                f'not a rotation vector in radians: its angle {angle:.4g} rad exceeds pi (degrees given?)',
            )
        trans = self.vector(c.get('translation', [0.0, 0.0, 0.0]), 3, f'{p}translation', 'tx, ty, tz in metres')
        dt = self.number(c.get('time_offset_s', 0.0), f'{p}time_offset_s')
        if name == REFERENCE:
            for key, value in (('rotation', any(rot)), ('translation', any(trans)), ('time_offset_s', dt != 0.0)):
                if value:
                    raise self.fail(f'{p}{key}', 'the RGB camera is the reference: it must be zero (or left out)')
        frame_id = c.get('frame_id')
        if frame_id is not None and (not isinstance(frame_id, str) or not frame_id or '\n' in frame_id):
            raise self.fail(f'{p}frame_id', f'must be a ROS frame id (text), got {_show(frame_id)}')
        return RigCamera(name, model, rot, trans, dt, frame_id)  # type: ignore[arg-type]
