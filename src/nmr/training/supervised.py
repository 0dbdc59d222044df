"""Supervised training of R_Phi alone: exact ground truth, appearance randomisation, contrastive matching.

The same interface as `nmr.training.step.NemarSystem` (networks, forward, train_batch, val_loss, state),
so one `Trainer` runs either. Per batch:
1. flips (images and ground truth together) and independent photometric changes of both images;
2. R's forward pass with its intermediates (`CorrRegistrationNet.run`);
3. loss = loss.lambda_contrastive x dense InfoNCE (+ the multi-scale end-point loss once the first
   `loss.contrastive_only_steps` steps, the encoders' matching pre-training, are over).
Non-`corr` architectures get the end-point loss on their output only (they expose no features).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from nmr.domain import PAIR_FIXED_KIND
from nmr.models.correlation import CorrOutput, CorrRegistrationNet
from nmr.models.registration import RegistrationConfig, build_registration
from nmr.models.resampler import warp
from nmr.training.appearance import AppearanceConfig, random_flips, randomise_appearance
from nmr.training.config import TrainConfig
from nmr.training.objectives import SupervisedWeights, contrastive_loss, endpoint_loss, multiscale_flow_loss


def registration_config(cfg: TrainConfig) -> RegistrationConfig:
    """R_Phi's config for this pair (`corr` on depth gets the fixed image's validity channel)."""
    reg = dict(cfg.model.registration)
    if reg.get('arch') == 'corr' and cfg.data.pair == 'rgb_depth':
        reg.setdefault('fixed_validity', True)
    return RegistrationConfig.from_dict(reg)


def step_lr_factor(step: int, total: int) -> float:
    """One-cycle: linear warm-up over 5 % of the steps from 10 %, then cosine decay to 1 %."""
    warm = max(1, int(0.05 * total))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


class SupervisedSystem:
    """R_Phi, its optimiser and per-step schedule, and the supervised step."""

    baseline = False

    def __init__(self, cfg: TrainConfig, device: torch.device | str = 'cpu', total_steps: int = 1) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.fixed_kind = PAIR_FIXED_KIND[cfg.data.pair]
        self.R = build_registration(registration_config(cfg)).to(self.device)
        lr = cfg.optim.lr_registration or cfg.optim.lr
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            'registration': torch.optim.AdamW(
                self.R.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=cfg.optim.weight_decay
            )
        }
        self.total_steps = max(1, total_steps)
        self.step = 0
        self.schedulers = {
            'registration': torch.optim.lr_scheduler.LambdaLR(
                self.optimizers['registration'], lambda s: step_lr_factor(s, self.total_steps)
            )
        }
        self.weights = SupervisedWeights(contrastive=cfg.loss.lambda_contrastive, level_weight=cfg.loss.level_weight)
        a = cfg.augment
        self.appearance = AppearanceConfig(invert_fixed=a.invert_fixed, hflip=a.hflip)
        self.generator = torch.Generator().manual_seed(cfg.run.seed + 7)

    # -- bookkeeping (as NemarSystem) ----------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {'registration': self.R}

    def train(self, mode: bool = True) -> None:
        self.R.train(mode)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {'registration': self.R.state_dict()}

    def training_state(self) -> dict[str, Any]:
        return {
            'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
            'schedulers': {k: s.state_dict() for k, s in self.schedulers.items()},
            'rng': self.generator.get_state(),
            'step': self.step,
        }

    def load(self, state: dict[str, dict[str, torch.Tensor]], training: dict[str, Any] | None = None) -> None:
        self.R.load_state_dict(state['registration'])
        if training:
            for k, o in self.optimizers.items():
                o.load_state_dict(training['optimizers'][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(training['schedulers'][k])
            if isinstance(training.get('rng'), torch.Tensor):
                self.generator.set_state(training['rng'])
            self.step = int(training.get('step', 0))

    def step_schedulers(self) -> None:
        """Per-epoch hook of the Trainer: this schedule advances per step instead."""

    # -- forward / losses -----------------------------------------------------------------------------
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, wrapped: bool = False) -> dict[str, torch.Tensor]:
        phi = self.R(moving, fixed).float()
        registered, valid = warp(moving, phi)
        return {'flow': phi, 'registered': registered, 'valid': valid}

    def losses(
        self, moving: torch.Tensor, fixed: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, flow_on: bool = True
    ) -> dict[str, torch.Tensor]:
        """The supervised terms for one batch (network grid); 'total' is what the step minimises."""
        if isinstance(self.R, CorrRegistrationNet) and not flow_on:
            # Matching pre-training: the encoders alone (a third of a full step's cost).
            out: CorrOutput = self.R.encode(moving, fixed)
            terms = {'contrastive': contrastive_loss(out, gt, valid, self.weights, g=self.generator)}
            terms['total'] = terms['contrastive']
            return terms
        if isinstance(self.R, CorrRegistrationNet):
            out = self.R.run(moving, fixed)
            terms = multiscale_flow_loss(out, gt, valid, self.weights.level_weight)
            total = terms['flow']
            if self.weights.contrastive > 0:
                terms['contrastive'] = contrastive_loss(out, gt, valid, self.weights, g=self.generator)
                total = total + self.weights.contrastive * terms['contrastive']
        else:
            flow = self.R(moving, fixed)
            terms = {'epe_out': endpoint_loss(flow, gt, valid)}
            total = terms['epe_out']
        terms['total'] = total
        return terms

    def train_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch from `TrainingPairs(net_grid_truth=True)`."""
        dev = self.device
        tensors = {
            'moving': batch['moving'].to(dev),
            'fixed': batch['fixed'].to(dev),
            'gt_flow': batch['gt_net'].to(dev),
            'valid': batch['valid_net'].to(dev),
        }
        tensors = random_flips(tensors, self.appearance, self.generator)
        moving, fixed = tensors['moving'], tensors['fixed']
        if self.cfg.augment.appearance:
            moving, fixed = randomise_appearance(moving, fixed, self.fixed_kind, self.appearance, self.generator)
        opt = self.optimizers['registration']
        opt.zero_grad(set_to_none=True)
        flow_on = self.step >= self.cfg.loss.contrastive_only_steps
        terms = self.losses(moving, fixed, tensors['gt_flow'], tensors['valid'], flow_on)
        terms['total'].backward()
        # A rare batch can give a non-finite gradient (seen twice in ~2,400 GPU steps at batch 32, each at a
        # different step): that update is skipped, as a mixed-precision loss scaler would, and counted in the
        # logged `skipped` fraction, instead of ending a run whose weights are still finite. Weights that still
        # go non-finite stop the run (Trainer._check_finite).
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float('inf')
        grad_norm = torch.nn.utils.clip_grad_norm_(self.R.parameters(), max_norm)
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            opt.step()
            self.schedulers['registration'].step()
        else:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        out = {k: v.detach() for k, v in terms.items()}
        out['skipped'] = torch.tensor(0.0 if finite else 1.0, device=terms['total'].device)
        return out

    def val_loss(self, out: dict[str, torch.Tensor], moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """No ground truth on the network grid in validation: EPE at native size is the score instead."""
        return out['flow'].new_zeros(())
