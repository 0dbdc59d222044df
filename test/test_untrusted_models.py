"""Untrusted model files (issue 15, point 5): refused at load time with one line, never run.

- a pickle that would execute code when unpickled is refused, and its code does not run;
- ONNX external-data references outside the model's folder (absolute, `..`, a symlink out) are refused;
  inside the folder they load;
- a model whose inputs, outputs, shapes or metadata do not match what the registrar feeds is refused by
  `create_registrar`, before any frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nmr.bench.fresh import fresh_checkpoint
from nmr.errors import ModelFileError
from nmr.inference.export import export_checkpoint
from nmr.inference.model_file import ONNX_METADATA_KEY
from nmr.inference.select import create_registrar

NET_HW = (96, 128)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('NMR_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'nmr-cache'))


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp('export')
    ckpt = fresh_checkpoint(folder / 'm.pt', 'fast', 'rgb_lwir', NET_HW, flow_scale=1.0)
    return Path(export_checkpoint(ckpt, folder / 'm.onnx', log=lambda _m: None).onnx_path)


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(ModelFileError) as info:
        create_registrar(path, backend='onnxruntime', device='cpu', log=lambda _m: None)
    text = str(info.value)
    assert '\n' not in text and str(path) in text, text
    for word in words:
        assert word in text, text
    return text


def _with_external(exported: Path, folder: Path, location: str) -> Path:
    """A copy of the export whose largest initialiser lives in external data at `location`."""
    model = onnx.load(str(exported))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    onnx.external_data_helper.set_external_data(tensor, location=location)
    tensor.ClearField('raw_data')
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / 'ext.onnx'
    onnx.save(model, str(path))
    return path


def _run(registrar) -> np.ndarray:
    rng = np.random.default_rng(0)
    moving = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    fixed = rng.integers(20000, 30000, (40, 56), dtype=np.uint16)
    return registrar.register(moving, fixed, 'mono16').flow


def test_a_pickle_that_runs_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    evil = tmp_path / 'evil.pt'
    torch.save({'format': 'nmr-checkpoint', 'format_version': 1, 'payload': Payload()}, evil)
    with pytest.raises(ModelFileError) as info:
        create_registrar(evil, backend='torch', device='cpu', log=lambda _m: None)
    assert '\n' not in str(info.value) and not marker.exists()


@pytest.mark.parametrize('where', ['parent', 'absolute', 'symlink'])
def test_onnx_external_data_outside_its_folder_is_refused(exported: Path, tmp_path: Path, where: str) -> None:
    outside = tmp_path / 'outside.bin'
    outside.write_bytes(b'\0' * 4096)
    folder = tmp_path / 'model'
    if where == 'parent':
        path = _with_external(exported, folder, '../outside.bin')
    elif where == 'absolute':
        path = _with_external(exported, folder, str(outside))
    else:
        folder.mkdir()
        (folder / 'weights.bin').symlink_to(outside)
        path = _with_external(exported, folder, 'weights.bin')
    _refused(path, 'outside the model', 'refused')


def test_onnx_external_data_inside_its_folder_loads(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / 'inside'
    folder.mkdir()
    model = onnx.load(str(exported))
    onnx.save(model, str(folder / 'm.onnx'), save_as_external_data=True, all_tensors_to_one_file=True,
              location='m.weights', size_threshold=0)
    assert (folder / 'm.weights').is_file()
    reference = create_registrar(exported, backend='onnxruntime', device='cpu', log=lambda _m: None)
    external = create_registrar(folder / 'm.onnx', backend='onnxruntime', device='cpu', log=lambda _m: None)
    np.testing.assert_array_equal(_run(external), _run(reference))


def _edited(exported: Path, tmp_path: Path, edit) -> Path:
    model = onnx.load(str(exported))
    edit(model)
    path = tmp_path / 'edited.onnx'
    onnx.save(model, str(path))
    return path


def _rename_input(model) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = 'image'
    for node in model.graph.node:
        node.input[:] = ['image' if n == old else n for n in node.input]


def _fixed_channels(n: int):
    def edit(model) -> None:
        fixed = next(i for i in model.graph.input if i.name == 'fixed')
        fixed.type.tensor_type.shape.dim[1].ClearField('dim_param')
        fixed.type.tensor_type.shape.dim[1].dim_value = n
    return edit


def _double_input(model) -> None:
    model.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE


def _metadata(**changes):
    def edit(model) -> None:
        prop = next(p for p in model.metadata_props if p.key == ONNX_METADATA_KEY)
        meta = json.loads(prop.value)
        for key, value in changes.items():
            if key == 'moving_channels':
                meta['registration']['moving_channels'] = value
            else:
                meta[key] = value
        prop.value = json.dumps(meta)
    return edit


@pytest.mark.parametrize('edit, words', [
    (_rename_input, ['not the nmr R_Phi interface']),
    (_fixed_channels(3), ["'fixed'", 'expects']),
    (_double_input, ['double', 'expects']),
    (_metadata(moving_channels=4), ['4 moving']),
    (_metadata(pair='rgb_radar'), ['rgb_radar']),
    (_metadata(net_hw=None), ['net_hw']),
], ids=['input-name', 'fixed-channels', 'dtype', 'meta-channels', 'meta-pair', 'meta-net-hw'])
def test_a_model_that_does_not_fit_the_registrar_is_refused_at_load_time(exported, tmp_path, edit, words):
    _refused(_edited(exported, tmp_path, edit), *words)


def test_a_checkpoint_with_other_channels_is_refused_at_load_time(tmp_path: Path) -> None:
    from nmr.models.checkpoint import ModelMetadata, save_checkpoint
    from nmr.models.registration import RegistrationConfig, RegistrationNet

    cfg = RegistrationConfig(arch='fast', moving_channels=1, encoder_channels=[8, 8], stem_channels=[8])
    meta = ModelMetadata(pair='rgb_lwir', registration=cfg.to_dict(), normalisation={}, net_hw=NET_HW,
                         train_data={})
    path = tmp_path / 'grey.pt'
    save_checkpoint(path, {'registration': RegistrationNet(cfg).state_dict()}, meta)
    for backend in ('torch', 'onnxruntime'):
        with pytest.raises(ModelFileError, match='1 moving'):
            create_registrar(path, backend=backend, device='cpu', log=lambda _m: None)
