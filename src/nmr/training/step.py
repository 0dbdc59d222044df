"""One NeMAR training iteration: networks, optimisers and the D-then-(R+T) update (paper sec. 4.3-4.4).

Per batch (moving a, fixed b, both at network size):
1. phi = R_Phi(a, b); the two flows share it: translate first `O_RT = R_S(T(a), phi)`, register first
   `O_TR = T(R_S(a, phi))` (`loss.flows` keeps one or both, Figure 5).
2. D step: the conditional PatchGAN sees (b | a) as real and (O_RT | a), (O_TR | a) as fake (detached);
   one forward over the concatenated batch.
3. R + T step: `lambda_gan * L_cGAN + lambda_R * L_recon + lambda_S * L_smooth` with
   `L_recon = |O_RT - b|_1 + |O_TR - b|_1` (eq. 4; over the pixels R_S sampled inside the moving image
   when `loss.mask_invalid`, see `reconstruction_l1`) and the bilateral smoothness on `O = R_S(a, phi)`.
   `loss.gan_modules` / `loss.l1_modules` route the cGAN / L1 gradients to R, T or both (Table 2) by
   back-propagating each module's own sum into its own parameters only.
Baselines (Table 1, `loss.baseline`): R alone with a cross-modality similarity + smoothness; no T, no D.

Distributed: R, T, D are each wrapped in DistributedDataParallel; every loss is a mean over the local
batch, DDP averages gradients over processes, so N processes with B pairs each take the same step as one
process with N*B pairs. In the R+T step D runs unwrapped with frozen weights (it is not updated there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from nmr.models.discriminator import PatchDiscriminator
from nmr.models.registration import build_registration
from nmr.models.resampler import warp
from nmr.models.translation import TranslationNet
from nmr.training.config import TrainConfig
from nmr.training.losses import (
    GANLoss,
    baseline_similarity_loss,
    bilateral_smoothness,
    endpoint_error,
    reconstruction_l1,
    sobel_edges,
)
from nmr.training.supervised import registration_config


def _uses(modules: str, who: str) -> bool:
    return modules == 'both' or modules == who


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision (CPU, or amp off)."""
    if device.type != 'cuda' or cfg.run.amp == 'off':
        return None
    if cfg.run.amp == 'fp16':
        return torch.float16
    if cfg.run.amp == 'bf16' or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class NemarSystem:
    """The three networks, their optimisers and schedulers, and `train_step` / `infer`."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device | str = 'cpu', distributed: bool = False
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.baseline = cfg.loss.baseline != 'none'
        self.R = build_registration(registration_config(cfg))
        # NeMAR fine-tuning from a warm start: R frozen while T and D catch up (optim.freeze_registration_epochs).
        self.registration_frozen = False
        self.T: TranslationNet | None = None
        self.D: PatchDiscriminator | None = None
        if not self.baseline:
            self.T = TranslationNet(3, 1, cfg.model.translation_ngf, cfg.model.translation_blocks)
            self.D = PatchDiscriminator(1 + 3, cfg.model.discriminator_ndf, cfg.model.discriminator_layers)
        self.channels_last = cfg.run.channels_last and self.device.type == 'cuda'
        for net in self.networks().values():
            net.to(self.device)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        lr_r = cfg.optim.lr_registration or cfg.optim.lr
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.Adam(net.parameters(), lr=lr_r if name == 'registration' else cfg.optim.lr, betas=betas)
            for name, net in self.networks().items()
        }
        self.amp = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp == torch.float16)
        self.gan = GANLoss(cfg.loss.gan_mode)
        self.distributed = distributed
        self._wrapped: dict[str, nn.Module] = dict(self.networks())
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == 'cuda' else None
            self._wrapped = {
                name: DistributedDataParallel(net, device_ids=ids) for name, net in self.networks().items()
            }
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
            for name, opt in self.optimizers.items()
        }

    # -- bookkeeping --------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {'registration': self.R}
        if self.T is not None and self.D is not None:
            nets['translation'] = self.T
            nets['discriminator'] = self.D
        return nets

    def lr_factor(self, epoch: int) -> float:
        """Constant for the first `decay_start` of the epochs, then linearly to 0 (pix2pix 'linear')."""
        total = self.cfg.optim.epochs
        keep = round(total * self.cfg.optim.decay_start)
        if epoch < keep:
            return 1.0
        return max(0.0, 1.0 - (epoch - keep + 1) / float(total - keep + 1))

    def train(self, mode: bool = True) -> None:
        for net in self.networks().values():
            net.train(mode)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: net.state_dict() for name, net in self.networks().items()}

    def training_state(self) -> dict[str, Any]:
        return {
            'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
            'schedulers': {k: s.state_dict() for k, s in self.schedulers.items()},
            'scaler': self.scaler.state_dict(),
        }

    def load(self, state: dict[str, dict[str, torch.Tensor]], training: dict[str, Any] | None = None) -> None:
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        if training:
            for k, o in self.optimizers.items():
                o.load_state_dict(training['optimizers'][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(training['schedulers'][k])
            if training.get('scaler'):
                self.scaler.load_state_dict(training['scaler'])

    def _autocast(self) -> Any:
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, wrapped: bool = True
    ) -> dict[str, torch.Tensor]:
        """phi, the registered moving image and the fakes of the configured flows (all network size)."""
        nets = self._wrapped if wrapped else self.networks()
        flows = self.cfg.loss.flows
        out: dict[str, torch.Tensor] = {}
        with self._autocast():
            with torch.no_grad() if self.registration_frozen else nullcontext():
                phi = nets['registration'](moving, fixed).float()
            out['flow'] = phi
            out['registered'], out['valid'] = warp(moving, phi)
            if self.baseline:
                if self.cfg.loss.baseline in ('ncc_edges', 'ssim_edges'):
                    out['registered_edges'] = warp(sobel_edges(moving.float()), phi)[0]
                return out
            if flows in ('both', 'translate_first'):
                out['translated'] = nets['translation'](moving)
                out['fake_rt'] = warp(out['translated'], phi)[0]  # R o T: R_S(T(a), phi)
            if flows in ('both', 'register_first'):
                out['fake_tr'] = nets['translation'](out['registered'])  # T o R: T(R_S(a, phi))
        return out

    def val_loss(self, out: dict[str, torch.Tensor], moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Reconstruction L1 (NeMAR) or the baseline's similarity loss, as in the training step."""
        lc = self.cfg.loss
        if self.baseline:
            return baseline_similarity_loss(
                lc.baseline,
                out['registered'].float(),
                out.get('registered_edges'),
                fixed.float(),
                lc.ncc_window,
                lc.ssim_window,
            )
        fakes = self.fakes(out)
        mask = self.recon_mask(out)
        total = sum((reconstruction_l1(f, fixed, mask) for f in fakes), torch.zeros((), device=self.device))
        return total / max(1, len(fakes))

    def recon_mask(self, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Where L_recon is measured: R_S's validity mask (`loss.mask_invalid`), else everywhere."""
        return out['valid'] if self.cfg.loss.mask_invalid else None

    def fakes(self, out: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [out[k] for k in ('fake_rt', 'fake_tr') if k in out]

    # -- one iteration ------------------------------------------------------------------------------
    def train_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The Trainer's entry point. Only `loss.objective=mixed` passes the batch's ground truth on (to a
        separate supervised term); the NeMAR losses never see it."""
        truth = None
        if self.cfg.loss.objective == 'mixed' and 'gt_net' in batch:
            truth = (batch['gt_net'].to(self.device), batch['valid_net'].to(self.device))
        return self.train_step(batch['moving'], batch['fixed'], truth)

    def train_step(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        truth: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One D step then one joint R+T step; returns detached scalar losses (local to this process).

        `truth` (ground-truth flow and validity on the network grid) adds `lambda_supervised` x its EPE to
        R's loss (`loss.objective=mixed`); without it the step is the paper's, ground-truth free.
        """
        cfg = self.cfg.loss
        moving, fixed = self._to_device(moving), self._to_device(fixed)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        out = self.forward(moving, fixed)
        logs: dict[str, torch.Tensor] = {}
        smooth = bilateral_smoothness(
            out['flow'], out['registered'].float(), cfg.bilateral_alpha, cfg.bilateral
        )
        logs['smooth'] = smooth.detach()

        if self.baseline:
            sim = baseline_similarity_loss(
                cfg.baseline,
                out['registered'].float(),
                out.get('registered_edges'),
                fixed.float(),
                cfg.ncc_window,
                cfg.ssim_window,
            )
            loss_r = cfg.lambda_similarity * sim + cfg.lambda_smooth * smooth
            logs['similarity'] = sim.detach()
            logs['loss_R'] = loss_r.detach()
            self.scaler.scale(loss_r).backward()
            self._step(['registration'])
            self.scaler.update()
            return logs

        assert self.D is not None
        fakes = self.fakes(out)
        # D step: real (b | a) vs fakes (detached), one forward over the concatenated batch.
        with self._autocast():
            n = len(fakes)
            cand = torch.cat([fixed] + [f.detach().to(fixed.dtype) for f in fakes])
            cond = torch.cat([moving] * (n + 1))
            logits = self._wrapped['discriminator'](cand, cond)
        b = fixed.shape[0]
        loss_d_real = self.gan(logits[:b], True)
        loss_d_fake = sum(self.gan(logits[b * (i + 1) : b * (i + 2)], False) for i in range(n)) / n
        loss_d = 0.5 * (loss_d_real + loss_d_fake)
        self.scaler.scale(loss_d).backward()
        self._step(['discriminator'])
        logs['loss_D'] = loss_d.detach()

        # R + T step: D frozen and unwrapped (no gradient, no DDP bookkeeping for it here).
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                gan_terms = [self.gan(self.D(f, moving), True) for f in fakes]
            gan = sum(gan_terms, torch.zeros((), device=self.device))
            recon = sum(
                (reconstruction_l1(f, fixed, self.recon_mask(out)) for f in fakes),
                torch.zeros((), device=self.device),
            )
            logs['gan'] = gan.detach()
            logs['recon'] = recon.detach()
            terms = {'gan': cfg.lambda_gan * gan, 'l1': cfg.lambda_recon * recon}
            sel_r = [k for k, mods in (('gan', cfg.gan_modules), ('l1', cfg.l1_modules)) if _uses(mods, 'R')]
            sel_t = [k for k, mods in (('gan', cfg.gan_modules), ('l1', cfg.l1_modules)) if _uses(mods, 'T')]
            smooth_term = cfg.lambda_smooth * smooth
            if truth is not None and not self.registration_frozen:
                supervised = endpoint_error(out['flow'], truth[0], truth[1])
                logs['supervised_epe'] = supervised.detach()
                smooth_term = smooth_term + cfg.lambda_supervised * supervised
            loss_r = sum((terms[k] for k in sel_r), smooth_term)
            logs['loss_G'] = (terms['gan'] + terms['l1'] + smooth_term).detach()
            if self.registration_frozen:
                loss_t = sum((terms[k] for k in sel_t), torch.zeros((), device=self.device))
                self.scaler.scale(loss_t).backward()
            elif sel_r == sel_t:
                self.scaler.scale(loss_r).backward()
            else:
                assert self.T is not None
                loss_t = sum((terms[k] for k in sel_t), torch.zeros((), device=self.device))
                self.scaler.scale(loss_r).backward(inputs=list(self.R.parameters()), retain_graph=True)
                self.scaler.scale(loss_t).backward(inputs=list(self.T.parameters()))
        finally:
            self.D.requires_grad_(True)
        self._step(['registration', 'translation'])
        self.scaler.update()
        return logs

    def _step(self, names: list[str]) -> None:
        clip = self.cfg.optim.grad_clip
        for name in names:
            opt = self.optimizers[name]
            if clip > 0:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.networks()[name].parameters(), clip)
            self.scaler.step(opt)

    def step_schedulers(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def parameters(self) -> Iterator[nn.Parameter]:
        for net in self.networks().values():
            yield from net.parameters()
