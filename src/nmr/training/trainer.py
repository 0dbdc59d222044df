"""The training loop: data, epochs, validation, checkpoints, progress and TensorBoard; single process or DDP.

Launch: `nmr train ...` (one process) or `torchrun --nproc_per_node N -m nmr.cli.main train ...` (DDP:
NCCL on CUDA, gloo on CPU; each process takes `optim.batch_size` pairs per step).

Files in the output folder:
- `last.pt`: full training state (R, T, D, optimisers, schedulers, scaler, epoch), written atomically
  after every epoch; `--resume` continues from it.
- `best.pt`: R_Phi only (the deployable model), whenever the validation score improves (EPE when the data
  has ground truth, else the validation reconstruction / similarity loss).
- `epoch_NNN.pt`: R_Phi only, every `run.keep_every` epochs.
- `config.yaml` (the resolved config), `tb/` (TensorBoard), `metrics.jsonl` (one line per epoch).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from nmr import __version__, atomic
from nmr.domain import PAIR_FIXED_KIND
from nmr.errors import ConfigError, NmrUserError
from nmr.models.checkpoint import ModelMetadata, read_checkpoint, save_checkpoint
from nmr.models.resampler import flow_to_native
from nmr.training.config import TrainConfig, config_to_dict, dump_config
from nmr.training.data import EpochTaggedSampler, TrainingPairs, collate
from nmr.training.distributed import DistInfo, all_reduce_mean, all_reduce_sum, init_distributed, pick_device
from nmr.training.losses import endpoint_error
from nmr.training.step import NemarSystem
from nmr.training.supervised import SupervisedSystem

FIXED_KIND = PAIR_FIXED_KIND
# Supervised updates skipped in a row for a non-finite gradient before a run is stopped (one bad batch is
# skipped; a run that cannot produce a finite gradient any more is not trained on silently).
MAX_CONSECUTIVE_SKIPS = 25


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '--:--'
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


@dataclass
class TrainData:
    """Train and validation FramePair datasets plus a plain summary for checkpoint metadata."""

    train: Any
    val: Any
    summary: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs `cfg.optim.epochs` epochs of `NemarSystem.train_step` with validation and checkpoints."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        out_dir: str | Path,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
        init: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info = init_distributed(
            'cuda'
            if (cfg.run.device.startswith('cuda') or (cfg.run.device == 'auto' and torch.cuda.is_available()))
            else 'cpu'
        )
        self.device = pick_device(cfg.run.device, self.info)
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % (2**32))
        self.fixed_kind = FIXED_KIND[cfg.data.pair]
        self.data = data
        if len(data.train) == 0:
            raise ConfigError('no training pairs: check the data source (bag topics, manifest, folders)')
        self.train_set = TrainingPairs(
            data.train,
            self.fixed_kind,
            cfg.data.net_hw,
            cfg.data.normalisation,
            cfg.augment,
            seed=cfg.run.seed,
            net_grid_truth=cfg.loss.objective != 'nemar',
        )
        val = data.val
        if val is not None and cfg.run.val_max_pairs > 0 and len(val) > cfg.run.val_max_pairs:
            val = Subset(val, range(cfg.run.val_max_pairs))
        self.val_set = (
            TrainingPairs(
                val,
                self.fixed_kind,
                cfg.data.net_hw,
                cfg.data.normalisation,
                cfg.augment,
                seed=cfg.run.seed,
                deterministic=True,
            )
            if val is not None and len(val) > 0
            else None
        )
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            self.train_set,
            num_replicas=self.info.world,
            rank=self.info.rank,
            shuffle=True,
            seed=cfg.run.seed,
            drop_last=True,
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=cfg.optim.batch_size,
            sampler=EpochTaggedSampler(self.sampler, len(self.train_set)),
            num_workers=cfg.data.workers,
            collate_fn=collate,
            drop_last=True,
            pin_memory=self.device.type == 'cuda',
            persistent_workers=cfg.data.workers > 0,
            worker_init_fn=_ignore_stop_signals,
        )
        if len(self.loader) == 0:
            raise ConfigError(
                f'{len(self.train_set)} training pairs are fewer than one batch '
                f'({cfg.optim.batch_size} x {self.info.world} processes); lower optim.batch_size'
            )
        self.steps_per_epoch = (
            len(self.loader)
            if cfg.run.steps_per_epoch <= 0
            else min(len(self.loader), cfg.run.steps_per_epoch)
        )
        warm = self._read_init(Path(init)) if init is not None and not resume else None
        self.system: Any = build_system(cfg, self.device, self.info, self.steps_per_epoch * cfg.optim.epochs)
        self.start_epoch = 0
        self.global_step = 0
        self.consecutive_skips = 0
        self.best: float | None = None
        self.writer: Any = None
        if resume:
            self._resume()
        elif warm is not None:
            self.system.R.load_state_dict(warm.state['registration'])
            if self.info.main:
                self._log(f'R_Phi initialised from {init} ({self.system.R.config.arch})')

    # -- checkpoints --------------------------------------------------------------------------------
    def metadata(self) -> ModelMetadata:
        from nmr.data.preprocess import normalisation_dict, normalisation_for

        norm = normalisation_dict(normalisation_for(self.fixed_kind, self.cfg.data.normalisation or None))
        return ModelMetadata(
            pair=self.cfg.data.pair,
            registration=self.system.R.config.to_dict(),
            normalisation=norm,
            net_hw=(int(self.cfg.data.net_hw[0]), int(self.cfg.data.net_hw[1])),
            train_data={
                **self.data.summary,
                'train_pairs': len(self.train_set),
                'val_pairs': len(self.val_set) if self.val_set is not None else 0,
                'augment': self.cfg.augment.enabled,
                'families': list(self.cfg.augment.families) if self.cfg.augment.enabled else [],
                'epochs': self.cfg.optim.epochs,
                'loss': {
                    'objective': self.cfg.loss.objective,
                    'flows': self.cfg.loss.flows,
                    'baseline': self.cfg.loss.baseline,
                    'bilateral': self.cfg.loss.bilateral,
                },
            },
            nmr_version=__version__,
        )

    def _save(self, epoch: int, metrics: dict[str, float]) -> None:
        meta = self.metadata()
        r_only = {'registration': self.system.R.state_dict()}
        extra = {
            'epoch': epoch + 1,
            'global_step': self.global_step,
            'best': self.best,
            'config': config_to_dict(self.cfg),
            'metrics': metrics,
            **self.system.training_state(),
        }
        save_checkpoint(self.out / 'last.pt', self.system.state(), meta, extra)
        if self.cfg.run.keep_every > 0 and (epoch + 1) % self.cfg.run.keep_every == 0:
            save_checkpoint(
                self.out / f'epoch_{epoch + 1:03d}.pt', r_only, meta, {'epoch': epoch + 1, 'metrics': metrics}
            )

    def _read_init(self, path: Path) -> Any:
        """The warm-start checkpoint (`--init`), checked against the pair; its R_Phi architecture is adopted."""
        if not path.exists():
            raise ConfigError(f'--init: {path} does not exist; give a checkpoint written by nmr train')
        ckpt = read_checkpoint(path, map_location='cpu')
        if ckpt.metadata.pair != self.cfg.data.pair:
            raise ConfigError(f'--init: {path} is for pair {ckpt.metadata.pair}, not {self.cfg.data.pair}')
        if 'registration' not in ckpt.state:
            raise ConfigError(f'--init: {path} holds no R_Phi weights; give a checkpoint written by nmr train')
        self.cfg.model.registration = dict(ckpt.metadata.registration)
        return ckpt

    def _resume(self) -> None:
        path = self.out / 'last.pt'
        if not path.exists():
            raise ConfigError(f'--resume: {path} does not exist; train without --resume first')
        ckpt = read_checkpoint(path, map_location=self.device)
        saved = ckpt.metadata.registration
        if saved != self.system.R.config.to_dict():
            raise ConfigError(
                f'--resume: {path} was trained with registration {saved}, the config asks for '
                f'{self.system.R.config.to_dict()}; use the same model.registration'
            )
        if ckpt.metadata.pair != self.cfg.data.pair:
            raise ConfigError(f'--resume: {path} is for pair {ckpt.metadata.pair}, not {self.cfg.data.pair}')
        missing = set(self.system.networks()) - set(ckpt.state)
        if missing:
            raise ConfigError(f'--resume: {path} lacks {sorted(missing)} (is it a best/epoch file?)')
        self.system.load(ckpt.state, ckpt.extra)
        self.start_epoch = int(ckpt.extra.get('epoch', 0))
        self.global_step = int(ckpt.extra.get('global_step', 0))
        self.best = ckpt.extra.get('best')
        if self.info.main:
            self._log(f'resumed from {path} at epoch {self.start_epoch}, step {self.global_step}')

    # -- logging ------------------------------------------------------------------------------------
    def _open_writer(self) -> None:
        if not self.info.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: progress lines and metrics.jsonl still work
            self._log('tensorboard is not installed: no TensorBoard logs (pip install tensorboard)')
            return
        self.writer = SummaryWriter(str(self.out / 'tb'))

    def _scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f'{prefix}/{k}', v, step)

    # -- main loop ----------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to `optim.epochs` (or stop after epoch `stop_after_epoch`, as an interruption would)."""
        cfg = self.cfg
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.out / 'config.yaml', dump_config(cfg))
        self._open_writer()
        steps = self.steps_per_epoch
        total_steps = steps * (cfg.optim.epochs - self.start_epoch)
        if self.info.main:
            self._log(
                f'training {cfg.data.pair} on {self.device} x{self.info.world}: '
                f'{len(self.train_set)} train / {len(self.val_set) if self.val_set else 0} val pairs, '
                f'net {cfg.data.net_hw[1]}x{cfg.data.net_hw[0]}, R={self.system.R.config.arch}, '
                f'objective {cfg.loss.objective}, '
                f'epochs {self.start_epoch}->{cfg.optim.epochs}, {steps} steps/epoch'
            )
        t_start = time.perf_counter()
        done = 0
        last_metrics: dict[str, float] = {}
        end = cfg.optim.epochs if stop_after_epoch is None else min(cfg.optim.epochs, stop_after_epoch)
        for epoch in range(self.start_epoch, end):
            self.loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            self.train_set.set_epoch(epoch)
            self.system.train(True)
            if hasattr(self.system, 'registration_frozen'):
                self.system.registration_frozen = epoch < cfg.optim.freeze_registration_epochs
            running: dict[str, torch.Tensor] = {}
            epoch_sums: dict[str, float] = {}
            n_running = 0
            t_epoch = time.perf_counter()
            data_wait = 0.0
            t_wait = time.perf_counter()
            for i, batch in enumerate(self.loader):
                if i >= steps:
                    break
                data_wait += time.perf_counter() - t_wait
                logs = self.system.train_batch(batch)
                self._check_finite(logs, epoch, i)
                t_wait = time.perf_counter()
                for k, v in logs.items():
                    running[k] = running.get(k, torch.zeros((), device=v.device)) + v
                n_running += 1
                self.global_step += 1
                done += 1
                if (i + 1) % cfg.run.log_every == 0 or i + 1 == steps or done == 1:
                    avg = all_reduce_mean({k: v / n_running for k, v in running.items()}, self.info)
                    for k, v in avg.items():
                        epoch_sums[k] = epoch_sums.get(k, 0.0) + v * n_running
                    running, n_running = {}, 0
                    elapsed = time.perf_counter() - t_start
                    eta = elapsed / done * (total_steps - done)
                    if self.info.main:
                        lr = self.system.optimizers['registration'].param_groups[0]['lr']
                        body = ' '.join(f'{k} {v:.4g}' for k, v in sorted(avg.items()))
                        self._log(
                            f'epoch {epoch + 1}/{cfg.optim.epochs} step {i + 1}/{steps} {body} '
                            f'lr {lr:.2e} {done / elapsed:.2f} it/s ETA {_fmt_time(eta)}'
                        )
                        self._scalars('train', {**avg, 'lr': lr}, self.global_step)
            self.system.step_schedulers()
            epoch_s = time.perf_counter() - t_epoch
            metrics: dict[str, float] = {}
            if self.val_set is not None and (epoch + 1) % cfg.run.val_every == 0:
                metrics = self.validate(epoch)
            train_stats = {f'train_{k}': v / max(1, steps) for k, v in epoch_sums.items()}
            train_stats['steps_per_s'] = steps / max(epoch_s, 1e-9)
            train_stats['data_wait_frac'] = data_wait / max(epoch_s, 1e-9)
            score = metrics.get('epe', metrics.get('val_loss'))
            improved = score is not None and (self.best is None or score < self.best)
            if improved:
                self.best = score
            if self.info.main:
                self._save(epoch, metrics)
                if improved or (score is None and epoch + 1 == cfg.optim.epochs):
                    save_checkpoint(
                        self.out / 'best.pt',
                        {'registration': self.system.R.state_dict()},
                        self.metadata(),
                        {'epoch': epoch + 1, 'metrics': metrics},
                    )
                record = {'epoch': epoch + 1, 'step': self.global_step, **metrics, **train_stats}
                _append_line(self.out / 'metrics.jsonl', json.dumps({k: _rounded(v) for k, v in record.items()}))
                if metrics:
                    self._log(
                        f'epoch {epoch + 1} validation: '
                        + ' '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items()))
                        + (' (best)' if improved else '')
                    )
            last_metrics = metrics
        if self.writer is not None:
            self.writer.close()
        if self.info.enabled:
            dist.barrier()
        return {
            'epochs': cfg.optim.epochs,
            'steps': self.global_step,
            'best': self.best,
            'last': last_metrics,
        }

    def _check_finite(self, logs: dict[str, torch.Tensor], epoch: int, step: int) -> None:
        """Stop at the first non-finite loss term or weight (a non-finite gradient shows in the weights
        after the update; under fp16 the grad scaler skips such steps, so weights stay finite there).

        Nothing after the last finite epoch is saved: OUT/last.pt and best.pt stay as they were. One
        device sync per step; without it a NaN run ended `done` with a NaN best.pt.
        """
        names = [k for k in logs if k != 'skipped']
        flags = [torch.isfinite(logs[k].float()).all() for k in names]
        if 'skipped' in logs:  # updates skipped for a non-finite gradient (supervised): a few are tolerated
            flags.append(logs['skipped'] == 0)
        nets = self.system.networks()
        flags += [torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all() for net in nets.values()]
        ok = torch.stack(flags).cpu().tolist()
        if 'skipped' in logs:
            self.consecutive_skips = 0 if ok.pop(len(names)) else self.consecutive_skips + 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise TrainingDivergedError(
                    f'training stopped at epoch {epoch + 1} step {step + 1} (global step {self.global_step + 1}): '
                    f'{self.consecutive_skips} consecutive updates had a non-finite gradient and were skipped; '
                    f'{self.out / "last.pt"} holds the last finished epoch: check the data or lower optim.lr')
        bad = [float(not v) for v in ok]
        if self.info.enabled:  # every process stops together (a rank alone would leave the others waiting)
            bad = all_reduce_sum(bad, self.info)
        if not any(bad):
            return
        terms = [k for k, b in zip(names, bad) if b]
        weights = [k for k, b in zip(nets, bad[len(names):]) if b]
        what = (f'loss term(s) {", ".join(terms)}' if terms else
                f'the {", ".join(weights)} weights after the update (a non-finite gradient)')
        if self.writer is not None:
            self.writer.close()
        last = self.out / 'last.pt'
        kept = (f'{last} holds epoch {epoch}, the last finite '
                'state (nothing later was saved)' if last.is_file() else 'no checkpoint was written')
        raise TrainingDivergedError(
            f'training stopped at epoch {epoch + 1} step {step + 1} (global step {self.global_step + 1}): {what} '
            f'went non-finite (NaN/inf); {kept}: check the data (e.g. NaN ground truth) or lower optim.lr')

    # -- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        """EPE at native scale (and % of the identity's EPE) where ground truth exists; validation losses."""
        assert self.val_set is not None
        self.system.train(False)
        idx = list(range(self.info.rank, len(self.val_set), self.info.world))
        loader = DataLoader(
            Subset(self.val_set, idx),
            batch_size=self.cfg.optim.batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate,
        )
        sums = {'epe': 0.0, 'unregistered_epe': 0.0, 'gt_pairs': 0.0, 'loss': 0.0, 'loss_pairs': 0.0}
        images_logged = False
        for batch in loader:
            moving = batch['moving'].to(self.device)
            fixed = batch['fixed'].to(self.device)
            out = self.system.forward(moving, fixed, wrapped=False)
            b = moving.shape[0]
            sums['loss'] += float(self.system.val_loss(out, moving, fixed)) * b
            sums['loss_pairs'] += b
            for j in range(b):
                gt = batch['gt_flow'][j]
                if gt is None:
                    continue
                phi = flow_to_native(
                    out['flow'][j : j + 1].float(), batch['fixed_hw'][j], batch['moving_hw'][j]
                )
                gt = gt[None].to(self.device)
                valid = batch['valid'][j]
                valid = valid.to(self.device) if valid is not None else None
                sums['epe'] += float(endpoint_error(phi, gt, valid))
                # The unregistered reference of `nmr evaluate` and the demo: the moving image rescaled onto
                # the fixed grid, i.e. zero flow on the network grid mapped to native size.
                unregistered = flow_to_native(
                    torch.zeros_like(out['flow'][j : j + 1]).float(), batch['fixed_hw'][j], batch['moving_hw'][j]
                )
                sums['unregistered_epe'] += float(endpoint_error(unregistered, gt, valid))
                sums['gt_pairs'] += 1
            if (
                not images_logged
                and self.info.main
                and self.writer is not None
                and (epoch + 1) % max(1, self.cfg.run.image_every) == 0
            ):
                self._log_images(out, moving, fixed, epoch)
                images_logged = True
        keys = sorted(sums)
        reduced = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], self.info)))
        metrics: dict[str, float] = {}
        if reduced['loss_pairs'] > 0:
            metrics['val_loss'] = reduced['loss'] / reduced['loss_pairs']
        if reduced['gt_pairs'] > 0:
            metrics['epe'] = reduced['epe'] / reduced['gt_pairs']
            metrics['unregistered_epe'] = reduced['unregistered_epe'] / reduced['gt_pairs']
            metrics['epe_pct_unregistered'] = 100.0 * metrics['epe'] / max(metrics['unregistered_epe'], 1e-9)
        self._scalars('val', metrics, self.global_step)
        self.system.train(True)
        return metrics

    def _log_images(
        self, out: dict[str, torch.Tensor], moving: torch.Tensor, fixed: torch.Tensor, epoch: int
    ) -> None:
        """Rows of: moving, fixed, registered, T(a), R_S(T(a)), T(R_S(a)), flow colour (first 4 pairs)."""
        from nmr.flow import flow_to_rgb

        n = min(4, moving.shape[0])
        flows = out['flow'][:n].float().permute(0, 2, 3, 1).cpu().numpy()
        max_mag = float(max(1e-3, np.linalg.norm(flows, axis=-1).max()))
        columns = [moving[:n], fixed[:n], out['registered'][:n]]
        columns += [out[k][:n] for k in ('translated', 'fake_rt', 'fake_tr') if k in out]
        rows = []
        for j in range(n):
            tiles = [_to_rgb01(c[j]) for c in columns]
            tiles.append(torch.from_numpy(flow_to_rgb(flows[j], max_mag)).permute(2, 0, 1).float() / 255.0)
            rows.append(torch.cat(tiles, dim=2))
        grid = torch.cat(rows, dim=1)
        self.writer.add_image('val/moving_fixed_registered_T_RT_TR_flow', grid, epoch + 1)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process: a Ctrl-C or a SIGTERM to the whole
    process group used to kill a worker first and end the run with "DataLoader worker (pid N) is killed by
    signal" instead of the main process's clean stop (the workers exit with it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.excepthook = _quiet_when_parent_left


def _quiet_when_parent_left(kind: type[BaseException], err: BaseException, tb: Any) -> None:
    """A worker's tensor hand-over (multiprocessing's resource sharer thread, which reports through
    sys.excepthook) fails with a broken connection when the main process stops mid-transfer; that is the
    main process's clean stop, not an error to print as a traceback. Anything else is reported as usual."""
    if issubclass(kind, (ConnectionError, EOFError)):
        return
    sys.__excepthook__(kind, err, tb)


class TrainingDivergedError(NmrUserError):
    """A loss term or the weights went NaN / inf: training stopped, the last finite checkpoint kept."""


def _append_line(path: Path, line: str) -> None:
    """Append a line by rewriting the (small) file atomically: a full disk cannot leave half a line."""
    old = path.read_text() if path.is_file() else ''
    atomic.write_text(path, old + line + '\n')


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits for people and logs (metrics.jsonl, progress lines)."""
    return float(f'{value:.4g}') if isinstance(value, float) else value


def build_system(cfg: TrainConfig, device: torch.device, info: DistInfo, total_steps: int) -> Any:
    """The networks and update rule for `loss.objective`: NeMAR (also `mixed`) or supervised R alone."""
    if cfg.loss.objective == 'supervised':
        if info.enabled:
            raise ConfigError('loss.objective=supervised runs in one process; start it without torchrun')
        return SupervisedSystem(cfg, device, total_steps=total_steps)
    return NemarSystem(cfg, device, distributed=info.enabled)


def _to_rgb01(x: torch.Tensor) -> torch.Tensor:
    """CxHxW in [-1, 1] (C = 1 or 3) -> 3xHxW in [0, 1] on the CPU."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
