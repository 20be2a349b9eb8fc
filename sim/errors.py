"""User-facing input errors.

Every problem with something the user gave us (a trace, a profile, a policy option) is raised as
`InputError` naming the file and the field. The CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: one clear line naming the source (file or option) and the field."""

    def __init__(self, source: str | Path | None, field: str | None, message: str) -> None:
        self.source = str(source) if source is not None else None
        self.field = field
        self.message = message
        # args hold the fields so that type(e)(*e.args) rebuilds it (SimPy re-raises process errors so)
        super().__init__(self.source, field, message)

    def __str__(self) -> str:
        return self.line()

    def line(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.message])
