"""glass-export: GLASS dynamic FFN sparsity for on-device LLM inference."""

__version__ = "0.1.0"

from .errors import GlassExportError  # noqa: E402

__all__ = ["GlassExportError", "__version__"]
