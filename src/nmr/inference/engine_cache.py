"""TensorRT engine cache: which engine file belongs to which (ONNX, TensorRT, GPU, precision, profiles).

A serialised TensorRT engine is only valid for the exact TensorRT version and GPU (compute capability)
that built it, and it bakes in the precision and the optimisation profiles. Loading a stale or foreign
engine either fails deep inside TensorRT or, worse, silently runs the wrong network. So every engine is
named by a key over everything it depends on; the key is stored in the file name (short form) and in a
sidecar JSON (full form), and an engine whose sidecar key does not match is rebuilt, never loaded.

This module is pure Python (no tensorrt, no torch) so that all of it is testable on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

KEY_SCHEMA = 1
SHORT_KEY_LEN = 16
PRECISIONS = ('fp32', 'fp16')


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile over the network grid size (h, w); batch is fixed to 1.

    TensorRT picks kernels for `opt` and accepts any shape between `min` and `max`.
    """

    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    def contains(self, hw: tuple[int, int]) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min_hw, hw, self.max_hw))

    def as_list(self) -> list[list[int]]:
        return [list(self.min_hw), list(self.opt_hw), list(self.max_hw)]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'320x256,640x512' -> [(256, 320), (512, 640)]: sizes are written WxH like the CLI, returned (h, w)."""
    sizes: list[tuple[int, int]] = []
    for item in (s.strip() for s in text.split(',')):
        if not item:
            continue
        parts = item.lower().split('x')
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f'size {item!r} is not WIDTHxHEIGHT (e.g. 640x512)')
        w, h = int(parts[0]), int(parts[1])
        sizes.append((h, w))
    if not sizes:
        raise ValueError(f'no sizes in {text!r}; give WIDTHxHEIGHT[,WIDTHxHEIGHT...]')
    return sizes


def format_size(hw: Sequence[int]) -> str:
    """(h, w) -> 'WxH' (the CLI's spelling)."""
    return f'{int(hw[1])}x{int(hw[0])}'


def shape_profiles(
    sizes: Sequence[tuple[int, int]],
    dynamic: bool,
    multiple: int = 1,
    dynamic_min: int = 64,
    dynamic_max_scale: float = 2.0,
) -> list[ShapeProfile]:
    """Optimisation profiles for the configured net sizes.

    Without `dynamic`: one fixed-shape profile per size (the fastest kernels for each; the runtime picks
    the profile that matches). With `dynamic`: a single profile from `dynamic_min` up to
    `dynamic_max_scale` times the largest size, tuned for the first size. Sizes are rounded to
    `multiple` (the network's stride) so TensorRT never sees a shape the network cannot take.
    """
    if not sizes:
        raise ValueError('at least one size is needed to build optimisation profiles')

    def rnd(v: float, up: bool = False) -> int:
        q = v / multiple
        n = int(q) if not up or q == int(q) else int(q) + 1
        return max(multiple, n * multiple)

    norm = [(rnd(h), rnd(w)) for h, w in sizes]
    if not dynamic:
        unique = list(dict.fromkeys(norm))
        return [ShapeProfile(hw, hw, hw) for hw in unique]
    lo = rnd(dynamic_min, up=True)
    max_h = rnd(max(h for h, _ in norm) * dynamic_max_scale, up=True)
    max_w = rnd(max(w for _, w in norm) * dynamic_max_scale, up=True)
    min_hw = (min(lo, *(h for h, _ in norm)), min(lo, *(w for _, w in norm)))
    return [ShapeProfile(min_hw, norm[0], (max_h, max_w))]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKeyInputs:
    """Everything a serialised engine depends on. Any change -> a different key -> a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # 'major.minor'
    precision: str  # 'fp32' | 'fp16'
    profiles: tuple[ShapeProfile, ...]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d['profiles'] = [p.as_list() for p in self.profiles]
        d['schema'] = KEY_SCHEMA
        return d


def engine_key(inputs: EngineKeyInputs) -> str:
    """sha256 over a canonical JSON of the inputs (stable across runs and machines)."""
    if inputs.precision not in PRECISIONS:
        raise ValueError(f'precision {inputs.precision!r} is not one of {PRECISIONS}')
    blob = json.dumps(inputs.as_dict(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(blob.encode()).hexdigest()


def engine_path(onnx_path: str | os.PathLike[str], key: str, precision: str) -> Path:
    """Engine file next to the ONNX: `<stem>.<precision>.<key16>.engine`."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f'{onnx_path.stem}.{precision}.{key[:SHORT_KEY_LEN]}.engine')


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + '.json')


def write_sidecar(
    engine: str | os.PathLike[str], key: str, inputs: EngineKeyInputs, extra: dict | None = None
) -> Path:
    """Atomically write the sidecar describing how (and for what) the engine was built."""
    path = sidecar_path(engine)
    record = {'key': key, 'inputs': inputs.as_dict(), 'engine': Path(engine).name, **(extra or {})}
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + '\n').encode())
    return path


def read_sidecar(engine: str | os.PathLike[str]) -> dict | None:
    path = sidecar_path(engine)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_engine(onnx_path: str | os.PathLike[str], key: str, precision: str) -> Path | None:
    """The engine for `key` if it exists AND its sidecar carries the same full key; None means rebuild.

    The short key in the file name only finds the candidate; the sidecar's full key decides. A missing
    or unreadable sidecar, or one with another key (a hash-prefix clash, a hand-copied file), is stale.
    """
    path = engine_path(onnx_path, key, precision)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    side = read_sidecar(path)
    if side is None or side.get('key') != key:
        return None
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write via a temp file + rename, so a crash mid-build never leaves a truncated engine behind."""
    from nmr import atomic

    atomic.write_bytes(path, data)
