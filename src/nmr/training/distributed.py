"""Process-group set-up for DDP training (torchrun) and the collectives the trainer uses.

One process per GPU (NCCL) or per CPU worker (gloo); a plain `nmr train` is one process and every
function here is then a no-op pass-through, so the trainer never branches on distribution itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nmr.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo for CPU)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device_kind == 'cuda' else 'gloo')
    return DistInfo(
        rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get('LOCAL_RANK', '0'))
    )


def pick_device(spec: str, info: DistInfo) -> torch.device:
    if spec == 'auto':
        spec = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(spec)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError(f'run.device {spec!r} but CUDA is not available; use run.device=cpu')
        if dev.index is None:
            dev = torch.device('cuda', info.local_rank)
        torch.cuda.set_device(dev)
    return dev


def all_reduce_mean(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Average scalar tensors over processes (one collective)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if info.enabled:
        t = t.to(_collective_device(info))
        dist.all_reduce(t)
        t /= info.world
    return {k: float(v) for k, v in zip(keys, t.cpu())}


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    if info.enabled:
        t = t.to(_collective_device(info))
        dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _collective_device(info: DistInfo) -> torch.device:
    return (
        torch.device('cuda', torch.cuda.current_device())
        if dist.get_backend() == 'nccl'
        else torch.device('cpu')
    )
