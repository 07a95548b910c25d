"""ExecuTorch backend: model.pte's prefill and decode methods; the KV cache lives inside the program."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import torch

from ..artifact import Manifest
from ..errors import GlassExportError
from ..generation import Backend, PrefillResult


@contextlib.contextmanager
def torch_single_threaded():
    """PyTorch copies the program's outputs into tensors; a copy as large as the logits runs on PyTorch's
    OpenMP threads, which then spin-wait for more work on the cores ExecuTorch's own pool is using (on
    2 cores that cost a decode step 29 %). One PyTorch thread while the program runs: no such region."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# executorch::runtime::Error::OperatorMissing, as the Python runtime prints it ("error: 0x:14")
OPERATOR_MISSING = re.compile(r"error: 0x:?14\b")


def load_failure(directory: Path, exc: Exception) -> GlassExportError:
    """What to tell the user when ExecuTorch cannot load the program's methods."""
    if OPERATOR_MISSING.search(str(exc)):
        return GlassExportError(
            f"executorch cannot load {directory}: the program calls an operator that no loaded kernel library "
            f"registers ({exc}); glass ops change between glass-export versions",
            "re-export the artifact with this glass-export (and its kernel library)")
    return GlassExportError(f"executorch cannot load {directory}: {exc}", "re-export the artifact")


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
        self.kernel_library = None
        if manifest.native_library:  # a program without glass ops needs none
            try:
                self.kernel_library = native.load_executorch_kernels()
            except native.NativeLibraryMissing as exc:
                raise GlassExportError(
                    f"this ExecuTorch artifact needs the glass kernels ({exc})",
                    f"{native.BUILD_HINT}, or set GLASS_OPS_LIB_DIR to their directory",
                ) from exc
        import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding kernels)

        native.load_llm_custom_ops()
        from executorch.extension.pybindings import _C as pybindings
        from executorch.runtime import Runtime

        with native.native_log_silenced():  # ExecuTorch's C++ logs its CPU probing to stderr
            if threads:
                # ExecuTorch's one thread pool, shared by XNNPACK and the glass kernels.
                pybindings._unsafe_reset_threadpool(threads)
            self.threads = pybindings._threadpool_get_thread_count()
            try:
                program = Runtime.get().load_program(str(directory / manifest.files["program"]))
                self.prefill_method = program.load_method("prefill")
                self.decode_method = program.load_method("decode")
            except Exception as exc:  # the runtime raises RuntimeError / ValueError with its own codes
                raise load_failure(directory, exc) from exc
        kernels = (f"native kernels ({self.kernel_library.name}, {native.quant_kernels_name()})"
                   if self.kernel_library is not None else "stock kernels (no glass op in the program)")
        self.description = f"executorch, {kernels}, {self.threads} threads"

    def _prefill(self, ids: list[int]) -> PrefillResult:
        with torch_single_threaded():
            logits, local, indices = self.prefill_method.execute([torch.tensor([ids], dtype=torch.int64)])
        return PrefillResult(logits[0].numpy(), indices.numpy(), local.numpy())

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        with torch_single_threaded():
            (logits,) = self.decode_method.execute(
                [torch.tensor([[token]]), torch.tensor([[position]]), torch.from_numpy(np.ascontiguousarray(indices))]
            )
        return logits[0, -1].numpy()

    def close(self) -> None:
        self.prefill_method = self.decode_method = None
