"""User-facing input errors.

Every problem with something the user gave us (a trace, a profile, a policy option) is raised as
`InputError` naming the file and the field. The CLI prints it as one line and exits with status 2.

A value given as a parameter of the Python API (`simmoe.replay(batch=0)`) or as its command-line flag
(`--batch 0`) is the same value under two names. Library code names the *parameter*
(`InputError(None, None, "must be >= 1, got 0", param="batch")`, and `{param:NAME}` where a message mentions
another one); `str(e)` writes the parameter names (`batch: must be >= 1, got 0`) and the CLI renders the
same error with its flags (`e.line(flag_of)`: `--batch: must be >= 1, got 0`; a `{param:NAME}` in the source too). A field of a parameter reads `opts.slots_per_layer`
from Python and `--opt: slots_per_layer` from the command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

# A reference to a parameter inside a message, rendered by `InputError.line`.
PARAM_REF = re.compile(r"\{param:([A-Za-z_][\w.]*)\}")


def param_ref(name: str) -> str:
    """A parameter named inside a message: `f"must be >= {param_ref('batch')}"`."""
    return f"{{param:{name}}}"


class InputError(Exception):
    """Bad user input: one clear line naming the source (file or option) and the field.

    `param`: the API parameter the bad value was given as (`batch`, `opts`, `runtime_opts`), which the CLI
    prints as its flag; `source` then stays None (or names a file the parameter pointed to)."""

    def __init__(self, source: str | Path | None, field: str | None, message: str, param: str | None = None) -> None:
        self.source = str(source) if source is not None else None
        self.field = field
        self.template = message
        self.param = param
        # args hold the fields so that type(e)(*e.args) rebuilds it (SimPy re-raises process errors so)
        super().__init__(self.source, field, message, param)

    @property
    def message(self) -> str:
        """The message with parameters under their Python names."""
        return PARAM_REF.sub(lambda m: m.group(1), self.template)

    def __str__(self) -> str:
        return self.line()

    def line(self, name: Callable[[str], str] | None = None) -> str:
        """One line whatever the parts hold (a YAML parser's message spans two; a field may hold a newline).
        `name` maps a parameter to how it is shown (the CLI: its flag); default: the parameter itself."""
        show = name or (lambda p: p)
        msg = PARAM_REF.sub(lambda m: show(m.group(1)), self.template)
        if self.param and name is None:  # a field of a parameter, as Python spells it: opts.slots_per_layer
            where = [f"{self.param}.{self.field}" if self.field else self.param]
        else:  # the flag, then the field: --opt: slots_per_layer
            where = [show(self.param) if self.param else None, self.field]
        source = PARAM_REF.sub(lambda m: show(m.group(1)), self.source) if self.source else None
        parts = [p for p in (source, *where) if p]
        return re.sub(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*", " ", ": ".join([*parts, msg])).strip()


class SimmoeWarning(UserWarning):
    """Suspicious but valid input (a batch larger than the run's requests, a cache larger than the model's
    experts, ...): the run goes on as asked. The CLI shows each one once as one line on stderr
    (`simmoe: warning: ...`) and `-q` silences them; a notebook shows them as Python warnings."""


def warn(message: str) -> None:
    """Emits a SimmoeWarning attributed to the caller's caller (the code whose input is suspicious)."""
    import warnings

    warnings.warn(message, SimmoeWarning, stacklevel=3)
