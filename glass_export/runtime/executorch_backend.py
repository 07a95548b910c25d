"""ExecuTorch backend: model.pte's prefill and decode methods; the KV cache lives inside the program."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import GlassExportError
from .backend import Backend, PrefillResult


class ExecuTorchBackend(Backend):
    op_implementation = "native ExecuTorch kernels"

    def __init__(self, directory: Path, manifest: dict):
        from glass_ops import native

        self.directory = directory
        self.manifest = manifest
        try:
            self.kernel_library = native.load_executorch_kernels()
        except native.NativeLibraryMissing as exc:
            raise GlassExportError(
                f"this ExecuTorch artifact needs the glass kernels ({exc})",
                "build them with `bash runtime_ops/build.sh`, or set GLASS_OPS_LIB_DIR to their directory",
            ) from exc
        from executorch.runtime import Runtime

        try:
            program = Runtime.get().load_program(str(directory / manifest["files"]["program"]))
            self.prefill_method = program.load_method("prefill")
            self.decode_method = program.load_method("decode")
        except Exception as exc:  # the runtime raises RuntimeError / ValueError with its own codes
            raise GlassExportError(f"executorch cannot load {directory}: {exc}", "re-export the artifact") from exc

    def prefill(self, ids: list[int]) -> PrefillResult:
        logits, local, indices = self.prefill_method.execute([torch.tensor([ids], dtype=torch.int64)])
        return PrefillResult(logits[0].numpy(), indices.numpy(), local.numpy(), None)

    def decode(self, token: int, position: int, indices: np.ndarray, state):
        (logits,) = self.decode_method.execute(
            [torch.tensor([[token]]), torch.tensor([[position]]), torch.from_numpy(np.ascontiguousarray(indices))]
        )
        return logits[0, -1].numpy(), state
