"""R_Phi in PyTorch: CPU or CUDA, fp16/bf16 autocast on CUDA, channels-last, optional CUDA graphs.

The reference backend: it runs a checkpoint directly, so it is what the other backends are checked
against, and the fallback wherever ONNX Runtime or TensorRT are missing.
"""

from __future__ import annotations

from typing import Any

import torch

from nmr.errors import ConfigError
from nmr.inference.model_file import ModelInfo
from nmr.inference.registrar import Registrar

PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class TorchRegistrar(Registrar):
    backend = 'torch'

    def __init__(
        self,
        info: ModelInfo,
        net: torch.nn.Module,
        device: torch.device,
        net_hw: tuple[int, int] | None = None,
        precision: str = 'fp32',
        channels_last: bool | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(info, device, net_hw)
        if precision not in PRECISIONS:
            raise ConfigError(f'torch precision {precision!r} is not one of {sorted(PRECISIONS)}')
        if precision != 'fp32' and device.type != 'cuda':
            raise ConfigError(f'torch precision {precision} needs CUDA (autocast); use fp32 on {device}')
        if cuda_graph and device.type != 'cuda':
            raise ConfigError('CUDA graph capture needs a CUDA device')
        self.precision = precision
        # channels-last pays off on CUDA tensor cores; on CPU oneDNN gains little for these small convs
        self.channels_last = (device.type == 'cuda') if channels_last is None else channels_last
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def describe(self) -> str:
        extra = [self.precision]
        if self.channels_last:
            extra.append('channels-last')
        if self.cuda_graph:
            extra.append('cuda-graph')
        return f'{super().describe()} [{", ".join(extra)}]'

    def _forward(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            moving_n = moving_n.contiguous(memory_format=torch.channels_last)
            fixed_n = fixed_n.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.net(moving_n, fixed_n).float()
        with torch.autocast(device_type='cuda', dtype=dtype):
            return self.net(moving_n, fixed_n).float()

    def _infer(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if not self.cuda_graph:
                return self._forward(moving_n, fixed_n)
            return self._replay(moving_n, fixed_n)

    def _replay(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        """Capture one CUDA graph per input shape (first call), then replay it: no per-kernel launch cost."""
        key = tuple(moving_n.shape) + tuple(fixed_n.shape)
        if key not in self._graphs:
            static_m = moving_n.clone()
            static_f = fixed_n.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN autotuning and allocator pools outside the capture
                    self._forward(static_m, static_f)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_m, static_f)
            self._graphs[key] = (graph, static_m, static_f, static_out)
        graph, static_m, static_f, static_out = self._graphs[key]
        static_m.copy_(moving_n)
        static_f.copy_(fixed_n)
        graph.replay()
        return static_out.clone()
