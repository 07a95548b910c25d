"""glass::gather_ffn, the decode FFN over kept neurons, for PyTorch, ONNX and ExecuTorch.

    y = (act(x W_gate[idx]^T) * (x W_up[idx]^T)) W_down^T[idx]

with neuron-contiguous weights: w_gate_up [m, 2, d] (gate row, then up row of
each neuron) and w_down_t [m, d]. Importing this package registers the torch
op; `native.load_executorch_kernels()` loads the compiled ExecuTorch kernel.
"""

from . import torch_ops  # noqa: F401  (registers torch.ops.glass.gather_ffn)
from .torch_ops import ACTIVATION_CODES, pack_ffn_weights

__all__ = ["ACTIVATION_CODES", "pack_ffn_weights"]
