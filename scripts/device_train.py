#!/usr/bin/env python3
"""The GPU recipe: every training run of one session at once on one GPU, within a wall-clock budget.

Why this shape: a lent GPU machine comes for minutes, not hours, and the network is small (0.8 M
parameters at 128 x 160), so one run alone leaves the GPU mostly idle and is bound by the CPU that makes
the synthetic misalignments. All runs start together; a short probe (all runs, 2 short epochs) measures
each run's steps per second under that shared load, and each run then gets as many steps as fit in the
budget, with its one-cycle schedule sized to them (so every run ends annealed, not cut off). A run still
going at the hard deadline is stopped (SIGINT: the trainer's checkpoints are whole) and its last
`epoch_*.pt` is taken.

The runs (issue 19):
  lwir_default   rgb_lwir from --init-lwir (the shipped model), every family, roadscene + llvip
  depth_default  rgb_depth from --init-depth (the shipped model), every family, rgbdd (robust normalisation)
  lofo_<family>  rgb_lwir from --lofo-init (or from scratch) with one base family left out (also out of
                 `composite`): the leave-one-family-out table
  lofo_none      the same with every family: the control for the table
Data: the training split made by scripts/pack_training_data.py (val_fraction 0 here: the copy IS the split).
Validation: none on the device; evaluate the returned models with scripts/evaluate_default_models.sh and
scripts/evaluate_lofo.sh here.

    usage: scripts/device_train.py --data gpu_pack/data --out OUT --budget-s 330 [--device cuda]
                                   [--only NAME ...] [--probe-steps 20]
Writes OUT/<run>.pt (R_Phi of the last epoch) and OUT/logs.tar.gz (each run's log, metrics.jsonl,
config.yaml, and plan.json: the probe's rates and the steps given).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))  # a bare GPU machine has the checkout, not an installed nmr

from nmr.training.families import BASE_FAMILIES  # noqa: E402 (after the path above)

SNAPSHOTS = 4  # R_Phi snapshots per main run (epoch_*.pt); the last one is shipped


@dataclass
class Run:
    name: str
    pair: str
    args: list[str]
    batch: int
    workers: int
    settings: list[str] = field(default_factory=list)


def runs(data: Path, init_lwir: Path, init_depth: Path, lofo_init: Path | None, lofo: list[str]) -> list[Run]:
    road = ['--pairs', str(data / 'roadscene/moving'), str(data / 'roadscene/fixed')]
    llvip = ['--pairs', str(data / 'llvip/moving'), str(data / 'llvip/fixed')]
    # roadscene 174 + llvip 12 pairs: listed 4x / 12x so an epoch is ~840 pairs with llvip ~15 % of them
    # (each listing draws its own misalignments).
    lwir_data = road * 4 + llvip * 12
    rgbdd = ['--pairs', str(data / 'rgbdd/moving'), str(data / 'rgbdd/fixed')]
    depth_data = [*rgbdd * 3, '--moving-suffix', '_RGB', '--fixed-suffix', '_HR_gt']
    out = [
        Run('lwir_default', 'rgb_lwir', [*lwir_data, '--init', str(init_lwir)], 32, 3, ['optim.lr=2e-4']),
        Run('depth_default', 'rgb_depth', [*depth_data, '--init', str(init_depth)], 32, 3,
            ['optim.lr=2e-4', 'data.normalisation.mode=robust']),
    ]
    if lofo_init is None:  # from scratch: the encoders are pre-trained for matching first
        start, lofo_settings = [], ['optim.lr=6e-4', 'loss.contrastive_only_steps=300']
    else:
        start, lofo_settings = ['--init', str(lofo_init)], ['optim.lr=2e-4']
    for held in lofo:
        families = [f for f in BASE_FAMILIES if f != held] + ['composite']
        out.append(Run(f'lofo_{held}', 'rgb_lwir', [*lwir_data, *start], 16, 2,
                       [*lofo_settings, 'augment.warmup_epochs=2', 'augment.warmup_start=0.5',
                        f'augment.families=[{",".join(families)}]']))
    return out


COMMON = [
    'model.registration.arch=corr', 'loss.objective=supervised', 'augment.enabled=true',
    'augment.families=[affine,homography,nonrigid,distortion,composite]', 'optim.schedule=onecycle',
    'optim.weight_decay=1e-4', 'loss.contrastive_only_steps=0', 'data.net_hw=[128,160]', 'data.val_fraction=0',
    'run.threads=1', "run.amp='off'", 'run.log_every=50', 'run.val_every=1000000',
]


def command(run: Run, out: Path, epochs: int, steps: int, keep_every: int, device: str) -> list[str]:
    sets = [*COMMON, f'optim.batch_size={run.batch}', f'data.workers={run.workers}', f'run.device={device}',
            f'optim.epochs={epochs}', f'run.steps_per_epoch={steps}', f'run.keep_every={keep_every}',
            *run.settings]
    cmd = [sys.executable, '-c', 'import sys; from nmr.cli.main import main; sys.exit(main())', 'train',
           '--config', str(ROOT / 'config/train.yaml'), '--pair', run.pair, *run.args, '--out', str(out)]
    for s in sets:
        cmd += ['--set', s]
    return cmd


def launch(runs_: list[Run], root: Path, plan: dict[str, dict], device: str) -> dict[str, subprocess.Popen]:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
           'PYTHONPATH': f'{ROOT / "src"}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'}
    procs = {}
    for run in runs_:
        p = plan[run.name]
        out = root / run.name
        out.mkdir(parents=True, exist_ok=True)
        log = open(root / f'{run.name}.log', 'ab')  # noqa: SIM115 (closed with the process)
        procs[run.name] = subprocess.Popen(command(run, out, p['epochs'], p['steps_per_epoch'], p['keep_every'],
                                                   device), stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=ROOT, start_new_session=True)
    return procs


def wait(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            print(f'{name}: past the deadline, stopping it (its last epoch file is kept)', flush=True)
            os.killpg(p.pid, signal.SIGINT)
    for p in procs.values():
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return {name: p.returncode for name, p in procs.items()}


def train_pairs(log: Path) -> int:
    for line in log.read_text(errors='replace').splitlines():
        if ' train / ' in line and 'training ' in line:
            return int(line.split(':', 1)[1].split(' train / ')[0].split()[-1])
    raise SystemExit(f'{log}: no "training ..." line (see the log)')


def probe(runs_: list[Run], root: Path, steps: int, device: str) -> dict[str, float]:
    """Steps per second of each run while all of them run (2 epochs of `steps`; the second one counts)."""
    plan = {r.name: {'epochs': 2, 'steps_per_epoch': steps, 'keep_every': 0} for r in runs_}
    codes = wait(launch(runs_, root, plan, device), time.time() + 240)
    rates = {}
    for r in runs_:
        metrics = root / r.name / 'metrics.jsonl'
        if codes[r.name] != 0 or not metrics.is_file():
            tail = (root / f'{r.name}.log').read_text(errors='replace')[-1500:]
            raise SystemExit(f'probe of {r.name} failed (exit {codes[r.name]}):\n{tail}')
        rates[r.name] = json.loads(metrics.read_text().splitlines()[-1])['steps_per_s']
        rates[r.name + ':pairs'] = train_pairs(root / f'{r.name}.log')
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', type=Path, required=True)
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--work', type=Path, default=Path('/tmp/nmr_device_runs'))
    ap.add_argument('--budget-s', type=float, required=True, help='wall time for the main runs')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--probe-steps', type=int, default=20)
    ap.add_argument('--only', nargs='*', default=None, help='run only these (names as in the module doc)')
    ap.add_argument('--init-lwir', type=Path, default=ROOT / 'models/rgb_lwir.pt')
    ap.add_argument('--init-depth', type=Path, default=ROOT / 'models/rgb_depth.pt')
    ap.add_argument('--lofo-init', type=Path, default=None,
                    help='warm start of the leave-one-family-out runs (default: from scratch); it must not have '
                         'been trained on the families held out')
    ap.add_argument('--lofo', nargs='*', default=[*BASE_FAMILIES, 'none'],
                    help='the families to hold out, one run each (none = the control with every family)')
    args = ap.parse_args()
    todo = [r for r in runs(args.data, args.init_lwir, args.init_depth, args.lofo_init, args.lofo)
            if args.only is None or r.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rates = probe(todo, args.work / 'probe', args.probe_steps, args.device)
    probe_s = time.time() - t0
    plan: dict[str, dict] = {}
    for r in todo:
        # 85 % of the budget at the probed rate; start-up (~probe's first epoch) comes out of the rest
        total = int(rates[r.name] * args.budget_s * 0.85)
        loader = max(1, int(rates[r.name + ':pairs']) // r.batch)
        epochs = SNAPSHOTS * max(1, -(-total // (loader * SNAPSHOTS)))
        per_epoch = max(1, min(loader, total // epochs))
        plan[r.name] = {'epochs': epochs, 'steps_per_epoch': per_epoch, 'keep_every': epochs // SNAPSHOTS,
                        'probe_steps_per_s': rates[r.name], 'steps': per_epoch * epochs, 'batch': r.batch}
    print(f'probe {probe_s:.0f} s; plan ' + json.dumps(plan), flush=True)
    t1 = time.time()
    codes = wait(launch(todo, args.work / 'main', plan, args.device), t1 + args.budget_s * 1.25)
    for r in todo:
        plan[r.name]['exit'] = codes[r.name]
        plan[r.name]['wall_s'] = round(time.time() - t1)
        snaps = sorted((args.work / 'main' / r.name).glob('epoch_*.pt'))
        if snaps:
            os.replace(snaps[-1], args.out / f'{r.name}.pt')
            plan[r.name]['shipped'] = snaps[-1].name
    (args.work / 'plan.json').write_text(json.dumps(plan, indent=1))
    with tarfile.open(args.out / 'logs.tar.gz', 'w:gz') as tar:
        tar.add(args.work / 'plan.json', 'plan.json')
        for stage in ('probe', 'main'):
            for r in todo:
                for f in (f'{r.name}.log', f'{r.name}/metrics.jsonl', f'{r.name}/config.yaml'):
                    if (args.work / stage / f).is_file():
                        tar.add(args.work / stage / f, f'{stage}/{f}')
    print(f'done in {time.time() - t0:.0f} s: ' + json.dumps({k: (v.get('exit'), v.get('shipped'))
                                                                for k, v in plan.items()}), flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
