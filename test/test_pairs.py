"""Manifest CSV and folder pair datasets on files written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr.data.pairs import FolderPairDataset, in_split, read_manifest, write_manifest
from nmr.errors import ConfigError


def rgb(k: int = 0, h: int = 6, w: int = 8) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10 + k, 100, 200  # R, G, B
    return img


def write_rgb(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / 'data'
    (d / 'sub').mkdir(parents=True)
    write_rgb(d / 'sub' / 'a_rgb.png', rgb(1))
    cv2.imwrite(str(d / 'sub' / 'a_ir.png'), np.full((5, 7), 40000, np.uint16))
    cv2.imwrite(str(d / 'b_rgb.png'), cv2.cvtColor(rgb(2), cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(d / 'b_ir.png'), np.full((5, 7), 90, np.uint8))
    np.save(d / 'a_flow.npy', np.full((5, 7, 2), 1.5, np.float32))
    valid = np.full((5, 7), 255, np.uint8)
    valid[0, 0] = 0
    cv2.imwrite(str(d / 'a_valid.png'), valid)
    (d / 'a_lm.json').write_text(json.dumps([[1, 2], [3.5, 4]]))
    return d


def test_manifest_rows_relative_paths_and_ground_truth(files: Path):
    csv_path = files / 'm.csv'
    csv_path.write_text(
        'name,moving,fixed,flow,valid,landmarks\n'
        'a,sub/a_rgb.png,sub/a_ir.png,a_flow.npy,a_valid.png,a_lm.json\n'
        f',{files / "b_rgb.png"},b_ir.png,,,\n'
    )
    ds = read_manifest(csv_path)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a.name == 'a' and b.name == 'b_rgb'  # name defaults to the moving file stem
    np.testing.assert_array_equal(a.moving, rgb(1))  # BGR on disk -> RGB
    np.testing.assert_array_equal(b.moving, rgb(2))  # BGRA on disk -> RGB
    assert a.fixed.dtype == np.uint16 and a.fixed_kind == 'lwir' and a.fixed_encoding == 'mono16'
    assert b.fixed.dtype == np.uint8 and b.fixed_encoding == 'mono8'
    assert a.gt_flow is not None and a.gt_flow.shape == (5, 7, 2) and a.gt_flow[0, 0, 0] == 1.5
    assert a.valid is not None and a.valid.dtype == bool and a.valid.sum() == 34
    assert a.landmarks is not None and a.landmarks.tolist() == [[1, 2], [3.5, 4]]
    assert b.gt_flow is None and b.valid is None and b.landmarks is None
    # the caller can force the kind: 16-bit as depth
    d = read_manifest(csv_path, fixed_kind='depth')[0]
    assert d.fixed_kind == 'depth' and d.fixed_encoding == '16UC1'


def test_manifest_only_required_columns_and_fixed_kind_column(files: Path):
    csv_path = files / 'm.csv'
    csv_path.write_text('fixed,moving,fixed_kind\nsub/a_ir.png,sub/a_rgb.png,depth\n')
    item = read_manifest(csv_path)[0]
    assert item.fixed_kind == 'depth' and item.name == 'a_rgb'


def test_write_manifest_round_trip(files: Path, tmp_path: Path):
    csv_path = files / 'out.csv'
    write_manifest(
        csv_path,
        [
            {
                'name': 'x',
                'moving': files / 'sub' / 'a_rgb.png',
                'fixed': files / 'sub' / 'a_ir.png',
                'flow': files / 'a_flow.npy',
            }
        ],
    )
    text = csv_path.read_text()
    assert 'sub/a_rgb.png' in text and str(files) not in text
    assert read_manifest(csv_path)[0].gt_flow is not None


@pytest.mark.parametrize(
    ('content', 'match'),
    [
        ('name,moving\nx,sub/a_rgb.png\n', 'lacks column.*fixed'),
        ('moving,fixed\nsub/a_rgb.png,missing.png\n', 'line 2: fixed file .*missing.png does not exist'),
        ('moving,fixed\n,sub/a_ir.png\n', 'column moving is empty'),
        ('moving,fixed,flow\nsub/a_rgb.png,sub/a_ir.png,nope.npy\n', 'flow file'),
        ('name,moving,fixed\nx,sub/a_rgb.png,sub/a_ir.png\nx,b_rgb.png,b_ir.png\n', 'used twice'),
        ('moving,fixed,fixed_kind\nsub/a_rgb.png,sub/a_ir.png,thermal\n', 'thermal'),
    ],
)
def test_manifest_errors(files: Path, content: str, match: str):
    csv_path = files / 'bad.csv'
    csv_path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_manifest(csv_path)


def test_manifest_bad_contents_fail_on_read(files: Path):
    np.save(files / 'wrong_flow.npy', np.zeros((3, 3, 2), np.float32))
    (files / 'junk.png').write_bytes(b'not a png')
    (files / 'lm.json').write_text('{"points": [1, 2, 3]}')
    cases = [('flow', 'wrong_flow.npy', 'expected 5x7x2'), ('landmarks', 'lm.json', r'\[x, y\]')]
    for column, value, match in cases:
        csv_path = files / 'c.csv'
        csv_path.write_text(f'moving,fixed,{column}\nsub/a_rgb.png,sub/a_ir.png,{value}\n')
        with pytest.raises(ConfigError, match=match):
            read_manifest(csv_path)[0]
    csv_path.write_text('moving,fixed\njunk.png,sub/a_ir.png\n')
    with pytest.raises(ConfigError, match='cannot be read'):
        read_manifest(csv_path)[0]
    with pytest.raises(ConfigError, match='does not exist'):
        read_manifest(files / 'none.csv')


def test_folder_dataset_matches_stems_with_suffixes(tmp_path: Path):
    m, f = tmp_path / 'RGB', tmp_path / 'Depth'
    m.mkdir()
    f.mkdir()
    for k in range(3):
        write_rgb(m / f'{k:04d}_RGB.jpg', rgb(k))
        cv2.imwrite(str(f / f'{k:04d}_HR_gt.png'), np.full((6, 8), 1000 * (k + 1), np.uint16))
    write_rgb(m / '9999_RGB.jpg', rgb(9))  # no partner
    (m / 'notes.txt').write_text('ignored')
    ds = FolderPairDataset(m, f, 'depth', moving_suffix='_RGB', fixed_suffix='_HR_gt')
    assert len(ds) == 3 and ds.unmatched_moving == 1 and ds.unmatched_fixed == 0
    item = ds[1]
    assert item.name == '0001' and item.fixed_kind == 'depth' and item.fixed_encoding == '16UC1'
    assert item.fixed[0, 0] == 2000 and item.moving.shape == (6, 8, 3)
    assert abs(int(item.moving[0, 0, 0]) - 11) <= 3 and abs(int(item.moving[0, 0, 2]) - 200) <= 3  # jpeg, RGB
    with pytest.raises(ConfigError, match='no file stems in common'):
        FolderPairDataset(m, f, 'depth')
    with pytest.raises(ConfigError, match='does not exist'):
        FolderPairDataset(tmp_path / 'nope', f, 'depth')
    with pytest.raises(ConfigError, match='lwir or depth'):
        FolderPairDataset(m, f, 'thermal')


def test_folder_grey_jpeg_as_lwir_and_split(tmp_path: Path):
    m, f = tmp_path / 'vis', tmp_path / 'ir'
    m.mkdir()
    f.mkdir()
    for k in range(40):
        write_rgb(m / f'FLIR_{k:05d}.jpg', rgb(k))
        cv2.imwrite(
            str(f / f'FLIR_{k:05d}.jpg'), cv2.cvtColor(np.full((6, 8), 77, np.uint8), cv2.COLOR_GRAY2BGR)
        )
    everything = FolderPairDataset(m, f, 'lwir')
    item = everything[0]
    assert item.fixed.shape == (6, 8) and item.fixed.dtype == np.uint8 and item.fixed_encoding == 'mono8'
    train = FolderPairDataset(m, f, 'lwir', split='train', val_fraction=0.25)
    val = FolderPairDataset(m, f, 'lwir', split='val', val_fraction=0.25)
    names_t = {train[i].name for i in range(len(train))}
    names_v = {val[i].name for i in range(len(val))}
    assert not names_t & names_v and len(names_t | names_v) == 40
    assert 3 <= len(val) <= 18  # about a quarter, by a stable hash
    assert in_split('FLIR_00001', 'val', 0.25) == ('FLIR_00001' in names_v)
    with pytest.raises(ConfigError):
        in_split('x', 'test', 0.2)


def test_select_and_report_partition_the_held_out_scenes_whatever_the_val_fraction():
    """Choosing on `select` and reporting on `report` must never share a scene, and neither may hold a
    training scene; the partition must not move when val_fraction does (one scene list per dataset)."""
    keys = [f'FLIR_{k:05d}' for k in range(600)]
    for fraction in (0.2, 0.5):
        val = {k for k in keys if in_split(k, 'val', fraction)}
        select = {k for k in keys if in_split(k, 'select', fraction)}
        report = {k for k in keys if in_split(k, 'report', fraction)}
        assert select | report == val and not select & report
        assert 0.2 < len(select) / len(val) < 0.45  # about a third
    always_select = {k for k in keys if in_split(k, 'select', 1.0)}
    assert {k for k in keys if in_split(k, 'select', 0.2)} == {k for k in always_select if in_split(k, 'val', 0.2)}


def test_folder_split_by_scene_prefix_keeps_a_scene_together(tmp_path: Path):
    """Time-stamped stems (rgbdd): frames of one 10-minute block never straddle train and val."""
    (tmp_path / 'm').mkdir()
    (tmp_path / 'f').mkdir()
    stems = [f'2020050911{block}{second:03d}' for block in range(6) for second in range(0, 600, 150)]
    for stem in stems:
        cv2.imwrite(str(tmp_path / 'm' / f'{stem}.png'), np.zeros((4, 4, 3), np.uint8))
        cv2.imwrite(str(tmp_path / 'f' / f'{stem}.png'), np.zeros((4, 4), np.uint16))
    kw = {'fixed_kind': 'depth', 'val_fraction': 0.5, 'scene_prefix': 11}
    train = FolderPairDataset(tmp_path / 'm', tmp_path / 'f', split='train', **kw)
    val = FolderPairDataset(tmp_path / 'm', tmp_path / 'f', split='val', **kw)
    train_scenes = {k[:11] for k, _, _ in train.items}
    val_scenes = {k[:11] for k, _, _ in val.items}
    assert len(train) + len(val) == len(stems)
    assert train_scenes and val_scenes and not train_scenes & val_scenes
    with pytest.raises(ConfigError, match='scene_prefix'):
        FolderPairDataset(tmp_path / 'm', tmp_path / 'f', 'depth', scene_prefix=-1)


def test_fixed_images_of_the_other_kind_are_refused_up_front(files: Path):
    """An 8-bit fixed image is LWIR and a float one depth (SPEC encodings): asking for the other kind fails
    when the dataset is built, with one line that names the file and the pair to use instead."""
    np.save(files / 'depth_m.npy', np.full((5, 7), 2.5, np.float32))
    cases = [('b_ir.png', 'depth', '8-bit, so LWIR', 'rgb_lwir'),
             ('depth_m.npy', 'lwir', 'float, so depth', 'rgb_depth')]
    for fixed, asked, what, pair in cases:
        csv_path = files / f'{asked}.csv'
        csv_path.write_text(f'moving,fixed\nb_rgb.png,{fixed}\nsub/a_rgb.png,sub/a_ir.png\n')
        with pytest.raises(ConfigError, match=f'{fixed} is {what}.*not {asked}.*{pair}') as exc:
            read_manifest(csv_path, fixed_kind=asked)
        assert '\n' not in str(exc.value)
    # a kind the pixel type proves, asked for: fine; 16-bit cannot be told apart, so either kind is read
    assert read_manifest(files / 'lwir.csv', fixed_kind='depth')[0].fixed_encoding == '32FC1'
    csv_path = files / 'sixteen.csv'
    csv_path.write_text('moving,fixed\nsub/a_rgb.png,sub/a_ir.png\n')
    assert read_manifest(csv_path, fixed_kind='lwir')[0].fixed_encoding == 'mono16'
    assert read_manifest(csv_path, fixed_kind='depth')[0].fixed_encoding == '16UC1'


def test_fixed_kind_column_against_the_asked_kind(files: Path, tmp_path: Path):
    csv_path = files / 'k.csv'
    write_manifest(csv_path, [{'moving': files / 'sub' / 'a_rgb.png', 'fixed': files / 'sub' / 'a_ir.png',
                               'fixed_kind': 'depth'}])
    assert csv_path.read_text().splitlines()[0].endswith(',fixed_kind')
    assert read_manifest(csv_path, fixed_kind='depth')[0].fixed_kind == 'depth'
    with pytest.raises(ConfigError, match=r'k.csv line 2: fixed_kind column says depth, not lwir.*rgb_depth'):
        read_manifest(csv_path, fixed_kind='lwir')


def test_folder_of_the_other_kind_is_refused_up_front(tmp_path: Path):
    m, f = tmp_path / 'vis', tmp_path / 'ir'
    m.mkdir()
    f.mkdir()
    write_rgb(m / 'a.jpg', rgb())
    cv2.imwrite(str(f / 'a.png'), np.full((6, 8), 77, np.uint8))
    with pytest.raises(ConfigError, match=r'8-bit, so LWIR.*not depth'):
        FolderPairDataset(m, f, 'depth')
