"""Image-pair datasets from files: a manifest CSV, or two folders matched by file stem. Lazy, torch-free.

Manifest columns (SPEC): ``name,moving,fixed,flow,valid,landmarks``; only ``moving`` and ``fixed`` are
required, paths are relative to the CSV (absolute ones are allowed). ``flow`` is a ``.npy`` ``HxWx2``
float32 ground truth on the fixed grid; ``valid`` a uint8 PNG mask (non-zero = valid); ``landmarks`` a
JSON list of ``[x, y]`` fixed-grid points (or ``{"points": [...]}``). An optional ``fixed_kind`` column
(``lwir``/``depth``) states the fixed images' kind (``nmr synth --export-pairs`` writes it). An optional
``depth`` column names the depth camera's frame of the same instant, for registration through a rig
(``nmr evaluate --rig``): a 16-bit PNG in millimetres (0 = none) or a ``.npy`` float in metres (0, NaN =
none), at the depth camera's size (for an ``rgb_depth`` row it is the fixed image itself).

The fixed kind decides the pre-processing. A model (``nmr evaluate``) or ``--pair`` (``nmr train``) asks
for one kind; the data is refused, with one line, only where it is certainly of the other kind, because
16-bit files are ambiguous (raw thermal counts and depth in millimetres overlap in range and look alike):
- a ``fixed_kind`` column that names the other kind;
- the pixel type: 8-bit is LWIR (depth is never 8-bit), float is depth (LWIR is never float).
Both are checked on the first row when the dataset is built (so a wrong manifest fails before any
training or evaluation starts) and on every row as it is read. A 16-bit image without a ``fixed_kind``
column is read as the asked-for kind. Without an asked-for kind (baselines) the kind is guessed per file:
the column, else 8-bit LWIR, float depth, 16-bit depth when the path mentions "depth", LWIR otherwise.
Images are read with OpenCV (``IMREAD_UNCHANGED`` for the fixed image; the moving image is converted to
RGB), ``.npy`` with numpy.

Both datasets can be split by scene (``split='train'|'val'``): a stable hash of the row name (or file
stem) puts a fraction ``val_fraction`` of the scenes into validation, never splitting one scene. The
held-out scenes are split once more, by a second hash, into ``select`` (about a third: for choosing between
models and recipes) and ``report`` (the rest: for the numbers reported), so that no choice is made on the
scenes a result is reported on.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nmr import atomic
from nmr.data.types import FramePair
from nmr.domain import FIXED_KIND_PAIR, FIXED_KINDS
from nmr.errors import ConfigError

MANIFEST_COLUMNS = ('name', 'moving', 'fixed', 'flow', 'valid', 'landmarks')
REQUIRED_COLUMNS = ('moving', 'fixed')
IMAGE_SUFFIXES = frozenset({'.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.pgm', '.ppm', '.npy'})


SPLITS = ('train', 'val', 'select', 'report', 'all')
SELECT_EVERY = 3  # one held-out scene in this many is a selection scene


def in_split(key: str, split: str, val_fraction: float) -> bool:
    """Whether the scene ``key`` belongs to ``split`` (one of SPLITS), by stable hashes of the key.

    ``select`` and ``report`` partition ``val``; the second hash is independent of the first, so the
    partition does not depend on ``val_fraction``.
    """
    if split == 'all':
        return True
    if split not in SPLITS:
        raise ConfigError(f'split must be one of {", ".join(SPLITS)}, not {split!r}')
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError(f'val_fraction must be in [0, 1], got {val_fraction}')
    is_val = (zlib.crc32(key.encode()) % 10_000) < val_fraction * 10_000
    if split in ('train', 'val'):
        return is_val == (split == 'val')
    is_select = zlib.crc32(f'{key}/select'.encode()) % SELECT_EVERY == 0
    return is_val and is_select == (split == 'select')


def read_image(path: Path, what: str = 'image') -> np.ndarray:
    """A file as stored (OpenCV ``IMREAD_UNCHANGED``; ``.npy`` via numpy); ConfigError if unreadable."""
    if not path.is_file():
        raise ConfigError(f'{what} file {path} does not exist')
    if path.suffix.lower() == '.npy':
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ConfigError(f'{what} file {path} is not a readable .npy array: {exc}') from None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f'{what} file {path} cannot be read as an image (corrupt or unsupported format)')
    return img


def read_moving(path: Path) -> np.ndarray:
    """The moving image as ``HxWx3`` RGB uint8 (grey is replicated, alpha dropped, 16-bit scaled)."""
    img = read_image(path, 'moving image')
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ConfigError(f'moving image {path} is {img.dtype}: expected an 8-bit colour image')
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(img.shape[2])
    if code is None:
        raise ConfigError(f'moving image {path} has {img.shape[2]} channels: expected 1, 3 or 4')
    return cv2.cvtColor(img, code)


def certain_kind(img: np.ndarray) -> str | None:
    """The fixed kind the pixel type proves (SPEC encodings), or None where it cannot tell (16-bit)."""
    if img.dtype == np.uint8:
        return 'lwir'
    if img.dtype.kind == 'f':
        return 'depth'
    return None


def guess_fixed_kind(path: Path, img: np.ndarray) -> str:
    """lwir or depth from the pixel type (and, for 16-bit, whether the path mentions depth)."""
    return certain_kind(img) or ('depth' if 'depth' in str(path).lower() else 'lwir')


def _other_kind_hint(kind: str) -> str:
    pair = FIXED_KIND_PAIR[kind]
    return f'use a {pair} model (nmr evaluate) or --pair {pair} (nmr train) for it'


def read_fixed(path: Path, fixed_kind: str | None = None) -> tuple[np.ndarray, str, str]:
    """The fixed image raw ``HxW`` -> (array, kind, ROS encoding)."""
    img = read_image(path, 'fixed image')
    if img.ndim == 3 and img.shape[2] in (3, 4) and img.dtype == np.uint8:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2:
        raise ConfigError(f'fixed image {path} has shape {img.shape}: expected a single-channel image')
    kind = fixed_kind or guess_fixed_kind(path, img)
    if kind not in FIXED_KINDS:
        raise ConfigError(f'unknown fixed kind {kind!r} for {path}: use lwir or depth')
    proven = certain_kind(img)
    if proven is not None and proven != kind:
        what = '8-bit, so LWIR (depth is 16-bit mm or float metres)' if proven == 'lwir' else \
            'float, so depth (LWIR is 8- or 16-bit)'
        raise ConfigError(f'fixed image {path} is {what}, not {kind}: {_other_kind_hint(proven)}')
    if img.dtype == np.uint8:
        encoding = 'mono8'
    elif img.dtype == np.uint16:
        encoding = 'mono16' if kind == 'lwir' else '16UC1'
    elif img.dtype.kind == 'f':
        img = img.astype(np.float32, copy=False)
        encoding = '32FC1'
    else:
        raise ConfigError(f'fixed image {path} is {img.dtype}: expected uint8, uint16 or float')
    return img, kind, encoding


def read_landmarks(path: Path) -> np.ndarray:
    """``Nx2`` float (x, y) fixed-grid points from a JSON list (or a dict with ``points``/``landmarks``)."""
    if not path.is_file():
        raise ConfigError(f'landmarks file {path} does not exist')
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get('points', data.get('landmarks', data.get('fixed')))
        pts = np.asarray(data, dtype=np.float64)
        if pts.size == 0:
            return np.zeros((0, 2))
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f'shape {pts.shape}')
    except Exception as exc:
        raise ConfigError(f'landmarks file {path} must hold a JSON list of [x, y] points ({exc})') from None
    return pts


def read_depth(path: Path) -> np.ndarray:
    """A manifest's depth frame as float32 metres, 0 = none: 16-bit PNG in millimetres or .npy in metres."""
    img = read_image(path, 'depth frame')
    if img.ndim != 2:
        raise ConfigError(f'depth frame {path} has shape {img.shape}: expected one channel (HxW)')
    if img.dtype == np.uint16:
        return img.astype(np.float32) * np.float32(1e-3)
    if img.dtype.kind == 'f' and path.suffix.lower() == '.npy':
        out = img.astype(np.float32)
        out[~(np.isfinite(out) & (out > 0))] = 0.0
        return out
    raise ConfigError(f'depth frame {path} is {img.dtype} {path.suffix}: give a 16-bit PNG in millimetres or a '
                      '.npy of float metres')


def _attach_ground_truth(
    item: FramePair, flow: Path | None, valid: Path | None, landmarks: Path | None
) -> None:
    hw = item.fixed.shape[:2]
    if flow is not None:
        f = read_image(flow, 'flow')
        if f.ndim != 3 or f.shape[2] != 2 or f.shape[:2] != hw:
            raise ConfigError(
                f'flow {flow} has shape {f.shape}: expected {hw[0]}x{hw[1]}x2 (the fixed image)'
            )
        item.gt_flow = f.astype(np.float32, copy=False)
    if valid is not None:
        v = read_image(valid, 'valid mask')
        if v.ndim == 3:
            v = v[:, :, 0]
        if v.shape != hw:
            raise ConfigError(f'valid mask {valid} has shape {v.shape}: expected {hw} (the fixed image)')
        item.valid = v > 0
    if landmarks is not None:
        item.landmarks = read_landmarks(landmarks)


@dataclass(frozen=True)
class _Row:
    name: str
    moving: Path
    fixed: Path
    flow: Path | None
    valid: Path | None
    landmarks: Path | None
    fixed_kind: str | None
    depth: Path | None = None
    family: str = ''


class ManifestDataset:
    """Rows of a manifest CSV; items are read from disk on ``__getitem__`` (``FramePair``)."""

    def __init__(
        self,
        csv_path: str | Path,
        fixed_kind: str | None = None,
        split: str = 'all',
        val_fraction: float = 0.2,
    ) -> None:
        self.csv_path = Path(csv_path)
        if fixed_kind is not None and fixed_kind not in FIXED_KINDS:
            raise ConfigError(f'unknown fixed kind {fixed_kind!r}: use lwir or depth')
        self.fixed_kind = fixed_kind
        rows = self._parse()
        if rows and fixed_kind is not None:  # a manifest of the other kind fails here, not mid-run
            read_fixed(rows[0].fixed, rows[0].fixed_kind)
        self.rows = [r for r in rows if in_split(r.name, split, val_fraction)]

    def _parse(self) -> list[_Row]:
        path = self.csv_path
        if not path.is_file():
            raise ConfigError(
                f'manifest {path} does not exist: pass a CSV with columns {",".join(MANIFEST_COLUMNS)}'
            )
        base = path.parent
        with path.open(newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ConfigError(
                    f'manifest {path} lacks column(s) {", ".join(missing)} '
                    f'(it has {", ".join(header) or "none"}); '
                    f'columns are {",".join(MANIFEST_COLUMNS)}, moving and fixed required'
                )
            rows = []
            names: set[str] = set()
            for line_no, raw in enumerate(reader, start=2):
                rec = {(k or '').strip(): (v or '').strip() for k, v in raw.items()}
                if not any(rec.values()):
                    continue

                def file(
                    column: str, required: bool = False, rec: dict[str, str] = rec, line: int = line_no
                ) -> Path | None:
                    value = rec.get(column, '')
                    if not value:
                        if required:
                            raise ConfigError(f'manifest {path} line {line}: column {column} is empty')
                        return None
                    p = Path(value)
                    p = p if p.is_absolute() else base / p
                    if not p.is_file():
                        raise ConfigError(f'manifest {path} line {line}: {column} file {p} does not exist')
                    return p

                moving, fixed = file('moving', True), file('fixed', True)
                assert moving is not None and fixed is not None
                name = rec.get('name') or moving.stem
                if name in names:
                    raise ConfigError(f'manifest {path} line {line_no}: name {name!r} is used twice')
                names.add(name)
                stated = rec.get('fixed_kind') or None
                if stated is not None and stated not in FIXED_KINDS:
                    raise ConfigError(
                        f'manifest {path} line {line_no}: fixed_kind {stated!r} is not lwir or depth'
                    )
                if stated is not None and self.fixed_kind is not None and stated != self.fixed_kind:
                    raise ConfigError(
                        f'manifest {path} line {line_no}: fixed_kind column says {stated}, not '
                        f'{self.fixed_kind}: {_other_kind_hint(stated)}'
                    )
                kind = stated or self.fixed_kind
                rows.append(_Row(name, moving, fixed, file('flow'), file('valid'), file('landmarks'), kind,
                                 file('depth'), rec.get('family', '')))
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def family(self, i: int) -> str:
        """Row i's misalignment family (the optional ``family`` column; '' when absent)."""
        return self.rows[i].family

    def __getitem__(self, i: int) -> FramePair:
        row = self.rows[i]
        fixed, kind, encoding = read_fixed(row.fixed, row.fixed_kind)
        item = FramePair(row.name, read_moving(row.moving), fixed, kind, encoding)
        _attach_ground_truth(item, row.flow, row.valid, row.landmarks)
        if row.depth is not None:
            item.depth = read_depth(row.depth)
        return item


def read_manifest(
    csv_path: str | Path, fixed_kind: str | None = None, split: str = 'all', val_fraction: float = 0.2
) -> ManifestDataset:
    """The manifest as a lazy dataset (``len``, indexing -> ``FramePair``); files are checked up front."""
    return ManifestDataset(csv_path, fixed_kind, split, val_fraction)


def write_manifest(csv_path: str | Path, rows: Sequence[dict[str, str | Path]]) -> None:
    """Write a manifest; paths are made relative to the CSV's folder where possible. Rows may carry
    ``fixed_kind`` (then the column is written, and readers can refuse a model of the other kind) and
    ``family`` (the misalignment family that made the row's ground truth: `nmr evaluate` summarises per family)."""
    path = Path(csv_path)
    base = path.parent.resolve()
    extra = [c for c in ('fixed_kind', 'family') if any(c in r for r in rows)]
    columns = [*MANIFEST_COLUMNS, *extra]
    with atomic.atomic_open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='raise')
        writer.writeheader()
        for row in rows:
            out = {}
            for key, value in row.items():
                if key not in ('name', 'fixed_kind', 'family') and value not in ('', None):
                    p = Path(value).resolve()
                    try:
                        value = p.relative_to(base)
                    except ValueError:
                        value = p
                out[key] = str(value)
            writer.writerow(out)


class FolderPairDataset:
    """Pairs from two folders matched by file stem (e.g. roadscene ``crop_LR_visible`` + ``cropinfrared``).

    ``moving_suffix``/``fixed_suffix`` are removed from the end of stems before matching (rgbdd:
    ``_RGB`` and ``_HR_gt``). Files without a partner are ignored and counted. ``scene_prefix`` > 0 makes
    the first that many characters of a stem name its scene for the train/val split.
    """

    def __init__(
        self,
        moving_dir: str | Path,
        fixed_dir: str | Path,
        fixed_kind: str,
        moving_suffix: str = '',
        fixed_suffix: str = '',
        split: str = 'all',
        val_fraction: float = 0.2,
        scene_prefix: int = 0,
    ) -> None:
        if fixed_kind not in FIXED_KINDS:
            raise ConfigError(f'unknown fixed kind {fixed_kind!r}: use lwir or depth')
        if scene_prefix < 0:
            raise ConfigError(f'scene_prefix must be >= 0 (0 = the whole stem names the scene), got {scene_prefix}')
        self.moving_dir, self.fixed_dir, self.fixed_kind = Path(moving_dir), Path(fixed_dir), fixed_kind
        moving = self._scan(self.moving_dir, moving_suffix, 'moving')
        fixed = self._scan(self.fixed_dir, fixed_suffix, 'fixed')
        keys = sorted(set(moving) & set(fixed))
        if not keys:
            raise ConfigError(
                f'no file stems in common between {self.moving_dir} ({len(moving)} images, e.g. '
                f'{sorted(moving)[:2]}) and {self.fixed_dir} ({len(fixed)} images, '
                f'e.g. {sorted(fixed)[:2]}): '
                'check the folders or set moving_suffix/fixed_suffix'
            )
        self.unmatched_moving = len(moving) - len(keys)
        self.unmatched_fixed = len(fixed) - len(keys)
        # the scene is the whole stem, or its first `scene_prefix` characters (time-stamped stems such as
        # rgbdd's 20200509112638: 11 characters = 10-minute blocks, so near-identical frames stay together)
        self.items = [(k, moving[k], fixed[k]) for k in keys
                      if in_split(k[:scene_prefix] if scene_prefix else k, split, val_fraction)]
        read_fixed(fixed[keys[0]], fixed_kind)  # a folder of the other kind fails here, not mid-run

    @staticmethod
    def _scan(folder: Path, suffix: str, what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise ConfigError(f'{what} folder {folder} does not exist')
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            stem = p.stem
            if suffix and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
            if stem in out:
                raise ConfigError(
                    f'{what} folder {folder} has two images for stem {stem!r}: {out[stem].name}, {p.name}'
                )
            out[stem] = p
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> FramePair:
        key, moving, fixed_path = self.items[i]
        fixed, kind, encoding = read_fixed(fixed_path, self.fixed_kind)
        return FramePair(key, read_moving(moving), fixed, kind, encoding)
