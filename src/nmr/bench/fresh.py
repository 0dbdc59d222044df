"""Freshly initialised model files for benchmarks and tests (no training needed).

Timing does not depend on the weights, so `nmr bench` measures untrained networks of each architecture.
An untrained R_Phi outputs a near-zero flow (its head starts at ~0), which would make parity and
behaviour checks trivially pass; `flow_scale > 0` re-draws the head so the flow is a few pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch


def fresh_checkpoint(
    path: str | Path,
    arch: str = 'fast',
    pair: str = 'rgb_lwir',
    net_hw: tuple[int, int] = (256, 320),
    flow_scale: float = 0.0,
    seed: int = 0,
    zero_flow: bool = False,
) -> Path:
    """Write a checkpoint with freshly initialised R_Phi weights; returns its path.

    `zero_flow` zeroes the flow head: the network then outputs exactly zero flow (identity registration),
    which makes the registered image exactly predictable in behavioural tests.
    """
    from nmr.models.checkpoint import ModelMetadata, save_checkpoint
    from nmr.models.registration import RegistrationConfig, build_registration

    torch.manual_seed(seed)
    config = RegistrationConfig(arch=arch)
    net = build_registration(config)
    for head in _flow_heads(net):
        if flow_scale > 0:
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02 * flow_scale)
                if head.bias is not None:
                    head.bias.normal_(0.0, 0.2 * flow_scale)
        if zero_flow:
            with torch.no_grad():
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()
    metadata = ModelMetadata(
        pair=pair,
        registration=config.to_dict(),
        net_hw=(int(net_hw[0]), int(net_hw[1])),
        train_data={'note': f'untrained ({arch}), for benchmarks and tests'},
    )
    path = Path(path)
    save_checkpoint(path, {'registration': net.state_dict()}, metadata)
    return path


def _flow_heads(net: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The convolutions that output flow: the U-Net's one head, or each `corr` level's decoder head."""
    decoders = getattr(net, 'decoders', None)
    if decoders is not None and all(hasattr(d, 'head') for d in decoders):
        return [d.head for d in decoders]
    return [net.flow_head]  # type: ignore[list-item]
