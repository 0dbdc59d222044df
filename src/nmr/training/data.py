"""From FramePairs (nmr.data datasets) to network tensors: preprocess, optional misalignment, resize.

Each item: the moving and fixed images in network units ([-1, 1]) resized to the network size, plus the
native-size ground truth (when the data has it, or when synthetic misalignment made it) for validation
EPE. Misalignment is seeded by (seed, epoch, index), so every epoch sees new fields, validation always
the same ones, and a resumed run the same as an uninterrupted one.

Families (`augment.families`, one drawn per item): the smooth ones of `nmr.training.families` through
`cue_free_pair`, and `parallax` (`nmr.training.parallax.parallax_pair`), which needs the FIXED camera's depth
in metres: for rgb_depth pairs the pair's own depth (the fixed tensor is normalised inverse depth, per-image
robust scaled, so it cannot be inverted: the raw depth is decoded once more and cached next to the pair, at
canvas size by nearest-neighbour sampling, so that holes stay holes and no depth edge is blurred into
"flying" depths; one float per canvas pixel, only when `parallax` is listed), for rgb_lwir pairs a random
layered depth (`layered_depth`) drawn per item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from nmr.data.preprocess import resize_to
from nmr.training.config import AugmentConfig
from nmr.training.families import CueFreePair, choose_family, cue_free_pair, random_borders
from nmr.training.parallax import layered_depth, parallax_pair

TRAIN_INVERSE_STRIDE = 4


class TrainingPairs(Dataset):
    """FramePair dataset -> dicts of tensors for the trainer (see `collate`)."""

    def __init__(
        self,
        pairs: Any,
        fixed_kind: str,
        net_hw: Sequence[int],
        normalisation: dict | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        deterministic: bool = False,
        net_grid_truth: bool = False,
    ) -> None:
        self.pairs = pairs
        self.fixed_kind = fixed_kind
        self.net_hw = (int(net_hw[0]), int(net_hw[1]))
        self.normalisation = dict(normalisation or {})
        self.augment = augment if (augment is not None and augment.enabled) else None
        self.seed = seed
        self.deterministic = deterministic
        # Supervised training wants the ground truth on the network grid: pairs are resized once (cached)
        # and misaligned there, ~10x cheaper than at native size.
        self.net_grid_truth = net_grid_truth
        self._net_cache: dict[int, tuple[torch.Tensor, ...]] = {}
        self._depth_cache: dict[int, np.ndarray] = {}  # canvas-size depth (m) of rgb_depth pairs, for parallax
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch for plain indices. DataLoader workers keep their own copy of the dataset (persistent
        workers never see this call): training indexes through `EpochTaggedSampler` instead."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int) -> dict[str, Any]:
        """Item `key` of the current epoch, or item `key % len` of epoch `key // len` (tagged index)."""
        from nmr.data import preprocess

        n = len(self.pairs)
        epoch, i = divmod(key, n) if key >= n else (self.epoch, key)
        if self.net_grid_truth:
            return self._net_item(i, epoch)
        fp = self.pairs[i]
        moving = preprocess.rgb_input(fp.moving)
        fixed = preprocess.fixed_input(
            self.fixed_kind, fp.fixed, fp.fixed_encoding, self.normalisation or None
        )
        gt = torch.from_numpy(fp.gt_flow).permute(2, 0, 1).float() if fp.gt_flow is not None else None
        valid = torch.from_numpy(fp.valid).bool() if fp.valid is not None else None
        # Pairs that carry their own ground truth (manifests with `flow`, synthetic-rig bags) are already
        # misaligned: only pre-aligned pairs (no ground truth) get a synthetic misalignment.
        if self.augment is not None and gt is None:
            if moving.shape[-2:] != fixed.shape[-2:]:
                raise ValueError(
                    f'pair {fp.name}: synthetic misalignment needs pre-aligned images of the same '
                    f'size, got moving {tuple(moving.shape[-2:])} and fixed {tuple(fixed.shape[-2:])}'
                )
            g = torch.Generator().manual_seed(self._item_seed(i, epoch))
            strength = 1.0 if self.deterministic else warmup_strength(self.augment, epoch)
            # Cue-free (nmr.training.families): the field is drawn on the whole image and the centre of BOTH
            # images is kept. Training never reads this ground truth, so its inverse may be solved on a
            # coarse grid (~0.03 px off); validation keeps the exact one for EPE.
            pair = self._misaligned(moving, fixed, lambda: depth_metres_at(fp, None), g, strength,
                                    stride=1 if self.deterministic else TRAIN_INVERSE_STRIDE)
            moving, fixed, gt, valid = pair.moving, pair.fixed, pair.flow, pair.valid[0]
        item: dict[str, Any] = {
            'name': fp.name,
            'moving': resize_to(moving[None], self.net_hw)[0],
            'fixed': resize_to(fixed[None], self.net_hw)[0],
            'moving_hw': tuple(moving.shape[-2:]),
            'fixed_hw': tuple(fixed.shape[-2:]),
            'gt_flow': gt,
            'valid': valid,
        }
        return item

    def canvas_hw(self) -> tuple[int, int]:
        """The size pre-aligned pairs are cached at for training: the network size x augment.canvas_scale
        (the field is drawn there and the network-size centre of both images kept: no border cue)."""
        scale = self.augment.canvas_scale if self.augment is not None else 1.0
        return round(self.net_hw[0] * scale), round(self.net_hw[1] * scale)

    def _net_pair(self, i: int) -> tuple[torch.Tensor, ...]:
        """(moving, fixed, gt_net or empty, valid_net or empty) at network size (pre-aligned pairs without
        ground truth: at `canvas_hw`), decoded once."""
        cached = self._net_cache.get(i)
        if cached is not None:
            return cached
        from nmr.data import preprocess
        from nmr.models.resampler import flow_to_net

        fp = self.pairs[i]
        moving = preprocess.rgb_input(fp.moving)
        fixed = preprocess.fixed_input(self.fixed_kind, fp.fixed, fp.fixed_encoding, self.normalisation or None)
        gt = torch.empty(0)
        valid = torch.empty(0)
        if fp.gt_flow is not None:
            native = torch.from_numpy(fp.gt_flow).permute(2, 0, 1).float()[None]
            gt = flow_to_net(native, fixed.shape[-2:], moving.shape[-2:], self.net_hw)[0]
            if fp.valid is not None:
                v = torch.from_numpy(fp.valid.astype('float32'))[None, None]
                valid = F.interpolate(v, size=self.net_hw, mode='nearest')[0] > 0.5
            else:
                valid = torch.ones(1, *self.net_hw, dtype=torch.bool)
        hw = self.net_hw if fp.gt_flow is not None else self.canvas_hw()
        cached = (resize_to(moving[None], hw)[0], resize_to(fixed[None], hw)[0], gt, valid)
        if fp.gt_flow is None and self.fixed_kind == 'depth' and self.augment is not None \
                and 'parallax' in self.augment.families:
            self._depth_cache[i] = depth_metres_at(fp, hw)
        self._net_cache[i] = cached
        return cached

    def _net_item(self, i: int, epoch: int) -> dict[str, Any]:
        """A training item with its ground truth on the network grid (synthetic misalignment made there)."""
        moving, fixed, gt, valid = self._net_pair(i)
        if gt.numel() == 0:
            if self.augment is None:
                raise ValueError(
                    f'pair {i} has no ground truth and augment.enabled is false: supervised training needs '
                    'one of them; set augment.enabled=true for pre-aligned pairs'
                )
            g = torch.Generator().manual_seed(self._item_seed(i, epoch))
            strength = warmup_strength(self.augment, epoch)
            pair = self._misaligned(moving, fixed, lambda: self._depth_cache[i], g, strength,
                                    stride=TRAIN_INVERSE_STRIDE, out_hw=self.net_hw)
            moving, fixed, valid = random_borders(pair.moving, pair.fixed, pair.valid, self.augment, g)
            gt = pair.flow
        return {
            'name': str(i),
            'moving': moving,
            'fixed': fixed,
            'moving_hw': self.net_hw,
            'fixed_hw': self.net_hw,
            'gt_flow': None,
            'valid': None,
            'gt_net': gt,
            'valid_net': valid,
        }

    def _misaligned(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        depth_m: Callable[[], np.ndarray],
        g: torch.Generator,
        strength: float,
        stride: int,
        out_hw: tuple[int, int] | None = None,
    ) -> CueFreePair:
        """A cue-free misaligned pair of one family drawn from `augment.families`. The family is drawn first,
        as `cue_free_pair` itself would, so the smooth families' fields per seed are as before `parallax`
        existed. `depth_m`: the fixed camera's depth (metres, 0 = none) at the tensors' size, asked only for
        an rgb_depth item that draws `parallax`."""
        assert self.augment is not None
        name = choose_family(self.augment, g)
        if name != 'parallax':
            return cue_free_pair(moving, fixed, self.augment, g, family=name, strength=strength, stride=stride,
                                 out_hw=out_hw)
        h, w = moving.shape[-2:]
        depth = depth_m() if self.fixed_kind == 'depth' else layered_depth(h, w, g)
        return parallax_pair(moving, fixed, depth, scaled(self.augment, strength), g, out_hw=out_hw)

    def _item_seed(self, i: int, epoch: int) -> int:
        epoch = 0 if self.deterministic else epoch
        base = self.augment.val_seed if (self.deterministic and self.augment is not None) else self.seed
        key = f'{base}:{epoch}:{i}'.encode()
        return int.from_bytes(hashlib.sha1(key).digest()[:8], 'big') & ((1 << 62) - 1)


class EpochTaggedSampler(Sampler[int]):
    """Wraps a sampler so that each index also carries the epoch (`epoch * len + index`).

    The epoch seeds the synthetic misalignment. Setting it on the dataset does not reach persistent
    DataLoader workers (each holds a copy made when it started), so every epoch would replay the first
    epoch's fields; indices are drawn in the main process and so always carry the right epoch.
    """

    def __init__(self, sampler: DistributedSampler[Any], dataset_len: int) -> None:
        self.sampler = sampler
        self.dataset_len = dataset_len
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.dataset_len
        return (offset + int(i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def warmup_strength(cfg: AugmentConfig, epoch: int) -> float:
    """Misalignment magnitude factor for a training epoch: `warmup_start` at epoch 0, rising linearly to 1
    at `warmup_epochs`. T can only learn a sharp, content-specific translation from pairs whose geometry
    it can follow; early on R does not align them yet, so small misalignments let T learn first (and
    give R a signal), then the full range trains R. Validation always uses the full magnitudes."""
    if cfg.warmup_epochs <= 0:
        return 1.0
    return cfg.warmup_start + (1.0 - cfg.warmup_start) * min(1.0, epoch / cfg.warmup_epochs)


def scaled(cfg: AugmentConfig, strength: float) -> AugmentConfig:
    """The config with every misalignment magnitude multiplied by `strength`."""
    if strength == 1.0:
        return cfg
    return replace(
        cfg,
        shift_px=cfg.shift_px * strength,
        rotation_deg=cfg.rotation_deg * strength,
        scale=cfg.scale * strength,
        shear=cfg.shear * strength,
        elastic_px=cfg.elastic_px * strength,
        mean_px=[v * strength for v in cfg.mean_px],
        peak_px=cfg.peak_px * strength,
    )


def depth_metres_at(fp: Any, hw: Sequence[int] | None) -> np.ndarray:
    """The fixed depth of FramePair `fp` in metres (float32, 0 where there is none: holes, NaN, inf), at `hw`
    by nearest-neighbour sampling at pixel centres (the grid `resize_to` uses; holes stay holes, no blended
    depths across edges), or at native size for `hw=None`."""
    from nmr.data.preprocess import depth_metres

    m = depth_metres(fp.fixed, fp.fixed_encoding)
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.zeros_like(m))
    if hw is not None and tuple(m.shape) != (int(hw[0]), int(hw[1])):
        m = F.interpolate(m[None, None], size=(int(hw[0]), int(hw[1])), mode='nearest-exact')[0, 0]
    return np.ascontiguousarray(m.numpy(), dtype=np.float32)


def truth_inside(gt: torch.Tensor) -> torch.Tensor:
    """1xHxW bool: where `v + gt(v)` lands inside the (same-size) moving image."""
    h, w = gt.shape[-2:]
    x = torch.arange(w, dtype=gt.dtype).view(1, w) + gt[0]
    y = torch.arange(h, dtype=gt.dtype).view(h, 1) + gt[1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1))[None]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the network tensors; keep native-size fields (sizes differ between pairs) as lists."""
    if 'gt_net' in items[0]:
        return {
            'name': [it['name'] for it in items],
            'moving': torch.stack([it['moving'] for it in items]),
            'fixed': torch.stack([it['fixed'] for it in items]),
            'gt_net': torch.stack([it['gt_net'] for it in items]),
            'valid_net': torch.stack([it['valid_net'] for it in items]),
        }
    return {
        'name': [it['name'] for it in items],
        'moving': torch.stack([it['moving'] for it in items]),
        'fixed': torch.stack([it['fixed'] for it in items]),
        'moving_hw': [it['moving_hw'] for it in items],
        'fixed_hw': [it['fixed_hw'] for it in items],
        'gt_flow': [it['gt_flow'] for it in items],
        'valid': [it['valid'] for it in items],
    }
