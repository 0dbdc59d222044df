"""`nmr calibrate`: estimate the rig (poses, LWIR focal length and time offset) from unlabelled bags.

nmr calibrate --bag run1 [run2 ...] --out rig.yaml [--refine-intrinsics] [--refine-extrinsics] [--frames 32]

Reads the RGB, LWIR and depth topics (and their camera_info) of the bags and ``/tf_static`` (a pose between
two cameras' frames found there, e.g. the RealSense's factory depth-colour extrinsics, is taken as given and
kept fixed unless ``--refine-extrinsics``; nmr.calibration.tfstatic), picks ``--frames`` moments
spread over the recording and maximises a pooled cross-modal alignment score over them
(nmr.calibration.objective, nmr.calibration.solver). Writes RIG.yaml (nmr.geometry.rig), a report
(RIG.report.json) and a figure of before/after overlays (RIG_overlay.png); stage results are kept in
RIG.yaml.state.json, so an interrupted run resumes (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nmr.domain import DEFAULT_TOPICS
from nmr.errors import BagError, ConfigError

METHOD_VERSION = 4  # 3: the depth pose from depth edges (nmr.calibration.edges); 4: z-buffer frozen per fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bag', nargs='+', type=Path, required=True, metavar='BAG',
                        help='rosbag2 bag folder(s) or file(s) recorded on the rig (unlabelled)')
    parser.add_argument('--out', type=Path, required=True, metavar='RIG.yaml', help='the rig file to write')
    for name in ('rgb', 'lwir', 'depth'):
        parser.add_argument(f'--{name}-topic', default=None,
                            help=f'{name} image topic (default {DEFAULT_TOPICS[name]}; its camera_info is '
                                 'the sibling topic .../camera_info)')
    parser.add_argument('--frames', type=int, default=32,
                        help='moments (depth frames with their RGB and LWIR neighbours) used, spread over the bags')
    parser.add_argument('--refine-intrinsics', action='store_true',
                        help="also estimate the LWIR focal length (camera_info's is often nominal)")
    parser.add_argument('--refine-extrinsics', action='store_true',
                        help='refine the poses read from /tf_static too (default: keep them as given)')
    parser.add_argument('--ignore-tf-static', action='store_true',
                        help='do not read /tf_static: estimate every pose from the images')
    parser.add_argument('--lwir-translation', default=None, metavar='X,Y,Z',
                        help='the LWIR camera\'s position in the RGB optical frame (metres: x right, y down, '
                             'z forward), e.g. from the CAD drawing or a tape measure: the start of the fit '
                             'and a Gaussian prior on it (the images alone hardly determine the baseline); '
                             'write --lwir-translation=-0.06,0,0 when X is negative')
    parser.add_argument('--lwir-translation-sigma', type=float, default=None, metavar='S',
                        help='standard deviation of --lwir-translation in metres (default 0.01: a tape '
                             'measure); smaller holds the translation closer to it')
    parser.add_argument('--no-time-offset', action='store_true',
                        help='keep the LWIR time offset at 0 (e.g. hardware-triggered cameras)')
    parser.add_argument('--seed', type=int, default=0, help='seed (the result is deterministic for a seed)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1)')
    parser.add_argument('--figure', type=Path, default=None,
                        help='before/after overlay PNG (default: next to --out, RIG_overlay.png)')
    parser.add_argument('--fresh', action='store_true', help='ignore saved stage results and start over')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--drivers-only', action='store_true',
                        help='estimate nothing: write the cameras the drivers describe (camera_info and a '
                             '/tf_static pose to RGB; a RealSense: RGB and depth), in seconds; pairs of the '
                             'cameras left out are registered by their network')


def _signature(args: argparse.Namespace, topics: dict[str, str]) -> str:
    """Inputs that determine the result: a saved stage is reused only for the same signature."""
    files = []
    for bag in args.bag:
        p = Path(bag)
        for f in sorted(p.rglob('*') if p.is_dir() else [p]):
            if f.is_file() and f.suffix in ('.mcap', '.db3', '.yaml'):
                st = f.stat()
                files.append([str(f.resolve()), st.st_size, int(st.st_mtime)])
    doc = {'v': METHOD_VERSION, 'files': files, 'topics': topics, 'frames': args.frames,
           'refine': args.refine_intrinsics, 'dt': not args.no_time_offset, 'seed': args.seed,
           'refine_ext': args.refine_extrinsics, 'tf': not args.ignore_tf_static,
           'lwir_t': args.lwir_translation, 'lwir_t_sigma': args.lwir_translation_sigma}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_streams(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """Topics to read and notes. RGB is required; LWIR or depth may be missing when not asked for."""
    from nmr.data.bag_reader import list_topics

    available: dict[str, str] = {}
    for bag in args.bag:
        available.update(list_topics(bag))
    topics: dict[str, str] = {}
    notes: list[str] = []
    for name in ('rgb', 'lwir', 'depth'):
        given = getattr(args, f'{name}_topic')
        topic = given or DEFAULT_TOPICS[name]
        if topic in available or given is not None or name == 'rgb':
            topics[name] = topic  # index_bag checks existence and type with a one-line error
        else:
            notes.append(f'no {name} topic {topic} in the bag(s)')
    if 'lwir' not in topics and 'depth' not in topics:
        raise BagError(f'bag(s) {", ".join(map(str, args.bag))} have neither {DEFAULT_TOPICS["lwir"]} nor '
                       f'{DEFAULT_TOPICS["depth"]}: give --lwir-topic and/or --depth-topic')
    return topics, notes


DEFAULT_TRANSLATION_SIGMA_M = 0.01
MAX_BASELINE_M = 0.4  # the solver's bound on a translation (solver.BOUNDS)


def parse_translation(text: str | None, sigma: float | None) -> tuple[tuple[float, float, float] | None, float]:
    """``--lwir-translation X,Y,Z`` and ``--lwir-translation-sigma S`` checked: (metres, sigma), or
    (None, default sigma) when no translation is given; one-line ConfigError otherwise."""
    if text is None:
        if sigma is not None:
            raise ConfigError(f'--lwir-translation-sigma {sigma:g} needs --lwir-translation X,Y,Z (the LWIR '
                              'position in metres it is the uncertainty of)')
        return None, DEFAULT_TRANSLATION_SIGMA_M
    parts = text.replace(' ', '').split(',')
    try:
        xyz = [float(v) for v in parts]
    except ValueError:
        xyz = []
    if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
        raise ConfigError(f'--lwir-translation {text!r}: give three numbers X,Y,Z in metres (e.g. 0.06,0,0 for a '
                          'LWIR camera 6 cm to the right of the RGB camera)')
    if max(abs(v) for v in xyz) > MAX_BASELINE_M:
        raise ConfigError(f'--lwir-translation {text}: {max(abs(v) for v in xyz):g} m is beyond a rig\'s '
                          f'{MAX_BASELINE_M:g} m; the values are metres, not millimetres (e.g. 0.06,0,0)')
    s = DEFAULT_TRANSLATION_SIGMA_M if sigma is None else sigma
    if not math.isfinite(s) or s <= 0:
        raise ConfigError(f'--lwir-translation-sigma {s:g}: give a positive standard deviation in metres '
                          f'(e.g. {DEFAULT_TRANSLATION_SIGMA_M:g} for a tape measure)')
    if s < 1e-4:
        raise ConfigError(f'--lwir-translation-sigma {s:g}: under 0.1 mm; give at least 0.0001 m')
    return (xyz[0], xyz[1], xyz[2]), s


def run(args: argparse.Namespace) -> int:
    lwir_translation, lwir_sigma = parse_translation(args.lwir_translation, args.lwir_translation_sigma)
    for bag in args.bag:
        if not Path(bag).exists():
            raise ConfigError(f'bag {bag} does not exist; check the path')
    if args.frames < 3:
        raise ConfigError(f'--frames {args.frames}: use at least 3 (32 or more for a good calibration)')
    if args.threads < 1:
        raise ConfigError(f'--threads {args.threads}: use 1 or more')
    if args.out.suffix not in ('.yaml', '.yml'):
        raise ConfigError(f'--out {args.out}: give a .yaml file name for the rig')
    if args.drivers_only:
        return _drivers_only(args)
    import torch

    from nmr.calibration import bagdata, tfstatic
    from nmr.calibration.objective import Cameras, params_from_pose
    from nmr.calibration.report import overlay_figure, rig_from_params, spread
    from nmr.calibration.solver import Options, Problem, Progress, Solver, initial_params, write_json_atomic

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    log = print
    topics, notes = _resolve_streams(args)
    streams = [bagdata.index_bag(Path(b), topics) for b in args.bag]
    use_depth = 'depth' in topics
    options = Options(refine_intrinsics=args.refine_intrinsics, time_offset=not args.no_time_offset,
                      seed=args.seed, quiet=args.quiet, refine_extrinsics=args.refine_extrinsics,
                      lwir_translation=lwir_translation, lwir_translation_sigma=lwir_sigma)
    # poses the drivers already publish (/tf_static), between the first bag's camera frames
    given: dict[str, Any] = {}
    if not args.ignore_tf_static:
        tree = tfstatic.read_static_tree([Path(b) for b in args.bag])
        frames = {name: st.frame_id for name, st in streams[0].items()}
        given = tfstatic.camera_poses(tree, frames, cameras=[c for c in ('depth', 'lwir') if c in topics])
        if tree and not given:
            notes.append(f'{tfstatic.TF_STATIC_TOPIC} has no transform between the RGB frame '
                         f'{frames.get("rgb")} and the other cameras\' frames '
                         f'({", ".join(f"{k}: {v}" for k, v in frames.items() if k != "rgb")}): poses estimated')
    options.given_poses = set(given)
    if lwir_translation is not None:
        if 'lwir' not in topics:
            raise ConfigError(f'--lwir-translation: the bag(s) have no LWIR topic {DEFAULT_TOPICS["lwir"]}; '
                              'give --lwir-topic or drop the option')
        if 'lwir' in given:
            raise ConfigError(f'--lwir-translation: {tfstatic.TF_STATIC_TOPIC} already gives the LWIR pose '
                              f'({" -> ".join(given["lwir"][1])}); drop the option or add --ignore-tf-static')
        if use_depth:
            notes.append(f'LWIR translation starts at [{", ".join(f"{1000 * v:+.1f}" for v in lwir_translation)}] '
                         f'mm with a Gaussian prior of {1000 * lwir_sigma:g} mm (--lwir-translation)')
        else:
            notes.append('LWIR translation kept at --lwir-translation (without depth it is not estimated)')
    for cam, (_, chain) in given.items():
        how = 'refined from there (--refine-extrinsics)' if args.refine_extrinsics else 'kept fixed'
        notes.append(f'{cam} pose from {tfstatic.TF_STATIC_TOPIC} ({" -> ".join(chain)}), {how}')
    if not use_depth:
        notes.append('LWIR calibrated with the plane-at-distance model (no depth): rotation only, every LWIR '
                     'pixel taken at 20 m; the translation (parallax) and time offset are not estimated')
        options.time_offset = False
    # moments per bag, proportional to the bag's geometry frames
    geo = 'depth' if use_depth else 'lwir'
    n_geo = [len(s[geo].stamps) for s in streams]
    share = [max(3, round(args.frames * n / sum(n_geo))) for n in n_geo]
    picks = [bagdata.pick_moments(s, k, use_depth) for s, k in zip(streams, share)]
    # cameras: camera_info where present (first bag's), else a nominal guess (after reading a frame)
    load_progress = Progress(sum(map(len, picks)), args.quiet)
    moments = []
    for i, (bag, s, pk) in enumerate(zip(args.bag, streams, picks)):
        load_progress.label = 'reading frames'
        moments += bagdata.load_moments(Path(bag), i, s, pk, use_depth, load_progress.step)
    load_progress.close()
    models = {}
    for name in topics:
        st = streams[0][name]
        if st.info is not None:
            models[name] = st.info
        else:
            assert st.size is not None
            models[name] = bagdata.nominal_camera(*st.size)
            notes.append(f'no camera_info for {name} ({bagdata.info_topic(st.topic)}): assumed a 60 deg field of '
                         'view and a centred principal point' +
                         ('; its focal length is refined' if name == 'lwir' else
                          '; the result is only as good as that guess: record camera_info'))
            if name == 'lwir':
                options.refine_intrinsics = True
    for n in notes:
        print(f'nmr calibrate: note: {n}', file=sys.stderr)
    if len(moments) < 3:
        raise BagError(f'only {len(moments)} usable moment(s) in {", ".join(map(str, args.bag))}: record longer')
    cams = Cameras(models['rgb'], models.get('lwir'), models.get('depth'))
    problem = Problem(moments, cams, options, kept=list(range(len(moments))))
    units = Solver(problem, Progress(0, True), log).work_units()
    progress = Progress(sum(units.values()), args.quiet)
    def say(message: str) -> None:
        if not args.quiet:
            progress.close()  # end the bar's line first
        log(message)

    solver = Solver(problem, progress, say)

    state_path = args.out.with_name(args.out.name + '.state.json')
    sig = _signature(args, topics)
    state: dict[str, Any] = {'signature': sig, 'stages': {}}
    if state_path.exists() and not args.fresh:
        try:
            old = json.loads(state_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get('signature') == sig:
            state = old
            log(f'nmr calibrate: resuming: stages {", ".join(state["stages"]) or "none"} done ({state_path})')
        else:
            log(f'nmr calibrate: {state_path} is for other inputs or options: starting afresh')

    def stage(name: str, fn: Any, params: Any) -> Any:
        done = state['stages'].get(name)
        if done is not None:
            problem.kept = done['kept']
            progress.step(units.get(name, 0), f'{name} (resumed)')
            return done['result']
        result = fn(params)
        state['stages'][name] = {'result': result, 'kept': list(problem.kept)}
        write_json_atomic(state_path, state)
        return result

    init = initial_params()
    for cam, (pose, _) in given.items():
        init[f'{cam}_rot'], init[f'{cam}_trans'] = params_from_pose(pose.rotvec(), pose.t)
    if lwir_translation is not None:  # the given position, no rotation (searched for next)
        init['lwir_rot'], init['lwir_trans'] = params_from_pose([0.0, 0.0, 0.0], lwir_translation)
    params = dict(init)
    if use_depth:
        params = stage('rgb_depth', solver.stage_rgb_depth, params)
    if 'lwir' in topics:
        params = stage('lwir', solver.stage_lwir, params)
    blocks = stage('blocks', solver.stage_blocks, params)
    progress.close()
    for cam in given:  # exactly as given (the solver's float32 tensors round them)
        if options.pose_fixed(cam):
            params[f'{cam}_rot'], params[f'{cam}_trans'] = init[f'{cam}_rot'], init[f'{cam}_trans']
    sources = parameter_sources(topics, streams[0], given, options)

    rig = rig_from_params(cams, params, streams[0])
    rig.save(args.out)
    before, after = solver.pair_scores(init), solver.pair_scores(params)
    spreads = spread(blocks, cams)
    figure = args.figure or args.out.with_name(args.out.stem + '_overlay.png')
    overlay_figure(solver, init, params, figure)
    report = {
        'rig': str(args.out), 'bags': [str(b) for b in args.bag], 'topics': topics, 'notes': notes,
        'moments': len(moments), 'moments_kept': len(problem.kept),
        'score_before': before, 'score_after': after, 'block_spread': spreads,
        'parameters': params, 'sources': sources, 'seconds': round(time.monotonic() - started, 1),
        'figure': str(figure),
    }
    write_json_atomic(args.out.with_name(args.out.stem + '.report.json'), report)
    log(f'nmr calibrate: wrote {args.out} from {len(moments)} moments of {len(args.bag)} bag(s) '
        f'({len(problem.kept)} kept) in {report["seconds"]:.0f} s')
    for k in after:
        log(f'  {k}: alignment score (NGF, 0..1) {before[k]:.3f} -> {after[k]:.3f}')
    for name in rig.names():
        if name == 'rgb':
            continue
        c = rig.rig_camera(name)
        ang = math.degrees(float(np.linalg.norm(c.rotation)))
        line = (f'  {name}: rotation {ang:.2f} deg, translation '
                f'[{", ".join(f"{1000 * v:+.1f}" for v in c.translation)}] mm')
        if name == 'lwir':
            line += f', fx {c.model.fx:.1f} px, time offset {1000 * c.time_offset_s:+.1f} ms'
        of = {'rotation_deg': 'pose', 'translation_mm': 'pose', 'focal_pct': 'focal', 'time_offset_ms': 'time_offset'}
        sp = {k: v for k, v in spreads.get(name, {}).items() if 'estimated' in sources[name].get(of[k], '')
              or 'refined' in sources[name].get(of[k], '')}
        line += ' | from ' + ', '.join(f'{k}: {v}' for k, v in sources[name].items())
        if sp:
            line += ' | spread over blocks: ' + ', '.join(f'{k} {v:.3g}' for k, v in sp.items())
        log(line)
    log(f'  figure: {figure}; report: {args.out.with_name(args.out.stem + ".report.json")}')
    return 0


def _drivers_only(args: argparse.Namespace) -> int:
    """`--drivers-only`: the rig of nmr.calibration.drivers (nothing estimated)."""
    from nmr.calibration.drivers import rig_from_drivers

    if args.ignore_tf_static or args.lwir_translation is not None:
        raise ConfigError('--drivers-only takes the poses from /tf_static and estimates nothing: drop '
                          '--ignore-tf-static / --lwir-translation, or drop --drivers-only')
    topics = {name: getattr(args, f'{name}_topic') or DEFAULT_TOPICS[name] for name in ('rgb', 'lwir', 'depth')}
    rig, notes = rig_from_drivers([Path(b) for b in args.bag], topics)
    rig.save(args.out)
    for note in notes:
        print(f'nmr calibrate: {note}')
    print(f'nmr calibrate: wrote {args.out} ({", ".join(rig.names())}; nothing estimated): the pairs of the '
          'cameras in it register through depth, the others by their network')
    return 0


def parameter_sources(topics: dict[str, str], streams: dict[str, Any], given: dict[str, Any],
                      options: Any) -> dict[str, dict[str, str]]:
    """Where each parameter of the rig file came from, per camera: ``camera_info``, ``tf_static``,
    ``estimated``, ``nominal`` (a guessed field of view), ``assumed 0`` or ``reference`` (RGB's pose)."""
    out: dict[str, dict[str, str]] = {}
    for name in ('rgb', 'lwir', 'depth'):
        if name not in topics:
            continue
        info = 'camera_info' if streams[name].info is not None else 'nominal'
        src = {'intrinsics': info, 'distortion': info}
        if name == 'rgb':
            src['pose'] = 'reference'
        elif name in given:
            src['pose'] = 'tf_static, refined' if options.refine_extrinsics else 'tf_static'
        elif name == 'lwir' and 'depth' not in topics:
            src['pose'] = ('estimated (rotation only; translation from --lwir-translation)'
                           if options.lwir_translation is not None else 'estimated (rotation only; translation 0)')
        elif name == 'lwir' and options.lwir_translation is not None:
            sigma = options.lwir_translation_sigma
            src['pose'] = f'estimated (translation prior: --lwir-translation, sigma {sigma:g} m)'
        else:
            src['pose'] = 'estimated'
        if name == 'lwir':
            src['focal'] = 'estimated' if options.refine_intrinsics and 'depth' in topics else info
            src['time_offset'] = 'estimated' if options.time_offset else 'assumed 0'
        elif name == 'depth':
            src['time_offset'] = 'assumed 0'
        out[name] = src
    return out
