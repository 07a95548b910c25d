"""The process's thread settings that must be made before PyTorch loads (glass_export/__init__.py).

ExecuTorch's Python runtime runs `llama::custom_sdpa` from `libcustom_ops_aot_lib`, which calls the
sgemm of PyTorch's bundled MKL from ExecuTorch's own pool threads. On a thread that never set its
own MKL thread count, MKL starts an OpenMP team for every call, and the team's threads then
spin-wait on the cores ExecuTorch's pool is using: on 2 cores a 50-token SmolLM2 prefill took 90 ms
instead of 45, and decode lost up to a fifth (ExecuTorch stops MKL from threading there upstream,
pytorch/executorch#20267, after the pinned 1.5.1). MKL reads MKL_NUM_THREADS once, when PyTorch
loads it, so a default of 1 must be in the environment before `import torch`. PyTorch sets MKL's
count per thread (torch.set_num_threads), so its own ops keep theirs; but it also reads its default
intra-op thread count from MKL_NUM_THREADS, so that count is set back to what it would have been.
"""

from __future__ import annotations

import os
import sys


def keep_mkl_off_executorch_threads() -> None:
    """MKL single-threaded by default, PyTorch's intra-op threads as they would be. Does nothing when
    PyTorch is already loaded (too late) or MKL_NUM_THREADS is set (the user's choice)."""
    if "torch" in sys.modules or "MKL_NUM_THREADS" in os.environ:
        return
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    user_threads = os.environ.get("OMP_NUM_THREADS", "")
    # without either variable PyTorch's default is its physical core count, the inter-op default
    threads = int(user_threads) if user_threads.isdigit() and int(user_threads) > 0 else torch.get_num_interop_threads()
    torch.set_num_threads(threads)
