"""User-facing input errors.

Every problem with something the user gave us (a trace, a profile, a policy option) is raised as
`InputError` naming the file and the field. The CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

import re
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
        """One line whatever the parts hold (a YAML parser's message spans two; a field may hold a newline)."""
        parts = [p for p in (self.source, self.field) if p]
        return re.sub(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*", " ", ": ".join([*parts, self.message])).strip()


class SimmoeWarning(UserWarning):
    """Suspicious but valid input (a batch larger than the run's requests, a cache larger than the model's
    experts, ...): the run goes on as asked. The CLI shows each one once as one line on stderr
    (`simmoe: warning: ...`) and `-q` silences them; a notebook shows them as Python warnings."""


def warn(message: str) -> None:
    """Emits a SimmoeWarning attributed to the caller's caller (the code whose input is suspicious)."""
    import warnings

    warnings.warn(message, SimmoeWarning, stacklevel=3)
