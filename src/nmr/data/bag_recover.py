"""Truncated or damaged rosbag2 storage files: what is wrong with them, and `nmr recover-bag` to salvage them.

A recording that loses power leaves an mcap file without its summary and footer, usually ending inside a
record, and often no metadata.yaml. Readers that rely on the summary (rosbags, and every tool built on
it) refuse the file. The mcap records themselves are self-delimiting, so a forward scan recovers every
complete message up to the cut; `recover_bag` copies those into a new, valid bag and says how many were
lost (exactly when a metadata.yaml with counts survived, otherwise "the rest of the file"). An sqlite3
file is recovered the same way (row by row, as far as sqlite can read).

Why a separate, explicit step instead of reading damaged files on the fly: bags are tens of GB and every
consumer (`register-bag`, `train`, `play`) needs random access or an index, which a damaged file does not
have; one scan into a valid bag gives all of them a normal input, and the user sees once what was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import stat
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import yaml

from nmr.data.bag_writer import BagWriter, default_typestore
from nmr.errors import BagError

MCAP_MAGIC = b'\x89MCAP0\r\n'
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_FOOTER, OP_DATA_END = 0x03, 0x04, 0x05, 0x06, 0x02, 0x0F


@dataclass
class RawMessage:
    topic: str
    msgtype: str
    msgdef: str | None   # ros2msg text from the file's schema, when it has one
    record_ns: int
    data: bytes


@dataclass
class ScanResult:
    """How a scan ended: `complete` when the file's end marker was reached, else why it stopped."""

    complete: bool = False
    stopped: str = ''
    damaged_chunks: int = 0
    counts: Counter[str] = field(default_factory=Counter)


def check_regular(path: Path) -> None:
    """BagError unless `path` is a folder or a regular file, and (a folder) its bag files are regular files.

    A FIFO or device where a `.mcap`, `.db3` or `metadata.yaml` should be makes every reader block forever
    (or read an endless stream); refusing it costs one stat.
    """
    entries = [path]
    if path.is_dir():
        entries += [e for e in path.iterdir() if e.suffix in ('.mcap', '.db3') or e.name == 'metadata.yaml']
    for entry in entries:
        try:
            mode = os.stat(entry).st_mode
        except OSError as err:
            raise BagError(f'cannot read {entry} ({err.strerror}): check the path and its permissions') from None
        if entry is path and stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            kind = 'a FIFO' if stat.S_ISFIFO(mode) else 'a folder' if stat.S_ISDIR(mode) else \
                'not a regular file'
            raise BagError(f'{entry} is {kind}, not a bag file: give a rosbag2 bag folder, .mcap or .db3 file')


def mcap_damage(path: Path) -> str | None:
    """Why rosbags cannot read this mcap file ('truncated ...'), or None when start and end look intact."""
    try:
        size = path.stat().st_size
        with path.open('rb') as f:
            head = f.read(8)
            f.seek(max(0, size - 8))
            tail = f.read(8)
    except OSError as err:
        return f'cannot be read ({err.strerror})'
    if head != MCAP_MAGIC:
        return 'is not an mcap file (no mcap magic at its start)'
    if size < 16 or tail != MCAP_MAGIC:
        return 'is truncated (no mcap end marker: the recording was cut, e.g. by a power loss)'
    return None


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from('<I', buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError('string beyond its record')
    return buf[pos + 4:end].decode('utf-8', 'replace'), end


class _McapScanner:
    """A forward scan of mcap records that stops, without raising, at the first incomplete or bad one."""

    def __init__(self, f: BinaryIO, result: ScanResult) -> None:
        self.f, self.result = f, result
        self.schemas: dict[int, tuple[str, str | None]] = {}   # id -> (msgtype, ros2msg text)
        self.channels: dict[int, tuple[str, str, str | None]] = {}   # id -> (topic, msgtype, msgdef)

    def records(self, buf: bytes | None = None) -> Iterator[tuple[int, bytes]]:
        """(opcode, body) of each complete record, from the file (buf None) or from a chunk's bytes."""
        pos = 0
        while True:
            if buf is None:
                head = self.f.read(9)
                if len(head) < 9:
                    self.result.stopped = 'the file ends between records' if head == b'' else \
                        'the file ends inside a record header'
                    return
                op, length = head[0], struct.unpack_from('<Q', head, 1)[0]
                body = self.f.read(length) if length < 1 << 40 else b''
                if len(body) != length:
                    self.result.stopped = f'the file ends inside a record (op 0x{op:02x}, {length} B)'
                    return
            else:
                if pos >= len(buf):
                    return
                if pos + 9 > len(buf):
                    raise ValueError('chunk ends inside a record header')
                op, length = buf[pos], struct.unpack_from('<Q', buf, pos + 1)[0]
                body = buf[pos + 9:pos + 9 + length]
                if len(body) != length:
                    raise ValueError('chunk ends inside a record')
                pos += 9 + length
            yield op, body

    def messages(self, buf: bytes | None = None) -> Iterator[RawMessage]:
        for op, body in self.records(buf):
            if op in (OP_FOOTER, OP_DATA_END) and buf is None:
                self.result.complete = True
                return
            if op == OP_SCHEMA:
                (sid,) = struct.unpack_from('<H', body, 0)
                name, pos = _string(body, 2)
                encoding, pos = _string(body, pos)
                (n,) = struct.unpack_from('<I', body, pos)
                text = body[pos + 4:pos + 4 + n].decode('utf-8', 'replace')
                self.schemas[sid] = (name, text if encoding == 'ros2msg' else None)
            elif op == OP_CHANNEL:
                cid, sid = struct.unpack_from('<HH', body, 0)
                topic, _pos = _string(body, 4)
                msgtype, msgdef = self.schemas.get(sid, ('', None))
                self.channels[cid] = (topic, msgtype, msgdef)
            elif op == OP_MESSAGE:
                cid, _seq, log_time = struct.unpack_from('<HIQ', body, 0)
                if cid in self.channels:
                    topic, msgtype, msgdef = self.channels[cid]
                    yield RawMessage(topic, msgtype, msgdef, log_time, body[22:])
            elif op == OP_CHUNK:
                chunk = self._chunk(body)
                if chunk is None:  # damaged: the records after it are still whole (its length was)
                    self.result.damaged_chunks += 1
                    continue
                try:
                    yield from self.messages(chunk)
                except (ValueError, struct.error) as err:  # CRC 0 and damaged: the messages up to here
                    self.result.damaged_chunks += 1
                    self.result.stopped = f'a damaged chunk ({err})'

    def _chunk(self, body: bytes) -> bytes | None:
        """A chunk's records, decompressed and checked; None (scan ends) when it is damaged."""
        from rosbags.rosbag2.storage_mcap import decompress

        try:
            _start, _end, size, crc = struct.unpack_from('<QQQI', body, 0)
            compression, pos = _string(body, 28)
            (n,) = struct.unpack_from('<Q', body, pos)
            return decompress(body[pos + 8:pos + 8 + n], compression, size, crc)
        except Exception as err:
            self.result.stopped = f'a damaged chunk ({err})'
            return None


def scan_mcap(path: Path, result: ScanResult) -> Iterator[RawMessage]:
    """Every complete message of an mcap file, in file order, up to the first damaged record."""
    with path.open('rb') as f:
        if f.read(8) != MCAP_MAGIC:
            raise BagError(f'{path} is not an mcap file (no mcap magic at its start); nothing to recover')
        scanner = _McapScanner(f, result)
        try:
            for msg in scanner.messages():
                result.counts[msg.topic] += 1
                yield msg
        except (ValueError, struct.error) as err:  # a damaged record outside any chunk: the scan ends there
            result.stopped = f'a damaged record ({err})'


def scan_sqlite(path: Path, result: ScanResult) -> Iterator[RawMessage]:
    """Every message sqlite can still read from a rosbag2 .db3 file (needs no metadata.yaml)."""
    try:
        db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
        topics = {tid: (name, mtype) for tid, name, mtype in db.execute('SELECT id, name, type FROM topics')}
    except sqlite3.Error as err:
        raise BagError(f'{path} is not a readable rosbag2 sqlite3 file ({err}); nothing to recover') from None
    try:
        rows = db.execute('SELECT topic_id, timestamp, data FROM messages ORDER BY id')
        for tid, stamp, data in rows:
            if tid in topics:
                result.counts[topics[tid][0]] += 1
                yield RawMessage(topics[tid][0], topics[tid][1], None, int(stamp), bytes(data))
        result.complete = True
    except sqlite3.Error as err:
        result.stopped = f'sqlite error ({err})'
    finally:
        db.close()


def storage_files(bag: Path) -> list[Path]:
    """The storage files of a bag folder (or the file itself), in name order (split files in sequence)."""
    if bag.is_file():
        return [bag]
    return sorted([*bag.glob('*.mcap'), *bag.glob('*.db3')])


def summary_counts(path: Path) -> dict[str, int] | None:
    """Messages per topic that an intact mcap file's summary announces (None: no end marker, or unreadable).

    The summary is written with the data; metadata.yaml is a separate text file that may be stale or
    edited, so where both exist the summary says what was in the file.
    """
    if path.suffix != '.mcap' or mcap_damage(path) is not None:
        return None
    from rosbags.rosbag2.storage_mcap import McapReader

    reader = McapReader(path)
    try:
        reader.open()
        if reader.statistics is None:
            return None
        counts: Counter[str] = Counter()
        for conn in reader.connections:
            counts[conn.topic] += int(conn.msgcount)
        return dict(counts)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def expected_counts(bag: Path) -> dict[str, int] | None:
    """Messages per topic that the bag's metadata.yaml announces, None without a readable one."""
    meta = (bag if bag.is_dir() else bag.parent) / 'metadata.yaml'
    try:
        info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
        return {t['topic_metadata']['name']: int(t['message_count']) for t in info['topics_with_message_count']}
    except Exception:
        return None


@dataclass
class Recovery:
    recovered: Counter[str]
    expected: dict[str, int] | None
    notes: list[str]
    source: str = 'metadata.yaml'   # where `expected` comes from: metadata.yaml or the mcap summary

    @property
    def lost(self) -> int | None:
        if self.expected is None:
            return None
        return sum(max(0, n - self.recovered.get(t, 0)) for t, n in self.expected.items())


def recover_bag(bag: Path, out: Path, storage: str = 'mcap') -> Recovery:
    """Copy every readable message of `bag` (folder or storage file) into a new bag at `out`."""
    check_regular(bag)
    files = storage_files(bag)
    if not files:
        raise BagError(f'{bag} holds no .mcap or .db3 file; nothing to recover')
    for path in files:
        check_regular(path)
    known = default_typestore().fielddefs
    recovered: Counter[str] = Counter()
    notes: list[str] = []
    skipped_types: set[str] = set()
    summaries = [summary_counts(p) for p in files]
    # The writer stages the bag in a hidden folder and moves it to `out` only when it is complete: an
    # interruption (signal, full disk, kill) never leaves a half-written copy that looks recovered.
    with BagWriter(out, storage=storage) as writer:
        for path in files:
            result = ScanResult()
            scan = scan_sqlite if path.suffix == '.db3' else scan_mcap
            for msg in scan(path, result):
                msgdef = None if msg.msgtype in known else msg.msgdef
                if msg.msgtype in skipped_types or (msg.msgtype not in known and msgdef is None):
                    skipped_types.add(msg.msgtype)
                    continue
                try:
                    writer.write_raw(msg.topic, msg.msgtype, msg.record_ns, msg.data, msgdef=msgdef)
                except BagError:  # a custom type whose definition in the file does not parse
                    skipped_types.add(msg.msgtype)
                    continue
                recovered[msg.topic] += 1
            if result.damaged_chunks:
                notes.append(f'{path.name}: {result.damaged_chunks} damaged chunk(s) skipped')
            if not result.complete:
                notes.append(f'{path.name}: stopped at {result.stopped}')
    if skipped_types:
        notes.append(f'left out (type unknown or its definition unreadable): {", ".join(sorted(skipped_types))}')
    expected = expected_counts(bag)
    if all(c is not None for c in summaries):
        from_summary: Counter[str] = Counter()
        for c in summaries:
            from_summary.update(c or {})
        if expected is not None and sum(expected.values()) != sum(from_summary.values()):
            notes.append(f'metadata.yaml announces {sum(expected.values())} messages, the file\'s own summary '
                         f'{sum(from_summary.values())}: counted against the summary')
        return Recovery(recovered, dict(from_summary), notes, 'its mcap summary')
    return Recovery(recovered, expected, notes)


# -- `nmr recover-bag` --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', type=Path, help='damaged bag: folder, .mcap or .db3 (metadata.yaml optional)')
    parser.add_argument('--out', type=Path, required=True, help='new bag folder (must not exist)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output storage')


def run(args: argparse.Namespace) -> int:
    if not args.bag.exists():
        raise BagError(f'bag {args.bag} does not exist')
    check_regular(args.bag)
    if args.out.exists():
        raise BagError(f'output {args.out} already exists: remove it or choose another --out')
    if args.bag.is_dir() and args.out.resolve().is_relative_to(args.bag.resolve()):
        raise BagError(f'--out {args.out} is inside the damaged bag {args.bag}: choose a folder outside it')
    rec = recover_bag(args.bag, args.out, args.storage)
    total = sum(rec.recovered.values())
    lost = rec.lost
    lost_text = (f'{lost} lost ({rec.source} announced {sum(rec.expected.values())})'
                 if rec.expected is not None and lost is not None
                 else 'how many were lost is unknown (no metadata.yaml with counts)')
    print(f'nmr recover-bag: {total} messages on {len(rec.recovered)} topics recovered into {args.out}; '
          f'{lost_text}' + (f'; {"; ".join(rec.notes)}' if rec.notes else ''))
    return 0


def describe_damage(paths: list[Path]) -> str | None:
    """One line for the first damaged storage file among bag folders/files: what it is and what to do.

    `nmr recover-bag` is suggested only when it would recover something (a cut file with at least one
    complete message): for a file that is no mcap at all it could only answer "nothing to recover".
    """
    for bag in paths:
        for path in storage_files(bag) if bag.exists() else []:
            why = mcap_damage(path) if path.suffix == '.mcap' else None
            if not why:
                continue
            if why.startswith('is not an mcap file'):
                return f'{path} {why}: pass a rosbag2 bag (folder, .mcap or .db3 file)'
            if not _has_a_message(path):
                return f'{path} {why} before its first complete message: nothing in it can be recovered'
            out = bag.parent / f'{bag.stem if bag.is_file() else bag.name}_recovered'
            return (f'{path} {why}; copy its readable messages into a valid bag with '
                    f'`nmr recover-bag {bag} --out {out}` and use that')
    return None


def _has_a_message(path: Path) -> bool:
    """At least one complete message can be read from this mcap file (the scan stops at the first)."""
    try:
        return next(scan_mcap(path, ScanResult()), None) is not None
    except (BagError, OSError, ValueError, struct.error):
        return False
