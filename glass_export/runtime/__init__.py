"""Running exported artifacts: one backend interface, one generation loop."""

from .backend import Backend, PrefillResult, generate, open_artifact

__all__ = ["Backend", "PrefillResult", "generate", "open_artifact"]
