"""R_Phi in ONNX Runtime: CPU here; CUDA / TensorRT execution providers when the build has them.

On CPU the torch tensors from pre-processing are handed over as numpy views (no copy). On CUDA the
inputs and output are bound in place with IOBinding to torch CUDA tensors, so nothing crosses to the
host between pre-processing, the network and post-processing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmr.errors import ModelFileError
from nmr.inference.model_file import ModelInfo
from nmr.inference.registrar import Registrar

INPUT_NAMES = ('moving', 'fixed')
OUTPUT_NAME = 'flow'


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def session_options(threads: int | None = None) -> Any:
    """All graph optimisations, intra-op threads = usable cores, no spin-waiting, sequential execution.

    NMR_ORT_SPIN=1 re-enables spinning (lower latency when ORT has the cores to itself).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if os.environ.get('NMR_ORT_SPIN', '0') != '1':
        # ORT's idle workers otherwise spin-wait after every run and starve the torch pre/post-processing
        # that shares the cores (several times slower steps on loaded cores: docs/performance.md)
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    return so


def providers_for(device: torch.device, onnx_path: Path, use_tensorrt_ep: bool = True) -> list[Any]:
    """Execution providers in preference order for `device`, limited to what this build has."""
    have = set(available_providers())
    if device.type != 'cuda':
        return ['CPUExecutionProvider']
    index = device.index or 0
    chosen: list[Any] = []
    if use_tensorrt_ep and 'TensorrtExecutionProvider' in have:
        cache = onnx_path.parent / (onnx_path.stem + '.ort-trt-cache')
        chosen.append(
            (
                'TensorrtExecutionProvider',
                {'device_id': index, 'trt_engine_cache_enable': True, 'trt_engine_cache_path': str(cache)},
            )
        )
    if 'CUDAExecutionProvider' in have:
        chosen.append(('CUDAExecutionProvider', {'device_id': index}))
    if not chosen:
        raise ModelFileError(
            'this onnxruntime build has no CUDA execution provider; install onnxruntime-gpu or use device=cpu'
        )
    chosen.append('CPUExecutionProvider')
    return chosen


class OnnxRuntimeRegistrar(Registrar):
    backend = 'onnxruntime'

    def __init__(
        self,
        info: ModelInfo,
        onnx_path: str | Path,
        device: torch.device,
        net_hw: tuple[int, int] | None = None,
        threads: int | None = None,
        use_tensorrt_ep: bool = True,
    ) -> None:
        import onnxruntime as ort

        super().__init__(info, device, net_hw)
        self.onnx_path = Path(onnx_path)
        providers = providers_for(device, self.onnx_path, use_tensorrt_ep)
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path), sess_options=session_options(threads), providers=providers
            )
        except Exception as err:
            first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise ModelFileError(
                f'ONNX Runtime cannot load {self.onnx_path}: {first}; re-export it with `nmr export`'
            ) from None
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES) or OUTPUT_NAME not in [
            o.name for o in self.session.get_outputs()
        ]:
            raise ModelFileError(
                f'{self.onnx_path} has inputs {names}, not the nmr R_Phi inputs '
                f'{list(INPUT_NAMES)} -> {OUTPUT_NAME}; export it with `nmr export`'
            )
        self.providers = self.session.get_providers()
        self.prepost_threads = 1  # torch pre/post on one thread: no fork/join fights with ORT's pool
        self._binding = self.session.io_binding() if device.type == 'cuda' else None

    def describe(self) -> str:
        return (
            f'{super().describe()} [{", ".join(p.replace("ExecutionProvider", "") for p in self.providers)}]'
        )

    def _infer(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        if self._binding is None:
            out = self.session.run(
                [OUTPUT_NAME],
                {
                    'moving': moving_n.detach().contiguous().cpu().numpy(),
                    'fixed': fixed_n.detach().contiguous().cpu().numpy(),
                },
            )[0]
            return torch.from_numpy(out)
        return self._infer_bound(moving_n.contiguous(), fixed_n.contiguous())

    def _infer_bound(self, moving_n: torch.Tensor, fixed_n: torch.Tensor) -> torch.Tensor:
        """CUDA: bind torch device memory directly (inputs and a pre-allocated output), no host copies."""
        binding = self._binding
        assert binding is not None
        index = self.device.index or 0
        b, _, h, w = moving_n.shape
        out = torch.empty((b, 2, h, w), dtype=torch.float32, device=self.device)
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, t in (('moving', moving_n), ('fixed', fixed_n)):
            binding.bind_input(name, 'cuda', index, np.float32, tuple(t.shape), t.data_ptr())
        binding.bind_output(OUTPUT_NAME, 'cuda', index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # `out` is complete before torch's stream reads it
        return out
