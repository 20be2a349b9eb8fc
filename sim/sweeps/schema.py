"""The sweep spec as pydantic models, and its JSON Schema, built from the models that check the same values
on the command line and in the Python API: every ReplayConfig field (its type, bounds, default and
description), the policy kinds and their `KIND_options`, `runtime_options.SECTION.FIELD`.

`spec_model(bounds=False)` is what `load_spec` validates a spec with: parameter names and value *types* are
checked when the spec is loaded; bounds and combinations (batch 0, batch 8 with max_batched_tokens 4) when
each configuration runs, where a bad one is recorded in the results instead of stopping the sweep.
`spec_schema()` is the JSON Schema of a spec whose every configuration can run (with the bounds): editors
use it to complete and check spec files (`simmoe sweep --schema OUT`; docs/sweep-spec.schema.json).
"""

from __future__ import annotations

import functools
import operator
import types
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from simmoe.validation import STRICT

# A policy option's value as a spec writes it: a scalar, or a list (tuple-typed options); checked by the
# policy's own Options model when the configuration runs.
Scalar = str | int | float | bool | None
OptionValue = Scalar | list[Any]

NAME_FIELDS: dict[str, tuple[Any, str]] = {
    "trace": (str, "simmoe-trace/1 .npz file (a relative path is relative to the spec's folder)"),
    "hw": (str, "hardware profile: a bundled name (simmoe hw) or a YAML path"),
    "runtime": (str | None, "runtime profile: a bundled name (simmoe runtimes) or a YAML path (default: "
                                  "the named system's runtime, else generic)"),
    "policy": (str | None, "cache policy, named system (simmoe policies) or policy YAML file (default: "
                                 "lru)"),
    "prefetch": (str | None, "prefetch policy"),
    "placement": (str | None, "placement policy (where missed experts are computed)"),
    "precision": (str | None, "precision policy (bit-width experts are stored and moved at)"),
    "routing": (str | None, "routing-change policy"),
}


def option_patterns() -> dict[str, str]:
    """Regular expressions of the dotted parameter names: `KIND_options.NAME`, `runtime_options.S.FIELD`."""
    from simmoe.sweeps.spec import OPTION_GROUPS, RUNTIME_OPTIONS

    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    return {"options": rf"^({'|'.join(OPTION_GROUPS)})\.{ident}$", "runtime": rf"^{RUNTIME_OPTIONS}\.{ident}\.{ident}$"}


def _unbounded(tp: Any) -> Any:
    """The type without its constraints (Annotated metadata): `PosInt | None` -> `int | None`."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _unbounded(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return functools.reduce(operator.or_, (_unbounded(a) for a in get_args(tp)))
    return tp


def _field_types(bounds: bool) -> dict[str, tuple[Any, str, Any]]:
    """Every scalar parameter: (type, description, default) in column order."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.sweeps.spec import config_fields

    out: dict[str, tuple[Any, str, Any]] = {n: (tp, d, None) for n, (tp, d) in NAME_FIELDS.items()}
    for name in config_fields():
        fi = ReplayConfig.model_fields[name]
        tp = Annotated[(fi.annotation, *fi.metadata)] if bounds and fi.metadata else fi.annotation
        out[name] = (tp if bounds else _unbounded(tp), fi.description or "", fi.default)
    return out


def _extra_schema(item: dict[str, Any], as_list: bool):
    """JSON Schema additions: dotted option names by pattern, nothing else (the Python model allows extra
    keys so that the loader can name a misspelt one with a suggestion)."""
    value = {"type": "array", "items": item, "minItems": 1} if as_list else item

    def extra(schema: dict[str, Any]) -> None:
        for prop in schema["properties"].values():  # an absent parameter takes its default: null says nothing
            if "default" in prop and prop["default"] is None:
                del prop["default"]
            prop.pop("title", None)
        schema["additionalProperties"] = False
        schema["patternProperties"] = {p: value for p in option_patterns().values()}

    return extra


@cache
def spec_model(bounds: bool = True) -> type[BaseModel]:
    """The spec file's model: `trace`, `base` (parameters), `grid` (parameter: list of values), `cases`."""
    from simmoe.sweeps.spec import OPTION_GROUPS

    option_item = TypeAdapter(OptionValue).json_schema()
    fields = _field_types(bounds)
    options = {g: (dict[str, OptionValue] | None, f"options of `{g.removesuffix('_options')}`: NAME: value")
               for g in OPTION_GROUPS}
    cfg = dict(strict=True, allow_inf_nan=False, extra="allow")

    params = {n: (tp, Field(None if default is None else default, description=d))
              for n, (tp, d, default) in fields.items()}
    params.update({g: (tp, Field(None, description=d)) for g, (tp, d) in options.items()})
    Params = create_model("SweepParameters", __config__=ConfigDict(
        title="parameters", json_schema_extra=_extra_schema(option_item, False), **cfg), **params)

    grid = {n: (list[tp], Field(None, min_length=1, description=f"values of {n}: {d}"))
            for n, (tp, d, _) in fields.items()}
    grid.update({g: (list[tp], Field(None, min_length=1, description=f"a list of {d}"))
                 for g, (tp, d) in options.items()})
    Grid = create_model("SweepGrid", __config__=ConfigDict(
        title="grid", json_schema_extra=_extra_schema(option_item, True), **cfg), **grid)

    class SweepSpecFile(BaseModel):
        """A simmoe sweep spec: every configuration is base, overridden by one case, crossed with the grid."""

        model_config = ConfigDict(**{**STRICT, "frozen": False}, title="simmoe sweep spec")
        trace: str | list[str] | None = Field(
            None, description="trace file, or a list of them (an outer grid axis)")
        base: Params = Field(default_factory=Params, description="parameters every configuration shares")
        grid: Grid = Field(default_factory=Grid, description="the cartesian product of these lists")
        cases: list[Params] = Field([], description="explicit configurations, each crossed with the grid")

    return SweepSpecFile


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a sweep spec (YAML or JSON)."""
    schema = spec_model(bounds=True).model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

