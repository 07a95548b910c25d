"""ExecuTorch backend: model.pte's prefill and decode methods; the KV cache lives inside the program."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..artifact import Manifest
from ..errors import GlassExportError
from ..generation import Backend, PrefillResult


@contextlib.contextmanager
def native_log_silenced():
    """Send the process's stderr (file descriptor 2) to /dev/null for the block, unless the user
    asked for --verbose (GLASS_VERBOSE=1)."""
    if os.environ.get("GLASS_VERBOSE") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ExecuTorchBackend(Backend):
    def __init__(self, directory: Path, manifest: Manifest, use_native: bool = True, threads: int | None = None):
        from glass_ops import native

        super().__init__()
        if not use_native:
            raise GlassExportError(
                "ExecuTorch artifacts have no fallback for the glass kernels: they are part of the program",
                "drop --no-native, or export with --target onnx to compare with the fallback")
        self.directory, self.manifest = directory, manifest
        self.max_seq_len = manifest.max_seq_len
        try:
            self.kernel_library = native.load_executorch_kernels()
        except native.NativeLibraryMissing as exc:
            raise GlassExportError(
                f"this ExecuTorch artifact needs the glass kernels ({exc})",
                "build them with `bash runtime_ops/build.sh`, or set GLASS_OPS_LIB_DIR to their directory",
            ) from exc
        import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding kernels)
        from executorch.extension.pybindings import _C as pybindings
        from executorch.runtime import Runtime

        with native_log_silenced():  # ExecuTorch's C++ logs its CPU probing to stderr
            if threads:
                # ExecuTorch's one thread pool, shared by XNNPACK and the glass kernels.
                pybindings._unsafe_reset_threadpool(threads)
            self.threads = pybindings._threadpool_get_thread_count()
            try:
                program = Runtime.get().load_program(str(directory / manifest.files["program"]))
                self.prefill_method = program.load_method("prefill")
                self.decode_method = program.load_method("decode")
            except Exception as exc:  # the runtime raises RuntimeError / ValueError with its own codes
                raise GlassExportError(f"executorch cannot load {directory}: {exc}", "re-export the artifact") from exc
        self.description = (f"executorch, native kernels ({self.kernel_library.name}, {native.quant_kernels_name()}), "
                            f"{self.threads} threads")

    def _prefill(self, ids: list[int]) -> PrefillResult:
        logits, local, indices = self.prefill_method.execute([torch.tensor([ids], dtype=torch.int64)])
        return PrefillResult(logits[0].numpy(), indices.numpy(), local.numpy())

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        (logits,) = self.decode_method.execute(
            [torch.tensor([[token]]), torch.tensor([[position]]), torch.from_numpy(np.ascontiguousarray(indices))]
        )
        return logits[0, -1].numpy()

    def close(self) -> None:
        self.prefill_method = self.decode_method = None
