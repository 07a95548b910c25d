"""The one exception type the package raises for bad input: what is wrong and how to fix it."""


class GlassExportError(Exception):
    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
