"""`simmoe models`: the built-in model catalog.

    simmoe models                  table of every catalog model
    simmoe models --json -         the same rows as JSON on stdout (--json OUT writes a file)
    simmoe models show NAME        one model's spec as YAML (loadable as a trace's model_spec, or as --model)
    simmoe models show config.json what simmoe reads from a Hugging Face config (or a spec .yaml)
    simmoe models show NAME --json -   the same as JSON
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simmoe.cli import listing
from simmoe.errors import InputError
from simmoe.models.catalog import CATALOG, list_models
from simmoe.models.load import load_model
from simmoe.models.spec import ModelSpec

_COLUMNS = (
    ("name", "name", "<"),
    ("layers", "layers", ">"),
    ("moe_layers", "MoE layers", ">"),
    ("experts", "experts", ">"),
    ("top_k", "top-k", ">"),
    ("shared", "shared", ">"),
    ("expert_dtype", "expert dtype", "<"),
    ("expert_mb", "expert MB", ">"),
    ("total_b", "total B", ">"),
    ("active_b", "active B", ">"),
    ("kv_kib_per_token", "KV KiB/token", ">"),
)


def summary_row(spec: ModelSpec) -> dict[str, Any]:
    """One catalog row: counts, expert size at the expert dtype (MB = 10^6 bytes), params in billions."""
    return {
        "name": spec.name,
        "layers": spec.num_layers,
        "moe_layers": spec.num_moe_layers,
        "experts": spec.num_experts,
        "top_k": spec.top_k,
        "shared": spec.num_shared_experts,
        "expert_dtype": spec.expert_dtype,
        "expert_mb": round(spec.expert_bytes() / 1e6, 2),
        "total_b": round(spec.total_params / 1e9, 2),
        "active_b": round(spec.active_params / 1e9, 2),
        "kv_kib_per_token": round(spec.kv_bytes_per_token() / 1024, 2),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _table_columns() -> list[listing.Column]:
    return [(key, title, align, _fmt) for key, title, align in _COLUMNS]


def format_table(rows: list[dict[str, Any]]) -> str:
    return listing.format_table(rows, _table_columns())


def _cmd_list(args: argparse.Namespace) -> int:
    return listing.print_rows(args, [summary_row(CATALOG[name]) for name in list_models()], _table_columns())


def _cmd_show(args: argparse.Namespace) -> int:
    try:  # a catalog name, or a config.json / spec .yaml: shows what simmoe reads from it
        spec = load_model(args.name, param=None)
    except InputError as e:
        raise (InputError("models show", None, e.message) if e.source is None else e) from None
    d = spec.to_dict()
    if not listing.show_json(args, d):
        import yaml

        class _Dumper(yaml.SafeDumper):  # block mappings, but the layer list on one line
            pass

        _Dumper.add_representer(
            list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
        )
        sys.stdout.write(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=10**6))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the built-in model catalog, or show one model's spec",
        description="The built-in model catalog: shapes from each model's published config.json. "
        "Expert MB is one routed expert at the model's expert dtype (10^6 bytes); total/active are "
        "billions of parameters; KV KiB/token is over all layers at the model's dtype.",
    )
    listing.add_list_show(
        p, what="every catalog model", list_func=_cmd_list, show_func=_cmd_show, show_arg="name",
        show_metavar=None, show_arg_help=f"catalog name ({', '.join(list_models())}), or a Hugging Face "
                                         "config.json or spec .yaml to read as simmoe does",
        show_help="print one model's spec as YAML (or JSON)", show_json_help="the spec")
