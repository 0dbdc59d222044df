"""Engine cache keys, file names, sidecars and shape profiles (pure Python: no TensorRT needed)."""

import dataclasses
import json
from pathlib import Path

import pytest

from nmr.inference import engine_cache as ec

BASE = ec.EngineKeyInputs(onnx_sha256='a' * 64, tensorrt_version='10.9.0', gpu_name='NVIDIA H100',
                          compute_capability='9.0', precision='fp16',
                          profiles=(ec.ShapeProfile((256, 320), (256, 320), (256, 320)),))


def test_key_is_stable_and_hex() -> None:
    assert ec.engine_key(BASE) == ec.engine_key(dataclasses.replace(BASE))
    assert len(ec.engine_key(BASE)) == 64
    int(ec.engine_key(BASE), 16)


@pytest.mark.parametrize('change', [
    {'onnx_sha256': 'b' * 64},
    {'tensorrt_version': '10.9.1'},
    {'gpu_name': 'NVIDIA H200'},
    {'compute_capability': '8.9'},
    {'precision': 'fp32'},
    {'profiles': (ec.ShapeProfile((512, 640), (512, 640), (512, 640)),)},
    {'profiles': (ec.ShapeProfile((256, 320), (256, 320), (256, 320)),
                  ec.ShapeProfile((512, 640), (512, 640), (512, 640)))},
])
def test_key_changes_with_each_input(change: dict) -> None:
    assert ec.engine_key(dataclasses.replace(BASE, **change)) != ec.engine_key(BASE)


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match='precision'):
        ec.engine_key(dataclasses.replace(BASE, precision='int3'))


def test_onnx_hash_follows_file_content(tmp_path: Path) -> None:
    onnx = tmp_path / 'm.onnx'
    onnx.write_bytes(b'one')
    first = ec.sha256_file(onnx)
    onnx.write_bytes(b'two')
    assert ec.sha256_file(onnx) != first


def test_cached_engine_needs_matching_sidecar(tmp_path: Path) -> None:
    onnx = tmp_path / 'model.onnx'
    onnx.write_bytes(b'x')
    key = ec.engine_key(BASE)
    path = ec.engine_path(onnx, key, 'fp16')
    assert path.parent == tmp_path and key[:ec.SHORT_KEY_LEN] in path.name and path.name.endswith('.engine')
    assert ec.cached_engine(onnx, key, 'fp16') is None  # nothing built yet
    ec.atomic_write_bytes(path, b'engine bytes')
    assert ec.cached_engine(onnx, key, 'fp16') is None  # no sidecar: stale, rebuild
    ec.write_sidecar(path, key, BASE, extra={'onnx': onnx.name})
    assert ec.cached_engine(onnx, key, 'fp16') == path
    side = json.loads(ec.sidecar_path(path).read_text())
    assert side['key'] == key and side['inputs']['gpu_name'] == 'NVIDIA H100' and side['onnx'] == 'model.onnx'
    # a foreign engine (another GPU) has another key: never found under this key
    other = ec.engine_key(dataclasses.replace(BASE, gpu_name='Orin'))
    assert ec.cached_engine(onnx, other, 'fp16') is None
    # a sidecar whose full key differs (hand-copied file, prefix clash) makes the engine stale
    ec.write_sidecar(path, other, BASE)
    assert ec.cached_engine(onnx, key, 'fp16') is None


def test_parse_and_format_sizes() -> None:
    assert ec.parse_sizes('320x256, 640x512') == [(256, 320), (512, 640)]
    assert ec.format_size((512, 640)) == '640x512'
    for bad in ('640', '640x', 'x512', '0x10', 'axb', ''):
        with pytest.raises(ValueError):
            ec.parse_sizes(bad)


def test_fixed_profiles_one_per_size() -> None:
    profiles = ec.shape_profiles([(256, 320), (512, 640), (256, 320)], dynamic=False)
    assert [p.opt_hw for p in profiles] == [(256, 320), (512, 640)]
    assert all(p.min_hw == p.opt_hw == p.max_hw for p in profiles)
    assert profiles[1].contains((512, 640)) and not profiles[1].contains((256, 320))


def test_dynamic_profile_spans_sizes_and_respects_stride() -> None:
    (p,) = ec.shape_profiles([(250, 330), (512, 640)], dynamic=True, multiple=16)
    assert p.opt_hw == (240, 320)
    assert p.min_hw == (64, 64) and p.max_hw == (1024, 1280)
    assert all(v % 16 == 0 for hw in (p.min_hw, p.opt_hw, p.max_hw) for v in hw)
    assert p.contains((512, 640)) and not p.contains((2048, 640))
