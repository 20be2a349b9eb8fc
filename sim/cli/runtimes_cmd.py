"""`simmoe runtimes`: runtime profiles (the software that runs the model).

    simmoe runtimes                     table of the bundled runtimes
    simmoe runtimes list [--json OUT]   the same (--json OUT writes the rows as JSON; --json - prints them)
    simmoe runtimes show NAME_OR_PATH   one runtime, validated, as YAML with every default filled in
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simmoe.cli import listing
from simmoe.runtime.profile import (
    RuntimeProfile,
    dump_runtime,
    list_runtimes,
    load_runtime,
    resolve_runtime_path,
)

_COLUMNS = (
    ("name", "name", "<", ""),
    ("launch", "launch", "<", ""),
    ("graphs", "graphs <= tokens", ">", ""),
    ("syncs", "syncs layer/expert", "<", ""),
    ("kernels", "kernels attn/router/expert", "<", ""),
    ("order", "expert order", "<", ""),
    ("copies", "copies", "<", ""),
    ("weights", "weights dense/experts", "<", ""),
    ("source", "source", "<", ""),
)


def summary_row(rt: RuntimeProfile) -> dict[str, Any]:
    h, k, x, w = rt.host, rt.kernels, rt.experts, rt.weights
    expert_k = f"{k.per_moe_layer}/layer (fused)" if k.fused else str(k.per_expert)
    order = f"{x.order}, {'hits first' if x.lookup == 'layer' else 'at use'}"
    if x.fetch == "layer":
        order = "whole layer fetched"
    copies = f"{x.copy_stream} stream, {x.host_memory}" + (", write-back" if x.writeback else "") + \
        (f", {x.copies_per_expert} per expert" if x.copies_per_expert > 1 else "")
    return {"name": rt.name, "launch": h.launch, "graphs": h.graphs_max_tokens or "-",
            "syncs": f"{h.syncs_per_moe_layer}/{h.syncs_per_expert}",
            "kernels": f"{k.per_attention}/{k.per_router}/{expert_k}", "order": order, "copies": copies,
            "weights": f"{w.dense or 'model'}/{w.experts or 'model'}", "source": rt.source}


def _cmd_list(args: argparse.Namespace) -> int:
    return listing.print_rows(args, [summary_row(load_runtime(n)) for n in list_runtimes()], _COLUMNS)


def _cmd_show(args: argparse.Namespace) -> int:
    path = resolve_runtime_path(args.runtime)
    rt = load_runtime(path)
    if not listing.show_json(args, rt.model_dump()):
        sys.stdout.write(f"# {rt.name}: validated, every default filled in (from {path}; the figures' sources "
                         f"are the comments of the bundled file and docs/runtimes/)\n")
        sys.stdout.write(dump_runtime(rt))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "runtimes", help="list the bundled runtime profiles, or show one",
        description="Runtime profiles: the software that runs the model (host costs per launch, expert and "
        "layer; synchronisations; kernels per part; expert access order; copy unit, stream and memory; weight "
        "formats). `replay --runtime NAME` runs a trace with one; see docs/runtimes/.",
    )
    listing.add_list_show(
        p, what="the bundled runtimes", list_func=_cmd_list, show_func=_cmd_show, show_arg="runtime",
        show_metavar="NAME_OR_PATH", show_arg_help=f"a bundled runtime ({', '.join(list_runtimes())}) or a path "
        "to a YAML file", show_help="print one runtime, validated, as YAML with defaults filled in",
        show_json_help="the validated runtime")
