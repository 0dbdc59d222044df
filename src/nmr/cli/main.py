"""`nmr <verb>`: dispatches to the verb's module so that `nmr --help` stays fast (no torch import).

Each verb module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from nmr.atomic import is_disk_full
from nmr.errors import DISK_FULL, NmrUserError

# verb -> (module, one-line help). Modules are imported lazily.
VERBS: dict[str, tuple[str, str]] = {
    'demo': ('nmr.demo', 'the main job: synthetic rig -> registration pipeline -> outputs, in one folder'),
    'synth': ('nmr.synth.cli', 'render a synthetic RGB + LWIR + depth rig into a rosbag2 bag (with ground truth)'),
    'calibrate': ('nmr.calibration.cli', 'estimate the rig (poses, LWIR focal and time offset) from unlabelled bags'),
    'train': ('nmr.training.cli', 'train R (and T, D) from rosbag2 bags or an image-pair manifest'),
    'export': ('nmr.inference.export_cli', 'export R_Phi to ONNX (and a TensorRT engine where available)'),
    'evaluate': ('nmr.evaluation.cli', 'EPE and landmark error of a model on a manifest of image pairs'),
    'register-bag': ('nmr.pipeline.register_bag', 'offline: input bag(s) in, bag with the node outputs out'),
    'play': ('nmr.ros.play', "publish a bag's image and camera_info topics with recorded timing (no rosbag2 needed)"),
    'topics': ('nmr.ros.topics_cli', 'list the ROS 2 topics, or one topic\'s rate and bandwidth (ros2 topic hz/bw)'),
    'param': ('nmr.ros.param_cli', 'list, get, set or describe a running node\'s parameters (ros2 param)'),
    'recover-bag': ('nmr.data.bag_recover', 'copy the readable messages of a cut or damaged bag into a valid one'),
    'bench': ('nmr.bench.cli', 'latency and throughput per backend, resolution and model'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='nmr', description='Learned RGB / thermal / depth registration.')
    sub = parser.add_subparsers(dest='verb', metavar='VERB')
    for verb, (_module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb. Called without `argv` (the `nmr` program itself), it also owns the process's signals:
    SIGTERM is handled like SIGINT, and a signal after the verb has finished is ignored (it used to turn into
    a KeyboardInterrupt traceback during interpreter exit)."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints help / the unknown-verb error and exits
        return 2
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f'nmr {verb}', description=VERBS[verb][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    with _signals(program):
        return _run(verb, module, args)


def _run(verb: str, module: Any, args: argparse.Namespace) -> int:
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt as err:  # a verb may say what it kept: KeyboardInterrupt('OUT/last.pt holds ...')
        print(f'nmr {verb}: interrupted' + (f'; {err}' if str(err) else ''), file=sys.stderr)
        return 130
    except NmrUserError as err:
        print(f'nmr {verb}: error: {one_line(err)}', file=sys.stderr)
        return 2
    except OSError as err:
        print(f'nmr {verb}: error: {os_error_line(err)}', file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch.save reports a full disk as RuntimeError ("enforce fail ...")
        if not is_disk_full(err):
            raise
        print(f'nmr {verb}: error: no space left on device while writing; free disk space or write '
              'elsewhere', file=sys.stderr)
        return 2


def os_error_line(err: OSError) -> str:
    """One line for an OSError that ended a verb: what failed, on which path, and what to do."""
    where = f' ({err.filename})' if err.filename else ''
    if err.errno in DISK_FULL:
        return (f'{err.strerror}{where}; free disk space (or raise the file-size limit) or write elsewhere')
    return f'{err.strerror or err}{where}: check the path and its permissions, or choose another'


class _Interrupt:
    """SIGTERM like SIGINT: the first one raises KeyboardInterrupt; later ones are ignored so that they
    cannot interrupt the clean-up that the first one started (removing or finishing an output)."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, _signum: int, _frame: Any) -> None:
        if not self.raised:
            self.raised = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def _signals(program: bool) -> Iterator[None]:
    if not program:  # called in-process (tests, other tools): the caller's signal handling stays
        yield
        return
    handler = _Interrupt()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    try:
        yield
    finally:  # the verb is over: a late signal must not become a traceback during interpreter exit
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def one_line(err: BaseException) -> str:
    """The error's own line. Re-raised from a DataLoader worker, a user error carries the worker's whole
    traceback in its message ("Caught X in DataLoader worker ... Original Traceback ..."): its last line
    is the original message."""
    text = str(err).strip()
    if '\nOriginal Traceback' in text:
        text = text.splitlines()[-1].split(': ', 1)[-1]
    return ' '.join(line.strip() for line in text.splitlines() if line.strip())  # e.g. a YAML error's context



if __name__ == '__main__':
    sys.exit(main())
