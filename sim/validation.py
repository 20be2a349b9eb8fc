"""One validation layer for the values users give: hardware profiles, policy options, replay settings.

Every schema of user input is a pydantic model configured with `STRICT`:

- unknown keys are errors (a typo never passes);
- values are not coerced: YAML `true` / `yes` is not the number 1, the string "16" is not 16, 4.0 is not
  the integer 4 (an integer is accepted where a real number is expected);
- NaN and infinity are rejected in every real-valued field (a `.inf` bandwidth would make copies free, a
  NaN cache size has no meaning).

`describe` turns one pydantic error into the message an `InputError` carries, and `input_error` builds that
`InputError` from a `ValidationError`, so that every schema reports its first problem in the same words.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError

from simmoe.errors import InputError

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def tuple_from_list(v: Any) -> Any:
    """YAML and JSON have lists, not tuples: accept a list where a (strict) tuple is expected."""
    if isinstance(v, list):
        return tuple(tuple_from_list(x) for x in v)
    return v


# A sequence given as a YAML list (items stay strict: a list of bools is not a list of ints).
AsTuple = BeforeValidator(tuple_from_list)

# A machine figure in its unit (GB/s, TFLOP/s, GiB, microseconds, $/h): real machines are many orders of
# magnitude inside [1e-6, 1e9], while values far outside (1e-300 GB/s) overflow the simulated times to inf/NaN.
FIGURE_MIN, FIGURE_MAX = 1e-6, 1e9
Figure = Annotated[float, Field(ge=FIGURE_MIN, le=FIGURE_MAX)]  # a positive figure
FigureOrZero = Annotated[float, Field(ge=0, le=FIGURE_MAX)]  # a cost that may be nil


# A preemptible copy chunk, MiB: at least 1 KiB. Each chunk pays the link latency, so nothing real is smaller,
# and a chunk of 5e-324 MiB overflows the chunk count to infinity.
ChunkMiB = Annotated[float, Field(ge=2**-10)]


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else f"{v}"


def _shown(err: dict[str, Any]) -> str:
    v = err.get("input")
    if isinstance(v, bool):  # YAML reads yes/no/on/off/true/false as booleans
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (dict, list, tuple)):
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(v) if isinstance(v, (str, bool)) or v is None else f"{v}"


def describe(err: dict[str, Any]) -> str:
    """A pydantic error as 'must be ..., got X' (or pydantic's own words for the rarer kinds)."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = f", got {_shown(err)}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        key = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}[kind]
        return f"must be {bounds[kind]} {_num(ctx.get(key))}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind == "string_type":
        return f"must be a string{got}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}{got}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping{got}"
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("too_short", "too_long"):
        return err["msg"][0].lower() + err["msg"][1:]
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[0].lower() + msg[1:] if msg else kind


def first_error(e: ValidationError) -> dict[str, Any]:
    """The error to report: a misspelt key first (it also makes the correctly spelt one 'missing')."""
    errors = e.errors()
    return next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])


def error_loc(err: dict[str, Any]) -> str:
    return ".".join(str(x) for x in err["loc"] if x != "[key]")


def input_error(e: ValidationError, source: str | None, field: Callable[[str], str | None] | str | None = None,
                message: Callable[[dict[str, Any]], str] = describe) -> InputError:
    """An InputError for the first problem of `e`. `field` maps the error's location (a dotted path) to the
    field named in the message (default: the location itself); a string is used as a prefix."""
    err = first_error(e)
    loc = error_loc(err)
    if callable(field):
        name = field(loc)
    elif field:
        name = f"{field}.{loc}" if loc else field
    else:
        name = loc or None
    return InputError(source, name, message(err))


def available_memory_bytes() -> int | None:
    """Memory this machine can still give (MemAvailable), or None when it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, source: str | None, what: str, field: str | None = None,
                 param: str | None = None) -> None:
    """An input that asks for more memory than the machine has gets one line, not a MemoryError (or the
    kernel's OOM killer) after minutes: `what` says what the input asked for."""
    have = available_memory_bytes()
    if have is not None and nbytes > have:
        raise InputError(source, field, f"{what}: about {nbytes / 2**30:,.1f} GiB, more than the "
                                        f"{have / 2**30:,.1f} GiB of memory available", param=param)
