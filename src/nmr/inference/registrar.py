"""The `Registrar` base of the model backends: native-size images in, native-size flow / registered image /
mask out (it implements nmr.inference.protocol.RegistrarProtocol, what the pipeline and evaluation use).

Every backend shares the same pre-processing (nmr.data.preprocess, resize to the network size) and
post-processing (nmr.models.resampler.flow_to_native + warp), run in torch on the registrar's device,
so the backends differ only in how R_Phi itself runs (`_infer`). Keeping the pre/post steps in torch
on the device means a CUDA pipeline never copies an image to the host between steps; only the final
`Registration` (numpy, the design's contract) is copied back, and `register_torch` skips even that.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nmr.data import preprocess as pp
from nmr.data.preprocess import resize_to
from nmr.errors import ConfigError
from nmr.inference.model_file import ModelInfo
from nmr.inference.protocol import Registration
from nmr.models.resampler import flow_to_native, warp


@dataclass
class NetFlow:
    """R_Phi's flow on the network grid, before it is mapped to native pixels (the node's fast path).

    `flow_n` is hxwx2 float32 numpy (net pixels, ch0 = dx) on CPU, or the 1x2xhxw tensor on a GPU device;
    `fixed_full` is the fixed image normalised at its native size (1xHfxWf tensor in [-1, 1]), which the
    overlay shows, so that it is not computed twice.
    """

    flow_n: Any
    fixed_full: torch.Tensor
    moving_hw: tuple[int, int]
    fixed_hw: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class TorchRegistration:
    """The same as Registration, still on the registrar's device (flow 1x2xHfxWf, registered 1x3xHfxWf)."""

    flow: torch.Tensor
    registered: torch.Tensor  # float, 0..255
    valid: torch.Tensor  # 1x1xHfxWf bool
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_numpy(self) -> Registration:
        t0 = time.perf_counter()
        flow = self.flow[0].permute(1, 2, 0).float().contiguous().cpu().numpy()
        reg = (
            self.registered[0]
            .permute(1, 2, 0)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
            .contiguous()
            .cpu()
            .numpy()
        )
        valid = self.valid[0, 0].cpu().numpy()
        timings = dict(self.timings_ms)
        timings['to_host'] = (time.perf_counter() - t0) * 1e3
        timings['total'] = timings.get('total', 0.0) + timings['to_host']
        return Registration(flow=flow, registered=reg, valid=valid, timings_ms=timings)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available else cpu; a CUDA request on a machine without CUDA is a user error."""
    if isinstance(device, torch.device):
        return device
    if device in ('auto', '', None):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'device {device!r} requested but CUDA is not available; use device=cpu or auto')
    if dev.type not in ('cpu', 'cuda'):
        raise ConfigError(f'device {device!r} is not supported; use auto, cpu or cuda[:N]')
    return dev


def as_tensor(img: Any, device: torch.device) -> torch.Tensor:
    """numpy or torch image -> torch tensor on `device` (no copy when it is already there)."""
    if isinstance(img, torch.Tensor):
        return img.to(device, non_blocking=True)
    arr = np.ascontiguousarray(img)
    if not arr.flags.writeable:  # a view of a message buffer: torch.from_numpy needs a writable array
        arr = arr.copy()
    return torch.from_numpy(arr).to(device, non_blocking=True)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Registrar(ABC):
    """One model on one backend and device. Subclasses implement `_infer` (R_Phi on the net grid)."""

    backend: str = 'abstract'

    def __init__(self, info: ModelInfo, device: torch.device, net_hw: tuple[int, int] | None = None) -> None:
        self.info = info
        self.device = device
        self.net_hw: tuple[int, int] = tuple(net_hw) if net_hw else info.net_hw  # type: ignore[assignment]
        self.pair = info.pair
        self.metadata = info.metadata
        # CPU pre/post-processing torch threads (None = torch's setting); see _prepost_threads
        self.prepost_threads: int | None = None

    # -- what subclasses provide ------------------------------------------------------------------
    @abstractmethod
    def _infer(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        """R_Phi: 1x3xhxw and 1x1xhxw float32 on self.device -> 1x2xhxw float32 flow on self.device."""

    def describe(self) -> str:
        h, w = self.net_hw
        return f'{self.backend} on {self.device} ({self.info.path.name}, pair {self.pair}, net {w}x{h})'

    # -- shared pre/post-processing ---------------------------------------------------------------
    def preprocess(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> tuple[torch.Tensor, ...]:
        """-> (moving float 1x3xHmxWm in 0..255, moving_n 1x3xhxw, fixed_n 1x1xhxw), all on the device."""
        moving = as_tensor(moving_rgb, self.device)
        if moving.ndim != 3 or moving.shape[-1] != 3:
            raise ConfigError(f'moving image must be HxWx3 RGB, got shape {tuple(moving.shape)}')
        moving_in = pp.rgb_input(moving).to(self.device, torch.float32)
        # raw fixed images go to preprocess as they are: it widens uint16 (few torch ops take it) itself
        fixed_in = pp.fixed_input(
            self.info.fixed_kind,
            fixed_raw,
            fixed_encoding,
            self.info.normalisation or None,
            device=self.device,
        )
        fixed_in = fixed_in.to(self.device, torch.float32)
        moving_full = moving.permute(2, 0, 1)[None].to(torch.float32)
        moving_n = resize_to(moving_in[None], self.net_hw).contiguous()
        fixed_n = resize_to(fixed_in[None], self.net_hw).contiguous()
        return moving_full, moving_n, fixed_n

    def register_torch(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> TorchRegistration:
        """Register one pair, results left on the device (for GPU pipelines that keep going there)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            with self._prepost_threads():
                moving_full, moving_n, fixed_n = self.preprocess(moving_rgb, fixed_raw, fixed_encoding)
            fixed_hw = _image_hw(fixed_raw)
            sync(self.device)
            t1 = time.perf_counter()
            flow_n = self._infer(moving_n, fixed_n)
            sync(self.device)
            t2 = time.perf_counter()
            with self._prepost_threads():
                flow = flow_to_native(flow_n.float(), fixed_hw, tuple(moving_full.shape[-2:]))
                registered, valid = warp(moving_full, flow)
            sync(self.device)
            t3 = time.perf_counter()
        timings = {
            'preprocess': (t1 - t0) * 1e3,
            'net': (t2 - t1) * 1e3,
            'postprocess': (t3 - t2) * 1e3,
            'total': (t3 - t0) * 1e3,
        }
        return TorchRegistration(
            flow=flow, registered=registered, valid=_valid_mask(valid), timings_ms=timings
        )

    @contextlib.contextmanager
    def _prepost_threads(self) -> Iterator[None]:
        """On CPU, run the small pre/post-processing ops on one torch thread.

        Each of those ops is a few ms; with several intra-op threads every op is a fork/join that, on
        shared or loaded cores, waits for a thread to be scheduled (and competes with ONNX Runtime's own
        pool); docs/performance.md has the measurement. Backends whose network is not torch turn it on;
        the torch backend does not (switching torch's process-wide thread count slows its network down).
        """
        if self.device.type != 'cpu' or self.prepost_threads is None:
            yield
            return
        before = torch.get_num_threads()
        if before != self.prepost_threads:
            torch.set_num_threads(self.prepost_threads)
        try:
            yield
        finally:
            if before != self.prepost_threads:
                torch.set_num_threads(before)

    def prepare(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> tuple[torch.Tensor, ...]:
        """The network inputs only: (moving_n 1x3xhxw, fixed_n 1x1xhxw, fixed_full 1xHfxWf), on the device.

        The same numbers as `preprocess` (parity), with less work: the RGB image is resized as raw values
        and normalised on the small grid (resizing is linear, so the order does not matter beyond float
        rounding), and the full-size float moving image that only the torch warp needs is not made.
        """
        moving = as_tensor(moving_rgb, self.device)
        if moving.ndim != 3 or moving.shape[-1] != 3:
            raise ConfigError(f'moving image must be HxWx3 RGB, got shape {tuple(moving.shape)}')
        moving_chw = torch.empty((1, 3, moving.shape[0], moving.shape[1]), dtype=torch.float32, device=self.device)
        moving_chw[0].copy_(moving.permute(2, 0, 1))
        moving_n = resize_to(moving_chw, self.net_hw).div_(127.5).sub_(1.0).contiguous()
        fixed_in = pp.fixed_input(
            self.info.fixed_kind, fixed_raw, fixed_encoding, self.info.normalisation or None, device=self.device
        ).to(self.device, torch.float32)
        fixed_n = resize_to(fixed_in[None], self.net_hw).contiguous()
        return moving_n, fixed_n, fixed_in

    def net_flow(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> NetFlow:
        """Pre-processing and R_Phi only: the flow on the network grid (see NetFlow).

        The caller maps it to native pixels and warps with the fastest kernel it has (OpenCV on CPU:
        nmr.pipeline.native); `register` does the same in torch. No thread-count switching here: the
        caller (the node) sets torch's process-wide thread count once (nmr.pipeline.settings.configure_threads),
        since it runs pairs on parallel threads; `prepost_threads` then equals it and nothing is switched.
        """
        t0 = time.perf_counter()
        with torch.inference_mode():
            with self._prepost_threads():
                moving_n, fixed_n, fixed_full = self.prepare(moving_rgb, fixed_raw, fixed_encoding)
            sync(self.device)
            t1 = time.perf_counter()
            flow_t = self._infer(moving_n, fixed_n).float()
            flow_n: Any = flow_t[0].permute(1, 2, 0).contiguous().numpy() if self.device.type == 'cpu' else flow_t
            sync(self.device)
            t2 = time.perf_counter()
        fixed_hw = _image_hw(fixed_raw)
        return NetFlow(flow_n, fixed_full, _image_hw(moving_rgb), fixed_hw,
                       {'preprocess': (t1 - t0) * 1e3, 'net': (t2 - t1) * 1e3})

    def register(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> Registration:
        """Register one pair: images at any native size in, numpy results at the fixed native size out."""
        return self.register_torch(moving_rgb, fixed_raw, fixed_encoding).to_numpy()

    def flow_net(self, moving_in: Any, fixed_in: Any) -> np.ndarray:
        """R_Phi alone on network inputs (3xhxw / 1xhxw or batched, in [-1, 1]) -> flow hxwx2 (Bxhxwx2).

        For benchmarks and parity checks: no resizing, no warping; the grid is the inputs' grid.
        """
        moving = as_tensor(moving_in, self.device).to(torch.float32)
        fixed = as_tensor(fixed_in, self.device).to(torch.float32)
        batched = moving.ndim == 4
        if not batched:
            moving, fixed = moving[None], fixed[None]
        with torch.inference_mode():
            flows = [
                self._infer(moving[i : i + 1].contiguous(), fixed[i : i + 1].contiguous())
                for i in range(moving.shape[0])
            ]
        out = torch.cat(flows).permute(0, 2, 3, 1).float().cpu().numpy()
        return out if batched else out[0]


def _image_hw(img: Any) -> tuple[int, int]:
    shape = tuple(img.shape)
    return int(shape[0]), int(shape[1])


def _valid_mask(valid: torch.Tensor) -> torch.Tensor:
    """Resampler validity (bool or float coverage) -> 1x1xHxW bool; a pixel is valid if fully inside."""
    if valid.dtype == torch.bool:
        out = valid
    else:
        out = valid > 0.5
    while out.ndim < 4:
        out = out[None]
    return out
