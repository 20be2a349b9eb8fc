"""`simmoe hw`: hardware profiles.

    simmoe hw                      table of the built-in profiles
    simmoe hw list [--json OUT]    the same (--json OUT writes the rows as JSON; --json - prints them)
    simmoe hw show NAME_OR_PATH    one profile, validated, as YAML with every default filled in
    simmoe hw show X --json -      the same as JSON (on stdout; --json OUT writes a file)

NAME_OR_PATH resolves as `--hw` does: a built-in profile name (see `simmoe hw list`), or a path to a YAML
file (anything ending in .yaml/.yml, containing a '/', or naming an existing file).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simmoe.cli import listing
from simmoe.hw.profile import (
    HwProfile,
    dump_profile,
    list_profiles,
    load_profile,
    resolve_profile_path,
)
from simmoe.hw.provenance import origin_lines

# (row key, column title, alignment, number format)
_COLUMNS = (
    ("name", "name", "<", ""),
    ("gpu", "GPU", "<", ""),
    ("memory_gib", "memory GiB", ">", ".2f"),
    ("hbm_gbps", "HBM GB/s", ">", ",.1f"),
    ("bf16_tflops", "bf16 TFLOP/s", ">", ",.1f"),
    ("h2d_pinned_gbps", "PCIe H2D pinned GB/s", ">", ".1f"),
    ("source", "source", "<", ""),
    ("price_usd_per_hour", "$/h", ">", ".2f"),
)


def summary_row(name: str, profile: HwProfile) -> dict[str, Any]:
    """One table row. bf16 is None where the GPU has no bf16 tensor cores (T4: the engine uses fp16)."""
    return {
        "name": name,
        "gpu": profile.gpu.name if profile.num_gpus == 1 else f"{profile.num_gpus} x {profile.gpu.name}",
        "memory_gib": profile.gpu.memory_gib,
        "hbm_gbps": profile.gpu.hbm_gbps,
        "bf16_tflops": profile.gpu.peak_tflops.get("bf16"),
        "h2d_pinned_gbps": profile.pcie.h2d_pinned_gbps,
        "source": profile.source,
        "price_usd_per_hour": profile.price_usd_per_hour,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    return listing.format_table(rows, _COLUMNS)


def _cmd_list(args: argparse.Namespace) -> int:
    return listing.print_rows(args, [summary_row(name, load_profile(name)) for name in list_profiles()], _COLUMNS)


def _cmd_show(args: argparse.Namespace) -> int:
    path = resolve_profile_path(args.profile)
    profile = load_profile(path)
    if not listing.show_json(args, profile.model_dump()):
        sys.stdout.write(f"# {profile.name}: validated, every default filled in (from {path})\n")
        sys.stdout.writelines(f"# {line}\n" for line in origin_lines(profile))
        sys.stdout.write(dump_profile(profile))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hw", help="list the built-in hardware profiles, or show one profile",
        description="Hardware profiles (GPU, host dispatch, PCIe, CPU, NVMe). Datasheet profiles ship with "
        "simmoe; `simmoe calibrate` writes calibrated ones. See hwprofiles/README.md for the schema.",
    )
    listing.add_list_show(
        p, what="the built-in profiles", list_func=_cmd_list, show_func=_cmd_show, show_arg="profile",
        show_metavar="NAME_OR_PATH", show_arg_help=f"a built-in profile ({', '.join(list_profiles())}) or a path "
        "to a YAML file", show_help="print one profile, validated, as YAML with defaults filled in",
        show_json_help="the validated profile")
