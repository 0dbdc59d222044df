"""Read rosbag2 bags (mcap or sqlite3, one or more) with ``rosbags``: topics, images, synchronised pairs.

Bags can be tens of GB, so nothing here holds all images: ``iter_images`` and ``synchronized_pairs``
stream, and ``BagPairDataset`` keeps only an index (per used message: topic, record time, header stamp)
and reads two messages per ``__getitem__``. Header stamps for the index come from the first bytes of
the CDR payload (``std_msgs/Header`` is the first field of ``sensor_msgs/Image``), so building the index
reads each message once but decodes no image.

Pairs are matched on ``header.stamp`` with ``nmr.data.sync.ApproxTimeSynchronizer`` (never on record
time). Several bags are merged in record-time order, as ``ros2 bag play`` would play them together; when
a stream's stamps jump back by more than a second (bags from different sessions), the synchroniser is
reset. The train/validation split is by blocks of ``block_s`` seconds of stamp time (neighbouring frames
are near-duplicates, so a random split would leak): a fraction ``val_fraction`` of the blocks, spread
evenly over the recording, is validation.

Image topics may hold ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` (image_transport's
`compressed` / `compressedDepth`, what recorded bags very often hold): ``decode_image`` decodes both
(nmr.data.compressed), and the header stamp of both is the first CDR field.

Synthetic-rig bags (``nmr.synth``) carry ground truth: ``/nmr_gt/<pair>/flow`` (32FC2) and
``/nmr_gt/<pair>/valid`` (mono8, 255 = valid), stamped with the fixed frame's stamp; the dataset
attaches them to the pair whose fixed frame has that stamp.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from nmr.data.bag_recover import check_regular, describe_damage, storage_files
from nmr.data.bag_writer import default_typestore
from nmr.data.compressed import COMPRESSED_MSGTYPE, decode_compressed, is_compressed
from nmr.data.encodings import image_to_numpy, stamp_ns, to_rgb
from nmr.data.sync import ApproxTimeSynchronizer, TimeLines
from nmr.data.types import FramePair
from nmr.domain import DEFAULT_MAX_PIXELS, PAIR_FIXED_KIND, STREAM_ENCODINGS
from nmr.errors import BagError, NmrUserError

IMAGE_TYPE = 'sensor_msgs/msg/Image'
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_MSGTYPE)
#: A stamp this far behind the newest one on a stream means a new session: the synchroniser restarts
#: (nmr.data.sync.TimeLines); less is a late message, which the synchroniser drops.
TIME_JUMP_NS = 1_000_000_000

Paths = str | Path | Sequence[str | Path]


def _as_paths(paths: Paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        items = [Path(paths)]
    else:
        items = [Path(p) for p in paths]
    if not items:
        raise BagError('no bag given: pass one or more rosbag2 bag directories (mcap or sqlite3)')
    out = []
    for p in items:
        if not p.exists():
            raise BagError(f'bag {p} does not exist: pass a rosbag2 bag directory (with metadata.yaml)')
        check_regular(p)
        # a storage file inside a bag directory: read the directory (metadata knows all split files)
        if p.is_file() and p.suffix in ('.mcap', '.db3') and (p.parent / 'metadata.yaml').is_file():
            p = p.parent
        if p.is_dir() and not (p / 'metadata.yaml').exists():
            # metadata.yaml is written when recording stops: a killed recorder leaves none. The storage
            # files describe themselves (rosbags reads them alone), so read those instead of refusing.
            files = storage_files(p)
            if files:
                out.extend(files)
                continue
        out.append(p)
    return out


class BagReader(AnyReader):
    """An ``AnyReader`` that may be opened before ``with`` (``open_bag`` opens it to report errors early)."""

    def __enter__(self) -> BagReader:
        if not self.stack:
            self.open()
        return self


def open_bag(paths: Paths) -> BagReader:
    """An opened ``AnyReader`` over one or more bags; BagError for missing, non-bag or corrupt paths.

    Close it (or use it as a context manager: ``with open_bag(p) as reader``).
    """
    bag_paths = _as_paths(paths)
    names = ', '.join(map(str, bag_paths))
    try:
        reader = BagReader(bag_paths, default_typestore=default_typestore())
        reader.open()
    except FileNotFoundError as exc:
        raise BagError(f'{names} is not a rosbag2 bag ({exc}): pass the bag directory') from None
    except Exception as exc:  # rosbags raises AnyReaderError, ReaderError, yaml and sqlite errors
        why = ' '.join(str(exc).split())[:300]  # a YAML error in metadata.yaml spans several lines
        raise BagError(describe_damage(bag_paths) or f'cannot read bag {names}: {why} (not a rosbag2 bag, '
                       'or corrupt): pass a bag folder, .mcap or .db3 file') from None
    return reader


def list_topics(paths: Paths) -> dict[str, str]:
    """topic -> message type, over all given bags."""
    with open_bag(paths) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def check_topics(reader: AnyReader, topics: Sequence[str], paths: Paths,
                 msgtypes: Sequence[str] | None) -> None:
    """Raise one BagError line naming the missing topic (or its wrong type) and the topics the bag has:
    every reader of image topics (training, calibration) checks before reading, not mid-run."""
    available = {c.topic: c.msgtype for c in reader.connections}
    for topic in topics:
        if topic not in available:
            have = ', '.join(f'{t} ({m})' for t, m in sorted(available.items())) or 'no topics'
            raise BagError(
                f'topic {topic} is not in bag {_names(paths)}; it has: {have}. Set the topic to one of these'
            )
        expected = _expected_types(topic, msgtypes)
        if expected is not None and available[topic] not in expected:
            wanted = ' or '.join(expected)
            same = ', '.join(sorted(t for t, m in available.items() if m in expected)) or 'none'
            raise BagError(f'topic {topic} in {_names(paths)} is {available[topic]}, not {wanted}; set the '
                           f'topic to an Image topic (this bag has: {same})')


def _expected_types(topic: str, msgtypes: Sequence[str] | None) -> Sequence[str] | None:
    """Image topics: image_transport's naming says which type (`.../compressed[Depth]` is a CompressedImage)."""
    if msgtypes is None or tuple(msgtypes) != IMAGE_TYPES:
        return msgtypes
    compressed = topic.rsplit('/', 1)[-1] in ('compressed', 'compressedDepth')
    return (COMPRESSED_MSGTYPE,) if compressed else (IMAGE_TYPE,)


def decode_image(msg: Any, topic: str = '', max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """(array, encoding) of an Image (raw, the message's channel order) or a CompressedImage (decoded);
    ImageDecodeError for one larger than `max_pixels` (a compressed one is not even decoded)."""
    if is_compressed(msg):
        return decode_compressed(msg, topic, max_pixels)
    return image_to_numpy(msg, topic, max_pixels), str(msg.encoding)


def _names(paths: Paths) -> str:
    return ', '.join(map(str, _as_paths(paths)))


def _wrap_read_errors(paths: Paths, exc: Exception) -> BagError:
    why = ' '.join(str(exc).split())[:300]
    return BagError(f'error while reading bag {_names(paths)}: {why} (damaged storage?): copy its readable '
                    'messages into a new bag with `nmr recover-bag`')


def raw_header_stamp(raw: bytes | memoryview) -> int:
    """``header.stamp`` in ns from a ROS 2 CDR payload whose first field is a ``std_msgs/Header``."""
    if len(raw) < 12:
        raise ValueError('CDR payload too short for a header')
    endian = '<' if raw[1] & 1 else '>'  # encapsulation id: 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec = struct.unpack_from(endian + 'iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


def iter_images(paths: Paths, topics: Sequence[str], skipped: Counter[str] | None = None,
                max_pixels: Mapping[str, int] | None = None) -> Iterator[tuple[str, int, np.ndarray, str, Any]]:
    """Yield ``(topic, record_ns, array, encoding, header)`` for every Image or CompressedImage on ``topics``,
    in record order.

    ``array`` is raw (``image_to_numpy``: the message's channel order), or decoded from its compression. A
    message that cannot be decoded (corrupt CDR, malformed Image, bad compressed payload) raises BagError /
    ImageDecodeError, or, when ``skipped`` is given, is counted there per topic and skipped, so that one bad
    message does not end a long offline run. Damage in the storage itself (a bad chunk) still ends the
    iteration with BagError. `max_pixels` (per topic) refuses larger images like a malformed one.
    """
    with open_bag(paths) as reader:
        check_topics(reader, topics, paths, IMAGE_TYPES)
        conns = [c for c in reader.connections if c.topic in set(topics)]
        messages = reader.messages(connections=conns)
        read: Counter[str] = Counter()
        while True:
            try:
                conn, record_ns, raw = next(messages)
            except StopIteration:
                missing = missing_messages(reader, read, topics)
                if missing:
                    raise BagError(missing_text(paths, missing)) from None
                return
            except Exception as exc:
                raise _wrap_read_errors(paths, exc) from None
            read[conn.topic] += 1
            try:
                msg: Any = reader.deserialize(raw, conn.msgtype)
                limit = (max_pixels or {}).get(conn.topic, DEFAULT_MAX_PIXELS)
                arr, encoding = decode_image(msg, conn.topic, limit)
            except Exception as exc:
                if skipped is None:
                    if isinstance(exc, NmrUserError):
                        raise
                    raise _wrap_read_errors(paths, exc) from None
                skipped[conn.topic] += 1
                continue
            yield conn.topic, record_ns, arr, encoding, msg.header


def announced_counts(reader: AnyReader) -> dict[str, int]:
    """Messages per topic that the storage files announce: an mcap file's summary (its own index, written
    with the data), else what metadata.yaml says (sqlite3, or no summary).

    The summary wins over metadata.yaml: metadata.yaml is a separate text file that can be edited or stale,
    and a count it inflates would be reported as lost messages that never existed.
    """
    counts: Counter[str] = Counter()
    for bag in getattr(reader, 'readers', []):
        storage = getattr(bag, 'storage', None)
        files = getattr(storage, 'storages', None) or [storage]
        if all(getattr(f, 'statistics', None) is not None for f in files):
            for f in files:
                for c in f.connections:
                    counts[c.topic] += int(c.msgcount)
        else:
            for c in bag.connections:
                counts[c.topic] += int(c.msgcount)
    return dict(counts)


def missing_messages(reader: AnyReader, read: Mapping[str, int], topics: Sequence[str]) -> dict[str, tuple[int, int]]:
    """topic -> (announced, read) for every topic of `topics` where fewer messages were read than announced.

    Damage inside an mcap chunk whose CRC is 0 (files written without CRCs) can make a reader skip records
    silently; the counts are the only trace of it.
    """
    announced = announced_counts(reader)
    return {t: (announced[t], read.get(t, 0)) for t in topics
            if t in announced and read.get(t, 0) < announced[t]}


def missing_text(paths: Paths, missing: Mapping[str, tuple[int, int]]) -> str:
    """One line: how many messages the bag announces but could not be read, and what to do."""
    lost = sum(a - r for a, r in missing.values())
    per_topic = ', '.join(f'{t}: {a - r} of {a}' for t, (a, r) in sorted(missing.items()))
    return (f'bag {_names(paths)}: {lost} messages announced by its index could not be read ({per_topic}; '
            'damaged storage?): check it with `nmr recover-bag`')


def count_messages(paths: Paths, topics: Sequence[str]) -> int:
    """Number of messages on ``topics`` (from the bags' metadata; no message is read)."""
    with open_bag(paths) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic in set(topics))


@dataclass
class SyncedPair:
    """A synchronised moving/fixed pair decoded from a bag (moving as RGB, fixed raw)."""

    moving: np.ndarray
    fixed: np.ndarray
    fixed_encoding: str
    moving_stamp_ns: int
    fixed_stamp_ns: int
    moving_header: Any
    fixed_header: Any


def synchronized_pairs(
    paths: Paths, moving_topic: str, fixed_topic: str, slop_ns: int, queue_size: int = 10
) -> Iterator[SyncedPair]:
    """Stream synchronised (moving, fixed) pairs, decoding every image (BagPairDataset: random access)."""
    sync: ApproxTimeSynchronizer[tuple[np.ndarray, str, Any, int]] = ApproxTimeSynchronizer(2, slop_ns, queue_size)
    time_lines = TimeLines(slop_ns, TIME_JUMP_NS)
    for topic, _rec, arr, encoding, header in iter_images(paths, [moving_topic, fixed_topic]):
        stream = 0 if topic == moving_topic else 1
        stamp = stamp_ns(header)
        jump = time_lines.observe(stream, stamp)
        if jump is not None:
            sync.restart(stream, jump[1])
        for m, f in sync.add(stream, stamp, (arr, encoding, header, stamp)):
            yield SyncedPair(to_rgb(m[0], m[1]), f[0], f[1], m[3], f[3], m[2], f[2])


@dataclass(frozen=True)
class _Ref:
    """Where one message is: topic, record time, and which of the messages at that record time."""

    topic: str
    record_ns: int
    ordinal: int
    stamp_ns: int


def _resolve_topics(pair: str, topics: Mapping[str, str]) -> tuple[str, str]:
    if pair not in PAIR_FIXED_KIND:
        raise BagError(f'unknown pair {pair!r}: use one of {", ".join(PAIR_FIXED_KIND)}')
    kind = PAIR_FIXED_KIND[pair]
    moving = topics.get('moving') or topics.get('rgb')
    fixed = topics.get('fixed') or topics.get(kind)
    if not moving or not fixed:
        raise BagError(
            f'topics for {pair} need "rgb" (or "moving") and "{kind}" (or "fixed"), got {dict(topics)}'
        )
    return moving, fixed


def val_blocks(n_blocks: int, val_fraction: float) -> set[int]:
    """Which of ``n_blocks`` time blocks are validation: ``val_fraction`` of them, spread evenly."""
    if not 0.0 <= val_fraction <= 1.0:
        raise BagError(f'val_fraction must be in [0, 1], got {val_fraction}')
    return {
        b
        for b in range(n_blocks)
        if math.floor((b + 1) * val_fraction + 0.5) > math.floor(b * val_fraction + 0.5)
    }


class BagPairDataset:
    """Synchronised moving/fixed pairs of one pair from rosbag2 bags, lazy and torch-free.

    ``topics`` maps ``rgb``/``lwir``/``depth`` (or ``moving``/``fixed``) to topic names. ``split`` is
    ``train``, ``val`` or ``all`` (see the module docstring for the block split). Items are
    ``FramePair``s (moving RGB uint8, fixed raw), with synthetic ground truth when the bag has it.
    """

    def __init__(
        self,
        paths: Paths,
        pair: str,
        topics: Mapping[str, str],
        split: str = 'train',
        val_fraction: float = 0.2,
        block_s: float = 10.0,
        slop_s: float = 0.02,
        queue_size: int = 10,
    ) -> None:
        if split not in ('train', 'val', 'all'):
            raise BagError(f'split must be train, val or all, not {split!r}')
        if block_s <= 0:
            raise BagError(f'block_s must be > 0, got {block_s}')
        self.paths = _as_paths(paths)
        self.pair = pair
        self.fixed_kind = PAIR_FIXED_KIND.get(pair, '')
        self.moving_topic, self.fixed_topic = _resolve_topics(pair, topics)
        self.gt_flow_topic = f'/nmr_gt/{pair}/flow'
        self.gt_valid_topic = f'/nmr_gt/{pair}/valid'
        self.split = split
        self._reader: AnyReader | None = None
        self._pid = -1
        self.skipped: Counter[str] = Counter()   # unreadable messages left out of the index, per topic
        self.missing: dict[str, tuple[int, int]] = {}   # topic -> (announced, read) where some were not found
        all_pairs, self._gt = self._build_index(round(slop_s * 1e9), queue_size)
        if self.missing and split != 'val':
            print(f'nmr: warning: {missing_text(self.paths, self.missing)}; training on what was read',
                  file=sys.stderr)
        if self.skipped and split != 'val':  # once per bag (the val split re-indexes the same bag)
            print(f'nmr: bag {_names(self.paths)}: {sum(self.skipped.values())} unreadable messages left out '
                  '(' + ', '.join(f'{t}: {n}' for t, n in sorted(self.skipped.items())) + ')', file=sys.stderr)
        t0 = all_pairs[0][1].stamp_ns if all_pairs else 0
        block_ns = round(block_s * 1e9)
        blocks = [(f.stamp_ns - t0) // block_ns for _, f in all_pairs]
        self.n_blocks = (max(blocks) + 1) if blocks else 0
        self.val_blocks = val_blocks(self.n_blocks, val_fraction)
        self.pairs: list[tuple[_Ref, _Ref]] = [
            p
            for p, b in zip(all_pairs, blocks)
            if split == 'all' or (b in self.val_blocks) == (split == 'val')
        ]
        self.total_pairs = len(all_pairs)

    # -- index ---------------------------------------------------------------------------------------
    def _build_index(
        self, slop_ns: int, queue_size: int
    ) -> tuple[list[tuple[_Ref, _Ref]], dict[int, dict[str, _Ref]]]:
        reader = self._open()
        check_topics(reader, [self.moving_topic, self.fixed_topic], self.paths, IMAGE_TYPES)
        gt_topics = {c.topic for c in reader.connections} & {self.gt_flow_topic, self.gt_valid_topic}
        wanted = {self.moving_topic, self.fixed_topic} | gt_topics
        conns = [c for c in reader.connections if c.topic in wanted]
        sync: ApproxTimeSynchronizer[_Ref] = ApproxTimeSynchronizer(2, slop_ns, queue_size)
        pairs: list[tuple[_Ref, _Ref]] = []
        gt: dict[int, dict[str, _Ref]] = {}
        time_lines = TimeLines(slop_ns, TIME_JUMP_NS)
        seen: dict[tuple[str, int], int] = {}
        read: Counter[str] = Counter()
        try:
            for conn, record_ns, raw in reader.messages(connections=conns):
                read[conn.topic] += 1
                key = (conn.topic, record_ns)
                ordinal = seen.get(key, 0)
                seen[key] = ordinal + 1
                stamp = self._valid_stamp(reader, conn, raw)
                if stamp is None:
                    continue
                ref = _Ref(conn.topic, record_ns, ordinal, stamp)
                if conn.topic in gt_topics:
                    gt.setdefault(stamp, {})[conn.topic] = ref
                    continue
                stream = 0 if conn.topic == self.moving_topic else 1
                jump = time_lines.observe(stream, stamp)
                if jump is not None:
                    sync.restart(stream, jump[1])
                for m, f in sync.add(stream, stamp, ref):
                    pairs.append((m, f))
        except NmrUserError:
            raise
        except Exception as exc:
            raise _wrap_read_errors(self.paths, exc) from None
        self.missing = missing_messages(reader, read, sorted(wanted))
        self.dropped = list(sync.dropped)
        return pairs, gt

    def _valid_stamp(self, reader: AnyReader, conn: Any, raw: Any) -> int | None:
        """The message's header stamp, or None (counted in `skipped`) when it is not a decodable Image (or an
        empty CompressedImage).

        Checked while indexing (deserialising an Image makes a view of its bytes, no pixel copy) so that
        one corrupt message in a long recording is left out, and reported, instead of stopping a training
        run when a DataLoader worker reaches it hours later.
        """
        try:
            msg: Any = reader.deserialize(raw, conn.msgtype)
            if is_compressed(msg):  # decoding it here would cost a full JPEG/PNG decode per message
                if len(msg.data) == 0:
                    raise ValueError('empty compressed payload')
            else:
                image_to_numpy(msg, conn.topic)
                kind = {self.moving_topic: 'rgb', self.fixed_topic: self.fixed_kind}.get(conn.topic)
                if kind is not None and str(msg.encoding) not in STREAM_ENCODINGS[kind]:
                    raise ValueError(f'encoding {msg.encoding} cannot be used as {kind}')  # e.g. rgb8 as LWIR
            return stamp_ns(msg.header)
        except Exception:
            self.skipped[conn.topic] += 1
            return None

    # -- reading -------------------------------------------------------------------------------------
    def _open(self) -> AnyReader:
        """The reader of this process (reopened after a fork: DataLoader workers get their own)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_bag(self.paths)
            self._pid = os.getpid()
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state['_reader'] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the reader may be half gone
            self.close()

    def _read(self, ref: _Ref) -> Any:
        reader = self._open()
        conns = [c for c in reader.connections if c.topic == ref.topic]
        try:
            found = reader.messages(connections=conns, start=ref.record_ns, stop=ref.record_ns + 1)
            for i, (conn, _t, raw) in enumerate(found):
                if i == ref.ordinal:
                    return reader.deserialize(raw, conn.msgtype)
        except Exception as exc:
            raise _wrap_read_errors(self.paths, exc) from None
        raise BagError(
            f'message on {ref.topic} at record time {ref.record_ns} vanished from {_names(self.paths)}'
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> FramePair:
        if not -len(self.pairs) <= i < len(self.pairs):
            raise IndexError(f'pair {i} out of range ({len(self.pairs)} pairs)')
        m_ref, f_ref = self.pairs[i]
        m_msg, f_msg = self._read(m_ref), self._read(f_ref)
        moving = to_rgb(*decode_image(m_msg, m_ref.topic))
        if not moving.flags.writeable:
            moving = moving.copy()
        fixed_raw, fixed_encoding = decode_image(f_msg, f_ref.topic)
        fixed = np.array(fixed_raw)  # own, writable copy
        item = FramePair(
            name=f'{self.pair}_{f_ref.stamp_ns}',
            moving=moving,
            fixed=fixed,
            fixed_kind=self.fixed_kind,
            fixed_encoding=fixed_encoding,
            stamp_ns=f_ref.stamp_ns,
        )
        gt = self._gt.get(f_ref.stamp_ns, {})
        if self.gt_flow_topic in gt:
            flow = np.array(image_to_numpy(self._read(gt[self.gt_flow_topic]), self.gt_flow_topic))
            if flow.ndim != 3 or flow.shape[2] != 2:
                raise BagError(f'{self.gt_flow_topic} must be 32FC2, got shape {flow.shape}')
            item.gt_flow = flow
        if self.gt_valid_topic in gt:
            item.valid = (
                np.asarray(image_to_numpy(self._read(gt[self.gt_valid_topic]), self.gt_valid_topic)) > 0
            )
        return item

    @property
    def has_ground_truth(self) -> bool:
        return bool(self._gt)

    def summary(self) -> dict[str, Any]:
        """Plain description for checkpoint metadata and logs."""
        return {
            'bags': [str(p) for p in self.paths],
            'pair': self.pair,
            'moving_topic': self.moving_topic,
            'fixed_topic': self.fixed_topic,
            'split': self.split,
            'pairs': len(self.pairs),
            'total_pairs': self.total_pairs,
            'blocks': self.n_blocks,
            'val_blocks': sorted(self.val_blocks),
            'ground_truth': self.has_ground_truth,
            'unreadable_messages': dict(self.skipped),
        }
