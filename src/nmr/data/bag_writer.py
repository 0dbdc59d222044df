"""Write rosbag2 bags (mcap by default, or sqlite3) with ``rosbags``: no ROS install needed.

Used by the synthetic rig (images, camera_info, ground truth), ``register-bag`` (the node's outputs)
and the tests. Messages are built with the rosbags typestore of the newest ROS 2 distribution it
knows (Kilted here), serialised to CDR, which rclpy and ``ros2 bag play`` read back field for field.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
from binascii import crc32
from collections import defaultdict
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import (
    Channel,
    McapWriter,
    PendingChunk,
    write_channel,
    write_record,
    write_string,
    write_uint16,
    write_uint32,
    write_uint64,
)
from rosbags.typesys import Stores, get_typestore

from nmr import atomic
from nmr.data.encodings import numpy_to_image_fields
from nmr.errors import BagError

STORAGES: dict[str, StoragePlugin] = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

_INFINITE = QosTime(sec=9223372036, nsec=854775807)  # RMW_DURATION_INFINITE, as rosbag2 writes it
DEFAULT_QOS = Qos(history=QosHistory.KEEP_LAST, depth=10, reliability=QosReliability.RELIABLE,
                  durability=QosDurability.VOLATILE, deadline=_INFINITE, lifespan=_INFINITE,
                  liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
                  avoid_ros_namespace_conventions=False)
"""The offered QoS recorded for every topic (ROS's default profile: reliable, volatile, keep last 10):
`ros2 bag play` offers it again, and readers that adapt their QoS to the recording find one."""

STATIC_QOS = Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                 durability=QosDurability.TRANSIENT_LOCAL, deadline=_INFINITE, lifespan=_INFINITE,
                 liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
                 avoid_ros_namespace_conventions=False)
"""The offered QoS of ``/tf_static`` (tf2_ros's StaticBroadcasterQoS: reliable, transient local, keep last 1):
latched, so `ros2 bag play` hands the transforms to a subscriber that starts after the one message."""


class _CrcFile:
    """The mcap file being written, keeping the CRC-32 of every byte written so far.

    rosbags writes the DataEnd record's `data_section_crc` as 0 (not computed). Its op byte is the only
    one-byte write of 0x0F to the file itself (records inside chunks go to a BytesIO), so this wrapper notes
    where it starts and the CRC of everything before it, and fills the CRC in when the file is closed.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        raw.flush()  # the magic and header record, written before this wrapper existed
        with open(raw.name, 'rb') as f:
            self.crc = crc32(f.read(raw.tell()))
        self.data_end: tuple[int, int] | None = None   # (offset of the DataEnd record, data-section CRC)

    def write(self, data: Any) -> int:
        if len(data) == 1 and bytes(data) == b'\x0f' and self.data_end is None:
            self.data_end = (self.raw.tell(), self.crc)
        self.crc = crc32(data, self.crc)
        return int(self.raw.write(data))

    def tell(self) -> int:
        return int(self.raw.tell())

    def close(self) -> None:
        if self.data_end is not None and not self.raw.closed:
            offset, crc = self.data_end
            end = self.raw.tell()
            self.raw.seek(offset + 9)   # op (1) + record length (8), then data_section_crc (uint32)
            self.raw.write(struct.pack('<I', crc))
            self.raw.seek(end)
        self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def flush(self) -> None:
        self.raw.flush()


class _Rosbag2McapWriter(McapWriter):
    """rosbags' MCAP storage, with the channel metadata and the CRCs that rosbag2 (Jazzy and later) writes.

    rosbag2 puts `offered_qos_profiles` and `topic_type_hash` (RIHS01) into each MCAP channel's metadata;
    rosbags writes only the first. Tools that check the type hash (ros2 bag, Foxglove) find it here.
    rosbags also writes every chunk CRC and the data-section CRC as 0 ("not computed"), so damage inside a
    chunk went unnoticed (a reader simply found fewer messages); here both are computed, and readers
    (rosbags, and nmr's `recover-bag`) check the chunk CRCs.
    """

    def __init__(self, path: Path, compression: Any) -> None:
        super().__init__(path, compression)
        self.bio = _CrcFile(self.bio)  # type: ignore[assignment]

    def add_connection(self, connection: Connection, offered_qos_profiles: str) -> None:
        metadata = BytesIO()
        write_string(metadata, 'offered_qos_profiles')
        write_string(metadata, offered_qos_profiles)
        write_string(metadata, 'topic_type_hash')
        write_string(metadata, connection.digest or '')
        serialization = getattr(connection.ext, 'serialization_format', 'cdr')
        self.channels.append(Channel(connection.id, connection.msgtype, connection.topic, serialization,
                                     metadata.getvalue()))
        self.channel_stats[connection.id] = 0
        write_channel(self.chunk.bio, self.channels[-1], self.schemas)

    def close_chunk(self) -> None:
        """rosbags' close_chunk with the chunk's CRC-32 (of its uncompressed records) instead of 0."""
        records = self.chunk.bio.getvalue()
        rec = BytesIO()
        write_uint64(rec, self.chunk.message_start_time)
        write_uint64(rec, self.chunk.message_end_time)
        write_uint64(rec, len(records))
        write_uint32(rec, crc32(records))
        compressed = self.compressor(records)
        write_string(rec, self.compression)
        write_uint64(rec, len(compressed))
        rec.write(compressed)

        chunk_start = self.bio.tell()
        write_record(self.bio, 0x06, rec)
        chunk_end = self.bio.tell()

        offsets: list[tuple[int, int]] = []
        for cid, msgs in self.chunk.msgs.items():
            offsets.append((cid, self.bio.tell()))
            rec = BytesIO()
            write_uint16(rec, cid)
            write_uint32(rec, len(msgs) * 16)
            for ts, offset in msgs:
                write_uint64(rec, ts)
                write_uint64(rec, offset)
            write_record(self.bio, 0x07, rec)

        rec = BytesIO()
        write_uint64(rec, self.chunk.message_start_time)
        write_uint64(rec, self.chunk.message_end_time)
        write_uint64(rec, chunk_start)
        write_uint64(rec, chunk_end - chunk_start)
        write_uint32(rec, len(offsets) * 10)
        for cid, offset in offsets:
            write_uint16(rec, cid)
            write_uint64(rec, offset)
        write_uint64(rec, self.bio.tell() - chunk_end)
        write_string(rec, self.compression)
        write_uint64(rec, len(compressed))
        write_uint64(rec, len(records))
        self.chunks.append(rec)
        self.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))


class _Rosbag2Writer(Writer):
    """rosbags' Writer with the MCAP storage above (STORAGE_PLUGINS is rosbags' extension point)."""

    STORAGE_PLUGINS: Mapping[StoragePlugin, Any] = {
        **Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: _Rosbag2McapWriter}

_NUMPY_BASE = {
    'bool': np.bool_,
    'byte': np.uint8,
    'octet': np.uint8,
    'char': np.uint8,
    'uint8': np.uint8,
    'int8': np.int8,
    'uint16': np.uint16,
    'int16': np.int16,
    'uint32': np.uint32,
    'int32': np.int32,
    'uint64': np.uint64,
    'int64': np.int64,
    'float32': np.float32,
    'float64': np.float64,
}

_TYPESTORE: Any = None


def bag_folder(path: str | Path) -> Path:
    """The bag FOLDER for a requested output path: `rig.mcap` / `rig.db3` -> `rig` (holding `rig.mcap`).

    A rosbag2 bag is a folder (metadata.yaml + storage files named after it). People who ask for
    `--out rig.mcap` want a file called rig.mcap, not a folder `rig.mcap/` holding `rig.mcap.mcap`.
    """
    path = Path(path)
    return path.with_suffix('') if path.suffix in ('.mcap', '.db3') and path.stem else path


def default_typestore() -> Any:
    """The rosbags typestore for ROS 2 Kilted, or the newest one rosbags has (cached)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        store = getattr(Stores, 'ROS2_KILTED', None) or Stores.LATEST
        _TYPESTORE = get_typestore(store)
    return _TYPESTORE


def type_hash(msgtype: str, msgdef: str) -> str:
    """The RIHS01 type hash of a message type given by its ros2msg text (with its dependencies' sections).

    rosbag2 records it with every topic; a copied topic of a custom type (recover-bag) needs it too.
    BagError when the text does not define `msgtype`.
    """
    from rosbags.typesys import get_types_from_msg

    try:
        store = get_typestore(Stores.EMPTY)
        store.register({**default_typestore().fielddefs, **get_types_from_msg(msgdef, msgtype)})
        return str(store.hash_rihs01(msgtype))
    except Exception as err:
        raise BagError(f'message type {msgtype}: its definition cannot be parsed ({err})') from None


def time_msg(typestore: Any, stamp_ns: int) -> Any:
    """``builtin_interfaces/msg/Time`` for integer nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return typestore.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def header_msg(typestore: Any, stamp_ns: int, frame_id: str) -> Any:
    """``std_msgs/msg/Header``."""
    return typestore.types['std_msgs/msg/Header'](stamp=time_msg(typestore, stamp_ns), frame_id=frame_id)


def _default(typestore: Any, node: tuple[Any, Any]) -> Any:
    kind, detail = node
    name = kind.name
    if name == 'BASE':
        base = detail[0]
        if base == 'string' or base == 'wstring':
            return ''
        return False if base == 'bool' else 0.0 if base.startswith('float') else 0
    if name == 'NAME':
        return make_message(typestore, detail, {})
    sub, count = detail
    if sub[0].name == 'BASE' and sub[1][0] in _NUMPY_BASE:
        return np.zeros(count if name == 'ARRAY' else 0, dtype=_NUMPY_BASE[sub[1][0]])
    return [_default(typestore, sub) for _ in range(count if name == 'ARRAY' else 0)]


def _convert(typestore: Any, node: tuple[Any, Any], value: Any) -> Any:
    kind, detail = node
    name = kind.name
    if name == 'BASE':
        return value
    if name == 'NAME':
        return make_message(typestore, detail, value) if isinstance(value, Mapping) else value
    sub, count = detail
    if sub[0].name == 'BASE' and sub[1][0] in _NUMPY_BASE:
        arr: np.ndarray = np.asarray(value, dtype=_NUMPY_BASE[sub[1][0]]).reshape(-1)
        if name == 'ARRAY' and arr.size != count:
            raise ValueError(f'array field needs {count} values, got {arr.size}')
        return arr
    return [_convert(typestore, sub, v) for v in value]


def make_message(typestore: Any, msgtype: str, fields: Mapping[str, Any]) -> Any:
    """Build a rosbags message of ``msgtype`` (e.g. ``'sensor_msgs/msg/Image'``) from a dict.

    Nested messages may be given as dicts, numeric arrays as any sequence; missing fields get ROS
    defaults (0, '', empty). Unknown field names raise ValueError.
    """
    if msgtype not in typestore.fielddefs:
        raise BagError(f'unknown message type {msgtype!r}: use a full name like sensor_msgs/msg/Image')
    _, fielddefs = typestore.fielddefs[msgtype]
    known = {fname for fname, _ in fielddefs}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f'{msgtype} has no field(s) {sorted(unknown)}; fields are {sorted(known)}')
    kwargs = {
        fname: _convert(typestore, node, fields[fname]) if fname in fields else _default(typestore, node)
        for fname, node in fielddefs
    }
    return typestore.types[msgtype](**kwargs)


def _missing_folder(folder: Path) -> str:
    """Why `folder` cannot hold a new bag: it does not exist, or it (or a parent) is a file."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            return f'{part} is a file, not a folder'
    return f'folder {folder} does not exist'


class BagWriter:
    """A rosbag2 bag being written; use as a context manager.

    Record time (the bag's log time) defaults to the header stamp; pass ``record_ns`` to differ.
    ``overwrite=True`` replaces an existing bag directory (one holding ``metadata.yaml``) but never any
    other directory.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap', overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise BagError(f'unknown bag storage {storage!r}: use one of {", ".join(STORAGES)}')
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        self.typestore = default_typestore()
        self._writer: Writer | None = None
        self._stage: Path | None = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> BagWriter:
        """Start writing in a staging folder next to the bag (`.NAME.partial-XXXX/NAME/`).

        The bag appears at its path only when it is finished (close renames it there), so a run killed in
        any way (SIGKILL, power loss) never leaves something at the output path that looks like a bag; what
        it leaves is the hidden staging folder, whose name says it is partial and carries the writer's
        process id: the next writer of the same bag removes the folders of writers that no longer run.
        """
        if self.path.exists():
            if self.overwrite and not (self.path / 'metadata.yaml').is_file():
                raise BagError(f'{self.path} exists and is not a bag (no metadata.yaml): choose another path')
            if not self.overwrite:
                raise BagError(f'output bag {self.path} already exists: remove it or choose another path')
        if not self.path.parent.is_dir():
            raise BagError(f'cannot write bag {self.path}: {_missing_folder(self.path.parent)}')
        try:
            atomic.remove_stale_stages(self.path.parent, f'.{self.path.name}.partial-')
            self._stage = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.partial-{os.getpid()}-',
                                                dir=self.path.parent))
            self._writer = _Rosbag2Writer(self._stage / self.path.name, version=9,
                                          storage_plugin=STORAGES[self.storage])
            self._writer.open()
        except OSError as err:
            self.abort()
            raise BagError(f'cannot write bag {self.path} ({err.strerror or err}): choose a writable '
                           'folder with free space') from None
        return self

    def close(self) -> None:
        """Finish the storage file (mcap summary / sqlite commit), write metadata.yaml, then move the
        finished bag to its path (an existing bag there is replaced only now, with `overwrite`)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                try:
                    writer.close()
                except OSError as err:
                    raise self._named(err) from None
                assert self._stage is not None
                if self.overwrite and (self.path / 'metadata.yaml').is_file():
                    shutil.rmtree(self.path)
                os.rename(self._stage / self.path.name, self.path)
            except BaseException:
                self._remove_stage()
                raise
            self._remove_stage()

    def abort(self) -> None:
        """Stop without finishing: the staging folder is removed, nothing appears at the bag's path."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                writer.abort()
        self._remove_stage()

    def _remove_stage(self) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    def set_custom_data(self, key: str, value: str) -> None:
        """A string in metadata.yaml's custom_data (e.g. whether the run that wrote the bag completed)."""
        if self._writer is None:
            raise BagError(f'bag {self.path} is not open: use BagWriter as a context manager')
        self._writer.set_custom_data(key, value)

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or an interruption mid-way: no half-written bag (callers that keep partial output
            self.abort()  # close it themselves, marked partial: register-bag)

    # -- generic -------------------------------------------------------------------------------------
    def _connection(self, topic: str, msgtype: str, msgdef: str | None = None, qos_profile: Qos | None = None) -> Any:
        if self._writer is None:
            raise BagError(f'bag {self.path} is not open: use BagWriter as a context manager')
        conn = self._connections.get(topic)
        if conn is None:
            qos = [qos_profile or DEFAULT_QOS]
            if msgdef is not None:
                conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=type_hash(msgtype, msgdef),
                                                   offered_qos_profiles=qos)
            else:
                conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                                   offered_qos_profiles=qos)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f'topic {topic} is already written as {conn.msgtype}, not {msgtype}')
        return conn

    def write_raw(
        self, topic: str, msgtype: str, record_ns: int, data: bytes | memoryview, msgdef: str | None = None
    ) -> None:
        """Write already serialised CDR bytes (e.g. copied from another bag)."""
        self._writer_write(self._connection(topic, msgtype, msgdef), record_ns, data, topic)

    def write(self, topic: str, msgtype: str, record_ns: int, msg: Any, qos: Qos | None = None) -> None:
        """Write a message: a rosbags message object of ``msgtype`` or a dict of its fields. ``qos``: the
        topic's offered QoS (taken from its first message; default :data:`DEFAULT_QOS`)."""
        if isinstance(msg, Mapping):
            msg = make_message(self.typestore, msgtype, msg)
        conn = self._connection(topic, msgtype, qos_profile=qos)
        self._writer_write(conn, record_ns, self.typestore.serialize_cdr(msg, msgtype), topic)

    def _writer_write(self, conn: Any, record_ns: int, data: bytes | memoryview, topic: str) -> None:
        assert self._writer is not None
        try:
            self._writer.write(conn, int(record_ns), data)
        except OSError as err:
            raise self._named(err) from None
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def _named(self, err: OSError) -> OSError:
        """The same error, naming the bag (the storage writers raise ENOSPC without a file name)."""
        if err.filename or err.errno is None:
            return err
        return type(err)(err.errno, err.strerror, str(self.path))

    # -- typed helpers -------------------------------------------------------------------------------
    def write_image(
        self,
        topic: str,
        stamp_ns: int,
        frame_id: str,
        arr: np.ndarray,
        encoding: str,
        record_ns: int | None = None,
    ) -> None:
        """``sensor_msgs/msg/Image`` of ``arr`` in ``encoding`` (see ``nmr.data.encodings``)."""
        fields = numpy_to_image_fields(arr, encoding, data_type='numpy')
        msg = self.typestore.types['sensor_msgs/msg/Image'](
            header=header_msg(self.typestore, stamp_ns, frame_id), **fields
        )
        self.write(topic, 'sensor_msgs/msg/Image', stamp_ns if record_ns is None else record_ns, msg)

    def write_compressed_image(
        self,
        topic: str,
        stamp_ns: int,
        frame_id: str,
        arr: np.ndarray,
        encoding: str,
        transport: str = 'compressed',
        record_ns: int | None = None,
    ) -> None:
        """``sensor_msgs/msg/CompressedImage`` as image_transport's `compressed` / `compressedDepth` write it."""
        from nmr.data.compressed import encode_compressed

        fmt, data = encode_compressed(arr, encoding, transport)
        msgtype = 'sensor_msgs/msg/CompressedImage'
        msg = self.typestore.types[msgtype](header=header_msg(self.typestore, stamp_ns, frame_id), format=fmt,
                                            data=np.frombuffer(data, np.uint8))
        self.write(topic, msgtype, stamp_ns if record_ns is None else record_ns, msg)

    def write_camera_info(
        self,
        topic: str,
        stamp_ns: int,
        frame_id: str,
        K: Sequence[float] | np.ndarray,
        size: tuple[int, int],
        D: Sequence[float] | np.ndarray | None = None,
        P: Sequence[float] | np.ndarray | None = None,
        distortion_model: str = 'plumb_bob',
        record_ns: int | None = None,
    ) -> None:
        """``sensor_msgs/msg/CameraInfo`` from a 3x3 ``K`` and ``size = (width, height)``.

        ``D`` defaults to five zeros, ``R`` is the identity, ``P`` defaults to ``[K | 0]``.
        """
        k = np.asarray(K, dtype=np.float64).reshape(3, 3)
        p = np.hstack([k, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64).reshape(3, 4)
        fields = {
            'header': header_msg(self.typestore, stamp_ns, frame_id),
            'width': int(size[0]),
            'height': int(size[1]),
            'distortion_model': distortion_model,
            'd': np.zeros(5) if D is None else np.asarray(D, dtype=np.float64),
            'k': k.reshape(-1),
            'r': np.eye(3).reshape(-1),
            'p': p.reshape(-1),
        }
        rec = stamp_ns if record_ns is None else record_ns
        self.write(topic, 'sensor_msgs/msg/CameraInfo', rec, fields)

    def write_diagnostics(
        self,
        stamp_ns: int,
        statuses: Sequence[Mapping[str, Any]],
        topic: str = '/diagnostics',
        record_ns: int | None = None,
    ) -> None:
        """``diagnostic_msgs/msg/DiagnosticArray``; each status: name, level (0-3), message,
        hardware_id, values (a dict of key -> value, stringified)."""
        status_msgs = []
        for st in statuses:
            values = [{'key': str(k), 'value': str(v)} for k, v in dict(st.get('values', {})).items()]
            status_msgs.append(
                {
                    'level': int(st.get('level', 0)),
                    'name': str(st.get('name', '')),
                    'message': str(st.get('message', '')),
                    'hardware_id': str(st.get('hardware_id', '')),
                    'values': values,
                }
            )
        fields = {'header': header_msg(self.typestore, stamp_ns, ''), 'status': status_msgs}
        rec = stamp_ns if record_ns is None else record_ns
        self.write(topic, 'diagnostic_msgs/msg/DiagnosticArray', rec, fields)

    def write_tf_static(
        self, stamp_ns: int, transforms: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
        topic: str = '/tf_static',
    ) -> None:
        """One ``tf2_msgs/msg/TFMessage`` on ``/tf_static`` (offered latched, :data:`STATIC_QOS`), as a
        static transform broadcaster sends it. Each transform is ``(parent, child, translation xyz,
        rotation quaternion xyzw)``: the child frame's pose in the parent frame (``X_parent = R X_child + t``,
        tf2's convention for ``header.frame_id`` = parent, ``child_frame_id`` = child)."""
        items = []
        for parent, child, t, q in transforms:
            items.append({
                'header': header_msg(self.typestore, stamp_ns, parent),
                'child_frame_id': child,
                'transform': {'translation': dict(zip('xyz', map(float, t))),
                              'rotation': dict(zip('xyzw', map(float, q)))},
            })
        self.write(topic, 'tf2_msgs/msg/TFMessage', stamp_ns, {'transforms': items}, qos=STATIC_QOS)

    def write_clock(self, stamp_ns: int, topic: str = '/clock') -> None:
        """``rosgraph_msgs/msg/Clock`` (for ``use_sim_time`` playback)."""
        self.write(topic, 'rosgraph_msgs/msg/Clock', stamp_ns, {'clock': time_msg(self.typestore, stamp_ns)})
