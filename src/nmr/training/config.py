"""The training configuration: one typed tree of dataclasses <-> YAML (`config/train.yaml`), CLI overrides.

`load_config(path, overrides)` reads the YAML (unknown keys are errors, so typos do not silently fall back
to defaults), applies `--set a.b=v` overrides (values parsed as YAML scalars/lists), and validates.
Every section is plain data, so `config_to_dict` goes straight into checkpoints and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmr.domain import DEFAULT_TOPICS, PAIRS
from nmr.errors import ConfigError

FLOWS = ('both', 'register_first', 'translate_first')
MODULE_SETS = ('both', 'R', 'T', 'none')
BASELINES = ('none', 'ncc', 'ncc_edges', 'ssim_edges')
GAN_MODES = ('vanilla', 'lsgan')
OBJECTIVES = ('nemar', 'supervised', 'mixed')
SCHEDULES = ('linear', 'onecycle')


@dataclass
class DataConfig:
    """Where pairs come from and how they reach the network."""

    pair: str = 'rgb_lwir'
    net_hw: list[int] = field(default_factory=lambda: [256, 320])  # network input (h, w)
    # rosbag2 topics by camera kind (realsense-ros / flir_boson_usb defaults, SPEC)
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    slop_s: float = 0.02  # bag pair synchronisation tolerance
    block_s: float = 10.0  # bags: train/val split in time blocks of this length
    val_fraction: float = 0.2  # bags: by time block; manifests/folders: by a hash of the pair's name
    scene_prefix: int = 0  # folders: the first N characters of a stem name its scene (0 = whole stem)
    normalisation: dict[str, Any] = field(default_factory=dict)  # fixed-kind preprocess kwargs
    workers: int = 2  # DataLoader workers per process
    max_pairs: int = 0  # 0 = all; else the first N train pairs (quick experiments)


@dataclass
class AugmentConfig:
    """Synthetic misalignment of pre-aligned pairs (known flow: validation metrics only, never a loss).

    Magnitudes are in pixels at NATIVE size for a 640-pixel-wide image and scale with the image width.
    The defaults give a mean ground-truth displacement of about 15 px at 640x512.
    """

    enabled: bool = False
    shift_px: float = 13.0  # uniform translation per axis in [-shift, shift]
    rotation_deg: float = 2.5
    scale: float = 0.04  # isotropic scale in [1 - scale, 1 + scale]
    shear: float = 0.02
    elastic_px: float = 7.0  # std of control-point displacements
    elastic_grid: int = 4  # control points per axis (smoothness of the elastic part)
    reference_width: int = 640
    val_seed: int = 12345  # fixed misalignment per validation pair
    # Curriculum: magnitudes x warmup_start at epoch 0, rising linearly to full at warmup_epochs (0 = off).
    warmup_epochs: int = 0
    warmup_start: float = 0.0
    # Supervised objectives: misalign at network size (cheap; the ground truth is wanted there anyway) and
    # randomise appearance (nmr.training.appearance) so R matches structure, not intensities.
    appearance: bool = True
    invert_fixed: float = 0.15  # LWIR polarity inversion probability
    hflip: float = 0.5
    # Misalignment families (nmr.training.families): one drawn per pair. Leave one out to hold it back.
    # 'legacy' = the old affine + 4x4 elastic above (shift_px .. elastic_grid), which carried the border cue.
    # 'parallax' = a second camera through the depth map (nmr.training.parallax; rgb_depth: the pair's own depth,
    # rgb_lwir: a random layered depth); not in the default list (the shipped models hold it back).
    families: list[str] = field(
        default_factory=lambda: ['affine', 'homography', 'nonrigid', 'distortion', 'composite']
    )
    mean_px: list[float] = field(default_factory=lambda: [0.0, 30.0])  # target mean |phi| drawn uniformly
    peak_px: float = 60.0  # cap on max |phi| (at reference_width; must stay below the canvas margin)
    max_gradient: float = 0.5  # cap on ||grad phi|| (invertible, det(I + grad phi) >= 0.25)
    nonrigid_grids: list[int] = field(default_factory=lambda: [3, 8])  # control grid size range (per axis)
    # `fov` family: the moving camera's magnification against the fixed one, drawn uniformly (1.6: it sees the
    # central 1 / 1.6 of the fixed view); below 1 it sees more (limited by the canvas margin)
    fov_zoom: list[float] = field(default_factory=lambda: [0.9, 1.7])
    # ... and the aspect change, |log(sx / sy)| up to this (0.3: 4:3 against 16:9 after a plain rescale)
    fov_aspect: float = 0.2
    # No border cue: the field is drawn on a canvas canvas_scale x the visible crop and only the centre of
    # BOTH images is kept (1.25: a margin of 12.5 % of the width per side, above peak_px at 640 px).
    canvas_scale: float = 1.25
    border_prob: float = 0.3  # probability of content-free bands in BOTH images (independent of the field)
    border_max: float = 0.08  # the largest band, as a fraction of the side


@dataclass
class ModelConfig:
    """Networks: R_Phi (see nmr.models.registration.RegistrationConfig), T and D."""

    registration: dict[str, Any] = field(default_factory=lambda: {'arch': 'fast'})
    translation_ngf: int = 64
    translation_blocks: int = 9
    discriminator_ndf: int = 64
    discriminator_layers: int = 3


@dataclass
class LossConfig:
    """Paper eq. 4-6 and the ablations of Tables 1-3 and Figure 5."""

    lambda_recon: float = 100.0  # lambda_R
    lambda_smooth: float = 200.0  # lambda_S (flow measured in normalised units, as in the paper)
    lambda_gan: float = 1.0
    gan_mode: str = 'vanilla'  # vanilla (BCE, paper eq. 5) | lsgan
    bilateral: bool = True
    bilateral_alpha: float = 1.0
    # L_recon only where R_S sampled inside the moving image (false = the paper's plain mean, which biases R
    # towards the identity: see nmr.training.losses.reconstruction_l1)
    mask_invalid: bool = True
    flows: str = 'both'  # both | register_first (T o R) | translate_first (R o T)
    gan_modules: str = 'both'  # modules updated by the cGAN term (Table 2 columns): both | R | T | none
    l1_modules: str = 'both'  # modules updated by the reconstruction term (Table 2 rows)
    baseline: str = 'none'  # Table 1: R alone with ncc | ncc_edges | ssim_edges (no T, no D)
    lambda_similarity: float = 1.0  # weight of the baseline's similarity term
    ncc_window: int = 9
    ssim_window: int = 7
    # What trains R_Phi: nemar (the paper; no ground truth), supervised (exact ground truth of synthetic
    # misalignments / the rig; R alone), mixed (NeMAR plus lambda_supervised x the supervised terms on
    # the pairs that have ground truth: keeps a warm-started R from drifting).
    objective: str = 'nemar'
    lambda_supervised: float = 1.0  # mixed only
    lambda_contrastive: float = 0.1  # dense InfoNCE between the two encoders (corr arch; 0 = off)
    contrastive_only_steps: int = 0  # first N steps train the encoders for matching only (pre-training)
    level_weight: float = 0.5  # coarser levels' end-point loss relative to the output's


@dataclass
class OptimConfig:
    lr: float = 1e-4
    # R_Phi's own learning rate (0 = `lr`). R is a small network fed by a smooth, low-noise L1 signal, so it
    # tolerates (and on short CPU budgets needs) a larger step than the GAN pair T / D.
    lr_registration: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 12  # per process
    epochs: int = 200
    decay_start: float = 0.5  # linear LR decay to 0 from this fraction of the epochs on
    grad_clip: float = 0.0  # 0 = off
    # linear: constant, then linear decay from decay_start (per epoch; NeMAR). onecycle: warm-up over the
    # first 5 % of steps, then cosine decay to 1 % (per step; supervised training converges faster).
    schedule: str = 'linear'
    weight_decay: float = 0.0
    # NeMAR fine-tuning from a warm start (--init): R stays frozen for this many epochs while T and D learn.
    freeze_registration_epochs: int = 0


@dataclass
class RunConfig:
    seed: int = 0
    device: str = 'auto'  # auto | cpu | cuda[:N]
    amp: str = 'auto'  # auto (bf16 on CUDA when supported, else fp16) | bf16 | fp16 | off
    channels_last: bool = True  # CUDA only
    log_every: int = 20  # steps between progress lines / TensorBoard scalars
    image_every: int = 1  # epochs between TensorBoard image grids
    val_every: int = 1
    keep_every: int = 1  # epochs between epoch_NNN.pt (R_Phi only) files; 0 = none
    steps_per_epoch: int = 0  # 0 = the whole data set
    val_max_pairs: int = 0  # 0 = all validation pairs
    threads: int = 0  # torch CPU threads; 0 = torch default


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the key when a value is out of range."""
        _choice('data.pair', self.data.pair, PAIRS)
        _choice('loss.flows', self.loss.flows, FLOWS)
        _choice('loss.gan_modules', self.loss.gan_modules, MODULE_SETS)
        _choice('loss.l1_modules', self.loss.l1_modules, MODULE_SETS)
        _choice('loss.baseline', self.loss.baseline, BASELINES)
        _choice('loss.gan_mode', self.loss.gan_mode, GAN_MODES)
        _choice('run.amp', self.run.amp, ('auto', 'bf16', 'fp16', 'off'))
        _choice('loss.objective', self.loss.objective, OBJECTIVES)
        _choice('optim.schedule', self.optim.schedule, SCHEDULES)
        if self.loss.objective != 'nemar' and self.loss.baseline != 'none':
            raise ConfigError(
                f'loss.baseline={self.loss.baseline} is a NeMAR ablation; use it with loss.objective=nemar'
            )
        if len(self.data.net_hw) != 2 or min(self.data.net_hw) < 16:
            raise ConfigError(f'data.net_hw {self.data.net_hw} must be [h, w], each >= 16')
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f'data.val_fraction {self.data.val_fraction} must be in [0, 1)')
        if self.optim.batch_size < 1 or self.optim.epochs < 1:
            raise ConfigError('optim.batch_size and optim.epochs must be >= 1')
        from nmr.training.families import TRAINING_FAMILIES

        a = self.augment
        if not a.families:
            raise ConfigError('augment.families is empty: name at least one of ' + ', '.join(TRAINING_FAMILIES))
        for name in a.families:
            _choice('augment.families[]', name, TRAINING_FAMILIES)
        if len(a.mean_px) != 2 or not 0.0 <= a.mean_px[0] <= a.mean_px[1]:
            raise ConfigError(f'augment.mean_px {a.mean_px} must be [low, high] with 0 <= low <= high')
        if len(a.nonrigid_grids) != 2 or not 2 <= a.nonrigid_grids[0] <= a.nonrigid_grids[1]:
            raise ConfigError(f'augment.nonrigid_grids {a.nonrigid_grids} must be [low, high], 2 <= low <= high')
        if not 0.0 < a.max_gradient < 1.0:
            raise ConfigError(f'augment.max_gradient {a.max_gradient} must be in (0, 1) (invertible fields)')
        if len(a.fov_zoom) != 2 or not 0.5 <= a.fov_zoom[0] <= a.fov_zoom[1] <= 1.9:
            raise ConfigError(f'augment.fov_zoom {a.fov_zoom} must be [low, high] with 0.5 <= low <= high <= 1.9 '
                              '(the exact inverse needs |zoom - 1| < 1)')
        if not 0.0 <= a.fov_aspect <= 0.5:
            raise ConfigError(f'augment.fov_aspect {a.fov_aspect} must be in [0, 0.5] (|log(sx / sy)|)')
        if a.canvas_scale < 1.0:
            raise ConfigError(f'augment.canvas_scale {a.canvas_scale} must be >= 1')
        margin = (1.0 - 1.0 / a.canvas_scale) / 2.0 * a.canvas_scale * a.reference_width
        if a.peak_px > margin + 1e-6:
            raise ConfigError(
                f'augment.peak_px {a.peak_px} exceeds the canvas margin ({margin:.0f} px at '
                f'{a.reference_width} px): raise augment.canvas_scale or lower augment.peak_px'
            )
        if not (0.0 <= a.border_prob <= 1.0 and 0.0 <= a.border_max < 0.5):
            raise ConfigError('augment.border_prob must be in [0, 1] and augment.border_max in [0, 0.5)')
        if self.augment.warmup_epochs < 0 or not 0.0 <= self.augment.warmup_start <= 1.0:
            raise ConfigError('augment.warmup_epochs must be >= 0 and augment.warmup_start in [0, 1]')
        if self.optim.lr <= 0 or self.optim.lr_registration < 0:
            raise ConfigError('optim.lr must be > 0 and optim.lr_registration >= 0 (0 = optim.lr)')
        if not 0.0 <= self.optim.decay_start <= 1.0:
            raise ConfigError(f'optim.decay_start {self.optim.decay_start} must be in [0, 1]')
        if self.loss.baseline == 'none':
            for who in ('R', 'T'):
                if who not in _members(self.loss.gan_modules) | _members(self.loss.l1_modules):
                    raise ConfigError(
                        f'loss.gan_modules={self.loss.gan_modules} and '
                        f'loss.l1_modules={self.loss.l1_modules} '
                        f"leave {who} without a loss (the degenerate cells of the paper's Table 2); "
                        'give it the cGAN or the L1 term'
                    )
        try:
            from nmr.models.registration import RegistrationConfig

            RegistrationConfig.from_dict(self.model.registration)
        except (ValueError, TypeError) as err:
            raise ConfigError(f'model.registration: {err}') from None
        return self


def _members(modules: str) -> set[str]:
    return {'both': {'R', 'T'}, 'R': {'R'}, 'T': {'T'}}.get(modules, set())


def _choice(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f'{key} is {value!r}; use one of {", ".join(allowed)}')


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _resolve_type(tp: Any) -> Any:
    """Strip Optional/Union-with-None down to the concrete type for coercion."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def _coerce(key: str, value: Any, tp: Any) -> Any:
    tp = _resolve_type(tp)
    origin = typing.get_origin(tp) or tp
    if tp is Any:
        return value
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{key} must be true or false, got {value!r}')
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f'{key} must be an integer, got {value!r}')
    if origin is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f'{key} must be a number, got {value!r}')
    if origin is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{key} must be a string, got {value!r}')
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f'{key} must be a list, got {value!r}')
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(f'{key}[{i}]', v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f'{key} must be a mapping, got {value!r}')
        return dict(value)
    return value


def _from_mapping(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f'{prefix or "config"} must be a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f'unknown config key {prefix}{unknown[0]}; known keys under '
            f'{prefix.rstrip(".") or "the top level"}: {", ".join(sorted(known))}'
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_mapping(typing.cast(type, tp), value or {}, f'{prefix}{name}.')
        else:
            kwargs[name] = _coerce(f'{prefix}{name}', value, tp)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    return _from_mapping(TrainConfig, data, '').validate()


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b=v` strings to a nested dict; `v` is parsed as YAML (numbers, bools, lists, strings)."""
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'--set {item!r} is not KEY=VALUE (e.g. --set optim.lr=2e-4)')
        key, raw = item.split('=', 1)
        parts = key.strip().split('.')
        if not all(parts):
            raise ConfigError(f'--set {item!r}: empty key part')
        try:
            value = yaml.safe_load(raw) if raw.strip() else ''
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f'--set {item!r}: {p} is not a section')
        if isinstance(value, str | int) and _looks_float(raw):
            value = float(raw)
        node[parts[-1]] = value
    return data


def _looks_float(raw: str) -> bool:
    """YAML 1.1 reads '1e-4' as a string; accept it as a float."""
    try:
        float(raw)
    except ValueError:
        return False
    return any(c in raw.lower() for c in '.e') and raw.strip().lower() not in ('.inf', '.nan')


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """YAML file (or the defaults) + overrides -> validated TrainConfig; ConfigError on any problem."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'config file {path} does not exist; pass --config config/train.yaml')
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f'config file {path} is not valid YAML ({str(err).splitlines()[0]})') from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f'config file {path} must hold a mapping of sections')
        data = _normalise_floats(loaded or {})
    return config_from_dict(apply_overrides(data, overrides))


def _normalise_floats(obj: Any) -> Any:
    """YAML 1.1 leaves '1e-4' (no dot) as a string; turn such strings into floats."""
    if isinstance(obj, dict):
        return {k: _normalise_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalise_floats(v) for v in obj]
    if isinstance(obj, str) and _looks_float(obj):
        return float(obj)
    return obj


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
