"""glass-export: GLASS dynamic FFN sparsity for on-device LLM inference."""

__version__ = "0.1.0"

from .threads import keep_mkl_off_executorch_threads  # noqa: E402

keep_mkl_off_executorch_threads()  # before anything imports torch

from .errors import GlassExportError  # noqa: E402

__all__ = ["GlassExportError", "__version__"]
